package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/wire"
)

// These tests run a real Broker on real sockets (ipc under a temp dir)
// with REQ clients and DEALER workers/managers written here, speaking the
// exact 0.1.3 frame layouts.

type testBroker struct {
	front, back string
	cancel      context.CancelFunc
	done        chan error
	b           *Broker
}

func mustStartBroker(tb testing.TB, opt Options) *testBroker {
	tb.Helper()
	dir := shortTempDir(tb)
	cfg := Config{
		Frontend: "ipc://" + dir + "/f.ipc",
		Backend:  "ipc://" + dir + "/b.ipc",
		Options:  opt,
	}
	b, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tbk := &testBroker{front: cfg.Frontend, back: cfg.Backend, cancel: cancel, done: make(chan error, 1), b: b}
	go func() { tbk.done <- b.Run(ctx) }()
	tb.Cleanup(func() { tbk.stop(tb) })
	return tbk
}

func (t *testBroker) stop(tb testing.TB) {
	if t.cancel == nil {
		return
	}
	t.cancel()
	select {
	case err := <-t.done:
		if err != nil {
			tb.Errorf("broker Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		tb.Errorf("broker did not stop within 5 s")
	}
	t.b.Close()
	t.cancel = nil
}

// shortTempDir keeps ipc paths under the 107-byte limit (t.TempDir() paths
// embed the test name).
func shortTempDir(tb testing.TB) string {
	d, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type tclient struct {
	tb testing.TB
	s  *zmq.Socket
}

func newClient(tb testing.TB, ep string, typ zmq.Type) *tclient {
	tb.Helper()
	return dialClient(tb, ep, typ, nil)
}

// dialClient connects a socket of typ to ep, after setup (nil: none) has
// configured it.
func dialClient(tb testing.TB, ep string, typ zmq.Type, setup func(*zmq.Socket) error) *tclient {
	tb.Helper()
	s, err := zmq.NewSocket(typ)
	if err != nil {
		tb.Fatal(err)
	}
	s.SetLinger(0)
	s.SetRcvtimeo(5 * time.Second)
	if setup != nil {
		if err := setup(s); err != nil {
			tb.Fatal(err)
		}
	}
	if err := s.Connect(ep); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return &tclient{tb, s}
}

func (c *tclient) send(parts ...any) {
	c.tb.Helper()
	if _, err := c.s.SendMessage(parts...); err != nil {
		c.tb.Fatalf("send: %v", err)
	}
}

func (c *tclient) recv() [][]byte {
	c.tb.Helper()
	m, err := c.s.RecvMessageBytes(0)
	if err != nil {
		c.tb.Fatalf("recv: %v", err)
	}
	return m
}

// call sends a REQ request and returns (command, decoded payload).
func (c *tclient) call(parts ...any) (wire.Command, any) {
	c.tb.Helper()
	c.send(parts...)
	m := c.recv()
	if len(m) != 2 {
		c.tb.Fatalf("reply has %d frames", len(m))
	}
	v, err := wire.Unmarshal(m[1])
	if err != nil {
		c.tb.Fatalf("reply payload: %v", err)
	}
	return wire.Command(m[0][0]), v
}

func errText(v any) string {
	if a, ok := v.([]any); ok && len(a) == 4 {
		return fmt.Sprint(a[3])
	}
	return fmt.Sprintf("not an error response: %v", v)
}

type tworker struct {
	*tclient
	name string
}

func newWorker(tb testing.TB, ep, name string) *tworker {
	w := &tworker{newClient(tb, ep, zmq.DEALER), name}
	w.send("", []byte{byte(wire.Ready)}, name)
	return w
}

// job waits for a job and returns (client id, request).
func (w *tworker) job() ([]byte, []byte) {
	w.tb.Helper()
	m := w.recv()
	if len(m) != 3 || len(m[0]) != 0 {
		w.tb.Fatalf("job has %d frames: %q", len(m), m)
	}
	return m[1], m[2]
}

func (w *tworker) respond(client, data []byte) {
	w.send("", []byte{byte(wire.Response)}, client, data)
	w.send("", []byte{byte(wire.Ready)}, w.name) // as 0.1.3 workers do
}

// noMessage asserts nothing arrives within d.
func (c *tclient) noMessage(d time.Duration) {
	c.tb.Helper()
	c.s.SetRcvtimeo(d)
	defer c.s.SetRcvtimeo(5 * time.Second)
	if m, err := c.s.RecvMessageBytes(0); err == nil {
		c.tb.Fatalf("unexpected message %q", m)
	}
}

// waitWorkers polls LIST until calc has n workers.
func waitWorkers(tb testing.TB, front, calc string, n int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := newClient(tb, front, zmq.REQ)
		_, v := c.call([]byte{byte(wire.List)})
		c.s.Close()
		m := v.(map[string]any)
		if got, _ := m[calc].(int64); int(got) == n || (n == 0 && m[calc] == nil) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("calc %s: want %d workers, list %v", calc, n, m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBroker_EndToEnd(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	w := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 1)

	c := newClient(t, tb.front, zmq.REQ)
	payload := []byte("request-bytes")
	c.send([]byte{byte(wire.Request)}, "lj", payload)
	cid, req := w.job()
	if string(req) != string(payload) {
		t.Fatalf("worker got %q", req)
	}
	w.respond(cid, []byte("result-bytes"))
	m := c.recv()
	if len(m) != 2 || m[0][0] != byte(wire.Response) || string(m[1]) != "result-bytes" {
		t.Fatalf("client got %q", m)
	}
}

func TestBroker_BigPayloadPassesIntact(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	w := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 1)
	big := make([]byte, 2_400_000)
	for i := range big {
		big[i] = byte(i * 7)
	}
	c := newClient(t, tb.front, zmq.REQ)
	c.send([]byte{byte(wire.Request)}, "lj", big)
	cid, req := w.job()
	if string(req) != string(big) {
		t.Fatal("request payload changed in transit")
	}
	w.respond(cid, req)
	if m := c.recv(); string(m[1]) != string(big) {
		t.Fatal("reply payload changed in transit")
	}
}

func TestBroker_NoWorkers(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	c := newClient(t, tb.front, zmq.REQ)
	cmd, v := c.call([]byte{byte(wire.Request)}, "lj", "x")
	if cmd != wire.Error || errText(v) != "No workers available for calculator 'lj'" {
		t.Fatalf("%s %v", cmd, v)
	}
}

func TestBroker_OneJobPerWorker(t *testing.T) {
	// Two workers, four concurrent clients: no worker ever holds two jobs,
	// and all four are served (the reference stacked jobs in one worker).
	tb := mustStartBroker(t, Options{})
	w1 := newWorker(t, tb.back, "lj")
	w2 := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 2)
	var clients []*tclient
	for i := 0; i < 4; i++ {
		c := newClient(t, tb.front, zmq.REQ)
		c.send([]byte{byte(wire.Request)}, "lj", fmt.Sprint(i))
		clients = append(clients, c)
	}
	c1, r1 := w1.job()
	c2, r2 := w2.job()
	// Each worker re-sends READY as an idle heartbeat while busy would:
	w1.send("", []byte{byte(wire.Ready)}, "lj")
	w2.send("", []byte{byte(wire.Ready)}, "lj")
	w1.noMessage(200 * time.Millisecond)
	w2.noMessage(10 * time.Millisecond)
	w1.respond(c1, r1)
	w2.respond(c2, r2)
	c3, r3 := w1.job()
	c4, r4 := w2.job()
	w1.respond(c3, r3)
	w2.respond(c4, r4)
	for i, c := range clients {
		if m := c.recv(); string(m[1]) != fmt.Sprint(i) {
			t.Fatalf("client %d got %q", i, m[1])
		}
	}
}

func TestBroker_DeadWorkerJobRedispatched(t *testing.T) {
	tb := mustStartBroker(t, Options{WorkerTimeout: 400 * time.Millisecond})
	w1 := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 1)
	c := newClient(t, tb.front, zmq.REQ)
	c.send([]byte{byte(wire.Request)}, "lj", "x")
	w1.job()
	w2 := newWorker(t, tb.back, "lj") // joins while w1 computes
	// Registered before w1 dies: a broker that hears of the death at once (ROUTER_NOTIFY) would
	// otherwise find no worker for the job and fail it.
	waitWorkers(t, tb.front, "lj", 2)
	w1.s.Close() // w1 dies silently
	// Keep w2 alive with heartbeats until the job arrives.
	w2.s.SetRcvtimeo(100 * time.Millisecond)
	var m [][]byte
	for deadline := time.Now().Add(5 * time.Second); m == nil; {
		if time.Now().After(deadline) {
			t.Fatal("job never re-dispatched to w2")
		}
		got, err := w2.s.RecvMessageBytes(0)
		if err != nil {
			w2.send("", []byte{byte(wire.Ready)}, "lj")
			continue
		}
		m = got
	}
	if string(m[2]) != "x" {
		t.Fatalf("w2 got %q", m)
	}
	w2.respond(m[1], []byte("done"))
	if r := c.recv(); string(r[1]) != "done" {
		t.Fatalf("client got %q", r)
	}
}

func TestBroker_QueueExpiry(t *testing.T) {
	tb := mustStartBroker(t, Options{QueueTimeout: 500 * time.Millisecond})
	w := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 1)
	c1 := newClient(t, tb.front, zmq.REQ)
	c1.send([]byte{byte(wire.Request)}, "lj", "a")
	w.job() // holds it
	c2 := newClient(t, tb.front, zmq.REQ)
	start := time.Now()
	cmd, v := c2.call([]byte{byte(wire.Request)}, "lj", "b")
	el := time.Since(start)
	if cmd != wire.Error || errText(v) != "Request timed out waiting for 'lj' worker" {
		t.Fatalf("%s %v", cmd, v)
	}
	if el < 500*time.Millisecond || el > 1500*time.Millisecond {
		t.Fatalf("expired after %v, want 0.5–1.5 s", el)
	}
}

func TestBroker_ManagerSpawn(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	m := newClient(t, tb.back, zmq.DEALER)
	m.send("", []byte{byte(wire.ManagerReady)}, "lj,emt")
	lc := newClient(t, tb.front, zmq.REQ)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, v := lc.call([]byte{byte(wire.List)})
		if fmt.Sprint(v) == "map[emt:0 lj:0]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("list %v", v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Five clients at once: exactly one SPAWN_REQUEST.
	var clients []*tclient
	for i := 0; i < 5; i++ {
		c := newClient(t, tb.front, zmq.REQ)
		c.send([]byte{byte(wire.Request)}, "lj", fmt.Sprint(i))
		clients = append(clients, c)
	}
	sr := m.recv()
	if len(sr) != 3 || sr[1][0] != byte(wire.SpawnRequest) || string(sr[2]) != "lj" {
		t.Fatalf("spawn request %q", sr)
	}
	m.send("", []byte{byte(wire.SpawnResponse)}, "lj", "ok", "")
	m.noMessage(200 * time.Millisecond)
	w := newWorker(t, tb.back, "lj")
	for range clients {
		cid, req := w.job()
		w.respond(cid, req)
	}
	for i, c := range clients {
		if r := c.recv(); string(r[1]) != fmt.Sprint(i) {
			t.Fatalf("client %d got %q", i, r[1])
		}
	}
	// A failed spawn reaches the waiting client with the manager's reason.
	c := newClient(t, tb.front, zmq.REQ)
	c.send([]byte{byte(wire.Request)}, "emt", "x")
	if sr := m.recv(); string(sr[2]) != "emt" {
		t.Fatalf("spawn request %q", sr)
	}
	m.send("", []byte{byte(wire.SpawnResponse)}, "emt", "error", "exit code 1: ImportError")
	if r := c.recv(); errText(mustUnmarshal(t, r[1])) != "Failed to spawn worker: exit code 1: ImportError" {
		t.Fatalf("client got %q", r)
	}
}

func mustUnmarshal(t *testing.T, b []byte) any {
	t.Helper()
	v, err := wire.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestBroker_StatusShape(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 1)
	c := newClient(t, tb.front, zmq.REQ)
	cmd, v := c.call([]byte{byte(wire.Status)})
	st := v.(map[string]any)
	if cmd != wire.Response {
		t.Fatal(cmd)
	}
	if got := fmt.Sprint(st["workers"]); got != "map[lj:map[busy:0 idle:1 total:1]]" {
		t.Errorf("workers %s", got)
	}
	if got := fmt.Sprint(st["pending_requests"]); got != "map[]" {
		t.Errorf("pending %s", got)
	}
	if got := fmt.Sprint(st["manager"]); got != "map[connected:false spawnable:[]]" {
		t.Errorf("manager %s", got)
	}
}

func TestBroker_MalformedNeverHangsOrCrashes(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	w := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 1)

	// A DEALER client can send anything; it always gets an ERROR back.
	d := newClient(t, tb.front, zmq.DEALER)
	for _, msg := range [][]any{
		{"", []byte{0x04}},                          // REQUEST without name and data
		{"", []byte{0x04}, []byte{0xff, 0xfe}, "x"}, // invalid UTF-8 name
		{"", []byte{0x99}},                          // unknown command
		{"", "long-command"},                        // command frame of many bytes
		{"not-empty", []byte{0x06}},                 // no delimiter
		{"", []byte{0x04}, "lj", "a", "b", "c", "d", "e", "f", "g", "h"}, // too many frames
	} {
		d.send(msg...)
		m := d.recv()
		if len(m) < 3 || len(m[0]) != 0 || m[1][0] != byte(wire.Error) {
			t.Fatalf("reply to %q: %q", msg, m)
		}
	}
	// Garbage on the backend is dropped.
	g := newClient(t, tb.back, zmq.DEALER)
	for _, msg := range [][]any{{"x"}, {"", []byte{0x05}}, {"", []byte{0x01}}, {"", []byte{0x0d}, "lj"}, {"", []byte{0x42}, "z"}} {
		g.send(msg...)
	}
	// And the broker still routes.
	c := newClient(t, tb.front, zmq.REQ)
	c.send([]byte{byte(wire.Request)}, "lj", "ok")
	cid, req := w.job()
	w.respond(cid, req)
	if m := c.recv(); string(m[1]) != "ok" {
		t.Fatalf("%q", m)
	}
}

func TestBroker_CorrelatedDealerClient(t *testing.T) {
	tb := mustStartBroker(t, Options{})
	w1 := newWorker(t, tb.back, "lj")
	w2 := newWorker(t, tb.back, "lj")
	waitWorkers(t, tb.front, "lj", 2)
	d := newClient(t, tb.front, zmq.DEALER)
	d.send("", []byte{byte(wire.Request)}, "lj", "a", "id-a")
	d.send("", []byte{byte(wire.Request)}, "lj", "b", "id-b")
	ca, ra := w1.job()
	cb, rb := w2.job()
	w2.respond(cb, append([]byte("r"), rb...)) // answers out of order
	w1.respond(ca, append([]byte("r"), ra...))
	got := map[string]string{}
	for len(got) < 2 {
		m := d.recv()
		if len(m) != 4 {
			t.Fatalf("%q", m)
		}
		if m[1][0] == byte(wire.Progress) {
			continue // "dispatched": DEALER clients with a correlation frame get progress
		}
		got[string(m[3])] = string(m[2])
	}
	if got["id-a"] != "ra" || got["id-b"] != "rb" {
		t.Fatalf("correlation lost: %v", got)
	}
}

func TestBroker_IPC(t *testing.T) {
	dir := filepath.Join(shortTempDir(t), "sock")
	cfg := Config{Frontend: "ipc://" + dir + "/f.ipc", Backend: "ipc://" + dir + "/b.ipc"}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v %v, want 0700", fi.Mode().Perm(), err)
	}
	// A second broker on the same paths refuses with a clear message.
	if _, err := New(cfg); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Fatalf("second broker: %v", err)
	}
	b.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("socket dir left behind: %v", entries)
	}
	// And after the first is gone, the path is free again.
	b2, err := New(cfg)
	if err != nil {
		t.Fatalf("rebind after close: %v", err)
	}
	b2.Close()
}

func TestBroker_ConcurrentLoad(t *testing.T) {
	// 8 clients × 50 requests over 3 echo workers: every reply arrives at
	// the right client.
	tb := mustStartBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		w := newWorker(t, tb.back, "echo")
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.s.SetRcvtimeo(50 * time.Millisecond)
			for ctx.Err() == nil {
				m, err := w.s.RecvMessageBytes(0)
				if err != nil {
					continue
				}
				w.s.SendMessage("", []byte{byte(wire.Response)}, m[1], m[2])
				w.s.SendMessage("", []byte{byte(wire.Ready)}, "echo")
			}
		}()
	}
	waitWorkers(t, tb.front, "echo", 3)
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		c := newClient(t, tb.front, zmq.REQ)
		go func(i int) {
			for k := 0; k < 50; k++ {
				want := fmt.Sprintf("%d/%d", i, k)
				c.s.SendMessage([]byte{byte(wire.Request)}, "echo", want)
				m, err := c.s.RecvMessageBytes(0)
				if err != nil || string(m[1]) != want {
					errs <- fmt.Errorf("client %d: got %q %v want %s", i, m, err, want)
					return
				}
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
}

func TestBroker_OversizedMessageDisconnectsOnlyItsSender(t *testing.T) {
	dir := shortTempDir(t)
	b, err := New(Config{Frontend: "ipc://" + dir + "/f.ipc", Backend: "ipc://" + dir + "/b.ipc", MaxMessageSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() { cancel(); <-done; b.Close() }()
	front, back := "ipc://"+dir+"/f.ipc", "ipc://"+dir+"/b.ipc"

	w := newWorker(t, back, "lj")
	waitWorkers(t, front, "lj", 1)
	big := newClient(t, front, zmq.REQ)
	big.send([]byte{byte(wire.Request)}, "lj", make([]byte, 10000))
	big.noMessage(300 * time.Millisecond) // dropped with its connection, never routed
	w.noMessage(10 * time.Millisecond)

	c := newClient(t, front, zmq.REQ)
	c.send([]byte{byte(wire.Request)}, "lj", "small")
	cid, req := w.job()
	w.respond(cid, req)
	if m := c.recv(); string(m[1]) != "small" {
		t.Fatalf("%q", m)
	}
}
