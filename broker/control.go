package broker

// Control operations (LIST, STATUS, WORKER_SHUTDOWN) and the broker's own
// stop and drain.

import (
	"sort"
	"time"

	"github.com/aserpc/aserpc/wire"
)

func (r *Router) list() map[string]any {
	out := map[string]any{}
	if r.mgr != nil {
		for name := range r.mgr.spawnable {
			out[name] = 0
		}
	}
	for name, s := range r.services {
		if n := len(s.workers); n > 0 {
			out[name] = n
		}
	}
	return out
}

func (r *Router) status(now time.Time) map[string]any {
	workers := map[string]any{}
	pending := map[string]any{}
	for name, s := range r.services {
		if n := len(s.workers); n > 0 {
			f := figures(s)
			m := map[string]any{"total": n, "idle": f.idle, "busy": f.busy}
			if f.reserved > 0 {
				m["reserved"] = f.reserved
			}
			if f.slots > n {
				// Batching workers: the jobs they hold and may hold, and
				// their batches so far.
				m["held"], m["capacity"] = f.held, f.slots
				if f.batch != nil {
					m["batch"] = f.batch.Map()
				}
			}
			workers[name] = m
		}
		if n := len(s.pending); n > 0 {
			pending[name] = n
		}
	}
	mgr := map[string]any{"connected": r.mgr != nil, "spawnable": []string{}}
	if r.mgr != nil {
		names := make([]string, 0, len(r.mgr.spawnable))
		for n := range r.mgr.spawnable {
			names = append(names, n)
		}
		sort.Strings(names)
		mgr["spawnable"] = names
		spawning := map[string]any{}
		for name, s := range r.services {
			if len(s.starting) > 0 {
				spawning[name] = len(s.starting)
			}
		}
		mgr["spawning"] = spawning
		if r.mgr.children != nil {
			mgr["children"] = r.mgr.children
		}
	}
	c := r.counters
	return map[string]any{
		"worker_list":      r.workerList(now),
		"sessions":         r.sessionList(now),
		"workers":          workers,
		"pending_requests": pending,
		"manager":          mgr,
		"broker": map[string]any{
			"uptime_s": now.Sub(r.started).Seconds(),
			"counters": map[string]any{
				"malformed": c.Malformed, "unknown_command": c.UnknownCommand,
				"stale_responses": c.StaleResponses, "undeliverable": c.Undeliverable,
				"redispatched": c.Redispatched, "expired": c.Expired, "queue_full": c.QueueFull,
				"requests": c.Requests, "responses": c.Responses,
				"affinity_hits": c.AffinityHits, "affinity_misses": c.AffinityMisses,
				"sessions": c.Sessions, "sessions_lost": c.SessionsLost,
			},
		},
	}
}

// figures counts what STATUS and the metrics show of s: pending jobs,
// idle workers (waiting for a job), busy ones (holding any), the jobs held,
// the jobs they may hold (one each, a batching worker's batch size), and
// the batching workers' figures summed.
func figures(s *service) serviceSnap {
	f := serviceSnap{name: s.name, pending: len(s.pending)}
	for _, w := range s.workers {
		if len(w.jobs) > 0 {
			f.busy++
		}
		f.held += len(w.jobs)
		if w.session != nil {
			f.reserved++
			if len(w.jobs) == 0 {
				f.parked++
			}
		}
		if w.batch == nil {
			f.slots++
			continue
		}
		f.slots += w.batch.Structures
		if w.batch.Stats != nil {
			if f.batch == nil {
				f.batch = &wire.BatchStats{}
			}
			f.batch.Add(w.batch.Stats)
		}
	}
	for _, w := range s.idle {
		if len(w.jobs) == 0 {
			f.idle++
		}
	}
	return f
}

// workerList is STATUS's "worker_list" (ours; 0.1.3 clients ignore it): a
// row per worker, by calculator then pid, for `aserpc status --watch`.
func (r *Router) workerList(now time.Time) []any {
	ws := make([]*worker, 0, len(r.workers))
	for _, w := range r.workers {
		ws = append(ws, w)
	}
	sort.Slice(ws, func(i, j int) bool {
		if ws[i].service.name != ws[j].service.name {
			return ws[i].service.name < ws[j].service.name
		}
		return ws[i].pid < ws[j].pid
	})
	out := make([]any, 0, len(ws))
	for _, w := range ws {
		state := "idle"
		switch {
		case w.stopping:
			state = "stopping"
		case w.batch != nil && len(w.jobs) > 0 && w.open:
			state = "collecting"
		case len(w.jobs) > 0:
			state = "busy"
		case w.session != nil:
			state = "reserved"
		}
		row := map[string]any{
			"calc": w.service.name, "id": peer(w.id), "pid": int64(w.pid), "state": state,
			"held": int64(len(w.jobs)), "handled": int64(w.handled),
			"uptime_s": now.Sub(w.joined).Seconds(), "last_job_s": w.lastService.Seconds(),
			"seen_s_ago": now.Sub(w.lastSeen).Seconds(),
		}
		if w.batch != nil {
			row["capacity"] = int64(w.batch.Structures)
		}
		if w.session != nil {
			row["session"] = w.session.id
		}
		if i := w.info; i != nil {
			row["host"], row["rss"], row["gpu"], row["compute_s"] = i.Host, i.RSS, i.GPU, i.ComputeSeconds
			if i.Threads > 0 {
				row["threads"] = int64(i.Threads)
			}
			if i.CPUs != "" {
				row["cpus"] = i.CPUs
			}
		}
		out = append(out, row)
	}
	return out
}

func (r *Router) shutdownWorkers(calc string) int {
	s := r.services[calc]
	if s == nil {
		return 0
	}
	n := 0
	for _, w := range s.workers {
		r.out.toBackend(w.id, wire.Shutdown)
		w.stopping = true
		if ss := w.session; ss != nil {
			// Its waiting requests go to whoever comes next.
			r.dropSession(w)
		}
		n++
	}
	s.idle = nil
	r.log.Info("told workers to shut down", "calc", calc, "count", n)
	return n
}

// Stop answers every waiting and running request with an error and tells
// every worker to shut down. Clients never hang on a stopped broker.
func (r *Router) Stop() {
	if r.stopping {
		return
	}
	for _, w := range r.workers {
		r.out.toBackend(w.id, wire.Shutdown)
	}
	r.Drain()
}

// Drain answers every waiting and running request with an error without
// telling workers anything: used when the broker process exits on a signal,
// so its workers re-register with the next broker.
func (r *Router) Drain() {
	r.stopping = true
	for _, w := range r.workers {
		for _, j := range w.jobs {
			r.fail(j, errShuttingDown)
		}
		w.jobs = nil
	}
	for _, s := range r.services {
		r.failPending(s, errShuttingDown)
	}
	for _, ss := range r.sessions {
		for _, j := range ss.pending {
			r.fail(j, errShuttingDown)
		}
		ss.pending = nil
	}
	for pid, d := range r.dying {
		delete(r.dying, pid)
		r.fail(d.j, d.why)
	}
}

// Stopping reports whether a SHUTDOWN was accepted.
func (r *Router) Stopping() bool { return r.stopping }
