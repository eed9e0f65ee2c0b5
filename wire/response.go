package wire

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"unsafe"
)

// Extension keys of a response (element 4, see doc.go).
const (
	ExtResults   = "results"
	ExtErrorType = "error_type"
	ExtTraceback = "traceback"
	// ExtImplementedProperties and ExtCalculator answer a request's
	// describe (see doc.go); they travel in CalcResponse.Extra.
	ExtImplementedProperties = "implemented_properties"
	ExtCalculator            = "calculator"
	// ExtResultsOrder answers all_results: the results' names in the
	// order the calculator's results dict holds them.
	ExtResultsOrder = "results_order"
)

// CalcResponse is a calculation response payload: a worker's result or
// error, or a broker-made error. It is named CalcResponse because Response
// is the message type code.
//
// The first four fields are aserpc 0.1.3's; the rest travel in the
// optional extension map (element 4) that 0.1.3 clients ignore. After
// DecodeResponse every []byte (in Results and in Typed) is a view into the
// decoded buffer.
type CalcResponse struct {
	// Version is ProtocolVersion after decoding; 0 encodes as
	// ProtocolVersion.
	Version int
	// Success is false for errors.
	Success bool
	// Results holds the 0.1.3 results: float64 values, and arrays as flat
	// little-endian float64 bins ([]byte). Other msgpack values decode as
	// Unmarshal decodes them.
	Results map[string]any
	// Error is the error message. It is written as nil when Success is set
	// and Error is empty, else as a str, which is what the reference's
	// pack_response does; a nil error decodes as "".
	Error string

	// Typed holds shape- and dtype-preserving results, sent when the
	// request set TypedResults. A decoded entry always has its Data, also
	// when the wire omitted it because Results holds the same float64
	// bytes.
	Typed map[string]Array
	// ErrorType is the remote exception's type, e.g. "ValueError" or
	// "ase.calculators.calculator.PropertyNotImplementedError".
	ErrorType string
	// Traceback is the remote traceback text.
	Traceback string
	// Extra holds the other extension keys (implemented_properties and
	// calculator, the answer to describe), as Unmarshal decodes them;
	// values must be what appendValue encodes. A key that names one of
	// the fields above is ignored when encoding.
	Extra map[string]any
}

// ErrorResponse returns the payload of an error response [1, false, {}, msg]
// exactly as the reference's pack_response(error=msg) encodes it.
func ErrorResponse(msg string) []byte {
	return AppendErrorResponse(make([]byte, 0, 5+len(msg)), msg)
}

// AppendErrorResponse is ErrorResponse appending to dst.
func AppendErrorResponse(dst []byte, msg string) []byte {
	dst = append(dst, 0x94, ProtocolVersion, mpFalse, 0x80)
	return AppendString(dst, msg)
}

// RemoteError is a response with Success false, as an error.
type RemoteError struct {
	Message   string // the message; "Unknown error" when the response had none, as the reference client says
	Type      string // the remote exception type, when the worker sent it
	Traceback string // the remote traceback, when the worker sent it
}

// Error returns the message.
func (e *RemoteError) Error() string { return e.Message }

// Err returns nil for a successful response and a *RemoteError otherwise.
func (r *CalcResponse) Err() error {
	if r.Success {
		return nil
	}
	msg := r.Error
	if msg == "" {
		msg = "Unknown error"
	}
	return &RemoteError{Message: msg, Type: r.ErrorType, Traceback: r.Traceback}
}

// SetArray stores an array result twice, as a worker that was asked for
// typed results does: the 0.1.3 flat float64 form in Results (converting
// other dtypes as numpy's astype(float64) would) and a in Typed.
func (r *CalcResponse) SetArray(name string, a Array) error {
	flat, err := a.float64Bytes()
	if err != nil {
		return fmt.Errorf("result %q: %w", name, err)
	}
	if r.Results == nil {
		r.Results = make(map[string]any)
	}
	if r.Typed == nil {
		r.Typed = make(map[string]Array)
	}
	r.Results[name] = flat
	r.Typed[name] = a
	return nil
}

// Array returns a result as an Array: the typed one when present, else a
// 0.1.3 bin as a flat float64 array.
func (r *CalcResponse) Array(name string) (Array, bool) {
	if a, ok := r.Typed[name]; ok {
		return a, true
	}
	b, ok := r.Results[name].([]byte)
	if !ok || len(b)%8 != 0 {
		return Array{}, false
	}
	return Array{DType: Float64, Shape: []int{len(b) / 8}, Data: b}, true
}

// HasExtension reports whether r needs the extension element.
func (r *CalcResponse) HasExtension() bool {
	return len(r.Typed) > 0 || r.ErrorType != "" || r.Traceback != "" || len(r.extraKeys()) > 0
}

// extraKeys returns Extra's keys that do not name a field, sorted.
func (r *CalcResponse) extraKeys() []string {
	if len(r.Extra) == 0 {
		return nil
	}
	keys := make([]string, 0, len(r.Extra))
	for k := range r.Extra {
		switch k {
		case ExtErrorType, ExtResults, ExtTraceback:
		default:
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// EncodeResponse returns r's payload.
func EncodeResponse(r *CalcResponse) ([]byte, error) {
	size := 64 + len(r.Error) + len(r.Traceback)
	for k, v := range r.Results {
		size += 16 + len(k)
		if b, ok := v.([]byte); ok {
			size += len(b)
		}
	}
	for k, a := range r.Typed {
		size += 64 + len(k) + len(a.Data)
	}
	return r.AppendTo(make([]byte, 0, size))
}

// AppendTo appends r's payload to dst. Results keys are written sorted.
// Without extensions the bytes are what the reference's pack_response
// writes for the same results in sorted key order.
func (r *CalcResponse) AppendTo(dst []byte) ([]byte, error) {
	n := 4
	if r.HasExtension() {
		n = 5
	}
	v := r.Version
	if v == 0 {
		v = ProtocolVersion
	}
	dst = AppendArrayHeader(dst, n)
	dst = AppendInt(dst, int64(v))
	dst = AppendBool(dst, r.Success)
	var err error
	if r.Results == nil {
		dst = AppendMapHeader(dst, 0)
	} else if dst, err = appendValue(dst, r.Results, 0); err != nil {
		return dst, fmt.Errorf("encode response results: %w", err)
	}
	if r.Success && r.Error == "" {
		dst = AppendNil(dst)
	} else {
		dst = AppendString(dst, r.Error)
	}
	if n == 4 {
		return dst, nil
	}
	// Extension map, keys sorted: the fields' (error_type, results,
	// traceback) among Extra's.
	extra := r.extraKeys()
	keys := len(extra)
	for _, present := range []bool{r.ErrorType != "", len(r.Typed) > 0, r.Traceback != ""} {
		if present {
			keys++
		}
	}
	dst = AppendMapHeader(dst, keys)
	next := 0 // Extra keys written so far
	flushBefore := func(key string) error {
		for ; next < len(extra) && (key == "" || extra[next] < key); next++ {
			k := extra[next]
			if dst, err = appendValue(AppendString(dst, k), r.Extra[k], 1); err != nil {
				return fmt.Errorf("encode response extension %q: %w", k, err)
			}
		}
		return nil
	}
	if r.ErrorType != "" {
		if err := flushBefore(ExtErrorType); err != nil {
			return dst, err
		}
		dst = AppendString(AppendString(dst, ExtErrorType), r.ErrorType)
	}
	if len(r.Typed) > 0 {
		if err := flushBefore(ExtResults); err != nil {
			return dst, err
		}
		dst = AppendString(dst, ExtResults)
		names := make([]string, 0, len(r.Typed))
		for k := range r.Typed {
			names = append(names, k)
		}
		sort.Strings(names)
		dst = AppendMapHeader(dst, len(names))
		for _, k := range names {
			a := r.Typed[k]
			dst = AppendString(dst, k)
			if plain, ok := r.Results[k].([]byte); ok && a.DType == Float64 && sameBytes(plain, a.Data) {
				// The bytes are already in Results: send only dtype and shape.
				if err := a.Validate(); err != nil {
					return dst, fmt.Errorf("encode typed result %q: %w", k, err)
				}
				dst = AppendMapHeader(dst, 2)
				dst = AppendString(AppendString(dst, "dtype"), string(a.DType))
				dst = AppendArrayHeader(AppendString(dst, "shape"), len(a.Shape))
				for _, s := range a.Shape {
					dst = AppendInt(dst, int64(s))
				}
				continue
			}
			if dst, err = a.appendTo(dst); err != nil {
				return dst, fmt.Errorf("encode typed result %q: %w", k, err)
			}
		}
	}
	if r.Traceback != "" {
		if err := flushBefore(ExtTraceback); err != nil {
			return dst, err
		}
		dst = AppendString(AppendString(dst, ExtTraceback), r.Traceback)
	}
	if err := flushBefore(""); err != nil {
		return dst, err
	}
	return dst, nil
}

// sameBytes is bytes.Equal that answers at once for the same memory.
func sameBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b) {
		return true
	}
	return bytes.Equal(a, b)
}

// DecodeResponse decodes a response payload without copying its bins. Like
// msgspec it accepts 3 elements (error missing) and ignores elements after
// the extension. A response with Success false decodes without error; use
// Err. Errors wrap ErrTruncated, ErrMalformed, ErrTooDeep or
// ErrTrailingBytes, or are a *VersionError,
// returned unwrapped so that its Error() is the reference's text.
func DecodeResponse(b []byte) (*CalcResponse, error) {
	r, err := decodeResponse(b)
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			return nil, ve // unwrapped: its text is the reference's
		}
		return nil, fmt.Errorf("decode response: %w", err)
	}
	return r, nil
}

func decodeResponse(b []byte) (*CalcResponse, error) {
	d := decoder{b: b}
	n, err := d.arrayLen()
	if err != nil {
		return nil, err
	}
	if n < 3 {
		return nil, d.errf(ErrMalformed, "response has %d elements, want 4", n)
	}
	v, err := d.int64()
	if err != nil {
		return nil, fmt.Errorf("version: %w", err)
	}
	if v != ProtocolVersion {
		return nil, &VersionError{Got: v}
	}
	r := &CalcResponse{Version: int(v)}
	if r.Success, err = d.bool(); err != nil {
		return nil, fmt.Errorf("success: %w", err)
	}
	start := d.off
	res, err := d.value(0)
	if err != nil {
		return nil, fmt.Errorf("results: %w", err)
	}
	if r.Results, _ = res.(map[string]any); r.Results == nil {
		d.off = start
		return nil, d.errf(ErrMalformed, "results is %T, want a map", res)
	}
	if n > 3 && !d.nilNext() {
		if r.Error, err = d.str(); err != nil {
			return nil, fmt.Errorf("error: %w", err)
		}
	}
	if n > 4 {
		if err := r.decodeExtension(&d); err != nil {
			return nil, fmt.Errorf("extension: %w", err)
		}
	}
	for i := 5; i < n; i++ {
		if err := d.skip(1); err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return r, nil
}

// decodeExtension reads element 4: nil or a map; unknown keys are skipped.
func (r *CalcResponse) decodeExtension(d *decoder) error {
	if d.nilNext() {
		return nil
	}
	n, err := d.mapLen()
	if err != nil {
		return err
	}
	for range n {
		k, err := d.strBytes()
		if err != nil {
			return err
		}
		switch string(k) {
		case ExtErrorType:
			if r.ErrorType, err = d.str(); err != nil {
				return fmt.Errorf("error_type: %w", err)
			}
		case ExtTraceback:
			if r.Traceback, err = d.str(); err != nil {
				return fmt.Errorf("traceback: %w", err)
			}
		case ExtResults:
			if d.nilNext() {
				continue
			}
			if r.Typed, err = d.arrayMap(1, true); err != nil {
				return fmt.Errorf("results: %w", err)
			}
		default:
			v, err := d.value(1)
			if err != nil {
				return fmt.Errorf("%q: %w", k, err)
			}
			if r.Extra == nil {
				r.Extra = make(map[string]any)
			}
			r.Extra[string(k)] = v
		}
	}
	// Typed results without data borrow the plain result's float64 bytes.
	for name, a := range r.Typed {
		if a.Data != nil {
			continue
		}
		plain, ok := r.Results[name].([]byte)
		if !ok || a.DType != Float64 {
			return fmt.Errorf("%w: typed result %q has no data and no float64 bin in results", ErrMalformed, name)
		}
		a.Data = plain
		if err := a.Validate(); err != nil {
			return fmt.Errorf("typed result %q: %w", name, err)
		}
		r.Typed[name] = a
	}
	return nil
}
