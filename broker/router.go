package broker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/wire"
)

// Payload is a request or reply body that the router passes along without
// looking inside. Ownership travels with the value: whoever holds it must
// Release it or hand it on.
type Payload interface {
	// Len is the body's size in bytes.
	Len() int
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

// Clone implements Payload; the bytes are immutable so the clone is b.
func (b Bytes) Clone() Payload { return b }

// Release implements Payload.
func (Bytes) Release() {}

// transport is how the router's decisions leave it. The loop implements it
// with sockets; the tests record. Each method takes ownership of body.
type transport interface {
	// toClient sends [client, "", cmd, body, corr?] on the frontend.
	toClient(client []byte, cmd wire.Command, body Payload, corr []byte) error
	// toWorker sends a job [worker, "", client, body] on the backend.
	toWorker(worker, client []byte, body Payload) error
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
}

// worker is one registered backend peer serving a calculator.
type worker struct {
	id       []byte
	key      string
	service  *service
	lastSeen time.Time
	busy     bool // reported BUSY (the 0.1.3 STATUS meaning)
	job      *job // the one job it holds; nil when idle
	stopping bool // sent SHUTDOWN; gets no new jobs
	handled  int
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
}

// Router is the broker's state machine: workers, calculators, their queues
// and the manager. It is plain Go, owned by one goroutine, with the clock
// passed in, so every routing rule is tested without sockets.
type Router struct {
	opt      Options
	out      transport
	log      *slog.Logger
	workers  map[string]*worker
	services map[string]*service
	mgr      *manager
	started  time.Time
	stopping bool
	counters Counters
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
	}
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
	r.log.Debug("malformed message", "side", side, "peer", peer(id), "why", why)
}

func peer(id []byte) string { return fmt.Sprintf("%x", id) }

// ---- authorisation ---------------------------------------------------------

// Open is the user of a socket without authentication (ipc, or a broker
// without CURVE keys): it may do everything, as in aserpc 0.1.3. On a
// CURVE socket the user is the ZAP User-Id, "role:name" (auth.Entry); one
// whose role cannot be read may do nothing.
const Open = ""

// may reports whether user may send cmd to the frontend (front) or the
// backend.
func may(user string, cmd wire.Command, front bool) bool {
	if user == Open {
		return true
	}
	role, ok := auth.RoleOf(user)
	switch {
	case !ok:
		return false
	case role == auth.Admin:
		return true
	case !front:
		return role == auth.Worker
	case cmd == wire.Shutdown || cmd == wire.WorkerShutdown:
		return false
	}
	return role == auth.Client
}

// errDenied is the ERROR text for a frontend command user may not send.
func errDenied(user string, cmd wire.Command) string {
	role, name, _ := strings.Cut(user, ":")
	need := "a client or admin key"
	if cmd == wire.Shutdown || cmd == wire.WorkerShutdown {
		need = "an admin key"
	}
	return fmt.Sprintf("Permission denied: %s needs %s; this connection's key is %s %q", cmd, need, role, name)
}

// arity is the number of argument frames of a frontend command, before an
// optional correlation frame (-1: takes none).
func arity(cmd wire.Command) int {
	switch cmd {
	case wire.Request:
		return 2
	case wire.WorkerShutdown:
		return 1
	case wire.List, wire.Status, wire.Shutdown:
		return 0
	}
	return -1
}

// ---- frontend --------------------------------------------------------------

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
		j := &job{client: clone(id), corr: clone(corr), calc: string(a[0]), body: body, accepted: now}
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
		r.log.Debug("unknown frontend command", "client", peer(id), "command", cmd.String())
		r.reply(id, wire.Error, errorBody(fmt.Sprintf("Unknown command %s", cmd)), nil)
	}
}

func (r *Router) badArgs(id []byte, cmd wire.Command, args [][]byte) {
	r.malformed("frontend", id, cmd.String()+" frame count")
	r.reply(id, wire.Error, errorBody(fmt.Sprintf("Invalid %s message: unexpected frames", cmd)), nil)
}

func (r *Router) reply(client []byte, cmd wire.Command, body Payload, corr []byte) {
	if err := r.out.toClient(client, cmd, body, corr); err != nil {
		r.counters.Undeliverable++
		r.log.Debug("reply undeliverable", "client", peer(client), "err", err)
	}
}

func (r *Router) fail(j *job, msg string) {
	j.body.Release()
	r.reply(j.client, wire.Error, errorBody(msg), j.corr)
}

func (r *Router) request(now time.Time, j *job) {
	if r.stopping {
		r.fail(j, errShuttingDown)
		return
	}
	r.counters.Requests++
	s := r.services[j.calc]
	if s == nil || r.available(s) == 0 {
		if !r.canSpawn(j.calc) {
			r.fail(j, errNoWorkers(j.calc))
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
		s.idle = s.idle[1:]
		j := s.pending[0]
		s.pending[0] = nil
		s.pending = s.pending[1:]
		r.dispatch(now, w, j)
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
		case r.available(s) == 0:
			// Nobody can ever serve these: fail them now rather than at the
			// queue timeout.
			r.failPending(s, errNoWorkers(s.name))
		}
	}
	r.gc(s)
}

// max is the most workers the manager runs for calc.
func (m *manager) max(calc string) int {
	if n, ok := m.maxWorkers[calc]; ok && n > 0 {
		return n
	}
	return 1
}

func (r *Router) dispatch(now time.Time, w *worker, j *job) {
	j.attempts++
	w.job = j
	w.busy = true
	if err := r.out.toWorker(w.id, j.client, j.body.Clone()); err != nil {
		// The worker is gone (ROUTER_MANDATORY) or not reading (high-water
		// mark): treat it as dead; its job goes back to the queue.
		r.log.Warn("job undeliverable, dropping worker", "worker", peer(w.id), "calc", w.service.name, "err", err)
		j.attempts-- // it never reached a worker
		r.remove(now, w, errWorkerDied)
		return
	}
	r.progress(j, progressDispatched)
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
	if err := r.out.toClient(j.client, wire.Progress, Bytes(body), j.corr); err != nil {
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
	for _, w := range r.workers {
		if w.job != nil && same(w.job) {
			w.job.cancelled = true // its result is dropped on arrival
			return
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
	r.log.Info("requesting a worker from the manager", "calc", s.name, "starting", len(s.starting))
	if err := r.out.toBackend(r.mgr.id, wire.SpawnRequest, []byte(s.name)); err != nil {
		r.log.Warn("manager unreachable", "err", err)
		r.dropManager(now, "unreachable")
	}
}

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
			busy := 0
			for _, w := range s.workers {
				if w.job != nil {
					busy++
				}
			}
			workers[name] = map[string]any{"total": n, "idle": len(s.idle), "busy": busy}
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
			},
		},
	}
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
		n++
	}
	s.idle = nil
	r.log.Info("told workers to shut down", "calc", calc, "count", n)
	return n
}

// ---- backend ---------------------------------------------------------------

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
		r.ready(now, id, w, string(args[0]), cmd == wire.Ready)
	case wire.Busy:
		if w != nil {
			w.lastSeen = now
			w.busy = true
			if w.job != nil {
				r.progress(w.job, progressBusy)
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
		if w == nil || w.job == nil || string(w.job.client) != string(args[0]) {
			r.counters.StaleResponses++
			r.log.Debug("response nobody waits for", "worker", peer(id))
			return
		}
		w.lastSeen = now
		j := w.job
		w.job, w.busy = nil, false
		w.handled++
		if !j.cancelled {
			r.counters.Responses++
			r.reply(j.client, wire.Response, body, j.corr)
			body = nil
		}
		j.body.Release()
		r.idle(now, w)
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
		r.log.Debug("unknown backend command", "peer", peer(id), "command", cmd.String())
	}
}

func (r *Router) ready(now time.Time, id []byte, w *worker, name string, ready bool) {
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
		w = &worker{id: clone(id), key: string(id), service: s}
		r.workers[w.key] = w
		s.workers[w.key] = w
		if len(s.starting) > 0 {
			s.starting = s.starting[1:]
		}
		if r.mgr != nil && r.mgr.ours && r.mgr.spawnable[name] {
			r.out.toBackend(r.mgr.id, wire.WorkerJoined, []byte(name))
		}
		r.log.Info("worker registered", "worker", peer(id), "calc", name)
		w.lastSeen = now
		r.idle(now, w)
		return
	}
	w.lastSeen = now
	// READY after RESPONSE, or an idle heartbeat. A worker holding a job
	// stays busy: READY must never hand a second job to it (the
	// reference's double dispatch). Only a RESPONSE frees it.
	if w.job == nil && ready {
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
	if len(s.pending) > 0 {
		j := s.pending[0]
		s.pending[0] = nil
		s.pending = s.pending[1:]
		r.dispatch(now, w, j)
		return
	}
	if !slices.Contains(s.idle, w) {
		s.idle = append(s.idle, w)
	}
}

// remove forgets a dead or departed worker and re-dispatches its job.
func (r *Router) remove(now time.Time, w *worker, why string) {
	s := w.service
	delete(r.workers, w.key)
	delete(s.workers, w.key)
	if i := slices.Index(s.idle, w); i >= 0 {
		s.idle = slices.Delete(s.idle, i, i+1)
	}
	if j := w.job; j != nil {
		w.job = nil
		switch {
		case j.cancelled:
			j.body.Release()
		case j.attempts > r.opt.MaxRedispatch || r.stopping:
			r.fail(j, why)
		case r.available(s) == 0 && !r.canSpawn(s.name):
			r.fail(j, why)
		default:
			r.counters.Redispatched++
			r.log.Info("re-dispatching the job of a lost worker", "calc", s.name, "attempt", j.attempts+1)
			s.pending = append([]*job{j}, s.pending...)
			r.progress(j, progressRequeued)
		}
	}
	r.drain(now, s)
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

// ---- time ------------------------------------------------------------------

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
	for _, s := range r.services {
		for len(s.pending) > 0 && now.Sub(s.pending[0].accepted) > r.opt.QueueTimeout {
			j := s.pending[0]
			s.pending[0] = nil
			s.pending = s.pending[1:]
			r.counters.Expired++
			r.fail(j, errQueueTimeout(s.name))
		}
		for len(s.starting) > 0 && now.Sub(s.starting[0]) > r.opt.SpawnTimeout {
			s.starting = s.starting[1:]
			r.log.Warn("spawned worker never registered", "calc", s.name, "after", r.opt.SpawnTimeout)
			if r.available(s) == 0 && len(s.starting) == 0 {
				r.failPending(s, fmt.Sprintf("Failed to spawn worker: no worker for '%s' registered within %s", s.name, r.opt.SpawnTimeout))
			}
		}
		r.gc(s)
	}
}

// TickEvery is how often Tick must run for ≤ 1 s expiry precision.
const TickEvery = 250 * time.Millisecond

// Stop answers every waiting and running request with an error and tells
// every worker to shut down. Clients never hang on a stopped broker.
func (r *Router) Stop() {
	if r.stopping {
		return
	}
	r.stopping = true
	for _, w := range r.workers {
		r.out.toBackend(w.id, wire.Shutdown)
		if j := w.job; j != nil {
			w.job = nil
			r.fail(j, errShuttingDown)
		}
	}
	for _, s := range r.services {
		r.failPending(s, errShuttingDown)
	}
}

// Drain answers every waiting and running request with an error without
// telling workers anything: used when the broker process exits on a signal,
// so its workers re-register with the next broker.
func (r *Router) Drain() {
	r.stopping = true
	for _, w := range r.workers {
		if j := w.job; j != nil {
			w.job = nil
			r.fail(j, errShuttingDown)
		}
	}
	for _, s := range r.services {
		r.failPending(s, errShuttingDown)
	}
}

// Stopping reports whether a SHUTDOWN was accepted.
func (r *Router) Stopping() bool { return r.stopping }

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
