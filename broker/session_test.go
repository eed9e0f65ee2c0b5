package broker

import (
	"testing"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// sessionBody is a request payload of client key id asking for a session
// with idle timeout idle seconds.
func sessionBody(t *testing.T, id string, idle, x float64) string {
	t.Helper()
	return requestBody(t, map[string]any{wire.ExtAffinity: id, wire.ExtSession: idle}, x)
}

func TestRouter_Session(t *testing.T) {
	h := newHarness(t, Options{})
	h.backend("w1", wire.Ready, "lj")
	h.backend("w2", wire.Ready, "lj")
	a1, a2, a3 := sessionBody(t, "A", 60, 1), sessionBody(t, "A", 60, 2), sessionBody(t, "A", 60, 3)
	h.request("c1", "lj", a1)
	h.want("job w1 <- c1 " + a1) // least recently used; now reserved for A
	h.backend("w1", wire.Response, "c1", "r1")
	h.want("c1 <- RESPONSE r1")
	h.backend("w1", wire.Ready, "lj") // an idle heartbeat changes nothing
	// Other clients get the other worker, or queue: never A's.
	p1, p2 := affinityBody(t, "", 4), affinityBody(t, "", 5)
	h.request("c2", "lj", p1)
	h.want("job w2 <- c2 " + p1)
	h.request("c3", "lj", p2)
	h.want() // w1 is idle, but A's
	st := h.r.status(h.now)
	if got := st["workers"].(map[string]any)["lj"].(map[string]any)["reserved"]; got != 1 {
		t.Fatalf("STATUS reserved %v", got)
	}
	if ss := st["sessions"].([]any); len(ss) != 1 || ss[0].(map[string]any)["session"] != "A" || ss[0].(map[string]any)["worker"] != peer([]byte("w1")) {
		t.Fatalf("STATUS sessions %v", ss)
	}
	// A's next request goes to its worker at once.
	h.request("c1", "lj", a2)
	h.want("job w1 <- c1 " + a2)
	h.backend("w2", wire.Response, "c2", "r2")
	h.want("c2 <- RESPONSE r2", "job w2 <- c3 "+p2)
	// A request of A's while its worker is busy waits for it, not for w2.
	h.backend("w2", wire.Response, "c3", "r3")
	h.want("c3 <- RESPONSE r3")
	h.request("c1", "lj", a3)
	h.want()
	h.backend("w1", wire.Response, "c1", "r4")
	h.want("c1 <- RESPONSE r4", "job w1 <- c1 "+a3)
	h.backend("w1", wire.Response, "c1", "r5")
	h.take()
	// SESSION_END: w1 is everyone's again, and takes the queue's oldest.
	p3 := affinityBody(t, "", 6)
	h.request("c4", "lj", p3)
	h.want("job w2 <- c4 " + p3)
	p4 := affinityBody(t, "", 7)
	h.request("c5", "lj", p4)
	h.want()
	h.client("c1", wire.SessionEnd, "lj", "A")
	h.want("job w1 <- c5 " + p4)
	if len(h.r.sessions) != 0 || h.r.counters.Sessions != 1 {
		t.Fatalf("sessions %v, started %d", h.r.sessions, h.r.counters.Sessions)
	}
}

func TestRouter_SessionIdleTimeoutAndLostWorker(t *testing.T) {
	h := newHarness(t, Options{})
	h.backend("w1", wire.Ready, "lj")
	h.backend("w2", wire.Ready, "lj")
	b1 := sessionBody(t, "B", 2, 1)
	h.request("c1", "lj", b1)
	h.want("job w1 <- c1 " + b1)
	// Computing longer than the idle timeout does not end it.
	h.advance(3 * time.Second)
	h.backend("w1", wire.Response, "c1", "r1")
	h.take()
	h.advance(1500 * time.Millisecond)
	if len(h.r.sessions) != 1 {
		t.Fatal("session ended before its idle timeout")
	}
	h.advance(time.Second) // 2.5 s without a request: the client is gone
	if len(h.r.sessions) != 0 {
		t.Fatal("session outlived its idle timeout")
	}
	p := affinityBody(t, "", 2)
	h.request("c2", "lj", p)
	h.want("job w2 <- c2 " + p) // LRU again: w2, then w1
	h.request("c3", "lj", p)
	h.want("job w1 <- c3 " + p)
	h.backend("w1", wire.Response, "c3", "x")
	h.backend("w2", wire.Response, "c2", "y")
	h.take()

	// Its worker lost mid-job: the job goes to another worker, which the
	// session then holds.
	c1 := sessionBody(t, "C", 60, 1)
	h.request("c1", "lj", c1)
	h.want("job w1 <- c1 " + c1)
	h.r.Disconnected(h.now, []byte("w1"))
	h.want("job w2 <- c1 " + c1)
	if ss := h.r.sessions["lj\x00C"]; ss == nil || string(ss.w.id) != "w2" || h.r.counters.SessionsLost != 1 {
		t.Fatalf("session after the loss: %+v", ss)
	}
	// A bad SESSION_END is refused; an unknown one is nothing.
	h.client("c1", wire.SessionEnd, "lj")
	h.take()
	h.client("c1", wire.SessionEnd, "lj", "nobody")
	h.want()
}

// TestRouter_SessionDirect: a worker of ours that announced a direct
// endpoint learns its session with the job that reserves it, the client
// learns the endpoint with that job's answer (after its correlation
// frame), the worker's reported direct requests keep the session alive,
// and the session's end is sent to it.
func TestRouter_SessionDirect(t *testing.T) {
	h := newHarness(t, Options{})
	caps := string(wire.EncodeCapacity(wire.Capacity{Structures: 1, Info: &wire.WorkerInfo{Direct: "unix:///run/w-7.ipc"}}))
	h.backend("w1", wire.Ready, "lj", "7", caps)
	h.take()
	a := sessionBody(t, "A", 2, 1)
	h.client("c1", wire.Request, "lj", a, "corr1")
	got := h.tr.take() // the job, and the client's "dispatched" progress
	if len(got) != 2 || got[0].side != "worker" || got[0].hint != "0,0,A" {
		t.Fatalf("job %+v, want the session in its hint", got)
	}
	h.backend("w1", wire.Response, "c1", "r1")
	got = h.tr.take()
	if len(got) != 1 || got[0].extra != "unix:///run/w-7.ipc" || got[0].corr != "corr1" {
		t.Fatalf("reply %+v, want the endpoint after the correlation frame", got)
	}
	// Direct requests, reported in READY, keep it past its idle timeout.
	for i := int64(1); i <= 3; i++ {
		h.advance(time.Second)
		caps := string(wire.EncodeCapacity(wire.Capacity{Structures: 1, Info: &wire.WorkerInfo{Direct: "unix:///run/w-7.ipc", DirectJobs: i}}))
		h.backend("w1", wire.Ready, "lj", "7", caps)
	}
	if ss := h.r.sessions["lj\x00A"]; ss == nil || ss.served != 4 {
		t.Fatalf("session after direct work: %+v", ss)
	}
	h.take()
	h.advance(2500 * time.Millisecond) // now idle past its timeout
	h.want("w1 <- SESSION_END")
	// A client without a correlation frame (REQ) never gets the endpoint; a plain request never does.
	h.request("c2", "lj", affinityBody(t, "", 1))
	h.backend("w1", wire.Response, "c2", "r2")
	for _, s := range h.tr.take() {
		if s.extra != "" || s.hint != "" {
			t.Fatalf("%+v", s)
		}
	}
}

// TestRouter_SessionEdges: a long direct calculation (BUSY only) keeps its
// session; a SESSION_END with a request still waiting does not reserve a
// worker again; CANCEL reaches a request waiting for its session's worker.
func TestRouter_SessionEdges(t *testing.T) {
	h := newHarness(t, Options{})
	h.backend("w1", wire.Ready, "lj")
	h.backend("w2", wire.Ready, "lj")
	a1 := sessionBody(t, "A", 2, 1)
	h.request("c1", "lj", a1)
	h.backend("w1", wire.Response, "c1", "r1")
	h.take()
	for range 5 { // 5 s computing a direct request: BUSY every second
		h.advance(time.Second)
		h.backend("w1", wire.Busy, "lj")
	}
	if len(h.r.sessions) != 1 {
		t.Fatal("a session computing on the direct path expired")
	}
	// Pipelined requests of A's, the first busy on w1, the second waiting for it.
	a2, a3 := sessionBody(t, "A", 2, 2), sessionBody(t, "A", 2, 3)
	h.client("c1", wire.Request, "lj", a2)
	h.client("c1", wire.Request, "lj", a3, "corr3")
	h.take()
	h.client("c1", wire.Cancel, "corr3")
	if ss := h.r.sessions["lj\x00A"]; ss == nil || len(ss.pending) != 0 {
		t.Fatalf("CANCEL left the waiting request: %+v", ss)
	}
	a4 := sessionBody(t, "A", 2, 4)
	h.client("c1", wire.Request, "lj", a4)
	h.client("c1", wire.SessionEnd, "lj", "A")
	h.want("job w2 <- c1 " + a4) // to whoever is free, as a plain request
	if len(h.r.sessions) != 0 {
		t.Fatalf("a closed session's waiting request reserved a worker again: %v", h.r.sessions)
	}
}
