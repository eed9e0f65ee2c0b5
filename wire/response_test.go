package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func mustEncodeResponse(tb testing.TB, r *CalcResponse) []byte {
	tb.Helper()
	b, err := EncodeResponse(r)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestErrorResponse(t *testing.T) {
	for _, tt := range []struct {
		msg, want string
	}{
		{"", "9401c280a0"},
		{"boom", "9401c280a4626f6f6d"},
		{strings.Repeat("a", 32), "9401c280d920" + strings.Repeat("61", 32)},
	} {
		if got := hex.EncodeToString(ErrorResponse(tt.msg)); got != tt.want {
			t.Errorf("ErrorResponse(%q) = %s, want %s", tt.msg, got, tt.want)
		}
		r, err := DecodeResponse(ErrorResponse(tt.msg))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := mustEncodeResponse(t, r), ErrorResponse(tt.msg); !bytes.Equal(got, want) {
			t.Errorf("re-encoded %x, want %x", got, want)
		}
	}
}

func TestCalcResponse_Err(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    CalcResponse
		want string
	}{
		{"Success", CalcResponse{Success: true}, ""},
		{"Message", CalcResponse{Error: "No EMT-potential for U"}, "No EMT-potential for U"},
		{"Empty", CalcResponse{}, "Unknown error"}, // as the reference client says
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Err()
			if got := errString(err); got != tt.want {
				t.Errorf("Err() = %q, want %q", got, tt.want)
			}
		})
	}
	r := CalcResponse{Error: "x", ErrorType: "ValueError", Traceback: "tb"}
	var re *RemoteError
	if !errors.As(r.Err(), &re) || re.Type != "ValueError" || re.Traceback != "tb" {
		t.Errorf("Err() = %#v, want a *RemoteError with type and traceback", r.Err())
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestDecodeResponse(t *testing.T) {
	forces := NewFloat64Array([]float64{1, 2, 3, 4, 5, 6}, 2, 3)
	for _, tt := range []struct {
		name string
		in   []byte
		want *CalcResponse
	}{
		{"ThreeElements", unhex(t, "93 01 c3 81 a6656e65726779 cb 3ff8000000000000"),
			&CalcResponse{Version: 1, Success: true, Results: map[string]any{"energy": 1.5}}},
		{"NilError", unhex(t, "94 01 c3 80 c0"), &CalcResponse{Version: 1, Success: true, Results: map[string]any{}}},
		{"NilExtension", unhex(t, "95 01 c2 80 a1 78 c0"), &CalcResponse{Version: 1, Results: map[string]any{}, Error: "x"}},
		{"UnknownExtensionKeysKept", unhex(t, "96 01 c2 80 a1 78 82 a3 6e6577 c0 a9 74726163656261636b a2 7462 c3"),
			&CalcResponse{Version: 1, Results: map[string]any{}, Error: "x", Traceback: "tb", Extra: map[string]any{"new": nil}}},
		{"TypedBorrowsPlain", mustEncodeResponse(t, &CalcResponse{Success: true, Results: map[string]any{"forces": forces.Data}, Typed: map[string]Array{"forces": forces}}),
			&CalcResponse{Version: 1, Success: true, Results: map[string]any{"forces": forces.Data}, Typed: map[string]Array{"forces": forces}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeResponse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeResponse\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeResponse_Errors(t *testing.T) {
	f8 := map[string]any{"dtype": "<f8", "shape": []int{1}}
	for _, tt := range []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"Empty", nil, ErrTruncated, ""},
		{"TwoElements", unhex(t, "92 01 c3"), ErrMalformed, "2 elements"},
		{"Version", unhex(t, "94 02 c3 80 c0"), ErrVersion, "Protocol version mismatch: got 2, expected 1"},
		{"SuccessNotBool", unhex(t, "94 01 01 80 c0"), ErrMalformed, "success"},
		{"ResultsNotMap", unhex(t, "94 01 c3 90 c0"), ErrMalformed, "results is []interface {}"},
		{"ResultsNil", unhex(t, "94 01 c3 c0 c0"), ErrMalformed, "results is <nil>"},
		{"ErrorNotStr", unhex(t, "94 01 c2 80 01"), ErrMalformed, "error"},
		{"Trailing", unhex(t, "94 01 c3 80 c0 c0"), ErrTrailingBytes, ""},
		{"TypedNoPlain", rawRequest(t, 1, true, map[string]any{}, nil, map[string]any{"results": map[string]any{"e": f8}}), ErrMalformed, "no data"},
		{"TypedNoDataNotF8", rawRequest(t, 1, true, map[string]any{"e": make([]byte, 4)}, nil,
			map[string]any{"results": map[string]any{"e": map[string]any{"dtype": "<i4", "shape": []int{1}}}}), ErrMalformed, "no data"},
		{"TypedBorrowWrongSize", rawRequest(t, 1, true, map[string]any{"e": make([]byte, 16)}, nil,
			map[string]any{"results": map[string]any{"e": f8}}), ErrMalformed, "needs 8 bytes"},
		{"ErrorTypeNotStr", rawRequest(t, 1, false, map[string]any{}, "x", map[string]any{"error_type": 1}), ErrMalformed, "error_type"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeResponse(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeResponse error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not contain %q", err, tt.text)
			}
		})
	}
}

func TestCalcResponse_SetArray(t *testing.T) {
	r := &CalcResponse{Success: true}
	if err := r.SetArray("tags", NewInt32Array([]int32{3, -1}, 2, 1)); err != nil {
		t.Fatal(err)
	}
	if err := r.SetArray("stress", NewFloat64Array([]float64{1, 0, 0, 0, 2, 0, 0, 0, 3}, 3, 3)); err != nil {
		t.Fatal(err)
	}
	if err := r.SetArray("bad", Array{DType: Float64, Shape: []int{2}}); !errors.Is(err, ErrMalformed) {
		t.Errorf("SetArray(bad) error = %v, want ErrMalformed", err)
	}
	b := mustEncodeResponse(t, r)
	got, err := DecodeResponse(b)
	if err != nil {
		t.Fatal(err)
	}
	// The 0.1.3 view: flat float64.
	if got, want := Float64s(got.Results["tags"].([]byte)), []float64{3, -1}; !reflect.DeepEqual(got, want) {
		t.Errorf("plain tags = %v, want %v", got, want)
	}
	// The typed view keeps dtype and shape.
	a, ok := got.Array("tags")
	if !ok || a.DType != Int32 || !reflect.DeepEqual(a.Shape, []int{2, 1}) || !reflect.DeepEqual(Int32s(a.Data), []int32{3, -1}) {
		t.Errorf("Array(tags) = %+v, %v", a, ok)
	}
	s, _ := got.Array("stress")
	if !reflect.DeepEqual(s.Shape, []int{3, 3}) {
		t.Errorf("stress shape %v, want [3 3]", s.Shape)
	}
	// The float64 stress travels once, not twice.
	if got, want := bytes.Count(b, s.Data), 1; got != want {
		t.Errorf("stress bytes appear %d times in the payload, want %d", got, want)
	}
	// Array falls back to the plain bin.
	r2, _ := DecodeResponse(mustEncodeResponse(t, &CalcResponse{Success: true, Results: map[string]any{"forces": make([]byte, 48)}}))
	if a, ok := r2.Array("forces"); !ok || !reflect.DeepEqual(a.Shape, []int{6}) {
		t.Errorf("Array(forces) of a 0.1.3 response = %+v, %v; want flat [6]", a, ok)
	}
	if _, ok := r2.Array("energy"); ok {
		t.Errorf("Array(energy) found a missing result")
	}
}

func TestCalcResponse_Extra(t *testing.T) {
	forces := NewFloat64Array([]float64{1, 2, 3}, 1, 3)
	r := &CalcResponse{Success: true, Results: map[string]any{"energy": 1.5}, Typed: map[string]Array{"forces": forces},
		Traceback: "tb", ErrorType: "E",
		Extra: map[string]any{
			ExtImplementedProperties: []any{"energy", "forces"},
			ExtCalculator:            map[string]any{"class": "ase.calculators.emt.EMT", "name": "emt", "parameters": map[string]any{}},
			"a":                      int64(1), // sorts before error_type
			"zz":                     true,     // after traceback
			ExtTraceback:             "ignored: names a field",
		}}
	b := mustEncodeResponse(t, r)
	last := -1
	for _, k := range []string{"a", ExtCalculator, ExtErrorType, ExtImplementedProperties, ExtResults, ExtTraceback, "zz"} {
		i := bytes.Index(b, append([]byte{0xa0 | byte(len(k))}, k...))
		if i <= last {
			t.Fatalf("extension key %q at %d, after the previous key at %d", k, i, last)
		}
		last = i
	}
	if bytes.Contains(b, []byte("ignored")) {
		t.Errorf("an Extra key naming a field was encoded")
	}
	got, err := DecodeResponse(b)
	if err != nil {
		t.Fatal(err)
	}
	delete(r.Extra, ExtTraceback)
	r.Version = 1
	if !reflect.DeepEqual(got, r) {
		t.Errorf("round trip\n got %+v\nwant %+v", got, r)
	}
	// Only Extra: still an extension element.
	b = mustEncodeResponse(t, &CalcResponse{Success: true, Extra: map[string]any{ExtImplementedProperties: []any{"energy"}}})
	if b[0] != 0x95 {
		t.Errorf("array header 0x%02x, want 0x95", b[0])
	}
}

func TestEncodeResponse_Layout(t *testing.T) {
	// Success writes error as nil; an error response writes a str even
	// when empty, as the reference's pack_response.
	if got, want := hex.EncodeToString(mustEncodeResponse(t, &CalcResponse{Success: true})), "9401c380c0"; got != want {
		t.Errorf("success = %s, want %s", got, want)
	}
	if got, want := hex.EncodeToString(mustEncodeResponse(t, &CalcResponse{})), "9401c280a0"; got != want {
		t.Errorf("error = %s, want %s", got, want)
	}
	if _, err := EncodeResponse(&CalcResponse{Success: true, Results: map[string]any{"x": struct{}{}}}); !errors.Is(err, ErrUnsupportedType) {
		t.Errorf("unsupported result error = %v, want ErrUnsupportedType", err)
	}
}
