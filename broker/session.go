package broker

// Sessions: a client that asks for one (wire.ExtSession with its affinity
// key; our RemoteCalculator(session=True)) keeps the worker that first
// served it. The worker is reserved for that key: it takes no other
// client's job, and the session's requests wait for it rather than go to
// another worker, so a stateful calculator (a DFT code restarting its SCF
// from the last density) sees exactly its client's sequence of structures.
//
// A reserved worker is never in its service's idle list and a session's
// waiting jobs are never in the service's queue, so the ordinary dispatch
// (LRU, affinity, batching, scale-out) runs unchanged on everything else:
// other clients get the other workers, or queue (a reserved worker counts
// towards max_workers, so the manager is asked for more while some remain).
//
// A session ends when its client sends SESSION_END (close()), when the
// client sends nothing for the session's idle timeout (a client that died,
// or stopped without closing: the broker cannot see a REQ client go), or
// when its worker is lost — its job in hand is then re-dispatched as any
// other, and the session's next request reserves a new worker. Batching
// workers are never reserved: on them a session is affinity.

import (
	"slices"
	"time"

	"github.com/aserpc/aserpc/wire"
)

type session struct {
	key     string // calc + "\x00" + the client's affinity key
	id      string // the affinity key
	w       *worker
	client  []byte        // routing id of the session's last request
	idleFor time.Duration // ends after this long without a request
	last    time.Time     // last request or answer
	since   time.Time
	pending []*job // the session's requests waiting for its worker
	parked  bool   // the worker is idle, kept for this session
	served  int
}

// sessionOf reads j's session request once: its key, or "" when j asks for
// none.
func (r *Router) sessionOf(j *job) (string, time.Duration) {
	r.affinityOf(j)
	if j.sessionIdle <= 0 {
		return "", 0
	}
	return j.calc + "\x00" + j.affinity, j.sessionIdle
}

// toSession takes j when its session holds a worker: straight to the
// worker when it is parked, else into the session's own queue. False when
// j has no session yet (it is dispatched as any job, and its worker is then
// reserved: reserve).
func (r *Router) toSession(now time.Time, j *job) bool {
	key, idle := r.sessionOf(j)
	if key == "" {
		return false
	}
	ss := r.sessions[key]
	if ss == nil {
		return false
	}
	if ss.w.stopping {
		r.dropSession(ss.w)
		return false
	}
	ss.client, ss.idleFor, ss.last = j.client, idle, now
	if ss.parked {
		ss.parked = false
		r.dispatch(now, ss.w, j, nil)
		return true
	}
	ss.pending = append(ss.pending, j)
	return true
}

// reserve makes w, just handed j, the worker of j's session.
func (r *Router) reserve(now time.Time, w *worker, j *job) {
	key, idle := r.sessionOf(j)
	if key == "" || w.batch != nil || w.session != nil || r.sessions[key] != nil {
		return
	}
	if r.sessions == nil {
		r.sessions = map[string]*session{}
	}
	ss := &session{key: key, id: j.affinity, w: w, client: j.client, idleFor: idle, last: now, since: now}
	r.sessions[key] = ss
	w.session = ss
	r.counters.Sessions++
	r.log.Info("session started: worker reserved", "calc", j.calc, "session", j.affinity, "worker", peer(w.id), "idle_timeout", idle)
}

// directFor reports whether j, a session's request, goes to a worker of
// ours with a direct endpoint that is (or is about to be) reserved for it:
// the job then tells the worker its session (JobHint.Session).
func (r *Router) directFor(w *worker, j *job) bool {
	if w.info == nil || w.info.Direct == "" {
		return false
	}
	key, _ := r.sessionOf(j)
	switch {
	case key == "":
		return false
	case w.session != nil:
		return w.session.key == key
	}
	return r.sessions[key] == nil
}

// sessionIdle is w's answer being in: the session's next job goes to it,
// or it waits for one.
func (r *Router) sessionIdle(now time.Time, ss *session) {
	if ss.parked {
		return // an idle heartbeat
	}
	ss.last = now
	ss.served++
	if len(ss.pending) > 0 {
		j := ss.pending[0]
		ss.pending[0] = nil
		ss.pending = ss.pending[1:]
		r.dispatch(now, ss.w, j, nil)
		return
	}
	ss.parked = true
}

// release ends ss: its worker goes back to everyone, its waiting jobs to
// the service's queue (first, in order).
func (r *Router) release(now time.Time, ss *session, why string) {
	w := ss.w
	s := w.service
	r.detach(ss)
	if why == whyClosed {
		// Its client ended it: what it still had waiting (a resend) must not
		// reserve a worker again for nobody.
		for _, j := range ss.pending {
			j.sessionIdle = 0
		}
	}
	if w.info != nil && w.info.Direct != "" {
		r.out.toBackend(w.id, wire.SessionEnd) // no more direct requests
	}
	r.log.Info("session ended: worker released", "calc", s.name, "session", ss.id, "worker", peer(w.id),
		"why", why, "served", ss.served, "held", now.Sub(ss.since).Round(time.Millisecond))
	if len(ss.pending) > 0 {
		s.pending = append(ss.pending, s.pending...)
		ss.pending = nil
	}
	if ss.parked && !w.stopping {
		r.idle(now, w) // takes the oldest waiting job, or joins the idle list
	}
	r.drain(now, s)
}

// detach forgets ss.
func (r *Router) detach(ss *session) {
	delete(r.sessions, ss.key)
	ss.w.session = nil
}

// lostSession ends the session of w, which is being removed: its waiting
// jobs go back to the service's queue, where remove re-dispatches them
// after w's own.
func (r *Router) lostSession(w *worker) {
	if w.session != nil {
		r.counters.SessionsLost++
		r.log.Info("session's worker lost: its next request reserves another", "calc", w.service.name, "session", w.session.id)
		r.dropSession(w)
	}
}

// dropSession ends w's session without a word to w (it is gone or told
// to stop): its waiting jobs go back to the service's queue.
func (r *Router) dropSession(w *worker) {
	ss := w.session
	if ss == nil {
		return
	}
	r.detach(ss)
	if len(ss.pending) > 0 {
		w.service.pending = append(ss.pending, w.service.pending...)
		ss.pending = nil
	}
}

const whyClosed = "closed by its client"

// endSession handles a client's SESSION_END.
func (r *Router) endSession(now time.Time, calc, id string) {
	if ss := r.sessions[calc+"\x00"+id]; ss != nil {
		r.release(now, ss, whyClosed)
	}
}

// expireSessions ends sessions idle past their timeout (nothing in hand or
// waiting) and fails their waiting jobs past the queue timeout.
func (r *Router) expireSessions(now time.Time) {
	for _, ss := range r.sessions {
		ss.pending = r.expire(now, ss.pending)
		if ss.parked && len(ss.pending) == 0 && now.Sub(ss.last) > ss.idleFor {
			r.release(now, ss, "idle for "+ss.idleFor.String())
		}
	}
}

// sessionList is STATUS's view of the reservations.
func (r *Router) sessionList(now time.Time) []any {
	out := make([]any, 0, len(r.sessions))
	for _, ss := range r.sessions {
		out = append(out, map[string]any{
			"calc": ss.w.service.name, "session": ss.id, "worker": peer(ss.w.id), "pid": int64(ss.w.pid),
			"held_s": now.Sub(ss.since).Seconds(), "idle_s": now.Sub(ss.last).Seconds(),
			"idle_timeout_s": ss.idleFor.Seconds(), "served": int64(ss.served), "waiting": int64(len(ss.pending)),
		})
	}
	slices.SortFunc(out, func(a, b any) int {
		x, y := a.(map[string]any), b.(map[string]any)
		if c := compareStr(x["calc"].(string), y["calc"].(string)); c != 0 {
			return c
		}
		return compareStr(x["session"].(string), y["session"].(string))
	})
	return out
}

func compareStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
