package broker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// batchH drives a router with batching workers: requests carry real
// payloads of n atoms, labelled; jobs are rendered "w1 <- c1:a 2,0" (hint
// follow,expect), and answered by label through the token their worker got.
type batchH struct {
	*harness
	labels map[string]string // payload → label
	tokens map[string]string // label → the client frame its worker got
}

func newBatchH(t *testing.T) *batchH {
	return &batchH{harness: newHarness(t, Options{}), labels: map[string]string{}, tokens: map[string]string{}}
}

// ready registers (or re-readies) worker id as batching with capacity n
// structures, atoms atoms and a wait of waitMs.
func (h *batchH) ready(id string, n, atoms int, waitMs float64) {
	caps := wire.EncodeCapacity(wire.Capacity{Structures: n, Atoms: atoms, WaitMs: waitMs})
	h.r.Backend(h.now, []byte(id), [][]byte{{}, {byte(wire.Ready)}, []byte("mace"), []byte("77"), caps}, nil)
}

// req sends client's request labelled label of n atoms (corr: a DEALER's).
func (h *batchH) req(client, label string, n int, corr string) {
	nums := make([]int32, n)
	for i := range nums {
		nums[i] = 1
	}
	pos := make([]float64, 3*n)
	pos[0] = float64(len(h.labels)) // distinct payloads
	b, err := wire.EncodeRequest(wire.NewCalcRequest(nums, pos, nil, [3]bool{}, "energy"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.labels[string(b)] = client + ":" + label
	f := [][]byte{{}, {byte(wire.Request)}, []byte("mace"), b}
	if corr != "" {
		f = append(f, []byte(corr))
	}
	h.r.Client(h.now, []byte(client), f, nil)
}

// answer sends worker id's RESPONSE to the job labelled client:label.
func (h *batchH) answer(id, label, result string) {
	tok, ok := h.tokens[label]
	if !ok {
		h.t.Fatalf("no job %s was sent", label)
	}
	h.backend(id, wire.Response, tok, result)
}

// got asserts the messages sent since the last check, rendering jobs with
// their labels and hints (and noting their tokens).
func (h *batchH) got(want ...string) {
	h.t.Helper()
	var got []string
	for _, s := range h.tr.take() {
		if s.side == "worker" {
			l := h.labels[string(s.body)]
			h.tokens[l] = s.client
			got = append(got, strings.TrimSpace(fmt.Sprintf("%s <- %s %s", s.to, l, s.hint)))
			continue
		}
		got = append(got, describe(s))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		h.t.Fatalf("sent:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestRouter_Batching(t *testing.T) {
	t.Run("HoldsUpToCapacityThenQueues", func(t *testing.T) {
		h := newBatchH(t)
		h.ready("w1", 3, 0, 0)
		h.got("w1 <- WORKER_JOINED")
		for _, l := range []string{"a", "b", "c", "d", "e"} {
			h.req("c"+l, l, 2, "")
		}
		// Collecting: each goes to it at once, nothing follows, nobody expected.
		h.got("w1 <- ca:a 0,0", "w1 <- cb:b 0,0", "w1 <- cc:c 0,0")
		h.backend("w1", wire.Busy, "mace") // computing the three
		h.answer("w1", "cb:b", "rb")
		h.answer("w1", "ca:a", "ra")
		h.answer("w1", "cc:c", "rc")
		h.got("cb <- RESPONSE rb", "ca <- RESPONSE ra", "cc <- RESPONSE rc")
		h.ready("w1", 3, 0, 0) // collecting again: the queue comes as one burst
		h.got("w1 <- cd:d 1,0", "w1 <- ce:e 0,0")
		st := h.r.status(h.now)["workers"].(map[string]any)["mace"].(map[string]any)
		if st["held"] != 2 || st["capacity"] != 3 || st["busy"] != 1 || st["idle"] != 0 {
			t.Fatalf("status %v", st)
		}
	})
	t.Run("ComputingWorkerGetsNothingNew", func(t *testing.T) {
		h := newBatchH(t)
		h.ready("w1", 8, 0, 0)
		h.ready("w2", 8, 0, 0)
		h.take()
		h.req("c1", "a", 1, "")
		h.got("w1 <- c1:a 0,0")
		h.backend("w1", wire.Busy, "mace")
		h.req("c2", "b", 1, "")
		h.got("w2 <- c2:b 0,0") // not w1, which computes
	})
	t.Run("AtomBudget", func(t *testing.T) {
		h := newBatchH(t)
		h.ready("w1", 8, 10, 0)
		h.take()
		h.req("c1", "a", 4, "")
		h.req("c2", "b", 4, "")
		h.req("c3", "c", 4, "") // 12 > 10: waits
		h.got("w1 <- c1:a 0,0", "w1 <- c2:b 0,0")
		h.backend("w1", wire.Busy, "mace")
		h.answer("w1", "c1:a", "ra")
		h.answer("w1", "c2:b", "rb")
		h.take()
		h.req("c4", "big", 50, "") // bigger than the budget: alone, never refused
		h.ready("w1", 8, 10, 0)
		h.got("w1 <- c3:c 0,0")
		h.backend("w1", wire.Busy, "mace")
		h.answer("w1", "c3:c", "rc")
		h.ready("w1", 8, 10, 0)
		h.got("c3 <- RESPONSE rc", "w1 <- c4:big 0,0")
	})
	t.Run("SameClientManyInFlight", func(t *testing.T) {
		h := newBatchH(t)
		h.ready("w1", 4, 0, 0)
		h.take()
		h.req("c1", "a", 1, "k1")
		h.req("c1", "b", 1, "k2")
		h.got("w1 <- c1:a 0,0", "c1 <- PROGRESS map[state:dispatched] #k1",
			"w1 <- c1:b 0,0", "c1 <- PROGRESS map[state:dispatched] #k2")
		h.backend("w1", wire.Busy, "mace")
		h.take()
		h.answer("w1", "c1:b", "rb")
		h.answer("w1", "c1:a", "ra")
		h.got("c1 <- RESPONSE rb #k2", "c1 <- RESPONSE ra #k1")
	})
	t.Run("DeathRedispatchesEveryHeldJob", func(t *testing.T) {
		h := newBatchH(t)
		h.ready("w1", 4, 0, 0)
		h.backend("w2", wire.Ready, "mace") // a plain worker, busy below
		h.take()
		h.req("c1", "a", 1, "")
		h.req("c2", "b", 1, "")
		h.req("c3", "c", 1, "")
		h.got("w1 <- c1:a 0,0", "w1 <- c2:b 0,0", "w1 <- c3:c 0,0")
		h.backend("w1", wire.Busy, "mace")
		h.r.Disconnected(h.now, []byte("w1"))
		// The plain worker takes the oldest; the rest wait for it, in order.
		h.got("w2 <- c1:a") // a plain job: no hint, the client's id as its frame
		h.backend("w2", wire.Response, "c1", "ra")
		h.got("c1 <- RESPONSE ra", "w2 <- c2:b")
	})
	t.Run("HintExpectsRecentClients", func(t *testing.T) {
		h := newBatchH(t)
		h.ready("w1", 8, 0, 5)
		h.take()
		h.req("c1", "a", 1, "")
		h.req("c2", "b", 1, "")
		h.got("w1 <- c1:a 0,0", "w1 <- c2:b 0,0")
		h.backend("w1", wire.Busy, "mace")
		h.answer("w1", "c1:a", "ra")
		h.answer("w1", "c2:b", "rb")
		h.ready("w1", 8, 0, 5)
		h.take()
		h.now = h.now.Add(time.Millisecond)
		h.req("c1", "a2", 1, "")
		h.got("w1 <- c1:a2 0,1") // c2 was answered with it: it may come
		h.req("c2", "b2", 1, "")
		h.got("w1 <- c2:b2 0,0") // everyone is here
		h.backend("w1", wire.Busy, "mace")
		h.answer("w1", "c1:a2", "ra")
		h.answer("w1", "c2:b2", "rb")
		h.ready("w1", 8, 0, 5)
		h.take()
		h.now = h.now.Add(20 * time.Millisecond) // c2 gone quiet: nobody expected
		h.req("c1", "a3", 1, "")
		h.got("w1 <- c1:a3 0,0")
	})
	t.Run("StatusShowsBatchFigures", func(t *testing.T) {
		h := newBatchH(t)
		st := &wire.BatchStats{}
		st.Observe(4, 40, 1000)
		st.Observe(2, 20, 0)
		caps := wire.EncodeCapacity(wire.Capacity{Structures: 8, Stats: st})
		h.r.Backend(h.now, []byte("w1"), [][]byte{{}, {byte(wire.Ready)}, []byte("mace"), []byte("77"), caps}, nil)
		w := h.r.status(h.now)["workers"].(map[string]any)["mace"].(map[string]any)
		b := w["batch"].(map[string]any)
		if b["batches"] != int64(2) || b["structures"] != int64(6) || b["mean_size"] != 3.0 {
			t.Fatalf("%v", w)
		}
	})
	t.Run("BadCapacityIsAPlainWorker", func(t *testing.T) {
		h := newBatchH(t)
		h.r.Backend(h.now, []byte("w1"), [][]byte{{}, {byte(wire.Ready)}, []byte("mace"), []byte("77"), []byte("junk")}, nil)
		h.take()
		h.req("c1", "a", 1, "")
		h.req("c2", "b", 1, "")
		h.got("w1 <- c1:a") // one job at a time, no hint
		if h.r.counters.Malformed != 1 {
			t.Fatalf("malformed %d", h.r.counters.Malformed)
		}
	})
}
