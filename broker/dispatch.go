package broker

// Queues and dispatch: accepting a REQUEST, handing jobs to idle workers in
// LRU order, asking the manager for more, progress reports and cancels.

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/aserpc/aserpc/wire"
)

func (r *Router) reply(client []byte, cmd wire.Command, body Payload, corr []byte) {
	r.replyWith(client, cmd, body, corr, nil)
}

// replyWith is reply with an extra frame after corr (a session's direct
// endpoint).
func (r *Router) replyWith(client []byte, cmd wire.Command, body Payload, corr, extra []byte) {
	if err := r.out.toClient(client, cmd, body, corr, extra); err != nil {
		r.counters.Undeliverable++
		r.met.undeliverableReply()
		r.log.Debug("reply undeliverable", "client", peer(client), "err", err)
	}
}

func (r *Router) fail(j *job, msg string) {
	r.met.outcome(r.calcLabel(j.calc), outcomeOf(msg))
	j.body.Release()
	r.reply(j.client, wire.Error, errorBody(msg), j.corr)
}

func (r *Router) request(now time.Time, j *job) {
	if r.stopping {
		r.fail(j, errShuttingDown)
		return
	}
	r.counters.Requests++
	if r.toSession(now, j) {
		return
	}
	s := r.services[j.calc]
	if s == nil || r.available(s) == 0 {
		if !r.canSpawn(j.calc) && !r.holds(now, j.calc) {
			r.fail(j, r.noWorkers(j.calc))
			if s != nil {
				r.gc(s)
			}
			return
		}
		s = r.service(j.calc)
	}
	if len(s.pending) >= r.opt.MaxPending {
		r.counters.QueueFull++
		r.fail(j, fmt.Sprintf("Queue for calculator '%s' is full (%d requests waiting)", j.calc, len(s.pending)))
		return
	}
	s.pending = append(s.pending, j)
	r.drain(now, s)
}

// available counts the workers of s that may receive jobs.
func (r *Router) available(s *service) int {
	n := 0
	for _, w := range s.workers {
		if !w.stopping {
			n++
		}
	}
	return n
}

func (r *Router) canSpawn(calc string) bool {
	return r.mgr != nil && r.mgr.spawnable[calc] && !r.stopping
}

// drain hands pending jobs of s to its idle workers, oldest job to the
// least recently used worker, and asks the manager for a worker when jobs
// wait and s has none.
func (r *Router) drain(now time.Time, s *service) {
	for len(s.pending) > 0 && len(s.idle) > 0 {
		w := s.idle[0]
		if w.batch != nil {
			r.fill(now, w) // as many as it may hold; it leaves idle when full
			continue
		}
		j := s.pending[0]
		if k := r.preferred(s, j); k > 0 {
			w = s.idle[k]
			s.idle = slices.Delete(s.idle, k, k+1)
		} else {
			s.idle = s.idle[1:]
		}
		s.pending[0] = nil
		s.pending = s.pending[1:]
		r.dispatch(now, w, j, nil)
	}
	if len(s.pending) > 0 {
		switch {
		case r.canSpawn(s.name) && r.mgr.ours:
			// Scale out: ask for a worker per waiting request beyond the
			// idle and starting ones, up to the calculator's max_workers.
			for r.mgr != nil && len(s.pending) > len(s.idle)+len(s.starting) &&
				r.available(s)+len(s.starting) < r.mgr.max(s.name) {
				r.spawn(now, s)
			}
		case r.canSpawn(s.name):
			// A 0.1.3 manager starts a process per request and knows no
			// maximum: ask once, from zero only, as 0.1.3's broker did.
			if r.available(s) == 0 && len(s.starting) == 0 {
				r.spawn(now, s)
			}
		case r.available(s) == 0 && !r.holds(now, s.name):
			// Nobody can ever serve these: fail them now rather than at the
			// queue timeout.
			r.failPending(s, r.noWorkers(s.name))
		}
	}
	r.gc(s)
}

// dispatch hands j to w (with hint, for a batching worker). It reports
// false when w could not take it: w was then dropped as dead and j is back
// in the queue.
func (r *Router) dispatch(now time.Time, w *worker, j *job, hint *wire.JobHint) bool {
	j.attempts++
	if j.attempts == 1 {
		r.met.dispatched(r.calcLabel(j.calc), now.Sub(j.accepted))
	}
	j.sent = now
	j.wid = j.client
	var hintFrame []byte
	if w.batch != nil {
		r.seq++
		j.wid = binary.BigEndian.AppendUint64(make([]byte, 0, 8), r.seq)
		w.atoms += r.atomsOf(j)
		if hint != nil {
			hintFrame = hint.Encode()
		}
	} else if r.directFor(w, j) {
		hintFrame = wire.JobHint{Session: j.affinity}.Encode()
	}
	w.jobs = append(w.jobs, j)
	w.busy = true
	if err := r.out.toWorker(w.id, j.wid, j.body.Clone(), hintFrame); err != nil {
		// The worker is gone (ROUTER_MANDATORY) or not reading (high-water
		// mark): treat it as dead; its jobs go back to the queue.
		r.log.Warn("job undeliverable, dropping worker", "worker", peer(w.id), "calc", w.service.name, "err", err)
		j.attempts-- // it never reached a worker
		r.remove(now, w, errWorkerDied)
		return false
	}
	r.progress(j, progressDispatched)
	r.reserve(now, w, j)
	return true
}

// Progress bodies, built once.
var (
	progressDispatched = mustMarshalBytes(map[string]any{"state": "dispatched"})
	progressBusy       = mustMarshalBytes(map[string]any{"state": "busy"})
	progressRequeued   = mustMarshalBytes(map[string]any{"state": "requeued"})
)

// progress tells a client that asked with a correlation frame (a DEALER
// client: REQ and 0.1.3 clients never see it) how its request is doing.
func (r *Router) progress(j *job, body []byte) {
	if j.corr == nil || j.cancelled {
		return
	}
	if err := r.out.toClient(j.client, wire.Progress, Bytes(body), j.corr, nil); err != nil {
		r.log.Debug("progress undeliverable", "client", peer(j.client), "err", err)
	}
}

// cancel forgets the caller's request with correlation frame corr.
func (r *Router) cancel(client, corr []byte) {
	same := func(j *job) bool { return string(j.client) == string(client) && string(j.corr) == string(corr) }
	for _, s := range r.services {
		for i, j := range s.pending {
			if same(j) {
				s.pending = slices.Delete(s.pending, i, i+1)
				j.body.Release()
				r.log.Debug("cancelled a queued request", "client", peer(client), "calc", s.name)
				r.gc(s)
				return
			}
		}
	}
	for _, ss := range r.sessions {
		for i, j := range ss.pending {
			if same(j) {
				ss.pending = slices.Delete(ss.pending, i, i+1)
				j.body.Release()
				return
			}
		}
	}
	for _, w := range r.workers {
		for _, j := range w.jobs {
			if same(j) {
				j.cancelled = true // its result is dropped on arrival
				return
			}
		}
	}
}

func (r *Router) failPending(s *service, msg string) {
	for _, j := range s.pending {
		r.fail(j, msg)
	}
	s.pending = nil
}

func (r *Router) spawn(now time.Time, s *service) {
	s.starting = append(s.starting, now)
	r.met.spawn(s.name)
	r.log.Info("requesting a worker from the manager", "calc", s.name, "starting", len(s.starting))
	if err := r.out.toBackend(r.mgr.id, wire.SpawnRequest, []byte(s.name)); err != nil {
		r.log.Warn("manager unreachable", "err", err)
		r.dropManager(now, "unreachable")
	}
}
