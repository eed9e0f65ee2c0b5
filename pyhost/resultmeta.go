package pyhost

// A compute's reply meta, decoded without reflection: encoding/json took
// ~7 µs of every small request (25–30 µs with the caches cold between the
// requests of an MD loop, traced); fastjson's parser, reused, allocates
// only what the result keeps.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/valyala/fastjson"
)

var replyParsers fastjson.ParserPool

// decodeResultMeta decodes a compute reply ({"ok": true, "values": ...,
// "order": ..., "dropped": ...}) into out, as json.Decoder with UseNumber
// would, its scalars as plain() makes them.
func decodeResultMeta(b []byte, out *resultMeta) error {
	p := replyParsers.Get()
	defer replyParsers.Put(p)
	v, err := p.ParseBytes(b)
	if err != nil {
		return err
	}
	return out.from(v)
}

func (out *resultMeta) from(v *fastjson.Value) error {
	o, err := v.Object()
	if err != nil {
		return err
	}
	o.Visit(func(key []byte, f *fastjson.Value) {
		if err != nil {
			return
		}
		switch string(key) {
		case "values":
			err = out.values(f)
		case "order":
			out.Order, err = stringList(f)
		case "dropped":
			err = out.dropped(f)
		case "error":
			if f.Type() != fastjson.TypeNull {
				out.Error = &PyError{Type: str(f, "type"), Message: str(f, "message"), Traceback: str(f, "traceback")}
			}
		}
	})
	return err
}

func (out *resultMeta) values(f *fastjson.Value) error {
	if f.Type() == fastjson.TypeNull {
		out.Values = map[string]resultValue{}
		return nil
	}
	vo, err := f.Object()
	if err != nil {
		return fmt.Errorf("values: %w", err)
	}
	out.Values = make(map[string]resultValue, vo.Len())
	vo.Visit(func(name []byte, x *fastjson.Value) {
		if err != nil {
			return
		}
		var rv resultValue
		if ix := x.Get("index"); ix != nil && ix.Type() != fastjson.TypeNull {
			i, ierr := ix.Int()
			if ierr != nil {
				err = fmt.Errorf("values.%s.index: %w", name, ierr)
				return
			}
			rv.Index = &i
			rv.DType = str(x, "dtype")
			for _, d := range x.GetArray("shape") {
				n, derr := d.Int()
				if derr != nil {
					err = fmt.Errorf("values.%s.shape: %w", name, derr)
					return
				}
				rv.Shape = append(rv.Shape, n)
			}
			if rv.Shape == nil {
				rv.Shape = []int{} // a 0-d array
			}
		} else if s := x.Get("scalar"); s != nil {
			if rv.Scalar, err = scalarOf(s); err != nil {
				return
			}
		}
		out.Values[string(name)] = rv
	})
	return err
}

func (out *resultMeta) dropped(f *fastjson.Value) error {
	if f.Type() == fastjson.TypeNull {
		return nil
	}
	a, err := f.Array()
	if err != nil {
		return fmt.Errorf("dropped: %w", err)
	}
	for _, d := range a {
		out.Dropped = append(out.Dropped, Dropped{Name: str(d, "name"), Error: str(d, "error")})
	}
	return nil
}

// scalarOf is a JSON scalar as json.Decoder with UseNumber, then plain,
// makes it: int64 for a whole number, float64, string, bool or nil.
func scalarOf(v *fastjson.Value) (any, error) {
	switch v.Type() {
	case fastjson.TypeNull:
		return nil, nil
	case fastjson.TypeTrue:
		return true, nil
	case fastjson.TypeFalse:
		return false, nil
	case fastjson.TypeString:
		return string(v.GetStringBytes()), nil
	case fastjson.TypeNumber:
		raw := v.MarshalTo(nil)
		if i, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
			return i, nil
		}
		return strconv.ParseFloat(string(raw), 64)
	}
	// Not a scalar the helper sends; decoded as before all the same.
	var x any
	d := json.NewDecoder(bytes.NewReader(v.MarshalTo(nil)))
	d.UseNumber()
	if err := d.Decode(&x); err != nil {
		return nil, err
	}
	return plain(x), nil
}

func str(v *fastjson.Value, key string) string { return string(v.GetStringBytes(key)) }

func stringList(v *fastjson.Value) ([]string, error) {
	if v.Type() == fastjson.TypeNull {
		return nil, nil
	}
	a, err := v.Array()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(a))
	for i, s := range a {
		b, err := s.StringBytes()
		if err != nil {
			return nil, errors.New("order: not a string")
		}
		out[i] = string(b)
	}
	return out, nil
}
