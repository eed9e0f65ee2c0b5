package main

import (
	"fmt"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/wire"
)

// errTimeout is what the reference CLI prints when a broker is silent.
type errTimeout struct{ addr string }

func (e errTimeout) Error() string { return "Timeout - broker not responding at " + e.addr }

// call sends one control message to a broker frontend as a REQ client
// (exactly as aserpc 0.1.3's helpers do) and returns the reply's payload.
func call(addr string, timeout time.Duration, cmd wire.Command, args ...string) (any, error) {
	s, err := zmq.NewSocket(zmq.REQ)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetLinger(0)
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
