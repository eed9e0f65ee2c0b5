package auth

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	zmq "github.com/pebbe/zmq4"
)

// zapEndpoint is where libzmq sends ZAP requests, in each context.
const zapEndpoint = "inproc://zeromq.zap.01"

// Policy says which roles may connect to the sockets of each ZAP domain
// (zmq.Socket.SetZapDomain). A domain not in it admits nobody.
type Policy map[string][]Role

// Handler answers ZAP requests for the CURVE sockets of one zmq context
// from a goroutine of its own, until that context is terminated.
type Handler struct {
	keys   atomic.Pointer[Keys]
	policy Policy
	log    *slog.Logger
	sock   *zmq.Socket
	done   chan struct{}

	mu     sync.Mutex
	warned map[string]bool // key+address already refused at Warn level
}

// StartHandler binds the ZAP endpoint in ctx and serves it. Call it
// before binding any CURVE server socket of ctx, and terminate ctx only
// after closing them: while a CURVE socket exists, the handler must too,
// or libzmq would admit every key (see the package doc).
func StartHandler(ctx *zmq.Context, keys *Keys, policy Policy, log *slog.Logger) (*Handler, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, err := ctx.NewSocket(zmq.REP)
	if err != nil {
		return nil, err
	}
	s.SetLinger(0)
	if err := s.Bind(zapEndpoint); err != nil {
		s.Close()
		return nil, fmt.Errorf("bind %s: %w", zapEndpoint, err)
	}
	h := &Handler{policy: policy, log: log, sock: s, done: make(chan struct{}), warned: map[string]bool{}}
	h.keys.Store(keys)
	go h.serve()
	return h, nil
}

// SetKeys replaces the authorized keys; connections made from now on are
// checked against them (established ones keep their role).
func (h *Handler) SetKeys(k *Keys) { h.keys.Store(k) }

// Keys returns the authorized keys in use.
func (h *Handler) Keys() *Keys { return h.keys.Load() }

// Done is closed when the handler has stopped (its context terminated).
func (h *Handler) Done() <-chan struct{} { return h.done }

func (h *Handler) serve() {
	defer close(h.done)
	defer h.sock.Close()
	for {
		req, err := h.sock.RecvMessageBytes(0)
		if err != nil {
			if zmq.AsErrno(err) == zmq.ETERM {
				return
			}
			h.log.Debug("zap recv", "err", err)
			continue
		}
		if _, err := h.sock.SendMessage(h.Answer(req)); err != nil {
			if zmq.AsErrno(err) == zmq.ETERM {
				return
			}
			h.log.Debug("zap send", "err", err)
		}
	}
}

// Answer turns one ZAP request (RFC 27: version, request id, domain,
// address, identity, mechanism, credentials...) into its reply frames
// (version, request id, status code, status text, user id, metadata).
func (h *Handler) Answer(req [][]byte) [][]byte {
	if len(req) < 6 {
		return [][]byte{[]byte("1.0"), nil, []byte("500"), []byte("malformed ZAP request"), nil, nil}
	}
	version, id, domain, address, mech := req[0], req[1], string(req[2]), string(req[3]), string(req[5])
	reply := func(code, text, user string) [][]byte {
		return [][]byte{version, id, []byte(code), []byte(text), []byte(user), nil}
	}
	if string(version) != "1.0" {
		return reply("500", "unsupported ZAP version", "")
	}
	if mech != "CURVE" || len(req) != 7 || len(req[6]) != 32 {
		h.refuse("", address, domain, "mechanism "+mech)
		return reply("400", "CURVE required", "")
	}
	key := zmq.Z85encode(string(req[6]))
	e, ok := h.keys.Load().Lookup(key)
	if !ok {
		h.refuse(key, address, domain, "unknown key")
		return reply("400", "unknown key", "")
	}
	if !slices.Contains(h.policy[domain], e.Role) {
		h.refuse(key, address, domain, fmt.Sprintf("%s key %q may not connect here", e.Role, e.Name))
		return reply("400", "role not allowed on this socket", "")
	}
	h.log.Debug("zap: admitted", "key", e.Name, "role", e.Role, "address", address, "domain", domain)
	return reply("200", "OK", e.UserID())
}

// refuse logs a refusal: at Warn the first time for a key and address (a
// refused client reconnects every fraction of a second), then at Debug.
func (h *Handler) refuse(key, address, domain, why string) {
	k := key + "|" + address + "|" + why
	h.mu.Lock()
	first := !h.warned[k]
	if first {
		if len(h.warned) > 4096 {
			clear(h.warned)
		}
		h.warned[k] = true
	}
	h.mu.Unlock()
	lv := slog.LevelDebug
	if first {
		lv = slog.LevelWarn
	}
	short := key
	if len(short) > 8 {
		short = short[:8] + "…"
	}
	h.log.Log(context.Background(), lv, "connection refused by CURVE authentication", "why", why, "key", short, "address", address, "socket", domain)
}
