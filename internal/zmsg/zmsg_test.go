package zmsg

import (
	"bytes"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

func pair(t *testing.T) (router, dealer *zmq.Socket) {
	t.Helper()
	ep := "ipc://" + filepath.Join(t.TempDir(), "z.ipc")
	r, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		t.Fatal(err)
	}
	r.SetLinger(0)
	r.SetRouterMandatory(1)
	if err := r.Bind(ep); err != nil {
		t.Fatal(err)
	}
	d, _ := zmq.NewSocket(zmq.DEALER)
	d.SetLinger(0)
	if err := d.Connect(ep); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); r.Close() })
	return r, d
}

func TestRawMatchesPebbe(t *testing.T) {
	r, _ := pair(t)
	// A ROUTER with no peer named "nobody" must reject a mandatory send
	// through the raw pointer exactly as through pebbe.
	m := New()
	m.AddBytes([]byte("nobody"))
	m.AddBytes([]byte("x"))
	if err := Send(Raw(r), m, true); err != syscall.EHOSTUNREACH {
		t.Fatalf("send to unknown peer through Raw: got %v, want EHOSTUNREACH", err)
	}
}

func TestRecvForwardZeroCopy(t *testing.T) {
	r, d := pair(t)
	big := bytes.Repeat([]byte{7}, 1<<20)
	if _, err := d.SendMessage("", "cmd", big); err != nil {
		t.Fatal(err)
	}
	a, _, err := Poll2(Raw(r), nil, 2*time.Second)
	if err != nil || !a {
		t.Fatalf("poll: %v %v", a, err)
	}
	in, err := Recv(Raw(r), true)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := in.Len(), 4; got != want {
		t.Fatalf("frames: got %d want %d", got, want)
	}
	if !bytes.Equal(in.Frame(3), big) || string(in.Frame(2)) != "cmd" {
		t.Fatal("frame contents differ")
	}
	view := in.Frame(3)

	// Keep a shared reference, then move the frame into a reply.
	keep := New()
	if err := keep.AddRef(in, 3); err != nil {
		t.Fatal(err)
	}
	out := New()
	out.AddBytes(in.Frame(0))
	out.AddBytes(nil)
	out.AddBytes([]byte("echo"))
	if err := out.AddMove(in, 3); err != nil {
		t.Fatal(err)
	}
	if got := in.Size(3); got != 0 {
		t.Fatalf("moved-from frame size %d, want 0", got)
	}
	if &keep.Frame(0)[0] != &view[0] {
		t.Fatal("AddRef copied the bytes")
	}
	if err := Send(Raw(r), out, true); err != nil {
		t.Fatal(err)
	}
	in.Close()
	in.Close() // idempotent
	got, err := d.RecvMessageBytes(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || string(got[1]) != "echo" || !bytes.Equal(got[2], big) {
		t.Fatalf("echo: %d frames", len(got))
	}
	if !bytes.Equal(keep.Frame(0), big) {
		t.Fatal("shared reference corrupted after send")
	}
	keep.Close()
}

func TestRecvDropsFramesBeyondMax(t *testing.T) {
	r, d := pair(t)
	parts := make([]any, 12)
	for i := range parts {
		parts[i] = []byte{byte(i)}
	}
	d.SendMessage(parts...)
	Poll2(Raw(r), nil, 2*time.Second)
	m, err := Recv(Raw(r), true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, want := m.Len(), MaxFrames; got != want {
		t.Fatalf("kept %d frames, want %d", got, want)
	}
	if got, want := m.Dropped(), 13-MaxFrames; got != want {
		t.Fatalf("dropped %d, want %d", got, want)
	}
	// The next message is intact: nothing of the long one leaked into it.
	d.SendMessage("a", "b")
	Poll2(Raw(r), nil, 2*time.Second)
	m2, err := Recv(Raw(r), true)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if m2.Len() != 3 || string(m2.Frame(1)) != "a" {
		t.Fatalf("next message damaged: %d frames", m2.Len())
	}
}

func TestRecvEmptyIsEAGAIN(t *testing.T) {
	r, _ := pair(t)
	if _, err := Recv(Raw(r), true); err != syscall.EAGAIN {
		t.Fatalf("got %v, want EAGAIN", err)
	}
}
