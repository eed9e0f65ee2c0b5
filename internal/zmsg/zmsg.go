// Package zmsg receives, holds and forwards ZeroMQ message frames without
// copying their bytes into Go memory.
//
// pebbe/zmq4 copies every received frame into a Go []byte and every sent
// []byte into a new zmq_msg_t. For a 2.4 MB payload passing through the
// broker that is two copies per hop; measured on these machines it made the
// broker 2–3× slower than libzmq's own zmq_proxy. A Msg keeps libzmq's
// zmq_msg_t frames in C memory; Go sees them as views ([]byte over C
// memory) and can move or share (reference-count) a frame into an outgoing
// message, so a payload crosses the broker with zero copies.
//
// Sockets are still created, configured and bound with pebbe/zmq4; Raw
// reads the libzmq socket pointer out of a *zmq4.Socket (its first field),
// which TestRawMatchesPebbe guards against a layout change in an upgrade.
//
// Ownership: a Msg is owned by one goroutine; Close releases its frames and
// is idempotent. Views returned by Frame are valid until the frame is
// moved, the message is sent, or it is closed.
package zmsg

/*
#cgo pkg-config: libzmq
#include <stdlib.h>
#include "zmsg.h"
*/
import "C"

import (
	"errors"
	"syscall"
	"time"
	"unsafe"

	zmq "github.com/pebbe/zmq4"
)

// MaxFrames is the most frames a received message keeps; see Msg.Dropped.
const MaxFrames = C.ZMSG_MAX

// ErrClosed reports use of a closed Msg.
var ErrClosed = errors.New("zmsg: message closed")

// Msg is a multipart message whose frames live in libzmq's memory.
type Msg struct {
	c *C.zmsg_t
}

// New returns an empty message, to be filled with Add* and sent.
func New() *Msg {
	return &Msg{c: C.zmsg_new()}
}

// Close releases the frames. Idempotent.
func (m *Msg) Close() {
	if m == nil || m.c == nil {
		return
	}
	C.zmsg_destroy(m.c)
	m.c = nil
}

// Len returns the number of frames held.
func (m *Msg) Len() int {
	if m.c == nil {
		return 0
	}
	return int(m.c.n)
}

// Dropped returns how many frames beyond MaxFrames were received and
// discarded: a message that had them was malformed for aserpc.
func (m *Msg) Dropped() int {
	if m.c == nil {
		return 0
	}
	return int(m.c.dropped)
}

// Frame returns frame i as a view of C memory (no copy). The view must not
// be written, and not used after the frame is moved or the Msg closed/sent.
func (m *Msg) Frame(i int) []byte {
	if m.c == nil || i < 0 || i >= int(m.c.n) {
		return nil
	}
	n := int(m.c.size[i])
	if n == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(m.c.data[i]), n)
}

// Size returns the byte length of frame i.
func (m *Msg) Size(i int) int {
	if m.c == nil || i < 0 || i >= int(m.c.n) {
		return 0
	}
	return int(m.c.size[i])
}

// Property returns a message metadata property of frame i (e.g. "User-Id"
// set by a ZAP handler, "Peer-Address"), or "" when absent.
func (m *Msg) Property(i int, name string) string {
	if m.c == nil {
		return ""
	}
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	v := C.zmsg_gets(m.c, C.int(i), cs)
	if v == nil {
		return ""
	}
	return C.GoString(v)
}

// cUserID is the property name UserID asks for, made once: the broker
// asks for it on every message when authentication is on.
var cUserID = C.CString("User-Id")

// UserID returns frame i's "User-Id" property (what a ZAP handler said
// about the peer's connection), or "" when there is none. The frame's
// bytes are not touched; only the short property value is copied.
func (m *Msg) UserID(i int) string {
	if m.c == nil {
		return ""
	}
	v := C.zmsg_gets(m.c, C.int(i), cUserID)
	if v == nil {
		return ""
	}
	return C.GoString(v)
}

// AddBytes appends a copy of b as a new frame (for small frames:
// identities, commands, names).
func (m *Msg) AddBytes(b []byte) error {
	if m.c == nil {
		return ErrClosed
	}
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	if rc, err := C.zmsg_add_copy(m.c, p, C.size_t(len(b))); rc != 0 {
		return errnoErr(err)
	}
	return nil
}

// AddMove appends src's frame i, leaving that frame of src empty. No bytes
// are copied.
func (m *Msg) AddMove(src *Msg, i int) error {
	if m.c == nil || src.c == nil {
		return ErrClosed
	}
	if rc, err := C.zmsg_add_move(m.c, src.c, C.int(i)); rc != 0 {
		return errnoErr(err)
	}
	return nil
}

// AddRef appends a second reference to src's frame i. No bytes are copied
// for frames above libzmq's inline size; both references stay valid.
func (m *Msg) AddRef(src *Msg, i int) error {
	if m.c == nil || src.c == nil {
		return ErrClosed
	}
	if rc, err := C.zmsg_add_ref(m.c, src.c, C.int(i)); rc != 0 {
		return errnoErr(err)
	}
	return nil
}

// Raw returns the libzmq socket pointer of a pebbe/zmq4 socket.
func Raw(s *zmq.Socket) unsafe.Pointer {
	// *zmq4.Socket's first field is the libzmq handle (soc unsafe.Pointer).
	return *(*unsafe.Pointer)(unsafe.Pointer(s))
}

// Recv receives one whole message from sock. With dontwait it returns
// syscall.EAGAIN when nothing is waiting.
func Recv(sock unsafe.Pointer, dontwait bool) (*Msg, error) {
	m := New()
	if err := m.recv(sock, dontwait); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Msg) recv(sock unsafe.Pointer, dontwait bool) error {
	flags := C.int(0)
	if dontwait {
		flags = C.ZMQ_DONTWAIT
	}
	if rc, err := C.zmsg_recv(sock, m.c, flags); rc < 0 {
		return errnoErr(err)
	}
	return nil
}

// Send sends every frame of m as one message and closes m, whether or not
// it could be sent. With dontwait a peer at its high-water mark gives
// syscall.EAGAIN; an unknown ROUTER peer (ROUTER_MANDATORY) gives
// syscall.EHOSTUNREACH.
func Send(sock unsafe.Pointer, m *Msg, dontwait bool) error {
	defer m.Close()
	if m.c == nil {
		return ErrClosed
	}
	flags := C.int(0)
	if dontwait {
		flags = C.ZMQ_DONTWAIT
	}
	if rc, err := C.zmsg_send(sock, m.c, flags); rc != 0 {
		return errnoErr(err)
	}
	return nil
}

// Poll2 waits up to timeout for input on a and/or b (nil to leave one out).
// It blocks in C, which measured faster than parking on ZMQ_FD in Go's
// netpoller at every message size.
func Poll2(a, b unsafe.Pointer, timeout time.Duration) (aReady, bReady bool, err error) {
	var ra, rb C.int
	rc, cerr := C.zmsg_poll2(a, b, C.long(timeout/time.Millisecond), &ra, &rb)
	if rc < 0 {
		return false, false, errnoErr(cerr)
	}
	return ra != 0, rb != 0, nil
}

func errnoErr(err error) error {
	if err == nil {
		return syscall.EINVAL
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return err
}

// zmqRouterNotify and zmqNotifyDisconnect are libzmq's draft ZMQ_ROUTER_NOTIFY
// option and its ZMQ_NOTIFY_DISCONNECT flag (zmq.h, draft section; stable
// numbers since 4.3.0).
const (
	zmqRouterNotify     = 97
	zmqNotifyDisconnect = 2
)

// NotifyDisconnect asks a ROUTER socket to deliver, for each peer whose
// connection closes after its handshake, a message of two frames: the
// peer's routing id and one empty frame. It needs a libzmq built with the
// draft API (aserpc's static build is); otherwise it returns
// syscall.EINVAL and nothing changes.
func NotifyDisconnect(sock unsafe.Pointer) error {
	v := C.int(zmqNotifyDisconnect)
	if rc, err := C.zmq_setsockopt(sock, zmqRouterNotify, unsafe.Pointer(&v), C.size_t(unsafe.Sizeof(v))); rc != 0 {
		return errnoErr(err)
	}
	return nil
}
