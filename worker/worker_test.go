package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/broker"
	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/wire"
)

// Protocol tests: a Go Handler against a raw ROUTER written here (to see
// the exact frames) and against our real broker in-process.

const calcName = "T"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// tempDir is a short directory for ipc endpoints (unix socket paths must
// stay under 107 bytes; t.TempDir() can be longer).
func tempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// router is a bare ROUTER standing in for the broker.
type router struct {
	t    *testing.T
	sock *zmq.Socket
	ep   string
}

func newRouter(t *testing.T) *router {
	t.Helper()
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		t.Fatal(err)
	}
	s.SetLinger(0)
	ep := "ipc://" + filepath.Join(tempDir(t), "r.ipc")
	if err := s.Bind(ep); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &router{t: t, sock: s, ep: ep}
}

// recv returns the next message [id, "", cmd, ...] or fails after d.
func (r *router) recv(d time.Duration) [][]byte {
	r.t.Helper()
	m := r.tryRecv(d)
	if m == nil {
		r.t.Fatalf("no message from the worker within %v", d)
	}
	return m
}

func (r *router) tryRecv(d time.Duration) [][]byte {
	r.t.Helper()
	r.sock.SetRcvtimeo(d)
	m, err := r.sock.RecvMessageBytes(0)
	if err != nil {
		return nil
	}
	if len(m) < 3 || len(m[1]) != 0 {
		r.t.Fatalf("malformed message from the worker: %q", m)
	}
	return m
}

// expect receives the next message and checks its command and name.
func (r *router) expect(cmd wire.Command, d time.Duration) [][]byte {
	r.t.Helper()
	m := r.recv(d)
	if got := wire.Command(m[2][0]); got != cmd {
		r.t.Fatalf("got %v %q, want %v", got, m[3:], cmd)
	}
	// READY names the worker's pid after the calculator (for the manager's death reports),
	// and now and then what the worker reports of itself.
	if cmd == wire.Ready && (len(m) < 5 || len(m) > 6 || string(m[4]) != strconv.Itoa(os.Getpid())) {
		r.t.Fatalf("READY frames %q, want [id, \"\", READY, %q, pid %d(, info)]", m, calcName, os.Getpid())
	}
	if cmd == wire.Ready && len(m) == 6 {
		if c, err := wire.ParseCapacity(m[5]); err != nil || c.Structures != 1 || c.Info == nil || c.Info.RSS <= 0 {
			r.t.Fatalf("READY's info frame: %+v %v", c, err)
		}
	}
	if cmd == wire.Ready {
		m = m[:4]
	}
	if cmd != wire.Response && (len(m) != 4 || string(m[3]) != calcName) {
		r.t.Fatalf("%v frames %q, want [id, \"\", cmd, %q]", cmd, m, calcName)
	}
	return m
}

func (r *router) send(parts ...[]byte) {
	r.t.Helper()
	args := make([]any, len(parts))
	for i, p := range parts {
		args[i] = p
	}
	if _, err := r.sock.SendMessage(args...); err != nil {
		r.t.Fatal(err)
	}
}

// running is a worker whose Run runs in a goroutine.
type running struct {
	w      *Worker
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // Run's error, once done
}

func (r *running) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(d):
		t.Fatalf("worker still running after %v", d)
		return nil
	}
}

func startWorker(t *testing.T, cfg Config) *running {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = calcName
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = w.Run(ctx)
		w.Close()
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("worker did not stop")
		}
	})
	return r
}

// cpuTime is the CPU time (user + system) this test process has used.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func echo(_ context.Context, req []byte) []byte { return append([]byte("echo:"), req...) }

func sleeper(d time.Duration) Handler {
	return func(_ context.Context, req []byte) []byte {
		time.Sleep(d)
		return echo(nil, req)
	}
}

func TestWorker_Protocol(t *testing.T) {
	t.Run("ReadyAtStartAndAsHeartbeat", func(t *testing.T) {
		r := newRouter(t)
		startWorker(t, Config{Broker: r.ep, Heartbeat: 50 * time.Millisecond, Handler: echo})
		r.expect(wire.Ready, 2*time.Second)
		start := time.Now()
		n := 0
		for time.Since(start) < 500*time.Millisecond {
			if m := r.tryRecv(100 * time.Millisecond); m != nil {
				if got := wire.Command(m[2][0]); got != wire.Ready {
					t.Fatalf("idle worker sent %v", got)
				}
				n++
			}
		}
		// 10 expected; a loaded machine may lose one or two.
		if n < 6 || n > 12 {
			t.Fatalf("%d READY heartbeats in 500 ms at a 50 ms interval", n)
		}
	})

	t.Run("BusyWhileComputingThenResponseAndReady", func(t *testing.T) {
		r := newRouter(t)
		startWorker(t, Config{Broker: r.ep, Heartbeat: 100 * time.Millisecond, Handler: sleeper(550 * time.Millisecond)})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, []byte("client-1"), []byte("payload"))
		busy := 0
		for {
			m := r.recv(2 * time.Second)
			c := wire.Command(m[2][0])
			if c == wire.Busy {
				busy++
				continue
			}
			if c != wire.Response {
				t.Fatalf("got %v while computing", c)
			}
			if len(m) != 5 || string(m[3]) != "client-1" || string(m[4]) != "echo:payload" {
				t.Fatalf("RESPONSE frames %q", m)
			}
			break
		}
		// One BUSY per interval from the first interval on: 5 in 550 ms.
		if busy < 4 || busy > 6 {
			t.Fatalf("%d BUSY during a 550 ms job at a 100 ms interval, want 5", busy)
		}
		// READY follows the RESPONSE at once, not a heartbeat later.
		r.expect(wire.Ready, 50*time.Millisecond)
	})

	t.Run("SpinServesTheNextJobThenSleeps", func(t *testing.T) {
		// After a job the worker busy-polls for Spin: a job sent in that
		// window is served like any other, a SHUTDOWN still stops it, and
		// once the window has passed the worker sleeps (an idle worker
		// must not burn a CPU).
		r := newRouter(t)
		const spin = 150 * time.Millisecond
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: 5 * time.Second, Spin: spin, Handler: echo})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		for i, client := range []string{"c1", "c2", "c3"} {
			r.send(id, nil, []byte(client), []byte("p"))
			m := r.expect(wire.Response, time.Second)
			if string(m[3]) != client || string(m[4]) != "echo:p" {
				t.Fatalf("job %d: RESPONSE frames %q", i, m)
			}
			r.expect(wire.Ready, time.Second)
		}
		time.Sleep(spin + 100*time.Millisecond)
		before := cpuTime(t)
		time.Sleep(500 * time.Millisecond)
		if used := cpuTime(t) - before; used > 100*time.Millisecond {
			t.Fatalf("idle worker used %v of CPU in 500 ms: still spinning", used)
		}
		r.send(id, nil, []byte("c4"), []byte("q"))
		r.expect(wire.Response, time.Second)
		r.expect(wire.Ready, time.Second)
		r.send(id, nil, wire.Shutdown.Frame()) // inside the spin window
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		r.expect(wire.Disconnect, time.Second)
	})

	t.Run("ShutdownWhenIdle", func(t *testing.T) {
		r := newRouter(t)
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: echo})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, wire.Shutdown.Frame())
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		r.expect(wire.Disconnect, time.Second)
	})

	t.Run("ShutdownDuringJob", func(t *testing.T) {
		// The SHUTDOWN waits for the job (as the reference), which is
		// answered; then the worker leaves without inviting another job.
		r := newRouter(t)
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: sleeper(200 * time.Millisecond)})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, []byte("c"), []byte("x"))
		r.send(id, nil, wire.Shutdown.Frame())
		r.expect(wire.Response, 2*time.Second)
		r.expect(wire.Disconnect, 2*time.Second)
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})

	t.Run("DisconnectOnCancel", func(t *testing.T) {
		r := newRouter(t)
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: echo})
		r.expect(wire.Ready, 2*time.Second)
		run.cancel()
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		r.expect(wire.Disconnect, time.Second)
	})

	t.Run("DisconnectReachesALateBroker", func(t *testing.T) {
		// The worker stops before any broker listens: the linger keeps
		// the DISCONNECT queued while Close waits, and it arrives once the
		// broker binds within that second.
		dir := tempDir(t)
		ep := "ipc://" + filepath.Join(dir, "late.ipc")
		w, err := New(Config{Name: calcName, Broker: ep, Heartbeat: time.Second, Handler: echo, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		w.Run(ctx)
		closed := make(chan struct{})
		go func() { w.Close(); close(closed) }()
		time.Sleep(100 * time.Millisecond)
		s, _ := zmq.NewSocket(zmq.ROUTER)
		defer s.Close()
		s.SetLinger(0)
		if err := s.Bind(ep); err != nil {
			t.Fatal(err)
		}
		r := &router{t: t, sock: s, ep: ep}
		r.expect(wire.Ready, 2*time.Second)
		r.expect(wire.Disconnect, 2*time.Second)
		<-closed
	})

	t.Run("IdleTimeout", func(t *testing.T) {
		r := newRouter(t)
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: 50 * time.Millisecond, IdleTimeout: 300 * time.Millisecond, Handler: echo})
		start := time.Now()
		err := run.wait(t, 3*time.Second)
		if !errors.Is(err, ErrIdle) {
			t.Fatalf("Run: %v, want ErrIdle", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("left after %v, before the 300 ms idle timeout", d)
		}
		for {
			m := r.recv(time.Second)
			if wire.Command(m[2][0]) == wire.Disconnect {
				break
			}
		}
	})

	t.Run("IdleTimeoutCountsFromTheLastJob", func(t *testing.T) {
		r := newRouter(t)
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: 50 * time.Millisecond, IdleTimeout: 400 * time.Millisecond, Handler: sleeper(300 * time.Millisecond)})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		time.Sleep(250 * time.Millisecond)
		r.send(id, nil, []byte("c"), []byte("x"))
		jobEnd := time.Now().Add(300 * time.Millisecond)
		if err := run.wait(t, 3*time.Second); !errors.Is(err, ErrIdle) {
			t.Fatalf("Run: %v, want ErrIdle", err)
		}
		if d := time.Since(jobEnd); d < 350*time.Millisecond {
			t.Fatalf("left %v after the job ended, before the 400 ms idle timeout", d)
		}
	})

	t.Run("SignalCancel", func(t *testing.T) {
		r := newRouter(t)
		var sawCancel atomic.Bool
		started := make(chan struct{})
		h := func(ctx context.Context, req []byte) []byte {
			close(started)
			select {
			case <-ctx.Done():
				sawCancel.Store(true)
				return wire.ErrorResponse("interrupted")
			case <-time.After(5 * time.Second):
				return echo(ctx, req)
			}
		}
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, OnStop: Cancel, Handler: h})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, []byte("c"), []byte("x"))
		<-started
		run.cancel()
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !sawCancel.Load() {
			t.Fatal("the handler's ctx was not cancelled")
		}
		// No RESPONSE: the broker gives the job to another worker.
		r.expect(wire.Disconnect, time.Second)
		if got := run.w.Stats().Handled; got != 0 {
			t.Fatalf("handled %d, want 0", got)
		}
	})

	t.Run("SignalFinish", func(t *testing.T) {
		r := newRouter(t)
		var sawCancel atomic.Bool
		started := make(chan struct{})
		h := func(ctx context.Context, req []byte) []byte {
			close(started)
			select {
			case <-ctx.Done():
				sawCancel.Store(true)
			case <-time.After(300 * time.Millisecond):
			}
			return echo(ctx, req)
		}
		run := startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, OnStop: Finish, Handler: h})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, []byte("c"), []byte("x"))
		<-started
		run.cancel()
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if sawCancel.Load() {
			t.Fatal("the handler's ctx was cancelled in finish mode")
		}
		if m := r.expect(wire.Response, time.Second); string(m[4]) != "echo:x" {
			t.Fatalf("RESPONSE %q", m[4])
		}
		// No READY between RESPONSE and DISCONNECT.
		r.expect(wire.Disconnect, time.Second)
	})

	t.Run("HandlerPanic", func(t *testing.T) {
		r := newRouter(t)
		h := func(ctx context.Context, req []byte) []byte {
			if string(req) == "boom" {
				panic("boom")
			}
			return echo(ctx, req)
		}
		startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: h})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, []byte("c"), []byte("boom"))
		m := r.expect(wire.Response, 2*time.Second)
		resp, err := wire.DecodeResponse(m[4])
		if err != nil || resp.Success || resp.Error != "boom" {
			t.Fatalf("response %+v, %v; want an error \"boom\"", resp, err)
		}
		r.expect(wire.Ready, time.Second)
		r.send(id, nil, []byte("c"), []byte("ok"))
		if m := r.expect(wire.Response, 2*time.Second); string(m[4]) != "echo:ok" {
			t.Fatalf("after a panic: %q", m[4])
		}
	})

	t.Run("IgnoresJunk", func(t *testing.T) {
		r := newRouter(t)
		startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: echo})
		id := r.expect(wire.Ready, 2*time.Second)[0]
		r.send(id, nil, []byte{0x42})              // 2 frames, not SHUTDOWN
		r.send(id, []byte("x"), []byte("y"))       // no delimiter
		r.send(id, nil, []byte("c"), []byte("ok")) // a job still works
		if m := r.expect(wire.Response, 2*time.Second); string(m[4]) != "echo:ok" {
			t.Fatalf("RESPONSE %q", m[4])
		}
	})
}

// ---- against our broker ----------------------------------------------------

type testBroker struct {
	front, back string
	cancel      context.CancelFunc
	done        chan struct{}
}

func startBroker(t *testing.T, dir string, opt broker.Options) *testBroker {
	t.Helper()
	tb := &testBroker{
		front: "ipc://" + filepath.Join(dir, "f.ipc"),
		back:  "ipc://" + filepath.Join(dir, "b.ipc"),
		done:  make(chan struct{}),
	}
	b, err := broker.New(broker.Config{Frontend: tb.front, Backend: tb.back, Options: opt, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.cancel = cancel
	go func() {
		b.Run(ctx)
		b.Close()
		close(tb.done)
	}()
	t.Cleanup(tb.stop)
	return tb
}

func (b *testBroker) stop() {
	b.cancel()
	<-b.done
}

// request sends REQUEST name payload as a REQ client and returns the
// reply's command and payload.
func request(t *testing.T, front, name string, payload []byte, timeout time.Duration) (wire.Command, []byte) {
	t.Helper()
	s, err := zmq.NewSocket(zmq.REQ)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetLinger(0)
	s.SetRcvtimeo(timeout)
	if err := s.Connect(front); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SendMessage(wire.Request.Frame(), name, payload); err != nil {
		t.Fatal(err)
	}
	m, err := s.RecvMessageBytes(0)
	if err != nil {
		t.Fatalf("no reply within %v: %v", timeout, err)
	}
	return wire.Command(m[0][0]), m[1]
}

func control(t *testing.T, front string, cmd wire.Command, args ...string) any {
	t.Helper()
	s, _ := zmq.NewSocket(zmq.REQ)
	defer s.Close()
	s.SetLinger(0)
	s.SetRcvtimeo(2 * time.Second)
	s.Connect(front)
	parts := []any{cmd.Frame()}
	for _, a := range args {
		parts = append(parts, a)
	}
	s.SendMessage(parts...)
	m, err := s.RecvMessageBytes(0)
	if err != nil {
		t.Fatalf("%v: %v", cmd, err)
	}
	v, err := wire.Unmarshal(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// workers returns LIST's count for calcName (0 when absent).
func workers(t *testing.T, front string) int64 {
	m, _ := control(t, front, wire.List).(map[string]any)
	n, _ := m[calcName].(int64)
	return n
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWorker_Broker(t *testing.T) {
	t.Run("RoundTrip", func(t *testing.T) {
		b := startBroker(t, tempDir(t), broker.Options{})
		startWorker(t, Config{Broker: b.back, Heartbeat: time.Second, Handler: echo})
		waitFor(t, "registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		for i := 0; i < 3; i++ {
			cmd, body := request(t, b.front, calcName, []byte("x"), 5*time.Second)
			if cmd != wire.Response || string(body) != "echo:x" {
				t.Fatalf("reply %v %q", cmd, body)
			}
		}
	})

	t.Run("BusyKeepsALongJobAlive", func(t *testing.T) {
		// A job 4× the broker's worker timeout completes: BUSY every
		// 100 ms keeps the worker alive at a 250 ms timeout.
		b := startBroker(t, tempDir(t), broker.Options{WorkerTimeout: 250 * time.Millisecond})
		startWorker(t, Config{Broker: b.back, Heartbeat: 100 * time.Millisecond, Handler: sleeper(time.Second)})
		waitFor(t, "registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		cmd, body := request(t, b.front, calcName, []byte("slow"), 5*time.Second)
		if cmd != wire.Response || string(body) != "echo:slow" {
			t.Fatalf("reply %v %q", cmd, body)
		}
	})

	t.Run("WorkerShutdown", func(t *testing.T) {
		b := startBroker(t, tempDir(t), broker.Options{})
		run := startWorker(t, Config{Broker: b.back, Heartbeat: 100 * time.Millisecond, Handler: echo})
		waitFor(t, "registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		v, _ := control(t, b.front, wire.WorkerShutdown, calcName).(map[string]any)
		if n, _ := v["shutdown_count"].(int64); n != 1 {
			t.Fatalf("WORKER_SHUTDOWN reply %v", v)
		}
		if err := run.wait(t, 2*time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		waitFor(t, "deregistration", 2*time.Second, func() bool { return workers(t, b.front) == 0 })
	})

	t.Run("DisconnectDeregisters", func(t *testing.T) {
		// With a 30 s worker timeout only the DISCONNECT can make the
		// broker forget the worker this quickly.
		b := startBroker(t, tempDir(t), broker.Options{WorkerTimeout: 30 * time.Second})
		run := startWorker(t, Config{Broker: b.back, Heartbeat: 100 * time.Millisecond, Handler: echo})
		waitFor(t, "registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		run.cancel()
		run.wait(t, 2*time.Second)
		waitFor(t, "deregistration", 2*time.Second, func() bool { return workers(t, b.front) == 0 })
	})

	t.Run("ReRegistersAfterBrokerRestart", func(t *testing.T) {
		dir := tempDir(t)
		b := startBroker(t, dir, broker.Options{})
		startWorker(t, Config{Broker: b.back, Heartbeat: 100 * time.Millisecond, Handler: echo})
		waitFor(t, "registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		if cmd, _ := request(t, b.front, calcName, []byte("1"), 5*time.Second); cmd != wire.Response {
			t.Fatalf("before restart: %v", cmd)
		}
		b.stop()
		b = startBroker(t, dir, broker.Options{})
		waitFor(t, "re-registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		cmd, body := request(t, b.front, calcName, []byte("2"), 5*time.Second)
		if cmd != wire.Response || string(body) != "echo:2" {
			t.Fatalf("after restart: %v %q", cmd, body)
		}
	})

	t.Run("CancelledJobGoesToAnotherWorker", func(t *testing.T) {
		b := startBroker(t, tempDir(t), broker.Options{})
		started := make(chan struct{}, 1)
		blocker := func(ctx context.Context, req []byte) []byte {
			started <- struct{}{}
			<-ctx.Done()
			return wire.ErrorResponse("interrupted")
		}
		first := startWorker(t, Config{Name: calcName, Broker: b.back, Heartbeat: 100 * time.Millisecond, OnStop: Cancel, Handler: blocker})
		waitFor(t, "registration", 3*time.Second, func() bool { return workers(t, b.front) == 1 })
		type reply struct {
			cmd  wire.Command
			body []byte
		}
		got := make(chan reply, 1)
		go func() {
			c, body := request(t, b.front, calcName, []byte("job"), 10*time.Second)
			got <- reply{c, body}
		}()
		<-started
		startWorker(t, Config{Broker: b.back, Heartbeat: 100 * time.Millisecond, Handler: echo})
		waitFor(t, "the second worker", 3*time.Second, func() bool { return workers(t, b.front) == 2 })
		first.cancel()
		r := <-got
		if r.cmd != wire.Response || !bytes.Equal(r.body, []byte("echo:job")) {
			t.Fatalf("reply %v %q, want the second worker's answer", r.cmd, r.body)
		}
	})
}

// TestWorker_SaysWhereItsBrokerIs: a worker with no broker at its address
// warns that none answers (it keeps trying) instead of claiming it
// registered; it says "connected" when the connection is up and
// "registered" only when the broker acknowledges its READY; losing the
// broker is a warning, and a broker on the same address again a
// reconnection and a new registration.
func TestWorker_SaysWhereItsBrokerIs(t *testing.T) {
	dir := tempDir(t)
	ep := "ipc://" + filepath.Join(dir, "b.ipc")
	var logs proctest.SyncBuf
	w, err := New(Config{Name: calcName, Broker: ep, Heartbeat: 200 * time.Millisecond, Handler: echo,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), NoBrokerWarning: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitLog := func(what string) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if strings.Contains(logs.String(), what) {
				return
			}
		}
		t.Fatalf("the worker never logged %q:\n%s", what, logs.String())
	}
	waitLog("no broker answers here yet")
	if strings.Contains(logs.String(), "worker registered") {
		t.Fatalf("registered without a broker:\n%s", logs.String())
	}
	bind := func() *zmq.Socket {
		s, _ := zmq.NewSocket(zmq.ROUTER)
		s.SetLinger(0)
		if err := s.Bind(ep); err != nil {
			t.Fatal(err)
		}
		return s
	}
	ack := func(s *zmq.Socket) { // what aserpc's broker answers a READY that names a pid
		m := (&router{t: t, sock: s, ep: ep}).expect(wire.Ready, 2*time.Second)
		if _, err := s.SendMessage(m[0], "", wire.WorkerJoined.Frame()); err != nil {
			t.Fatal(err)
		}
	}
	s := bind()
	waitLog("connected to the broker")
	if strings.Contains(logs.String(), "worker registered") {
		t.Fatalf("registered before the broker answered:\n%s", logs.String())
	}
	ack(s)
	waitLog("worker registered")
	s.Close()
	waitLog("lost the connection to the broker")
	s = bind()
	defer s.Close()
	waitLog("reconnected to the broker")
	ack(s) // it registers again with the new broker
	waitLog("registered again")
}
