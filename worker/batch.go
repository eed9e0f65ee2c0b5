package worker

// Batching: a worker with Config.Batch.Size > 1 and a BatchHandler
// announces its capacity in READY (wire.Capacity), holds the jobs the
// broker hands it while it collects, and computes them in one call when it
// holds Size structures or Atoms atoms, when the broker's hint says nothing
// more is coming, or Wait after the first (wire/doc.go, "Batching").

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// BatchConfig makes a worker batch.
type BatchConfig struct {
	Size  int           // structures per batch (≤ 1: no batching)
	Atoms int           // atoms per batch (0: no bound; one bigger structure still goes alone)
	Wait  time.Duration // how long a first job waits for others to join it
}

// BatchHandler computes several request payloads at once, one reply each.
type BatchHandler func(ctx context.Context, requests [][]byte) BatchResult

// BatchResult is a BatchHandler's replies and how it computed them.
type BatchResult struct {
	Replies [][]byte
	// Batched: the calculator computed them in batch calls (else one by one).
	Batched bool
	// Groups are [structures, atoms] of each call.
	Groups [][2]int
	// Splits counts out-of-memory splits; OOMAtoms is the smallest batch
	// (atoms) that ran out of memory, OKAfterOOM the largest that then fitted.
	Splits, OOMAtoms, OKAfterOOM int
}

// batchState is the loop's batching state (touched by the loop only).
type batchState struct {
	atoms int // the atom budget now: Config.Batch.Atoms, lowered after out-of-memory errors
	stats wire.BatchStats
	pay   payoff
}

func (w *Worker) batching() bool { return w.cfg.Batch.Size > 1 && w.cfg.BatchHandler != nil }

// capacity is READY's capacity frame.
func (w *Worker) capacity() []byte {
	c := wire.Capacity{Structures: w.cfg.Batch.Size, Atoms: w.bs.atoms, WaitMs: float64(w.cfg.Batch.Wait) / float64(time.Millisecond),
		Info: w.info()}
	if w.bs.stats.Batches > 0 {
		st := w.bs.stats
		c.Stats = &st
	}
	return wire.EncodeCapacity(c)
}

type heldJob struct {
	client, request []byte
	atoms           int
}

// batch collects jobs after first and computes them. It returns true when
// the worker must stop: after answering them (SHUTDOWN, or a signal), or
// without (a signal with OnStop == Cancel: the broker re-dispatches what it
// held).
func (w *Worker) batch(ctx context.Context, first wire.ToWorker) (stop bool, err error) {
	start := time.Now()
	jobs := []heldJob{}
	atoms := 0
	hint := first.Hint
	add := func(m wire.ToWorker) {
		n, _ := wire.RequestAtoms(m.Request)
		jobs = append(jobs, heldJob{client: m.Client, request: m.Request, atoms: n})
		atoms += n
		hint = m.Hint
	}
	add(first)
	full := func() bool { return len(jobs) >= w.cfg.Batch.Size || (w.bs.atoms > 0 && atoms >= w.bs.atoms) }
	handle := func(msg [][]byte) {
		m, perr := wire.ParseToWorker(msg)
		switch {
		case perr != nil:
			w.log.Warn("unexpected message from broker", "frames", len(msg), "err", perr)
		case m.Joined:
			w.joined()
		case m.Shutdown:
			w.log.Info("broker sent SHUTDOWN; answering the jobs held first", "held", len(jobs))
			stop = true
		default:
			add(m)
		}
	}
	// follow > 0: a burst is in flight; its jobs come within moments, but
	// never wait for them forever.
	burstDeadline := start.Add(w.cfg.Batch.Wait + time.Second)
	for {
		// Jobs already here join whatever their hints say: the broker sent
		// them while this worker computed (before it heard the BUSY).
		for !full() && !stop {
			msg, rerr := w.recv(0)
			if rerr != nil {
				return true, rerr
			}
			if msg == nil {
				break
			}
			handle(msg)
		}
		full := full()
		now := time.Now()
		var until time.Time
		switch {
		case full || hint == nil || stop:
		case hint.Follow > 0:
			until = burstDeadline
		case hint.Expect > 0:
			until = start.Add(w.cfg.Batch.Wait)
		}
		if until.IsZero() || !now.Before(until) {
			break
		}
		if ctx.Err() != nil {
			if w.cfg.OnStop == Cancel {
				return true, nil
			}
			stop = true // Finish: answer what it holds, then go
			continue
		}
		msg, rerr := w.recv(min(until.Sub(now), 100*time.Millisecond))
		if rerr != nil {
			return true, rerr
		}
		if msg != nil {
			handle(msg)
		}
	}
	waited := time.Since(start)
	if leave := w.computeBatch(ctx, jobs, atoms, waited); leave {
		return true, nil
	}
	return stop, nil
}

// computeBatch computes jobs in one BatchHandler call and answers each.
func (w *Worker) computeBatch(ctx context.Context, jobs []heldJob, atoms int, waited time.Duration) (leave bool) {
	start := time.Now()
	// BUSY now: the broker hands a computing worker nothing new (others
	// may take it), and keeps every held job's client informed.
	w.cmd(wire.Busy)
	jobCtx := context.Background()
	if w.cfg.OnStop == Cancel {
		var cancelJob context.CancelFunc
		jobCtx, cancelJob = context.WithCancel(jobCtx)
		defer cancelJob()
		defer context.AfterFunc(ctx, cancelJob)()
	}
	stopBeat := w.beat()
	reqs := make([][]byte, len(jobs))
	for i, j := range jobs {
		reqs[i] = j.request
	}
	// Now and then part of a batch is computed one by one, to measure
	// whether batching pays (payoff): while it does, the first two of a
	// batch of four or more, the rest together; while it does not, every
	// batch one by one except the measure, which goes together.
	measure := w.bs.pay.measure(len(jobs))
	oneByOne := context.WithValue(jobCtx, oneByOneKey{}, true)
	var res BatchResult
	var took time.Duration
	switch {
	case measure && !w.bs.pay.off && len(jobs) >= 4:
		k := 2
		t0 := time.Now()
		first := w.callBatch(oneByOne, reqs[:k])
		t1 := time.Now()
		rest := w.callBatch(jobCtx, reqs[k:])
		took = time.Since(start)
		ka := 0
		for _, j := range jobs[:k] {
			ka += j.atoms
		}
		if rest.Splits == 0 {
			w.bs.pay.observe(true, ka, t1.Sub(t0))
			w.bs.pay.observe(!rest.Batched, atoms-ka, time.Since(t1))
		}
		res = BatchResult{Replies: append(first.Replies, rest.Replies...), Batched: rest.Batched,
			Groups: append(first.Groups, rest.Groups...), Splits: rest.Splits, OOMAtoms: rest.OOMAtoms, OKAfterOOM: rest.OKAfterOOM}
	default:
		ctx := jobCtx
		single := w.bs.pay.oneByOne(measure)
		if single {
			ctx = oneByOne
		}
		res = w.callBatch(ctx, reqs)
		took = time.Since(start)
		if len(jobs) > 1 && res.Splits == 0 { // (an out-of-memory retry says nothing of the payoff)
			w.bs.pay.observe(single || !res.Batched, atoms, took)
		}
	}
	stopBeat()
	w.computeNanos.Add(int64(took))
	if jobCtx.Err() != nil && ctx.Err() != nil {
		w.log.Info("batch cancelled by a signal; leaving it to another worker", "held", len(jobs), "after", took)
		return true
	}
	if changed, on := w.bs.pay.decide(); changed {
		if on {
			w.log.Info("batching pays again: computing held structures together", "per_atom_batched", w.bs.pay.batched, "per_atom_single", w.bs.pay.single)
		} else {
			w.log.Warn("batching does not pay for this model and these structures: computing them one by one (re-measured now and then)",
				"per_atom_batched", w.bs.pay.batched, "per_atom_single", w.bs.pay.single)
		}
	}
	for i, g := range res.Groups {
		wait := waited.Microseconds()
		if i > 0 {
			wait = -1 // counted with the first call
		}
		w.bs.stats.Observe(g[0], g[1], wait)
	}
	if res.Splits > 0 {
		w.bs.stats.Splits += int64(res.Splits)
		budget := res.OKAfterOOM
		if budget <= 0 {
			budget = max(res.OOMAtoms/2, 1)
		}
		if w.bs.atoms == 0 || budget < w.bs.atoms {
			w.log.Warn("out of memory on a batch; split and retried, and later batches hold fewer atoms",
				"oom_atoms", res.OOMAtoms, "atom_budget", budget, "was", w.bs.atoms)
			w.bs.atoms = budget
		}
	}
	w.log.Debug("batch computed", "structures", len(jobs), "atoms", atoms, "waited", waited, "took", took,
		"calls", len(res.Groups), "batched", res.Batched)
	for i, j := range jobs {
		w.answer(j.client, res.Replies[i], len(j.request), start)
	}
	return false
}

// oneByOneKey in a batch's context asks the BatchHandler to compute the
// structures one by one (the payoff's measurement).
type oneByOneKey struct{}

// OneByOne reports whether a BatchHandler should compute its requests one
// by one this time.
func OneByOne(ctx context.Context) bool { v, _ := ctx.Value(oneByOneKey{}).(bool); return v }

// callBatch runs the batch handler; a panic answers every job with it.
func (w *Worker) callBatch(ctx context.Context, reqs [][]byte) (res BatchResult) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("batch handler panicked", "panic", p, "stack", string(debug.Stack()))
			reply, _ := wire.EncodeResponse(&wire.CalcResponse{Error: fmt.Sprint(p), ErrorType: "panic", Traceback: string(debug.Stack())})
			if reply == nil {
				reply = wire.ErrorResponse(fmt.Sprint(p))
			}
			res = BatchResult{Replies: make([][]byte, len(reqs))}
			for i := range res.Replies {
				res.Replies[i] = reply
			}
		}
	}()
	res = w.cfg.BatchHandler(ctx, reqs)
	if len(res.Replies) != len(reqs) {
		panic(fmt.Sprintf("batch handler gave %d replies for %d requests", len(res.Replies), len(reqs)))
	}
	for i, r := range res.Replies {
		if r == nil {
			res.Replies[i] = wire.ErrorResponse("no reply computed")
		}
	}
	return res
}

// beat sends BUSY every heartbeat interval from a timer of its own (the
// handler may hold the loop's thread for hours) until the returned stop is
// called. Stopping never waits for the timer.
func (w *Worker) beat(also ...func()) (stop func()) {
	var b struct {
		sync.Mutex
		t    *time.Timer
		done bool
	}
	b.Lock()
	b.t = time.AfterFunc(w.cfg.Heartbeat, func() {
		w.cmd(wire.Busy)
		b.Lock()
		stopped := b.done
		b.Unlock()
		if !stopped {
			for _, f := range also {
				f()
			}
		}
		b.Lock()
		if !b.done {
			b.t.Reset(w.cfg.Heartbeat)
		}
		b.Unlock()
	})
	b.Unlock()
	return func() {
		b.Lock()
		b.done = true
		b.t.Stop()
		b.Unlock()
	}
}
