// Package pyhost runs Python calculator code from the user's own
// environment (a venv, a uvx environment, conda, Debian's python3) for the
// aserpc worker: any CPython 3.9–3.15, chosen at run time (tested: pyenv
// 3.9–3.13, Debian 12's 3.11, Debian unstable's 3.14 and 3.15 — see
// docs/fidelity.md; free-threaded builds are refused with a clear error).
//
// It follows ../shared/design/pyhost.md. In embed mode (the default when
// possible) the interpreter's shared libpython is dlopen'ed into this
// process through a small C layer (capi.c) that reaches the C API only by
// dlsym: no Python headers at build time and no libpython on the link line,
// so one binary serves every Python version. Interpreters without a shared
// libpython (static builds) run the same helper module as a child process
// instead (subprocess mode), speaking the same operations over a pipe.
//
// # Use
//
//	ch, _ := pyhost.Choose(flagPython)            // which interpreter, and why
//	h, err := pyhost.Open(ctx, pyhost.Config{Python: ch.Python, Reason: ch.Reason})
//	defer h.Close()                               // atexit handlers + flush
//	f, err := h.Resolve(ctx, pyhost.FactorySpec{Spec: "LJ"})
//	calc, err := f.New(ctx)                       // once, before registering
//	res, err := calc.Compute(ctx, &pyhost.Request{Numbers: ..., Positions: ...})
//
// A worker that wants no thread hand-off per request runs its request loop
// inside h.Run(ctx, func() error { ... calc.Compute(...) ... }): fn then
// runs on the Python thread itself (worth 50–100 µs per request on small
// systems; nothing for ML models that take milliseconds).
//
// Errors raised in Python are *PyError with type, message and traceback.
// Helper objects and functions in a *file* target ("dir/f.py:fn") live in a
// module that multiprocessing children cannot import; factories that pickle
// their own functions to spawn children should live in importable modules.
//
// # Threads and ownership
//
// All Python runs on one goroutine locked to its OS thread for the life of
// the process; that thread initialised the interpreter, so it is Python's
// main thread. It holds the GIL only while running a job and releases it
// when idle. Every Host method hands one job to it (one hand-off per
// request, never per C call) and waits; other goroutines (heartbeats, ZMQ
// I/O) never touch Python and never wait on the GIL. Cancelling a method's
// context raises KeyboardInterrupt in Python at the next bytecode boundary.
//
// Request arrays stay in the caller's memory: they are pinned for the call
// and numpy sees them without a copy, as read-only arrays (buffers up to
// 4 KiB are copied, which is cheaper). After each call the helper checks
// whether any Python object still points into that memory (every derived
// array has a tracked ctypes wrapper as its base; numpy keeps no buffer
// export, so memoryview.release() alone cannot tell); if so the memory
// stays pinned for good. Result arrays are copied once into Go memory that
// the caller then owns. Python objects (factories,
// calculators) live in the helper and are referred to by id, never by a
// pointer Go could free on the wrong thread.
//
// One libpython per process, initialised once and never finalised
// (Py_FinalizeEx waits on non-daemon threads and re-initialising crashes
// numpy): a process embeds at most one interpreter. Tests that embed one
// therefore run in a child process each.
package pyhost
