package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ProtocolVersion is the version carried as element 0 of every Request and
// Response payload. Extensions never change it: they are optional trailing
// elements that 0.1.3 peers ignore.
const ProtocolVersion = 1

// ErrVersion is matched (errors.Is) by every *VersionError.
var ErrVersion = errors.New("wire: protocol version mismatch")

// VersionError is a payload whose version element is not ProtocolVersion.
// Its text is the reference's, word for word, because workers send it to
// clients as the error message and clients match on it.
type VersionError struct {
	Got int64
}

// Error returns "Protocol version mismatch: got X, expected 1".
func (e *VersionError) Error() string {
	return fmt.Sprintf("Protocol version mismatch: got %d, expected %d", e.Got, ProtocolVersion)
}

// Is reports whether target is ErrVersion.
func (e *VersionError) Is(target error) bool { return target == ErrVersion }

// Extension keys of a request (element 6, see doc.go).
const (
	ExtInfo         = "info"
	ExtArrays       = "arrays"
	ExtTypedResults = "typed_results"
	ExtDescribe     = "describe"
	ExtAllResults   = "all_results"
)

// CalcRequest is a calculation request payload (the REQUEST frame's
// payload and the worker's job payload). It is named CalcRequest because
// Request is the message type code.
//
// The first six fields are aserpc 0.1.3's; the rest travel in the optional
// extension map (element 6) that 0.1.3 workers ignore. After
// DecodeRequest every []byte field, the Arrays' Data and any bin inside
// Info are views into the decoded buffer: they are valid as long as it is
// and must not be modified. Strings are copies.
type CalcRequest struct {
	// Version is ProtocolVersion after decoding; 0 encodes as
	// ProtocolVersion.
	Version int
	// Numbers holds the atomic numbers, int32 little-endian, 4N bytes.
	Numbers []byte
	// Positions holds the Cartesian positions in Å, float64 little-endian,
	// row-major N×3, 24N bytes.
	Positions []byte
	// Cell holds the cell, float64 little-endian 3×3 row-major, 72 bytes
	// (all zero when there is none).
	Cell []byte
	// PBC holds the periodic boundary flags, 3 bytes of 0 or 1.
	PBC []byte
	// Properties are the requested properties, e.g. ["energy", "forces"].
	Properties []string

	// Info is the JSON-like part of atoms.info (charge, spin, ...): values
	// are nil, bool, int64, uint64, float64, string, []byte, []any or
	// map[string]any. Ints stay ints on the wire.
	Info map[string]any
	// Arrays are extra per-atom arrays by ASE name (initial_magmoms,
	// initial_charges, tags, masses, momenta, or custom ones); each has
	// Shape[0] == N.
	Arrays map[string]Array
	// TypedResults asks the worker to add dtype- and shape-preserving
	// copies of array results to the response's extension.
	TypedResults bool
	// Describe asks the worker to say what it serves: the response's
	// extension then holds implemented_properties and calculator.
	Describe bool
	// AllResults asks for every entry of the calculator's results after
	// the calculation, not only the requested properties.
	AllResults bool
}

// NewCalcRequest builds a request from Go slices. The slices' memory is
// used as it is on little-endian hosts, so do not change them until the
// request is encoded. cell may be nil (no cell).
func NewCalcRequest(numbers []int32, positions, cell []float64, pbc [3]bool, properties ...string) *CalcRequest {
	if cell == nil {
		cell = make([]float64, 9)
	}
	p := make([]byte, 3)
	for i, b := range pbc {
		if b {
			p[i] = 1
		}
	}
	if properties == nil {
		properties = []string{}
	}
	return &CalcRequest{
		Version:    ProtocolVersion,
		Numbers:    Int32Bytes(numbers),
		Positions:  Float64Bytes(positions),
		Cell:       Float64Bytes(cell),
		PBC:        p,
		Properties: properties,
	}
}

// NumAtoms returns N, the number of atoms.
func (r *CalcRequest) NumAtoms() int { return len(r.Numbers) / 4 }

// NumbersInt32 returns the atomic numbers; a view when aligned (see Int32s).
func (r *CalcRequest) NumbersInt32() []int32 { return Int32s(r.Numbers) }

// PositionsFloat64 returns the positions, flat N×3; a view when aligned
// (see Float64s).
func (r *CalcRequest) PositionsFloat64() []float64 { return Float64s(r.Positions) }

// CellFloat64 returns the cell, flat 3×3; a view when aligned.
func (r *CalcRequest) CellFloat64() []float64 { return Float64s(r.Cell) }

// PBCBools returns the periodic boundary flags.
func (r *CalcRequest) PBCBools() [3]bool {
	var p [3]bool
	for i := 0; i < 3 && i < len(r.PBC); i++ {
		p[i] = r.PBC[i] != 0
	}
	return p
}

// HasExtension reports whether r needs the extension element.
func (r *CalcRequest) HasExtension() bool {
	return len(r.Info) > 0 || len(r.Arrays) > 0 || r.TypedResults || r.Describe || r.AllResults
}

// Validate checks the sizes that tie the arrays together.
func (r *CalcRequest) Validate() error {
	if len(r.Numbers)%4 != 0 {
		return fmt.Errorf("%w: numbers has %d bytes, not a multiple of 4 (int32)", ErrMalformed, len(r.Numbers))
	}
	n := r.NumAtoms()
	if len(r.Positions) != 24*n {
		return fmt.Errorf("%w: positions has %d bytes, want %d for %d atoms (N×3 float64)", ErrMalformed, len(r.Positions), 24*n, n)
	}
	if len(r.Cell) != 72 {
		return fmt.Errorf("%w: cell has %d bytes, want 72 (3×3 float64)", ErrMalformed, len(r.Cell))
	}
	if len(r.PBC) != 3 {
		return fmt.Errorf("%w: pbc has %d bytes, want 3", ErrMalformed, len(r.PBC))
	}
	for name, a := range r.Arrays {
		if err := a.Validate(); err != nil {
			return fmt.Errorf("array %q: %w", name, err)
		}
		if len(a.Shape) == 0 || a.Shape[0] != n {
			return fmt.Errorf("%w: array %q has shape %v, want first dimension %d (atoms)", ErrMalformed, name, a.Shape, n)
		}
	}
	return nil
}

// EncodeRequest returns r's payload.
func EncodeRequest(r *CalcRequest) ([]byte, error) {
	size := 32 + len(r.Numbers) + len(r.Positions) + len(r.Cell) + len(r.PBC)
	for _, p := range r.Properties {
		size += 5 + len(p)
	}
	for _, a := range r.Arrays {
		size += 64 + len(a.Data)
	}
	return r.AppendTo(make([]byte, 0, size))
}

// AppendTo appends r's payload to dst. Without extensions the bytes are
// exactly what aserpc 0.1.3's pack_request writes.
func (r *CalcRequest) AppendTo(dst []byte) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return dst, fmt.Errorf("encode request: %w", err)
	}
	n := 6
	if r.HasExtension() {
		n = 7
	}
	v := r.Version
	if v == 0 {
		v = ProtocolVersion
	}
	dst = AppendArrayHeader(dst, n)
	dst = AppendInt(dst, int64(v))
	dst = AppendBin(dst, r.Numbers)
	dst = AppendBin(dst, r.Positions)
	dst = AppendBin(dst, r.Cell)
	dst = AppendBin(dst, r.PBC)
	dst = AppendArrayHeader(dst, len(r.Properties))
	for _, p := range r.Properties {
		dst = AppendString(dst, p)
	}
	if n == 6 {
		return dst, nil
	}
	// Extension map, keys sorted: all_results, arrays, describe, info,
	// typed_results.
	keys := 0
	for _, present := range []bool{r.AllResults, len(r.Arrays) > 0, r.Describe, len(r.Info) > 0, r.TypedResults} {
		if present {
			keys++
		}
	}
	dst = AppendMapHeader(dst, keys)
	var err error
	if r.AllResults {
		dst = AppendBool(AppendString(dst, ExtAllResults), true)
	}
	if len(r.Arrays) > 0 {
		if dst, err = appendValue(AppendString(dst, ExtArrays), r.Arrays, 1); err != nil {
			return dst, fmt.Errorf("encode request arrays: %w", err)
		}
	}
	if r.Describe {
		dst = AppendBool(AppendString(dst, ExtDescribe), true)
	}
	if len(r.Info) > 0 {
		if dst, err = appendValue(AppendString(dst, ExtInfo), r.Info, 1); err != nil {
			return dst, fmt.Errorf("encode request info: %w", err)
		}
	}
	if r.TypedResults {
		dst = AppendBool(AppendString(dst, ExtTypedResults), true)
	}
	return dst, nil
}

// DecodeRequest decodes a request payload without copying its arrays (see
// CalcRequest). It accepts what aserpc 0.1.3 writes plus the extension
// element; elements after the extension are ignored, as msgspec ignores
// elements after the sixth. Errors wrap ErrTruncated, ErrMalformed,
// ErrTooDeep or ErrTrailingBytes, or are a *VersionError,
// returned unwrapped so that its Error() is the reference's text.
func DecodeRequest(b []byte) (*CalcRequest, error) {
	r, err := decodeRequest(b)
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			return nil, ve // unwrapped: its text is the reference's
		}
		return nil, fmt.Errorf("decode request: %w", err)
	}
	return r, nil
}

func decodeRequest(b []byte) (*CalcRequest, error) {
	d := decoder{b: b}
	n, err := d.arrayLen()
	if err != nil {
		return nil, err
	}
	if n < 6 {
		return nil, d.errf(ErrMalformed, "request has %d elements, want 6", n)
	}
	v, err := d.int64()
	if err != nil {
		return nil, fmt.Errorf("version: %w", err)
	}
	if v != ProtocolVersion {
		// Checked first: a later version may lay out the rest differently.
		return nil, &VersionError{Got: v}
	}
	r := &CalcRequest{Version: int(v)}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{"numbers", &r.Numbers}, {"positions", &r.Positions}, {"cell", &r.Cell}, {"pbc", &r.PBC}} {
		if *f.dst, err = d.bin(); err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	np, err := d.arrayLen()
	if err != nil {
		return nil, fmt.Errorf("properties: %w", err)
	}
	r.Properties = make([]string, 0, min(np, maxPrealloc))
	for range np {
		p, err := d.str()
		if err != nil {
			return nil, fmt.Errorf("properties: %w", err)
		}
		r.Properties = append(r.Properties, p)
	}
	if n > 6 {
		if err := r.decodeExtension(&d); err != nil {
			return nil, fmt.Errorf("extension: %w", err)
		}
	}
	for i := 7; i < n; i++ {
		if err := d.skip(1); err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// decodeExtension reads element 6: nil or a map. Unknown keys are skipped
// so that later versions can add keys.
func (r *CalcRequest) decodeExtension(d *decoder) error {
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
		case ExtInfo:
			if d.nilNext() {
				continue
			}
			start := d.off
			v, err := d.value(1)
			if err != nil {
				return fmt.Errorf("info: %w", err)
			}
			m, ok := v.(map[string]any)
			if !ok {
				d.off = start
				return d.errf(ErrMalformed, "info is %T, want a map", v)
			}
			r.Info = m
		case ExtArrays:
			if d.nilNext() {
				continue
			}
			m, err := d.arrayMap(1, false)
			if err != nil {
				return fmt.Errorf("arrays: %w", err)
			}
			r.Arrays = m
		case ExtTypedResults:
			if r.TypedResults, err = d.bool(); err != nil {
				return fmt.Errorf("typed_results: %w", err)
			}
		case ExtDescribe:
			if r.Describe, err = d.bool(); err != nil {
				return fmt.Errorf("describe: %w", err)
			}
		case ExtAllResults:
			if r.AllResults, err = d.bool(); err != nil {
				return fmt.Errorf("all_results: %w", err)
			}
		default:
			if err := d.skip(1); err != nil {
				return err
			}
		}
	}
	return nil
}

// arrayMap decodes a map of name → Array.
func (d *decoder) arrayMap(depth int, allowNoData bool) (map[string]Array, error) {
	n, err := d.mapLen()
	if err != nil {
		return nil, err
	}
	m := make(map[string]Array, min(n, maxPrealloc))
	for range n {
		k, err := d.str()
		if err != nil {
			return nil, err
		}
		if m[k], err = d.array(depth+1, allowNoData); err != nil {
			return nil, fmt.Errorf("%q: %w", k, err)
		}
	}
	return m, nil
}

// ErrInvalidStructure marks a well-formed request whose structure cannot be
// computed: no atoms, an atomic number outside 0–118, or a position or cell
// component that is NaN or infinite.
var ErrInvalidStructure = errors.New("invalid structure")

// MaxAtomicNumber is the largest atomic number ASE knows (Og).
const MaxAtomicNumber = 118

// CheckStructure reports why r's structure cannot be computed, or nil.
// Validate checks that the arrays fit together; this checks their values,
// so that a NaN coordinate is an error rather than a silently wrong
// energy (a neighbour list drops a NaN atom without complaint). It reads
// the bytes in place: no copy, no alignment needed.
func (r *CalcRequest) CheckStructure() error {
	n := r.NumAtoms()
	if n == 0 {
		return fmt.Errorf("%w: no atoms", ErrInvalidStructure)
	}
	for i := 0; i < n; i++ {
		if z := int32(binary.LittleEndian.Uint32(r.Numbers[4*i:])); z < 0 || z > MaxAtomicNumber {
			return fmt.Errorf("%w: atom %d has atomic number %d (want 0–%d)", ErrInvalidStructure, i, z, MaxAtomicNumber)
		}
	}
	if i := firstNonFinite(r.Positions); i >= 0 {
		return fmt.Errorf("%w: position of atom %d is %v (must be finite)", ErrInvalidStructure, i/3,
			math.Float64frombits(binary.LittleEndian.Uint64(r.Positions[8*i:])))
	}
	if i := firstNonFinite(r.Cell); i >= 0 {
		return fmt.Errorf("%w: cell vector %d is %v in component %d (must be finite)", ErrInvalidStructure, i/3,
			math.Float64frombits(binary.LittleEndian.Uint64(r.Cell[8*i:])), i%3)
	}
	return nil
}

// firstNonFinite returns the index of the first little-endian float64 in b
// that is NaN or ±Inf (all exponent bits set), or -1.
func firstNonFinite(b []byte) int {
	for i := 0; 8*i+8 <= len(b); i++ {
		if binary.LittleEndian.Uint64(b[8*i:])>>52&0x7ff == 0x7ff {
			return i
		}
	}
	return -1
}
