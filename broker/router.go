package broker

import (
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aserpc/aserpc/internal/suggest"
	"github.com/aserpc/aserpc/wire"
)

// Payload is a request or reply body that the router passes along without
// looking inside. Ownership travels with the value: whoever holds it must
// Release it or hand it on.
type Payload interface {
	// Len is the body's size in bytes.
	Len() int
	// Data is the body's bytes, valid until Release (read only: the
	// broker looks into a request only to count its atoms for a batching
	// worker).
	Data() []byte
	// Clone returns a second reference to the same bytes (kept for
	// re-dispatch while the first travels to a worker).
	Clone() Payload
	// Release frees the reference.
	Release()
}

// Bytes is a Payload held in Go memory (bodies the broker builds itself,
// and the tests' bodies).
type Bytes []byte

// Len implements Payload.
func (b Bytes) Len() int { return len(b) }

// Data implements Payload.
func (b Bytes) Data() []byte { return b }

// Clone implements Payload; the bytes are immutable so the clone is b.
func (b Bytes) Clone() Payload { return b }

// Release implements Payload.
func (Bytes) Release() {}

// transport is how the router's decisions leave it. The loop implements it
// with sockets; the tests record. Each method takes ownership of body.
type transport interface {
	// toClient sends [client, "", cmd, body, corr?, extra?] on the
	// frontend (extra only after a corr: only our clients send one).
	toClient(client []byte, cmd wire.Command, body Payload, corr, extra []byte) error
	// toWorker sends a job [worker, "", client, body] on the backend, with
	// a fourth frame, hint, when not nil (a batching worker's job).
	toWorker(worker, client []byte, body Payload, hint []byte) error
	// toBackend sends a control message [peer, "", cmd, args...].
	toBackend(peer []byte, cmd wire.Command, args ...[]byte) error
}

// Options tunes the router; zero values take the defaults.
type Options struct {
	// WorkerTimeout: a worker or manager silent for longer is dead.
	WorkerTimeout time.Duration
	// QueueTimeout: a request waiting that long for a worker fails.
	QueueTimeout time.Duration
	// SpawnTimeout: a spawn the manager acknowledged but whose worker has
	// not registered by then is given up, so a later request may spawn
	// again (a 0.1.3 manager never reports a child that failed).
	SpawnTimeout time.Duration
	// MaxPending bounds each calculator's waiting queue.
	MaxPending int
	// MaxRedispatch is how many times a request whose worker died or left
	// is handed to another worker before its client gets an error
	// (negative: never).
	MaxRedispatch int
	// AllowShutdown lets clients stop the broker with SHUTDOWN.
	AllowShutdown bool
	// StartupGrace: for this long after the broker starts, a request for a
	// calculator that was served when the broker last stopped (Expect) and
	// has no worker yet waits for one to register instead of failing at
	// once, so that a broker restarted under load (its workers re-register
	// within a second) fails nobody. 0: none.
	StartupGrace time.Duration
}

// Defaults, as the reference where it has one.
const (
	DefaultWorkerTimeout = 30 * time.Second
	DefaultQueueTimeout  = 60 * time.Second
	DefaultSpawnTimeout  = 120 * time.Second
	DefaultMaxPending    = 10000
	DefaultMaxRedispatch = 2
	maxCorrLen           = 64 // a correlation frame longer than this is refused
)

func (o Options) withDefaults() Options {
	if o.WorkerTimeout <= 0 {
		o.WorkerTimeout = DefaultWorkerTimeout
	}
	if o.QueueTimeout <= 0 {
		o.QueueTimeout = DefaultQueueTimeout
	}
	if o.SpawnTimeout <= 0 {
		o.SpawnTimeout = DefaultSpawnTimeout
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	switch {
	case o.MaxRedispatch == 0:
		o.MaxRedispatch = DefaultMaxRedispatch
	case o.MaxRedispatch < 0: // "never": fail at the first lost worker
		o.MaxRedispatch = 0
	}
	return o
}

// Error texts that clients see. The first ones are the reference's wording,
// which 0.1.3 tests and scripts match.
const (
	errInvalidRequest  = "Invalid request format"
	errMissingName     = "Missing calculator name"
	errWorkerDied      = "Worker died during calculation"
	errWorkerLeft      = "Worker disconnected during calculation"
	errShuttingDown    = "Broker shutting down"
	errShutdownRefused = "Shutdown refused: this broker does not accept SHUTDOWN from clients (start it with --allow-shutdown)"
)

func errNoWorkers(calc string) string {
	return fmt.Sprintf("No workers available for calculator '%s'", calc)
}

// noWorkers is errNoWorkers with the names this broker can serve (workers
// registered, or spawnable by its manager) and the closest one, so that a
// misspelt name says so at once: "No workers available for calculator
// 'EMTT'. Available: ['EMT', 'LJ']; did you mean 'EMT'?".
func (r *Router) noWorkers(calc string) string {
	msg := errNoWorkers(calc)
	known := map[string]bool{}
	for name, s := range r.services {
		if len(s.workers) > 0 && name != calc {
			known[name] = true
		}
	}
	if r.mgr != nil {
		for name := range r.mgr.spawnable {
			if name != calc {
				known[name] = true
			}
		}
	}
	if len(known) == 0 {
		return msg
	}
	names := make([]string, 0, len(known))
	for n := range known {
		names = append(names, n)
	}
	sort.Strings(names)
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = "'" + n + "'"
	}
	msg += ". Available: [" + strings.Join(quoted, ", ") + "]"
	maxD := 3 // within two edits, one for short names
	if len([]rune(calc)) <= 4 {
		maxD = 2
	}
	if best := suggest.Closest(calc, names, maxD); best != "" {
		msg += "; did you mean '" + best + "'?"
	}
	return msg
}

func errQueueTimeout(calc string) string {
	return fmt.Sprintf("Request timed out waiting for '%s' worker", calc)
}

// job is one accepted REQUEST.
type job struct {
	client    []byte
	corr      []byte // correlation frame of a DEALER client, echoed in the reply
	calc      string
	body      Payload
	accepted  time.Time
	attempts  int  // dispatches so far
	cancelled bool // the client sent CANCEL while a worker ran it
	// wid is the client frame of the job as its worker got it (and echoes
	// in its RESPONSE): the client's id, or for a batching worker, which
	// may hold several jobs of one client, a token of the dispatch.
	wid   []byte
	atoms int // the request's atoms, counted for batching workers (-1: not yet)
	// sent is when it was last handed to a worker (its service time's start).
	sent time.Time
	// affinity is the request's affinity key ("" none), read from its
	// payload once affinityRead.
	affinity     string
	affinityRead bool
	// sessionIdle is the session idle timeout it asks for (0: none), read
	// with the affinity key.
	sessionIdle time.Duration
}

// worker is one registered backend peer serving a calculator.
type worker struct {
	id       []byte
	key      string
	service  *service
	lastSeen time.Time
	busy     bool   // reported BUSY (the 0.1.3 STATUS meaning)
	jobs     []*job // the jobs it holds: at most one unless it batches
	stopping bool   // sent SHUTDOWN; gets no new jobs
	handled  int
	pid      int // from our worker's READY; 0 when unknown (0.1.3's)
	// batch is set for a worker whose READY announced a capacity: it may
	// hold several jobs at once (batch.go).
	batch *wire.Capacity
	open  bool // a batching worker collecting jobs (READY), not computing (BUSY)
	atoms int  // atoms of the jobs a batching worker holds
	// info is what our worker last reported of itself (metrics); nil for 0.1.3's.
	info *wire.WorkerInfo
	// session, when set, reserves this worker for one client (session.go).
	session *session
	// joined is when it registered; lastService how long its last job took.
	joined      time.Time
	lastService time.Duration
}

// service is one calculator name.
type service struct {
	name    string
	workers map[string]*worker
	idle    []*worker // least recently used first
	pending []*job    // oldest first
	// starting holds when each outstanding spawn was requested, oldest
	// first: asked of the manager, no worker registered for it yet.
	starting []time.Time
	// recent holds when each client was last answered by a batching
	// worker of this calculator (batch.go), bounded.
	recent map[string]time.Time
}

type manager struct {
	id        []byte
	key       string
	lastSeen  time.Time
	spawnable map[string]bool
	// ours is set when MANAGER_READY carried our capabilities frame: such a
	// manager is told WORKER_JOINED and may be asked for more than one
	// worker per calculator, up to maxWorkers.
	ours       bool
	maxWorkers map[string]int
	children   any // as the manager reported them, shown in STATUS
}

// Counters are what the router has seen go wrong, reported in STATUS.
type Counters struct {
	Malformed      int `msgpack:"malformed"`       // messages that broke a frame layout
	UnknownCommand int `msgpack:"unknown_command"` // unknown message types
	StaleResponses int `msgpack:"stale_responses"` // RESPONSEs nobody waits for
	Undeliverable  int `msgpack:"undeliverable"`   // replies whose client was gone
	Redispatched   int `msgpack:"redispatched"`    // jobs handed to another worker
	Expired        int `msgpack:"expired"`         // jobs that timed out in the queue
	QueueFull      int `msgpack:"queue_full"`      // requests refused by MaxPending
	Requests       int `msgpack:"requests"`        // accepted REQUESTs
	Responses      int `msgpack:"responses"`       // results delivered
	Disconnected   int `msgpack:"disconnected"`    // workers whose connection closed without a goodbye
	AffinityHits   int `msgpack:"affinity_hits"`   // requests given the worker that served their client last
	AffinityMisses int `msgpack:"affinity_misses"` // requests whose client's last worker was busy or gone
	Sessions       int `msgpack:"sessions"`        // sessions started (workers reserved)
	SessionsLost   int `msgpack:"sessions_lost"`   // sessions whose worker was lost
}

// Router is the broker's state machine: workers, calculators, their queues
// and the manager. It is plain Go, owned by one goroutine, with the clock
// passed in, so every routing rule is tested without sockets.
//
// This file holds its state and its two entry points, ClientAs (frontend
// messages) and BackendAs (backend messages), which read top to bottom as
// the protocol; what they call lives by concern: dispatch.go (queues, LRU
// dispatch, progress, cancel, asking for spawns), liveness.go (workers
// joining, idling, leaving, timing out; re-dispatch), manager.go (the
// manager's registration and spawn replies), control.go (LIST, STATUS,
// WORKER_SHUTDOWN, stop and drain) and auth.go (what each CURVE role may
// send).
type Router struct {
	// dying holds, by worker pid, jobs whose worker died with nothing left to
	// try, for up to ExitReasonWait: our manager's WORKER_EXITED for that pid
	// says why, and the client's error says it too. exitReasons keeps
	// reasons that came first (the manager's waitpid may beat the broker's
	// disconnect notice), for as long.
	dying       map[int]*dyingJob
	exitReasons map[int]exitReason
	opt         Options
	out         transport
	log         *slog.Logger
	workers     map[string]*worker
	services    map[string]*service
	mgr         *manager
	started     time.Time
	graceUntil  time.Time       // StartupGrace's end; zero once it has passed
	expect      map[string]bool // calculators held for during the grace
	stopping    bool
	counters    Counters
	seq         uint64 // tokens of jobs handed to batching workers
	// affinity maps calc + "\x00" + a client's affinity key to the key of
	// the worker that last served it (affinity.go); bounded.
	affinity map[string]string
	// sessions are the reserved workers by calc + "\x00" + affinity key.
	sessions map[string]*session
	// met, when set, receives the router's events as Prometheus metrics.
	met *Metrics
}

func newRouter(opt Options, out transport, log *slog.Logger, now time.Time) *Router {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Router{
		opt:      opt.withDefaults(),
		out:      out,
		log:      log,
		workers:  map[string]*worker{},
		services: map[string]*service{},
		started:  now,
		graceUntil: func() time.Time {
			if opt.StartupGrace > 0 {
				return now.Add(opt.StartupGrace)
			}
			return time.Time{}
		}(),
	}
}

// Expect names the calculators whose workers are expected back (those
// served when the previous broker stopped): during the startup grace
// their requests wait for them.
func (r *Router) Expect(names []string) {
	r.expect = map[string]bool{}
	for _, n := range names {
		r.expect[n] = true
	}
}

// holds reports whether the startup grace still holds requests for calc,
// which has no worker yet.
func (r *Router) holds(now time.Time, calc string) bool {
	return r.expect[calc] && !r.graceUntil.IsZero() && now.Before(r.graceUntil)
}

// Served lists the calculators this broker serves now: with a worker, or
// spawnable by its manager (what a restarted broker should Expect).
func (r *Router) Served() []string {
	var names []string
	for name, s := range r.services {
		if len(s.workers) > 0 {
			names = append(names, name)
		}
	}
	if r.mgr != nil {
		for name := range r.mgr.spawnable {
			if s := r.services[name]; s == nil || len(s.workers) == 0 {
				names = append(names, name)
			}
		}
	}
	// Still expected back: a broker killed again in its grace keeps them.
	for name := range r.expect {
		if s := r.services[name]; (s == nil || len(s.workers) == 0) && (r.mgr == nil || !r.mgr.spawnable[name]) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

func (r *Router) service(name string) *service {
	s := r.services[name]
	if s == nil {
		s = &service{name: name, workers: map[string]*worker{}}
		r.services[name] = s
	}
	return s
}

// gc forgets a service that has nothing left.
func (r *Router) gc(s *service) {
	if len(s.workers) == 0 && len(s.pending) == 0 && len(s.starting) == 0 {
		delete(r.services, s.name)
	}
}

func validName(b []byte) bool { return wire.ValidName(b) }

func (r *Router) malformed(side string, id []byte, why string) {
	r.counters.Malformed++
	r.met.malformedMsg(side)
	r.log.Debug("malformed message", "side", side, "peer", peer(id), "why", why)
}

func peer(id []byte) string { return fmt.Sprintf("%x", id) }

// Client handles a frontend message from an open socket; see ClientAs.
func (r *Router) Client(now time.Time, id []byte, frames [][]byte, body Payload) {
	r.ClientAs(now, id, Open, frames, body)
}

// ClientAs handles a frontend message of user (Open, or a ZAP User-Id).
// frames are everything after the identity: ["", cmd, args...]. body, when
// not nil, is frames[3] of a REQUEST held without a copy (ownership passes
// to the router); the router reads its argument frames from frames.
func (r *Router) ClientAs(now time.Time, id []byte, user string, frames [][]byte, body Payload) {
	if body != nil {
		defer func() {
			if body != nil {
				body.Release()
			}
		}()
	}
	if len(frames) < 2 || len(frames[0]) != 0 {
		r.malformed("frontend", id, "no empty delimiter and command frame")
		r.reply(id, wire.Error, errorBody("Invalid message: expected an empty delimiter and a command frame"), nil)
		return
	}
	cmd, ok := wire.ParseCommand(frames[1])
	if !ok {
		r.malformed("frontend", id, "command frame is not one byte")
		r.reply(id, wire.Error, errorBody("Invalid message: the command frame must be one byte"), nil)
		return
	}
	args := frames[2:]
	if !may(user, cmd, true) {
		// A clear answer, not silence: the peer holds a valid key and
		// deserves to know which one it needs.
		var corr []byte
		if n := arity(cmd); n >= 0 && len(args) == n+1 && len(args[n]) <= maxCorrLen {
			corr = args[n]
		}
		r.log.Warn("refused a frontend command", "client", peer(id), "user", user, "command", cmd.String())
		r.reply(id, wire.Error, errorBody(errDenied(user, cmd)), corr)
		return
	}
	// A DEALER client may append one correlation frame after the arguments
	// of any command; it is echoed after the reply's payload.
	split := func(n int) (a [][]byte, corr []byte, ok bool) {
		switch {
		case len(args) == n:
			return args, nil, true
		case len(args) == n+1 && len(args[n]) <= maxCorrLen:
			return args[:n], args[n], true
		}
		return nil, nil, false
	}
	switch cmd {
	case wire.Request:
		a, corr, ok := split(2)
		if !ok {
			r.malformed("frontend", id, "REQUEST frame count")
			r.reply(id, wire.Error, errorBody(errInvalidRequest), nil)
			return
		}
		if !validName(a[0]) {
			r.malformed("frontend", id, "calculator name")
			r.reply(id, wire.Error, errorBody("Invalid calculator name: must be 1–256 bytes of UTF-8"), corr)
			return
		}
		if body == nil {
			body = Bytes(a[1])
		}
		j := &job{client: clone(id), corr: clone(corr), calc: string(a[0]), body: body, accepted: now, atoms: -1}
		body = nil // the job owns it now
		r.request(now, j)
	case wire.List:
		_, corr, ok := split(0)
		if !ok {
			r.badArgs(id, cmd, args)
			return
		}
		r.reply(id, wire.Response, mustMarshal(r.list()), corr)
	case wire.Status:
		_, corr, ok := split(0)
		if !ok {
			r.badArgs(id, cmd, args)
			return
		}
		r.reply(id, wire.Response, mustMarshal(r.status(now)), corr)
	case wire.WorkerShutdown:
		a, corr, ok := split(1)
		if !ok || len(a[0]) == 0 {
			if len(args) == 0 || (len(args) == 1 && len(args[0]) == 0) {
				r.reply(id, wire.Error, errorBody(errMissingName), nil)
				return
			}
			r.badArgs(id, cmd, args)
			return
		}
		n := r.shutdownWorkers(string(a[0]))
		r.reply(id, wire.Response, mustMarshal(map[string]any{"shutdown_count": n}), corr)
	case wire.Cancel:
		if len(args) != 1 || len(args[0]) == 0 || len(args[0]) > maxCorrLen {
			r.badArgs(id, cmd, args)
			return
		}
		r.cancel(id, args[0])
	case wire.SessionEnd:
		if len(args) != 2 || !validName(args[0]) || len(args[1]) == 0 || len(args[1]) > wire.MaxAffinityLen {
			r.badArgs(id, cmd, args)
			return
		}
		r.endSession(now, string(args[0]), string(args[1]))
	case wire.Shutdown:
		_, corr, ok := split(0)
		if !ok {
			r.badArgs(id, cmd, args)
			return
		}
		if !r.opt.AllowShutdown {
			r.log.Warn("refused SHUTDOWN from a client", "client", peer(id))
			r.reply(id, wire.Error, errorBody(errShutdownRefused), corr)
			return
		}
		r.log.Info("SHUTDOWN requested by a client", "client", peer(id))
		r.reply(id, wire.Response, mustMarshal(map[string]any{"shutdown": true}), corr)
		r.Stop()
	default:
		r.counters.UnknownCommand++
		r.met.unknownCommand()
		r.log.Debug("unknown frontend command", "client", peer(id), "command", cmd.String())
		r.reply(id, wire.Error, errorBody(fmt.Sprintf("Unknown command %s", cmd)), nil)
	}
}

func (r *Router) badArgs(id []byte, cmd wire.Command, args [][]byte) {
	r.malformed("frontend", id, cmd.String()+" frame count")
	r.reply(id, wire.Error, errorBody(fmt.Sprintf("Invalid %s message: unexpected frames", cmd)), nil)
}

// Backend handles a backend message from an open socket; see BackendAs.
func (r *Router) Backend(now time.Time, id []byte, frames [][]byte, body Payload) {
	r.BackendAs(now, id, Open, frames, body)
}

// BackendAs handles a backend message from a worker or the manager
// authenticated as user (Open, or a ZAP User-Id). frames are everything
// after the identity: ["", cmd, args...]. body, when not nil, is frames[3]
// of a RESPONSE held without a copy.
func (r *Router) BackendAs(now time.Time, id []byte, user string, frames [][]byte, body Payload) {
	if body != nil {
		defer func() {
			if body != nil {
				body.Release()
			}
		}()
	}
	if len(frames) < 2 || len(frames[0]) != 0 {
		r.malformed("backend", id, "no empty delimiter and command frame")
		return
	}
	cmd, ok := wire.ParseCommand(frames[1])
	if !ok {
		r.malformed("backend", id, "command frame is not one byte")
		return
	}
	args := frames[2:]
	if !may(user, cmd, false) {
		// Nothing to answer on the backend: a worker has no ERROR. Only
		// worker and admin keys reach here through our ZAP handler; this
		// is the second lock.
		r.malformed("backend", id, "not permitted for "+user)
		return
	}
	key := string(id)
	w := r.workers[key]
	switch cmd {
	case wire.Ready, wire.Heartbeat:
		if len(args) < 1 || !validName(args[0]) {
			r.malformed("backend", id, cmd.String()+" without a valid name")
			return
		}
		pid := 0
		if len(args) > 1 {
			pid, _ = strconv.Atoi(string(args[1]))
		}
		var caps *wire.Capacity
		var info *wire.WorkerInfo
		if len(args) > 2 && cmd == wire.Ready {
			c, err := wire.ParseCapacity(args[2])
			if err != nil {
				r.malformed("backend", id, "READY with a bad capacity frame")
			} else {
				info = c.Info
				if c.Structures > 1 {
					caps = &c
				}
			}
		}
		if w != nil && info != nil && w.service.name == string(args[0]) {
			// Before ready, which may hand it a job: what it says of itself
			// (its direct endpoint) decides how that job is sent.
			if ss := w.session; ss != nil && w.info != nil && info.DirectJobs > w.info.DirectJobs {
				// Its session's client is busy on the direct path.
				ss.last = now
				ss.served += int(info.DirectJobs - w.info.DirectJobs)
			}
			w.info = info
		}
		r.ready(now, id, w, string(args[0]), cmd == wire.Ready, pid, caps, info)
	case wire.Busy:
		if w != nil {
			w.lastSeen = now
			w.busy = true
			if ss := w.session; ss != nil {
				ss.last = now // computing its session's direct request: not idle
			}
			if w.batch != nil && w.open {
				// Computing what it holds: later jobs wait here, where
				// another worker may take them.
				w.open = false
				r.unidle(w)
			}
			for _, j := range w.jobs {
				r.progress(j, progressBusy)
			}
		}
	case wire.Response:
		if len(args) < 2 {
			r.malformed("backend", id, "RESPONSE frame count")
			return
		}
		if body == nil {
			body = Bytes(args[1])
		}
		i := -1
		if w != nil {
			i = slices.IndexFunc(w.jobs, func(j *job) bool { return string(j.wid) == string(args[0]) })
		}
		if i < 0 {
			r.counters.StaleResponses++
			r.met.staleResponse()
			r.log.Debug("response nobody waits for", "worker", peer(id))
			return
		}
		w.lastSeen = now
		j := w.jobs[i]
		w.jobs = slices.Delete(w.jobs, i, i+1)
		w.handled++
		r.remember(j, w)
		w.lastService = now.Sub(j.sent)
		if r.met != nil {
			calc := r.calcLabel(j.calc)
			r.met.served(calc, now.Sub(j.sent))
			outcome := "cancelled"
			if !j.cancelled {
				outcome = "error"
				if ok, _ := wire.ResponseSuccess(body.Data()); ok {
					outcome = "ok"
				}
			}
			r.met.outcome(calc, outcome)
		}
		if !j.cancelled {
			r.counters.Responses++
			var direct []byte
			if ss := w.session; ss != nil && j.corr != nil && w.info != nil && w.info.Direct != "" {
				if key, _ := r.sessionOf(j); key == ss.key {
					// The session's client may go straight to its worker now
					// (wire.WorkerInfo.Endpoint: on tcp with the worker's CURVE
					// key, and its unix socket for a client on its host).
					direct = []byte(w.info.Endpoint())
				}
			}
			r.replyWith(j.client, wire.Response, body, j.corr, direct)
			body = nil
		}
		j.body.Release()
		if w.batch == nil {
			w.busy = false
			r.idle(now, w)
			return
		}
		w.atoms -= j.atoms
		r.answered(now, w, j)
	case wire.WorkerExited:
		if r.mgr == nil || string(r.mgr.id) != key || len(args) < 3 {
			r.malformed("backend", id, "WORKER_EXITED not from the manager, or without calc, pid and text")
			return
		}
		pid, err := strconv.Atoi(string(args[1]))
		if err != nil || pid <= 0 {
			r.malformed("backend", id, "WORKER_EXITED with a bad pid")
			return
		}
		r.workerExited(now, string(args[0]), pid, string(args[2]))
	case wire.Disconnect:
		if w != nil {
			r.log.Info("worker disconnected", "worker", peer(id), "calc", w.service.name)
			r.remove(now, w, errWorkerLeft)
		}
	case wire.ManagerReady:
		var names, caps []byte
		if len(args) > 0 {
			names = args[0]
		}
		if len(args) > 1 {
			caps = args[1]
		}
		r.managerReady(now, id, names, caps)
	case wire.ManagerHeartbeat:
		if r.mgr != nil && r.mgr.key == key {
			r.mgr.lastSeen = now
		}
	case wire.SpawnResponse:
		r.spawnResponse(now, id, args)
	default:
		r.counters.UnknownCommand++
		r.met.unknownCommand()
		r.log.Debug("unknown backend command", "peer", peer(id), "command", cmd.String())
	}
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

// errorBody is the reference's error Response [1, false, {}, msg].
func errorBody(msg string) Payload { return Bytes(wire.ErrorResponse(msg)) }

func mustMarshalBytes(v any) []byte { return []byte(mustMarshal(v).(Bytes)) }

func mustMarshal(v any) Payload {
	b, err := wire.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("broker: marshal %T: %v", v, err)) // only our own maps reach here
	}
	return Bytes(b)
}

// ExitReasonWait is how long a job whose worker died waits for the
// manager's account of that death before its client is told without one.
const ExitReasonWait = 2 * time.Second

type dyingJob struct {
	j     *job
	why   string
	until time.Time
}

type exitReason struct {
	text  string
	until time.Time
}
