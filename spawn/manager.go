package spawn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/internal/cpuset"
	"github.com/aserpc/aserpc/wire"
)

// Config is what `aserpc manager` fills in.
type Config struct {
	// Broker is the broker's backend address the manager dials.
	Broker string
	// Advertise is the address its workers are given ({broker}) when they
	// reach the broker by another one than the manager: workers on other
	// hosts need a tcp address they can route to, while the manager may
	// dial ipc:// or 127.0.0.1 ("": Broker).
	Advertise string
	// Heartbeat is how often MANAGER_READY is re-sent (0.1.3's heartbeat;
	// a broker drops a manager silent for its worker timeout).
	Heartbeat time.Duration
	// Configs are the spawnable calculators by name.
	Configs map[string]SpawnConfig
	// LogDir holds one log file per child (default DefaultLogDir()).
	LogDir string
	// StopGrace is how long children get after SIGTERM before SIGKILL
	// (default 5 s: a worker answers the job it is computing first).
	StopGrace time.Duration
	// KeepLogs is how many log files per calculator are kept (default 50).
	KeepLogs int
	Logger   *slog.Logger
	// Curve, when set, authenticates to a broker on tcp with CurveZMQ
	// (ignored for ipc). Children get their keys from the environment
	// (ASERPC_CURVE_SERVER_KEY, ASERPC_CURVE_SECRET), which `aserpc
	// manager` sets from its own flags.
	Curve *auth.Peer
}

// Stats are what a manager did.
type Stats struct {
	Spawns int // processes started
}

// noBrokerAfter is how long the manager waits for aserpc's broker to answer
// its MANAGER_READY before it warns.
const noBrokerAfter = 5 * time.Second

// Backoff bounds of min_workers restarts after failures.
const (
	backoffMin = 500 * time.Millisecond
	backoffMax = 60 * time.Second
	// stableAfter: a child that ran this long before failing resets the
	// backoff (it was not a crash loop).
	stableAfter = 60 * time.Second
	// tick bounds the loop's sleep: child exits and timers are noticed
	// within it. Messages from the broker wake the loop at once.
	tick = 100 * time.Millisecond
)

// Manager starts workers when a broker asks (scale from zero, and with our
// broker scale out up to max_workers), keeps min_workers running, and
// supervises its children. One goroutine (Run's) owns the socket and all
// state; goroutines waiting for processes only send on a channel.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	zctx  *zmq.Context
	sock  *zmq.Socket
	exits chan exit
	// noBrokerAt: when to warn that no broker of ours has answered (zero:
	// warned, or answered).
	noBrokerAt time.Time

	children map[string][]*child // by calculator, oldest first
	// brokerOurs is set by the first WORKER_JOINED: only then does the
	// manager know registrations are reported, and enforce start timeouts.
	brokerOurs bool
	fails      map[string]int       // consecutive min_workers failures by calculator
	retryAt    map[string]time.Time // earliest min_workers restart
	nextReady  time.Time
	dirty      bool // children changed: tell the broker now
	stats      Stats
	allowed    []int  // the CPUs the manager may use, shared out to children
	host       string // this host's name, which children get (ManagerHostEnv)
	// deferred holds, by calculator, when each spawn request that came at
	// max_workers arrived: our broker asks only when it counts a free slot,
	// so a child of ours is on its way out (the broker saw its worker's
	// connection close before this manager saw the process exit). The
	// request is served when a child exits, or refused after deferWait.
	deferred map[string][]time.Time
}

// deferWait is how long a spawn request at max_workers waits for a child to exit.
const deferWait = 5 * time.Second

// ErrStopped is returned by Run when the broker sent SHUTDOWN.
var ErrStopped = errors.New("stopped by the broker")

// New checks cfg and connects to the broker (connecting never blocks: the
// broker may start later). Close releases the socket.
func New(cfg Config) (*Manager, error) {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	if cfg.KeepLogs <= 0 {
		cfg.KeepLogs = 50
	}
	if cfg.LogDir == "" {
		cfg.LogDir = DefaultLogDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.Broker
	} else if err := CheckEndpoint(cfg.Advertise); err != nil {
		return nil, fmt.Errorf("advertised broker address: %w", err)
	}
	configs := make(map[string]SpawnConfig, len(cfg.Configs))
	for k, c := range cfg.Configs {
		c.Key = k
		c, err := c.withDefaults()
		if err != nil {
			return nil, err
		}
		configs[k] = c
	}
	cfg.Configs = configs
	m := &Manager{
		cfg: cfg, log: cfg.Logger, exits: make(chan exit, 64),
		children: map[string][]*child{}, fails: map[string]int{}, retryAt: map[string]time.Time{},
	}
	if a, err := cpuset.Allowed(); err == nil {
		m.allowed = a
	}
	m.host, _ = os.Hostname()
	var err error
	if m.zctx, err = zmq.NewContext(); err != nil {
		return nil, err
	}
	if m.sock, err = m.zctx.NewSocket(zmq.DEALER); err != nil {
		m.zctx.Term()
		return nil, err
	}
	m.sock.SetLinger(0)
	if err := cfg.Curve.Apply(m.sock, cfg.Broker); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.sock.Connect(cfg.Broker); err != nil {
		m.Close()
		return nil, fmt.Errorf("connect %s: %w", cfg.Broker, err)
	}
	return m, nil
}

// Close releases the socket. It does not stop children: Run does that on
// its way out. Idempotent.
func (m *Manager) Close() error {
	if m.sock != nil {
		m.sock.Close()
		m.sock = nil
	}
	if m.zctx != nil {
		m.zctx.Term()
		m.zctx = nil
	}
	return nil
}

// Stats returns what the manager did; call it after Run.
func (m *Manager) Stats() Stats { return m.stats }

// Run registers with the broker and serves it until ctx is cancelled or
// the broker sends SHUTDOWN; then it deregisters and stops every child
// (SIGTERM to its process group, SIGKILL after StopGrace).
func (m *Manager) Run(ctx context.Context) error {
	// Children get Pdeathsig, which fires when the *thread* that started
	// them exits: keep this goroutine on one thread, which then outlives
	// it (an unlocked thread goes back to the runtime's pool).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	attrs := []any{"broker", m.cfg.Broker, "calculators", Names(m.cfg.Configs), "logs", m.cfg.LogDir, "cpus", cpuset.Format(m.allowed)}
	if m.cfg.Advertise != m.cfg.Broker {
		attrs = append(attrs, "workers_broker", m.cfg.Advertise)
	}
	m.log.Info("manager started", attrs...)
	need := 0
	for _, key := range Names(m.cfg.Configs) {
		cfg := m.cfg.Configs[key]
		need += m.perWorker(&cfg) * cfg.MaxWorkers
		if l := remoteLauncher(&cfg); l != "" && strings.HasPrefix(m.cfg.Advertise, "ipc://") {
			m.log.Warn("workers started through "+l+" may run on other hosts, where this ipc:// address does not reach the broker "+
				"(such a worker exits saying so); give the manager --advertise tcp://HOST:PORT, a broker backend they can reach",
				"calc", key, "broker", m.cfg.Advertise)
		}
	}
	if len(m.allowed) > 0 && need > len(m.allowed) {
		m.log.Warn("the workers this manager may run need more CPUs than it may use: at max_workers they share cores "+
			"and their thread pools compete (lower cpus_per_worker or max_workers)", "cpus_needed", need, "cpus", len(m.allowed))
	}
	m.noBrokerAt = time.Now().Add(noBrokerAfter)
	m.sendReady(time.Now())
	m.keepMinimum(time.Now())
	poller := zmq.NewPoller()
	poller.Add(m.sock, zmq.POLLIN)
	var err error
loop:
	for ctx.Err() == nil {
		polled, perr := poller.Poll(m.sleep(time.Now()))
		if perr != nil && !isEINTR(perr) { // EINTR: SIGCHLD from a child that exited
			err = fmt.Errorf("poll: %w", perr)
			break
		}
		if len(polled) > 0 {
			for {
				frames, rerr := m.sock.RecvMessageBytes(zmq.DONTWAIT)
				if rerr != nil {
					break // EAGAIN: nothing more now
				}
				if m.handle(time.Now(), frames) {
					err = ErrStopped
					break loop
				}
			}
		}
		m.collect(time.Now())
		m.timers(time.Now())
		if m.dirty {
			m.sendReady(time.Now())
		}
	}
	m.shutdown()
	return err
}

// sleep is how long the loop may wait for a message.
func (m *Manager) sleep(now time.Time) time.Duration {
	d := min(tick, m.nextReady.Sub(now))
	return max(d, 0)
}

func isEINTR(err error) bool {
	return zmq.AsErrno(err) == zmq.Errno(syscall.EINTR) || errors.Is(err, syscall.EINTR)
}

// handle deals with one message from the broker; true means stop.
func (m *Manager) handle(now time.Time, frames [][]byte) bool {
	if len(frames) >= 2 && len(frames[0]) == 0 {
		if c, ok := wire.ParseCommand(frames[1]); ok && c == wire.WorkerJoined {
			name := ""
			if len(frames) > 2 {
				name = string(frames[2])
			}
			m.joined(now, name) // no name: only "this broker reports registrations"
			return false
		}
	}
	msg, err := wire.ParseToManager(frames)
	if err != nil {
		m.log.Warn("unexpected message from the broker", "err", err, "frames", len(frames))
		return false
	}
	if msg.Shutdown {
		m.log.Info("broker sent SHUTDOWN")
		return true
	}
	m.spawnRequest(now, msg.Spawn)
	return false
}

// joined marks the oldest starting child of calc as running. Matching is
// by count: a worker started by hand for the same calculator may be taken
// for a child, which then only loses its start timeout.
func (m *Manager) joined(now time.Time, calc string) {
	if !m.brokerOurs {
		m.brokerOurs = true
		m.log.Info("manager registered with the broker", "broker", m.cfg.Broker)
		m.log.Debug("broker reports registrations (WORKER_JOINED): start timeouts are enforced")
	}
	for _, c := range m.children[calc] {
		if c.state == stateStarting {
			c.state, c.since, c.requested = stateRunning, now, false
			m.dirty = true
			m.log.Info("worker registered", "calc", calc, "pid", c.pid, "after", now.Sub(c.started).Round(time.Millisecond))
			return
		}
	}
}

func (m *Manager) spawnRequest(now time.Time, calc string) {
	cfg, ok := m.cfg.Configs[calc]
	if !ok {
		m.log.Warn("spawn request for a calculator without config", "calc", calc)
		m.respond(calc, false, "No config")
		return
	}
	// A child already starting that nobody asked for (min_workers) serves
	// this request: the broker waits for it to register.
	for _, c := range m.children[calc] {
		if c.state == stateStarting && !c.requested {
			c.requested = true
			m.log.Info("spawn request served by a starting worker", "calc", calc, "pid", c.pid)
			m.respond(calc, true, "")
			return
		}
	}
	if n := m.live(calc); n >= cfg.MaxWorkers {
		if m.brokerOurs {
			if m.deferred == nil {
				m.deferred = map[string][]time.Time{}
			}
			m.deferred[calc] = append(m.deferred[calc], now)
			m.log.Info("spawn request at max_workers: it waits for a worker to exit (one the broker has lost already)",
				"calc", calc, "workers", n, "max_workers", cfg.MaxWorkers)
			return
		}
		m.log.Warn("spawn request refused", "calc", calc, "workers", n, "max_workers", cfg.MaxWorkers)
		m.respond(calc, false, fmt.Sprintf("at max_workers (%d)", cfg.MaxWorkers))
		return
	}
	c, err := m.spawn(now, &cfg)
	if err != nil {
		m.respond(calc, false, err.Error())
		return
	}
	c.requested = true
	m.respond(calc, true, "")
}

// spawn starts one child of cfg in the lowest free slot.
func (m *Manager) spawn(now time.Time, cfg *SpawnConfig) (*child, error) {
	used := map[int]bool{}
	for _, c := range m.children[cfg.Key] {
		used[c.index] = true
	}
	idx := 0
	for used[idx] {
		idx++
	}
	v := Vars{Name: cfg.Name, Broker: m.cfg.Advertise, Host: m.host, IdleTimeout: cfg.IdleTimeout, Index: idx}
	if len(cfg.GPUs) > 0 && !slurmPlaces(cfg) {
		v.GPU = cfg.GPUs[idx%len(cfg.GPUs)]
	}
	if per := m.perWorker(cfg); per > 0 {
		v.Threads = per
		v.CPUs = cpuset.Format(cpuset.Slice(m.allowed, per, idx))
	}
	c, err := start(cfg, v, m.cfg.LogDir, m.exits)
	if err != nil {
		m.log.Error("spawn failed", "calc", cfg.Key, "command", cfg.Command, "err", err)
		return nil, fmt.Errorf("cannot start the worker: %w", err)
	}
	m.children[cfg.Key] = append(m.children[cfg.Key], c)
	m.stats.Spawns++
	m.dirty = true
	attrs := []any{"calc", cfg.Key, "pid", c.pid, "index", idx, "log", c.logPath, "argv", c.argv}
	if v.GPU != "" {
		attrs = append(attrs, "gpu", v.GPU)
	}
	if v.CPUs != "" {
		attrs = append(attrs, "cpus", v.CPUs)
	}
	m.log.Info("spawned worker", attrs...)
	pruneLogs(m.cfg.LogDir, cfg.Key, m.cfg.KeepLogs)
	return c, nil
}

// ManagerHostEnv names the variable that tells a spawned worker the host
// its manager runs on: a worker on another host handed an ipc:// address
// (a socket file on the manager's host) then fails saying so, instead of
// waiting for a broker it can never reach.
const ManagerHostEnv = "ASERPC_MANAGER_HOST"

// remoteLauncher is the program in front of cfg's worker that may start
// it on another host (srun, ssh, ...), or "".
func remoteLauncher(cfg *SpawnConfig) string {
	if len(cfg.Command) == 0 {
		return ""
	}
	switch b := filepath.Base(cfg.Command[0]); b {
	case "srun", "sbatch", "salloc", "ssh", "pdsh", "mpirun", "mpiexec", "flux", "qsub", "bsub":
		return b
	}
	return ""
}

// CheckEndpoint accepts the zmq endpoints a worker can connect to.
func CheckEndpoint(ep string) error {
	for _, p := range []string{"tcp://", "ipc://"} {
		if rest, ok := strings.CutPrefix(ep, p); ok && rest != "" {
			return nil
		}
	}
	return fmt.Errorf("%q is not a zmq endpoint workers can connect to (tcp://HOST:PORT or ipc://PATH)", ep)
}

// slurmPlaces reports whether cfg's command is SLURM's srun: SLURM then
// places each step (its CPUs, and CUDA_VISIBLE_DEVICES from the GPUs it
// gives it), and the manager assigns neither.
func slurmPlaces(cfg *SpawnConfig) bool {
	return len(cfg.Command) > 0 && filepath.Base(cfg.Command[0]) == "srun"
}

// perWorker is a child's share of the manager's CPUs: cpus_per_worker, or
// the CPUs divided by max_workers (at least 1); 0 when the CPUs are unknown
// or the command is srun.
func (m *Manager) perWorker(cfg *SpawnConfig) int {
	if len(m.allowed) == 0 || slurmPlaces(cfg) {
		return 0
	}
	if cfg.CPUsPerWorker > 0 {
		return min(cfg.CPUsPerWorker, len(m.allowed))
	}
	return max(1, len(m.allowed)/max(cfg.MaxWorkers, 1))
}

// live counts the children of calc that are not being stopped.
func (m *Manager) live(calc string) int {
	n := 0
	for _, c := range m.children[calc] {
		if c.state != stateStopping {
			n++
		}
	}
	return n
}

// collect handles children that exited.
func (m *Manager) collect(now time.Time) {
	for {
		select {
		case e := <-m.exits:
			m.exited(now, e)
		default:
			return
		}
	}
}

func (m *Manager) exited(now time.Time, e exit) {
	c := e.c
	kids := m.children[c.key]
	for i, k := range kids {
		if k == c {
			m.children[c.key] = append(kids[:i:i], kids[i+1:]...)
			break
		}
	}
	// Whatever the worker started in its group goes with it.
	c.signal(syscall.SIGTERM)
	m.dirty = true
	ran := now.Sub(c.started).Round(time.Millisecond)
	how := e.describe()
	switch {
	case c.state == stateStarting:
		why := how + " before registering"
		m.log.Warn("worker exited before registering", "calc", c.key, "pid", c.pid, "how", how, "after", ran, "log", c.logPath)
		if c.requested && !c.reported {
			m.respond(c.key, false, c.failure(why))
		}
	case c.state == stateStopping:
		m.log.Info("worker stopped", "calc", c.key, "pid", c.pid, "how", how, "after", ran)
	case e.failed():
		m.log.Warn("worker exited", "calc", c.key, "pid", c.pid, "how", how, "after", ran, "log", c.logPath)
		if m.brokerOurs {
			// The broker may hold the job this worker died with: its client learns why.
			if how == "signal killed" {
				how += " (SIGKILL: out of memory? see the kernel log)"
			}
			msg := [][]byte{{}, wire.WorkerExited.Frame(), []byte(c.key), []byte(strconv.Itoa(c.pid)),
				[]byte(c.failure(how + " after " + ran.String()))}
			if _, err := m.sock.SendMessage(msg); err != nil {
				m.log.Debug("send WORKER_EXITED", "err", err)
			}
		}
	default:
		m.log.Info("worker exited normally", "calc", c.key, "pid", c.pid, "after", ran)
	}
	switch {
	case c.state == stateStopping:
		// Stopped by us: a start timeout already counted as a failure.
	case !e.failed() || now.Sub(c.started) > stableAfter:
		m.fails[c.key] = 0 // a clean exit (idle timeout) or a long run: not a crash loop
		delete(m.retryAt, c.key)
	default:
		m.backoff(now, c.key)
	}
	m.serveDeferred(now, c.key)
}

// serveDeferred answers the spawn requests of calc that waited at
// max_workers, now that a child has gone, and refuses those that waited
// longer than deferWait.
func (m *Manager) serveDeferred(now time.Time, calc string) {
	waiting := m.deferred[calc]
	for len(waiting) > 0 {
		cfg := m.cfg.Configs[calc]
		switch {
		case now.Sub(waiting[0]) > deferWait:
			m.log.Warn("spawn request refused", "calc", calc, "max_workers", cfg.MaxWorkers, "waited", deferWait)
			m.respond(calc, false, fmt.Sprintf("at max_workers (%d)", cfg.MaxWorkers))
		case m.live(calc) < cfg.MaxWorkers:
			c, err := m.spawn(now, &cfg)
			if err != nil {
				m.respond(calc, false, err.Error())
			} else {
				c.requested = true
				m.respond(calc, true, "")
			}
		default:
			m.deferred[calc] = waiting
			return
		}
		waiting = waiting[1:]
	}
	delete(m.deferred, calc)
}

// backoff counts a failure of calc and delays its next min_workers
// restart: 0.5 s, 1 s, 2 s … up to a minute.
func (m *Manager) backoff(now time.Time, calc string) {
	m.fails[calc]++
	m.retryAt[calc] = now.Add(min(backoffMin<<min(m.fails[calc]-1, 16), backoffMax))
}

// timers enforces start timeouts, SIGKILLs children past their grace,
// keeps min_workers and sends the heartbeat when due.
func (m *Manager) timers(now time.Time) {
	if !m.brokerOurs && !m.noBrokerAt.IsZero() && now.After(m.noBrokerAt) {
		m.noBrokerAt = time.Time{}
		m.log.Warn("no aserpc broker has answered here yet; still trying (a 0.1.3 broker never answers, "+
			"and then this is expected). Is `aserpc broker` running with this backend?", "broker", m.cfg.Broker)
	}
	for _, key := range Names(m.cfg.Configs) {
		cfg := m.cfg.Configs[key]
		for _, c := range m.children[key] {
			switch {
			case c.state == stateStarting && now.Sub(c.started) > cfg.StartTimeout:
				if !m.brokerOurs {
					// A 0.1.3 broker never says who registered: assume the
					// child did rather than kill a working worker.
					c.state, c.since = stateRunning, now
					m.dirty = true
					m.log.Info("assuming the worker registered (the broker does not report registrations)", "calc", key, "pid", c.pid)
					continue
				}
				// Naming the calculator catches the usual cause: a command
				// whose worker registers under another name or broker.
				why := fmt.Sprintf("did not register with %s within %s", m.cfg.Advertise, cfg.StartTimeout)
				if c.pendingInSLURM() {
					why = fmt.Sprintf("is still pending in SLURM after %s: its job is queued and waiting for "+
						"resources (squeue says why), so no worker started", cfg.StartTimeout)
				}
				m.log.Warn("worker did not register in time, stopping it", "calc", key, "pid", c.pid, "start_timeout", cfg.StartTimeout, "log", c.logPath)
				if c.requested {
					m.respond(key, false, c.failure(why+"; stopped it"))
					c.reported = true
				}
				m.stop(now, c)
				m.backoff(now, key)
			case c.state == stateStopping && !c.killAt.IsZero() && now.After(c.killAt):
				m.log.Warn("worker ignored SIGTERM, killing it", "calc", key, "pid", c.pid)
				c.signal(syscall.SIGKILL)
				c.killAt = time.Time{}
			}
		}
	}
	for calc := range m.deferred {
		m.serveDeferred(now, calc)
	}
	m.keepMinimum(now)
	if !now.Before(m.nextReady) {
		m.sendReady(now)
	}
}

// keepMinimum starts children of calculators below min_workers, unless a
// restart is backing off.
func (m *Manager) keepMinimum(now time.Time) {
	for _, key := range Names(m.cfg.Configs) {
		cfg := m.cfg.Configs[key]
		if cfg.MinWorkers == 0 || now.Before(m.retryAt[key]) {
			continue
		}
		for m.live(key) < cfg.MinWorkers {
			if _, err := m.spawn(now, &cfg); err != nil {
				m.backoff(now, key)
				break
			}
		}
	}
}

// stop sends SIGTERM to c's group; SIGKILL follows after StopGrace.
func (m *Manager) stop(now time.Time, c *child) {
	if c.state == stateStopping {
		return
	}
	c.state, c.since, c.killAt = stateStopping, now, now.Add(m.cfg.StopGrace)
	m.dirty = true
	c.signal(syscall.SIGTERM)
}

func (m *Manager) respond(calc string, ok bool, text string) {
	if _, err := m.sock.SendMessage(wire.SpawnResponseMessage(calc, ok, text)); err != nil {
		m.log.Warn("send SPAWN_RESPONSE", "err", err)
	}
}

// caps is the capabilities frame: it tells our broker this manager is
// ours, its max_workers and its children (shown by `aserpc status`).
func (m *Manager) caps() []byte {
	maxw := map[string]any{}
	for k, c := range m.cfg.Configs {
		maxw[k] = c.MaxWorkers
	}
	var kids []any
	for _, key := range Names(m.cfg.Configs) {
		for _, c := range m.children[key] {
			kids = append(kids, map[string]any{
				"name": key, "pid": c.pid, "state": c.state, "index": c.index,
				"since": float64(c.since.UnixNano()) / 1e9, "gpu": c.gpu, "log": c.logPath,
			})
		}
	}
	if kids == nil {
		kids = []any{}
	}
	b, err := wire.Marshal(map[string]any{"protocol": 1, "max_workers": maxw, "children": kids})
	if err != nil {
		panic(err) // only our own plain maps reach Marshal
	}
	return b
}

// sendReady sends MANAGER_READY with the names and the capabilities frame.
func (m *Manager) sendReady(now time.Time) {
	msg := append(wire.ManagerReadyMessage(Names(m.cfg.Configs)), m.caps())
	if _, err := m.sock.SendMessage(msg); err != nil {
		m.log.Debug("send MANAGER_READY", "err", err)
	}
	m.nextReady = now.Add(m.cfg.Heartbeat)
	m.dirty = false
}

// shutdown deregisters (an empty MANAGER_READY: the broker drops the
// names now instead of after its worker timeout) and stops every child.
func (m *Manager) shutdown() {
	m.sock.SetLinger(500 * time.Millisecond)
	empty := []byte{}
	caps, _ := wire.Marshal(map[string]any{"protocol": 1, "max_workers": map[string]any{}, "children": []any{}})
	m.sock.SendMessage([][]byte{empty, wire.ManagerReady.Frame(), empty, caps})

	now := time.Now()
	n := 0
	for _, kids := range m.children {
		for _, c := range kids {
			m.stop(now, c)
			n++
		}
	}
	if n > 0 {
		m.log.Info("stopping workers", "count", n, "grace", m.cfg.StopGrace)
	}
	deadline := now.Add(m.cfg.StopGrace)
	killed := false
	for m.count() > 0 {
		wait := time.Until(deadline)
		if wait <= 0 {
			if killed {
				m.log.Error("workers still running after SIGKILL", "count", m.count())
				break
			}
			for _, kids := range m.children {
				for _, c := range kids {
					m.log.Warn("worker ignored SIGTERM, killing it", "calc", c.key, "pid", c.pid)
					c.signal(syscall.SIGKILL)
				}
			}
			killed, deadline = true, time.Now().Add(2*time.Second)
			continue
		}
		select {
		case e := <-m.exits:
			m.exited(time.Now(), e)
		case <-time.After(wait):
		}
	}
	m.log.Info("manager stopped", "total_spawns", m.stats.Spawns)
}

func (m *Manager) count() int {
	n := 0
	for _, kids := range m.children {
		n += len(kids)
	}
	return n
}

// Children lists the running children as "calc:pid:state", sorted; for
// tests and diagnostics (call from Run's goroutine or after Run).
func (m *Manager) Children() []string {
	var out []string
	for key, kids := range m.children {
		for _, c := range kids {
			out = append(out, fmt.Sprintf("%s:%d:%s", key, c.pid, c.state))
		}
	}
	sort.Strings(out)
	return out
}
