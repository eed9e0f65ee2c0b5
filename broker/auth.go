package broker

// Authorisation: which commands a CURVE key's role may send (package auth
// decides the role; an unauthenticated endpoint is Open).

import (
	"fmt"
	"strings"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/wire"
)

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
