package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// waterRequest is ase.build.molecule("H2O") asking for energy and forces.
func waterRequest() *CalcRequest {
	return NewCalcRequest([]int32{8, 1, 1},
		[]float64{0, 0, 0.119262, 0, 0.763239, -0.477047, 0, -0.763239, -0.477047},
		nil, [3]bool{}, "energy", "forces")
}

func mustEncodeRequest(tb testing.TB, r *CalcRequest) []byte {
	tb.Helper()
	b, err := EncodeRequest(r)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// rawRequest encodes the elements as given, for malformed payloads.
func rawRequest(tb testing.TB, elems ...any) []byte {
	tb.Helper()
	b, err := Marshal(elems)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestDecodeRequest(t *testing.T) {
	r := waterRequest()
	b := mustEncodeRequest(t, r)
	got, err := DecodeRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := got.NumAtoms(), 3; got != want {
		t.Errorf("NumAtoms = %d, want %d", got, want)
	}
	if got, want := got.NumbersInt32(), []int32{8, 1, 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("NumbersInt32 = %v, want %v", got, want)
	}
	if got, want := got.PositionsFloat64()[4], 0.763239; got != want {
		t.Errorf("PositionsFloat64()[4] = %v, want %v", got, want)
	}
	if got, want := got.CellFloat64(), make([]float64, 9); !reflect.DeepEqual(got, want) {
		t.Errorf("CellFloat64 = %v, want %v", got, want)
	}
	if got, want := got.PBCBools(), [3]bool{}; got != want {
		t.Errorf("PBCBools = %v, want %v", got, want)
	}
	if got, want := got.Properties, []string{"energy", "forces"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Properties = %v, want %v", got, want)
	}
	if got.HasExtension() {
		t.Errorf("HasExtension = true for a 0.1.3 request")
	}
	// Views: the arrays point into b.
	for name, s := range map[string][]byte{"numbers": got.Numbers, "positions": got.Positions, "cell": got.Cell, "pbc": got.PBC} {
		p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
		if start := uintptr(unsafe.Pointer(&b[0])); p < start || p >= start+uintptr(len(b)) {
			t.Errorf("%s is not a view into the payload", name)
		}
	}
}

func TestDecodeRequest_Errors(t *testing.T) {
	z := func(n int) []byte { return make([]byte, n) }
	props := []string{"energy"}
	for _, tt := range []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"Empty", nil, ErrTruncated, ""},
		{"Int", []byte{0x01}, ErrMalformed, "expected array"},
		{"Map", []byte{0x80}, ErrMalformed, "expected array"},
		{"FiveElements", rawRequest(t, 1, z(4), z(24), z(72), z(3)), ErrMalformed, "5 elements"},
		{"Version2", rawRequest(t, 2, z(4), z(24), z(72), z(3), props), ErrVersion, "Protocol version mismatch: got 2, expected 1"},
		{"TwoElements", rawRequest(t, 0, "garbage"), ErrMalformed, "2 elements"},
		{"VersionNegative", rawRequest(t, -1, z(4), z(24), z(72), z(3), props), ErrVersion, "Protocol version mismatch: got -1, expected 1"},
		{"VersionFloat", rawRequest(t, 1.0, z(4), z(24), z(72), z(3), props), ErrMalformed, "version"},
		{"NumbersStr", rawRequest(t, 1, "\x01\x00\x00\x00", z(24), z(72), z(3), props), ErrMalformed, "numbers"},
		{"Numbers5", rawRequest(t, 1, z(5), z(24), z(72), z(3), props), ErrMalformed, "multiple of 4"},
		{"Positions", rawRequest(t, 1, z(8), z(24), z(72), z(3), props), ErrMalformed, "positions has 24 bytes, want 48"},
		{"Cell", rawRequest(t, 1, z(4), z(24), z(64), z(3), props), ErrMalformed, "cell has 64 bytes"},
		{"PBC", rawRequest(t, 1, z(4), z(24), z(72), z(1), props), ErrMalformed, "pbc has 1 bytes"},
		{"PropertiesNotStr", rawRequest(t, 1, z(4), z(24), z(72), z(3), []any{1}), ErrMalformed, "properties"},
		{"Trailing", append(rawRequest(t, 1, z(4), z(24), z(72), z(3), props), 0xc0), ErrTrailingBytes, ""},
		{"ExtNotMap", rawRequest(t, 1, z(4), z(24), z(72), z(3), props, 5), ErrMalformed, "extension"},
		{"InfoNotMap", rawRequest(t, 1, z(4), z(24), z(72), z(3), props, map[string]any{"info": []any{}}), ErrMalformed, "info"},
		{"TypedNotBool", rawRequest(t, 1, z(4), z(24), z(72), z(3), props, map[string]any{"typed_results": 1}), ErrMalformed, "typed_results"},
		{"ArrayWrongAtoms", rawRequest(t, 1, z(4), z(24), z(72), z(3), props,
			map[string]any{"arrays": map[string]Array{"tags": {Int64, []int{2}, z(16)}}}), ErrMalformed, `"tags" has shape [2]`},
		{"ArrayScalar", rawRequest(t, 1, z(4), z(24), z(72), z(3), props,
			map[string]any{"arrays": map[string]Array{"tags": {Int64, []int{}, z(8)}}}), ErrMalformed, `"tags" has shape []`},
		{"ArrayShortData", rawRequest(t, 1, z(4), z(24), z(72), z(3), props,
			map[string]any{"arrays": map[string]any{"m": map[string]any{"dtype": "<f8", "shape": []int{1}, "data": z(7)}}}), ErrMalformed, "needs 8 bytes"},
		{"ArrayNoData", rawRequest(t, 1, z(4), z(24), z(72), z(3), props,
			map[string]any{"arrays": map[string]any{"m": map[string]any{"dtype": "<f8", "shape": []int{1}}}}), ErrMalformed, "needs dtype, shape and data"},
		{"ArrayBadDType", rawRequest(t, 1, z(4), z(24), z(72), z(3), props,
			map[string]any{"arrays": map[string]any{"m": map[string]any{"dtype": "float64", "shape": []int{1}, "data": z(8)}}}), ErrMalformed, "unknown dtype"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRequest(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeRequest error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not contain %q", err, tt.text)
			}
		})
	}
}

func TestDecodeRequest_VersionText(t *testing.T) {
	b := mustEncodeRequest(t, &CalcRequest{Version: 2, Numbers: []byte{}, Positions: []byte{}, Cell: make([]byte, 72), PBC: make([]byte, 3)})
	_, err := DecodeRequest(b)
	// The worker sends err.Error() to the client, who may match on it.
	if got, want := err.Error(), "Protocol version mismatch: got 2, expected 1"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
}

func TestRequest_Extension(t *testing.T) {
	r := waterRequest()
	r.Info = map[string]any{"charge": int64(-1), "spin": int64(1), "note": "x", "nested": map[string]any{"f": 0.5, "l": []any{true}}}
	r.Arrays = map[string]Array{
		"initial_magmoms": NewFloat64Array([]float64{1, 0, 0}),
		"tags":            {DType: Int32, Shape: []int{3}, Data: Int32Bytes([]int32{0, 1, 2})},
		"momenta":         NewFloat64Array(make([]float64, 9), 3, 3),
	}
	r.TypedResults = true
	r.Describe = true
	r.AllResults = true
	b := mustEncodeRequest(t, r)
	// Keys sorted, as msgspec writes them (a Python peer's bytes are the same).
	last := -1
	for _, k := range []string{ExtAllResults, ExtArrays, ExtDescribe, ExtInfo, ExtTypedResults} {
		i := bytes.Index(b, append([]byte{0xa0 | byte(len(k))}, k...))
		if i <= last {
			t.Fatalf("extension key %q at %d, after the previous key at %d", k, i, last)
		}
		last = i
	}
	got, err := DecodeRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("round trip\n got %+v\nwant %+v", got, r)
	}
	// The 0.1.3 prefix is unchanged: the extension is one element more.
	base := mustEncodeRequest(t, waterRequest())
	if got, want := b[0], byte(0x97); got != want {
		t.Errorf("array header 0x%02x, want 0x%02x", got, want)
	}
	if !bytes.Equal(b[1:len(base)], base[1:]) {
		t.Errorf("first six elements changed by the extension")
	}
	// The charge stays an int.
	if _, ok := got.Info["charge"].(int64); !ok {
		t.Errorf("charge decoded as %T, want int64", got.Info["charge"])
	}
}

func TestDecodeRequest_Tolerant(t *testing.T) {
	base := mustEncodeRequest(t, waterRequest())
	plus := func(elems ...any) []byte {
		b := append([]byte{base[0] + byte(len(elems))}, base[1:]...)
		for _, e := range elems {
			var err error
			if b, err = Append(b, e); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	for _, tt := range []struct {
		name  string
		in    []byte
		typed bool
	}{
		{"NilExtension", plus(nil), false},
		{"EmptyExtension", plus(map[string]any{}), false},
		{"UnknownKeys", plus(map[string]any{"future": []any{1, map[string]any{"x": []byte{1}}}, "typed_results": true}), true},
		{"NilInfoAndArrays", plus(map[string]any{"info": nil, "arrays": nil}), false},
		{"MoreElements", plus(map[string]any{"typed_results": true}, "later", []any{1, 2}), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := DecodeRequest(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := r.TypedResults, tt.typed; got != want {
				t.Errorf("TypedResults = %v, want %v", got, want)
			}
			if got, want := r.NumAtoms(), 3; got != want {
				t.Errorf("NumAtoms = %d, want %d", got, want)
			}
		})
	}
}

func TestEncodeRequest_Invalid(t *testing.T) {
	r := waterRequest()
	r.Positions = r.Positions[:24]
	if _, err := EncodeRequest(r); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeRequest(short positions) error = %v, want ErrMalformed", err)
	}
	r = waterRequest()
	r.Info = map[string]any{"bad": struct{}{}}
	if _, err := EncodeRequest(r); !errors.Is(err, ErrUnsupportedType) {
		t.Errorf("EncodeRequest(bad info) error = %v, want ErrUnsupportedType", err)
	}
}

func TestCheckStructure(t *testing.T) {
	f64 := func(v ...float64) []byte {
		b := make([]byte, 8*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
		}
		return b
	}
	i32 := func(v ...int32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
		}
		return b
	}
	cell := f64(10, 0, 0, 0, 10, 0, 0, 0, 10)
	water := func() *CalcRequest {
		return &CalcRequest{Numbers: i32(8, 1, 1), Positions: f64(0, 0, 0.1, 0, 0.7, -0.5, 0, -0.7, -0.5), Cell: cell, PBC: []byte{0, 0, 0}}
	}
	if err := water().CheckStructure(); err != nil {
		t.Fatalf("water: %v", err)
	}
	// Unaligned bytes are read in place, and still checked.
	r := water()
	r.Positions = append([]byte{0}, r.Positions...)[1:]
	if err := r.CheckStructure(); err != nil {
		t.Fatalf("unaligned water: %v", err)
	}
	for _, tt := range []struct {
		name   string
		change func(r *CalcRequest)
		text   string
	}{
		{"NoAtoms", func(r *CalcRequest) { r.Numbers, r.Positions = nil, nil }, "invalid structure: no atoms"},
		{"NaNPosition", func(r *CalcRequest) { copy(r.Positions[8*4:], f64(math.NaN())) }, "position of atom 1 is NaN"},
		{"InfPosition", func(r *CalcRequest) { copy(r.Positions[8*8:], f64(math.Inf(-1))) }, "position of atom 2 is -Inf"},
		{"NaNCell", func(r *CalcRequest) { copy(r.Cell[8*4:], f64(math.NaN())) }, "cell vector 1 is NaN in component 1"},
		{"AtomicNumber", func(r *CalcRequest) { r.Numbers = i32(8, 119, 1) }, "atom 1 has atomic number 119"},
		{"NegativeAtomicNumber", func(r *CalcRequest) { r.Numbers = i32(-1, 1, 1) }, "atom 0 has atomic number -1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := water()
			r.Positions = append([]byte(nil), r.Positions...)
			r.Cell = append([]byte(nil), r.Cell...)
			tt.change(r)
			err := r.CheckStructure()
			if !errors.Is(err, ErrInvalidStructure) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("got %v, want ErrInvalidStructure with %q", err, tt.text)
			}
		})
	}
}
