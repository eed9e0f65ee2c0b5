package main

import (
	"fmt"
	"time"

	zmq "github.com/pebbe/zmq4"
	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/wire"
)

// errTimeout is what the reference CLI prints when a broker is silent.
type errTimeout struct{ addr string }

func (e errTimeout) Error() string { return "Timeout - broker not responding at " + e.addr }

// call sends one control message to a broker frontend as a REQ client
// (exactly as aserpc 0.1.3's helpers do) and returns the reply's payload.
// With keys it authenticates with CURVE when addr is tcp.
func call(addr string, keys *auth.Peer, timeout time.Duration, cmd wire.Command, args ...string) (any, error) {
	s, err := zmq.NewSocket(zmq.REQ)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetLinger(0)
	if err := keys.Apply(s, addr); err != nil {
		return nil, err
	}
	s.SetRcvtimeo(timeout)
	s.SetSndtimeo(timeout)
	if err := s.Connect(addr); err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	parts := []any{cmd.Frame()}
	for _, a := range args {
		parts = append(parts, a)
	}
	if _, err := s.SendMessage(parts...); err != nil {
		return nil, errTimeout{addr}
	}
	reply, err := s.RecvMessageBytes(0)
	if err != nil {
		if keys != nil && auth.Secured(addr) {
			return nil, errTimeout{addr + " (with CURVE: a broker that does not know this key, or has another public key, never answers)"}
		}
		return nil, errTimeout{addr}
	}
	if len(reply) < 2 {
		return nil, fmt.Errorf("invalid response from broker: %d frames", len(reply))
	}
	v, err := wire.Unmarshal(reply[1])
	if err != nil {
		return nil, fmt.Errorf("invalid response from broker: %w", err)
	}
	if c, _ := wire.ParseCommand(reply[0]); c == wire.Error {
		if a, ok := v.([]any); ok && len(a) >= 4 {
			return nil, fmt.Errorf("%v", a[3])
		}
		return nil, fmt.Errorf("broker error")
	}
	return v, nil
}

// curveFlags are the CURVE options of every command that connects to a
// broker (worker, manager, list, status, shutdown).
func curveFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "curve-server-key", Usage: "The broker's CURVE public key (Z85) or its .key file, for tcp endpoints (default: curve_server_key)"},
		&cli.StringFlag{Name: "curve-secret", Usage: "This process's CURVE secret certificate (.key_secret), for tcp endpoints (default: curve_secret)"},
	}
}

// peerKeys resolves the CURVE keys of a command connecting to a broker:
// flags, then configuration. nil when none are set (plaintext, as 0.1.3).
func peerKeys(c *cli.Context) (*auth.Peer, error) {
	server, secret := c.String("curve-server-key"), c.String("curve-secret")
	if !c.IsSet("curve-server-key") || !c.IsSet("curve-secret") {
		cfg, err := loadConfig()
		if err != nil {
			return nil, err
		}
		if !c.IsSet("curve-server-key") {
			server = cfg.CurveServerKey
		}
		if !c.IsSet("curve-secret") {
			secret = cfg.CurveSecret
		}
	}
	p, err := auth.LoadPeer(server, secret)
	if err != nil {
		return nil, fail("%v", err)
	}
	return p, nil
}
