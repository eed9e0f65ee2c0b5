// Package worker is the aserpc worker's protocol loop: it registers a
// calculator name with a broker (aserpc 0.1.3's or ours), takes one job at
// a time, keeps itself alive with READY and BUSY heartbeats, and hands each
// request payload to a Handler — in `aserpc worker`, the embedded Python of
// the user's environment (see Calc).
//
// Protocol (reference-behaviour.md §2.3, §4): READY at start and as the
// idle heartbeat (which also re-registers the worker with a restarted
// broker); BUSY every heartbeat interval while a job runs, sent by a
// goroutine of its own however long the handler (Python) keeps the loop
// busy; RESPONSE then READY after each job; SHUTDOWN honoured; DISCONNECT
// on exit, with a linger so that it is not lost.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
	"golang.org/x/sys/unix"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/internal/trace"
	"github.com/aserpc/aserpc/wire"
)

// Handler computes one request payload into a response payload. It must
// always return a payload (an error Response for failures); ctx is
// cancelled when the worker is told to stop a running job.
type Handler func(ctx context.Context, request []byte) []byte

// StopMode says what a signal does to a running job.
type StopMode string

// Stop modes.
const (
	// Finish lets the running job complete and answers it, then exits.
	Finish StopMode = "finish"
	// Cancel interrupts the running job and leaves without answering:
	// the DISCONNECT makes our broker hand the job to another worker (a
	// 0.1.3 broker answers its client "Worker disconnected during
	// calculation").
	Cancel StopMode = "cancel"
)

// Config is what `aserpc worker` fills in.
type Config struct {
	Name        string        // calculator name registered with the broker
	Broker      string        // broker backend address
	Heartbeat   time.Duration // READY (idle) and BUSY (computing) interval
	IdleTimeout time.Duration // exit after this long without a job (0: never)
	OnStop      StopMode      // what a signal does to a running job
	// MaxMessageSize is the largest RESPONSE payload sent (0: no limit). A
	// broker disconnects a peer whose frame exceeds its own limit, so a
	// bigger result is answered with an error that says so instead.
	MaxMessageSize int64
	// Spin is how long, after each job, the worker busy-polls its socket
	// for the next request before it goes to sleep in the kernel (0:
	// never). Waking a sleeping thread is what a small request mostly
	// costs: on the 2-core VM we measure on, spinning 1 ms cut an H2O
	// round trip through the worker by ~0.3 ms (`just bench-worker`). The
	// price is up to Spin of CPU after a job that no other request
	// follows; the spin yields the CPU to any other runnable thread
	// between polls, and an idle worker never spins.
	Spin    time.Duration
	Handler Handler
	// Batch and BatchHandler make a batching worker (batch.go) when
	// Batch.Size > 1: it announces its capacity and computes the jobs it
	// holds together.
	Batch        BatchConfig
	BatchHandler BatchHandler
	// Curve, when set, authenticates to a broker on tcp with CurveZMQ
	// (ignored for ipc). Nil: plaintext, as 0.1.3.
	Curve *auth.Peer
	// Direct, when set (an ipc:// endpoint), is where a worker that does
	// not batch serves the client of the session it is reserved for
	// without the broker (direct.go). "": never.
	Direct string
	// DirectLocal, next to a tcp Direct, is an ipc:// path where the worker
	// also serves its session's client when that client runs on this host
	// (a plain unix socket, as next to an ipc broker). "": none.
	DirectLocal string
	Logger      *slog.Logger
	// NoBrokerWarning is how long the worker waits for a connection to the
	// broker before it warns that none answers (0: NoBrokerAfter).
	NoBrokerWarning time.Duration
	// GPUMemory, when set, says how much GPU memory the calculator holds
	// (bytes; negative: none or unknown), for the broker's metrics. It is
	// called from Run's goroutine, at most every few seconds.
	GPUMemory func() int64
	// Threads and CPUs are the worker's thread budget and CPU list ("":
	// not set), reported to the broker.
	Threads int
	CPUs    string
}

// NoBrokerAfter is how long a worker waits for its broker before it says
// that none answers at its address (it keeps trying).
const NoBrokerAfter = 5 * time.Second

// Stats are what a worker did, for its exit line and tests.
type Stats struct {
	Handled int
}

// ErrIdle is returned by Run when the worker exits on its idle timeout.
var ErrIdle = errors.New("idle timeout")

// Worker is one connection to a broker serving one calculator.
type Worker struct {
	cfg    Config
	log    *slog.Logger
	ctx    *zmq.Context
	sock   *zmq.Socket
	poller *zmq.Poller
	// mu serialises socket use between the loop and the BUSY timer
	// (a zmq socket is not thread-safe; the lock also orders memory).
	mu      sync.Mutex
	handled atomic.Int64
	pid     []byte // os.Getpid() in decimal, READY's last frame
	// mon receives the socket's connection events (a libzmq socket
	// monitor): connected, disconnected. connected and everConnected are
	// the loop's view of the broker.
	mon                      *zmq.Socket
	connected, everConnected bool
	registered               bool // the broker acknowledged a READY
	reregister               bool // reconnected: send READY when idle
	bs                       batchState
	// What READY reports of the worker (metrics), at most once a second:
	computeNanos atomic.Int64 // time in the handler
	host         string
	lastInfo     time.Time
	gpu          int64
	lastGPU      time.Time
	// The direct path (direct.go): the socket, the session it serves (""
	// none), the requests answered on it.
	direct     *zmq.Socket
	udirect    *unixDirect // on this host the direct path is a unix socket (next to an ipc broker, instead of direct)
	zfds       []int32     // with udirect: ZMQ_FD of sock, mon (and direct), and poll's scratch
	pfds       []unix.PollFd
	directLoc  string // with direct and udirect: udirect's endpoint, and this host's boot id
	boot       string
	directAt   string // its endpoint, as bound (a tcp port chosen by the system)
	directKey  string // tcp: its CURVE public key
	session    string
	directJobs atomic.Int64
}

// New connects to the broker (connecting never blocks: the broker may
// start later). Close releases the socket.
func New(cfg Config) (*Worker, error) {
	if cfg.Name == "" || !wire.ValidName([]byte(cfg.Name)) {
		return nil, fmt.Errorf("invalid calculator name %q", cfg.Name)
	}
	if cfg.Handler == nil {
		return nil, errors.New("worker: no handler")
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	if cfg.OnStop == "" {
		cfg.OnStop = Finish
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Batch.Size > 1 && cfg.BatchHandler == nil {
		return nil, errors.New("worker: a batch size without a batch handler")
	}
	w := &Worker{cfg: cfg, log: cfg.Logger.With("calc", cfg.Name), pid: []byte(strconv.Itoa(os.Getpid())), gpu: -1}
	w.host, _ = os.Hostname()
	w.bs.atoms = cfg.Batch.Atoms
	var err error
	if w.ctx, err = zmq.NewContext(); err != nil {
		return nil, err
	}
	if w.sock, err = w.ctx.NewSocket(zmq.DEALER); err != nil {
		w.ctx.Term()
		return nil, err
	}
	// Messages sent before the connection is up (or while a broker
	// restarts) wait in the socket and reach the broker when it is: the
	// first READY registers the worker as soon as possible, and a stale
	// READY or BUSY at a restarted broker is harmless.
	w.sock.SetLinger(0)
	if err := cfg.Curve.Apply(w.sock, cfg.Broker); err != nil {
		w.Close()
		return nil, err
	}
	// ZMTP heartbeats: a broker whose host froze or whose link was cut is
	// disconnected after 3 s without an answer, and the worker says so and
	// reconnects (libzmq does), instead of waiting silently forever.
	w.sock.SetHeartbeatIvl(time.Second)
	w.sock.SetHeartbeatTimeout(3 * time.Second)
	addr := fmt.Sprintf("inproc://aserpc-worker-monitor-%p", w)
	if err := w.sock.Monitor(addr, zmq.EVENT_CONNECTED|zmq.EVENT_DISCONNECTED); err != nil {
		w.Close()
		return nil, fmt.Errorf("monitor: %w", err)
	}
	if w.mon, err = w.ctx.NewSocket(zmq.PAIR); err == nil {
		w.mon.SetLinger(0)
		err = w.mon.Connect(addr)
	}
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("monitor: %w", err)
	}
	if err := w.sock.Connect(cfg.Broker); err != nil {
		w.Close()
		return nil, fmt.Errorf("connect %s: %w", cfg.Broker, err)
	}
	return w, nil
}

// events reads the socket's pending connection events and says what they
// mean: the first connection registers the worker (its READY waited in the
// socket), a lost one is a warning, a new one after it a reconnection.
func (w *Worker) events() {
	for {
		ev, _, _, err := w.mon.RecvEvent(zmq.DONTWAIT)
		if err != nil {
			return
		}
		switch {
		case ev&zmq.EVENT_CONNECTED != 0 && !w.connected:
			w.connected = true
			if w.everConnected {
				w.log.Info("reconnected to the broker", "broker", w.cfg.Broker)
				// Register at once with a broker that may have restarted,
				// rather than at the next heartbeat (the loop sends it when
				// no job is in hand).
				w.reregister = true
			} else {
				w.everConnected = true
				w.log.Info("connected to the broker", "broker", w.cfg.Broker)
			}
		case ev&zmq.EVENT_DISCONNECTED != 0 && w.connected:
			w.connected = false
			w.log.Warn("lost the connection to the broker; reconnecting (a job in hand goes to another worker)",
				"broker", w.cfg.Broker)
		}
	}
}

// Stats returns what the worker has done so far. Safe to call while Run
// runs.
func (w *Worker) Stats() Stats { return Stats{Handled: int(w.handled.Load())} }

// Close releases the socket. Idempotent.
func (w *Worker) Close() error {
	w.closeDirect()
	if w.mon != nil {
		w.mon.Close()
		w.mon = nil
	}
	if w.sock != nil {
		w.sock.Close()
		w.sock = nil
	}
	if w.ctx != nil {
		w.ctx.Term()
		w.ctx = nil
	}
	return nil
}

// send sends one message; failures (broker away) are only logged: the
// next heartbeat tries again.
func (w *Worker) send(parts ...[]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sendLocked(parts...)
}

func (w *Worker) sendLocked(parts ...[]byte) error {
	args := make([]any, len(parts))
	for i, p := range parts {
		args[i] = p
	}
	for {
		_, err := w.sock.SendMessageDontwait(args...)
		if err == nil || !isErrno(err, syscall.EINTR) {
			if err != nil {
				w.log.Debug("send failed", "command", wire.Command(parts[1][0]).String(), "err", err)
			}
			return err
		}
	}
}

func (w *Worker) cmd(c wire.Command) error {
	if c == wire.Ready {
		// Our READY names the pid (0.1.3 brokers read the name only), so a
		// manager's report of this process's death reaches the client; a
		// batching worker's adds its capacity.
		if w.batching() {
			return w.send(nil, c.Frame(), []byte(w.cfg.Name), w.pid, w.capacity())
		}
		if info := w.info(); info != nil {
			// What the worker reports of itself, at most once a second: a
			// capacity frame of one structure (wire/doc.go).
			return w.send(nil, c.Frame(), []byte(w.cfg.Name), w.pid, wire.EncodeCapacity(wire.Capacity{Structures: 1, Info: info}))
		}
		return w.send(nil, c.Frame(), []byte(w.cfg.Name), w.pid)
	}
	return w.send(nil, c.Frame(), []byte(w.cfg.Name))
}

// info is what READY reports of the worker, or nil within a second of the
// last report (so a worker answering thousands of requests a second pays
// for it once a second). Called from Run's goroutine only.
func (w *Worker) info() *wire.WorkerInfo {
	now := time.Now()
	if now.Sub(w.lastInfo) < time.Second {
		return nil
	}
	w.lastInfo = now
	if w.cfg.GPUMemory != nil && now.Sub(w.lastGPU) >= 5*time.Second {
		w.lastGPU = now
		w.gpu = w.cfg.GPUMemory()
	}
	info := &wire.WorkerInfo{Host: w.host, RSS: residentBytes(), GPU: w.gpu,
		ComputeSeconds: time.Duration(w.computeNanos.Load()).Seconds(), Handled: w.handled.Load(),
		Threads: w.cfg.Threads, CPUs: w.cfg.CPUs}
	if w.hasDirect() {
		info.Direct, info.DirectJobs, info.DirectKey = w.directAt, w.directJobs.Load(), w.directKey
		info.DirectLocal, info.Boot = w.directLoc, w.boot
	}
	return info
}

// residentBytes is the process's resident memory (0 when unknown).
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}

// spin busy-polls the socket until a message is there, until passes or
// ctx is done, yielding the CPU between polls. The lock is held per poll
// only, so a BUSY timer that races past a job's end does not wait for the
// spin.
func (w *Worker) spin(ctx context.Context, until time.Time) {
	for time.Now().Before(until) && ctx.Err() == nil {
		ready, _, err := w.poll(0)
		if ready || (err != nil && !isErrno(err, syscall.EINTR)) {
			return
		}
		syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// poll waits up to wait for input on the broker's socket, the monitor
// (mon: connection events) or the direct path.
func (w *Worker) poll(wait time.Duration) (ready, mon bool, err error) {
	if w.udirect == nil {
		w.mu.Lock()
		polled, err := w.poller.Poll(wait)
		w.mu.Unlock()
		for _, p := range polled {
			mon = mon || p.Socket == w.mon
		}
		return len(polled) > 0, mon, err
	}
	// zmq_poll cannot watch a plain socket here (zmq4 takes zmq sockets
	// only), so this is what it does inside: a zmq socket's ZMQ_FD becomes
	// readable when its ZMQ_EVENTS may have changed, and ZMQ_EVENTS is the
	// truth (reading it also re-arms the descriptor).
	deadline := time.Now().Add(wait)
	looked := 0
	for {
		if w.udirect.pending() {
			return true, false, nil
		}
		w.mu.Lock()
		se, err1 := w.sock.GetEvents()
		me, err2 := w.mon.GetEvents()
		var de zmq.State
		var err3 error
		if w.direct != nil {
			de, err3 = w.direct.GetEvents()
		}
		w.mu.Unlock()
		if err = errors.Join(err1, err2, err3); err != nil {
			return false, false, err
		}
		mon = me&zmq.POLLIN != 0
		if (se|de)&zmq.POLLIN != 0 || mon {
			return true, mon, nil
		}
		p := w.pfds[:0]
		for _, fd := range w.zfds {
			p = append(p, unix.PollFd{Fd: fd, Events: unix.POLLIN})
		}
		p = w.udirect.fds(p)
		w.pfds = p
		ms := 0
		if left := time.Until(deadline); left > 0 {
			ms = int((left + time.Millisecond - 1) / time.Millisecond)
		}
		n, perr := unix.Poll(p, ms)
		if perr != nil && !errors.Is(perr, unix.EINTR) {
			return false, false, perr
		}
		for _, q := range p[len(w.zfds):] {
			if q.Revents != 0 {
				return true, false, nil
			}
		}
		if n == 0 || ms == 0 && looked > 0 {
			return false, false, nil // the time is up (a zmq descriptor's news, if any, was looked at)
		}
		looked++ // a zmq descriptor fired (or EINTR): ask ZMQ_EVENTS again
	}
}

// zmqFds are the descriptors of the broker's socket, the monitor and a
// zmq direct socket.
func (w *Worker) zmqFds() ([]int32, error) {
	var out []int32
	for _, s := range []*zmq.Socket{w.sock, w.mon, w.direct} {
		if s == nil {
			continue
		}
		fd, err := s.GetFd()
		if err != nil {
			return nil, err
		}
		out = append(out, int32(fd))
	}
	return out, nil
}

// recv waits up to wait for one message; nil when none came.
func (w *Worker) recv(wait time.Duration) ([][]byte, error) {
	if wait > 0 {
		ready, mon, err := w.poll(wait)
		if err != nil || !ready {
			if err != nil && !isErrno(err, syscall.EINTR) {
				return nil, fmt.Errorf("poll: %w", err)
			}
			return nil, nil
		}
		// Connection events are read only when there are some: a request's
		// path pays nothing for them. (After a spin, recv(0) skips the poll;
		// events wait for the next one, at most 100 ms away.)
		if mon {
			w.mu.Lock()
			w.events()
			w.mu.Unlock()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	msg, err := w.sock.RecvMessageBytes(zmq.DONTWAIT)
	if err != nil {
		if isErrno(err, syscall.EAGAIN) || isErrno(err, syscall.EINTR) {
			return nil, nil
		}
		return nil, fmt.Errorf("receive: %w", err)
	}
	return msg, nil
}

// Run serves until ctx is cancelled, the broker sends SHUTDOWN, or the
// idle timeout passes (ErrIdle). It sends DISCONNECT on the way out.
func (w *Worker) Run(ctx context.Context) (err error) {
	defer func() {
		// DISCONNECT must not be lost: the socket gets a linger so that
		// Close (zmq_ctx_term) waits up to a second for it to leave.
		w.mu.Lock()
		w.sock.SetLinger(time.Second)
		w.sendLocked(nil, wire.Disconnect.Frame(), []byte(w.cfg.Name))
		w.mu.Unlock()
		w.log.Info("worker stopped", "handled", w.handled.Load(), "why", why(err, ctx))
	}()
	w.poller = zmq.NewPoller()
	w.poller.Add(w.sock, zmq.POLLIN)
	w.poller.Add(w.mon, zmq.POLLIN)
	w.openDirect()
	if w.udirect != nil {
		if w.zfds, err = w.zmqFds(); err != nil {
			return err
		}
	}
	w.cmd(wire.Ready)
	if w.batching() {
		w.log.Info("worker started", "broker", w.cfg.Broker, "heartbeat", w.cfg.Heartbeat, "idle_timeout", w.cfg.IdleTimeout,
			"batch", w.cfg.Batch.Size, "batch_atoms", w.cfg.Batch.Atoms, "batch_wait", w.cfg.Batch.Wait)
	} else {
		w.log.Info("worker started", "broker", w.cfg.Broker, "heartbeat", w.cfg.Heartbeat, "idle_timeout", w.cfg.IdleTimeout)
	}
	noBroker := w.cfg.NoBrokerWarning
	if noBroker <= 0 {
		noBroker = NoBrokerAfter
	}
	warnAt := time.Now().Add(noBroker)

	lastJob := time.Now()
	nextBeat := lastJob.Add(w.cfg.Heartbeat)
	var next [][]byte // a message read while deciding whether to send READY
	var spinUntil time.Time
	for {
		if ctx.Err() != nil {
			return nil
		}
		if !w.everConnected && !warnAt.IsZero() && time.Now().After(warnAt) {
			warnAt = time.Time{}
			w.log.Warn("no broker answers here yet; still trying. Is `aserpc broker` running with this backend? "+
				"The default ipc sockets live in <project root or working directory>/.aserpc: start both in "+
				"the same directory, or give --broker (and the broker's --backend)", "broker", w.cfg.Broker)
		}
		if w.cfg.IdleTimeout > 0 && time.Since(lastJob) > w.cfg.IdleTimeout {
			w.log.Info("idle timeout", "after", w.cfg.IdleTimeout)
			return ErrIdle
		}
		msg := next
		next = nil
		if msg == nil && w.hasDirect() {
			if d := w.nextDirect(); d != nil {
				// What the broker sent first counts first: a SESSION_END
				// already here must refuse this request.
				if next, err = w.recv(0); err != nil {
					return err
				}
				if next != nil {
					if m, perr := wire.ParseToWorker(next); perr == nil && m.SessionEnd {
						w.endSession("the broker ended it")
						next = nil
					}
				}
				w.directJob(d)
				lastJob = time.Now()
				if !lastJob.Before(nextBeat) {
					// Still there for the broker, which sends it nothing meanwhile.
					w.cmd(wire.Ready)
					nextBeat = lastJob.Add(w.cfg.Heartbeat)
				}
				if w.cfg.Spin > 0 {
					spinUntil = lastJob.Add(w.cfg.Spin)
				}
				continue
			}
		}
		if msg == nil {
			// Poll at most 100 ms at a time so that a cancelled ctx is
			// noticed promptly.
			wait := max(min(time.Until(nextBeat), 100*time.Millisecond), 0)
			if wait > 0 && !spinUntil.IsZero() {
				// Never past the next heartbeat, however long Spin is.
				if nextBeat.Before(spinUntil) {
					spinUntil = nextBeat
				}
				w.spin(ctx, spinUntil)
				spinUntil = time.Time{}
			}
			if msg, err = w.recv(wait); err != nil {
				return err
			}
		}
		if msg == nil {
			// Idle heartbeat, which also registers the worker with a
			// restarted broker. Never sent with a job in hand: a 0.1.3
			// broker takes every READY as "idle" and would dispatch a
			// second job.
			if !time.Now().Before(nextBeat) || w.reregister {
				w.reregister = false
				w.cmd(wire.Ready)
				nextBeat = time.Now().Add(w.cfg.Heartbeat)
			}
			continue
		}
		trace.Mark(trace.WorkerGot)
		m, perr := wire.ParseToWorker(msg)
		if perr != nil {
			w.log.Warn("unexpected message from broker", "frames", len(msg), "err", perr)
			continue
		}
		if m.Joined {
			w.joined()
			continue
		}
		if m.SessionEnd {
			w.endSession("the broker ended it")
			continue
		}
		if m.Shutdown {
			w.log.Info("broker sent SHUTDOWN")
			return nil
		}
		if w.batching() {
			stop, err := w.batch(ctx, m)
			if err != nil {
				return err
			}
			if stop {
				return nil
			}
		} else {
			if m.Hint != nil && m.Hint.Session != "" && w.hasDirect() && w.session != m.Hint.Session {
				w.session = m.Hint.Session
				w.log.Debug("reserved for a session: its client may come directly", "session", w.session)
			}
			if stop := w.job(ctx, m.Client, m.Request); stop {
				return nil
			}
		}
		lastJob = time.Now()
		// A SHUTDOWN (or a signal) that came during the job: leave without
		// the READY that would invite another job only to disconnect from it.
		if ctx.Err() != nil {
			return nil
		}
		if next, err = w.recv(0); err != nil {
			return err
		}
		if next != nil {
			if m, perr := wire.ParseToWorker(next); perr == nil && m.Shutdown {
				w.log.Info("broker sent SHUTDOWN")
				return nil
			}
		}
		w.cmd(wire.Ready)
		nextBeat = time.Now().Add(w.cfg.Heartbeat)
		if w.cfg.Spin > 0 {
			spinUntil = time.Now().Add(w.cfg.Spin)
		}
	}
}

// joined notes the broker's acknowledgement of a READY (aserpc's broker
// sends one for each registration; a 0.1.3 broker does not).
func (w *Worker) joined() {
	if !w.registered {
		w.registered = true
		w.log.Info("worker registered", "broker", w.cfg.Broker)
	} else {
		w.log.Info("registered again (the broker restarted, or had dropped this worker)", "broker", w.cfg.Broker)
		w.endSession("registered again: the broker keeps no session of before")
	}
}

// job runs one request and sends its RESPONSE. It returns true when the
// worker must stop without answering (a signal with OnStop == Cancel).
func (w *Worker) job(ctx context.Context, client, request []byte) bool {
	start := time.Now()
	// The job's context is not ctx: with OnStop == Finish a signal must
	// not interrupt the handler.
	jobCtx := context.Background() // never done: nothing to watch per request
	if w.cfg.OnStop == Cancel {
		var cancelJob context.CancelFunc
		jobCtx, cancelJob = context.WithCancel(jobCtx)
		defer cancelJob()
		stop := context.AfterFunc(ctx, cancelJob)
		defer stop()
	}

	// BUSY from a timer of its own: the handler may hold this goroutine
	// (and Python's GIL) for hours. The first goes out one interval after
	// the job started, as the reference's. Stopping it never waits: the
	// loop runs on Python's locked thread, and parking that thread until
	// another goroutine exits costs tens of µs per request. A BUSY that
	// races past the RESPONSE is harmless (the broker only refreshes the
	// worker's liveness).
	stopBeat := w.beat()
	t0 := time.Now()
	reply := w.call(jobCtx, request)
	w.computeNanos.Add(int64(time.Since(t0)))
	stopBeat()

	if jobCtx.Err() != nil && ctx.Err() != nil {
		w.log.Info("job cancelled by a signal; leaving it to another worker", "after", time.Since(start))
		return true
	}
	w.answer(client, reply, len(request), start)
	return false
}

// answer sends a job's RESPONSE (an error instead when it is too large).
func (w *Worker) answer(client, reply []byte, requestLen int, start time.Time) {
	reply = w.bounded(reply)
	w.handled.Add(1)
	w.log.Debug("request handled", "bytes_in", requestLen, "bytes_out", len(reply), "took", time.Since(start))
	trace.Mark(trace.WorkerSent)
	w.send(nil, wire.Response.Frame(), client, reply)
}

// bounded is reply, or an error response when it is over max_message_size.
func (w *Worker) bounded(reply []byte) []byte {
	if max := w.cfg.MaxMessageSize; max > 0 && int64(len(reply)) > max {
		msg := fmt.Sprintf("response of %d bytes exceeds max_message_size (%d bytes); raise it on the broker (--max-message-size) and the worker (ASERPC_MAX_MESSAGE_SIZE)", len(reply), max)
		w.log.Error("response too large", "bytes", len(reply), "max_message_size", max)
		reply, _ = wire.EncodeResponse(&wire.CalcResponse{Error: msg, ErrorType: "aserpc.MessageTooLarge"})
	}
	return reply
}

// call runs the handler, turning a panic into an error response so that
// one bad request does not take the worker down.
func (w *Worker) call(ctx context.Context, request []byte) (reply []byte) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("handler panicked", "panic", p, "stack", string(debug.Stack()))
			resp := &wire.CalcResponse{Error: fmt.Sprint(p), ErrorType: "panic", Traceback: string(debug.Stack())}
			if reply, _ = wire.EncodeResponse(resp); reply == nil {
				reply = wire.ErrorResponse(fmt.Sprint(p))
			}
		}
	}()
	return w.cfg.Handler(ctx, request)
}

// isErrno reports whether err is the errno e. zmq4 returns its own
// zmq.Errno, which errors.Is does not match against a syscall.Errno.
func isErrno(err error, e syscall.Errno) bool {
	return zmq.AsErrno(err) == zmq.Errno(e)
}

func why(err error, ctx context.Context) string {
	switch {
	case errors.Is(err, ErrIdle):
		return "idle timeout"
	case err != nil:
		return err.Error()
	case ctx.Err() != nil:
		return "signal"
	}
	return "broker SHUTDOWN"
}
