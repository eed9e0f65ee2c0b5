package wire

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// addSeeds adds every golden vector and a few hand-made payloads.
func addSeeds(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.bin"))
	if len(files) == 0 {
		f.Fatal("no testdata/*.bin seeds")
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{"", "c0", "90", "80", "dd ffffffff", "81 a1 61 92 cb 7ff8000000000001 ca 7fc00000", "c1", "d4 00 00"} {
		f.Add(unhex(f, s))
	}
}

// FuzzUnmarshal: Unmarshal never panics, and whatever it accepts Marshal
// encodes to a canonical form that decodes and encodes to itself.
func FuzzUnmarshal(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Unmarshal(data)
		if err != nil {
			return
		}
		b, err := Marshal(v)
		if err != nil {
			t.Fatalf("Marshal of a decoded value: %v", err)
		}
		v2, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("Unmarshal of Marshal output %x: %v", b, err)
		}
		b2, err := Marshal(v2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("not canonical:\n%x\n%x", b, b2)
		}
	})
}

// FuzzDecodeRequest: DecodeRequest never panics, and a request it accepts
// encodes to a payload that decodes and encodes to itself.
func FuzzDecodeRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data)
		if err != nil {
			return
		}
		_ = r.NumbersInt32()
		_ = r.PositionsFloat64()
		_ = r.PBCBools()
		b, err := EncodeRequest(r)
		if err != nil {
			t.Fatalf("EncodeRequest of a decoded request: %v", err)
		}
		r2, err := DecodeRequest(b)
		if err != nil {
			t.Fatalf("DecodeRequest of EncodeRequest output %x: %v", b, err)
		}
		b2, err := EncodeRequest(r2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("not canonical:\n%x\n%x", b, b2)
		}
	})
}

// FuzzDecodeResponse: DecodeResponse never panics, and a response it
// accepts encodes to a payload that decodes and encodes to itself.
func FuzzDecodeResponse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeResponse(data)
		if err != nil {
			return
		}
		_ = r.Err()
		for k := range r.Typed {
			if _, ok := r.Array(k); !ok {
				t.Fatalf("Array(%q) missing", k)
			}
		}
		b, err := EncodeResponse(r)
		if err != nil {
			t.Fatalf("EncodeResponse of a decoded response: %v", err)
		}
		r2, err := DecodeResponse(b)
		if err != nil {
			t.Fatalf("DecodeResponse of EncodeResponse output %x: %v", b, err)
		}
		b2, err := EncodeResponse(r2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("not canonical:\n%x\n%x", b, b2)
		}
	})
}
