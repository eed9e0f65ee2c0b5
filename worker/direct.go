package worker

// The direct path: a worker that the broker reserved for a session
// (RemoteCalculator(session=True)) serves that session's client on a
// socket of its own, without the broker's two extra hops. The broker hands
// the worker the session's key with the job that reserves it (JobHint) and
// the client the worker's endpoint with that job's answer; it ends the
// session with SESSION_END. The worker answers a direct request only for
// the session it holds; anything else gets an ERROR, on which the client
// sends through the broker again, so nothing is lost when the reservation
// has moved on. Meanwhile the worker keeps its heartbeats, and its READY
// reports the requests it answered directly, which keeps the session alive
// at the broker.
//
// Next to an ipc:// broker the socket is a plain unix socket (unixdirect.go)
// in a 0700 directory of this user's. Next to a tcp:// broker it is zmq's, and
// listens on the address this host reaches the broker from, with CURVE and
// a key pair made at start, whose public key the broker gives only to the
// session's client; every request must carry the session's key too.

import (
	"context"
	"os"
	"strings"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/internal/trace"
	"github.com/aserpc/aserpc/wire"
)

var progressBusy, _ = wire.Marshal(map[string]any{"state": "busy"})

// errNotReserved is the ERROR a direct request gets when this worker does
// not hold its session (any more): the client goes through the broker.
const errNotReserved = "not reserved for this session (any more): send through the broker"

// openDirect binds the direct socket, when configured; a failure only
// costs the direct path.
func (w *Worker) openDirect() {
	ipc, tcp := strings.HasPrefix(w.cfg.Direct, "ipc://"), strings.HasPrefix(w.cfg.Direct, "tcp://")
	if w.batching() || !ipc && !tcp {
		return
	}
	if ipc {
		// On this host: a plain unix socket (unixdirect.go).
		u, err := listenUnix(strings.TrimPrefix(w.cfg.Direct, "ipc://"), w.cfg.MaxMessageSize)
		if err != nil {
			w.log.Warn("no direct path for sessions (every request goes through the broker)", "endpoint", w.cfg.Direct, "err", err)
			return
		}
		w.udirect, w.directAt = u, UnixScheme+u.path
		w.log.Debug("direct path for sessions", "endpoint", w.directAt)
		return
	}
	w.openTCPDirect()
	// For a session's client on this host, the unix socket as well.
	if w.direct != nil && strings.HasPrefix(w.cfg.DirectLocal, "ipc://") {
		boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil || !wire.ValidBootID(strings.TrimSpace(string(boot))) {
			return
		}
		u, err := listenUnix(strings.TrimPrefix(w.cfg.DirectLocal, "ipc://"), w.cfg.MaxMessageSize)
		if err != nil {
			w.log.Debug("no unix socket for sessions on this host", "endpoint", w.cfg.DirectLocal, "err", err)
			return
		}
		w.udirect, w.directLoc, w.boot = u, UnixScheme+u.path, strings.TrimSpace(string(boot))
		w.log.Debug("direct path for sessions on this host", "endpoint", w.directLoc)
	}
}

// openTCPDirect binds the zmq tcp socket of the direct path (CURVE).
func (w *Worker) openTCPDirect() {
	s, err := w.ctx.NewSocket(zmq.ROUTER)
	if err == nil {
		s.SetLinger(0)
		if w.cfg.MaxMessageSize > 0 {
			s.SetMaxmsgsize(w.cfg.MaxMessageSize)
		}
		// CURVE with a key pair of this process: the broker hands the
		// public key to the session's client only, over its own channel.
		var pub, secret string
		if pub, secret, err = zmq.NewCurveKeypair(); err == nil {
			if err = s.SetCurveServer(1); err == nil {
				err = s.SetCurveSecretkey(secret)
			}
			w.directKey = pub
		}
		if err == nil {
			err = s.Bind(w.cfg.Direct)
		}
		if err == nil {
			w.directAt, err = s.GetLastEndpoint() // tcp: the port the system chose
		}
		if err != nil {
			s.Close()
		}
	}
	if err != nil {
		w.log.Warn("no direct path for sessions (every request goes through the broker)", "endpoint", w.cfg.Direct, "err", err)
		return
	}
	w.direct = s
	w.poller.Add(s, zmq.POLLIN)
	w.log.Debug("direct path for sessions", "endpoint", w.directAt)
}

func (w *Worker) closeDirect() {
	w.mu.Lock() // a BUSY timer's last PROGRESS may race past the job's end
	defer w.mu.Unlock()
	if w.direct != nil {
		w.direct.Close()
		w.direct = nil
	}
	if w.udirect != nil {
		w.udirect.close()
		w.udirect = nil
	}
}

// endSession forgets the session this worker held.
func (w *Worker) endSession(why string) {
	if w.session != "" {
		w.log.Debug("session ended", "session", w.session, "why", why)
		w.session = ""
	}
}

// directReq is one request on the direct path, [REQUEST, calculator,
// payload, corr?], and how to answer its client.
type directReq struct {
	frames [][]byte
	reply  func(cmd wire.Command, body, corr []byte)
}

// hasDirect reports whether the worker serves sessions directly.
func (w *Worker) hasDirect() bool { return w.direct != nil || w.udirect != nil }

// nextDirect reads one direct request without waiting; nil when none.
func (w *Worker) nextDirect() *directReq {
	if w.udirect != nil {
		if d := w.udirect.next(w); d != nil || w.direct == nil {
			return d
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	msg, err := w.direct.RecvMessageBytes(zmq.DONTWAIT)
	if err != nil {
		if !isErrno(err, syscall.EAGAIN) && !isErrno(err, syscall.EINTR) {
			w.log.Debug("direct receive", "err", err)
		}
		return nil
	}
	if len(msg) < 2 || len(msg[1]) != 0 {
		w.log.Debug("malformed direct request", "frames", len(msg))
		return nil
	}
	id := msg[0]
	return &directReq{frames: msg[2:], reply: func(cmd wire.Command, body, corr []byte) {
		parts := []any{id, []byte{}, cmd.Frame(), body}
		if corr != nil {
			parts = append(parts, corr)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.direct == nil {
			return
		}
		if _, err := w.direct.SendMessageDontwait(parts...); err != nil {
			w.log.Debug("direct reply undeliverable", "err", err)
		}
	}}
}

// directJob answers one direct request: RESPONSE, or ERROR when it is
// malformed or this worker does not hold its session.
func (w *Worker) directJob(d *directReq) {
	start := time.Now()
	msg := d.frames
	if len(msg) < 3 || len(msg) > 4 {
		w.log.Debug("malformed direct request", "frames", len(msg))
		d.reply(wire.Error, wire.ErrorResponse("Invalid request format"), nil)
		return
	}
	var corr []byte
	if len(msg) == 4 {
		corr = msg[3]
	}
	reply := func(cmd wire.Command, body []byte) { d.reply(cmd, body, corr) }
	cmd, ok := wire.ParseCommand(msg[0])
	aff, _ := wire.RequestRouting(msg[2])
	switch {
	case !ok || cmd != wire.Request || string(msg[1]) != w.cfg.Name:
		reply(wire.Error, wire.ErrorResponse("Invalid request format"))
		return
	case w.session == "" || aff != w.session:
		reply(wire.Error, wire.ErrorResponse(errNotReserved))
		return
	}
	trace.Mark(trace.WorkerGot)
	// BUSY to the broker, and to the client the progress our broker would
	// send it, so that a long calculation does not time out.
	stopBeat := w.beat(func() { reply(wire.Progress, progressBusy) })
	t0 := time.Now()
	out := w.call(context.Background(), msg[2]) // (a signal waits for it, as --on-signal finish)
	w.computeNanos.Add(int64(time.Since(t0)))
	stopBeat()
	out = w.bounded(out)
	w.handled.Add(1)
	w.directJobs.Add(1)
	w.log.Debug("direct request handled", "bytes_in", len(msg[2]), "bytes_out", len(out), "took", time.Since(start))
	trace.Mark(trace.WorkerSent)
	reply(wire.Response, out)
}
