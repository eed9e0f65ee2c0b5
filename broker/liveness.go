package broker

// Liveness: workers joining (READY), becoming idle, leaving or timing out,
// and the re-dispatch of what a lost worker held.

import (
	"fmt"
	"slices"
	"time"

	"github.com/aserpc/aserpc/wire"
)

func (r *Router) ready(now time.Time, id []byte, w *worker, name string, ready bool, pid int, caps *wire.Capacity, info *wire.WorkerInfo) {
	if w != nil && w.service.name != name {
		// A peer that changes its calculator is confused; start it afresh.
		r.remove(now, w, errWorkerLeft)
		w = nil
	}
	if w == nil {
		if r.stopping {
			return
		}
		s := r.service(name)
		w = &worker{id: clone(id), key: string(id), service: s, pid: pid, batch: caps, open: caps != nil, joined: now, info: info}
		r.workers[w.key] = w
		s.workers[w.key] = w
		if len(s.starting) > 0 {
			s.starting = s.starting[1:]
		}
		if r.mgr != nil && r.mgr.ours && r.mgr.spawnable[name] {
			r.out.toBackend(r.mgr.id, wire.WorkerJoined, []byte(name))
		}
		if caps != nil {
			r.log.Info("worker registered", "worker", peer(id), "calc", name, "batch", caps.Structures, "batch_atoms", caps.Atoms)
		} else {
			r.log.Info("worker registered", "worker", peer(id), "calc", name)
		}
		if pid != 0 {
			// Our worker (it named its pid) logs "registered" when it hears this.
			r.out.toBackend(id, wire.WorkerJoined)
		}
		w.lastSeen = now
		r.idle(now, w)
		return
	}
	w.lastSeen = now
	if w.batch != nil {
		r.batchReady(now, w, ready, caps)
		return
	}
	// READY after RESPONSE, or an idle heartbeat. A worker holding a job
	// stays busy: READY must never hand a second job to it (the
	// reference's double dispatch). Only a RESPONSE frees it.
	if len(w.jobs) == 0 && ready {
		w.busy = false
		if !slices.Contains(w.service.idle, w) && !w.stopping {
			r.idle(now, w)
		}
	}
}

// idle makes w available: the oldest waiting job goes to it, else it joins
// the end of its service's LRU queue.
func (r *Router) idle(now time.Time, w *worker) {
	s := w.service
	if w.stopping {
		return
	}
	if w.batch != nil {
		r.batchIdle(now, w)
		return
	}
	if w.session != nil {
		r.sessionIdle(now, w.session)
		return
	}
	if len(s.pending) > 0 {
		j := s.pending[0]
		s.pending[0] = nil
		s.pending = s.pending[1:]
		r.dispatch(now, w, j, nil)
		return
	}
	if !slices.Contains(s.idle, w) {
		s.idle = append(s.idle, w)
	}
}

// remove forgets a dead or departed worker and re-dispatches its job.
func (r *Router) remove(now time.Time, w *worker, why string) {
	s := w.service
	r.lostSession(w)
	delete(r.workers, w.key)
	delete(s.workers, w.key)
	if i := slices.Index(s.idle, w); i >= 0 {
		s.idle = slices.Delete(s.idle, i, i+1)
	}
	jobs := w.jobs
	w.jobs = nil
	var again []*job // back to the front of the queue, in their order
	for _, j := range jobs {
		switch {
		case j.cancelled:
			j.body.Release()
		case j.attempts > r.opt.MaxRedispatch || r.stopping:
			r.failDied(now, w, j, why)
		case r.available(s) == 0 && !r.canSpawn(s.name):
			r.failDied(now, w, j, why)
		default:
			r.counters.Redispatched++
			r.met.redispatch(r.calcLabel(s.name))
			r.log.Info("re-dispatching the job of a lost worker", "calc", s.name, "attempt", j.attempts+1)
			again = append(again, j)
			r.progress(j, progressRequeued)
		}
	}
	if len(again) > 0 {
		s.pending = append(again, s.pending...)
	}
	r.drain(now, s)
}

// Tick expires silent workers and managers, queued requests past the queue
// timeout and spawns past the spawn timeout. The loop calls it at least
// every TickEvery.
func (r *Router) Tick(now time.Time) {
	for _, w := range r.workers {
		if now.Sub(w.lastSeen) > r.opt.WorkerTimeout {
			r.log.Warn("worker timed out", "worker", peer(w.id), "calc", w.service.name)
			r.remove(now, w, errWorkerDied)
		}
	}
	if r.mgr != nil && now.Sub(r.mgr.lastSeen) > r.opt.WorkerTimeout {
		r.dropManager(now, "timed out")
	}
	for pid, d := range r.dying {
		if now.After(d.until) {
			delete(r.dying, pid)
			r.fail(d.j, d.why)
		}
	}
	for pid, e := range r.exitReasons {
		if now.After(e.until) {
			delete(r.exitReasons, pid)
		}
	}
	r.expireSessions(now)
	graceOver := !r.graceUntil.IsZero() && !now.Before(r.graceUntil)
	if graceOver {
		r.graceUntil, r.expect = time.Time{}, nil
	}
	for _, s := range r.services {
		if graceOver && len(s.pending) > 0 && r.available(s) == 0 && !r.canSpawn(s.name) {
			// Held by the startup grace, and no worker came.
			r.failPending(s, r.noWorkers(s.name))
		}
		s.pending = r.expire(now, s.pending)
		for len(s.starting) > 0 && now.Sub(s.starting[0]) > r.opt.SpawnTimeout {
			s.starting = s.starting[1:]
			r.log.Warn("spawned worker never registered", "calc", s.name, "after", r.opt.SpawnTimeout)
			r.met.spawnFailed(s.name)
			if r.available(s) == 0 && len(s.starting) == 0 {
				r.failPending(s, fmt.Sprintf("Failed to spawn worker: no worker for '%s' registered within %s", s.name, r.opt.SpawnTimeout))
			}
		}
		r.gc(s)
	}
	if r.met != nil {
		r.met.update(r.snapshot())
	}
}

// expire fails the jobs of queue q (oldest first) that waited longer than
// the queue timeout, and returns what is left.
func (r *Router) expire(now time.Time, q []*job) []*job {
	for len(q) > 0 && now.Sub(q[0].accepted) > r.opt.QueueTimeout {
		j := q[0]
		q[0] = nil
		q = q[1:]
		r.counters.Expired++
		r.fail(j, errQueueTimeout(j.calc))
	}
	return q
}

// TickEvery is how often Tick must run for ≤ 1 s expiry precision.
const TickEvery = 250 * time.Millisecond

// Disconnected handles the news that the connection of the backend peer id
// closed (libzmq's ROUTER_NOTIFY): a worker that has not said goodbye died,
// or its host or link did (ZMTP heartbeats time out a silent peer), so its
// job is re-dispatched now rather than after WorkerTimeout of silence; a
// manager is dropped (its spawns are given up). A peer that already left is
// nobody.
func (r *Router) Disconnected(now time.Time, id []byte) {
	key := string(id)
	if w := r.workers[key]; w != nil {
		r.counters.Disconnected++
		r.met.disconnect()
		r.log.Warn("worker connection closed", "worker", peer(id), "calc", w.service.name, "busy", len(w.jobs) > 0)
		r.remove(now, w, errWorkerDied)
		return
	}
	if r.mgr != nil && string(r.mgr.id) == key {
		r.dropManager(now, "its connection closed")
	}
}

// failDied fails j, whose worker w died with no other attempt left. When
// our manager runs w (it named its pid), the client's error carries the
// manager's account of the death: at once if it came first, else when it
// comes (WorkerExited), or plain after ExitReasonWait.
func (r *Router) failDied(now time.Time, w *worker, j *job, why string) {
	if why != errWorkerDied || w.pid == 0 || r.mgr == nil || !r.mgr.ours || !r.mgr.spawnable[w.service.name] || r.stopping {
		r.fail(j, why)
		return
	}
	if e, ok := r.exitReasons[w.pid]; ok {
		delete(r.exitReasons, w.pid)
		r.fail(j, why+": "+e.text)
		return
	}
	if r.dying == nil {
		r.dying = map[int]*dyingJob{}
	}
	if old := r.dying[w.pid]; old != nil { // (a pid reused within the wait: unlikely)
		r.fail(old.j, old.why)
	}
	r.dying[w.pid] = &dyingJob{j: j, why: why, until: now.Add(ExitReasonWait)}
}

// workerExited takes our manager's account of how the worker with pid died
// (WORKER_EXITED): the waiting job's client gets it, or it is kept for a
// job whose worker's death the broker has not heard of yet.
func (r *Router) workerExited(now time.Time, calc string, pid int, text string) {
	r.log.Warn("the manager reports a worker's death", "calc", calc, "pid", pid, "report", text)
	if d := r.dying[pid]; d != nil {
		delete(r.dying, pid)
		r.fail(d.j, d.why+": "+text)
		return
	}
	if r.exitReasons == nil {
		r.exitReasons = map[int]exitReason{}
	}
	r.exitReasons[pid] = exitReason{text: text, until: now.Add(ExitReasonWait)}
}
