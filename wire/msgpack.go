package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"unicode/utf8"
)

// Errors returned by the msgpack codec and the payload decoders. Each
// returned error wraps exactly one of them with the offset or field at
// fault, so callers can use errors.Is.
var (
	// ErrTruncated means the payload ends before a value it announces.
	ErrTruncated = errors.New("wire: truncated msgpack")
	// ErrMalformed means the payload is not valid msgpack, or is valid
	// msgpack of the wrong shape for what is being decoded.
	ErrMalformed = errors.New("wire: malformed msgpack")
	// ErrTooDeep means arrays and maps nest deeper than MaxDepth.
	ErrTooDeep = errors.New("wire: msgpack nested too deep")
	// ErrTrailingBytes means bytes follow the single top-level value.
	ErrTrailingBytes = errors.New("wire: trailing bytes after msgpack value")
	// ErrUnsupportedType means Marshal was given a Go type it does not encode.
	ErrUnsupportedType = errors.New("wire: unsupported type for msgpack")
)

// MaxDepth is the deepest nesting of arrays and maps the decoder accepts.
// msgspec's own limit is far higher, but no aserpc payload nests more than
// five levels; the limit keeps hostile input from exhausting the stack.
const MaxDepth = 64

// maxPrealloc caps what a container preallocates from its claimed
// length. The claim is already checked against the bytes left, but nested
// containers all check against the same bytes: without the cap, 64 nested
// headers each claiming the whole rest would allocate 64×16 bytes per
// input byte before failing.
const maxPrealloc = 1024

// msgpack type bytes (https://github.com/msgpack/msgpack/blob/master/spec.md).
const (
	mpNil      = 0xc0
	mpFalse    = 0xc2
	mpTrue     = 0xc3
	mpBin8     = 0xc4
	mpBin16    = 0xc5
	mpBin32    = 0xc6
	mpExt8     = 0xc7
	mpExt16    = 0xc8
	mpExt32    = 0xc9
	mpFloat32  = 0xca
	mpFloat64  = 0xcb
	mpUint8    = 0xcc
	mpUint16   = 0xcd
	mpUint32   = 0xce
	mpUint64   = 0xcf
	mpInt8     = 0xd0
	mpInt16    = 0xd1
	mpInt32    = 0xd2
	mpInt64    = 0xd3
	mpFixExt1  = 0xd4
	mpFixExt16 = 0xd8
	mpStr8     = 0xd9
	mpStr16    = 0xda
	mpStr32    = 0xdb
	mpArray16  = 0xdc
	mpArray32  = 0xdd
	mpMap16    = 0xde
	mpMap32    = 0xdf
)

// ---------------------------------------------------------------------------
// Encoder. The Append functions choose the same (smallest) forms as msgspec
// and msgpack-python, so equal values encode to equal bytes in Go and in the
// reference.

// AppendNil appends msgpack nil.
func AppendNil(dst []byte) []byte { return append(dst, mpNil) }

// AppendBool appends msgpack true or false.
func AppendBool(dst []byte, v bool) []byte {
	if v {
		return append(dst, mpTrue)
	}
	return append(dst, mpFalse)
}

// AppendInt appends v in the smallest msgpack int form: non-negative values
// use positive fixint or uint8/16/32/64, negative ones negative fixint or
// int8/16/32/64, exactly as msgspec does.
func AppendInt(dst []byte, v int64) []byte {
	if v >= 0 {
		return AppendUint(dst, uint64(v))
	}
	switch {
	case v >= -32:
		return append(dst, byte(v))
	case v >= math.MinInt8:
		return append(dst, mpInt8, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(dst, mpInt16), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(dst, mpInt32), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(dst, mpInt64), uint64(v))
	}
}

// AppendUint appends v in the smallest msgpack unsigned form.
func AppendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, mpUint8, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, mpUint16), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, mpUint32), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(dst, mpUint64), v)
	}
}

// AppendFloat64 appends v as msgpack float 64 (0xcb), the only float form
// msgspec writes for a Python float.
func AppendFloat64(dst []byte, v float64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, mpFloat64), math.Float64bits(v))
}

// AppendFloat32 appends v as msgpack float 32 (0xca). Use it only when a
// peer asked for single precision; the reference never writes it.
func AppendFloat32(dst []byte, v float32) []byte {
	return binary.BigEndian.AppendUint32(append(dst, mpFloat32), math.Float32bits(v))
}

// AppendString appends s as msgpack str (fixstr, str8, str16 or str32).
// s should be valid UTF-8; msgspec rejects str values that are not.
func AppendString(dst []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= 31:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, mpStr8, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, mpStr16), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, mpStr32), uint32(n))
	}
	return append(dst, s...)
}

// AppendBin appends b as msgpack bin (bin8, bin16 or bin32).
func AppendBin(dst []byte, b []byte) []byte {
	return append(AppendBinHeader(dst, len(b)), b...)
}

// AppendBinHeader appends only the header of a bin of n bytes; the caller
// appends the n bytes itself (for example straight from a float slice).
func AppendBinHeader(dst []byte, n int) []byte {
	switch {
	case n <= math.MaxUint8:
		return append(dst, mpBin8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, mpBin16), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(dst, mpBin32), uint32(n))
	}
}

// AppendArrayHeader appends the header of an array of n elements; the
// caller appends the n elements.
func AppendArrayHeader(dst []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(dst, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, mpArray16), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(dst, mpArray32), uint32(n))
	}
}

// AppendMapHeader appends the header of a map of n key/value pairs; the
// caller appends 2n values, key first.
func AppendMapHeader(dst []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(dst, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, mpMap16), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(dst, mpMap32), uint32(n))
	}
}

// Marshal encodes v as msgpack. It accepts nil, bool, every int and uint
// type, float64, float32, string, []byte (as bin), Array, []string, []int,
// []int64, []float64, []any, map[string]any, map[string]int,
// map[string]string, map[string][]string, map[string]Array and any nesting
// of those. Map keys are written sorted, so the output is deterministic.
func Marshal(v any) ([]byte, error) {
	return Append(nil, v)
}

// Append is Marshal appending to dst.
func Append(dst []byte, v any) ([]byte, error) {
	return appendValue(dst, v, 0)
}

func appendValue(dst []byte, v any, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return dst, ErrTooDeep
	}
	var err error
	switch v := v.(type) {
	case nil:
		return AppendNil(dst), nil
	case bool:
		return AppendBool(dst, v), nil
	case int:
		return AppendInt(dst, int64(v)), nil
	case int8:
		return AppendInt(dst, int64(v)), nil
	case int16:
		return AppendInt(dst, int64(v)), nil
	case int32:
		return AppendInt(dst, int64(v)), nil
	case int64:
		return AppendInt(dst, v), nil
	case uint:
		return AppendUint(dst, uint64(v)), nil
	case uint8:
		return AppendUint(dst, uint64(v)), nil
	case uint16:
		return AppendUint(dst, uint64(v)), nil
	case uint32:
		return AppendUint(dst, uint64(v)), nil
	case uint64:
		return AppendUint(dst, v), nil
	case float64:
		return AppendFloat64(dst, v), nil
	case float32:
		return AppendFloat32(dst, v), nil
	case string:
		return AppendString(dst, v), nil
	case []byte:
		return AppendBin(dst, v), nil
	case Array:
		return v.appendTo(dst)
	case *Array:
		if v == nil {
			return AppendNil(dst), nil
		}
		return v.appendTo(dst)
	case []string:
		dst = AppendArrayHeader(dst, len(v))
		for _, s := range v {
			dst = AppendString(dst, s)
		}
		return dst, nil
	case []int:
		dst = AppendArrayHeader(dst, len(v))
		for _, x := range v {
			dst = AppendInt(dst, int64(x))
		}
		return dst, nil
	case []int64:
		dst = AppendArrayHeader(dst, len(v))
		for _, x := range v {
			dst = AppendInt(dst, x)
		}
		return dst, nil
	case []float64:
		dst = AppendArrayHeader(dst, len(v))
		for _, x := range v {
			dst = AppendFloat64(dst, x)
		}
		return dst, nil
	case []any:
		dst = AppendArrayHeader(dst, len(v))
		for i, x := range v {
			if dst, err = appendValue(dst, x, depth+1); err != nil {
				return dst, fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return dst, nil
	case map[string]any:
		return appendMap(dst, v, depth, func(dst []byte, x any) ([]byte, error) { return appendValue(dst, x, depth+1) })
	case map[string]int:
		return appendMap(dst, v, depth, func(dst []byte, x int) ([]byte, error) { return AppendInt(dst, int64(x)), nil })
	case map[string]string:
		return appendMap(dst, v, depth, func(dst []byte, x string) ([]byte, error) { return AppendString(dst, x), nil })
	case map[string][]string:
		return appendMap(dst, v, depth, func(dst []byte, x []string) ([]byte, error) { return appendValue(dst, x, depth+1) })
	case map[string]Array:
		return appendMap(dst, v, depth, func(dst []byte, x Array) ([]byte, error) { return x.appendTo(dst) })
	default:
		return dst, fmt.Errorf("%w: %T", ErrUnsupportedType, v)
	}
}

// appendMap writes m with its keys sorted.
func appendMap[V any](dst []byte, m map[string]V, depth int, val func([]byte, V) ([]byte, error)) ([]byte, error) {
	if depth+1 > MaxDepth {
		return dst, ErrTooDeep
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	dst = AppendMapHeader(dst, len(keys))
	var err error
	for _, k := range keys {
		dst = AppendString(dst, k)
		if dst, err = val(dst, m[k]); err != nil {
			return dst, fmt.Errorf("%q: %w", k, err)
		}
	}
	return dst, nil
}

// ---------------------------------------------------------------------------
// Decoder.

// Unmarshal decodes one msgpack value that must fill b exactly. Maps become
// map[string]any (a key that is not a str is an error), arrays []any, bin a
// []byte that is a sub-slice of b (no copy: it is valid only as long as b
// is), str a string (copied), ints int64 (uint64 above math.MaxInt64),
// floats float64, nil nil. Ext types are rejected. Unmarshal never panics
// and allocates nothing in proportion to a length before checking that the
// bytes for it are present.
func Unmarshal(b []byte) (any, error) {
	d := decoder{b: b}
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return v, nil
}

// decoder reads msgpack values from b starting at off. Every method checks
// bounds before reading and reports errors wrapping one of the sentinels.
type decoder struct {
	b   []byte
	off int
}

func (d *decoder) errf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w at byte %d: %s", sentinel, d.off, fmt.Sprintf(format, args...))
}

// end reports ErrTrailingBytes unless all of b was consumed.
func (d *decoder) end() error {
	if d.off != len(d.b) {
		return fmt.Errorf("%w: %d bytes after byte %d", ErrTrailingBytes, len(d.b)-d.off, d.off)
	}
	return nil
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

// take returns the next n bytes as a sub-slice of b (capacity clipped so
// that appending to it cannot overwrite the rest of the message).
func (d *decoder) take(n int) ([]byte, error) {
	if n < 0 || n > d.remaining() {
		return nil, d.errf(ErrTruncated, "need %d bytes, have %d", n, d.remaining())
	}
	s := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return s, nil
}

func (d *decoder) byte1() (byte, error) {
	if d.off >= len(d.b) {
		return 0, d.errf(ErrTruncated, "need a type byte")
	}
	c := d.b[d.off]
	d.off++
	return c, nil
}

func (d *decoder) peek() (byte, error) {
	if d.off >= len(d.b) {
		return 0, d.errf(ErrTruncated, "need a type byte")
	}
	return d.b[d.off], nil
}

func (d *decoder) uintN(n int) (uint64, error) {
	s, err := d.take(n)
	if err != nil {
		return 0, err
	}
	switch n {
	case 1:
		return uint64(s[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(s)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(s)), nil
	default:
		return binary.BigEndian.Uint64(s), nil
	}
}

// length reads an n-byte big-endian length and checks that at least
// length*minSize bytes remain, so no caller allocates for a length that
// the input cannot back.
func (d *decoder) length(n, minSize int) (int, error) {
	start := d.off
	u, err := d.uintN(n)
	if err != nil {
		return 0, err
	}
	if u > uint64(d.remaining())/uint64(minSize) {
		d.off = start
		return 0, d.errf(ErrTruncated, "length %d exceeds the %d bytes left", u, d.remaining()-n)
	}
	return int(u), nil
}

// value decodes any value; depth counts the enclosing arrays and maps.
func (d *decoder) value(depth int) (any, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	switch {
	case c <= 0x7f || c >= 0xe0 || (c >= mpUint8 && c <= mpInt64):
		return d.int()
	case c&0xe0 == 0xa0 || (c >= mpStr8 && c <= mpStr32):
		return d.str()
	case c&0xf0 == 0x90 || c == mpArray16 || c == mpArray32:
		n, err := d.arrayLen()
		if err != nil {
			return nil, err
		}
		if depth >= MaxDepth {
			return nil, d.errf(ErrTooDeep, "more than %d levels", MaxDepth)
		}
		a := make([]any, 0, min(n, maxPrealloc))
		for range n {
			v, err := d.value(depth + 1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		return a, nil
	case c&0xf0 == 0x80 || c == mpMap16 || c == mpMap32:
		n, err := d.mapLen()
		if err != nil {
			return nil, err
		}
		if depth >= MaxDepth {
			return nil, d.errf(ErrTooDeep, "more than %d levels", MaxDepth)
		}
		m := make(map[string]any, min(n, maxPrealloc))
		for range n {
			k, err := d.str()
			if err != nil {
				return nil, err
			}
			if m[k], err = d.value(depth + 1); err != nil {
				return nil, err
			}
		}
		return m, nil
	}
	switch c {
	case mpNil:
		d.off++
		return nil, nil
	case mpFalse, mpTrue:
		return d.bool()
	case mpFloat32, mpFloat64:
		return d.float()
	case mpBin8, mpBin16, mpBin32:
		return d.bin()
	}
	return nil, d.errf(ErrMalformed, "unsupported type byte 0x%02x", c)
}

// skip steps over one value of any type without allocating, honouring the
// same depth and bounds limits as value. Ext values are skipped too.
func (d *decoder) skip(depth int) error {
	c, err := d.byte1()
	if err != nil {
		return err
	}
	var n int // bytes of payload to skip
	switch {
	case c <= 0x7f || c >= 0xe0 || c == mpNil || c == mpFalse || c == mpTrue:
		return nil
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c&0xf0 == 0x90 || c&0xf0 == 0x80 || c == mpArray16 || c == mpArray32 || c == mpMap16 || c == mpMap32:
		d.off--
		var count int
		if c&0xf0 == 0x90 || c == mpArray16 || c == mpArray32 {
			count, err = d.arrayLen()
		} else {
			count, err = d.mapLen()
			count *= 2
		}
		if err != nil {
			return err
		}
		if depth >= MaxDepth {
			return d.errf(ErrTooDeep, "more than %d levels", MaxDepth)
		}
		for range count {
			if err := d.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case c == mpUint8 || c == mpInt8:
		n = 1
	case c == mpUint16 || c == mpInt16:
		n = 2
	case c == mpUint32 || c == mpInt32 || c == mpFloat32:
		n = 4
	case c == mpUint64 || c == mpInt64 || c == mpFloat64:
		n = 8
	case c == mpBin8 || c == mpStr8:
		n, err = d.length(1, 1)
	case c == mpBin16 || c == mpStr16:
		n, err = d.length(2, 1)
	case c == mpBin32 || c == mpStr32:
		n, err = d.length(4, 1)
	case c >= mpFixExt1 && c <= mpFixExt16:
		n = 1 + 1<<(c-mpFixExt1)
	case c == mpExt8:
		n, err = d.length(1, 1)
		n++
	case c == mpExt16:
		n, err = d.length(2, 1)
		n++
	case c == mpExt32:
		n, err = d.length(4, 1)
		n++
	default:
		d.off--
		return d.errf(ErrMalformed, "unsupported type byte 0x%02x", c)
	}
	if err != nil {
		return err
	}
	_, err = d.take(n)
	return err
}

// nilNext consumes a nil and reports true if the next value is nil.
func (d *decoder) nilNext() bool {
	if d.off < len(d.b) && d.b[d.off] == mpNil {
		d.off++
		return true
	}
	return false
}

func (d *decoder) bool() (bool, error) {
	c, err := d.byte1()
	if err != nil {
		return false, err
	}
	switch c {
	case mpTrue:
		return true, nil
	case mpFalse:
		return false, nil
	}
	d.off--
	return false, d.errf(ErrMalformed, "expected bool, got type byte 0x%02x", c)
}

// int decodes any msgpack int as int64, or uint64 when it exceeds
// math.MaxInt64.
func (d *decoder) int() (any, error) {
	c, err := d.byte1()
	if err != nil {
		return nil, err
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	}
	var u uint64
	switch c {
	case mpUint8, mpInt8:
		u, err = d.uintN(1)
	case mpUint16, mpInt16:
		u, err = d.uintN(2)
	case mpUint32, mpInt32:
		u, err = d.uintN(4)
	case mpUint64, mpInt64:
		u, err = d.uintN(8)
	default:
		d.off--
		return nil, d.errf(ErrMalformed, "expected int, got type byte 0x%02x", c)
	}
	if err != nil {
		return nil, err
	}
	switch c {
	case mpInt8:
		return int64(int8(u)), nil
	case mpInt16:
		return int64(int16(u)), nil
	case mpInt32:
		return int64(int32(u)), nil
	case mpInt64:
		return int64(u), nil
	}
	if u > math.MaxInt64 {
		return u, nil
	}
	return int64(u), nil
}

// int64 decodes an int that must fit int64.
func (d *decoder) int64() (int64, error) {
	start := d.off
	v, err := d.int()
	if err != nil {
		return 0, err
	}
	i, ok := v.(int64)
	if !ok {
		d.off = start
		return 0, d.errf(ErrMalformed, "int %v out of range", v)
	}
	return i, nil
}

func (d *decoder) float() (float64, error) {
	c, err := d.byte1()
	if err != nil {
		return 0, err
	}
	switch c {
	case mpFloat32:
		u, err := d.uintN(4)
		return float64(math.Float32frombits(uint32(u))), err
	case mpFloat64:
		u, err := d.uintN(8)
		return math.Float64frombits(u), err
	}
	d.off--
	return 0, d.errf(ErrMalformed, "expected float, got type byte 0x%02x", c)
}

// strBytes returns a str's bytes as a sub-slice of b, checked to be UTF-8
// as msgspec does.
func (d *decoder) strBytes() ([]byte, error) {
	c, err := d.byte1()
	if err != nil {
		return nil, err
	}
	var n int
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == mpStr8:
		n, err = d.length(1, 1)
	case c == mpStr16:
		n, err = d.length(2, 1)
	case c == mpStr32:
		n, err = d.length(4, 1)
	default:
		d.off--
		return nil, d.errf(ErrMalformed, "expected str, got type byte 0x%02x", c)
	}
	if err != nil {
		return nil, err
	}
	s, err := d.take(n)
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(s) {
		d.off -= n
		return nil, d.errf(ErrMalformed, "str is not valid UTF-8")
	}
	return s, nil
}

func (d *decoder) str() (string, error) {
	s, err := d.strBytes()
	return string(s), err
}

// bin returns a bin's bytes as a sub-slice of b (no copy).
func (d *decoder) bin() ([]byte, error) {
	c, err := d.byte1()
	if err != nil {
		return nil, err
	}
	var n int
	switch c {
	case mpBin8:
		n, err = d.length(1, 1)
	case mpBin16:
		n, err = d.length(2, 1)
	case mpBin32:
		n, err = d.length(4, 1)
	default:
		d.off--
		return nil, d.errf(ErrMalformed, "expected bin, got type byte 0x%02x", c)
	}
	if err != nil {
		return nil, err
	}
	return d.take(n)
}

// arrayLen reads an array header; the length is checked against the bytes
// left (every element takes at least one byte).
func (d *decoder) arrayLen() (int, error) {
	c, err := d.byte1()
	if err != nil {
		return 0, err
	}
	switch {
	case c&0xf0 == 0x90:
		n := int(c & 0x0f)
		if n > d.remaining() {
			d.off--
			return 0, d.errf(ErrTruncated, "array of %d with %d bytes left", n, d.remaining())
		}
		return n, nil
	case c == mpArray16:
		return d.length(2, 1)
	case c == mpArray32:
		return d.length(4, 1)
	}
	d.off--
	return 0, d.errf(ErrMalformed, "expected array, got type byte 0x%02x", c)
}

// mapLen reads a map header; the length is checked against the bytes left
// (every pair takes at least two bytes).
func (d *decoder) mapLen() (int, error) {
	c, err := d.byte1()
	if err != nil {
		return 0, err
	}
	switch {
	case c&0xf0 == 0x80:
		n := int(c & 0x0f)
		if 2*n > d.remaining() {
			d.off--
			return 0, d.errf(ErrTruncated, "map of %d with %d bytes left", n, d.remaining())
		}
		return n, nil
	case c == mpMap16:
		return d.length(2, 2)
	case c == mpMap32:
		return d.length(4, 2)
	}
	d.off--
	return 0, d.errf(ErrMalformed, "expected map, got type byte 0x%02x", c)
}
