package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/aserpc/aserpc/internal/trace"
	"github.com/aserpc/aserpc/pyhost"
	"github.com/aserpc/aserpc/wire"
)

// Calc serves a calculator living in an embedded (or child) Python: it
// decodes a wire request, computes through pyhost, and encodes the
// response — plain 0.1.3 results always, typed and shaped ones too when
// the request asked for them.
type Calc struct {
	Calc *pyhost.Calculator
	Log  *slog.Logger
	// Kwargs are the keyword arguments the factory was called with (the
	// worker's --kwargs), told to a client that asks to describe.
	Kwargs map[string]any

	// warned holds the properties whose invalid results (aserpc.InvalidResult)
	// were logged at WARN: a calculator that breaks a convention breaks it on
	// every request, and one line says so; the rest go to DEBUG. The
	// worker's loop runs one job at a time, so Handle needs no lock. Keys
	// are property names, and "dropped:"+name for results left out of an
	// all_results answer.
	warned map[string]bool
}

// warnOnce logs at WARN the first time key is seen, then at DEBUG.
func (c *Calc) warnOnce(ctx context.Context, key, msg string, args ...any) {
	level := slog.LevelWarn
	if c.warned[key] {
		level = slog.LevelDebug
	} else {
		if c.warned == nil {
			c.warned = map[string]bool{}
		}
		c.warned[key] = true
	}
	c.Log.Log(ctx, level, msg, args...)
}

// describe is the answer to a request's describe (wire/doc.go).
func (c *Calc) describe() map[string]any {
	props := c.Calc.ImplementedProperties
	if props == nil {
		props = []string{}
	}
	params := c.Calc.Parameters
	if params == nil {
		params = map[string]any{}
	}
	kwargs := c.Kwargs
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	return map[string]any{
		wire.ExtImplementedProperties: props,
		wire.ExtCalculator: map[string]any{
			"class":      c.Calc.Class,
			"name":       c.Calc.Name,
			"parameters": params,
			"kwargs":     kwargs,
		},
	}
}

// invalidResult is the error type of a result that breaks ASE's conventions
// (pyhost/aserpc_results.py); its message starts with "property:".
const invalidResult = "aserpc.InvalidResult"

// Handle implements Handler. Every failure becomes an error Response; it
// never panics on a payload.
func (c *Calc) Handle(ctx context.Context, payload []byte) []byte {
	req, preq, bad := c.decode(payload)
	if bad != nil {
		return bad
	}
	res, err := c.Calc.Compute(ctx, preq)
	trace.Mark(trace.WorkerFromPython)
	if err != nil {
		return c.failed(ctx, err)
	}
	return c.encode(ctx, req, res)
}

// HandleBatch implements BatchHandler: the requests go to Python at once
// (pyhost.Calculator.ComputeBatch), each answered as Handle would.
func (c *Calc) HandleBatch(ctx context.Context, payloads [][]byte) BatchResult {
	out := BatchResult{Replies: make([][]byte, len(payloads))}
	reqs := make([]*wire.CalcRequest, len(payloads))
	var preqs []*pyhost.Request
	var index []int
	for i, p := range payloads {
		req, preq, bad := c.decode(p)
		if bad != nil {
			out.Replies[i] = bad
			continue
		}
		reqs[i] = req
		preqs = append(preqs, preq)
		index = append(index, i)
	}
	if len(preqs) == 0 {
		return out
	}
	b, err := c.Calc.ComputeBatch(ctx, preqs, OneByOne(ctx))
	if err != nil {
		reply := c.failed(ctx, err)
		for _, i := range index {
			out.Replies[i] = reply
		}
		return out
	}
	f := b.Figures
	out.Batched, out.Splits, out.OOMAtoms, out.OKAfterOOM = f.Batched, f.Splits, f.OOMAtoms, f.OKAfterOOM
	out.Groups = f.Groups
	for k, i := range index {
		if e := b.Errs[k]; e != nil {
			out.Replies[i] = c.failed(ctx, e)
			continue
		}
		out.Replies[i] = c.encode(ctx, reqs[i], b.Results[k])
	}
	return out
}

// decode reads a request payload into what pyhost computes, or returns the
// error reply that answers it.
func (c *Calc) decode(payload []byte) (*wire.CalcRequest, *pyhost.Request, []byte) {
	req, err := wire.DecodeRequest(payload)
	if err != nil {
		var ve *wire.VersionError
		typ := "ValueError"
		if !errors.As(err, &ve) {
			typ = "aserpc.InvalidRequest"
		}
		return nil, nil, c.fail(&wire.CalcResponse{Error: err.Error(), ErrorType: typ})
	}
	// Structures that describe nothing (no atoms, unknown elements, NaN or
	// inf coordinates) are refused before Python sees them. Besides being
	// meaningless they poison calculators that keep state between calls:
	// ASE's LennardJones keeps its neighbour list while no atom moved by
	// more than the skin, a comparison NaN always fails, so a list built
	// from NaN positions was reused for the next request with the same
	// atomic numbers — a wrong energy for another client (found by the
	// live fuzzer, internal/chaos).
	if err := req.CheckStructure(); err != nil {
		return nil, nil, c.fail(&wire.CalcResponse{Error: err.Error(), ErrorType: "aserpc.InvalidRequest"})
	}
	preq := &pyhost.Request{
		Numbers:    req.Numbers,
		Positions:  req.Positions,
		Cell:       req.Cell,
		PBC:        req.PBC,
		Properties: req.Properties,
		Info:       req.Info,
		AllResults: req.AllResults,
	}
	if preq.Properties == nil {
		preq.Properties = []string{} // an empty list asks for nothing, as 0.1.3
	}
	if len(req.Arrays) > 0 {
		preq.Arrays = make(map[string]pyhost.Array, len(req.Arrays))
		for name, a := range req.Arrays {
			preq.Arrays[name] = pyhost.Array{DType: string(a.DType), Shape: a.Shape, Data: a.Data}
		}
	}
	return req, preq, nil
}

// failed is the error reply for a failed computation.
func (c *Calc) failed(ctx context.Context, err error) []byte {
	resp := &wire.CalcResponse{Error: err.Error()}
	var pe *pyhost.PyError
	if errors.As(err, &pe) {
		// The reference sends str(exception): keep that as the message
		// so 0.1.3 clients and tests see the same text.
		resp.Error, resp.ErrorType, resp.Traceback = pe.Message, shortType(pe.Type), pe.Traceback
		if resp.Error == "" {
			resp.Error = shortType(pe.Type)
		}
	}
	if resp.ErrorType == invalidResult {
		prop, _, _ := strings.Cut(resp.Error, ":")
		c.warnOnce(ctx, prop, "invalid result", "property", prop, "error", resp.Error)
		return c.fail(resp)
	}
	c.Log.Warn("calculation failed", "error", resp.Error, "type", resp.ErrorType, "traceback", resp.Traceback)
	return c.fail(resp)
}

// encode is the reply carrying res, as req asked for it.
func (c *Calc) encode(ctx context.Context, req *wire.CalcRequest, res *pyhost.Result) []byte {
	for _, d := range res.Dropped {
		c.warnOnce(ctx, "dropped:"+d.Name, "result left out (sent when asked for, as an error)", "property", d.Name, "error", d.Error)
	}
	resp := &wire.CalcResponse{Success: true, Results: make(map[string]any, len(res.Values))}
	if req.Describe {
		resp.Extra = c.describe()
	}
	if req.AllResults {
		if resp.Extra == nil {
			resp.Extra = make(map[string]any, 1)
		}
		resp.Extra[wire.ExtResultsOrder] = res.Order
	}
	for _, name := range res.Order {
		v := res.Values[name]
		if !v.IsArray() {
			resp.Results[name] = v.Scalar
			continue
		}
		a := wire.Array{DType: wire.DType(v.DType), Shape: v.Shape, Data: v.Data}
		if req.TypedResults {
			if err := resp.SetArray(name, a); err != nil {
				return c.fail(&wire.CalcResponse{Error: err.Error(), ErrorType: "TypeError"})
			}
			continue
		}
		flat, err := v.Float64Bytes()
		if err != nil {
			return c.fail(&wire.CalcResponse{Error: fmt.Sprintf("result %s: %v", name, err), ErrorType: "TypeError"})
		}
		resp.Results[name] = flat
	}
	out, err := wire.EncodeResponse(resp)
	if err != nil {
		return c.fail(&wire.CalcResponse{Error: "encode results: " + err.Error(), ErrorType: "TypeError"})
	}
	return out
}

func (c *Calc) fail(resp *wire.CalcResponse) []byte {
	resp.Success = false
	out, err := wire.EncodeResponse(resp)
	if err != nil {
		return wire.ErrorResponse(resp.Error)
	}
	return out
}

// shortType drops "builtins." so a remote ValueError reads as in Python.
func shortType(t string) string { return strings.TrimPrefix(t, "builtins.") }
