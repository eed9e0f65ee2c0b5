package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/internal/trace"
	"github.com/aserpc/aserpc/internal/zmsg"
	"github.com/aserpc/aserpc/wire"
)

// Config is what `aserpc broker` fills in.
type Config struct {
	Frontend string // clients (REQ/DEALER) connect here
	Backend  string // workers and the manager (DEALER) connect here
	Options
	// MaxMessageSize bounds every inbound frame (ZMQ_MAXMSGSIZE); a peer
	// sending a bigger one is disconnected by libzmq. 0 = DefaultMaxMessageSize.
	MaxMessageSize int64
	// Curve, when set, secures the endpoints that leave the machine (tcp,
	// anything but ipc:// and inproc://) with CurveZMQ: only keys in
	// Curve.Keys connect, each with its role. ipc endpoints stay plaintext
	// and open to every role: their 0700 directory already limits them to
	// this user.
	Curve  *Curve
	Logger *slog.Logger
	// Metrics, when set, receives the broker's Prometheus metrics (serve
	// them with Metrics.Serve).
	Metrics *Metrics
	// StateFile, when set, records the calculators served (StatePath): a
	// broker started on it holds their requests for StartupGrace.
	StateFile string
}

// Curve is the broker's CURVE key pair and the keys it admits.
type Curve struct {
	Cert auth.Cert
	Keys *auth.Keys
}

// ZAP domains of the two sockets: the handler admits client and admin
// keys on the frontend, worker and admin keys on the backend.
const (
	DomainFrontend = "aserpc-frontend"
	DomainBackend  = "aserpc-backend"
)

// DefaultMaxMessageSize fits a 1M-atom request with every extension array
// (28 MB of numbers and positions, ~50 MB more of masses, momenta,
// magnetic moments, charges and tags) and its typed results.
const DefaultMaxMessageSize = 256 << 20

// ErrInUse means another live broker serves an ipc endpoint.
var ErrInUse = errors.New("endpoint in use by a live broker")

// Broker owns the two ROUTER sockets and feeds the Router.
type Broker struct {
	cfg      Config
	log      *slog.Logger
	ctx      *zmq.Context
	front    *zmq.Socket
	back     *zmq.Socket
	rawFront unsafe.Pointer
	rawBack  unsafe.Pointer
	// frontAuth/backAuth: the socket is a CURVE server; each message's
	// User-Id says what its peer may do.
	frontAuth, backAuth bool
	zap                 *auth.Handler
	router              *Router
	cleanup             []func()
	stateServed         []string // what the state file says now
	stateWritten        bool
	// notify: libzmq tells the backend at once when a peer's connection
	// closes (ZMQ_ROUTER_NOTIFY, a draft option our static libzmq has).
	notify bool
}

// ZMTP heartbeats on the backend: libzmq pings every worker and manager
// connection each PeerHeartbeat and closes one that has answered nothing
// for PeerTimeout, so a peer whose host froze or whose link was cut (no
// FIN, no RST) is disconnected like one that died. Any libzmq >= 4.2
// answers the pings from its I/O thread, whatever the peer's Python does,
// so this is safe for aserpc 0.1.3's workers as well as ours.
const (
	PeerHeartbeat = time.Second
	PeerTimeout   = 3 * time.Second
)

// New binds the sockets. Close releases them.
func New(cfg Config) (*Broker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.Frontend == cfg.Backend && !strings.HasSuffix(cfg.Frontend, ":*") { // ":*": two ports the system picks
		return nil, fmt.Errorf("frontend and backend must differ (both %s)", cfg.Frontend)
	}
	b := &Broker{cfg: cfg, log: cfg.Logger}
	var err error
	// A context of its own: its I/O thread serves only the broker's
	// sockets, not those of clients or workers sharing the process (tests,
	// benchmarks), which would otherwise serialise through one thread.
	if b.ctx, err = zmq.NewContext(); err != nil {
		return nil, err
	}
	if cfg.Curve != nil {
		b.frontAuth, b.backAuth = auth.Secured(cfg.Frontend), auth.Secured(cfg.Backend)
	}
	if b.frontAuth || b.backAuth {
		if cfg.Curve.Keys == nil || !auth.ValidKey(cfg.Curve.Cert.Secret) {
			b.Close()
			return nil, errors.New("curve: need the broker's secret key and the authorized keys")
		}
		// Before any CURVE socket exists: a CURVE server in a context
		// without a ZAP handler admits every key.
		b.zap, err = auth.StartHandler(b.ctx, cfg.Curve.Keys, auth.Policy{
			DomainFrontend: {auth.Client, auth.Admin},
			DomainBackend:  {auth.Worker, auth.Admin},
		}, b.log)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("curve: %w", err)
		}
	}
	if b.front, err = b.bind(cfg.Frontend, "frontend"); err != nil {
		b.Close()
		return nil, err
	}
	if b.back, err = b.bind(cfg.Backend, "backend"); err != nil {
		b.Close()
		return nil, err
	}
	b.rawFront, b.rawBack = zmsg.Raw(b.front), zmsg.Raw(b.back)
	b.router = newRouter(cfg.Options, b, b.log, time.Now())
	b.router.met = cfg.Metrics
	if names := loadState(cfg.StateFile, cfg.Frontend); len(names) > 0 && cfg.StartupGrace > 0 {
		b.router.Expect(names)
		b.log.Info("a broker served these here before: their requests wait for their workers to come back",
			"calculators", names, "startup_grace", cfg.StartupGrace)
	}
	return b, nil
}

func (b *Broker) bind(ep, what string) (*zmq.Socket, error) {
	if path, ok := strings.CutPrefix(ep, "ipc://"); ok {
		if err := b.prepareIPC(path); err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, ep, err)
		}
	}
	s, err := b.ctx.NewSocket(zmq.ROUTER)
	if err != nil {
		return nil, err
	}
	// LINGER 0: on exit, undelivered replies to vanished peers must not
	// hold the process. ROUTER_MANDATORY: a send to a peer that is gone
	// fails at once (EHOSTUNREACH) instead of vanishing, so a job sent to
	// a dead worker is re-dispatched. MAXMSGSIZE: bounded memory per frame.
	for _, set := range []func() error{
		func() error { return s.SetLinger(0) },
		func() error { return s.SetRouterMandatory(1) },
		func() error { return s.SetMaxmsgsize(b.cfg.MaxMessageSize) },
		func() error { return s.SetRcvhwm(100000) },
		func() error { return s.SetSndhwm(100000) },
	} {
		if err := set(); err != nil {
			s.Close()
			return nil, fmt.Errorf("%s socket options: %w", what, err)
		}
	}
	secured := (what == "frontend" && b.frontAuth) || (what == "backend" && b.backAuth)
	if secured {
		domain := DomainFrontend
		if what == "backend" {
			domain = DomainBackend
		}
		for _, set := range []func() error{
			func() error { return s.SetZapDomain(domain) },
			func() error { return s.SetCurveServer(1) },
			func() error { return s.SetCurveSecretkey(b.cfg.Curve.Cert.Secret) },
		} {
			if err := set(); err != nil {
				s.Close()
				return nil, fmt.Errorf("%s curve options: %w", what, err)
			}
		}
	}
	if what == "backend" {
		if err := s.SetHeartbeatIvl(PeerHeartbeat); err != nil {
			s.Close()
			return nil, fmt.Errorf("backend heartbeat: %w", err)
		}
		if err := s.SetHeartbeatTimeout(PeerTimeout); err != nil {
			s.Close()
			return nil, fmt.Errorf("backend heartbeat: %w", err)
		}
		// A dead worker's job is re-dispatched the moment its connection
		// closes instead of after --timeout of silence.
		if err := zmsg.NotifyDisconnect(zmsg.Raw(s)); err == nil {
			b.notify = true
		} else {
			b.log.Info("this libzmq has no ZMQ_ROUTER_NOTIFY (a draft option; the wheels' static build has it): "+
				"a dead worker is noticed when its heartbeats stop (--timeout)", "err", err)
		}
	}
	if err := s.Bind(ep); err != nil {
		s.Close()
		return nil, fmt.Errorf("bind %s %s: %w", what, ep, err)
	}
	if path, ok := strings.CutPrefix(ep, "ipc://"); ok {
		b.cleanup = append(b.cleanup, func() { os.Remove(path) })
	}
	switch {
	case secured:
		b.log.Info("CURVE authentication on", "socket", what, "endpoint", ep)
	case b.cfg.Curve != nil:
		b.log.Info("ipc endpoint: no CURVE; only this user can reach its 0700 directory", "socket", what, "endpoint", ep)
	case auth.Secured(ep):
		b.log.Warn("no CURVE keys: anyone who can reach this endpoint may use it (see aserpc keys --help)", "socket", what, "endpoint", ep)
	}
	b.log.Debug("bound", "socket", what, "endpoint", ep)
	return s, nil
}

// prepareIPC creates the socket directory (0700: only this user may
// connect, which is what guards SHUTDOWN and worker registration on ipc),
// takes a lock beside the socket so two of our brokers never share a path,
// and refuses a path a live broker of any version answers on.
func (b *Broker) prepareIPC(path string) error {
	if len(path) > 107 {
		return fmt.Errorf("socket path is %d bytes, over the 107-byte Unix limit; set ASERPC_IPC_DIR to a shorter directory", len(path))
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		b.cleanup = append(b.cleanup, func() { os.Remove(dir) }) // only if empty
	} else if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o022 != 0 {
		b.log.Warn("ipc directory is writable by others; anyone who can connect may register as a worker", "dir", dir, "mode", fi.Mode().Perm())
	}
	lockPath := path + ".lock"
	lf, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(lockPath)
		lf.Close()
		return fmt.Errorf("%w (aserpc broker pid %s holds %s)", ErrInUse, strings.TrimSpace(string(pid)), lockPath)
	}
	// A broker that is not ours (0.1.3) takes no lock: probe the socket.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		lf.Close()
		return fmt.Errorf("%w (something answers on %s)", ErrInUse, path)
	}
	lf.Truncate(0)
	fmt.Fprintf(lf, "%d\n", os.Getpid())
	b.cleanup = append(b.cleanup, func() { os.Remove(lockPath); lf.Close() })
	return nil
}

// Close releases the sockets and removes ipc files and the directory it
// created. Idempotent.
func (b *Broker) Close() error {
	if b.front != nil {
		b.front.Close()
		b.front = nil
	}
	if b.back != nil {
		b.back.Close()
		b.back = nil
	}
	if b.ctx != nil {
		b.ctx.Term()
		b.ctx = nil
	}
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
	b.cleanup = nil
	return nil
}

// Run serves until ctx is cancelled or a client's SHUTDOWN is accepted.
// On cancellation, waiting clients get an error and workers are left
// running so that they re-register with the next broker.
func (b *Broker) Run(ctx context.Context) error {
	b.log.Info("broker started", "frontend", b.cfg.Frontend, "backend", b.cfg.Backend,
		"worker_timeout", b.router.opt.WorkerTimeout, "queue_timeout", b.router.opt.QueueTimeout)
	lastTick := time.Now()
	for {
		if ctx.Err() != nil {
			b.router.Drain()
			b.flushOnClose()
			b.log.Info("broker stopped")
			return nil
		}
		if b.router.Stopping() {
			if b.cfg.StateFile != "" {
				os.Remove(b.cfg.StateFile) // its workers were told to stop: none comes back
			}
			b.flushOnClose()
			b.log.Info("broker stopped by SHUTDOWN")
			return nil
		}
		// The poll timeout bounds both housekeeping delay and how long a
		// cancelled ctx goes unnoticed.
		fr, br, err := zmsg.Poll2(b.rawFront, b.rawBack, 100*time.Millisecond)
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		// Drain a bounded batch from each ready socket, alternating so
		// neither side starves the other.
		for i := 0; i < 256 && (fr || br); i++ {
			if br {
				br = b.handle(b.rawBack, false)
			}
			if fr {
				fr = b.handle(b.rawFront, true)
			}
		}
		if now := time.Now(); now.Sub(lastTick) >= TickEvery {
			b.router.Tick(now)
			b.saveState()
			lastTick = now
		}
	}
}

// flushOnClose gives the last replies (errors to waiting clients, SHUTDOWN
// to workers) a moment to leave when the sockets close: they were sent
// with LINGER 0, which would drop whatever libzmq had not written yet.
func (b *Broker) flushOnClose() {
	b.front.SetLinger(500 * time.Millisecond)
	b.back.SetLinger(500 * time.Millisecond)
}

// handle receives and routes one message; false when none was waiting.
func (b *Broker) handle(sock unsafe.Pointer, front bool) bool {
	m, err := zmsg.Recv(sock, true)
	if err == nil && b.cfg.Metrics != nil {
		start, size := time.Now(), 0
		for i := 0; i < m.Len(); i++ {
			size += m.Size(i)
		}
		// (deferred before m.Close, so it runs after the routing below)
		defer func() { b.cfg.Metrics.Message(front, size, time.Since(start)) }()
	}
	if err != nil {
		if err != syscall.EAGAIN {
			b.log.Debug("recv", "err", err)
		}
		return false
	}
	defer m.Close()
	now := time.Now()
	if m.Dropped() > 0 {
		// Longer than any valid message: answer as malformed (frames past
		// MaxFrames were discarded, so pretend one too many is there).
		b.router.counters.Malformed++
		if front {
			b.router.reply(m.Frame(0), wire.Error, errorBody("Invalid message: too many frames"), nil)
		}
		return true
	}
	n := m.Len()
	if n < 1 {
		return true
	}
	id := m.Frame(0)
	if !front && n == 2 && m.Size(1) == 0 && b.notify {
		// ROUTER_NOTIFY: the peer's connection closed.
		b.router.Disconnected(now, id)
		return true
	}
	frames := make([][]byte, n-1)
	for i := 1; i < n; i++ {
		frames[i-1] = m.Frame(i)
	}
	// The payload frame (REQUEST data, RESPONSE data) travels on without
	// a copy: move it out of m into a message of its own.
	var body Payload
	if n >= 5 && len(frames[1]) == 1 {
		cmd := wire.Command(frames[1][0])
		if (front && cmd == wire.Request) || (!front && cmd == wire.Response) {
			if front {
				trace.Mark(trace.BrokerGotRequest)
			} else {
				trace.Mark(trace.BrokerGotResponse)
			}
			p := zmsg.New()
			if err := p.AddMove(m, 4); err == nil {
				body = &zbody{p}
			} else {
				p.Close()
			}
		}
	}
	user := Open
	if (front && b.frontAuth) || (!front && b.backAuth) {
		// The identity frame a ROUTER makes carries no metadata; the
		// peer's first frame does. An authenticated socket never passes
		// Open on, even if libzmq gave no User-Id.
		if user = m.UserID(1); user == Open {
			user = "none:"
		}
	}
	if front {
		b.router.ClientAs(now, id, user, frames, body)
	} else {
		b.router.BackendAs(now, id, user, frames, body)
	}
	return true
}

// Endpoints returns the endpoints the sockets are bound to, with the port
// the system chose for a "tcp://host:*" endpoint.
func (b *Broker) Endpoints() (front, back string) {
	front, _ = b.front.GetLastEndpoint()
	back, _ = b.back.GetLastEndpoint()
	return front, back
}

// SetKeys replaces the authorized keys for connections made from now on
// (safe from any goroutine). Without CURVE it does nothing.
func (b *Broker) SetKeys(k *auth.Keys) {
	if b.zap != nil && k != nil {
		b.zap.SetKeys(k)
	}
}

// zbody is a Payload held in libzmq memory.
type zbody struct{ m *zmsg.Msg }

func (z *zbody) Len() int     { return z.m.Size(0) }
func (z *zbody) Data() []byte { return z.m.Frame(0) }
func (z *zbody) Clone() Payload {
	c := zmsg.New()
	if err := c.AddRef(z.m, 0); err != nil {
		c.Close()
		return Bytes(append([]byte(nil), z.m.Frame(0)...))
	}
	return &zbody{c}
}
func (z *zbody) Release() { z.m.Close() }

// appendBody appends body as the next frame of out, without a copy when it
// lives in libzmq memory, and releases it.
func appendBody(out *zmsg.Msg, body Payload) error {
	defer body.Release()
	switch p := body.(type) {
	case *zbody:
		return out.AddMove(p.m, 0)
	case Bytes:
		return out.AddBytes(p)
	}
	return fmt.Errorf("unknown payload %T", body)
}

func (b *Broker) toClient(client []byte, cmd wire.Command, body Payload, corr, extra []byte) error {
	out := zmsg.New()
	out.AddBytes(client)
	out.AddBytes(nil)
	out.AddBytes(cmd.Frame())
	if err := appendBody(out, body); err != nil {
		out.Close()
		return err
	}
	if corr != nil {
		out.AddBytes(corr)
		if extra != nil {
			out.AddBytes(extra)
		}
	}
	if cmd == wire.Response {
		trace.Mark(trace.BrokerSentResponse)
	}
	if b.cfg.Metrics != nil {
		b.cfg.Metrics.Sent(true, msgSize(out))
	}
	return zmsg.Send(b.rawFront, out, true)
}

func (b *Broker) toWorker(worker, client []byte, body Payload, hint []byte) error {
	out := zmsg.New()
	out.AddBytes(worker)
	out.AddBytes(nil)
	out.AddBytes(client)
	if err := appendBody(out, body); err != nil {
		out.Close()
		return err
	}
	if hint != nil {
		out.AddBytes(hint)
	}
	trace.Mark(trace.BrokerSentRequest)
	if b.cfg.Metrics != nil {
		b.cfg.Metrics.Sent(false, msgSize(out))
	}
	return zmsg.Send(b.rawBack, out, true)
}

func (b *Broker) toBackend(peer []byte, cmd wire.Command, args ...[]byte) error {
	out := zmsg.New()
	out.AddBytes(peer)
	out.AddBytes(nil)
	out.AddBytes(cmd.Frame())
	for _, a := range args {
		out.AddBytes(a)
	}
	if b.cfg.Metrics != nil {
		b.cfg.Metrics.Sent(false, msgSize(out))
	}
	return zmsg.Send(b.rawBack, out, true)
}

// msgSize is the bytes of a message's frames.
func msgSize(m *zmsg.Msg) int {
	n := 0
	for i := 0; i < m.Len(); i++ {
		n += m.Size(i)
	}
	return n
}
