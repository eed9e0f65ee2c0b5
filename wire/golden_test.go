package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "regenerate wire/testdata: reference vectors with aserpc 0.1.3 from PyPI, extension vectors with this package")

// vector is one entry of testdata/vectors.json (described in vectors.md).
type vector struct {
	Name        string          `json:"name"`
	File        string          `json:"file"`
	Kind        string          `json:"kind"`     // "request" or "response"
	Producer    string          `json:"producer"` // producerRef or producerGo
	Description string          `json:"description"`
	Decoded     json.RawMessage `json:"decoded"`
}

const (
	producerRef = "aserpc 0.1.3 (pack_request/pack_response)"
	producerGo  = "aserpc-go wire encoder"
)

func loadVectors(tb testing.TB) []vector {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "vectors.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		tb.Fatalf("vectors.json: %v", err)
	}
	if len(vs) == 0 {
		tb.Fatal("vectors.json lists no vectors")
	}
	return vs
}

func readVector(tb testing.TB, v vector) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", v.File))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// describeRequest is the JSON form of a request that vectors.json uses.
func describeRequest(r *CalcRequest) map[string]any {
	rows := func(v []float64) [][]float64 {
		out := [][]float64{}
		for i := 0; i+3 <= len(v); i += 3 {
			out = append(out, v[i:i+3])
		}
		return out
	}
	p := r.PBCBools()
	m := map[string]any{
		"version":    r.Version,
		"n_atoms":    r.NumAtoms(),
		"numbers":    r.NumbersInt32(),
		"positions":  rows(r.PositionsFloat64()),
		"cell":       rows(r.CellFloat64()),
		"pbc":        p[:],
		"properties": r.Properties,
	}
	if r.Info != nil {
		m["info"] = r.Info
	}
	if r.Arrays != nil {
		m["arrays"] = describeArrays(r.Arrays)
	}
	if r.TypedResults {
		m["typed_results"] = true
	}
	return m
}

// describeResponse is the JSON form of a response that vectors.json uses.
func describeResponse(r *CalcResponse) map[string]any {
	res := map[string]any{}
	for k, v := range r.Results {
		if b, ok := v.([]byte); ok {
			v = map[string]any{"f8": Float64s(b)}
		}
		res[k] = v
	}
	m := map[string]any{"version": r.Version, "success": r.Success, "results": res, "error": nil}
	if !r.Success || r.Error != "" {
		m["error"] = r.Error
	}
	if r.Typed != nil {
		m["typed"] = describeArrays(r.Typed)
	}
	if r.ErrorType != "" {
		m["error_type"] = r.ErrorType
	}
	if r.Traceback != "" {
		m["traceback"] = r.Traceback
	}
	return m
}

func describeArrays(arrays map[string]Array) map[string]any {
	out := map[string]any{}
	for k, a := range arrays {
		out[k] = map[string]any{"dtype": a.DType, "shape": a.Shape, "values": arrayValues(a)}
	}
	return out
}

// arrayValues lists a's elements flat: ints for int dtypes, bools for
// Bool, floats otherwise.
func arrayValues(a Array) []any {
	f, err := a.Float64s()
	if err != nil {
		return nil
	}
	out := make([]any, len(f))
	for i, x := range f {
		switch {
		case a.DType == Bool:
			out[i] = x != 0
		case strings.ContainsAny(string(a.DType), "iu"):
			out[i] = int64(x)
		default:
			out[i] = x
		}
	}
	return out
}

// jsonNormal turns a value into what json.Unmarshal gives for it, so that
// Go-made and Python-made descriptions compare by value.
func jsonNormal(tb testing.TB, v any) any {
	tb.Helper()
	var b []byte
	if raw, ok := v.(json.RawMessage); ok {
		b = raw
	} else {
		var err error
		if b, err = json.Marshal(v); err != nil {
			tb.Fatalf("marshal %v: %v", v, err)
		}
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		tb.Fatalf("unmarshal %s: %v", b, err)
	}
	return out
}

func sameJSON(tb testing.TB, got, want any) bool {
	tb.Helper()
	return reflect.DeepEqual(jsonNormal(tb, got), jsonNormal(tb, want))
}

// reencode decodes b as kind and encodes it again.
func reencode(kind string, b []byte) (decoded any, again []byte, err error) {
	if kind == "request" {
		r, err := DecodeRequest(b)
		if err != nil {
			return nil, nil, err
		}
		again, err = EncodeRequest(r)
		return describeRequest(r), again, err
	}
	r, err := DecodeResponse(b)
	if err != nil {
		return nil, nil, err
	}
	again, err = EncodeResponse(r)
	return describeResponse(r), again, err
}

// TestGoldenVectors decodes every vector, compares it with its description
// and re-encodes it to the same bytes: for reference-made vectors that is
// byte compatibility of the Go encoder with aserpc 0.1.3.
func TestGoldenVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			b := readVector(t, v)
			got, again, err := reencode(v.Kind, b)
			if err != nil {
				t.Fatal(err)
			}
			if !sameJSON(t, got, v.Decoded) {
				g, _ := json.Marshal(got)
				t.Errorf("decoded\n got %s\nwant %s", g, v.Decoded)
			}
			if !bytes.Equal(again, b) {
				t.Errorf("re-encoded bytes differ\n got %x\nwant %x", again, b)
			}
		})
	}
}

// TestGoldenSpecExample pins the 121-byte request of reference-behaviour.md
// §2.4.1 independently of vectors.json.
func TestGoldenSpecExample(t *testing.T) {
	spec := "9601" + "c404" + "01000000" + "c418" + strings.Repeat("00", 24) + "c448" + strings.Repeat("00", 72) +
		"c403" + "000000" + "91a6" + hex.EncodeToString([]byte("energy"))
	want, _ := hex.DecodeString(spec)
	if got, want := len(want), 121; got != want {
		t.Fatalf("spec example has %d bytes, want %d", got, want)
	}
	if got := readVector(t, vector{File: "request_h_atom.bin"}); !bytes.Equal(got, want) {
		t.Errorf("request_h_atom.bin = %x, want %x", got, want)
	}
	got, err := EncodeRequest(NewCalcRequest([]int32{1}, []float64{0, 0, 0}, nil, [3]bool{}, "energy"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("EncodeRequest = %x, want %x", got, want)
	}
}

// TestGoldenErrorResponses checks ErrorResponse against the error vectors.
func TestGoldenErrorResponses(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t) {
		if v.Producer != producerRef || !strings.HasPrefix(v.Name, "response_error") {
			continue
		}
		var d struct{ Error string }
		if err := json.Unmarshal(v.Decoded, &d); err != nil {
			t.Fatal(err)
		}
		if got, want := ErrorResponse(d.Error), readVector(t, v); !bytes.Equal(got, want) {
			t.Errorf("%s: ErrorResponse(%q) = %x, want %x", v.Name, d.Error, got, want)
		}
		n++
	}
	if n < 3 {
		t.Errorf("found %d reference error vectors, want at least 3", n)
	}
}

// goVectors are the extension vectors, built from reference-made ones.
func goVectors(tb testing.TB, ref map[string][]byte) []struct {
	name, desc, kind string
	payload          func() ([]byte, error)
	describe         func() any
} {
	tb.Helper()
	req := func(name string) *CalcRequest {
		r, err := DecodeRequest(ref[name])
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		return r
	}
	water := func() *CalcRequest { return req("request_water") }
	cu := func() *CalcRequest { return req("request_cu_cubic") }

	info := req("request_water")
	info.Info = map[string]any{
		"charge": int64(1), "spin": int64(2), "label": "water", "temperature": 300.5,
		"flags": []any{true, false, nil}, "nested": map[string]any{"k": int64(-7)},
	}
	arrays := water()
	arrays.Arrays = map[string]Array{
		"initial_magmoms": NewFloat64Array([]float64{0.5, -0.5, 0.25}),
		"initial_charges": NewFloat64Array([]float64{-0.8, 0.4, 0.4}),
		"tags":            {DType: Int64, Shape: []int{3}, Data: []byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}},
		"masses":          NewFloat64Array([]float64{15.999, 1.008, 1.008}),
		"momenta":         NewFloat64Array([]float64{0.1, 0, 0, 0, 0.2, 0, 0, 0, -0.3}, 3, 3),
	}
	typed := water()
	typed.TypedResults = true
	all := cu()
	all.Info = map[string]any{"charge": int64(0), "spin": int64(1)}
	all.Arrays = map[string]Array{"initial_magmoms": NewFloat64Array([]float64{0, 0, 1, 0, 0, -1, 0, 0, 1, 0, 0, -1}, 4, 3)}
	all.TypedResults = true

	typedResp := &CalcResponse{Success: true, Results: map[string]any{"energy": -14.5}}
	for _, s := range []struct {
		name string
		a    Array
	}{
		{"forces", NewFloat64Array([]float64{-0.6875, -0.5625, -0.4375, -0.3125, -0.1875, -0.0625, 0.0625, 0.1875, 0.3125, 0.4375, 0.5625, 0.6875}, 4, 3)},
		{"stress", NewFloat64Array([]float64{0.01, -0.006, 0.005, -0.006, 0.02, -0.004, 0.005, -0.004, 0.03}, 3, 3)},
		{"energies", NewFloat64Array([]float64{-3.5, -3.25, -3.75, -3.0})},
		{"charges", NewInt32Array([]int32{1, -1, 0, 2})},
	} {
		if err := typedResp.SetArray(s.name, s.a); err != nil {
			tb.Fatal(err)
		}
	}
	errResp := &CalcResponse{
		Error:     "No EMT-potential for U",
		ErrorType: "NotImplementedError",
		Traceback: "Traceback (most recent call last):\n  File \"emt.py\", line 1, in calculate\nNotImplementedError: No EMT-potential for U\n",
	}

	type gv = struct {
		name, desc, kind string
		payload          func() ([]byte, error)
		describe         func() any
	}
	reqV := func(name, desc string, r *CalcRequest) gv {
		return gv{name, desc, "request", func() ([]byte, error) { return EncodeRequest(r) }, func() any { return describeRequest(r) }}
	}
	respV := func(name, desc string, r *CalcResponse) gv {
		return gv{name, desc, "response", func() ([]byte, error) { return EncodeResponse(r) }, func() any {
			r.Version = ProtocolVersion
			return describeResponse(r)
		}}
	}
	return []gv{
		reqV("request_water_ext_info", "request_water plus extension info {charge, spin, label, temperature, flags, nested}", info),
		reqV("request_water_ext_arrays", "request_water plus extension arrays initial_magmoms, initial_charges, tags (<i8), masses, momenta (3,3)", arrays),
		reqV("request_water_ext_typed", "request_water plus extension typed_results: true", typed),
		reqV("request_cu_ext_all", "request_cu_cubic plus info, non-collinear initial_magmoms (4,3) and typed_results", all),
		respV("response_ext_typed", "success with typed results: forces (4,3), stress (3,3) and energies (4,) borrow the plain float64 bins; charges (<i4) carries its own data", typedResp),
		respV("response_ext_error", "error with extension error_type and traceback", errResp),
	}
}

// TestGoldenUpdate rewrites testdata when run with -update.
func TestGoldenUpdate(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate testdata")
	}
	py := refPython(t, refEnvs[0])
	var gen []struct {
		Name, Kind, Description, Hex string
		Decoded                      json.RawMessage
	}
	runReference(t, py, "generate", nil, &gen)

	var vs []vector
	ref := map[string][]byte{}
	for _, g := range gen {
		b, err := hex.DecodeString(g.Hex)
		if err != nil {
			t.Fatal(err)
		}
		ref[g.Name] = b
		vs = append(vs, vector{g.Name, g.Name + ".bin", g.Kind, producerRef, g.Description, g.Decoded})
		writeTestdata(t, g.Name+".bin", b)
	}
	for _, g := range goVectors(t, ref) {
		b, err := g.payload()
		if err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		d, err := json.Marshal(g.describe())
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, vector{g.name, g.name + ".bin", g.kind, producerGo, g.desc, d})
		writeTestdata(t, g.name+".bin", b)
	}
	var idx bytes.Buffer
	idx.WriteString("[\n")
	for i, v := range vs {
		line, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		idx.Write(line)
		if i < len(vs)-1 {
			idx.WriteString(",")
		}
		idx.WriteString("\n")
	}
	idx.WriteString("]\n")
	writeTestdata(t, "vectors.json", idx.Bytes())
}

func writeTestdata(tb testing.TB, name string, b []byte) {
	tb.Helper()
	if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
		tb.Fatal(err)
	}
}
