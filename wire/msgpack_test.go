package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"unsafe"
)

func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestMarshal(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   any
		want string
	}{
		{"Nil", nil, "c0"},
		{"True", true, "c3"},
		{"FixInt", 5, "05"},
		{"Uint8", 200, "cc c8"},
		{"Uint16", uint16(300), "cd 012c"},
		{"Uint32", int64(70000), "ce 00011170"},
		{"Uint64", uint64(1) << 40, "cf 0000010000000000"},
		{"NegFix", -5, "fb"},
		{"Int8", int8(-100), "d0 9c"},
		{"Int16", -1000, "d1 fc18"},
		{"Int32", int32(-100000), "d2 fffe7960"},
		{"Int64", int64(-1) << 40, "d3 ffffff0000000000"},
		{"Float64", 1.5, "cb 3ff8000000000000"},
		{"Float32", float32(1.5), "ca 3fc00000"},
		{"FixStr", "ab", "a2 6162"},
		{"Bin", []byte{1, 2}, "c4 02 0102"},
		{"Strings", []string{"a"}, "91 a1 61"},
		{"SortedMap", map[string]any{"b": 1, "a": nil}, "82 a1 61 c0 a1 62 01"},
		{"MapInt", map[string]int{"EMT": 2}, "81 a3 454d54 02"},
		{"MapStrings", map[string][]string{"x": {}}, "81 a1 78 90"},
		{"Array", Array{DType: Int32, Shape: []int{1}, Data: []byte{7, 0, 0, 0}},
			"83 a4 64617461 c4 04 07000000 a5 6474797065 a3 3c6934 a5 7368617065 91 01"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Marshal(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := hex.EncodeToString(b), strings.ReplaceAll(tt.want, " ", ""); got != want {
				t.Errorf("Marshal(%#v) = %s, want %s", tt.in, got, want)
			}
		})
	}
}

func TestMarshal_Errors(t *testing.T) {
	if _, err := Marshal(struct{}{}); !errors.Is(err, ErrUnsupportedType) {
		t.Errorf("Marshal(struct{}{}) error = %v, want ErrUnsupportedType", err)
	}
	if _, err := Marshal(map[string]any{"x": []any{complex(1, 2)}}); !errors.Is(err, ErrUnsupportedType) || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("nested error = %v, want ErrUnsupportedType naming the key", err)
	}
	var deep any = 1
	for range MaxDepth + 2 {
		deep = []any{deep}
	}
	if _, err := Marshal(deep); !errors.Is(err, ErrTooDeep) {
		t.Errorf("Marshal(deep) error = %v, want ErrTooDeep", err)
	}
	if _, err := Marshal(Array{DType: "<c16", Shape: []int{1}, Data: make([]byte, 16)}); !errors.Is(err, ErrMalformed) {
		t.Errorf("Marshal(unknown dtype) error = %v, want ErrMalformed", err)
	}
}

func TestUnmarshal(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		want any
	}{
		{"Nil", "c0", nil},
		{"False", "c2", false},
		{"FixInt", "7f", int64(127)},
		{"NegFix", "e0", int64(-32)},
		{"Uint8", "cc ff", int64(255)},
		{"Uint64Big", "cf ffffffffffffffff", uint64(math.MaxUint64)},
		{"Uint64Small", "cf 0000000000000001", int64(1)},
		{"Int8", "d0 80", int64(-128)},
		{"Int16", "d1 8000", int64(-32768)},
		{"Int32", "d2 80000000", int64(math.MinInt32)},
		{"Int64", "d3 8000000000000000", int64(math.MinInt64)},
		{"Float32", "ca 3fc00000", 1.5},
		{"Float64", "cb 3ff8000000000000", 1.5},
		{"Str8", "d9 03 616263", "abc"},
		{"Str16", "da 0001 61", "a"},
		{"Bin16", "c5 0001 ff", []byte{0xff}},
		{"Array16", "dc 0001 c3", []any{true}},
		{"Map", "82 a1 61 01 a1 62 92 c0 a0", map[string]any{"a": int64(1), "b": []any{nil, ""}}},
		{"Map16Empty", "de 0000", map[string]any{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Unmarshal(unhex(t, tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Unmarshal(%s) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestUnmarshal_Errors(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		want error
	}{
		{"Empty", "", ErrTruncated},
		{"NeverUsed", "c1", ErrMalformed},
		{"Ext", "d4 01 00", ErrMalformed},
		{"ShortInt", "cd 01", ErrTruncated},
		{"ShortFloat", "cb 000000", ErrTruncated},
		{"ShortStr", "a5 6162", ErrTruncated},
		{"ShortBin32", "c6 ffffffff 00", ErrTruncated},
		{"HugeArray", "dd ffffffff", ErrTruncated},
		{"HugeMap", "df 7fffffff c0c0", ErrTruncated},
		{"FixArrayShort", "93 01 02", ErrTruncated},
		{"NonStringKey", "81 01 02", ErrMalformed},
		{"BadUTF8", "a2 c328", ErrMalformed},
		{"Trailing", "c0 c0", ErrTrailingBytes},
		{"Deep", strings.Repeat("91", MaxDepth+1) + "c0", ErrTooDeep},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Unmarshal(unhex(t, tt.in))
			if !errors.Is(err, tt.want) {
				t.Errorf("Unmarshal(%s) error = %v, want %v", tt.in, err, tt.want)
			}
		})
	}
	if _, err := Unmarshal(unhex(t, strings.Repeat("91", MaxDepth)+"c0")); err != nil {
		t.Errorf("depth MaxDepth: %v", err)
	}
}

// TestUnmarshal_NoAllocForClaims checks that a claimed length is not
// allocated before its bytes are seen, and that nested claims over the
// same bytes do not multiply the allocation.
func TestUnmarshal_NoAllocForClaims(t *testing.T) {
	for _, in := range []string{"dd 7fffffff c0", "df 7fffffff c0 c0", "c6 7fffffff 00", "dc ffff" + strings.Repeat("91", 1000),
		strings.Repeat("dd 00100000 ", MaxDepth) + strings.Repeat("c0", 1<<20)} {
		b := unhex(t, in)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := Unmarshal(b); err == nil {
			t.Errorf("Unmarshal(%.20s...) succeeded", in)
		}
		runtime.ReadMemStats(&after)
		// A []any costs 16 bytes an element, twice over while growing;
		// nested claims must not multiply that.
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(64<<10+100*len(b)); got > limit {
			t.Errorf("Unmarshal(%.20s...) of %d bytes allocated %d bytes, limit %d", in, len(b), got, limit)
		}
	}
}

func TestUnmarshal_BinIsView(t *testing.T) {
	b := unhex(t, "92 c4 03 010203 a1 78")
	v, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	bin := v.([]any)[0].([]byte)
	if got, want := unsafe.SliceData(bin), &b[3]; got != want {
		t.Errorf("bin data at %p, want a view at %p", got, want)
	}
	if got, want := cap(bin), 3; got != want {
		t.Errorf("cap(bin) = %d, want %d (appending must not overwrite the message)", got, want)
	}
}

func TestSkip(t *testing.T) {
	for _, in := range []string{
		"c0", "7f", "cd 0102", "cb 0000000000000000", "a3 616263", "d9 01 61", "c4 01 00",
		"d4 01 00", "d8 01" + strings.Repeat("00", 16), "c7 02 05 0000", "c8 0001 05 00", "c9 00000001 05 00",
		"92 01 81 a1 61 c0", "dc 0001 de 0000",
	} {
		b := unhex(t, in)
		d := decoder{b: b}
		if err := d.skip(0); err != nil {
			t.Errorf("skip(%s): %v", in, err)
		} else if d.off != len(b) {
			t.Errorf("skip(%s) stopped at %d of %d", in, d.off, len(b))
		}
		for i := range len(b) { // every truncation fails cleanly
			d := decoder{b: b[:i]}
			if err := d.skip(0); !errors.Is(err, ErrTruncated) {
				t.Errorf("skip(%s[:%d]) error = %v, want ErrTruncated", in, i, err)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	in := map[string]any{
		"i": int64(-3), "u": uint64(math.MaxUint64), "f": 2.25, "s": "é", "b": []byte{0},
		"l": []any{nil, true, map[string]any{"x": []any{}}},
	}
	b, err := Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Errorf("round trip = %#v, want %#v", out, in)
	}
	again, err := Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, b) {
		t.Errorf("second encoding %x differs from first %x", again, b)
	}
}

func TestViews(t *testing.T) {
	want := []float64{1.5, -2, 3e10}
	buf := make([]byte, 1+8*len(want)) // buf[1:] is misaligned
	for _, off := range []int{0, 1} {
		b := buf[off : off+8*len(want)]
		copy(b, Float64Bytes(want))
		got := Float64s(b)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Float64s at offset %d = %v, want %v", off, got, want)
		}
		aligned := uintptr(unsafe.Pointer(&b[0]))%8 == 0
		if shared := unsafe.Pointer(&got[0]) == unsafe.Pointer(&b[0]); shared != (aligned && hostLittle) {
			t.Errorf("offset %d: view shared = %v, want %v", off, shared, aligned && hostLittle)
		}
	}
	ints := []int32{1, -2, 118}
	if got := Int32s(Int32Bytes(ints)); !reflect.DeepEqual(got, ints) {
		t.Errorf("Int32s = %v, want %v", got, ints)
	}
	if got := Int32s(append([]byte{0}, Int32Bytes(ints)...)[1:]); !reflect.DeepEqual(got, ints) {
		t.Errorf("misaligned Int32s = %v, want %v", got, ints)
	}
	if got := Float64s(nil); got == nil || len(got) != 0 {
		t.Errorf("Float64s(nil) = %#v, want empty", got)
	}
}

func TestArray(t *testing.T) {
	for _, tt := range []struct {
		name string
		a    Array
		want []float64
		err  error
	}{
		{"Float64", NewFloat64Array([]float64{1, 2}, 2, 1), []float64{1, 2}, nil},
		{"Int32", NewInt32Array([]int32{-1, 7}), []float64{-1, 7}, nil},
		{"Int64", Array{Int64, []int{1}, []byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}, []float64{-2}, nil},
		{"Bool", Array{Bool, []int{3}, []byte{1, 0, 1}}, []float64{1, 0, 1}, nil},
		{"Float32", Array{Float32, []int{1}, []byte{0, 0, 0xc0, 0x3f}}, []float64{1.5}, nil},
		{"Scalar", Array{Uint8, []int{}, []byte{9}}, []float64{9}, nil},
		{"ShortData", Array{Float64, []int{2}, make([]byte, 15)}, nil, ErrMalformed},
		{"UnknownDType", Array{">f8", []int{1}, make([]byte, 8)}, nil, ErrMalformed},
		{"NegativeShape", Array{Uint8, []int{-1}, nil}, nil, ErrMalformed},
		{"Overflow", Array{Uint8, []int{1 << 30, 1 << 30}, nil}, nil, ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.a.Float64s()
			if !errors.Is(err, tt.err) {
				t.Fatalf("Float64s error = %v, want %v", err, tt.err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Float64s = %v, want %v", got, tt.want)
			}
		})
	}
}
