package worker

import "time"

// payoff decides whether batching pays for the model and structures a
// worker serves. It keeps the time per atom of batches computed together
// and of structures computed one by one (two early batches and then one in
// probeEvery measure it), and computes one by one while batches are no
// faster per atom; batching comes back when a later measure finds batches
// at least 5% faster. Some models batch badly (per-structure padding, one
// graph per composition, autograd that grows with the batch): then
// batching must not make a worker slower.
type payoff struct {
	batched, single float64 // moving averages of seconds per atom; 0: not measured yet
	nb, ns          int     // measures of each
	count           int     // batches of two or more so far
	off             bool    // computing one by one
}

// probeEvery is how often the other way is measured (after the first ones).
const probeEvery = 50

// measure says whether a batch of n jobs is the one in probeEvery (or the
// second) that measures the other way: one by one while batching is on,
// together while it is off.
func (p *payoff) measure(n int) bool {
	if n < 2 {
		return false
	}
	p.count++
	// The first batch warms the model up and is not measured; the second
	// and third measure one by one (in part: see Worker.computeBatch), so
	// that the decision rests on two measures of each way by the third.
	return p.count == 2 || p.count == 3 || p.count%probeEvery == 0
}

// oneByOne says whether a batch is computed one by one, given measure.
func (p *payoff) oneByOne(measure bool) bool { return measure != p.off }

// observe adds a batch of atoms atoms computed in took, one by one or not.
func (p *payoff) observe(single bool, atoms int, took time.Duration) {
	if atoms <= 0 || p.count <= 1 {
		return
	}
	if single {
		p.ns++
	} else {
		p.nb++
	}
	x := took.Seconds() / float64(atoms)
	avg := &p.batched
	if single {
		avg = &p.single
	}
	if *avg == 0 {
		*avg = x
	} else {
		*avg = 0.7**avg + 0.3*x
	}
}

// decide turns batching off or on from the measures; changed says it did.
func (p *payoff) decide() (changed, on bool) {
	if p.nb < 2 || p.ns < 2 {
		return false, !p.off
	}
	switch {
	case !p.off && p.batched > p.single:
		p.off = true
		return true, false
	case p.off && p.batched < 0.95*p.single:
		p.off = false
		return true, true
	}
	return false, !p.off
}
