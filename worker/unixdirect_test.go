package worker

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/wire"
)

// sessionPayload is a request whose extension names the session key.
func sessionPayload(t *testing.T, key string, x float64) []byte {
	t.Helper()
	b, err := wire.Marshal([]any{int64(1), wire.Int32Bytes([]int32{1}), wire.Float64Bytes([]float64{x, 0, 0}),
		make([]byte, 72), []byte{0, 0, 0}, []any{"energy"}, map[string]any{wire.ExtAffinity: key, wire.ExtSession: 60}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frame is one message of the unix direct path.
func frame(frames ...[]byte) []byte {
	var body []byte
	for _, f := range frames {
		body = binary.LittleEndian.AppendUint32(body, uint32(len(f)))
		body = append(body, f...)
	}
	return append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// readFrames reads one message; nil when the worker closed the connection.
func readFrames(t *testing.T, c net.Conn) [][]byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var head [4]byte
	if _, err := readFull(c, head[:]); err != nil {
		return nil
	}
	body := make([]byte, binary.LittleEndian.Uint32(head[:]))
	if _, err := readFull(c, body); err != nil {
		t.Fatalf("a message cut short: %v", err)
	}
	var out [][]byte
	for len(body) > 0 {
		n := binary.LittleEndian.Uint32(body)
		out = append(out, body[4:4+n])
		body = body[4+n:]
	}
	return out
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestWorker_DirectUnix: next to an ipc broker a worker serves its
// session's client on a plain unix socket of its own: the session's
// requests are answered, anything else gets an ERROR or loses its
// connection, and none of it disturbs the worker's service to its broker.
func TestWorker_DirectUnix(t *testing.T) {
	r := newRouter(t)
	sock := filepath.Join(tempDir(t), "w.ipc")
	startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: echo, Direct: "ipc://" + sock})
	m := r.recv(2 * time.Second)
	if wire.Command(m[2][0]) != wire.Ready || len(m) != 6 {
		t.Fatalf("first message %q, want READY with the worker's info", m)
	}
	c, err := wire.ParseCapacity(m[5])
	if err != nil || c.Info == nil || c.Info.Direct != "unix://"+sock {
		t.Fatalf("READY's info %+v %v: want direct unix://%s", c.Info, err, sock)
	}
	id := m[0]
	dial := func() net.Conn {
		t.Helper()
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	// Not reserved yet: refused, and the connection stays usable.
	conn := dial()
	p1 := sessionPayload(t, "S1", 1)
	conn.Write(frame(wire.Request.Frame(), []byte(calcName), p1, []byte("c1")))
	if got := readFrames(t, conn); len(got) != 3 || wire.Command(got[0][0]) != wire.Error ||
		!strings.Contains(string(got[1]), "not reserved") || string(got[2]) != "c1" {
		t.Fatalf("before the session: %q", got)
	}

	// The broker reserves the worker for S1 with a job.
	r.send(id, nil, []byte("client"), p1, wire.JobHint{Session: "S1"}.Encode())
	if got := r.expect(wire.Response, 2*time.Second); !bytes.Equal(got[4], append([]byte("echo:"), p1...)) {
		t.Fatalf("job through the broker: %q", got)
	}
	r.expect(wire.Ready, time.Second)

	// The session's requests, one of them written in pieces.
	p2 := sessionPayload(t, "S1", 2)
	msg := frame(wire.Request.Frame(), []byte(calcName), p2, []byte("c2"))
	conn.Write(msg[:3])
	time.Sleep(20 * time.Millisecond)
	conn.Write(msg[3:20])
	time.Sleep(20 * time.Millisecond)
	conn.Write(msg[20:])
	if got := readFrames(t, conn); len(got) != 3 || wire.Command(got[0][0]) != wire.Response ||
		!bytes.Equal(got[1], append([]byte("echo:"), p2...)) || string(got[2]) != "c2" {
		t.Fatalf("direct request in pieces: %q", got)
	}
	// Two at once: both answered, in order.
	p3, p4 := sessionPayload(t, "S1", 3), sessionPayload(t, "S1", 4)
	conn.Write(append(frame(wire.Request.Frame(), []byte(calcName), p3, []byte("c3")),
		frame(wire.Request.Frame(), []byte(calcName), p4, []byte("c4"))...))
	for _, want := range []string{"c3", "c4"} {
		if got := readFrames(t, conn); len(got) != 3 || string(got[2]) != want {
			t.Fatalf("pipelined request %s: %q", want, got)
		}
	}

	// Wrong session, wrong calculator, wrong command, too few frames: ERROR.
	for what, req := range map[string][][]byte{
		"another session":    {wire.Request.Frame(), []byte(calcName), sessionPayload(t, "S2", 1), []byte("x")},
		"another calculator": {wire.Request.Frame(), []byte("other"), p2, []byte("x")},
		"not a request":      {wire.Ready.Frame(), []byte(calcName), p2, []byte("x")},
		"too few frames":     {wire.Request.Frame(), []byte(calcName)},
		"no frames":          {},
	} {
		conn.Write(frame(req...))
		got := readFrames(t, conn)
		if len(got) < 2 || wire.Command(got[0][0]) != wire.Error {
			t.Fatalf("%s: %q, want ERROR", what, got)
		}
	}

	// Framing that is not ours: the connection is closed, nothing else.
	for what, junk := range map[string][]byte{
		"a frame past its end": append(binary.LittleEndian.AppendUint32(nil, 8), 0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4),
		"a huge length":        binary.LittleEndian.AppendUint32(nil, 0xffffffff),
		"nine frames":          frame(nil, nil, nil, nil, nil, nil, nil, nil, nil),
	} {
		bad := dial()
		bad.Write(junk)
		if got := readFrames(t, bad); got != nil {
			t.Fatalf("%s: answered %q, want the connection closed", what, got)
		}
	}
	// A client that goes away mid-message.
	gone := dial()
	gone.Write(msg[:10])
	gone.Close()

	// A client that sends a big request and never reads the reply: dropped
	// after a heartbeat interval (1 s), the loop free again.
	stuck := dial()
	big, err := wire.Marshal([]any{int64(1), wire.Int32Bytes([]int32{1}), make([]byte, 8<<20),
		make([]byte, 72), []byte{0, 0, 0}, []any{"energy"}, map[string]any{wire.ExtAffinity: "S1", wire.ExtSession: 60}})
	if err != nil {
		t.Fatal(err)
	}
	go stuck.Write(frame(wire.Request.Frame(), []byte(calcName), big, []byte("big")))
	time.Sleep(200 * time.Millisecond)

	// Still serving both: the session directly, the broker's jobs.
	t0 := time.Now()
	p5 := sessionPayload(t, "S1", 5)
	conn.Write(frame(wire.Request.Frame(), []byte(calcName), p5, []byte("c5")))
	if got := readFrames(t, conn); len(got) != 3 || wire.Command(got[0][0]) != wire.Response || string(got[2]) != "c5" {
		t.Fatalf("after the junk: %q", got)
	}
	if d := time.Since(t0); d < 500*time.Millisecond || d > 3*time.Second {
		t.Errorf("answered %v after a client stopped reading a big reply, want about the heartbeat interval (1 s)", d)
	}
	for m := r.tryRecv(100 * time.Millisecond); m != nil; m = r.tryRecv(100 * time.Millisecond) {
	} // heartbeats meanwhile
	r.send(id, nil, []byte("client"), []byte("plain"))
	if got := r.expect(wire.Response, 2*time.Second); string(got[4]) != "echo:plain" {
		t.Fatalf("broker job after the junk: %q", got)
	}

	// SESSION_END: the direct path refuses from then on.
	r.send(id, nil, wire.SessionEnd.Frame())
	time.Sleep(100 * time.Millisecond)
	conn.Write(frame(wire.Request.Frame(), []byte(calcName), p5, []byte("c6")))
	if got := readFrames(t, conn); len(got) != 3 || wire.Command(got[0][0]) != wire.Error {
		t.Fatalf("after SESSION_END: %q", got)
	}
}

// TestWorker_DirectTCPAndLocal: next to a tcp broker a worker serves its
// session's client on its CURVE tcp socket and, for a client on its host,
// on its unix socket too, announced with the host's boot id; one loop
// waits on both.
func TestWorker_DirectTCPAndLocal(t *testing.T) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot id here: %v", err)
	}
	r := newRouter(t)
	sock := filepath.Join(tempDir(t), "w.sock")
	startWorker(t, Config{Broker: r.ep, Heartbeat: time.Second, Handler: echo, Direct: "tcp://127.0.0.1:*",
		DirectLocal: "ipc://" + sock})
	m := r.recv(2 * time.Second)
	c, err := wire.ParseCapacity(m[5])
	if err != nil || c.Info == nil {
		t.Fatalf("READY's info: %v", err)
	}
	i := c.Info
	if !strings.HasPrefix(i.Direct, "tcp://127.0.0.1:") || len(i.DirectKey) != 40 || i.DirectLocal != "unix://"+sock ||
		i.Boot != strings.TrimSpace(string(boot)) {
		t.Fatalf("announced %+v", i)
	}
	id := m[0]
	p1 := sessionPayload(t, "S1", 1)
	r.send(id, nil, []byte("client"), p1, wire.JobHint{Session: "S1"}.Encode())
	r.expect(wire.Response, 2*time.Second)

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	z, err := zmq.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	z.SetLinger(0)
	pub, secret, _ := zmq.NewCurveKeypair()
	z.SetCurveServerkey(i.DirectKey)
	z.SetCurvePublickey(pub)
	z.SetCurveSecretkey(secret)
	if err := z.Connect(i.Direct); err != nil {
		t.Fatal(err)
	}
	z.SetRcvtimeo(5 * time.Second)
	for k := range 3 { // alternating, each waking the loop from its sleep
		time.Sleep(1500 * time.Millisecond * time.Duration(k%2)) // past the worker's spin
		pu := sessionPayload(t, "S1", float64(10+k))
		conn.Write(frame(wire.Request.Frame(), []byte(calcName), pu, []byte("u")))
		if got := readFrames(t, conn); len(got) != 3 || !bytes.Equal(got[1], append([]byte("echo:"), pu...)) {
			t.Fatalf("unix request %d: %q", k, got)
		}
		pz := sessionPayload(t, "S1", float64(20+k))
		z.SendMessage([]byte{}, wire.Request.Frame(), []byte(calcName), pz, []byte("z"))
		got, err := z.RecvMessageBytes(0)
		if err != nil || len(got) != 4 || !bytes.Equal(got[2], append([]byte("echo:"), pz...)) {
			t.Fatalf("tcp request %d: %q %v", k, got, err)
		}
	}
}
