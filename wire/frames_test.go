package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestParseToWorker(t *testing.T) {
	got, err := ParseToWorker([][]byte{{}, []byte("cid"), []byte("req")})
	if err != nil || string(got.Client) != "cid" || string(got.Request) != "req" || got.Shutdown {
		t.Fatalf("job: %+v %v", got, err)
	}
	got, err = ParseToWorker([][]byte{{}, {0x08}})
	if err != nil || !got.Shutdown {
		t.Fatalf("shutdown: %+v %v", got, err)
	}
	got, err = ParseToWorker([][]byte{{}, []byte("cid"), []byte("req"), []byte("2,5")})
	if err != nil || got.Hint == nil || *got.Hint != (JobHint{Follow: 2, Expect: 5}) {
		t.Fatalf("job with a hint: %+v %v", got, err)
	}
	for _, bad := range [][][]byte{nil, {{}}, {{1}, {2}, {3}}, {{}, {0x07}}, {{}, {1}, {2}, {3}, {4}},
		{{}, {1}, {2}, []byte("x,1")}, {{}, {1}, {2}, []byte("1")}, {{}, {1}, {2}, []byte("-1,0")}} {
		if _, err := ParseToWorker(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestParseToManager(t *testing.T) {
	got, err := ParseToManager([][]byte{{}, {0x0c}, []byte("lj")})
	if err != nil || got.Spawn != "lj" {
		t.Fatalf("spawn: %+v %v", got, err)
	}
	if _, err := ParseToManager([][]byte{{}, {0x0c}, {0xff}}); !errors.Is(err, ErrName) {
		t.Fatalf("bad utf-8 name: %v", err)
	}
}

func TestManagerMessages(t *testing.T) {
	m := ManagerReadyMessage([]string{"a", "b"})
	if !bytes.Equal(m[2], []byte("a,b")) || m[1][0] != 0x0e {
		t.Fatalf("%q", m)
	}
	s := SpawnResponseMessage("lj", false, "No config")
	if len(s) != 5 || string(s[3]) != "error" || string(s[4]) != "No config" {
		t.Fatalf("%q", s)
	}
}

func TestParseClientReply(t *testing.T) {
	r, err := ParseClientReply([][]byte{{}, {0x05}, []byte("p"), []byte("c1")}, true)
	if err != nil || r.Command != Response || string(r.Corr) != "c1" {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := ParseClientReply([][]byte{{0x04}, []byte("p")}, false); err == nil {
		t.Fatal("accepted a REQUEST as a reply")
	}
}

func FuzzParseFrames(f *testing.F) {
	f.Add([]byte{0, 1, 'c', 1, 'r'}, uint8(3))
	f.Add([]byte{0, 1, 0x08}, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		// Cut data into up to n frames at arbitrary points.
		var frames [][]byte
		k := int(n%8) + 1
		for i := 0; i < k; i++ {
			cut := len(data) / (k - i)
			frames = append(frames, data[:cut])
			data = data[cut:]
		}
		ParseToWorker(frames)
		ParseToManager(frames)
		ParseClientReply(frames, true)
		ParseClientReply(frames, false)
	})
}
