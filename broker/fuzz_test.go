package broker

import (
	"slices"
	"testing"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// FuzzRouter feeds the router arbitrary frame sequences on both sides with
// a moving clock. It must never panic, must release every payload
// reference it was given, and must keep its invariants: a worker holds at
// most one job and is never idle while holding one, unless it batches: then
// it holds at most its capacity and is idle only while collecting with room.
func FuzzRouter(f *testing.F) {
	f.Add([]byte{1, 0, 1, 'l', 0, 0, 4, 'l', 'x', 1, 0, 5, 'c', 'r'})
	f.Add([]byte{1, 0, 14, 'l', 0, 0, 4, 'l', 'x', 2, 1, 0, 1, 'l', 1, 0, 13, 'l', 'e', 'r'})
	// A batching worker (READY with a capacity {"batch": 3}) and requests.
	batchReady := append([]byte{1, 0, 0xff, 1, 0xff, 'l', 0xff, '7', 0xff}, 0x81, 0xa5, 'b', 'a', 't', 'c', 'h', 3, 0xfe)
	req := []byte{0, 1, 0xff, 4, 0xff, 'l', 0xff, 'x', 0xfe}
	f.Add(append(append(append(append([]byte{}, batchReady...), req...), req...), 1, 0, 0xff, 3, 0xff, 'l', 0xfe, 1, 0, 0xff, 5, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 'r', 0xfe))
	// Two session requests of one client (a real payload with affinity and
	// session keys) and a plain one, two workers, answers and ticks.
	var sess []byte
	{
		v := []any{int64(1), []byte{1, 0, 0, 0}, make([]byte, 24), make([]byte, 72), []byte{0, 0, 0}, []any{"energy"},
			map[string]any{"affinity": "k", "session": 2.0}}
		b, err := wire.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		sess = b
	}
	sreq := append(append([]byte{0, 1, 0xff, 4, 0xff, 'l', 0xff}, sess...), 0xfe)
	ready := func(p byte) []byte { return []byte{1, p, 0xff, 1, 0xff, 'l', 0xfe} }
	answer := func(p byte) []byte { return []byte{1, p, 0xff, 5, 0xff, 'p', '1', 0xff, 'r', 0xfe} }
	seed := append(append(append(ready(0), ready(2)...), sreq...), answer(0)...)
	seed = append(append(append(seed, req...), sreq...), 2, 0, 0xfe)
	seed = append(append(append(seed, answer(0)...), answer(2)...), 2, 0, 0xfe, 2, 0, 0xfe, 2, 0, 0xfe)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := &recorder{gone: map[string]bool{}}
		now := time.Unix(0, 0)
		r := newRouter(Options{WorkerTimeout: 3 * time.Second, QueueTimeout: 5 * time.Second,
			SpawnTimeout: 4 * time.Second, MaxPending: 4, AllowShutdown: true}, tr, nil, now)
		live := 0
		// Each step: side (even: frontend, odd: backend, 2: tick), peer id,
		// then frames separated by 0xff bytes until 0xfe.
		for len(data) >= 2 {
			side, id := data[0]%3, []byte{'p', data[1]%4 + '0'}
			data = data[2:]
			var frames [][]byte
			cur := []byte{}
			for len(data) > 0 && data[0] != 0xfe {
				if data[0] == 0xff {
					frames = append(frames, cur)
					cur = []byte{}
				} else {
					cur = append(cur, data[0])
				}
				data = data[1:]
			}
			frames = append(frames, cur)
			if len(data) > 0 {
				data = data[1:]
			}
			switch side {
			case 0:
				var body Payload
				if len(frames) == 4 {
					body = newCounted(frames[3], &live)
				}
				r.Client(now, id, frames, body)
			case 1:
				var body Payload
				if len(frames) == 4 {
					body = newCounted(frames[3], &live)
				}
				r.Backend(now, id, frames, body)
			case 2:
				now = now.Add(time.Second)
				r.Tick(now)
			}
			tr.take()
			for _, w := range r.workers {
				if w.batch == nil && len(w.jobs) > 1 || w.batch != nil && len(w.jobs) > w.batch.Structures {
					t.Fatalf("worker %s holds %d jobs", w.key, len(w.jobs))
				}
			}
			for _, ss := range r.sessions {
				if r.workers[ss.w.key] != ss.w || ss.w.session != ss || ss.w.batch != nil {
					t.Fatalf("session %q holds a worker that is gone, batches, or is not its", ss.id)
				}
				if slices.Contains(ss.w.service.idle, ss.w) || ss.parked && (len(ss.w.jobs) > 0 || len(ss.pending) > 0) {
					t.Fatalf("session %q: its worker is idle for everyone, or parked while busy or awaited", ss.id)
				}
			}
			for _, s := range r.services {
				for _, w := range s.idle {
					if w.batch == nil && len(w.jobs) > 0 {
						t.Fatalf("worker %s idle while holding a job", w.key)
					}
					if w.batch != nil && !r.room(w) {
						t.Fatalf("batching worker %s idle while full or computing", w.key)
					}
				}
			}
		}
		// Whatever is still held is held by jobs; stopping releases all.
		r.Stop()
		tr.take()
		if live != 0 {
			t.Fatalf("%d payload references leaked", live)
		}
	})
}
