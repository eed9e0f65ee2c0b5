package broker

import (
	"testing"

	"github.com/aserpc/aserpc/wire"
)

// affinityBody is a request payload with affinity key id ("" none).
func affinityBody(t *testing.T, id string, x float64) string {
	t.Helper()
	if id == "" {
		return requestBody(t, nil, x)
	}
	return requestBody(t, map[string]any{wire.ExtAffinity: id}, x)
}

// requestBody is a one-atom request payload at x with extension map ext
// (nil: none).
func requestBody(t *testing.T, ext map[string]any, x float64) string {
	t.Helper()
	v := []any{int64(1), wire.Int32Bytes([]int32{1}), wire.Float64Bytes([]float64{x, 0, 0}), make([]byte, 72), []byte{0, 0, 0}, []any{"energy"}}
	if ext != nil {
		v = append(v, ext)
	}
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRouter_Affinity(t *testing.T) {
	h := newHarness(t, Options{})
	h.backend("w1", wire.Ready, "lj")
	h.backend("w2", wire.Ready, "lj")
	a1, a2, a3 := affinityBody(t, "A", 1), affinityBody(t, "A", 2), affinityBody(t, "A", 3)
	h.request("c1", "lj", a1)
	h.want("job w1 <- c1 " + a1) // nobody remembered: least recently used
	h.backend("w1", wire.Response, "c1", "r1")
	h.want("c1 <- RESPONSE r1")
	// idle is now [w2, w1]: without affinity the next job would go to w2.
	h.request("c1", "lj", a2)
	h.want("job w1 <- c1 " + a2)
	h.backend("w1", wire.Response, "c1", "r2")
	h.take()
	// Another client without a key gets the least recently used worker, as always.
	plain := affinityBody(t, "", 4)
	h.request("c2", "lj", plain)
	h.want("job w2 <- c2 " + plain)
	// One idle worker: no choice to make (neither hit nor miss).
	h.request("c1", "lj", a3)
	h.want("job w1 <- c1 " + a3)
	if h.r.counters.AffinityHits != 1 || h.r.counters.AffinityMisses != 1 { // a2 hit; a1 had nobody remembered
		t.Fatalf("hits %d, misses %d", h.r.counters.AffinityHits, h.r.counters.AffinityMisses)
	}
	// Its worker busy with another client, A's next job does not wait for it.
	h.backend("w1", wire.Response, "c1", "r3")
	h.backend("w2", wire.Response, "c2", "r4")
	h.take() // idle: [w1, w2]
	other := affinityBody(t, "", 5)
	h.request("c9", "lj", other)
	h.want("job w1 <- c9 " + other)
	b4 := affinityBody(t, "A", 6)
	h.request("c1", "lj", b4)
	h.want("job w2 <- c1 " + b4)
}
