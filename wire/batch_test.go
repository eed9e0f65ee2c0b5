package wire

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestCapacityRoundTrip(t *testing.T) {
	st := &BatchStats{}
	st.Observe(1, 8, 0)
	st.Observe(3, 40, 1500)
	st.Observe(33, 500, 200_000)
	st.Splits = 1
	c := Capacity{Structures: 32, Atoms: 4096, WaitMs: 5, Stats: st}
	got, err := ParseCapacity(EncodeCapacity(c))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("got %+v\nwant %+v", got, c)
	}
	// sizes: 1 → ≤1, 3 → ≤4, 33 → ≤64; waits: 0 → 0, 1.5 ms → ≤2, 200 ms → more.
	if want := []int64{1, 0, 1, 0, 0, 0, 1, 0}; !reflect.DeepEqual(st.Sizes, want) {
		t.Errorf("sizes %v, want %v", st.Sizes, want)
	}
	if want := []int64{1, 0, 1, 0, 0, 0, 0, 0, 1}; !reflect.DeepEqual(st.Waits, want) {
		t.Errorf("waits %v, want %v", st.Waits, want)
	}
	if m := st.Map(); m["mean_size"] != float64(37)/3 {
		t.Errorf("mean %v", m["mean_size"])
	}
	// No stats before the first batch; unknown keys ignored.
	b, _ := Marshal(map[string]any{"batch": int64(4), "future": "x"})
	if got, err := ParseCapacity(b); err != nil || got.Structures != 4 || got.Stats != nil || got.Atoms != 0 {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestCapacityRejects(t *testing.T) {
	for _, v := range []any{"x", int64(3), map[string]any{}, map[string]any{"batch": int64(0)},
		map[string]any{"batch": "8"}, map[string]any{"batch": 2.0}} {
		b, _ := Marshal(v)
		if _, err := ParseCapacity(b); !errors.Is(err, ErrCapacity) {
			t.Errorf("%v: %v", v, err)
		}
	}
	if _, err := ParseCapacity([]byte{0xc1}); !errors.Is(err, ErrCapacity) {
		t.Errorf("garbage: %v", err)
	}
}

func TestRequestAtoms(t *testing.T) {
	r := NewCalcRequest([]int32{1, 8, 1}, make([]float64, 9), nil, [3]bool{}, "energy")
	b, err := EncodeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := RequestAtoms(b); err != nil || n != 3 {
		t.Fatalf("%d %v", n, err)
	}
	for _, bad := range [][]byte{nil, {0x91, 1}, b[:3]} {
		if _, err := RequestAtoms(bad); err == nil {
			t.Errorf("%x: no error", bad)
		}
	}
}

func TestJobHint(t *testing.T) {
	h := JobHint{Follow: 7, Expect: 0}
	got, err := ParseJobHint(h.Encode())
	if err != nil || got != h || string(h.Encode()) != "7,0" {
		t.Fatalf("%+v %v %q", got, err, h.Encode())
	}
}

func TestRequestAffinity(t *testing.T) {
	affinity := func(b []byte) string { a, _ := RequestRouting(b); return a }
	r := NewCalcRequest([]int32{1, 8}, make([]float64, 6), nil, [3]bool{}, "energy", "forces")
	r.Info = map[string]any{"charge": int64(1)}
	r.TypedResults = true
	b, _ := EncodeRequest(r)
	if got := affinity(b); got != "" {
		t.Fatalf("no affinity: %q", got)
	}
	// The key among others, as our client writes it (sorted keys).
	ext := map[string]any{"all_results": true, "affinity": "c0ffee", "info": map[string]any{"x": 1.5}, "typed_results": true}
	v := []any{int64(1), r.Numbers, r.Positions, make([]byte, 72), []byte{0, 0, 0}, []any{"energy"}, ext}
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if got := affinity(b); got != "c0ffee" {
		t.Fatalf("affinity %q", got)
	}
	ext["affinity"] = string(make([]byte, MaxAffinityLen+1))
	b, _ = Marshal(v)
	if got := affinity(b); got != "" {
		t.Fatalf("an over-long affinity was read: %q", got)
	}
	for _, bad := range [][]byte{nil, {0x97}, b[:20]} {
		if got := affinity(bad); got != "" {
			t.Errorf("%x: %q", bad, got)
		}
	}
}

func TestRequestRouting_Session(t *testing.T) {
	r := NewCalcRequest([]int32{1}, make([]float64, 3), nil, [3]bool{}, "energy")
	enc := func(ext map[string]any) []byte {
		v := []any{int64(1), r.Numbers, r.Positions, make([]byte, 72), []byte{0, 0, 0}, []any{"energy"}, ext}
		b, err := Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		ext  map[string]any
		aff  string
		idle float64
	}{
		{map[string]any{"affinity": "k1", "session": 60.0}, "k1", 60},
		{map[string]any{"session": int64(30), "affinity": "k2", "typed_results": true}, "k2", 30},
		{map[string]any{"session": 60.0}, "", 0},                     // no key: no session
		{map[string]any{"affinity": "k3", "session": "60"}, "k3", 0}, // not a number
		{map[string]any{"affinity": "k4", "session": -1.0}, "k4", 0}, // not positive
		{map[string]any{"affinity": "k5", "session": 1e12}, "k5", MaxSessionIdle},
		{map[string]any{"affinity": "k6"}, "k6", 0},
	} {
		aff, idle := RequestRouting(enc(c.ext))
		if aff != c.aff || idle != c.idle {
			t.Errorf("%v: %q %v, want %q %v", c.ext, aff, idle, c.aff, c.idle)
		}
	}
}

func TestJobHintSessionAndDirectInfo(t *testing.T) {
	for _, h := range []JobHint{{Follow: 2, Expect: 1}, {Session: "c0ffee"}, {Follow: 1, Session: "k"}} {
		got, err := ParseJobHint(h.Encode())
		if err != nil || got != h {
			t.Errorf("%+v -> %q -> %+v %v", h, h.Encode(), got, err)
		}
	}
	if _, err := ParseJobHint([]byte("0,0," + string(make([]byte, MaxAffinityLen+1)))); err == nil {
		t.Error("an over-long session key was accepted")
	}
	c, err := ParseCapacity(EncodeCapacity(Capacity{Structures: 1, Info: &WorkerInfo{Direct: "unix:///x/w-1.ipc", DirectJobs: 9}}))
	if err != nil || c.Info.Direct != "unix:///x/w-1.ipc" || c.Info.DirectJobs != 9 {
		t.Fatalf("%+v %v", c.Info, err)
	}
	c, _ = ParseCapacity(EncodeCapacity(Capacity{Structures: 1, Info: &WorkerInfo{Direct: "http://x"}}))
	if c.Info.Direct != "" {
		t.Errorf("a direct endpoint of no transport of ours was accepted: %q", c.Info.Direct)
	}
	c, _ = ParseCapacity(EncodeCapacity(Capacity{Structures: 1, Info: &WorkerInfo{Direct: "tcp://10.0.0.1:1"}}))
	if c.Info.Direct != "" {
		t.Errorf("a tcp direct endpoint without its CURVE key was accepted: %q", c.Info.Direct)
	}
	key := "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
	c, _ = ParseCapacity(EncodeCapacity(Capacity{Structures: 1, Info: &WorkerInfo{Direct: "tcp://10.0.0.1:1", DirectKey: key}}))
	if c.Info.Direct != "tcp://10.0.0.1:1" || c.Info.DirectKey != key {
		t.Errorf("tcp direct endpoint: %+v", c.Info)
	}
	boot := "0c3f9a52-6d1e-4c43-9f0e-2f6b1f0b7a11"
	c, _ = ParseCapacity(EncodeCapacity(Capacity{Structures: 1, Info: &WorkerInfo{Direct: "tcp://10.0.0.1:1", DirectKey: key,
		DirectLocal: "unix:///run/a b/w-1.sock", Boot: boot}}))
	if got, want := c.Info.Endpoint(), "tcp://10.0.0.1:1 "+key+" "+boot+" unix:///run/a b/w-1.sock"; got != want {
		t.Errorf("endpoint with a local socket: %q, want %q", got, want)
	}
	for _, bad := range []WorkerInfo{
		{Direct: "tcp://10.0.0.1:1", DirectKey: key, DirectLocal: "unix:///w.sock", Boot: "not a boot id"},
		{Direct: "tcp://10.0.0.1:1", DirectKey: key, DirectLocal: "ipc:///w.sock", Boot: boot},
		{Direct: "unix:///w.sock", DirectLocal: "unix:///v.sock", Boot: boot},
	} {
		c, _ = ParseCapacity(EncodeCapacity(Capacity{Structures: 1, Info: &bad}))
		if c.Info.DirectLocal != "" || strings.Contains(c.Info.Endpoint(), boot) {
			t.Errorf("%+v: local socket accepted: %+v", bad, c.Info)
		}
	}
}
