package wire

import "fmt"

// Command is the one-byte message type that travels in a frame of its own.
// The values are aserpc 0.1.3's; see reference-behaviour.md §2.2.
type Command byte

// Message type codes. HEARTBEAT and MANAGER_HEARTBEAT were removed in 0.1.3
// but 0.1.0–0.1.2 peers still send them, so they are kept and treated as
// plain heartbeats.
const (
	Ready            Command = 0x01 // worker → broker: register, idle heartbeat, ready for the next job
	Heartbeat        Command = 0x02 // worker → broker: 0.1.0–0.1.2 idle heartbeat
	Busy             Command = 0x03 // worker → broker: alive while computing
	Request          Command = 0x04 // client → broker: calculation request
	Response         Command = 0x05 // broker → client, worker → broker: result (success or calculator error)
	List             Command = 0x06 // client → broker: list calculators
	Status           Command = 0x07 // client → broker: broker status
	Shutdown         Command = 0x08 // client → broker (stop broker); broker → worker/manager (stop)
	WorkerShutdown   Command = 0x09 // client → broker: stop all workers of one calculator
	Error            Command = 0x0a // broker → client: broker-generated error
	Disconnect       Command = 0x0b // worker → broker: graceful deregistration
	SpawnRequest     Command = 0x0c // broker → manager: start a worker
	SpawnResponse    Command = 0x0d // manager → broker: spawn outcome
	ManagerReady     Command = 0x0e // manager → broker: register + heartbeat
	ManagerHeartbeat Command = 0x0f // manager → broker: 0.1.2 heartbeat

	// WorkerJoined is ours, not the reference's: broker → a manager that
	// announced itself with a capabilities frame, ["", 0x10, calc], sent
	// when a worker registers for one of its calculators, so the manager
	// knows its child is up (and a start timeout can be enforced).
	WorkerJoined Command = 0x10

	// Progress is ours: broker → a client whose request carried a
	// correlation frame (only DEALER clients send one), ["", 0x11,
	// {"state": "dispatched"|"busy"|"requeued"}, corr]. It tells the client
	// that its request reached a worker, that the worker is alive while
	// computing (each BUSY), or that it is waiting for another worker, so
	// the client can separate "no worker" from "still computing".
	Progress Command = 0x11
	// Cancel is ours: client → broker ["", 0x12, corr]: forget the request
	// sent with that correlation frame (dropped from the queue; a running
	// one's result is discarded). No reply.
	Cancel Command = 0x12
	// WorkerExited is ours: manager → broker ["", 0x13, calc, pid, text]
	// when a child that had registered exits unexpectedly: how it ended
	// (exit code, signal) and the last lines of its log. A worker of ours
	// names its pid in READY (["", READY, calc, pid]), so the broker can
	// give a client whose job died with that worker the reason.
	WorkerExited Command = 0x13
	// SessionEnd is ours: client → broker ["", 0x14, calc, key]: end the
	// session this client holds under affinity key on calc (its worker
	// goes back to everyone). No reply.
	SessionEnd Command = 0x14
)

var commandNames = [...]string{
	Ready:            "READY",
	Heartbeat:        "HEARTBEAT",
	Busy:             "BUSY",
	Request:          "REQUEST",
	Response:         "RESPONSE",
	List:             "LIST",
	Status:           "STATUS",
	Shutdown:         "SHUTDOWN",
	WorkerShutdown:   "WORKER_SHUTDOWN",
	Error:            "ERROR",
	Disconnect:       "DISCONNECT",
	SpawnRequest:     "SPAWN_REQUEST",
	SpawnResponse:    "SPAWN_RESPONSE",
	ManagerReady:     "MANAGER_READY",
	ManagerHeartbeat: "MANAGER_HEARTBEAT",
	WorkerJoined:     "WORKER_JOINED",
	Progress:         "PROGRESS",
	Cancel:           "CANCEL",
	WorkerExited:     "WORKER_EXITED",
	SessionEnd:       "SESSION_END",
}

// String returns the reference's name for c, or UNKNOWN(0xNN).
func (c Command) String() string {
	if int(c) < len(commandNames) && commandNames[c] != "" {
		return commandNames[c]
	}
	return fmt.Sprintf("UNKNOWN(0x%02x)", byte(c))
}

// Frame returns c as a one-byte frame.
func (c Command) Frame() []byte { return []byte{byte(c)} }

// ParseCommand reads a command frame: exactly one byte.
func ParseCommand(frame []byte) (Command, bool) {
	if len(frame) != 1 {
		return 0, false
	}
	return Command(frame[0]), true
}
