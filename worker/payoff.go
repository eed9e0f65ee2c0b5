package worker

import "time"

// payoff decides whether batching pays for the model and structures a
// worker serves. It keeps the time per atom of batches computed together
// and of batches computed one by one (one batch in probeEvery is, to
// measure), and computes one by one while that is faster: batched
// throughput below 0.95× one by one turns batching off, and it comes back
// when a later measure of batches is at least as fast as one by one. Some
// models batch badly (per-structure padding, one graph per composition):
// then batching must not make a worker slower.
type payoff struct {
	batched, single float64 // moving averages of seconds per atom; 0: not measured yet
	count           int     // batches of two or more so far
	off             bool    // computing one by one
}

// probeEvery is how often the other way is measured.
const probeEvery = 50

// probe says whether a batch of n jobs is computed one by one.
func (p *payoff) probe(n int) bool {
	if n < 2 {
		return false
	}
	p.count++
	measure := p.count == 2 || p.count%probeEvery == 0 // the second batch, then now and then
	if p.off {
		return !measure
	}
	return measure
}

// observe adds a batch of atoms atoms computed in took, one by one or not.
func (p *payoff) observe(single bool, atoms int, took time.Duration) {
	if atoms <= 0 {
		return
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
	if p.batched == 0 || p.single == 0 {
		return false, !p.off
	}
	switch {
	case !p.off && p.batched > p.single/0.95:
		p.off = true
		return true, false
	case p.off && p.batched <= p.single:
		p.off = false
		return true, true
	}
	return false, !p.off
}
