package worker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// batchRecorder is a BatchHandler that records the batches it gets (their
// requests joined by "+") and echoes each request.
type batchRecorder struct {
	mu      sync.Mutex
	batches []string
}

func (b *batchRecorder) handle(_ context.Context, reqs [][]byte) BatchResult {
	names := make([]string, len(reqs))
	res := BatchResult{Batched: true, Replies: make([][]byte, len(reqs))}
	for i, r := range reqs {
		names[i] = string(r)
		res.Replies[i] = append([]byte("echo:"), r...)
	}
	res.Groups = [][2]int{{len(reqs), 0}}
	b.mu.Lock()
	b.batches = append(b.batches, strings.Join(names, "+"))
	b.mu.Unlock()
	return res
}

func (b *batchRecorder) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.batches...)
}

// readyCapacity receives the batching worker's READY and returns its capacity.
func readyCapacity(t *testing.T, r *router) (id []byte, c wire.Capacity) {
	t.Helper()
	m := r.recv(2 * time.Second)
	if wire.Command(m[2][0]) != wire.Ready || len(m) != 6 {
		t.Fatalf("want READY with pid and capacity, got %q", m)
	}
	c, err := wire.ParseCapacity(m[5])
	if err != nil {
		t.Fatal(err)
	}
	return m[0], c
}

// answers collects n RESPONSEs (client frame → reply), skipping BUSY and READY.
func answers(t *testing.T, r *router, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	deadline := time.Now().Add(3 * time.Second)
	for len(out) < n {
		m := r.tryRecv(time.Until(deadline))
		if m == nil {
			t.Fatalf("%d answers of %d: %v", len(out), n, out)
		}
		if wire.Command(m[2][0]) == wire.Response {
			out[string(m[3])] = string(m[4])
		}
	}
	return out
}

// batching starts a batching worker with bc against a raw ROUTER and
// returns the router, the handler's record, the worker's identity and the
// capacity its READY announced.
func batching(t *testing.T, bc BatchConfig) (*router, *batchRecorder, []byte, *running, wire.Capacity) {
	t.Helper()
	r := newRouter(t)
	rec := &batchRecorder{}
	run := startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: echo, BatchHandler: rec.handle, Batch: bc})
	id, c := readyCapacity(t, r)
	return r, rec, id, run, c
}

func TestWorker_Batching(t *testing.T) {
	hint := func(f, e int) []byte { return wire.JobHint{Follow: f, Expect: e}.Encode() }
	t.Run("AnnouncesCapacityAndComputesABurstTogether", func(t *testing.T) {
		r, rec, id, _, c := batching(t, BatchConfig{Size: 4, Atoms: 100, Wait: 50 * time.Millisecond})
		if c.Structures != 4 || c.Atoms != 100 || c.WaitMs != 50 {
			t.Fatalf("capacity %+v", c)
		}
		for i, h := range [][]byte{hint(2, 0), hint(1, 0), hint(0, 0)} {
			r.send(id, nil, []byte(fmt.Sprintf("t%d", i)), []byte(fmt.Sprintf("r%d", i)), h)
		}
		busy := r.recv(time.Second)
		if wire.Command(busy[2][0]) != wire.Busy {
			t.Fatalf("want BUSY as the batch starts, got %q", busy)
		}
		got := answers(t, r, 3)
		for i := range 3 {
			if got[fmt.Sprintf("t%d", i)] != fmt.Sprintf("echo:r%d", i) {
				t.Fatalf("answers %v", got)
			}
		}
		if b := rec.got(); len(b) != 1 || b[0] != "r0+r1+r2" {
			t.Fatalf("batches %q", b)
		}
		// Then READY again, with the figures of the batch.
		for {
			m := r.recv(time.Second)
			if wire.Command(m[2][0]) != wire.Ready {
				continue
			}
			c, err := wire.ParseCapacity(m[5])
			if err != nil || c.Stats == nil || c.Stats.Batches != 1 || c.Stats.Structures != 3 {
				t.Fatalf("READY after the batch: %+v %v", c, err)
			}
			break
		}
	})
	t.Run("LoneJobIsNotHeld", func(t *testing.T) {
		r, _, id, _, _ := batching(t, BatchConfig{Size: 8, Wait: time.Second})
		start := time.Now()
		r.send(id, nil, []byte("t0"), []byte("r0"), hint(0, 0))
		answers(t, r, 1)
		if d := time.Since(start); d > 300*time.Millisecond {
			t.Fatalf("a lone job waited %v (the wait is 1 s; nobody was expected)", d)
		}
	})
	t.Run("WaitsForExpectedClients", func(t *testing.T) {
		r, rec, id, _, _ := batching(t, BatchConfig{Size: 8, Wait: 2 * time.Second})
		r.send(id, nil, []byte("t0"), []byte("r0"), hint(0, 2)) // two others may come
		time.Sleep(100 * time.Millisecond)
		r.send(id, nil, []byte("t1"), []byte("r1"), hint(0, 1))
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		r.send(id, nil, []byte("t2"), []byte("r2"), hint(0, 0)) // everyone is here: compute now
		answers(t, r, 3)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("computed %v after the last expected job (the wait is 2 s)", d)
		}
		if b := rec.got(); len(b) != 1 || b[0] != "r0+r1+r2" {
			t.Fatalf("batches %q", b)
		}
	})
	t.Run("WaitEndsTheBatch", func(t *testing.T) {
		r, _, id, _, _ := batching(t, BatchConfig{Size: 8, Wait: 150 * time.Millisecond})
		start := time.Now()
		r.send(id, nil, []byte("t0"), []byte("r0"), hint(0, 5)) // expected clients that never come
		answers(t, r, 1)
		if d := time.Since(start); d < 140*time.Millisecond || d > time.Second {
			t.Fatalf("answered after %v, want the 150 ms wait", d)
		}
	})
	t.Run("SizeLimit", func(t *testing.T) {
		r, rec, id, _, _ := batching(t, BatchConfig{Size: 2, Wait: time.Second})
		for i := range 4 {
			r.send(id, nil, []byte(fmt.Sprintf("t%d", i)), []byte(fmt.Sprintf("r%d", i)), hint(3-i, 9))
		}
		answers(t, r, 4)
		if b := rec.got(); len(b) != 2 || b[0] != "r0+r1" || b[1] != "r2+r3" {
			t.Fatalf("batches %q", b)
		}
	})
	t.Run("Reference broker: no hints, one job at a time", func(t *testing.T) {
		// aserpc 0.1.3's broker reads READY's name only and sends plain
		// jobs: each is computed when it comes.
		r, _, id, _, _ := batching(t, BatchConfig{Size: 8, Wait: time.Second})
		start := time.Now()
		r.send(id, nil, []byte("c0"), []byte("r0"))
		if got := answers(t, r, 1); got["c0"] != "echo:r0" || time.Since(start) > 300*time.Millisecond {
			t.Fatalf("%v after %v", got, time.Since(start))
		}
	})
	t.Run("ShutdownAnswersWhatIsHeld", func(t *testing.T) {
		r, _, id, run, _ := batching(t, BatchConfig{Size: 8, Wait: 5 * time.Second})
		r.send(id, nil, []byte("t0"), []byte("r0"), hint(0, 3))
		time.Sleep(50 * time.Millisecond)
		r.send(id, nil, wire.Shutdown.Frame())
		if got := answers(t, r, 1); got["t0"] != "echo:r0" {
			t.Fatalf("%v", got)
		}
		if err := run.wait(t, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	})
}
