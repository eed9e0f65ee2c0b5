package spawn

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/wire"
)

// fakeBroker is a ROUTER standing in for a broker's backend: the test
// drives the manager frame by frame.
type fakeBroker struct {
	t    *testing.T
	sock *zmq.Socket
	mgr  []byte // the manager's identity, from its first message
}

func newFakeBroker(t *testing.T) (*fakeBroker, string) {
	dir, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		t.Fatal(err)
	}
	s.SetLinger(0)
	s.SetRcvtimeo(5 * time.Second)
	ep := "ipc://" + filepath.Join(dir, "b.ipc")
	if err := s.Bind(ep); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &fakeBroker{t: t, sock: s}, ep
}

// recv returns the manager's next message, without the identity.
func (b *fakeBroker) recv() [][]byte {
	b.t.Helper()
	f, err := b.sock.RecvMessageBytes(0)
	if err != nil {
		b.t.Fatalf("nothing from the manager: %v", err)
	}
	b.mgr = f[0]
	return f[1:]
}

// ready waits for a MANAGER_READY whose capabilities satisfy cond.
func (b *fakeBroker) ready(cond func(names string, caps map[string]any) bool) {
	b.t.Helper()
	for i := 0; i < 50; i++ {
		f := b.recv()
		if c, _ := wire.ParseCommand(f[1]); c != wire.ManagerReady || len(f) != 4 {
			continue
		}
		v, err := wire.Unmarshal(f[3])
		if err != nil {
			b.t.Fatal(err)
		}
		if cond(string(f[2]), v.(map[string]any)) {
			return
		}
	}
	b.t.Fatal("no MANAGER_READY as expected")
}

// spawn sends SPAWN_REQUEST and returns the SPAWN_RESPONSE's status and text.
func (b *fakeBroker) spawn(calc string) (string, string) {
	b.t.Helper()
	b.send(wire.SpawnRequest, calc)
	return b.response()
}

func (b *fakeBroker) response() (string, string) {
	b.t.Helper()
	for i := 0; i < 50; i++ {
		f := b.recv()
		if c, _ := wire.ParseCommand(f[1]); c == wire.SpawnResponse {
			if len(f) != 5 {
				b.t.Fatalf("SPAWN_RESPONSE with %d frames", len(f))
			}
			return string(f[3]), string(f[4])
		}
	}
	b.t.Fatal("no SPAWN_RESPONSE")
	return "", ""
}

func (b *fakeBroker) send(cmd wire.Command, args ...string) {
	msg := [][]byte{b.mgr, {}, cmd.Frame()}
	for _, a := range args {
		msg = append(msg, []byte(a))
	}
	if _, err := b.sock.SendMessage(msg); err != nil {
		b.t.Fatal(err)
	}
}

func children(caps map[string]any) []map[string]any {
	var out []map[string]any
	for _, c := range caps["children"].([]any) {
		out = append(out, c.(map[string]any))
	}
	return out
}

func startManager(t *testing.T, ep string, configs map[string]SpawnConfig) (*Manager, chan error) {
	t.Helper()
	m, err := New(Config{Broker: ep, Heartbeat: 200 * time.Millisecond, Configs: configs, LogDir: t.TempDir(),
		StopGrace: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx); m.Close() }()
	t.Cleanup(func() { cancel(); <-done })
	return m, done
}

// TestManager_Protocol: replies to SPAWN_REQUEST (ok, at max_workers, No
// config), the capabilities frame, WORKER_JOINED, and SHUTDOWN.
func TestManager_Protocol(t *testing.T) {
	b, ep := newFakeBroker(t)
	m, done := startManager(t, ep, map[string]SpawnConfig{
		"sleepy": {Command: []string{"sleep", "30"}, GPUs: []string{"7"}},
	})
	b.ready(func(names string, caps map[string]any) bool {
		mw := caps["max_workers"].(map[string]any)
		return names == "sleepy" && caps["protocol"] == int64(1) && mw["sleepy"] == int64(1)
	})
	if st, text := b.spawn("sleepy"); st != "ok" || text != "" {
		t.Fatalf("spawn: %q %q", st, text)
	}
	b.ready(func(_ string, caps map[string]any) bool {
		k := children(caps)
		return len(k) == 1 && k[0]["state"] == "starting" && k[0]["gpu"] == "7" && k[0]["name"] == "sleepy"
	})
	if st, text := b.spawn("sleepy"); st != "error" || text != "at max_workers (1)" {
		t.Errorf("second spawn: %q %q", st, text)
	}
	if st, text := b.spawn("nope"); st != "error" || text != "No config" {
		t.Errorf("unknown: %q %q", st, text)
	}
	b.send(wire.WorkerJoined, "sleepy")
	b.ready(func(_ string, caps map[string]any) bool {
		k := children(caps)
		return len(k) == 1 && k[0]["state"] == "running"
	})
	b.send(wire.Shutdown)
	select {
	case err := <-done:
		done <- err // for the cleanup
		if err != ErrStopped {
			t.Errorf("Run = %v, want ErrStopped", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("manager did not stop on SHUTDOWN")
	}
	if m.Stats().Spawns != 1 || len(m.Children()) != 0 {
		t.Errorf("spawns %d, children %v after stop", m.Stats().Spawns, m.Children())
	}
}

// TestManager_AdoptsMinWorker: a SPAWN_REQUEST while a min_workers child is
// starting is answered by that child, not by a second process.
func TestManager_AdoptsMinWorker(t *testing.T) {
	b, ep := newFakeBroker(t)
	startManager(t, ep, map[string]SpawnConfig{
		"warm": {Command: []string{"sleep", "30"}, MinWorkers: 1, StartTimeout: 500 * time.Millisecond},
	})
	var first any
	b.ready(func(_ string, caps map[string]any) bool {
		if k := children(caps); len(k) == 1 {
			first = k[0]["pid"]
			return true
		}
		return false
	})
	if st, _ := b.spawn("warm"); st != "ok" {
		t.Fatalf("spawn: %q", st)
	}
	// WORKER_JOINED for another calculator tells the manager that this
	// broker reports registrations; the adopted child then times out and
	// its failure goes to the request it adopted.
	b.send(wire.WorkerJoined, "")
	st, text := b.response()
	if st != "error" || !strings.Contains(text, "did not register") {
		t.Errorf("after start_timeout: %q %q", st, text)
	}
	// Restarted after the backoff (0.5 s): a starting child with a new pid.
	b.ready(func(_ string, caps map[string]any) bool {
		k := children(caps)
		return len(k) == 1 && k[0]["state"] == "starting" && k[0]["pid"] != first
	})
}

// TestManager_DefersAtMaxWorkers: our broker asks for a worker when it
// counts a free slot, which can be before this manager has seen the old
// worker's process exit (the broker saw its connection close first). Such a
// request waits for the exit and is then served, instead of being refused.
func TestManager_DefersAtMaxWorkers(t *testing.T) {
	b, ep := newFakeBroker(t)
	m, _ := startManager(t, ep, map[string]SpawnConfig{
		"brief": {Command: []string{"sleep", "1"}}, // exits by itself after a second
	})
	b.ready(func(names string, _ map[string]any) bool { return names == "brief" })
	b.send(wire.WorkerJoined, "") // "registrations are reported": the broker is ours
	if st, _ := b.spawn("brief"); st != "ok" {
		t.Fatalf("first spawn: %s", st)
	}
	b.send(wire.WorkerJoined, "brief") // its worker registered
	t0 := time.Now()
	st, text := b.spawn("brief") // at max_workers while the first child still runs
	if st != "ok" {
		t.Fatalf("the deferred request: %q %q", st, text)
	}
	if d := time.Since(t0); d < 500*time.Millisecond {
		t.Errorf("answered after %v: before the first child exited", d)
	}
	if n := m.Stats().Spawns; n < 1 {
		t.Errorf("spawns %d", n)
	}
}
