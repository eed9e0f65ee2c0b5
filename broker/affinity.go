package broker

// Affinity: a client whose requests carry an affinity key (wire.ExtAffinity,
// sent by our RemoteCalculator; 0.1.3 clients send none) is given the
// worker that served its previous request when that worker is idle, else
// the least recently used one as always. Stateful calculators (DFT codes
// restarting their SCF from the last density, neighbour lists, caches)
// then see their own client's previous structure, not another's.

import (
	"slices"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// maxAffinity bounds the remembered clients; past it the memory starts
// afresh (a client loses its worker once).
const maxAffinity = 100_000

// affinityOf reads j's affinity key once.
func (r *Router) affinityOf(j *job) string {
	if !j.affinityRead {
		j.affinityRead = true
		var idle float64
		j.affinity, idle = wire.RequestRouting(j.body.Data())
		j.sessionIdle = time.Duration(idle * float64(time.Second))
	}
	return j.affinity
}

// preferred returns the index in s.idle of the worker that last served j's
// client, when it is idle and not first in line anyway; 0 otherwise (the
// least recently used worker). Only plain workers take part.
func (r *Router) preferred(s *service, j *job) int {
	if len(s.idle) < 2 || len(r.affinity) == 0 {
		if len(s.idle) >= 2 && r.affinityOf(j) != "" {
			r.counters.AffinityMisses++
		}
		return 0
	}
	id := r.affinityOf(j)
	if id == "" {
		return 0
	}
	key, ok := r.affinity[s.name+"\x00"+id]
	if !ok {
		r.counters.AffinityMisses++
		return 0
	}
	i := slices.IndexFunc(s.idle, func(w *worker) bool { return w.key == key && w.batch == nil })
	if i < 0 {
		r.counters.AffinityMisses++
		return 0
	}
	r.counters.AffinityHits++
	return i
}

// remember notes that w served j's client.
func (r *Router) remember(j *job, w *worker) {
	id := r.affinityOf(j)
	if id == "" {
		return
	}
	if r.affinity == nil || len(r.affinity) >= maxAffinity {
		r.affinity = map[string]string{}
	}
	r.affinity[w.service.name+"\x00"+id] = w.key
}
