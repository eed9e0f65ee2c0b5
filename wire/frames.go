package wire

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Frame layouts (reference-behaviour.md §2.3). Frames are listed as a
// DEALER peer sends and receives them: a ROUTER adds (on receipt) and
// consumes (on send) the identity frame in front; a REQ client adds and
// strips the empty delimiter itself, so it sends [cmd, ...] and receives
// [cmd, payload].

// Errors of the frame parsers.
var (
	ErrShortMessage = errors.New("wire: message has too few frames")
	ErrLongMessage  = errors.New("wire: message has too many frames")
	ErrDelimiter    = errors.New("wire: missing empty delimiter frame")
	ErrCommand      = errors.New("wire: command frame is not one byte")
	ErrName         = errors.New("wire: calculator name is empty, too long or not UTF-8")
)

// MaxNameLen is the longest calculator name accepted.
const MaxNameLen = 256

// ValidName reports whether b can be a calculator name.
func ValidName(b []byte) bool { return len(b) > 0 && len(b) <= MaxNameLen && utf8.Valid(b) }

// --- worker side (DEALER to the broker backend) -----------------------------

// WorkerMessage builds ["", cmd, name] (READY, BUSY, DISCONNECT, HEARTBEAT).
func WorkerMessage(cmd Command, name string) [][]byte {
	return [][]byte{{}, cmd.Frame(), []byte(name)}
}

// WorkerResponse builds ["", RESPONSE, client, payload].
func WorkerResponse(client, payload []byte) [][]byte {
	return [][]byte{{}, Response.Frame(), client, payload}
}

// ToWorker is what a worker receives from the broker.
type ToWorker struct {
	Shutdown bool // ["", SHUTDOWN]
	Joined   bool // ["", WORKER_JOINED]: our broker acknowledges the registration
	// SessionEnd: ["", SESSION_END]: the session this worker was reserved
	// for ended; it serves no more direct requests.
	SessionEnd bool
	Client     []byte // job: ["", client, request(, hint)]
	Request    []byte
	// Hint is set on a job for a batching worker (["", client, request,
	// hint]); nil otherwise.
	Hint *JobHint
}

// ParseToWorker parses a message a worker's DEALER received: a job
// ["", client, request] (["", client, request, hint] for a batching worker),
// a stop ["", 0x08] or a registration's acknowledgement ["", 0x10]. Slices alias frames.
func ParseToWorker(frames [][]byte) (ToWorker, error) {
	if len(frames) < 2 {
		return ToWorker{}, ErrShortMessage
	}
	if len(frames[0]) != 0 {
		return ToWorker{}, ErrDelimiter
	}
	if len(frames) == 2 {
		if c, ok := ParseCommand(frames[1]); ok && c == Shutdown {
			return ToWorker{Shutdown: true}, nil
		}
		if c, ok := ParseCommand(frames[1]); ok && c == WorkerJoined {
			return ToWorker{Joined: true}, nil
		}
		if c, ok := ParseCommand(frames[1]); ok && c == SessionEnd {
			return ToWorker{SessionEnd: true}, nil
		}
		return ToWorker{}, fmt.Errorf("wire: unexpected 2-frame message to a worker: %w", ErrCommand)
	}
	if len(frames) > 4 {
		return ToWorker{}, ErrLongMessage
	}
	m := ToWorker{Client: frames[1], Request: frames[2]}
	if len(frames) == 4 {
		h, err := ParseJobHint(frames[3])
		if err != nil {
			return ToWorker{}, err
		}
		m.Hint = &h
	}
	return m, nil
}

// --- manager side (DEALER to the broker backend) ----------------------------

// ManagerReady builds ["", MANAGER_READY, "a,b,..."].
func ManagerReadyMessage(names []string) [][]byte {
	b := []byte{}
	for i, n := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, n...)
	}
	return [][]byte{{}, ManagerReady.Frame(), b}
}

// SpawnResponseMessage builds ["", SPAWN_RESPONSE, name, "ok"|"error", text]
// — always five frames, as the reference manager sends.
func SpawnResponseMessage(name string, ok bool, text string) [][]byte {
	status := "error"
	if ok {
		status = "ok"
	}
	return [][]byte{{}, SpawnResponse.Frame(), []byte(name), []byte(status), []byte(text)}
}

// ToManager is what a manager receives from the broker.
type ToManager struct {
	Shutdown bool
	Spawn    string // calculator to spawn a worker for
}

// ParseToManager parses ["", SPAWN_REQUEST, name] or ["", SHUTDOWN].
func ParseToManager(frames [][]byte) (ToManager, error) {
	if len(frames) < 2 {
		return ToManager{}, ErrShortMessage
	}
	if len(frames[0]) != 0 {
		return ToManager{}, ErrDelimiter
	}
	c, ok := ParseCommand(frames[1])
	if !ok {
		return ToManager{}, ErrCommand
	}
	switch c {
	case Shutdown:
		return ToManager{Shutdown: true}, nil
	case SpawnRequest:
		if len(frames) < 3 {
			return ToManager{}, ErrShortMessage
		}
		if !ValidName(frames[2]) {
			return ToManager{}, ErrName
		}
		return ToManager{Spawn: string(frames[2])}, nil
	}
	return ToManager{}, fmt.Errorf("wire: unexpected %s to a manager", c)
}

// --- client side ------------------------------------------------------------

// ClientReply is a broker's reply as a REQ client receives it:
// [RESPONSE|ERROR, payload] (a DEALER client sees a leading empty frame,
// and its correlation frame after the payload).
type ClientReply struct {
	Command Command
	Payload []byte
	Corr    []byte
}

// ParseClientReply parses a reply. dealer says whether frames start with
// the empty delimiter (DEALER) or not (REQ).
func ParseClientReply(frames [][]byte, dealer bool) (ClientReply, error) {
	if dealer {
		if len(frames) < 1 {
			return ClientReply{}, ErrShortMessage
		}
		if len(frames[0]) != 0 {
			return ClientReply{}, ErrDelimiter
		}
		frames = frames[1:]
	}
	if len(frames) < 2 {
		return ClientReply{}, ErrShortMessage
	}
	if len(frames) > 3 {
		return ClientReply{}, ErrLongMessage
	}
	c, ok := ParseCommand(frames[0])
	if !ok {
		return ClientReply{}, ErrCommand
	}
	if c != Response && c != Error {
		return ClientReply{}, fmt.Errorf("wire: unexpected reply type %s", c)
	}
	r := ClientReply{Command: c, Payload: frames[1]}
	if len(frames) == 3 {
		r.Corr = frames[2]
	}
	return r, nil
}
