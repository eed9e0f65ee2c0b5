package broker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/wire"
)

// curveWorld is a broker on tcp://127.0.0.1 with CURVE and one key of
// each role, plus a key it does not know.
type curveWorld struct {
	front, back                             string
	server, client, worker, admin, stranger auth.Cert
	b                                       *Broker
}

func mustCert(tb testing.TB) auth.Cert {
	tb.Helper()
	c, err := auth.NewCert()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func mustStartCurveBroker(tb testing.TB, opt Options) *curveWorld {
	tb.Helper()
	w := &curveWorld{server: mustCert(tb), client: mustCert(tb), worker: mustCert(tb), admin: mustCert(tb), stranger: mustCert(tb)}
	keys, err := auth.NewKeys(
		auth.Entry{Role: auth.Client, Key: w.client.Public, Name: "alice"},
		auth.Entry{Role: auth.Worker, Key: w.worker.Public, Name: "gpu1"},
		auth.Entry{Role: auth.Admin, Key: w.admin.Public, Name: "ops"},
	)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := New(Config{Frontend: "tcp://127.0.0.1:*", Backend: "tcp://127.0.0.1:*", Options: opt,
		Curve: &Curve{Cert: w.server, Keys: keys}})
	if err != nil {
		tb.Fatal(err)
	}
	w.b = b
	w.front, w.back = b.Endpoints()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("broker Run: %v", err)
		}
		b.Close()
	})
	return w
}

// dial connects a socket of typ to ep as key (nil: plaintext).
func (w *curveWorld) dial(tb testing.TB, ep string, typ zmq.Type, key *auth.Cert) *tclient {
	tb.Helper()
	return dialClient(tb, ep, typ, func(s *zmq.Socket) error {
		if key == nil {
			return nil
		}
		return s.ClientAuthCurve(w.server.Public, key.Public, key.Secret)
	})
}

// answered sends LIST as key and reports whether any reply came within
// 1.5 s: a refused handshake gives none (ZAP 400 is not an answer the
// application sees), an admitted one answers in milliseconds.
func (w *curveWorld) answered(tb testing.TB, key *auth.Cert) bool {
	tb.Helper()
	c := w.dial(tb, w.front, zmq.REQ, key)
	defer c.s.Close()
	c.send([]byte{byte(wire.List)})
	c.s.SetRcvtimeo(1500 * time.Millisecond)
	_, err := c.s.RecvMessageBytes(0)
	return err == nil
}

func (w *curveWorld) list(tb testing.TB) map[string]any {
	tb.Helper()
	c := w.dial(tb, w.front, zmq.REQ, &w.admin)
	defer c.s.Close()
	cmd, v := c.call([]byte{byte(wire.List)})
	m, ok := v.(map[string]any)
	if cmd != wire.Response || !ok {
		tb.Fatalf("LIST as admin: %v %v", cmd, errText(v))
	}
	return m
}

func (w *curveWorld) waitWorkers(tb testing.TB, calc string, n int64) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, _ := w.list(tb)[calc].(int64); got == n {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: want %d workers, list %v", calc, n, w.list(tb))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBroker_Curve(t *testing.T) {
	w := mustStartCurveBroker(t, Options{AllowShutdown: true})

	t.Run("AuthorisedClientAndWorker", func(t *testing.T) {
		wk := w.dial(t, w.back, zmq.DEALER, &w.worker)
		wk.send("", []byte{byte(wire.Ready)}, "lj")
		w.waitWorkers(t, "lj", 1)
		c := w.dial(t, w.front, zmq.REQ, &w.client)
		c.send([]byte{byte(wire.Request)}, "lj", "request-bytes")
		m := wk.recv()
		if len(m) != 3 || string(m[2]) != "request-bytes" {
			t.Fatalf("job %q", m)
		}
		wk.send("", []byte{byte(wire.Response)}, m[1], "result-bytes")
		r := c.recv()
		if len(r) != 2 || wire.Command(r[0][0]) != wire.Response || string(r[1]) != "result-bytes" {
			t.Fatalf("reply %q", r)
		}
	})
	t.Run("UnknownKeyRejected", func(t *testing.T) {
		// The stranger knows the server key; only the allow-list stops it.
		if w.answered(t, &w.stranger) {
			t.Error("an unknown key got an answer")
		}
		if !w.answered(t, &w.client) {
			t.Error("a client key got no answer")
		}
	})
	t.Run("PlaintextRejected", func(t *testing.T) {
		if w.answered(t, nil) {
			t.Error("a plaintext client got an answer")
		}
		if !w.answered(t, &w.admin) {
			t.Error("an admin key got no answer")
		}
	})
	t.Run("ClientKeyCannotRegisterWorker", func(t *testing.T) {
		bad := w.dial(t, w.back, zmq.DEALER, &w.client)
		bad.send("", []byte{byte(wire.Ready)}, "emt")
		plain := w.dial(t, w.back, zmq.DEALER, nil)
		plain.send("", []byte{byte(wire.Ready)}, "emt")
		good := w.dial(t, w.back, zmq.DEALER, &w.worker)
		good.send("", []byte{byte(wire.Ready)}, "emt")
		w.waitWorkers(t, "emt", 1)
		// The refused ones keep retrying their handshake; give them time
		// to have got in if they could.
		time.Sleep(time.Second)
		if got := w.list(t)["emt"]; got != int64(1) {
			t.Errorf("emt has %v workers, want only the worker key's", got)
		}
		bad.noMessage(100 * time.Millisecond)
	})
	t.Run("AdminOperationNeedsAdminKey", func(t *testing.T) {
		wk := w.dial(t, w.back, zmq.DEALER, &w.worker)
		wk.send("", []byte{byte(wire.Ready)}, "stoppable")
		w.waitWorkers(t, "stoppable", 1)
		c := w.dial(t, w.front, zmq.REQ, &w.client)
		for _, msg := range [][]any{
			{[]byte{byte(wire.WorkerShutdown)}, "stoppable"},
			{[]byte{byte(wire.Shutdown)}},
		} {
			cmd, v := c.call(msg...)
			if cmd != wire.Error || !strings.Contains(errText(v), "Permission denied") || !strings.Contains(errText(v), "needs an admin key") {
				t.Errorf("%v from a client key: %v %q, want a permission error", msg[0], cmd, errText(v))
			}
		}
		wk.noMessage(200 * time.Millisecond) // not told to stop
		a := w.dial(t, w.front, zmq.REQ, &w.admin)
		cmd, v := a.call([]byte{byte(wire.WorkerShutdown)}, "stoppable")
		if m, _ := v.(map[string]any); cmd != wire.Response || m["shutdown_count"] != int64(1) {
			t.Fatalf("admin WORKER_SHUTDOWN: %v %v", cmd, v)
		}
		if m := wk.recv(); len(m) != 2 || wire.Command(m[1][0]) != wire.Shutdown {
			t.Fatalf("worker got %q, want SHUTDOWN", m)
		}
	})
}

// TestBroker_CurveReload: keys set with SetKeys (SIGHUP in `aserpc
// broker`) admit new connections.
func TestBroker_CurveReload(t *testing.T) {
	w := mustStartCurveBroker(t, Options{})
	if w.answered(t, &w.stranger) {
		t.Fatal("an unknown key got an answer")
	}
	k, _ := auth.NewKeys(auth.Entry{Role: auth.Client, Key: w.stranger.Public, Name: "bob"})
	w.b.SetKeys(k)
	if !w.answered(t, &w.stranger) {
		t.Error("a key added by SetKeys got no answer")
	}
	if w.answered(t, &w.client) {
		t.Error("a key removed by SetKeys still got an answer")
	}
}

// TestBroker_CurveIPC: with keys, ipc endpoints stay plaintext and open
// (a 0.1.3 client connects), their directory 0700.
func TestBroker_CurveIPC(t *testing.T) {
	dir := filepath.Join(shortTempDir(t), "sock")
	keys, _ := auth.NewKeys()
	b, err := New(Config{Frontend: "ipc://" + dir + "/f.ipc", Backend: "ipc://" + dir + "/b.ipc",
		Curve: &Curve{Cert: mustCert(t), Keys: keys}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() { cancel(); <-done; b.Close() }()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir %v %v, want mode 0700", fi, err)
	}
	c := newClient(t, "ipc://"+dir+"/f.ipc", zmq.REQ)
	if cmd, _ := c.call([]byte{byte(wire.List)}); cmd != wire.Response {
		t.Fatalf("plaintext LIST over ipc: %v", cmd)
	}
}
