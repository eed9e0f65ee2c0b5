package pyhost

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// TestDecodeResultMeta: the reflection-free decoder of a compute's reply
// gives what json.Decoder with UseNumber gave, scalars made plain.
func TestDecodeResultMeta(t *testing.T) {
	for _, meta := range []string{
		`{"ok": true, "values": {"energy": {"scalar": -0.123456789012345}, "forces": {"index": 0, "dtype": "<f8", "shape": [3, 3]}, "free_energy": {"scalar": -1e-300}, "energies": {"index": 1, "dtype": "<f4", "shape": [3]}}, "order": ["energy", "forces", "free_energy", "energies"]}`,
		`{"ok": true, "values": {"n": {"scalar": 42}, "big": {"scalar": 123456789012345678901234567890}, "neg": {"scalar": -7}, "zero": {"scalar": -0.0}, "e": {"scalar": 1E5}, "s": {"scalar": "caf\u00e9 \ud83d\ude00 \"q\""}, "t": {"scalar": true}, "f": {"scalar": false}, "none": {"scalar": null}, "d0": {"index": 0, "dtype": "<i8", "shape": []}}, "order": ["n", "big", "neg", "zero", "e", "s", "t", "f", "none", "d0"], "dropped": [{"name": "weird", "error": "TypeError: no"}]}`,
		`{"ok": true, "values": {}, "order": []}`,
		`{"ok": true, "values": {"odd": {"scalar": [1, 2.5, {"a": null}]}}, "order": ["odd"]}`,
		`{"error": {"type": "builtins.ValueError", "message": "bad", "traceback": "Traceback..."}, "values": null, "order": null}`,
	} {
		var want resultMeta
		d := json.NewDecoder(bytes.NewReader([]byte(meta)))
		d.UseNumber()
		if err := d.Decode(&want); err != nil {
			t.Fatal(err)
		}
		for k, v := range want.Values {
			v.Scalar = plain(v.Scalar)
			want.Values[k] = v
		}
		if want.Values == nil {
			want.Values = map[string]resultValue{}
		}
		var got resultMeta
		if err := decodeResultMeta([]byte(meta), &got); err != nil {
			t.Fatalf("%s: %v", meta, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\ngot  %#v\nwant %#v", meta, got, want)
		}
	}
	for _, bad := range []string{`{"values": {"x": {"index": "0"}}}`, `{"values": [1]}`, `{"order": [1]}`, `{"values": {"x": {"index": 0, "shape": ["a"]}}}`, `not json`} {
		var got resultMeta
		if err := decodeResultMeta([]byte(bad), &got); err == nil {
			t.Errorf("%s: decoded without an error", bad)
		}
	}
}

func BenchmarkDecodeResultMeta(b *testing.B) {
	meta := []byte(`{"ok": true, "values": {"energy": {"scalar": -0.123456789}, "forces": {"index": 0, "dtype": "<f8", "shape": [3, 3]}, "free_energy": {"scalar": -0.123456789}, "energies": {"index": 1, "dtype": "<f8", "shape": [3]}}, "order": ["energy", "forces", "free_energy", "energies"]}`)
	b.Run("fastjson", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			var out resultMeta
			if err := decodeResultMeta(meta, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			var out resultMeta
			d := json.NewDecoder(bytes.NewReader(meta))
			d.UseNumber()
			if err := d.Decode(&out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
