package broker

// The manager: its registration and capabilities, spawn replies, and what
// happens when it leaves.

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// max is the most workers the manager runs for calc.
func (m *manager) max(calc string) int {
	if n, ok := m.maxWorkers[calc]; ok && n > 0 {
		return n
	}
	return 1
}

func (r *Router) managerReady(now time.Time, id []byte, names []byte, caps []byte) {
	set := map[string]bool{}
	for _, n := range strings.Split(string(names), ",") {
		if n = strings.TrimSpace(n); n != "" && validName([]byte(n)) {
			set[n] = true
		}
	}
	if r.mgr == nil || r.mgr.key != string(id) {
		if r.mgr != nil {
			r.log.Warn("replacing the registered manager", "old", peer(r.mgr.id), "new", peer(id))
			r.clearSpawns()
		}
		r.log.Info("manager connected", "manager", peer(id), "calculators", string(names))
		r.mgr = &manager{id: clone(id), key: string(id)}
	}
	r.mgr.lastSeen = now
	r.mgr.spawnable = set
	if caps != nil {
		wasOurs := r.mgr.ours
		r.managerCaps(id, caps)
		if r.mgr.ours && len(set) == 0 {
			// Our manager says goodbye with an empty list on its way out.
			r.dropManager(now, whyGoodbye)
			return
		}
		if r.mgr.ours && !wasOurs {
			// An empty WORKER_JOINED tells the manager this broker reports
			// registrations, so it may hold its children to a start timeout
			// from the first spawn on.
			r.out.toBackend(r.mgr.id, wire.WorkerJoined, nil)
		}
	}
	// A (re)registered manager serves requests that were waiting.
	for _, s := range r.services {
		r.drain(now, s)
	}
}

func (r *Router) spawnResponse(now time.Time, id []byte, args [][]byte) {
	if len(args) < 2 || !validName(args[0]) {
		r.malformed("backend", id, "SPAWN_RESPONSE frame count or name")
		return
	}
	if r.mgr == nil || r.mgr.key != string(id) {
		r.malformed("backend", id, "SPAWN_RESPONSE from a peer that is not the manager")
		return
	}
	r.mgr.lastSeen = now
	s := r.services[string(args[0])]
	if s == nil {
		return
	}
	if string(args[1]) == "ok" {
		return
	}
	reason := "unknown"
	if len(args) > 2 && len(args[2]) > 0 {
		reason = strings.ToValidUTF8(string(args[2]), "?")
	}
	r.log.Warn("manager failed to spawn a worker", "calc", s.name, "reason", reason)
	r.met.spawnFailed(s.name)
	if len(s.starting) > 0 {
		s.starting = s.starting[1:]
	}
	if r.available(s) == 0 && len(s.starting) == 0 {
		r.failPending(s, "Failed to spawn worker: "+reason)
	}
	r.gc(s)
}

func (r *Router) clearSpawns() {
	for _, s := range r.services {
		s.starting = nil
	}
}

// whyGoodbye is dropManager's reason for a manager that said it is leaving.
const whyGoodbye = "said goodbye"

func (r *Router) dropManager(now time.Time, why string) {
	if r.mgr == nil {
		return
	}
	level := slog.LevelWarn
	if why == whyGoodbye {
		level = slog.LevelInfo // a manager stopping cleanly is not a warning
	}
	r.log.Log(context.Background(), level, "manager gone, clearing its calculators", "manager", peer(r.mgr.id), "why", why)
	r.mgr = nil
	r.clearSpawns()
	for _, s := range r.services {
		r.drain(now, s)
	}
}

// managerCaps reads the capabilities frame of our manager:
// {"protocol": 1, "max_workers": {calc: n}, "children": [...]}.
func (r *Router) managerCaps(id []byte, caps []byte) {
	v, err := wire.Unmarshal(caps)
	m, ok := v.(map[string]any)
	if err != nil || !ok {
		r.malformed("backend", id, "MANAGER_READY capabilities frame is not a msgpack map")
		return
	}
	r.mgr.ours = true
	r.mgr.maxWorkers = map[string]int{}
	if mw, ok := m["max_workers"].(map[string]any); ok {
		for name, n := range mw {
			switch x := n.(type) {
			case int64:
				r.mgr.maxWorkers[name] = int(x)
			case uint64:
				r.mgr.maxWorkers[name] = int(min(x, 1<<20))
			}
		}
	}
	r.mgr.children = m["children"]
}
