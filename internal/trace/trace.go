// Package trace timestamps fixed points on a request's path through the
// broker and the worker, for `just bench-client` to say where an MD step's
// time goes. It is off unless ASERPC_TRACE names a file prefix when the
// process starts; then each process appends "point nanoseconds" lines to
// PREFIX.PID (the worker's Python helper to PREFIX.PID.py) when its buffer
// fills and at exit. Times are CLOCK_MONOTONIC, the clock of Python's
// time.monotonic_ns, so marks from every process line up. Off, a mark
// costs a load and a branch.
package trace

import (
	"bufio"
	"fmt"
	"os"
	"sync"
	_ "unsafe" // go:linkname
)

// Point names a place on the path. The Python helper and the bench use the
// same numbers (pyhost/aserpc_pyhost.py and aserpc_compute.py, bench/client/bench_md.py).
type Point uint8

const (
	BrokerGotRequest   Point = 1  // a client's REQUEST read off the frontend
	BrokerSentRequest  Point = 2  // ... about to be handed to libzmq for a worker
	BrokerGotResponse  Point = 3  // a worker's RESPONSE read off the backend
	BrokerSentResponse Point = 4  // ... about to be handed to libzmq for the client
	WorkerGot          Point = 11 // a message read by the worker loop
	WorkerFromPython   Point = 13 // back from Python, results in Go memory
	WorkerSent         Point = 14 // RESPONSE encoded, about to be handed to libzmq
)

// Marks kept before a write to the file.
const bufferMarks = 1 << 14

var (
	prefix = os.Getenv("ASERPC_TRACE")
	on     = prefix != ""

	mu    sync.Mutex
	marks []mark
)

type mark struct {
	p  Point
	ns int64
}

//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Mark records p now.
func Mark(p Point) {
	if !on {
		return
	}
	t := nanotime()
	mu.Lock()
	marks = append(marks, mark{p, t})
	full := len(marks) >= bufferMarks
	mu.Unlock()
	if full {
		Flush()
	}
}

// Flush appends the buffered marks to PREFIX.PID. The process calls it
// on its way out; a no-op when tracing is off.
func Flush() error {
	if !on {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	if len(marks) == 0 {
		return nil
	}
	f, err := os.OpenFile(fmt.Sprintf("%s.%d", prefix, os.Getpid()), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, m := range marks {
		fmt.Fprintf(w, "%d %d\n", m.p, m.ns)
	}
	marks = marks[:0]
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
