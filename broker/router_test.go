package broker

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// sent is one message the router handed to the transport.
type sent struct {
	side   string // "client", "worker", "backend"
	to     string
	cmd    wire.Command
	client string // job's client (toWorker)
	body   []byte
	corr   string
	args   []string
	hint   string // a batching worker's job hint
	extra  string // a client reply's frame after corr
}

type recorder struct {
	out     []sent
	gone    map[string]bool // peers whose sends fail with EHOSTUNREACH
	bodies  int             // live Payload references handed out
	refused error
}

func (t *recorder) toClient(client []byte, cmd wire.Command, body Payload, corr, extra []byte) error {
	defer body.Release()
	if t.gone[string(client)] {
		return syscall.EHOSTUNREACH
	}
	t.out = append(t.out, sent{side: "client", to: string(client), cmd: cmd, body: payloadBytes(body), corr: string(corr), extra: string(extra)})
	return nil
}

func (t *recorder) toWorker(worker, client []byte, body Payload, hint []byte) error {
	defer body.Release()
	if t.gone[string(worker)] {
		return syscall.EHOSTUNREACH
	}
	t.out = append(t.out, sent{side: "worker", to: string(worker), client: string(client), body: payloadBytes(body), hint: string(hint)})
	return nil
}

func (t *recorder) toBackend(peer []byte, cmd wire.Command, args ...[]byte) error {
	if t.gone[string(peer)] {
		return syscall.EHOSTUNREACH
	}
	s := sent{side: "backend", to: string(peer), cmd: cmd}
	for _, a := range args {
		s.args = append(s.args, string(a))
	}
	t.out = append(t.out, s)
	return nil
}

// take returns and forgets what was sent so far.
func (t *recorder) take() []sent {
	o := t.out
	t.out = nil
	return o
}

func payloadBytes(p Payload) []byte {
	switch b := p.(type) {
	case Bytes:
		return append([]byte(nil), b...)
	case *countedBody:
		return append([]byte(nil), b.b...)
	}
	panic(fmt.Sprintf("unexpected payload %T", p))
}

// countedBody checks that every reference the router takes is released.
type countedBody struct {
	b    []byte
	live *int
}

func newCounted(b []byte, live *int) *countedBody { *live++; return &countedBody{b, live} }
func (c *countedBody) Len() int                   { return len(c.b) }
func (c *countedBody) Data() []byte               { return c.b }
func (c *countedBody) Clone() Payload             { *c.live++; return &countedBody{c.b, c.live} }
func (c *countedBody) Release() {
	if c.live == nil {
		panic("double release")
	}
	*c.live--
	c.live = nil
}

type harness struct {
	t   *testing.T
	r   *Router
	tr  *recorder
	now time.Time
}

func newHarness(t *testing.T, opt Options) *harness {
	t.Helper()
	tr := &recorder{gone: map[string]bool{}}
	now := time.Unix(1000, 0)
	return &harness{t: t, r: newRouter(opt, tr, nil, now), tr: tr, now: now}
}

func (h *harness) advance(d time.Duration) { h.now = h.now.Add(d); h.r.Tick(h.now) }

func frames(cmd wire.Command, args ...string) [][]byte {
	f := [][]byte{{}, {byte(cmd)}}
	for _, a := range args {
		f = append(f, []byte(a))
	}
	return f
}

func (h *harness) client(id string, cmd wire.Command, args ...string) {
	h.r.Client(h.now, []byte(id), frames(cmd, args...), nil)
}

func (h *harness) backend(id string, cmd wire.Command, args ...string) {
	h.r.Backend(h.now, []byte(id), frames(cmd, args...), nil)
}

func (h *harness) request(client, calc, data string) { h.client(client, wire.Request, calc, data) }

// want asserts the exact messages sent since the last check.
func (h *harness) want(want ...string) {
	h.t.Helper()
	var got []string
	for _, s := range h.tr.take() {
		got = append(got, describe(s))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		h.t.Fatalf("sent:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// describe renders a sent message compactly: "job w1 <- c1 data",
// "c1 <- RESPONSE data", "c1 <- ERROR No workers ...", "w1 <- SHUTDOWN".
func describe(s sent) string {
	switch s.side {
	case "worker":
		return fmt.Sprintf("job %s <- %s %s", s.to, s.client, s.body)
	case "backend":
		return strings.TrimSpace(fmt.Sprintf("%s <- %s %s", s.to, s.cmd, strings.Join(s.args, ",")))
	}
	body := string(s.body)
	if v, err := wire.Unmarshal(s.body); err == nil {
		if a, ok := v.([]any); ok && len(a) == 4 && a[1] == false {
			body = fmt.Sprint(a[3])
		} else if _, ok := v.(map[string]any); ok {
			body = fmt.Sprint(v)
		}
	}
	d := fmt.Sprintf("%s <- %s %s", s.to, s.cmd, body)
	if s.corr != "" {
		d += " #" + s.corr
	}
	return d
}

func TestRouter_Dispatch(t *testing.T) {
	t.Run("NoWorkers", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.request("c1", "lj", "data")
		h.want("c1 <- ERROR No workers available for calculator 'lj'")
	})
	t.Run("OurWorkerIsToldItRegistered", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj", "1234") // ours: READY names its pid
		h.want("w1 <- WORKER_JOINED")
		h.backend("w1", wire.Ready, "lj", "1234") // an idle heartbeat: no second answer
		h.backend("w2", wire.Ready, "lj")         // 0.1.3's: no pid, no answer (it would take it for a job)
		h.want()
	})
	t.Run("MisspeltNameSaysWhatIsThere", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "EMT")
		h.backend("w2", wire.Ready, "mace_mp")
		h.backend("m", wire.ManagerReady, "chgnet,LJ")
		h.take()
		for calc, hint := range map[string]string{
			"EMTT":    "; did you mean 'EMT'?",
			"lj":      "; did you mean 'LJ'?",
			"mace-mp": "; did you mean 'mace_mp'?",
			"chgnat":  "; did you mean 'chgnet'?",
			"orb":     "",
		} {
			h.request("c1", calc, "data")
			h.want("c1 <- ERROR No workers available for calculator '" + calc +
				"'. Available: ['EMT', 'LJ', 'chgnet', 'mace_mp']" + hint)
		}
	})
	t.Run("IdleWorkerGetsJob", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.want()
		h.request("c1", "lj", "data")
		h.want("job w1 <- c1 data")
		h.backend("w1", wire.Response, "c1", "result")
		h.want("c1 <- RESPONSE result")
	})
	t.Run("LeastRecentlyUsedFirst", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.backend("w3", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.want("job w1 <- c1 a", "job w2 <- c2 b")
		h.backend("w1", wire.Response, "c1", "ra")
		h.backend("w1", wire.Ready, "lj")
		h.request("c3", "lj", "c")
		h.want("c1 <- RESPONSE ra", "job w3 <- c3 c")
	})
	t.Run("CalculatorsAreSeparate", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "emt", "a")
		h.want("c1 <- ERROR No workers available for calculator 'emt'. Available: ['lj']")
	})
	t.Run("QueueWhenAllBusyThenFIFO", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.request("c3", "lj", "c")
		h.want("job w1 <- c1 a")
		h.backend("w1", wire.Response, "c1", "ra")
		h.want("c1 <- RESPONSE ra", "job w1 <- c2 b")
		h.backend("w1", wire.Ready, "lj")
		h.want()
	})
	t.Run("CorrelationFrameEchoed", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.client("c1", wire.Request, "lj", "a", "id-7")
		h.want("job w1 <- c1 a", "c1 <- PROGRESS map[state:dispatched] #id-7")
		h.backend("w1", wire.Busy, "lj")
		h.want("c1 <- PROGRESS map[state:busy] #id-7")
		h.backend("w1", wire.Response, "c1", "ra")
		h.want("c1 <- RESPONSE ra #id-7")
		h.client("c1", wire.Request, "nope", "a", "id-8")
		h.want("c1 <- ERROR No workers available for calculator 'nope'. Available: ['lj'] #id-8")
	})
}

// The reference's worst routing bug: READY right after RESPONSE (and idle
// heartbeats racing a dispatch) put a busy worker back in the idle queue,
// so several jobs piled up inside one worker while others idled.
func TestRouter_NoDoubleDispatch(t *testing.T) {
	t.Run("ReadyAfterResponseWithTwoPending", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.request("c3", "lj", "c")
		h.want("job w1 <- c1 a")
		h.backend("w1", wire.Response, "c1", "ra") // routes c2
		h.backend("w1", wire.Ready, "lj")          // must NOT route c3
		h.want("c1 <- RESPONSE ra", "job w1 <- c2 b")
		h.backend("w1", wire.Response, "c2", "rb")
		h.want("c2 <- RESPONSE rb", "job w1 <- c3 c")
	})
	t.Run("HeartbeatRacingDispatch", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.want("job w1 <- c1 a")
		h.backend("w1", wire.Ready, "lj") // idle heartbeat sent before the job arrived
		h.request("c2", "lj", "b")
		h.want("job w2 <- c2 b")
		h.request("c3", "lj", "c")
		h.want() // both busy: c3 waits, not stacked on w1
		st := h.r.status(h.now)["workers"].(map[string]any)["lj"].(map[string]any)
		if st["busy"] != 2 || st["idle"] != 0 || st["total"] != 2 {
			t.Fatalf("status %v, want 2 busy 0 idle", st)
		}
	})
	t.Run("HeartbeatCommandNeverFreesBusyWorker", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Heartbeat, "lj") // 0.1.2 worker registers by heartbeat
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.backend("w1", wire.Heartbeat, "lj")
		h.backend("w1", wire.Busy, "lj")
		h.want("job w1 <- c1 a")
	})
}

func TestRouter_Liveness(t *testing.T) {
	opt := Options{WorkerTimeout: 3 * time.Second, QueueTimeout: 10 * time.Second}
	t.Run("DeadWorkerJobRedispatched", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.request("c3", "lj", "c")
		h.want("job w1 <- c1 a", "job w2 <- c2 b")
		h.advance(2 * time.Second)
		h.backend("w2", wire.Busy, "lj") // BUSY keeps w2 alive
		h.advance(2 * time.Second)       // w1 silent 4 s > 3 s: dead
		h.want()
		h.backend("w2", wire.Response, "c2", "rb")
		// c1's job goes back to the head of the queue, before c3.
		h.want("c2 <- RESPONSE rb", "job w2 <- c1 a")
		if h.r.counters.Redispatched != 1 {
			t.Fatalf("redispatched %d, want 1", h.r.counters.Redispatched)
		}
	})
	t.Run("ConnectionClosedRedispatchesAtOnce", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.want("job w1 <- c1 a", "job w2 <- c2 b")
		h.r.Disconnected(h.now, []byte("w1")) // no time passes: no heartbeat is awaited
		h.want()
		h.backend("w2", wire.Response, "c2", "rb")
		h.want("c2 <- RESPONSE rb", "job w2 <- c1 a")
		h.r.Disconnected(h.now, []byte("w2")) // the last worker: the job fails
		h.want("c1 <- ERROR Worker died during calculation")
		if h.r.counters.Disconnected != 2 || h.r.counters.Redispatched != 1 {
			t.Fatalf("counters %+v", h.r.counters)
		}
		h.r.Disconnected(h.now, []byte("w2")) // already gone: nothing
		h.r.Disconnected(h.now, []byte("nobody"))
		h.want()
	})
	t.Run("LastWorkerDiesNoManager", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.want("job w1 <- c1 a")
		h.advance(4 * time.Second)
		h.want("c1 <- ERROR Worker died during calculation",
			"c2 <- ERROR No workers available for calculator 'lj'")
		if len(h.r.services) != 0 {
			t.Fatalf("services not forgotten: %v", h.r.services)
		}
	})
	t.Run("RedispatchIsBounded", func(t *testing.T) {
		h := newHarness(t, Options{WorkerTimeout: time.Second, MaxRedispatch: 1})
		for _, w := range []string{"w1", "w2", "w3"} {
			h.backend(w, wire.Ready, "lj")
		}
		h.request("c1", "lj", "poison")
		h.want("job w1 <- c1 poison")
		h.backend("w1", wire.Disconnect, "lj")
		h.want("job w2 <- c1 poison")
		h.backend("w2", wire.Disconnect, "lj")
		h.want("c1 <- ERROR Worker disconnected during calculation")
	})
	t.Run("ReadyKeepsIdleWorkerAlive", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		for i := 0; i < 5; i++ {
			h.advance(2 * time.Second)
			h.backend("w1", wire.Ready, "lj")
		}
		h.request("c1", "lj", "a")
		h.want("job w1 <- c1 a")
	})
	t.Run("DisconnectIdle", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.backend("w1", wire.Disconnect, "lj")
		h.request("c1", "lj", "a")
		h.want("c1 <- ERROR No workers available for calculator 'lj'")
	})
	t.Run("UndeliverableJobGoesToNextWorker", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.tr.gone["w1"] = true
		h.request("c1", "lj", "a")
		h.want("job w2 <- c1 a")
		if _, ok := h.r.workers["w1"]; ok {
			t.Fatal("unreachable worker still registered")
		}
	})
	t.Run("ReRegistrationAfterBrokerRestart", func(t *testing.T) {
		// A new broker knows nothing; a worker's next READY registers it,
		// a BUSY from an unknown worker does not, and its RESPONSE to a
		// job of the old broker is dropped.
		h := newHarness(t, opt)
		h.backend("w1", wire.Busy, "lj")
		h.backend("w1", wire.Response, "old-client", "r")
		h.request("c1", "lj", "a")
		h.want("c1 <- ERROR No workers available for calculator 'lj'")
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.want("job w1 <- c1 a")
		if h.r.counters.StaleResponses != 1 {
			t.Fatalf("stale responses %d, want 1", h.r.counters.StaleResponses)
		}
	})
}

func TestRouter_Queue(t *testing.T) {
	t.Run("ExpiresAfterQueueTimeout", func(t *testing.T) {
		h := newHarness(t, Options{QueueTimeout: 5 * time.Second, WorkerTimeout: time.Hour})
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.advance(3 * time.Second)
		h.request("c3", "lj", "c")
		h.want("job w1 <- c1 a")
		h.advance(2*time.Second + TickEvery) // c2 is 5.25 s old, c3 2.25 s
		h.want("c2 <- ERROR Request timed out waiting for 'lj' worker")
		h.backend("w1", wire.Response, "c1", "r")
		h.want("c1 <- RESPONSE r", "job w1 <- c3 c")
	})
	t.Run("Bounded", func(t *testing.T) {
		h := newHarness(t, Options{MaxPending: 2})
		h.backend("w1", wire.Ready, "lj")
		for i := 1; i <= 4; i++ {
			h.request(fmt.Sprintf("c%d", i), "lj", "x")
		}
		h.want("job w1 <- c1 x", "c4 <- ERROR Queue for calculator 'lj' is full (2 requests waiting)")
	})
	t.Run("PayloadReferencesReleased", func(t *testing.T) {
		h := newHarness(t, Options{QueueTimeout: time.Second, WorkerTimeout: time.Hour})
		live := 0
		h.backend("w1", wire.Ready, "lj")
		for i := 0; i < 3; i++ {
			h.r.Client(h.now, []byte(fmt.Sprint("c", i)), frames(wire.Request, "lj", "x"), newCounted([]byte("x"), &live))
		}
		h.r.Backend(h.now, []byte("w1"), frames(wire.Response, "c0", "r"), newCounted([]byte("r"), &live))
		h.advance(2 * time.Second) // c2 expires; c1 is at w1
		h.r.Backend(h.now, []byte("w1"), frames(wire.Response, "c1", "r"), newCounted([]byte("r"), &live))
		h.r.Backend(h.now, []byte("w1"), frames(wire.Response, "zz", "r"), newCounted([]byte("r"), &live))
		if live != 0 {
			t.Fatalf("%d payload references leaked", live)
		}
	})
}

func TestRouter_Manager(t *testing.T) {
	opt := Options{WorkerTimeout: 3 * time.Second, QueueTimeout: 100 * time.Second, SpawnTimeout: 20 * time.Second}
	t.Run("ScaleFromZeroOneSpawn", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj,emt")
		for i := 1; i <= 5; i++ {
			h.request(fmt.Sprint("c", i), "lj", "x")
		}
		h.want("m <- SPAWN_REQUEST lj")
		h.backend("m", wire.SpawnResponse, "lj", "ok", "")
		h.backend("w1", wire.Ready, "lj")
		h.want("job w1 <- c1 x")
	})
	t.Run("NotSpawnable", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "emt")
		h.request("c1", "lj", "x")
		h.want("c1 <- ERROR No workers available for calculator 'lj'. Available: ['emt']")
	})
	t.Run("SpawnFailureReason", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj")
		h.request("c1", "lj", "x")
		h.request("c2", "lj", "y")
		h.backend("m", wire.SpawnResponse, "lj", "error", "exec: \"nope\": not found")
		h.want("m <- SPAWN_REQUEST lj",
			`c1 <- ERROR Failed to spawn worker: exec: "nope": not found`,
			`c2 <- ERROR Failed to spawn worker: exec: "nope": not found`)
		h.request("c3", "lj", "z") // a later request may spawn again
		h.want("m <- SPAWN_REQUEST lj")
	})
	t.Run("SpawnTimeoutClearsFlag", func(t *testing.T) {
		// The reference's stuck flag: a spawned worker that never
		// registers blocked every later spawn for that calculator.
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj")
		h.request("c1", "lj", "x")
		h.backend("m", wire.SpawnResponse, "lj", "ok")
		h.want("m <- SPAWN_REQUEST lj")
		for i := 0; i < 9; i++ { // 22.5 s with manager heartbeats
			h.advance(2500 * time.Millisecond)
			h.backend("m", wire.ManagerReady, "lj")
		}
		h.want("c1 <- ERROR Failed to spawn worker: no worker for 'lj' registered within 20s")
		h.request("c2", "lj", "x")
		h.want("m <- SPAWN_REQUEST lj")
	})
	t.Run("ManagerTimeoutDropsSpawnable", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj")
		h.request("c1", "lj", "x")
		h.want("m <- SPAWN_REQUEST lj")
		h.advance(4 * time.Second)
		h.want("c1 <- ERROR No workers available for calculator 'lj'")
		if got := h.r.list(); len(got) != 0 {
			t.Fatalf("list after manager loss: %v", got)
		}
	})
	t.Run("NewManagerTakesOverWaitingRequests", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m1", wire.ManagerReady, "lj")
		h.request("c1", "lj", "x")
		h.backend("m2", wire.ManagerReady, "lj")
		h.want("m1 <- SPAWN_REQUEST lj", "m2 <- SPAWN_REQUEST lj")
		h.backend("m1", wire.SpawnResponse, "lj", "error", "ignored: not the manager")
		h.want()
	})
	t.Run("ListAndStatusShapes", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "mace_mp,lj")
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.request("c1", "lj", "x")
		h.client("c2", wire.List)
		h.want("job w1 <- c1 x", "c2 <- RESPONSE map[lj:2 mace_mp:0]")
		st := h.r.status(h.now)
		if got := fmt.Sprint(st["workers"]); got != "map[lj:map[busy:1 idle:1 total:2]]" {
			t.Fatalf("workers %s", got)
		}
		if got := fmt.Sprint(st["manager"].(map[string]any)["spawnable"]); got != "[lj mace_mp]" {
			t.Fatalf("spawnable %s", got)
		}
		if got := fmt.Sprint(st["pending_requests"]); got != "map[]" {
			t.Fatalf("pending %s", got)
		}
	})
}

func TestRouter_OurManager(t *testing.T) {
	opt := Options{WorkerTimeout: 3 * time.Second, QueueTimeout: 100 * time.Second, SpawnTimeout: 20 * time.Second}
	caps := func(max map[string]any) string {
		b, err := wire.Marshal(map[string]any{"protocol": 1, "max_workers": max,
			"children": []any{map[string]any{"name": "lj", "pid": 42, "state": "running"}}})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	t.Run("ScaleOutUpToMax", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj", caps(map[string]any{"lj": 2}))
		h.want("m <- WORKER_JOINED") // announces that registrations are reported
		h.backend("m", wire.ManagerReady, "lj", caps(map[string]any{"lj": 2}))
		h.want() // once
		h.request("c1", "lj", "a")
		h.want("m <- SPAWN_REQUEST lj")
		h.request("c2", "lj", "b")
		h.want("m <- SPAWN_REQUEST lj") // second waiting request, second worker
		h.request("c3", "lj", "c")
		h.want() // at max_workers
		h.backend("w1", wire.Ready, "lj")
		h.want("m <- WORKER_JOINED lj", "job w1 <- c1 a")
		h.backend("w2", wire.Ready, "lj")
		h.want("m <- WORKER_JOINED lj", "job w2 <- c2 b")
		st := h.r.status(h.now)["manager"].(map[string]any)
		if fmt.Sprint(st["children"]) != "[map[name:lj pid:42 state:running]]" {
			t.Fatalf("children %v", st["children"])
		}
	})
	t.Run("DeathReportReachesTheClient", func(t *testing.T) {
		o := opt
		o.MaxRedispatch = -1 // no second attempt: the first death fails the job
		h := newHarness(t, o)
		h.backend("m", wire.ManagerReady, "lj", caps(map[string]any{"lj": 2}))
		h.take()
		h.backend("w1", wire.Ready, "lj", "4242")
		h.take()
		h.request("c1", "lj", "a")
		h.want("job w1 <- c1 a")
		// The disconnect notice first: the job waits for the manager's account.
		h.r.Disconnected(h.now, []byte("w1"))
		h.want()
		h.backend("m", wire.WorkerExited, "lj", "4242", "worker for 'lj' (pid 4242) signal killed")
		h.want("c1 <- ERROR Worker died during calculation: worker for 'lj' (pid 4242) signal killed")
		// The account first: the death fails the job with it at once.
		h.backend("w2", wire.Ready, "lj", "4343")
		h.take()
		h.request("c2", "lj", "b")
		h.want("job w2 <- c2 b")
		h.backend("m", wire.WorkerExited, "lj", "4343", "exit code 137")
		h.r.Disconnected(h.now, []byte("w2"))
		h.want("c2 <- ERROR Worker died during calculation: exit code 137")
		// No account within ExitReasonWait: the plain error.
		h.backend("w3", wire.Ready, "lj", "4444")
		h.take()
		h.request("c3", "lj", "c")
		h.want("job w3 <- c3 c")
		h.r.Disconnected(h.now, []byte("w3"))
		h.advance(ExitReasonWait + time.Second)
		h.want("c3 <- ERROR Worker died during calculation")
		// Only the manager may report, and with a pid.
		h.backend("w4", wire.WorkerExited, "lj", "1", "x")
		h.backend("m", wire.WorkerExited, "lj", "nan", "x")
		if h.r.counters.Malformed != 2 {
			t.Fatalf("malformed %d, want 2", h.r.counters.Malformed)
		}
	})
	t.Run("BusyWorkerTriggersScaleOut", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj", caps(map[string]any{"lj": 3}))
		h.backend("w1", wire.Ready, "lj")
		h.want("m <- WORKER_JOINED", "m <- WORKER_JOINED lj")
		h.request("c1", "lj", "a")
		h.want("job w1 <- c1 a")
		h.request("c2", "lj", "b")
		h.want("m <- SPAWN_REQUEST lj")
	})
	t.Run("OneFailedSpawnOfTwo", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj", caps(map[string]any{"lj": 2}))
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.want("m <- WORKER_JOINED", "m <- SPAWN_REQUEST lj", "m <- SPAWN_REQUEST lj")
		h.backend("m", wire.SpawnResponse, "lj", "error", "exit code 1")
		h.want() // the other spawn may still serve them
		h.backend("m", wire.SpawnResponse, "lj", "error", "exit code 2")
		h.want("c1 <- ERROR Failed to spawn worker: exit code 2", "c2 <- ERROR Failed to spawn worker: exit code 2")
	})
	t.Run("GoodbyeDropsManager", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj", caps(nil))
		h.backend("m", wire.ManagerReady, "", caps(nil))
		if h.r.mgr != nil {
			t.Fatal("manager still registered after goodbye")
		}
	})
	t.Run("ReferenceManagerNeverScalesOut", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj")
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.want("job w1 <- c1 a")
	})
	t.Run("BadCapsFrameCounted", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("m", wire.ManagerReady, "lj", "\xc1garbage")
		h.request("c1", "lj", "a")
		h.want("m <- SPAWN_REQUEST lj")
		if h.r.counters.Malformed != 1 || h.r.mgr.ours {
			t.Fatalf("malformed %d ours %v", h.r.counters.Malformed, h.r.mgr.ours)
		}
	})
}

func TestRouter_ProgressAndCancel(t *testing.T) {
	opt := Options{WorkerTimeout: time.Second}
	t.Run("RequeuedWhenWorkerDies", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.client("c1", wire.Request, "lj", "a", "k")
		h.take()
		h.backend("w1", wire.Disconnect, "lj")
		h.want("c1 <- PROGRESS map[state:requeued] #k", "job w2 <- c1 a", "c1 <- PROGRESS map[state:dispatched] #k")
	})
	t.Run("NoProgressForREQClients", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.backend("w1", wire.Busy, "lj")
		h.want("job w1 <- c1 a")
	})
	t.Run("CancelQueued", func(t *testing.T) {
		h := newHarness(t, opt)
		live := 0
		h.backend("w1", wire.Ready, "lj")
		h.request("c0", "lj", "busy")
		h.r.Client(h.now, []byte("c1"), frames(wire.Request, "lj", "a", "k1"), newCounted([]byte("a"), &live))
		h.r.Client(h.now, []byte("c1"), frames(wire.Request, "lj", "b", "k2"), newCounted([]byte("b"), &live))
		h.client("c1", wire.Cancel, "k1")
		h.client("c9", wire.Cancel, "k2") // someone else's: ignored
		h.take()
		h.backend("w1", wire.Response, "c0", "r")
		h.want("c0 <- RESPONSE r", "job w1 <- c1 b", "c1 <- PROGRESS map[state:dispatched] #k2")
		h.backend("w1", wire.Response, "c1", "rb")
		h.want("c1 <- RESPONSE rb #k2")
		if live != 0 {
			t.Fatalf("%d payloads leaked", live)
		}
	})
	t.Run("CancelRunningDropsResult", func(t *testing.T) {
		h := newHarness(t, opt)
		h.backend("w1", wire.Ready, "lj")
		h.client("c1", wire.Request, "lj", "a", "k1")
		h.take()
		h.client("c1", wire.Cancel, "k1")
		h.backend("w1", wire.Busy, "lj")
		h.backend("w1", wire.Response, "c1", "ra")
		h.want()
		h.request("c2", "lj", "b") // and the worker is free again
		h.want("job w1 <- c2 b")
	})
}

func TestRouter_Control(t *testing.T) {
	t.Run("WorkerShutdown", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.backend("w3", wire.Ready, "emt")
		h.client("c1", wire.WorkerShutdown, "lj")
		got := h.tr.take()
		if len(got) != 3 || describe(got[2]) != "c1 <- RESPONSE map[shutdown_count:2]" {
			t.Fatalf("sent %v", got)
		}
		h.request("c2", "lj", "x") // stopping workers get no new jobs
		h.want("c2 <- ERROR No workers available for calculator 'lj'. Available: ['emt']")
		h.client("c3", wire.WorkerShutdown)
		h.want("c3 <- ERROR Missing calculator name")
	})
	t.Run("ShutdownRefusedByDefault", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.client("c1", wire.Shutdown)
		h.want("c1 <- ERROR " + errShutdownRefused)
		if h.r.Stopping() {
			t.Fatal("stopped")
		}
	})
	t.Run("ShutdownAllowed", func(t *testing.T) {
		h := newHarness(t, Options{AllowShutdown: true})
		h.backend("w1", wire.Ready, "lj")
		h.backend("w2", wire.Ready, "lj")
		h.request("c1", "lj", "a")
		h.request("c2", "lj", "b")
		h.request("c3", "lj", "c")
		h.take()
		h.client("c9", wire.Shutdown)
		got := h.tr.take()
		if !h.r.Stopping() || len(got) != 6 {
			t.Fatalf("stopping=%v sent %d: %v", h.r.Stopping(), len(got), got)
		}
		h.request("c4", "lj", "d")
		h.want("c4 <- ERROR Broker shutting down")
	})
}

func (h *harness) take() { h.tr.take() }

func TestRouter_Malformed(t *testing.T) {
	h := newHarness(t, Options{})
	h.backend("w1", wire.Ready, "lj")
	cases := []struct {
		name   string
		frames [][]byte
		want   string
	}{
		{"Empty", nil, "c <- ERROR Invalid message: expected an empty delimiter and a command frame"},
		{"NoDelimiter", [][]byte{{4}, []byte("lj")}, "c <- ERROR Invalid message: expected an empty delimiter and a command frame"},
		{"LongCommand", [][]byte{{}, {4, 4}}, "c <- ERROR Invalid message: the command frame must be one byte"},
		{"RequestShort", frames(wire.Request, "lj"), "c <- ERROR Invalid request format"},
		{"RequestLong", frames(wire.Request, "lj", "d", "corr", "extra"), "c <- ERROR Invalid request format"},
		{"BadUTF8Name", frames(wire.Request, "\xff\xfe", "d"), "c <- ERROR Invalid calculator name: must be 1–256 bytes of UTF-8"},
		{"EmptyName", frames(wire.Request, "", "d"), "c <- ERROR Invalid calculator name: must be 1–256 bytes of UTF-8"},
		{"Unknown", frames(0x42), "c <- ERROR Unknown command UNKNOWN(0x42)"},
		{"ListExtra", frames(wire.List, "a", "b"), "c <- ERROR Invalid LIST message: unexpected frames"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.r.Client(h.now, []byte("c"), c.frames, nil)
			h.want(c.want)
		})
	}
	// Backend garbage is dropped and counted, and the worker still serves.
	for _, f := range [][][]byte{nil, {{1}}, frames(wire.Ready), frames(wire.Ready, "\xff"),
		frames(wire.Response, "c"), frames(wire.SpawnResponse, "lj"), frames(0x77, "x"), {{}, {}}} {
		h.r.Backend(h.now, []byte("w9"), f, nil)
	}
	h.want()
	h.request("c", "lj", "ok")
	h.want("job w1 <- c ok")
	if h.r.counters.Malformed < 10 {
		t.Fatalf("malformed counted %d", h.r.counters.Malformed)
	}
}

var _ = errors.New

// TestRouter_Roles: on an authenticated socket the ZAP User-Id's role
// decides; each refusal is shown next to what the right role may do.
func TestRouter_Roles(t *testing.T) {
	const (
		client = "client:alice"
		worker = "worker:gpu1"
		admin  = "admin:ops"
	)
	as := func(h *harness, user, id string, cmd wire.Command, args ...string) {
		h.r.ClientAs(h.now, []byte(id), user, frames(cmd, args...), nil)
	}
	back := func(h *harness, user, id string, cmd wire.Command, args ...string) {
		h.r.BackendAs(h.now, []byte(id), user, frames(cmd, args...), nil)
	}
	t.Run("WorkerRegistration", func(t *testing.T) {
		h := newHarness(t, Options{})
		back(h, client, "w1", wire.Ready, "lj")
		back(h, client, "m1", wire.ManagerReady, "lj")
		back(h, "none:", "w4", wire.Ready, "lj") // a User-Id without a role
		as(h, admin, "c1", wire.List)
		h.want("c1 <- RESPONSE map[]")
		back(h, worker, "w2", wire.Ready, "lj")
		back(h, admin, "w3", wire.Ready, "lj")
		back(h, worker, "m2", wire.ManagerReady, "emt")
		as(h, admin, "c1", wire.List)
		h.want("c1 <- RESPONSE map[emt:0 lj:2]")
	})
	t.Run("AdminOperations", func(t *testing.T) {
		h := newHarness(t, Options{AllowShutdown: true})
		back(h, worker, "w1", wire.Ready, "lj")
		as(h, client, "c1", wire.WorkerShutdown, "lj", "#1")
		h.want(`c1 <- ERROR Permission denied: WORKER_SHUTDOWN needs an admin key; this connection's key is client "alice" ##1`)
		as(h, client, "c1", wire.Shutdown)
		h.want(`c1 <- ERROR Permission denied: SHUTDOWN needs an admin key; this connection's key is client "alice"`)
		if h.r.Stopping() {
			t.Fatal("a client key stopped the broker")
		}
		as(h, worker, "c2", wire.List)
		h.want(`c2 <- ERROR Permission denied: LIST needs a client or admin key; this connection's key is worker "gpu1"`)
		as(h, client, "c1", wire.List)
		h.want("c1 <- RESPONSE map[lj:1]")
		as(h, admin, "c3", wire.WorkerShutdown, "lj")
		h.want("w1 <- SHUTDOWN", "c3 <- RESPONSE map[shutdown_count:1]")
		as(h, admin, "c3", wire.Shutdown)
		if !h.r.Stopping() {
			t.Fatal("an admin key could not stop the broker")
		}
	})
	t.Run("Requests", func(t *testing.T) {
		h := newHarness(t, Options{})
		back(h, worker, "w1", wire.Ready, "lj")
		as(h, worker, "c1", wire.Request, "lj", "x")
		h.want(`c1 <- ERROR Permission denied: REQUEST needs a client or admin key; this connection's key is worker "gpu1"`)
		as(h, client, "c1", wire.Request, "lj", "x")
		h.want("job w1 <- c1 x")
		back(h, client, "w1", wire.Response, "c1", "forged")
		h.want()
		back(h, worker, "w1", wire.Response, "c1", "result")
		h.want("c1 <- RESPONSE result")
	})
}
