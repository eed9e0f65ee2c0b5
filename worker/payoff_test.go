package worker

import (
	"testing"
	"time"
)

func TestPayoff(t *testing.T) {
	var p payoff
	if p.measure(1) {
		t.Fatal("a lone job is never a probe")
	}
	// 100 atoms per batch: together 1 ms, one by one 2 ms → batching stays on.
	for i := range 200 {
		single := p.oneByOne(p.measure(8))
		if single && i != 1 && i != 2 && (i+1)%probeEvery != 0 {
			t.Fatalf("batch %d measured one by one", i)
		}
		took := time.Millisecond
		if single {
			took = 2 * time.Millisecond
		}
		p.observe(single, 100, took)
		if changed, _ := p.decide(); changed {
			t.Fatalf("batch %d: turned batching off although it pays", i)
		}
	}
	// Now batching gets slower than one by one: it goes off after the next measure.
	off := -1
	for i := range 200 {
		single := p.oneByOne(p.measure(8))
		took := 3 * time.Millisecond
		if single {
			took = 2 * time.Millisecond
		}
		p.observe(single, 100, took)
		if changed, on := p.decide(); changed && !on {
			off = i
			break
		}
	}
	if off < 0 || !p.off {
		t.Fatalf("batching never turned off (batched %g, single %g)", p.batched, p.single)
	}
	// Off: one by one except for a measure now and then; back on once batching pays again.
	back := false
	for range 400 {
		single := p.oneByOne(p.measure(8))
		took := 2 * time.Millisecond
		if !single {
			took = time.Millisecond / 2
		}
		p.observe(single, 100, took)
		if changed, on := p.decide(); changed && on {
			back = true
			break
		}
	}
	if !back {
		t.Fatal("batching never came back")
	}
}
