package pyhost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// Mode says how Python runs.
type Mode string

const (
	// ModeAuto embeds when a shared libpython loads, else runs a subprocess.
	ModeAuto Mode = "auto"
	// ModeEmbed loads the interpreter's libpython into this process.
	ModeEmbed Mode = "embed"
	// ModeSubprocess runs the helper under the interpreter as a child.
	ModeSubprocess Mode = "subprocess"
)

// ParseMode accepts "", "auto", "embed" and "subprocess".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeAuto:
		return ModeAuto, nil
	case ModeEmbed, ModeSubprocess:
		return Mode(s), nil
	}
	return "", fmt.Errorf("python mode %q: want auto, embed or subprocess", s)
}

// Config says which interpreter to host and how.
type Config struct {
	// Python is the interpreter, exactly as given (see Choose).
	Python string
	// Reason says why Python was chosen; it goes into the log line.
	Reason string
	// Mode is auto (default), embed or subprocess.
	Mode Mode
	// Lib overrides libpython discovery (like PYTHONNET_PYDLL).
	Lib string
	// Home overrides the Python home (default: base_prefix[:base_exec_prefix]).
	Home string
	// Argv becomes sys.argv (default: os.Args).
	Argv []string
	// Env is set for Python before it starts (OMP_NUM_THREADS,
	// CUDA_VISIBLE_DEVICES ...). Python copies the environment at start, so
	// this is the only time to set it. In embed mode it is set in this
	// process; PYTHONHOME, PYTHONPATH and PYTHONFAULTHANDLER are removed
	// unless set here.
	Env map[string]string
	// StartMethod is multiprocessing's start method (default "spawn": fork
	// in a process with Go's threads is unsafe). "-" leaves Python's default.
	StartMethod string
	// HelperDir is where the helper module is written (default: the user
	// cache directory).
	HelperDir string
	// Logger receives the start line (default slog.Default()).
	Logger *slog.Logger
}

// Host is one Python interpreter serving helper operations: embedded in
// this process or run as a child. Its methods may be called from any
// goroutine; operations run one at a time, in the order they arrive.
type Host struct {
	info    *Info
	lib     Lib
	backend backend
	log     *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

type backend interface {
	call(ctx context.Context, op string, meta []byte, bufs [][]byte) (reply, error)
	close() error
	mode() Mode
}

type reply struct {
	meta   []byte
	arrays [][]byte
}

// Open probes cfg.Python, starts it embedded or as a subprocess, imports
// the helper and bootstraps (sys.argv, multiprocessing start method). It
// logs one line saying which interpreter, which libpython, which mode and
// why. In embed mode a process can Open only one interpreter, once.
func Open(ctx context.Context, cfg Config) (*Host, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	mode, err := ParseMode(string(cfg.Mode))
	if err != nil {
		return nil, err
	}
	if cfg.Python == "" {
		return nil, errors.New("pyhost: no python interpreter given")
	}
	info, err := Probe(ctx, cfg.Python)
	if err != nil {
		return nil, err
	}
	if info.GILDisabled {
		return nil, fmt.Errorf("%s is a free-threaded build (%s), which pyhost does not support yet", cfg.Python, info.Version)
	}
	dir, err := writeHelper(cfg.HelperDir)
	if err != nil {
		return nil, err
	}
	home := cfg.Home
	if home == "" {
		home = info.Home()
	}
	h := &Host{info: info}
	why := ""
	if mode != ModeSubprocess {
		lib := Lib{Path: cfg.Lib, How: "configured"}
		if cfg.Lib == "" {
			lib, err = FindLib(info)
		}
		if err == nil {
			var e *embedded
			e, err = startEmbedded(info, lib.Path, home, dir, cfg.Env)
			if err == nil {
				h.lib, h.backend = lib, e
			}
		}
		if err != nil {
			if mode == ModeEmbed {
				return nil, err
			}
			why = err.Error()
		}
	}
	if h.backend == nil {
		s, err := startSubprocess(cfg.Python, dir, cfg.Env)
		if err != nil {
			return nil, err
		}
		h.backend = s
	}
	h.log = log.With("python", cfg.Python, "mode", string(h.backend.mode()))

	argv := cfg.Argv
	if len(argv) == 0 {
		argv = os.Args
	}
	sm := cfg.StartMethod
	switch sm {
	case "":
		sm = "spawn"
	case "-":
		sm = ""
	}
	var boot struct {
		Executable string `json:"executable"`
		Prefix     string `json:"prefix"`
	}
	if err := h.op(ctx, "bootstrap", map[string]any{"argv": argv, "start_method": sm}, nil, &boot, nil); err != nil {
		h.backend.close()
		return nil, fmt.Errorf("bootstrap %s: %w", cfg.Python, err)
	}
	attrs := []any{"version", info.XY(), "chosen_by", cfg.Reason, "sys.executable", boot.Executable, "sys.prefix", boot.Prefix}
	if h.lib.Path != "" {
		attrs = append(attrs, "libpython", h.lib.Path, "found_by", h.lib.How)
	}
	if why != "" {
		attrs = append(attrs, "why", why)
	} else if mode == ModeSubprocess {
		attrs = append(attrs, "why", "configured")
	}
	h.log.Info("python interpreter", attrs...)
	if boot.Executable != info.Executable {
		h.log.Warn("embedded sys.executable differs from the interpreter's own", "embedded", boot.Executable, "probed", info.Executable)
	}
	return h, nil
}

// Info is what the interpreter reported about itself.
func (h *Host) Info() *Info { return h.info }

// Mode is the mode actually in use (never ModeAuto).
func (h *Host) Mode() Mode { return h.backend.mode() }

// Lib is the libpython in use (zero in subprocess mode).
func (h *Host) Lib() Lib { return h.lib }

// Close runs Python's atexit handlers and flushes sys.stdout/sys.stderr;
// the embedded interpreter is not finalised (it lives until the process
// exits), a subprocess exits. Close waits for a call in progress: cancel
// its context first to interrupt it. Close is idempotent; later calls on h
// return ErrClosed.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		err := h.op(context.Background(), "shutdown", nil, nil, nil, nil)
		if cerr := h.backend.close(); err == nil {
			err = cerr
		}
		h.closeErr = err
	})
	return h.closeErr
}

// Run runs fn on the Python thread, with the GIL released, and returns its
// error. Host methods that fn calls run right there, without handing a job
// to another thread: the zero-dispatch path for a request loop (a worker's
// receive → Compute → send), worth 50–100 µs per request on small systems.
// Calls from other goroutines wait until fn returns, so fn should return
// when it has nothing to do. fn must not call Run. In subprocess mode fn
// simply runs on the calling goroutine.
func (h *Host) Run(ctx context.Context, fn func() error) error {
	if e, ok := h.backend.(*embedded); ok {
		return e.runInline(ctx, fn)
	}
	return fn()
}

// okPrefix starts every successful reply of the helper (aserpc_pyhost.handle).
var okPrefix = []byte(`{"ok": true`)

// op runs one helper operation: meta in as JSON, out decoded into out,
// result arrays returned. A Python exception becomes a *PyError; one raised
// because ctx was cancelled also matches ctx.Err() with errors.Is.
func (h *Host) op(ctx context.Context, name string, in any, bufs [][]byte, out any, arrays *[][]byte) error {
	var meta []byte
	if in != nil {
		var err error
		if meta, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	r, err := h.backend.call(ctx, name, meta, bufs)
	if err == nil && !bytes.HasPrefix(r.meta, okPrefix) {
		var head struct {
			OK    bool     `json:"ok"`
			Error *PyError `json:"error"`
		}
		if jerr := json.Unmarshal(r.meta, &head); jerr != nil {
			return fmt.Errorf("%s: bad reply: %w", name, jerr)
		}
		if !head.OK {
			if head.Error == nil {
				head.Error = &PyError{Type: "builtins.SystemError", Message: "error reply without error"}
			}
			err = head.Error
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && IsKeyboardInterrupt(err) {
			return fmt.Errorf("%w: %w", cerr, err)
		}
		return err
	}
	if rm, ok := out.(*resultMeta); ok {
		if err := decodeResultMeta(r.meta, rm); err != nil {
			return fmt.Errorf("%s: bad reply: %w", name, err)
		}
	} else if out != nil {
		d := json.NewDecoder(bytes.NewReader(r.meta))
		d.UseNumber()
		if err := d.Decode(out); err != nil {
			return fmt.Errorf("%s: bad reply: %w", name, err)
		}
	}
	if arrays != nil {
		*arrays = r.arrays
	}
	return nil
}
