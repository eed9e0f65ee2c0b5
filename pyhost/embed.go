package pyhost

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "capi.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// One libpython per process, initialised once, never finalised: two
// libpythons loaded RTLD_GLOBAL would clash, and re-initialising after
// Py_FinalizeEx crashes numpy. embedMu guards the process-wide slot.
var (
	embedMu     sync.Mutex
	embeddedLib string
)

// embedded runs all Python on one goroutine locked to its OS thread. That
// thread initialised the interpreter, so it is Python's main thread:
// threading.main_thread(), signal.signal(), thread-local state (torch's
// grad mode) and pending calls all work there and nowhere else. It holds the
// GIL only while running a job and releases it when idle, so Python's own
// background threads keep running between requests.
//
// Go code never calls Python from any other goroutine (the one exception is
// ph_cancel, which is built for that). Heartbeats and socket I/O therefore
// never wait on the GIL.
type embedded struct {
	jobs  chan func()
	quit  chan struct{} // closed by close(); senders select on it
	token atomic.Int64

	// Owned by the Python thread; only touched inside jobs.
	handle, release, format *C.PyObject
	inc                     *C.PyObject    // benchmarks' trivial function
	ts                      unsafe.Pointer // thread state while a Run function has the GIL released
	inRun                   bool           // a Run function is executing on the Python thread

	mu     sync.Mutex // guards parked, leaks, closed
	parked []*runtime.Pinner
	leaks  int
	closed bool
}

// startEmbedded loads lib, initialises the interpreter per the design and
// imports the helper from helperDir, all on a new locked thread. A failure
// before initialisation (dlopen, a missing symbol, a version mismatch)
// leaves the process able to fall back to subprocess mode.
func startEmbedded(info *Info, lib, home, helperDir string, env map[string]string) (*embedded, error) {
	embedMu.Lock()
	defer embedMu.Unlock()
	if embeddedLib != "" {
		return nil, fmt.Errorf("%w (%s)", ErrAlreadyEmbedded, embeddedLib)
	}
	e := &embedded{jobs: make(chan func()), quit: make(chan struct{})}
	errc := make(chan error, 1)
	go e.loop(info, lib, home, helperDir, env, errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	embeddedLib = lib
	return e, nil
}

func (e *embedded) loop(info *Info, lib, home, helperDir string, env map[string]string, errc chan<- error) {
	// Never unlocked: the OS thread is the interpreter's main thread for the
	// life of the process. If this goroutine ever returned, Go would
	// terminate the thread under Python.
	runtime.LockOSThread()
	C.ph_mark_python_thread()
	initialised, err := e.boot(info, lib, home, helperDir, env)
	if err != nil {
		errc <- err
		if !initialised {
			return // nothing of Python runs on this thread: it may go
		}
		select {} // a half-bootstrapped interpreter: keep its main thread parked
	}
	ts := C.ph_save_thread() // release the GIL while idle
	errc <- nil
	for {
		select {
		case job := <-e.jobs:
			C.ph_restore_thread(ts)
			job()
			ts = C.ph_save_thread() // never block in Go while holding the GIL
		case <-e.quit:
			select {} // closed: park the thread, the interpreter stays valid until exit
		}
	}
}

func (e *embedded) boot(info *Info, lib, home, helperDir string, env map[string]string) (initialised bool, err error) {
	clib := C.CString(lib)
	defer C.free(unsafe.Pointer(clib))
	if C.ph_load(clib) != 0 {
		return false, fmt.Errorf("load %s: %s", lib, C.GoString(C.ph_last_error()))
	}
	// Py_GetVersion is safe before initialisation: refuse a library that is
	// not the probed interpreter's version before it can do any harm.
	v := C.GoString(C.ph_version())
	if !strings.HasPrefix(v, info.XY()+".") {
		return false, fmt.Errorf("load %s: library is Python %q, interpreter %s is %s", lib, v, info.Python, info.XY())
	}
	// Python copies the environment at initialisation; Go's os.Setenv
	// reaches C's environ (cgo is linked), so set it now, not later.
	for _, k := range []string{"PYTHONHOME", "PYTHONPATH", "PYTHONFAULTHANDLER"} {
		if _, ok := env[k]; !ok {
			os.Unsetenv(k) // another install's paths; faulthandler would take Go's SIGSEGV
		}
	}
	for k, v := range env {
		os.Setenv(k, v)
	}
	cprog := C.CString(info.Python) // as given: its location identifies the venv
	defer C.free(unsafe.Pointer(cprog))
	var chome *C.char
	if home != "" {
		chome = C.CString(home)
		defer C.free(unsafe.Pointer(chome))
	}
	if C.ph_init(cprog, chome) != 0 {
		return false, fmt.Errorf("initialise %s: %s", lib, C.GoString(C.ph_last_error()))
	}
	cdir := C.CString(helperDir)
	defer C.free(unsafe.Pointer(cdir))
	if C.ph_sys_path_insert0(cdir) != 0 {
		return true, fmt.Errorf("sys.path: %w", e.fetchError())
	}
	for _, a := range []struct {
		dst  **C.PyObject
		name string
	}{{&e.format, "format_exception"}, {&e.handle, "handle"}, {&e.release, "release"}, {&e.inc, "_bench_inc"}} {
		cmod, cname := C.CString(helperModule), C.CString(a.name)
		*a.dst = C.ph_import_attr(cmod, cname)
		C.free(unsafe.Pointer(cmod))
		C.free(unsafe.Pointer(cname))
		if *a.dst == nil {
			return true, fmt.Errorf("import %s from %s: %w", helperModule, helperDir, e.fetchError())
		}
	}
	return true, nil
}

// fetchError turns the pending Python exception into a *PyError and clears
// it. Python thread only.
func (e *embedded) fetchError() error {
	var n C.int64_t
	p := C.ph_fetch_error(e.format, &n)
	if p == nil {
		return &PyError{Type: "builtins.SystemError", Message: "error return without exception set"}
	}
	defer C.free(unsafe.Pointer(p))
	var pe PyError
	if err := json.Unmarshal(C.GoBytes(unsafe.Pointer(p), C.int(n)), &pe); err != nil {
		return &PyError{Type: "builtins.SystemError", Message: "unreadable exception: " + err.Error()}
	}
	return &pe
}

// runInline runs fn on the Python thread without the GIL: see Host.Run.
func (e *embedded) runInline(ctx context.Context, fn func() error) error {
	if C.ph_on_python_thread() != 0 {
		return errors.New("pyhost: Run called from the Python thread")
	}
	var err error
	if derr := e.do(ctx, func() {
		e.ts = unsafe.Pointer(C.ph_save_thread()) // let Python threads run while fn waits on I/O
		e.inRun = true
		defer func() {
			e.inRun = false
			C.ph_restore_thread(e.ts)
		}()
		err = fn()
	}); derr != nil {
		return derr
	}
	return err
}

// do runs fn on the Python thread with the GIL held and waits for it: the
// per-request hand-off. It returns ctx's error if the thread is not free in
// time; once fn has started it always runs to completion.
func (e *embedded) do(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	job := func() { fn(); close(done) }
	select {
	case e.jobs <- job:
	case <-e.quit:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}

func (e *embedded) mode() Mode { return ModeEmbed }

// call runs one helper operation. Request buffers are Go memory pinned for
// the job and handed to Python as memoryviews (writable only so that the
// helper can track them; its arrays are read-only): no copy on the way in
// (ase.Atoms makes its own). Result arrays are copied once, through the
// buffer protocol, into Go memory before the job ends.
func (e *embedded) call(ctx context.Context, op string, meta []byte, bufs [][]byte) (reply, error) {
	var pin runtime.Pinner
	for _, b := range bufs {
		if len(b) > 0 {
			pin.Pin(&b[0])
		}
	}
	token := e.token.Add(1)
	var (
		out     reply
		callErr error
		leaked  int64
	)
	if C.ph_on_python_thread() != 0 {
		// Called from a Run function: already on the Python thread, no
		// hand-off. Only cancellation needs another goroutine.
		if !e.inRun {
			pin.Unpin()
			return reply{}, errors.New("pyhost: Host called from inside a Python job")
		}
		// A callback, not a watcher goroutine: starting one and waking it
		// to exit cost tens of µs of scheduler work per request. A cancel
		// that fires after the call is a no-op (the token no longer runs).
		stop := func() bool { return false }
		if ctx.Done() != nil {
			stop = context.AfterFunc(ctx, func() { C.ph_cancel(C.int64_t(token)) })
		}
		C.ph_restore_thread(e.ts)
		out, leaked, callErr = e.run(op, meta, bufs, token)
		e.ts = unsafe.Pointer(C.ph_save_thread())
		stop()
		e.unpin(&pin, leaked)
		return out, callErr
	}
	done := make(chan struct{})
	job := func() {
		defer close(done)
		out, leaked, callErr = e.run(op, meta, bufs, token)
	}
	select {
	case e.jobs <- job:
	case <-e.quit:
		pin.Unpin()
		return reply{}, ErrClosed
	case <-ctx.Done():
		pin.Unpin()
		return reply{}, ctx.Err()
	}
	select {
	case <-done:
	case <-ctx.Done():
		// Raise KeyboardInterrupt at the next bytecode boundary; a C kernel
		// that holds the GIL finishes first. Then wait: the job must end
		// before its buffers are unpinned.
		C.ph_cancel(C.int64_t(token))
		<-done
	}
	e.unpin(&pin, leaked)
	return out, callErr
}

// unpin releases a job's request buffers, unless Python kept views of
// them (a calculator holding on to a memoryview): then the memory must stay
// valid and unmoved for good, and is parked.
func (e *embedded) unpin(pin *runtime.Pinner, leaked int64) {
	if leaked == 0 {
		pin.Unpin()
		return
	}
	e.mu.Lock()
	e.parked = append(e.parked, pin)
	e.leaks += int(leaked)
	e.mu.Unlock()
}

// run is the body of one job, on the Python thread with the GIL held.
func (e *embedded) run(op string, meta []byte, bufs [][]byte, token int64) (reply, int64, error) {
	views := C.ph_views_new(C.int(len(bufs)))
	if views == nil {
		return reply{}, 0, e.fetchError()
	}
	defer C.ph_decref(views)
	for i, b := range bufs {
		var p unsafe.Pointer
		if len(b) > 0 {
			p = unsafe.Pointer(&b[0])
		}
		if C.ph_views_set(views, C.int(i), p, C.int64_t(len(b))) != 0 {
			return reply{}, 0, e.fetchError()
		}
	}
	cop := C.CString(op)
	defer C.free(unsafe.Pointer(cop))
	var cmeta *C.char
	if len(meta) > 0 {
		cmeta = (*C.char)(unsafe.Pointer(&meta[0]))
	}
	res := C.ph_handle(e.handle, cop, cmeta, C.int64_t(len(meta)), views, C.int64_t(token))
	var err error
	if res == nil {
		err = e.fetchError()
	}
	leaked := C.ph_release_views(e.release, views)
	if leaked < 0 {
		if err == nil {
			err = e.fetchError()
		} else {
			C.free(unsafe.Pointer(C.ph_fetch_error(nil, new(C.int64_t))))
		}
		leaked = 0
	}
	if res == nil {
		return reply{}, int64(leaked), err
	}
	defer C.ph_decref(res)
	var out reply
	var p *C.char
	n := C.ph_result_meta(res, &p)
	if n < 0 {
		return reply{}, int64(leaked), e.fetchError()
	}
	out.meta = C.GoBytes(unsafe.Pointer(p), C.int(n))
	count := C.ph_result_count(res)
	if count < 0 {
		return reply{}, int64(leaked), e.fetchError()
	}
	out.arrays = make([][]byte, count)
	for i := C.int64_t(0); i < count; i++ {
		n := C.ph_result_len(res, i)
		if n < 0 {
			return reply{}, int64(leaked), e.fetchError()
		}
		buf := make([]byte, n)
		var dst unsafe.Pointer
		if n > 0 {
			dst = unsafe.Pointer(&buf[0])
		}
		if C.ph_result_copy(res, i, dst, n) != 0 {
			return reply{}, int64(leaked), e.fetchError()
		}
		out.arrays[i] = buf
	}
	return out, int64(leaked), err
}

// callInt calls the helper's trivial x+1 through the typed fast path: one
// cgo crossing per call. Python thread only (inside do).
func (e *embedded) callInt(x int64) (int64, error) {
	var cerr C.int
	v := C.ph_call_int(e.inc, C.int64_t(x), &cerr)
	if cerr != 0 {
		return 0, e.fetchError()
	}
	return int64(v), nil
}

// close marks the backend closed; the interpreter itself lives on until the
// process exits (no Py_FinalizeEx: it waits for non-daemon threads and some
// extensions crash in it).
func (e *embedded) close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.closed {
		e.closed = true
		close(e.quit)
	}
	return nil
}
