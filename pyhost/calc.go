package pyhost

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
)

// FactorySpec is a worker's CALCULATOR argument and its options, resolved
// as aserpc 0.1.3 does (reference §7): a direct "module.path:callable"
// (a colon with a dot before it) called with Args/Kwargs; otherwise a name
// looked up in Registry ("file.py:VAR", "dir/file:VAR" or "pkg.mod:VAR"),
// then among the entry points of group "aserpc.calculators" (metadata
// {"factory": "module:callable", "args", "kwargs"}, or "factory_fn" holding
// a callable), with LJ and EMT always available where ase is importable.
type FactorySpec struct {
	Spec     string
	Name     string // registered name; default: the text after the last colon, or Spec
	Args     []any
	Kwargs   map[string]any
	Registry string
}

// Factory is a resolved calculator factory living in the interpreter.
type Factory struct {
	h           *Host
	id          int64
	Name        string   // the name to register with the broker
	Description string   // module.qualname or "module:callable"
	Source      string   // "direct", "registry", "entry point" or "builtin"
	Warnings    []string // e.g. args given for a name lookup (ignored, as in 0.1.3)
}

// Resolve finds the factory described by spec. Errors are *PyError:
// IsNotFound for an unknown name (its message lists what is available),
// IsImportError for a missing module.
func (h *Host) Resolve(ctx context.Context, spec FactorySpec) (*Factory, error) {
	var out struct {
		ID          int64    `json:"id"`
		Name        string   `json:"name"`
		Description string   `json:"description"`
		Source      string   `json:"source"`
		Warnings    []string `json:"warnings"`
	}
	in := map[string]any{"spec": spec.Spec, "name": spec.Name, "args": spec.Args, "kwargs": spec.Kwargs, "registry": spec.Registry}
	if err := h.op(ctx, "resolve", in, nil, &out, nil); err != nil {
		return nil, err
	}
	return &Factory{h: h, id: out.ID, Name: out.Name, Description: out.Description, Source: out.Source, Warnings: out.Warnings}, nil
}

// Calculator is a calculator instance living in the interpreter. Create it
// once and reuse it: ASE's result cache and a model's weights stay loaded.
type Calculator struct {
	h                     *Host
	id                    int64
	Class                 string   // module.qualname of the instance's class
	ImplementedProperties []string // calc.implemented_properties
	Name                  string   // calc.name (ASE's), else the class name in lower case
	// Parameters is calc.todict() (what ASE writes into trajectories as the
	// calculator's parameters), with the entries JSON can carry: values
	// are nil, bool, int64, float64, string, []any or map[string]any.
	Parameters map[string]any
	// Warnings are things the worker should log, e.g. that creating the
	// calculator installed a SIGINT/SIGTERM handler.
	Warnings []string
}

// New calls the factory once and keeps the instance.
func (f *Factory) New(ctx context.Context) (*Calculator, error) {
	var out struct {
		ID       int64          `json:"id"`
		Class    string         `json:"class"`
		Props    []string       `json:"implemented_properties"`
		Warnings []string       `json:"warnings"`
		Name     string         `json:"name"`
		Params   map[string]any `json:"parameters"`
	}
	if err := f.h.op(ctx, "create", map[string]any{"factory": f.id}, nil, &out, nil); err != nil {
		return nil, err
	}
	plain(out.Params)
	return &Calculator{h: f.h, id: out.ID, Class: out.Class, ImplementedProperties: out.Props, Warnings: out.Warnings,
		Name: out.Name, Parameters: out.Params}, nil
}

// Array is a typed n-dimensional array in raw, C-order bytes.
type Array struct {
	// DType is numpy's dtype.str: "<f8", "<f4", "<i8", "<i4" or "|b1".
	DType string
	Shape []int
	Data  []byte
}

// Request is one calculation: the wire's raw arrays, used in place. In
// embed mode they are pinned for the call and read by numpy without a copy
// (ase.Atoms then copies positions, as it always does); they must not be
// modified until Compute returns. Should Python keep a reference into them
// beyond the call, they stay pinned and must not be reused: the worker
// should treat request frames as single-use, as it naturally does.
type Request struct {
	Numbers   []byte // N atomic numbers, little-endian int32
	Positions []byte // N×3 little-endian float64, row-major
	Cell      []byte // 3×3 little-endian float64 (72 bytes)
	PBC       []byte // 3 bytes, 0 or 1
	// Properties to compute, in order. nil means the default set: energy,
	// forces, and stress when periodic in all directions; an empty slice
	// computes nothing (as aserpc 0.1.3).
	Properties []string
	// Info is merged into atoms.info (charge, spin ...), JSON-encoded:
	// whole numbers arrive in Python as int.
	Info map[string]any
	// Arrays are extra per-atom arrays set with atoms.set_array
	// (initial_magmoms, initial_charges, momenta, tags ...).
	Arrays map[string]Array
	// AllResults adds every other entry of calc.results after the
	// calculation to the Result (those that cannot travel go to Dropped).
	AllResults bool
}

// Value is one computed property: an array (DType set) or a scalar.
type Value struct {
	DType  string // "" for a scalar
	Shape  []int
	Data   []byte // C-order bytes, Go memory owned by the caller
	Scalar any    // float64, int64, bool, string or nil; for scalars only
}

// IsArray reports whether v is an array.
func (v Value) IsArray() bool { return v.DType != "" }

// Float64Bytes is the aserpc 0.1.3 view of an array: flat little-endian
// float64 bytes (the same slice when already float64).
func (v Value) Float64Bytes() ([]byte, error) {
	if v.DType == "<f8" {
		return v.Data, nil
	}
	f, err := v.Float64s()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 8*len(f))
	for i, x := range f {
		binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(x))
	}
	return out, nil
}

// Float64s converts an array's elements to float64.
func (v Value) Float64s() ([]float64, error) {
	d := v.Data
	var size int
	var get func(i int) float64
	switch v.DType {
	case "<f8":
		size, get = 8, func(i int) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])) }
	case "<f4":
		size, get = 4, func(i int) float64 { return float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:]))) }
	case "<i8":
		size, get = 8, func(i int) float64 { return float64(int64(binary.LittleEndian.Uint64(d[8*i:]))) }
	case "<i4":
		size, get = 4, func(i int) float64 { return float64(int32(binary.LittleEndian.Uint32(d[4*i:]))) }
	case "|b1":
		size, get = 1, func(i int) float64 { return float64(d[i]) }
	default:
		return nil, fmt.Errorf("value of dtype %q is not an array of numbers", v.DType)
	}
	out := make([]float64, len(d)/size)
	for i := range out {
		out[i] = get(i)
	}
	return out, nil
}

// Result holds the computed properties in the order they were asked,
// then (with Request.AllResults) the calculator's other results.
type Result struct {
	Order  []string
	Values map[string]Value
	// Dropped are the other results left out: a value that cannot travel
	// or breaks ASE's conventions (Request.AllResults only).
	Dropped []Dropped
}

// Dropped is a result left out of a Result, and why.
type Dropped struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// Compute runs one calculation on the calculator. A calculator exception,
// SystemExit and KeyboardInterrupt included, and any NaN or infinity in a
// result come back as *PyError; the calculator stays usable. Cancelling
// ctx interrupts Python at its next bytecode boundary and returns an error
// matching ctx.Err() (a computation that finishes first returns normally).
func (c *Calculator) Compute(ctx context.Context, req *Request) (*Result, error) {
	in, bufs, err := layout(req, nil)
	if err != nil {
		return nil, err
	}
	in.Calc = c.id
	var out resultMeta
	var arrays [][]byte
	if err := c.h.op(ctx, "compute", in, bufs, &out, &arrays); err != nil {
		return nil, err
	}
	return out.result(arrays)
}

// requestMeta is a compute's (or a batch item's) description of its
// request; its arrays are buffers from Base on.
type requestMeta struct {
	Calc       int64          `json:"calc,omitempty"`
	Base       int            `json:"base"`
	N          int            `json:"n"`
	Properties []string       `json:"properties"`
	Info       map[string]any `json:"info,omitempty"`
	Arrays     []arrayMeta    `json:"arrays,omitempty"`
	All        bool           `json:"all,omitempty"`
}

type arrayMeta struct {
	Name  string `json:"name"`
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
	Index int    `json:"index"`
}

// layout checks req and appends its buffers to bufs.
func layout(req *Request, bufs [][]byte) (*requestMeta, [][]byte, error) {
	n := len(req.Numbers) / 4
	switch {
	case len(req.Numbers)%4 != 0:
		return nil, bufs, fmt.Errorf("numbers: %d bytes is not a whole number of int32", len(req.Numbers))
	case len(req.Positions) != 24*n:
		return nil, bufs, fmt.Errorf("positions: %d bytes for %d atoms, want %d", len(req.Positions), n, 24*n)
	case len(req.Cell) != 72:
		return nil, bufs, fmt.Errorf("cell: %d bytes, want 72", len(req.Cell))
	case len(req.PBC) != 3:
		return nil, bufs, fmt.Errorf("pbc: %d bytes, want 3", len(req.PBC))
	}
	m := &requestMeta{Base: len(bufs), N: n, Properties: req.Properties, Info: req.Info, All: req.AllResults}
	bufs = append(bufs, req.Numbers, req.Positions, req.Cell, req.PBC)
	for name, a := range req.Arrays {
		m.Arrays = append(m.Arrays, arrayMeta{name, a.DType, a.Shape, len(bufs)})
		bufs = append(bufs, a.Data)
	}
	return m, bufs, nil
}

// resultMeta is how Python describes one structure's results; arrays are
// indices into the reply's buffers.
type resultMeta struct {
	Error   *PyError               `json:"error"` // a batch item that failed
	Dropped []Dropped              `json:"dropped"`
	Order   []string               `json:"order"`
	Values  map[string]resultValue `json:"values"`
}

// resultValue is one result: a scalar, or an array (Index into the reply's
// buffers, its dtype and shape).
type resultValue struct {
	Scalar any    `json:"scalar"`
	Index  *int   `json:"index"`
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
}

func (out *resultMeta) result(arrays [][]byte) (*Result, error) {
	res := &Result{Order: out.Order, Values: make(map[string]Value, len(out.Values)), Dropped: out.Dropped}
	for name, v := range out.Values {
		if v.Index == nil {
			res.Values[name] = Value{Scalar: plain(v.Scalar)}
			continue
		}
		if *v.Index < 0 || *v.Index >= len(arrays) {
			return nil, fmt.Errorf("compute: result %s names array %d of %d", name, *v.Index, len(arrays))
		}
		res.Values[name] = Value{DType: v.DType, Shape: v.Shape, Data: arrays[*v.Index]}
	}
	return res, nil
}

// Batch is what ComputeBatch did: a Result or an error per request, and
// how the structures were computed.
type Batch struct {
	Results []*Result
	Errs    []error // *PyError (or a layout error) where the request failed
	Figures BatchFigures
}

// BatchFigures say how a batch was computed (pyhost/aserpc_batch.py).
type BatchFigures struct {
	// Batched: the calculator has a batch path (its calculate_batch, or an
	// adapter); otherwise the structures were computed one by one.
	Batched bool `json:"batched"`
	// Groups are [structures, atoms] of each call that succeeded.
	Groups [][2]int `json:"groups"`
	// Splits counts batches split after an out-of-memory error; OOMAtoms
	// is the smallest batch (atoms) that ran out, OKAfterOOM the largest
	// that then fitted.
	Splits     int `json:"splits"`
	OOMAtoms   int `json:"oom_atoms"`
	OKAfterOOM int `json:"ok_after_oom"`
}

// ComputeBatch computes several requests at once: in one model call per
// batch key when the calculator batches (a calculate_batch method, an
// adapter its entry point names, or a built-in one for its class), else one
// by one. Each request gets its own Result or error, as Compute would give
// it; an error of the whole call (the interpreter failed) is returned as
// err.
//
// oneByOne computes them one by one even so (to measure whether batching
// pays).
func (c *Calculator) ComputeBatch(ctx context.Context, reqs []*Request, oneByOne bool) (*Batch, error) {
	b := &Batch{Results: make([]*Result, len(reqs)), Errs: make([]error, len(reqs))}
	var bufs [][]byte
	items := make([]*requestMeta, 0, len(reqs))
	index := make([]int, 0, len(reqs))
	for i, req := range reqs {
		m, nb, err := layout(req, bufs)
		if err != nil {
			b.Errs[i] = err
			continue
		}
		bufs = nb
		items = append(items, m)
		index = append(index, i)
	}
	if len(items) == 0 {
		return b, nil
	}
	in := struct {
		Calc   int64          `json:"calc"`
		Items  []*requestMeta `json:"items"`
		Single bool           `json:"single,omitempty"`
	}{c.id, items, oneByOne}
	var out struct {
		Items   []resultMeta `json:"items"`
		Figures BatchFigures `json:"figures"`
	}
	var arrays [][]byte
	if err := c.h.op(ctx, "compute_batch", in, bufs, &out, &arrays); err != nil {
		return nil, err
	}
	if len(out.Items) != len(items) {
		return nil, fmt.Errorf("compute_batch: %d results for %d requests", len(out.Items), len(items))
	}
	b.Figures = out.Figures
	for k, i := range index {
		if e := out.Items[k].Error; e != nil {
			b.Errs[i] = e
			continue
		}
		r, err := out.Items[k].result(arrays)
		if err != nil {
			b.Errs[i] = err
			continue
		}
		b.Results[i] = r
	}
	return b, nil
}

// BatchPath says how the calculator computes several structures at once:
// "the calculator's calculate_batch", "adapter NAME", or "" when it has no
// batch path (structures are then computed one by one). An error means an
// adapter that applies could not be made for this calculator.
func (c *Calculator) BatchPath(ctx context.Context) (string, error) {
	var out struct {
		Where string `json:"where"`
	}
	if err := c.h.op(ctx, "batch_path", map[string]any{"calc": c.id}, nil, &out, nil); err != nil {
		return "", err
	}
	return out.Where, nil
}

// GPUMemory is the GPU memory torch has allocated in the interpreter, in
// bytes; -1 when torch is not imported or not on CUDA (it never imports
// torch itself).
func (h *Host) GPUMemory(ctx context.Context) (int64, error) {
	var out struct {
		Bytes int64 `json:"bytes"`
	}
	if err := h.op(ctx, "gpu_memory", nil, nil, &out, nil); err != nil {
		return -1, err
	}
	return out.Bytes, nil
}

// SetThreads sets torch's intra-op threads to n when torch is imported in
// the interpreter (it never imports torch itself).
func (h *Host) SetThreads(ctx context.Context, n int) error {
	return h.op(ctx, "set_threads", map[string]any{"n": n}, nil, nil, nil)
}

// scalar turns a json.Number into int64 (when whole) or float64.
func scalar(x any) any {
	n, ok := x.(json.Number)
	if !ok {
		return x
	}
	if i, err := n.Int64(); err == nil {
		return i
	}
	f, _ := n.Float64()
	return f
}

// Close drops the interpreter's reference to the calculator.
func (c *Calculator) Close(ctx context.Context) error {
	return c.h.op(ctx, "free", map[string]any{"id": c.id}, nil, nil, nil)
}

// ListRow is one row of `aserpc list`.
type ListRow struct {
	Name    string `json:"name"`
	Factory string `json:"factory"` // "module:callable" or module.qualname
	Source  string `json:"source"`  // "registry", "entry point" or "builtin"
	// Warning is set for a provider that failed (Name is then the entry
	// point's name and Factory is empty).
	Warning string `json:"warning,omitempty"`
}

// List lists the calculators of registry, or (registry == "") of the
// entry-point providers plus the built-ins. It never fails on a factory
// without __qualname__ (functools.partial) or a provider that raises.
func (h *Host) List(ctx context.Context, registry string) ([]ListRow, error) {
	var out struct {
		Rows []ListRow `json:"rows"`
	}
	if err := h.op(ctx, "list", map[string]any{"registry": registry}, nil, &out, nil); err != nil {
		return nil, err
	}
	return out.Rows, nil
}

// Call calls target ("module.path:callable" or "file.py:callable") with
// JSON-encodable arguments and returns its JSON-decoded result (repr() of
// a result JSON cannot carry). For diagnostics and tests.
func (h *Host) Call(ctx context.Context, target string, args []any, kwargs map[string]any) (any, error) {
	var out struct {
		Result any `json:"result"`
	}
	if err := h.op(ctx, "call", map[string]any{"target": target, "args": args, "kwargs": kwargs}, nil, &out, nil); err != nil {
		return nil, err
	}
	return plain(out.Result), nil
}

// plain replaces json.Numbers (from decoding with UseNumber) by int64 or
// float64, recursively.
func plain(x any) any {
	switch v := x.(type) {
	case json.Number:
		return scalar(v)
	case []any:
		for i := range v {
			v[i] = plain(v[i])
		}
	case map[string]any:
		for k := range v {
			v[k] = plain(v[k])
		}
	}
	return x
}
