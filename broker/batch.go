package broker

// Batching workers: a worker whose READY announced a capacity (wire.Capacity)
// may hold several jobs at once, up to its structures and atoms, while it is
// collecting (open: after READY) and none while it computes (after BUSY).
// Jobs reach it in bursts, each with a hint (wire.JobHint) that says how
// many more of the burst follow and how many other recent clients may send
// soon, so that a worker never waits for nobody: a lone request is computed
// at once. Every other worker still holds one job at a time.

import (
	"slices"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// maxRecent bounds the clients remembered per calculator for the hint.
const maxRecent = 4096

// atomsOf counts j's atoms from its payload's head (once; 0 for a payload
// that is not a request, which its worker will refuse).
func (r *Router) atomsOf(j *job) int {
	if j.atoms < 0 {
		n, err := wire.RequestAtoms(j.body.Data())
		if err != nil {
			n = 0
		}
		j.atoms = n
	}
	return j.atoms
}

// fits reports whether w, holding its jobs and k more of atoms atoms, may
// also take j. A job bigger than the atom budget still goes to a worker
// that holds nothing: batching never refuses what one call could compute.
func (r *Router) fits(w *worker, k, atoms int, j *job) bool {
	held := len(w.jobs) + k
	if held >= w.batch.Structures {
		return false
	}
	return w.batch.Atoms <= 0 || held == 0 || w.atoms+atoms+r.atomsOf(j) <= w.batch.Atoms
}

// room reports whether w may take another (small) job.
func (r *Router) room(w *worker) bool {
	return w.open && !w.stopping && len(w.jobs) < w.batch.Structures &&
		(w.batch.Atoms <= 0 || len(w.jobs) == 0 || w.atoms < w.batch.Atoms)
}

// fill hands the batching worker w, first in its service's idle list, the
// oldest waiting jobs that fit, as one burst. w leaves the idle list when
// it is full (or the next job does not fit).
func (r *Router) fill(now time.Time, w *worker) {
	s := w.service
	var burst []*job
	atoms := 0
	for len(s.pending) > 0 && r.fits(w, len(burst), atoms, s.pending[0]) {
		j := s.pending[0]
		s.pending[0] = nil
		s.pending = s.pending[1:]
		burst = append(burst, j)
		atoms += r.atomsOf(j)
	}
	if len(burst) == 0 {
		r.unidle(w)
		return
	}
	expect := r.expected(now, w, burst)
	for i, j := range burst {
		if !r.dispatch(now, w, j, &wire.JobHint{Follow: len(burst) - 1 - i, Expect: expect}) {
			// w was dropped (its jobs went back to the queue and on to
			// others); the rest of the burst goes back too.
			if rest := burst[i+1:]; len(rest) > 0 {
				s.pending = append(slices.Clone(rest), s.pending...)
				r.drain(now, s)
			}
			return
		}
	}
	if !r.room(w) || (len(s.pending) > 0 && !r.fits(w, 0, 0, s.pending[0])) {
		r.unidle(w)
	}
}

// expected counts the clients of w's calculator answered within twice w's
// wait that have nothing waiting or held now (nor in burst): they may well
// send again while w waits. Zero when w does not wait.
func (r *Router) expected(now time.Time, w *worker, burst []*job) int {
	s := w.service
	if w.batch.WaitMs <= 0 || len(s.recent) == 0 {
		return 0
	}
	window := time.Duration(2 * w.batch.WaitMs * float64(time.Millisecond))
	active := make(map[string]bool, len(burst)+len(s.pending))
	for _, j := range burst {
		active[string(j.client)] = true
	}
	for _, j := range s.pending {
		active[string(j.client)] = true
	}
	for _, o := range s.workers {
		for _, j := range o.jobs {
			active[string(j.client)] = true
		}
	}
	n := 0
	for c, t := range s.recent {
		if now.Sub(t) > window {
			delete(s.recent, c)
			continue
		}
		if !active[c] {
			n++
		}
	}
	return n
}

// unidle takes w out of its service's idle list.
func (r *Router) unidle(w *worker) {
	s := w.service
	if i := slices.Index(s.idle, w); i >= 0 {
		s.idle = slices.Delete(s.idle, i, i+1)
	}
}

// batchIdle puts an open batching worker with room at the end of the idle
// list (least recently used last) and fills it from the queue.
func (r *Router) batchIdle(now time.Time, w *worker) {
	if !r.room(w) {
		r.unidle(w)
		return
	}
	if !slices.Contains(w.service.idle, w) {
		w.service.idle = append(w.service.idle, w)
	}
	r.drain(now, w.service)
}

// batchReady handles a batching worker's READY (collecting again, maybe
// with a new capacity: smaller after an out-of-memory error) or
// HEARTBEAT.
func (r *Router) batchReady(now time.Time, w *worker, ready bool, caps *wire.Capacity) {
	if !ready {
		return
	}
	if caps != nil {
		w.batch = caps
	}
	if len(w.jobs) == 0 {
		w.busy = false
	}
	w.open = true
	r.batchIdle(now, w)
}

// answered notes that a batching worker answered j: its client is recent
// (the hint), and w, if collecting, may have room again.
func (r *Router) answered(now time.Time, w *worker, j *job) {
	s := w.service
	if s.recent == nil {
		s.recent = map[string]time.Time{}
	}
	if _, ok := s.recent[string(j.client)]; ok || len(s.recent) < maxRecent {
		s.recent[string(j.client)] = now
	}
	if len(w.jobs) == 0 {
		w.busy = false
	}
	if w.open {
		r.batchIdle(now, w)
	}
}
