package broker

import (
	"testing"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// TestRouter_StartupGrace: in its first seconds a restarted broker holds
// requests for the calculators served before it stopped (their workers are
// on their way back) and fails them when the grace ends with nobody come;
// other names, and every name afterwards, fail at once, as always.
func TestRouter_StartupGrace(t *testing.T) {
	h := newHarness(t, Options{StartupGrace: 2 * time.Second})
	h.r.Expect([]string{"lj", "nope"})
	h.request("c1", "lj", "a")
	h.request("c2", "nope", "b")
	h.want() // held, not failed
	h.request("c4", "emt", "d")
	h.want("c4 <- ERROR No workers available for calculator 'emt'") // never served here
	h.advance(500 * time.Millisecond)
	h.backend("w1", wire.Ready, "lj")
	h.want("job w1 <- c1 a")
	h.advance(1400 * time.Millisecond)
	h.want()
	h.advance(200 * time.Millisecond) // grace over: nobody came for "nope"
	h.want("c2 <- ERROR No workers available for calculator 'nope'. Available: ['lj']")
	h.request("c3", "nope", "c")
	h.want("c3 <- ERROR No workers available for calculator 'nope'. Available: ['lj']")

	// Without a grace (0.1.3's behaviour, and the router's default) at once.
	h = newHarness(t, Options{})
	h.r.Expect([]string{"lj"})
	h.request("c1", "lj", "a")
	h.want("c1 <- ERROR No workers available for calculator 'lj'")
}
