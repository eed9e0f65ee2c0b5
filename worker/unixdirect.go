package worker

// The direct path on this host: a plain unix stream socket, read and
// written by the worker loop's own thread with system calls. libzmq's ipc
// costs four thread wake-ups per round trip (each side's I/O thread, both
// ways) plus the receiving application's; here the client's write lands in
// the socket the spinning loop reads, and the worker's in the one the
// client polls (or wakes it): on the two-core VM of docs/sessions.md a
// round trip of a request-sized message inside an MD step cost ~6 µs
// against ~70–220 µs through zmq_proxy.
//
// Framing, both ways: a message is a little-endian uint32 body length, then
// the body: frames, each a little-endian uint32 length and its bytes. A
// request is [REQUEST, calculator, payload, corr], a reply [RESPONSE |
// ERROR | PROGRESS, body, corr]. The socket lives in a 0700 directory of
// this user's, and a connection from another user (SO_PEERCRED) is closed
// at once; requests must carry the session's key, as on zmq's direct path.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aserpc/aserpc/wire"
)

// UnixScheme prefixes the endpoint a worker announces for its unix direct
// path (the broker passes it on as it is; zmq's own ipc:// is not this).
const UnixScheme = "unix://"

const (
	maxUnixConns   = 16       // connections kept; the oldest goes first
	unixReadChunk  = 64 << 10 // bytes asked of one read
	unixFrameLimit = 1 << 30  // a request's size when --max-message-size sets none
)

// unixDirect is the listening socket and its connections; only the worker
// loop reads them (a PROGRESS from the BUSY timer writes under uconn.mu).
type unixDirect struct {
	path  string
	lfd   int
	conns []*uconn
	limit int // the largest request body accepted
	uid   int
}

// uconn is one client connection: what has been read of its next message.
type uconn struct {
	mu sync.Mutex // writes (the loop's reply, the BUSY timer's PROGRESS)
	fd int        // -1 once closed
	in []byte
}

func listenUnix(path string, limit int64) (*unixDirect, error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("socket path too long: %s", path)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	os.Remove(path) // a dead worker's, with this pid
	if err = unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err == nil {
		if err = os.Chmod(path, 0o600); err == nil {
			err = unix.Listen(fd, 16)
		}
	}
	if err != nil {
		unix.Close(fd)
		os.Remove(path)
		return nil, err
	}
	l := int(unixFrameLimit)
	if limit > 0 && limit < unixFrameLimit {
		l = int(limit) + 4096 // the payload, and the frames around it
	}
	return &unixDirect{path: path, lfd: fd, limit: l, uid: os.Getuid()}, nil
}

func (u *unixDirect) close() {
	for _, c := range u.conns {
		c.close()
	}
	u.conns = nil
	if u.lfd >= 0 {
		unix.Close(u.lfd)
		u.lfd = -1
		os.Remove(u.path)
	}
}

func (c *uconn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// accept takes the connections waiting, of this user (or root) only.
func (u *unixDirect) accept(w *Worker) {
	for {
		fd, _, err := unix.Accept4(u.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.ECONNABORTED) {
				w.log.Debug("direct accept", "err", err)
			}
			return
		}
		cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil || (int(cred.Uid) != u.uid && cred.Uid != 0) {
			w.log.Warn("direct path: refused a connection of another user", "uid", credUID(cred), "err", err)
			unix.Close(fd)
			continue
		}
		if len(u.conns) >= maxUnixConns {
			u.conns[0].close()
			u.conns = u.conns[1:]
		}
		u.conns = append(u.conns, &uconn{fd: fd})
	}
}

func credUID(c *unix.Ucred) any {
	if c == nil {
		return nil
	}
	return c.Uid
}

// next returns one complete request read off the connections, nil when
// none is there yet. A connection that closed, or that sent what is not
// this framing, is closed (its client goes through the broker).
func (u *unixDirect) next(w *Worker) *directReq {
	u.accept(w)
	for i := 0; i < len(u.conns); i++ {
		c := u.conns[i]
		frames, err := c.read(u.limit)
		if err != nil {
			if !errors.Is(err, errEOF) {
				w.log.Debug("direct connection dropped", "err", err)
			}
			c.close()
			u.conns = append(u.conns[:i], u.conns[i+1:]...)
			i--
			continue
		}
		if frames != nil {
			return &directReq{frames: frames, reply: c.reply(w)}
		}
	}
	return nil
}

var errEOF = errors.New("closed by the client")

// read reads what is there and returns the first complete message's
// frames (nil when it is not complete yet). Each message's bytes are its
// own (Python may keep a view of a request buffer: never reused).
func (c *uconn) read(limit int) ([][]byte, error) {
	for {
		if frames, rest, err := parseUnix(c.in, limit); err != nil || frames != nil {
			if frames != nil {
				c.in = c.in[:copy(c.in, rest)] // the frames are copies: the buffer serves the next message
			}
			return frames, err
		}
		if cap(c.in)-len(c.in) < unixReadChunk/4 {
			want := len(c.in) + unixReadChunk
			if len(c.in) >= 4 {
				// The declared length (parseUnix checked it): one allocation.
				want = max(want, 4+int(binary.LittleEndian.Uint32(c.in)))
			}
			c.in = append(make([]byte, 0, want), c.in...)
		}
		n, err := unix.Read(c.fd, c.in[len(c.in):cap(c.in)])
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil, nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return nil, err
		case n == 0:
			return nil, errEOF
		}
		c.in = c.in[:len(c.in)+n]
	}
}

// parseUnix splits the first message off b: its frames (copied) and the
// bytes after it; nil frames when it is not all there.
func parseUnix(b []byte, limit int) ([][]byte, []byte, error) {
	if len(b) < 4 {
		return nil, nil, nil
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n > limit {
		return nil, nil, fmt.Errorf("a direct message of %d bytes (at most %d)", n, limit)
	}
	if len(b) < 4+n {
		return nil, nil, nil
	}
	body := make([]byte, n)
	copy(body, b[4:4+n])
	var frames [][]byte
	for len(body) > 0 {
		if len(body) < 4 || len(frames) == 8 {
			return nil, nil, errors.New("malformed direct message")
		}
		m := int(binary.LittleEndian.Uint32(body))
		if m > len(body)-4 {
			return nil, nil, errors.New("malformed direct message: a frame past its end")
		}
		frames = append(frames, body[4:4+m:4+m])
		body = body[4+m:]
	}
	if frames == nil {
		frames = [][]byte{} // an empty message: complete, and wrong
	}
	return frames, b[4+n:], nil
}

// reply writes to this connection; a client gone, or reading nothing for a
// heartbeat interval (the loop is not stalled past its next heartbeat),
// loses its connection (and falls back to the broker).
func (c *uconn) reply(w *Worker) func(cmd wire.Command, body, corr []byte) {
	return func(cmd wire.Command, body, corr []byte) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.fd < 0 {
			return
		}
		frames := [][]byte{cmd.Frame(), body}
		if corr != nil {
			frames = append(frames, corr)
		}
		if err := writeUnix(c.fd, frames, w.cfg.Heartbeat); err != nil {
			w.log.Debug("direct reply undeliverable", "err", err)
			unix.Close(c.fd) // the loop drops it at its next read (EBADF)
			c.fd = -1
		}
	}
}

// writeUnix writes one message, waiting up to wait while the socket is
// full.
func writeUnix(fd int, frames [][]byte, wait time.Duration) error {
	n := 0
	for _, f := range frames {
		n += 4 + len(f)
	}
	head := make([]byte, 0, 4+8*len(frames))
	head = binary.LittleEndian.AppendUint32(head, uint32(n))
	// Lengths and small frames travel in head; a large body in its own buffer.
	bufs := [][]byte{}
	for _, f := range frames {
		head = binary.LittleEndian.AppendUint32(head, uint32(len(f)))
		if len(f) <= 64 {
			head = append(head, f...)
			continue
		}
		bufs = append(bufs, head, f)
		head = head[len(head):]
	}
	if len(head) > 0 {
		bufs = append(bufs, head)
	}
	deadline := time.Now().Add(wait)
	for len(bufs) > 0 {
		k, err := unix.SendmsgBuffers(fd, bufs, nil, nil, unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			left := time.Until(deadline)
			if left <= 0 {
				return errors.New("the client reads nothing")
			}
			unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, int(left/time.Millisecond)+1)
			continue
		}
		if err != nil {
			return err
		}
		for k > 0 && len(bufs) > 0 {
			if k >= len(bufs[0]) {
				k -= len(bufs[0])
				bufs = bufs[1:]
				continue
			}
			bufs[0] = bufs[0][k:]
			k = 0
		}
	}
	return nil
}

// fds appends the descriptors to watch for input.
func (u *unixDirect) fds(p []unix.PollFd) []unix.PollFd {
	p = append(p, unix.PollFd{Fd: int32(u.lfd), Events: unix.POLLIN})
	for _, c := range u.conns {
		if c.fd >= 0 {
			p = append(p, unix.PollFd{Fd: int32(c.fd), Events: unix.POLLIN})
		}
	}
	return p
}

// pending reports whether a connection holds a complete message already
// read (a client that sent two before the first was answered).
func (u *unixDirect) pending() bool {
	for _, c := range u.conns {
		if len(c.in) >= 4 && len(c.in) >= 4+int(binary.LittleEndian.Uint32(c.in)) {
			return true
		}
	}
	return false
}
