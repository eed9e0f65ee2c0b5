package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// DType is a numpy dtype string in numpy's explicit little-endian notation
// (numpy's dtype.str): "<f8", "<i4", "|b1" ... Array data is always
// little-endian, whatever the host.
type DType string

// The dtypes an Array may carry. Other strings are rejected by the
// decoder, so a peer never has to guess an item size.
const (
	Float64 DType = "<f8"
	Float32 DType = "<f4"
	Int64   DType = "<i8"
	Int32   DType = "<i4"
	Int16   DType = "<i2"
	Int8    DType = "|i1"
	Uint64  DType = "<u8"
	Uint32  DType = "<u4"
	Uint16  DType = "<u2"
	Uint8   DType = "|u1"
	Bool    DType = "|b1"
)

// Size returns the item size in bytes, or 0 for a dtype aserpc does not know.
func (t DType) Size() int {
	switch t {
	case Float64, Int64, Uint64:
		return 8
	case Float32, Int32, Uint32:
		return 4
	case Int16, Uint16:
		return 2
	case Int8, Uint8, Bool:
		return 1
	}
	return 0
}

// Array is an n-dimensional array on the wire: the extension format for
// per-atom input arrays and typed results. On the wire it is the msgpack
// map {"dtype": str, "shape": [int, ...], "data": bin} (keys in that
// sorted order: data, dtype, shape); data holds the elements row-major,
// little-endian. A decoded Array's Data is a view into the message.
type Array struct {
	DType DType
	Shape []int
	Data  []byte
}

// NewFloat64Array returns an Array holding a little-endian copy of v with
// the given shape (default: one dimension of len(v)).
func NewFloat64Array(v []float64, shape ...int) Array {
	if shape == nil {
		shape = []int{len(v)}
	}
	data := make([]byte, 0, 8*len(v))
	for _, x := range v {
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(x))
	}
	return Array{DType: Float64, Shape: shape, Data: data}
}

// NewInt32Array returns an Array holding a little-endian copy of v with
// the given shape (default: one dimension of len(v)).
func NewInt32Array(v []int32, shape ...int) Array {
	if shape == nil {
		shape = []int{len(v)}
	}
	data := make([]byte, 0, 4*len(v))
	for _, x := range v {
		data = binary.LittleEndian.AppendUint32(data, uint32(x))
	}
	return Array{DType: Int32, Shape: shape, Data: data}
}

// Len returns the number of elements the shape describes (1 for shape []),
// or -1 if a dimension is negative or the product overflows.
func (a Array) Len() int {
	n := 1
	for _, s := range a.Shape {
		if s < 0 || (s > 0 && n > math.MaxInt32/s) {
			return -1
		}
		n *= s
	}
	return n
}

// Validate checks that the dtype is known and the data length matches the
// shape.
func (a Array) Validate() error {
	size := a.DType.Size()
	if size == 0 {
		return fmt.Errorf("%w: unknown dtype %q", ErrMalformed, a.DType)
	}
	n := a.Len()
	if n < 0 {
		return fmt.Errorf("%w: bad shape %v", ErrMalformed, a.Shape)
	}
	if int64(len(a.Data)) != int64(n)*int64(size) {
		return fmt.Errorf("%w: dtype %s shape %v needs %d bytes, data has %d",
			ErrMalformed, a.DType, a.Shape, int64(n)*int64(size), len(a.Data))
	}
	return nil
}

// Float64s returns the elements converted to float64, as the reference's
// pack_response does with astype(float64). For Float64 data it is a view
// when the data is suitably aligned (see Float64s the function).
func (a Array) Float64s() ([]float64, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if a.DType == Float64 {
		return Float64s(a.Data), nil
	}
	n := a.Len()
	out := make([]float64, n)
	size := a.DType.Size()
	for i := range out {
		p := a.Data[i*size : (i+1)*size]
		switch a.DType {
		case Float32:
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(p)))
		case Int64:
			out[i] = float64(int64(binary.LittleEndian.Uint64(p)))
		case Int32:
			out[i] = float64(int32(binary.LittleEndian.Uint32(p)))
		case Int16:
			out[i] = float64(int16(binary.LittleEndian.Uint16(p)))
		case Int8:
			out[i] = float64(int8(p[0]))
		case Uint64:
			out[i] = float64(binary.LittleEndian.Uint64(p))
		case Uint32:
			out[i] = float64(binary.LittleEndian.Uint32(p))
		case Uint16:
			out[i] = float64(binary.LittleEndian.Uint16(p))
		case Uint8, Bool:
			out[i] = float64(p[0])
		}
	}
	return out, nil
}

// float64Bytes returns the elements as float64 little-endian bytes: the
// 0.1.3 flat form of a result. Float64 data is returned as it is.
func (a Array) float64Bytes() ([]byte, error) {
	if a.DType == Float64 {
		return a.Data, a.Validate()
	}
	v, err := a.Float64s()
	if err != nil {
		return nil, err
	}
	return Float64Bytes(v), nil
}

func (a Array) appendTo(dst []byte) ([]byte, error) {
	if err := a.Validate(); err != nil {
		return dst, err
	}
	dst = AppendMapHeader(dst, 3)
	dst = AppendBin(AppendString(dst, "data"), a.Data)
	dst = AppendString(AppendString(dst, "dtype"), string(a.DType))
	dst = AppendArrayHeader(AppendString(dst, "shape"), len(a.Shape))
	for _, s := range a.Shape {
		dst = AppendInt(dst, int64(s))
	}
	return dst, nil
}

// array decodes an Array map. When allowNoData is set the "data" key may
// be absent (typed results whose bytes are the plain result's); the
// returned Array then has nil Data and is not validated.
func (d *decoder) array(depth int, allowNoData bool) (Array, error) {
	var a Array
	n, err := d.mapLen()
	if err != nil {
		return a, err
	}
	if depth >= MaxDepth {
		return a, d.errf(ErrTooDeep, "more than %d levels", MaxDepth)
	}
	var haveData, haveDType, haveShape bool
	for range n {
		k, err := d.strBytes()
		if err != nil {
			return a, err
		}
		switch string(k) {
		case "data":
			if a.Data, err = d.bin(); err != nil {
				return a, fmt.Errorf("array data: %w", err)
			}
			haveData = true
		case "dtype":
			s, err := d.str()
			if err != nil {
				return a, fmt.Errorf("array dtype: %w", err)
			}
			a.DType, haveDType = DType(s), true
		case "shape":
			m, err := d.arrayLen()
			if err != nil {
				return a, fmt.Errorf("array shape: %w", err)
			}
			if m > 32 { // numpy's own limit on dimensions (NPY_MAXDIMS) is 32 or 64
				return a, d.errf(ErrMalformed, "array of %d dimensions", m)
			}
			a.Shape = make([]int, m)
			for i := range a.Shape {
				v, err := d.int64()
				if err != nil {
					return a, fmt.Errorf("array shape: %w", err)
				}
				if v < 0 || v > math.MaxInt32 {
					return a, d.errf(ErrMalformed, "array dimension %d", v)
				}
				a.Shape[i] = int(v)
			}
			haveShape = true
		default: // unknown keys are ignored: room for later fields
			if err := d.skip(depth + 1); err != nil {
				return a, err
			}
		}
	}
	if !haveDType || !haveShape || (!haveData && !allowNoData) {
		return a, d.errf(ErrMalformed, "array needs dtype, shape and data")
	}
	if haveData {
		if err := a.Validate(); err != nil {
			return a, err
		}
	} else if a.DType.Size() == 0 || a.Len() < 0 {
		return a, fmt.Errorf("%w: array dtype %q shape %v", ErrMalformed, a.DType, a.Shape)
	}
	return a, nil
}

// ---------------------------------------------------------------------------
// Views over little-endian bytes.

// hostLittle is true on little-endian hosts, where numpy's bytes can be
// viewed in place.
var hostLittle = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Float64s returns b (little-endian float64s; len(b) must be a multiple of
// 8, any remainder is ignored) as a []float64. On a little-endian host with
// b 8-byte aligned it is a view sharing b's memory (no copy: writes go
// through to b and it lives as long as b); otherwise it is a copy. Message
// buffers place arrays at arbitrary offsets, so expect copies unless the
// sender aligned them.
func Float64s(b []byte) []float64 {
	n := len(b) / 8
	if n == 0 {
		return []float64{}
	}
	if hostLittle && uintptr(unsafe.Pointer(&b[0]))%unsafe.Alignof(float64(0)) == 0 {
		return unsafe.Slice((*float64)(unsafe.Pointer(&b[0])), n)
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out
}

// Int32s is Float64s for little-endian int32s (4-byte alignment).
func Int32s(b []byte) []int32 {
	n := len(b) / 4
	if n == 0 {
		return []int32{}
	}
	if hostLittle && uintptr(unsafe.Pointer(&b[0]))%unsafe.Alignof(int32(0)) == 0 {
		return unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), n)
	}
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// Float64Bytes returns v as little-endian bytes: a view of v's memory on a
// little-endian host, a copy otherwise.
func Float64Bytes(v []float64) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	if hostLittle {
		return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 8*len(v))
	}
	out := make([]byte, 0, 8*len(v))
	for _, x := range v {
		out = binary.LittleEndian.AppendUint64(out, math.Float64bits(x))
	}
	return out
}

// Int32Bytes returns v as little-endian bytes: a view of v's memory on a
// little-endian host, a copy otherwise.
func Int32Bytes(v []int32) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	if hostLittle {
		return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	out := make([]byte, 0, 4*len(v))
	for _, x := range v {
		out = binary.LittleEndian.AppendUint32(out, uint32(x))
	}
	return out
}
