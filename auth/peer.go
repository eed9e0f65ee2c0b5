package auth

import (
	"errors"
	"fmt"
	"strings"

	zmq "github.com/pebbe/zmq4"
)

// Secured reports whether CURVE applies to an endpoint: everything but
// ipc:// and inproc://, which never leave the machine (an ipc socket is
// guarded by its directory's permissions instead).
func Secured(endpoint string) bool {
	return !strings.HasPrefix(endpoint, "ipc://") && !strings.HasPrefix(endpoint, "inproc://")
}

// Peer is what a CURVE client of the broker (a worker, the manager, a
// CLI command) needs: the broker's public key and its own key pair.
type Peer struct {
	ServerKey string // Z85
	Cert      Cert
}

// LoadPeer resolves serverKey (a Z85 key or a certificate file) and
// secretFile (this peer's .key_secret). Both empty: nil, no CURVE. One
// without the other is an error: CURVE needs both.
func LoadPeer(serverKey, secretFile string) (*Peer, error) {
	switch {
	case serverKey == "" && secretFile == "":
		return nil, nil
	case serverKey == "":
		return nil, errors.New("curve: a secret certificate but no broker key (give --curve-server-key or curve_server_key)")
	case secretFile == "":
		return nil, errors.New("curve: a broker key but no secret certificate of this process (give --curve-secret or curve_secret)")
	}
	sk, err := PublicKey(serverKey, "")
	if err != nil {
		return nil, fmt.Errorf("curve server key: %w", err)
	}
	c, err := LoadSecret(secretFile)
	if err != nil {
		return nil, fmt.Errorf("curve: %w", err)
	}
	return &Peer{ServerKey: sk, Cert: c}, nil
}

// Apply makes s a CURVE client of the broker when endpoint is Secured.
// A nil Peer, or an ipc endpoint, leaves s plaintext.
func (p *Peer) Apply(s *zmq.Socket, endpoint string) error {
	if p == nil || !Secured(endpoint) {
		return nil
	}
	if err := s.ClientAuthCurve(p.ServerKey, p.Cert.Public, p.Cert.Secret); err != nil {
		return fmt.Errorf("curve client options: %w", err)
	}
	return nil
}
