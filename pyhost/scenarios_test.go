package pyhost

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// childScenarios run inside a child process with an open Host; they report
// findings as JSON for the parent test to judge.
var childScenarios = map[string]func(context.Context, *Host, childJob) (map[string]any, error){
	"compute": scenarioCompute,
	"battery": scenarioBattery,
	"ticker":  scenarioTicker,
}

// scenarioCompute computes energy and forces on each input with one
// calculator instance, as the worker does.
func scenarioCompute(ctx context.Context, h *Host, job childJob) (map[string]any, error) {
	f, err := h.Resolve(ctx, FactorySpec{Spec: job.Factory, Kwargs: job.Kwargs})
	if err != nil {
		return nil, err
	}
	calc, err := f.New(ctx)
	if err != nil {
		return nil, err
	}
	results := map[string]any{}
	for _, d := range job.Dirs {
		s, err := readStructure(d)
		if err != nil {
			return nil, err
		}
		r, err := calc.Compute(ctx, s.request())
		if err != nil {
			return nil, err
		}
		if results[d], err = digest(r); err != nil {
			return nil, err
		}
	}
	return map[string]any{"results": results}, nil
}

func errInfo(err error) map[string]any {
	if err == nil {
		return map[string]any{"ok": true}
	}
	m := map[string]any{"error": err.Error(), "canceled": errors.Is(err, context.Canceled)}
	var pe *PyError
	if errors.As(err, &pe) {
		m["type"], m["message"], m["traceback"] = pe.Type, pe.Message, pe.Traceback
	}
	return m
}

// scenarioBattery exercises everything a worker relies on besides the
// numbers themselves: errors, cancellation, the environment, resolution.
func scenarioBattery(ctx context.Context, h *Host, job childJob) (map[string]any, error) {
	out := map[string]any{}
	uf := job.Env["TESTDATA"] + "/userfuncs.py"

	// LJ on the given inputs.
	c, err := scenarioCompute(ctx, h, job)
	if err != nil {
		return nil, fmt.Errorf("compute: %w", err)
	}
	out["results"] = c["results"]

	// The same request inside Host.Run (no hand-off) gives the same bits;
	// a cancel still interrupts; another goroutine's call waits for Run.
	ljf, err := h.Resolve(ctx, FactorySpec{Spec: job.Factory, Kwargs: job.Kwargs})
	if err != nil {
		return nil, err
	}
	ljcalc, err := ljf.New(ctx)
	if err != nil {
		return nil, err
	}
	inline := map[string]any{}
	other := make(chan error, 1)
	err = h.Run(ctx, func() error {
		go func() { _, err := h.Call(ctx, "builtins:len", []any{"ab"}, nil); other <- err }()
		s, err := readStructure(job.Dirs[0])
		if err != nil {
			return err
		}
		r, err := ljcalc.Compute(ctx, s.request())
		if err != nil {
			return err
		}
		if inline["digest"], err = digest(r); err != nil {
			return err
		}
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err = h.Call(cctx, uf+":spin", nil, nil)
		inline["cancel"] = errInfo(err)
		select {
		case err := <-other: // embed mode: impossible, the call waits for Run
			inline["other_during_run"] = errInfo(err)
			other <- err
		default:
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	inline["other"] = errInfo(<-other)
	out["inline"] = inline

	// Close must run atexit handlers (checked by the parent after exit).
	if _, err := h.Call(ctx, uf+":register_atexit", []any{job.Env["ATEXIT_FILE"]}, nil); err != nil {
		return nil, err
	}

	// A 3-frame traceback with a chained cause.
	_, err = h.Call(ctx, uf+":outer", nil, nil)
	out["traceback"] = errInfo(err)

	// The environment: sys.executable, venv-only modules, sys.argv.
	w, err := h.Call(ctx, uf+":where", nil, nil)
	if err != nil {
		return nil, fmt.Errorf("where: %w", err)
	}
	out["where"] = w
	if out["spawn"], err = h.Call(ctx, "pyhost_spawn:spawn_child", nil, nil); err != nil {
		return nil, fmt.Errorf("spawn: %w", err)
	}
	sf, err := h.Resolve(ctx, FactorySpec{Spec: uf + ":signal_taking_calculator"})
	if err != nil {
		return nil, err
	}
	sc, err := sf.New(ctx)
	if err != nil {
		return nil, err
	}
	out["signal_warnings"] = sc.Warnings

	// Cancellation of a pure-Python busy loop, 300 ms in.
	cctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err = h.Call(cctx, uf+":spin", nil, nil)
	timer.Stop()
	cancel()
	ci := errInfo(err)
	ci["elapsed_ms"] = time.Since(start).Milliseconds()
	out["cancel"] = ci
	// Nothing of the cancellation leaks into the next call.
	v, err := h.Call(ctx, "builtins:len", []any{"abc"}, nil)
	out["after_cancel"] = map[string]any{"value": v, "err": errInfo(err)}

	// SystemExit and KeyboardInterrupt from user code are errors, not exits.
	_, err = h.Call(ctx, uf+":exit_now", []any{3}, nil)
	out["system_exit"] = errInfo(err)
	_, err = h.Call(ctx, uf+":interrupt", nil, nil)
	out["user_interrupt"] = errInfo(err)

	// Calculators that fail: non-finite results, SystemExit in calculate.
	s := h2o()
	for _, name := range []string{"nan_calculator", "exiting_calculator"} {
		f, err := h.Resolve(ctx, FactorySpec{Spec: uf + ":" + name})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		calc, err := f.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		_, err = calc.Compute(ctx, s.request())
		out[name] = errInfo(err)
	}

	// Typed results, info and extra arrays reach the calculator.
	f, err := h.Resolve(ctx, FactorySpec{Spec: uf + ":typed_calculator"})
	if err != nil {
		return nil, err
	}
	calc, err := f.New(ctx)
	if err != nil {
		return nil, err
	}
	req := s.request()
	req.Properties = []string{"energy", "forces", "charges", "labels", "flag", "unknown"}
	req.Info = map[string]any{"charge": 2}
	req.Arrays = map[string]Array{"tags": {DType: "<i4", Shape: []int{3}, Data: i32bytes([]int32{1, 2, 3})}}
	r, err := calc.Compute(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("typed: %w", err)
	}
	typed := map[string]any{"order": r.Order}
	for k, v := range r.Values {
		m := map[string]any{"dtype": v.DType, "shape": v.Shape, "scalar": v.Scalar, "is_array": v.IsArray()}
		if v.IsArray() {
			m["f64"], _ = v.Float64s()
		}
		typed[k] = m
	}
	out["typed"] = typed
	// Default properties (nil): energy and forces for a non-periodic system.
	req = s.request()
	req.Properties = nil
	lj, err := h.Resolve(ctx, FactorySpec{Spec: "LJ"})
	if err != nil {
		return nil, err
	}
	ljc, err := lj.New(ctx)
	if err != nil {
		return nil, err
	}
	if r, err = ljc.Compute(ctx, req); err != nil {
		return nil, err
	}
	out["default_order"] = r.Order

	// Resolution: unknown name, registry file and module, entry points.
	_, err = h.Resolve(ctx, FactorySpec{Spec: "nope"})
	out["not_found"] = map[string]any{"err": errInfo(err), "is_not_found": IsNotFound(err)}
	_, err = h.Resolve(ctx, FactorySpec{Spec: "no.such.module:thing"})
	out["import_error"] = map[string]any{"err": errInfo(err), "is_import_error": IsImportError(err)}
	resolved := map[string]any{}
	for _, spec := range []FactorySpec{
		{Spec: "lj_soft", Registry: job.Env["TESTDATA"] + "/registry.py:CALCS"},
		{Spec: "obj", Registry: job.Env["TESTDATA"] + "/registry.py:CALCS"},
		{Spec: "SoftLJ"}, {Spec: "FnLJ"}, {Spec: "EMT"},
		{Spec: "ase.calculators.lj:LennardJones", Kwargs: map[string]any{"sigma": 1.5}, Name: "mylj"},
		{Spec: "LJ", Kwargs: map[string]any{"sigma": 1.5}},
	} {
		f, err := h.Resolve(ctx, spec)
		if err != nil {
			resolved[spec.Spec] = errInfo(err)
			continue
		}
		calc, err := f.New(ctx)
		if err != nil {
			resolved[spec.Spec] = errInfo(err)
			continue
		}
		resolved[spec.Spec] = map[string]any{"name": f.Name, "description": f.Description, "source": f.Source,
			"warnings": f.Warnings, "class": calc.Class, "parameters": calc.Parameters}
	}
	// A misspelt keyword for a name: resolved, with a warning that says so.
	if f, err := h.Resolve(ctx, FactorySpec{Spec: "LJ", Kwargs: map[string]any{"sigmaa": 1.5}}); err == nil {
		resolved["LJ typo"] = map[string]any{"warnings": f.Warnings}
	} else {
		resolved["LJ typo"] = errInfo(err)
	}
	out["resolved"] = resolved
	rows, err := h.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	out["list"] = rows
	rows, err = h.List(ctx, job.Env["TESTDATA"]+"/registry.py:CALCS")
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	out["list_registry"] = rows
	return out, nil
}

// scenarioTicker measures how late a 1 ms Go ticker runs while Python
// keeps numpy busy for 2 s: heartbeats must never wait on Python.
func scenarioTicker(ctx context.Context, h *Host, job childJob) (map[string]any, error) {
	uf := job.Env["TESTDATA"] + "/userfuncs.py"
	if _, err := h.Call(ctx, uf+":numpy_work", []any{0.05}, nil); err != nil { // warm up imports
		return nil, err
	}
	var (
		mu     sync.Mutex
		maxGap time.Duration
		ticks  int
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case now := <-t.C:
				mu.Lock()
				if g := now.Sub(last); g > maxGap {
					maxGap = g
				}
				ticks++
				mu.Unlock()
				last = now
			case <-stop:
				return
			}
		}
	}()
	start := time.Now()
	n, err := h.Call(ctx, uf+":numpy_work", []any{2.0}, nil)
	elapsed := time.Since(start)
	close(stop)
	<-done
	if err != nil {
		return nil, err
	}
	return map[string]any{"max_gap_ms": float64(maxGap.Microseconds()) / 1000, "ticks": ticks,
		"elapsed_ms": elapsed.Milliseconds(), "iterations": n, "log": strings.TrimSpace("")}, nil
}
