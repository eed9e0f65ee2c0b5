package wire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Batching (doc.go, "Batching"): what a batching worker announces in its
// READY, the hint the broker adds to each job it hands such a worker, and
// the worker's running figures.

// Capacity is what a batching worker announces as READY's fifth frame:
// how many jobs it may hold at once, and how many atoms in all.
type Capacity struct {
	// Structures is how many jobs it may hold at once (> 1 for batching).
	Structures int
	// Atoms bounds the atoms of the jobs it holds (0: no bound); a single
	// job bigger than that is still given to it alone.
	Atoms int
	// WaitMs is how long the worker holds a first job for others to join.
	WaitMs float64
	// Stats are its batching figures so far (nil: none yet).
	Stats *BatchStats
	// Info is what the worker reports of itself (any worker of ours, at
	// most about once a second; nil: not in this READY).
	Info *WorkerInfo
}

// WorkerInfo is what a worker of ours reports of itself in READY's fifth
// frame, under "worker": the broker exports it as metrics per worker.
type WorkerInfo struct {
	Host           string  // its host name
	RSS            int64   // resident memory, bytes (0: unknown)
	GPU            int64   // GPU memory torch has allocated, bytes (-1: none or unknown)
	ComputeSeconds float64 // time spent computing requests
	Handled        int64   // requests answered
	Threads        int     // its thread budget (0: not set)
	CPUs           string  // the CPUs it is pinned to ("": all allowed)
	// Direct is the endpoint on which it serves its session's client
	// directly (unix://PATH, a plain unix socket on its host, or tcp://
	// with DirectKey; "": none), DirectJobs the requests it
	// answered there.
	Direct     string
	DirectJobs int64
	// DirectKey is the CURVE public key (Z85) of a tcp:// direct endpoint:
	// the worker's own, made at start; clients that learn it from the
	// broker connect with it.
	DirectKey string
	// DirectLocal, next to a tcp:// Direct, is a unix:// socket where the
	// worker also serves a session's client on its own host, and Boot that
	// host's kernel boot id (how a client tells it is on the same host).
	DirectLocal, Boot string
}

// Endpoint is what the broker hands a session's client: Direct, then with
// a tcp endpoint its key, then with a local socket "BOOT unix://PATH".
func (i *WorkerInfo) Endpoint() string {
	e := i.Direct
	if i.DirectKey != "" {
		e += " " + i.DirectKey
	}
	if i.DirectLocal != "" && i.Boot != "" {
		e += " " + i.Boot + " " + i.DirectLocal
	}
	return e
}

// BatchStats are a batching worker's cumulative figures, sent with each
// READY so that the broker's STATUS (and metrics) can show them.
type BatchStats struct {
	Batches    int64 // model calls made (one per batch key of a worker batch; one per structure one by one)
	Structures int64 // structures computed in them
	Atoms      int64 // atoms computed in them
	WaitMicros int64 // time first jobs waited for others, summed
	// Sizes counts batches by structures: ≤1, ≤2, ≤4, ≤8, ≤16, ≤32, ≤64, more.
	Sizes []int64
	// Waits counts worker batches (what the worker held at once, maybe
	// several calls) by how long their first job waited, in ms: 0 (did not
	// wait), ≤1, ≤2, ≤5, ≤10, ≤20, ≤50, ≤100, more.
	Waits []int64
	// Splits counts batches split after an out-of-memory error.
	Splits int64
}

// SizeBuckets and WaitBucketsMs are the upper bounds of BatchStats.Sizes
// and .Waits (a last bucket counts what is above the last bound).
var (
	SizeBuckets   = []int64{1, 2, 4, 8, 16, 32, 64}
	WaitBucketsMs = []float64{0, 1, 2, 5, 10, 20, 50, 100}
)

// Observe adds one model call of n structures and atoms atoms whose first
// job waited waitMicros µs (negative: a further call of the same worker
// batch, whose wait is counted once).
func (s *BatchStats) Observe(n, atoms int, waitMicros int64) {
	if len(s.Sizes) != len(SizeBuckets)+1 {
		s.Sizes = make([]int64, len(SizeBuckets)+1)
	}
	if len(s.Waits) != len(WaitBucketsMs)+1 {
		s.Waits = make([]int64, len(WaitBucketsMs)+1)
	}
	s.Batches++
	s.Structures += int64(n)
	s.Atoms += int64(atoms)
	i := 0
	for i < len(SizeBuckets) && int64(n) > SizeBuckets[i] {
		i++
	}
	s.Sizes[i]++
	if waitMicros < 0 {
		return
	}
	s.WaitMicros += waitMicros
	ms := float64(waitMicros) / 1000
	i = 0
	for i < len(WaitBucketsMs) && ms > WaitBucketsMs[i] {
		i++
	}
	s.Waits[i]++
}

// Add sums o into s (a calculator's figures over its workers).
func (s *BatchStats) Add(o *BatchStats) {
	if o == nil {
		return
	}
	s.Batches += o.Batches
	s.Structures += o.Structures
	s.Atoms += o.Atoms
	s.WaitMicros += o.WaitMicros
	s.Splits += o.Splits
	s.Sizes = addCounts(s.Sizes, o.Sizes)
	s.Waits = addCounts(s.Waits, o.Waits)
}

func addCounts(a, b []int64) []int64 {
	for len(a) < len(b) {
		a = append(a, 0)
	}
	for i, v := range b {
		a[i] += v
	}
	return a
}

// Map is the STATUS form of s.
func (s *BatchStats) Map() map[string]any {
	mean := 0.0
	if s.Batches > 0 {
		mean = float64(s.Structures) / float64(s.Batches)
	}
	ints := func(v []int64) []any {
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = x
		}
		return out
	}
	return map[string]any{
		"batches": s.Batches, "structures": s.Structures, "atoms": s.Atoms,
		"wait_us": s.WaitMicros, "mean_size": mean, "splits": s.Splits,
		"sizes": ints(s.Sizes), "waits": ints(s.Waits),
	}
}

// EncodeCapacity writes c as READY's fifth frame: a msgpack map
// {"batch": n, "atoms": a, "wait_ms": t, "stats": {...}, "worker": {...}}
// (n = 1 for a worker that does not batch).
func EncodeCapacity(c Capacity) []byte {
	m := map[string]any{"batch": int64(max(c.Structures, 1)), "atoms": int64(c.Atoms), "wait_ms": c.WaitMs}
	if c.Stats != nil && c.Stats.Batches > 0 {
		m["stats"] = c.Stats.Map()
	}
	if i := c.Info; i != nil {
		w := map[string]any{"host": i.Host, "rss": i.RSS, "gpu": i.GPU, "compute_s": i.ComputeSeconds,
			"handled": i.Handled}
		if i.Threads > 0 {
			w["threads"] = int64(i.Threads)
		}
		if i.CPUs != "" {
			w["cpus"] = i.CPUs
		}
		if i.Direct != "" {
			w["direct"], w["direct_jobs"] = i.Direct, i.DirectJobs
			if i.DirectKey != "" {
				w["direct_key"] = i.DirectKey
			}
			if i.DirectLocal != "" {
				w["direct_local"], w["boot"] = i.DirectLocal, i.Boot
			}
		}
		m["worker"] = w
	}
	b, err := Marshal(m)
	if err != nil {
		panic("wire: capacity: " + err.Error()) // only ints, floats and lists
	}
	return b
}

// ErrCapacity is returned for a capacity frame that is not one.
var ErrCapacity = errors.New("wire: bad capacity frame")

// ParseCapacity reads READY's capacity frame. Unknown keys are ignored; a
// frame that is not a map, or whose batch is not a positive int, is an
// error.
func ParseCapacity(b []byte) (Capacity, error) {
	v, err := Unmarshal(b)
	if err != nil {
		return Capacity{}, fmt.Errorf("%w: %v", ErrCapacity, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return Capacity{}, fmt.Errorf("%w: not a map", ErrCapacity)
	}
	var c Capacity
	n, ok := asInt(m["batch"])
	if !ok || n < 1 || n > 1<<20 {
		return Capacity{}, fmt.Errorf("%w: batch must be an int in 1..2^20", ErrCapacity)
	}
	c.Structures = int(n)
	if a, ok := asInt(m["atoms"]); ok && a > 0 {
		c.Atoms = int(min(a, 1<<40))
	}
	switch t := m["wait_ms"].(type) {
	case float64:
		c.WaitMs = max(t, 0)
	case int64:
		c.WaitMs = float64(max(t, 0))
	}
	if st, ok := m["stats"].(map[string]any); ok {
		s := &BatchStats{}
		s.Batches, _ = asInt(st["batches"])
		s.Structures, _ = asInt(st["structures"])
		s.Atoms, _ = asInt(st["atoms"])
		s.WaitMicros, _ = asInt(st["wait_us"])
		s.Splits, _ = asInt(st["splits"])
		s.Sizes = asInts(st["sizes"], len(SizeBuckets)+1)
		s.Waits = asInts(st["waits"], len(WaitBucketsMs)+1)
		c.Stats = s
	}
	if wi, ok := m["worker"].(map[string]any); ok {
		i := &WorkerInfo{GPU: -1}
		i.Host, _ = wi["host"].(string)
		if len(i.Host) > 255 {
			i.Host = i.Host[:255]
		}
		i.RSS, _ = asInt(wi["rss"])
		if g, ok := asSigned(wi["gpu"]); ok {
			i.GPU = g
		}
		switch t := wi["compute_s"].(type) {
		case float64:
			i.ComputeSeconds = max(t, 0)
		case int64:
			i.ComputeSeconds = float64(max(t, 0))
		}
		i.Handled, _ = asInt(wi["handled"])
		if n, ok := asInt(wi["threads"]); ok && n < 1<<16 {
			i.Threads = int(n)
		}
		if s, ok := wi["cpus"].(string); ok && len(s) <= 1024 {
			i.CPUs = s
		}
		key, _ := wi["direct_key"].(string)
		if s, ok := wi["direct"].(string); ok && len(s) <= 1024 &&
			(strings.HasPrefix(s, "unix://") || strings.HasPrefix(s, "tcp://") && len(key) == 40) {
			i.Direct = s
			i.DirectJobs, _ = asInt(wi["direct_jobs"])
			if strings.HasPrefix(s, "tcp://") {
				i.DirectKey = key
				local, _ := wi["direct_local"].(string)
				boot, _ := wi["boot"].(string)
				if strings.HasPrefix(local, "unix://") && len(local) <= 1024 && ValidBootID(boot) {
					i.DirectLocal, i.Boot = local, boot
				}
			}
		}
		c.Info = i
	}
	return c, nil
}

func asSigned(v any) (int64, bool) {
	if x, ok := v.(int64); ok {
		return x, true
	}
	return asInt(v)
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case uint64:
		if x <= 1<<62 {
			return int64(x), true
		}
	}
	return 0, false
}

func asInts(v any, max int) []int64 {
	l, _ := v.([]any)
	if len(l) > max {
		l = l[:max]
	}
	out := make([]int64, 0, len(l))
	for _, x := range l {
		n, _ := asInt(x)
		out = append(out, n)
	}
	return out
}

// JobHint is the fourth frame of a job the broker hands a batching worker:
// ["", client, request, hint], hint = "follow,expect" in decimal.
type JobHint struct {
	// Follow is how many more jobs the broker is sending right behind this
	// one (a burst): the worker waits for them before it computes.
	Follow int
	// Expect is how many other clients of this calculator were answered
	// lately and have nothing waiting now, so may send again soon: when it
	// is 0 the worker computes what it holds without waiting.
	Expect int
	// Session is set on a job for a plain worker that announced a direct
	// endpoint: the affinity key of the session this worker is now
	// reserved for (its client may send it requests directly).
	Session string
}

// Encode writes the hint frame.
func (h JobHint) Encode() []byte {
	b := strconv.AppendInt(nil, int64(h.Follow), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(h.Expect), 10)
	if h.Session != "" {
		b = append(append(b, ','), h.Session...)
	}
	return b
}

// ParseJobHint reads a hint frame.
func ParseJobHint(b []byte) (JobHint, error) {
	var h JobHint
	var i int
	for i = 0; i < len(b) && b[i] != ','; i++ {
	}
	f, err1 := strconv.Atoi(string(b[:i]))
	if i >= len(b) || err1 != nil {
		return h, fmt.Errorf("wire: bad job hint %q", b)
	}
	rest, session, _ := strings.Cut(string(b[i+1:]), ",")
	e, err2 := strconv.Atoi(rest)
	if err2 != nil || f < 0 || e < 0 || len(session) > MaxAffinityLen {
		return h, fmt.Errorf("wire: bad job hint %q", b)
	}
	return JobHint{Follow: f, Expect: e, Session: session}, nil
}

// RequestAtoms reads how many atoms a request payload holds from its head
// alone (the length of its numbers), without decoding the rest: the broker
// counts a batching worker's atoms with it.
func RequestAtoms(b []byte) (int, error) {
	d := decoder{b: b}
	n, err := d.arrayLen()
	if err != nil {
		return 0, err
	}
	if n < 6 {
		return 0, d.errf(ErrMalformed, "request has %d elements, want 6", n)
	}
	if _, err := d.int64(); err != nil {
		return 0, err
	}
	numbers, err := d.bin()
	if err != nil {
		return 0, err
	}
	return len(numbers) / 4, nil
}

// ResponseSuccess reads a response payload's success flag from its head
// alone (the broker counts outcomes with it); ok is false for a payload
// that is not a response.
func ResponseSuccess(b []byte) (success, ok bool) {
	d := decoder{b: b}
	n, err := d.arrayLen()
	if err != nil || n < 2 {
		return false, false
	}
	if _, err := d.int64(); err != nil {
		return false, false
	}
	v, err := d.bool()
	if err != nil {
		return false, false
	}
	return v, true
}

// ExtAffinity is the request extension key by which a client asks to be
// served by the worker that served its previous request (doc.go,
// "Affinity"): a str of at most MaxAffinityLen bytes, the same for every
// request of one calculator object.
const ExtAffinity = "affinity"

// MaxAffinityLen bounds an affinity key; a longer one is ignored.
const MaxAffinityLen = 64

// ExtSession is the request extension key by which a client holding an
// affinity key asks for a session (doc.go, "Sessions"): the worker that
// serves it is reserved for that key until the client ends the session
// (SessionEnd) or sends nothing for this many seconds (a float or int > 0).
const ExtSession = "session"

// MaxSessionIdle bounds a session's idle timeout, in seconds.
const MaxSessionIdle = 24 * 3600

// RequestRouting reads a request payload's affinity key and session idle
// timeout (seconds, 0 when no session is asked for) without decoding the
// rest: the head's bins are skipped by their lengths and only the
// extension map is read. "" and 0 when there are none (0.1.3 clients), the
// payload is not a request, or a value is not of its type; a session
// without an affinity key is none.
func RequestRouting(b []byte) (affinity string, session float64) {
	d := decoder{b: b}
	n, err := d.arrayLen()
	if err != nil || n < 7 {
		return "", 0
	}
	if _, err := d.int64(); err != nil {
		return "", 0
	}
	for range 4 {
		if _, err := d.bin(); err != nil {
			return "", 0
		}
	}
	if err := d.skip(1); err != nil { // properties
		return "", 0
	}
	if d.nilNext() {
		return "", 0
	}
	m, err := d.mapLen()
	if err != nil {
		return "", 0
	}
	for range m {
		k, err := d.strBytes()
		if err != nil {
			return "", 0
		}
		switch string(k) {
		case ExtAffinity:
			v, err := d.strBytes()
			if err != nil {
				return "", 0
			}
			if len(v) <= MaxAffinityLen {
				affinity = string(v)
			}
			continue
		case ExtSession:
			save := d.off
			if f, err := d.float(); err == nil {
				session = f
				continue
			}
			d.off = save
			if v, err := d.int(); err == nil {
				if i, ok := v.(int64); ok {
					session = float64(i)
				}
				continue
			}
			d.off = save
		}
		if err := d.skip(1); err != nil {
			return "", 0
		}
	}
	if affinity == "" || !(session > 0) {
		session = 0
	}
	return affinity, min(session, MaxSessionIdle)
}

// ValidBootID reports whether s looks like a kernel boot id (a UUID): no
// spaces, so that Endpoint stays parseable.
func ValidBootID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return false
		}
	}
	return true
}
