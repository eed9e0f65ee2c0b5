package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aserpc/aserpc/internal/testenv"
)

// Cross-language tests against the reference: aserpc 0.1.3 from PyPI, run
// through wire/testdata/reference.py. They skip only when pyenv's Python
// 3.11 is absent; a venv that cannot be built (PyPI unreachable, a broken
// release) fails them, so CI cannot go green without running them.

// refEnv is one reference environment.
type refEnv struct {
	key      string
	packages []string
}

// refEnvs: the newest msgspec pip resolves, and the oldest that aserpc
// 0.1.3 allows (msgspec>=0.20.0), because the trailing-element behaviour
// is msgspec's and must hold across the whole range.
var refEnvs = []refEnv{
	{"ref-aserpc-0.1.3-py3.11", []string{"aserpc==0.1.3"}},
	{"ref-aserpc-0.1.3-msgspec-0.20.0-py3.11", []string{"aserpc==0.1.3", "msgspec==0.20.0"}},
}

func refPython(tb testing.TB, env refEnv) string {
	tb.Helper()
	base := testenv.PyenvPython(tb, "3.11")
	return testenv.Venv(tb, env.key, base, testenv.VenvOptions{Packages: env.packages})
}

// runReference runs reference.py cmd with in as JSON on stdin and decodes
// its "result" into out.
func runReference(tb testing.TB, py, cmd string, in, out any) (msgspecVersion string) {
	tb.Helper()
	c := exec.Command(py, filepath.Join("testdata", "reference.py"), cmd)
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			tb.Fatal(err)
		}
		c.Stdin = bytes.NewReader(b)
	}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	stdout, err := c.Output()
	if err != nil {
		tb.Fatalf("reference.py %s: %v\n%s", cmd, err, stderr.Bytes())
	}
	var res struct {
		Msgspec string
		Result  json.RawMessage
	}
	if err := json.Unmarshal(stdout, &res); err != nil {
		tb.Fatalf("reference.py %s: %v\n%s", cmd, err, stdout)
	}
	if err := json.Unmarshal(res.Result, out); err != nil {
		tb.Fatalf("reference.py %s result: %v", cmd, err)
	}
	return res.Msgspec
}

func forEachRefEnv(t *testing.T, f func(t *testing.T, py string)) {
	for _, env := range refEnvs {
		t.Run(env.key, func(t *testing.T) { f(t, refPython(t, env)) })
	}
}

// TestCompat_ReferenceMakesTestdata regenerates the reference vectors and
// requires the stored files to be exactly what aserpc 0.1.3 writes.
func TestCompat_ReferenceMakesTestdata(t *testing.T) {
	forEachRefEnv(t, func(t *testing.T, py string) {
		var gen []struct{ Name, Hex string }
		v := runReference(t, py, "generate", nil, &gen)
		t.Logf("msgspec %s", v)
		stored := map[string]vector{}
		for _, v := range loadVectors(t) {
			stored[v.Name] = v
		}
		for _, g := range gen {
			v, ok := stored[g.Name]
			if !ok || v.Producer != producerRef {
				t.Errorf("%s: not in vectors.json as a reference vector (run go test ./wire -run TestGoldenUpdate -update)", g.Name)
				continue
			}
			if got, want := hex.EncodeToString(readVector(t, v)), g.Hex; got != want {
				t.Errorf("%s: testdata\n %s\nreference writes\n %s", g.Name, got, want)
			}
		}
	})
}

// refCheck is what reference.py check answers for one payload.
type refCheck struct {
	Name      string
	OK        bool
	Decoded   map[string]any
	ErrorType string `json:"error_type"`
	Error     string
}

// TestCompat_ReferenceDecodes runs the reference's unpack_request and
// unpack_response on every vector, extension ones included, plus payloads
// with further unknown trailing elements. It is the evidence for the
// extension rule: msgspec's array_like decoders ignore trailing elements,
// so a 0.1.3 peer sees exactly the 0.1.3 part.
func TestCompat_ReferenceDecodes(t *testing.T) {
	vs := loadVectors(t)
	type item struct {
		Name   string `json:"name"`
		Kind   string `json:"kind"`
		Hex    string `json:"hex"`
		NAtoms *int   `json:"n_atoms"`
	}
	var items []item
	want := map[string]map[string]any{} // 0.1.3 view of each payload
	for _, v := range vs {
		b := readVector(t, v)
		var d map[string]any
		if err := json.Unmarshal(v.Decoded, &d); err != nil {
			t.Fatal(err)
		}
		it := item{Name: v.Name, Kind: v.Kind, Hex: hex.EncodeToString(b)}
		if v.Kind == "response" {
			if f, ok := d["results"].(map[string]any)["forces"].(map[string]any); ok {
				n := len(f["f8"].([]any)) / 3
				it.NAtoms = &n
			}
		}
		items = append(items, it)
		want[v.Name] = d
		// The same payload with one more unknown trailing element of
		// another shape (nested map, bin): later extensions must not
		// break 0.1.3 peers either.
		if extra, ok := appendTrailing(b, map[string]any{"future": []any{int64(1), "x", []byte{1, 2}}}); ok {
			it.Name = v.Name + "+trailing"
			it.Hex = hex.EncodeToString(extra)
			items = append(items, it)
			want[it.Name] = d
		}
	}
	forEachRefEnv(t, func(t *testing.T, py string) {
		var got []refCheck
		version := runReference(t, py, "check", items, &got)
		t.Logf("msgspec %s", version)
		if len(got) != len(items) {
			t.Fatalf("reference checked %d payloads, want %d", len(got), len(items))
		}
		for i, g := range got {
			it := items[i]
			d := want[it.Name]
			t.Run(it.Name, func(t *testing.T) {
				switch {
				case it.Kind == "request":
					if !g.OK {
						t.Fatalf("unpack_request: %s: %s", g.ErrorType, g.Error)
					}
					for _, k := range []string{"info", "arrays", "typed_results"} {
						delete(d, k) // extensions: invisible to 0.1.3
					}
					if !sameJSON(t, g.Decoded, d) {
						t.Errorf("unpack_request\n got %v\nwant %v", g.Decoded, d)
					}
				case d["success"] == false:
					msg := d["error"].(string)
					if msg == "" {
						msg = "Unknown error"
					}
					if g.OK || g.ErrorType != "RuntimeError" || g.Error != msg {
						t.Errorf("unpack_response = ok %v, %s(%q); want RuntimeError(%q)", g.OK, g.ErrorType, g.Error, msg)
					}
				default:
					if !g.OK {
						t.Fatalf("unpack_response: %s: %s", g.ErrorType, g.Error)
					}
					shapes := g.Decoded["__shapes__"].(map[string]any)
					delete(g.Decoded, "__shapes__")
					if !sameJSON(t, g.Decoded, d["results"]) {
						t.Errorf("unpack_response\n got %v\nwant %v", g.Decoded, d["results"])
					}
					if it.NAtoms != nil && !sameJSON(t, shapes["forces"], []int{*it.NAtoms, 3}) {
						t.Errorf("forces shape %v, want [%d 3]", shapes["forces"], *it.NAtoms)
					}
				}
			})
		}
	})
}

// appendTrailing returns the payload with one more element v at the end of
// its top-level array (fixarray headers only, which all vectors have).
func appendTrailing(b []byte, v any) ([]byte, bool) {
	if len(b) == 0 || b[0]&0xf0 != 0x90 || b[0] == 0x9f {
		return nil, false
	}
	out, err := Append(append([]byte{b[0] + 1}, b[1:]...), v)
	return out, err == nil
}

// TestCompat_MarshalMatchesMsgspec compares Marshal with
// msgspec.msgpack.encode value by value, around every size boundary.
func TestCompat_MarshalMatchesMsgspec(t *testing.T) {
	cases := []struct {
		py    string
		goVal any
	}{
		{"None", nil}, {"True", true}, {"False", false},
		{"0", 0}, {"127", 127}, {"128", 128}, {"255", uint8(255)}, {"256", int16(256)},
		{"65535", 65535}, {"65536", 65536}, {"2**32-1", uint32(math.MaxUint32)}, {"2**32", int64(1) << 32},
		{"2**63-1", int64(math.MaxInt64)}, {"2**64-1", uint64(math.MaxUint64)},
		{"-1", -1}, {"-32", -32}, {"-33", -33}, {"-128", int8(-128)}, {"-129", -129},
		{"-32768", -32768}, {"-32769", -32769}, {"-2**31", int32(math.MinInt32)}, {"-2**31-1", int64(math.MinInt32) - 1},
		{"-2**63", int64(math.MinInt64)},
		{"1.0", 1.0}, {"-0.0", math.Copysign(0, -1)}, {"1.5e300", 1.5e300}, {"float('inf')", math.Inf(1)},
		{"''", ""}, {"'a'*31", strings.Repeat("a", 31)}, {"'a'*32", strings.Repeat("a", 32)},
		{"'a'*255", strings.Repeat("a", 255)}, {"'a'*256", strings.Repeat("a", 256)},
		{"'é'*40000", strings.Repeat("é", 40000)},
		{"b''", []byte{}}, {"b'x'*255", bytes.Repeat([]byte("x"), 255)}, {"b'x'*256", bytes.Repeat([]byte("x"), 256)},
		{"b'x'*65536", bytes.Repeat([]byte("x"), 65536)},
		{"[]", []any{}}, {"list(range(15))", seq(15)}, {"list(range(16))", seq(16)}, {"list(range(65536))", seq(65536)},
		{"['energy', 'forces']", []string{"energy", "forces"}},
		{"{}", map[string]any{}},
		{"{'a': 1, 'b': [None, 2.5, 'x'], 'c': {'d': b'\\x00'}}", map[string]any{"c": map[string]any{"d": []byte{0}}, "b": []any{nil, 2.5, "x"}, "a": 1}},
		{"{f'k{i:02d}': i for i in range(16)}", seqMap(16)},
		{"{'EMT': 2, 'LJ': 0}", map[string]int{"LJ": 0, "EMT": 2}},
		{"{'workers': {'EMT': {'busy': 0, 'idle': 1, 'total': 1}}, 'pending_requests': {}, 'manager': {'connected': False, 'spawnable': []}}",
			map[string]any{"workers": map[string]any{"EMT": map[string]int{"total": 1, "idle": 1, "busy": 0}}, "pending_requests": map[string]int{}, "manager": map[string]any{"connected": false, "spawnable": []string{}}}},
	}
	// msgspec writes dicts in insertion order, Marshal sorted: the Python
	// literals above list keys in sorted order, except the STATUS one,
	// which the reference broker builds in this order; sort it for Python.
	cases[len(cases)-1].py = "dict(sorted(" + cases[len(cases)-1].py + ".items()))"
	lits := make([]string, len(cases))
	for i, c := range cases {
		lits[i] = c.py
	}
	forEachRefEnv(t, func(t *testing.T, py string) {
		var got []string
		runReference(t, py, "encode", lits, &got)
		for i, c := range cases {
			b, err := Marshal(c.goVal)
			if err != nil {
				t.Errorf("Marshal(%s): %v", c.py, err)
				continue
			}
			if got, want := hex.EncodeToString(b), got[i]; got != want {
				t.Errorf("Marshal(%s) = %.80s..., msgspec %.80s...", c.py, got, want)
			}
		}
	})
}

func seq(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func seqMap(n int) map[string]any {
	out := map[string]any{}
	for i := range n {
		out["k"+string(rune('0'+i/10))+string(rune('0'+i%10))] = i
	}
	return out
}

// TestCompat_ErrorResponse compares ErrorResponse with the reference's
// pack_response(error=msg).
func TestCompat_ErrorResponse(t *testing.T) {
	msgs := []string{"", "boom", "Worker died during calculation", "No workers available for calculator 'EMT'",
		strings.Repeat("x", 255), strings.Repeat("y", 256), strings.Repeat("ü", 40000), "Protocol version mismatch: got 2, expected 1"}
	forEachRefEnv(t, func(t *testing.T, py string) {
		var got []string
		runReference(t, py, "error", msgs, &got)
		for i, m := range msgs {
			if got, want := hex.EncodeToString(ErrorResponse(m)), got[i]; got != want {
				t.Errorf("ErrorResponse(%.20q) = %.60s..., reference %.60s...", m, got, want)
			}
		}
	})
}
