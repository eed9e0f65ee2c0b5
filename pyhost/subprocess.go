package pyhost

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// subprocess runs the helper as a child of the environment's own
// interpreter and speaks the helper's operations over two pipes (fds 3 and
// 4 in the child, so that the calculator's prints on stdout/stderr go to
// the worker's own stdout/stderr, as they do when embedded).
//
// Used for interpreters without a shared libpython, for a libpython that
// fails to load, or by choice (ModeSubprocess). Arrays cross as raw bytes
// and np.frombuffer keeps the Python side free of element-wise conversion.
type subprocess struct {
	cmd  *exec.Cmd
	w    *os.File // requests
	r    *bufio.Reader
	rf   *os.File
	dead chan struct{} // closed when the child has exited
	werr error         // Wait's result, valid after dead

	mu     sync.Mutex // one call at a time, like the embedded thread
	broken error
}

func startSubprocess(python, helperDir string, env map[string]string) (*subprocess, error) {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		reqR.Close()
		reqW.Close()
		return nil, err
	}
	cmd := exec.Command(python, filepath.Join(helperDir, helperModule+".py"), "--serve", "3", "4")
	cmd.Env = childEnv(os.Environ(), env)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{reqR, repW}
	// Own process group: a Ctrl-C at the terminal reaches the worker, which
	// decides; it must not also interrupt the child behind its back.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		for _, f := range []*os.File{reqR, reqW, repR, repW} {
			f.Close()
		}
		return nil, fmt.Errorf("start %s: %w", python, err)
	}
	reqR.Close()
	repW.Close()
	s := &subprocess{cmd: cmd, w: reqW, rf: repR, r: bufio.NewReaderSize(repR, 1<<16), dead: make(chan struct{})}
	go func() { s.werr = cmd.Wait(); close(s.dead) }()
	return s, nil
}

func (s *subprocess) mode() Mode { return ModeSubprocess }

func (s *subprocess) call(ctx context.Context, op string, meta []byte, bufs [][]byte) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return reply{}, s.broken
	}
	if err := ctx.Err(); err != nil {
		return reply{}, err
	}
	type result struct {
		r   reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		if err := s.send(op, meta, bufs); err != nil {
			done <- result{err: err}
			return
		}
		r, err := s.recv()
		done <- result{r, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		// The helper turns SIGINT into KeyboardInterrupt while an operation
		// runs, at the next bytecode boundary, like the embedded cancel.
		s.cmd.Process.Signal(os.Interrupt)
		res = <-done
	}
	if res.err != nil {
		s.broken = s.failure(res.err)
		return reply{}, s.broken
	}
	return res.r, nil
}

// failure explains a broken pipe by the child's exit, if it exited.
func (s *subprocess) failure(err error) error {
	select {
	case <-s.dead:
		return fmt.Errorf("python subprocess %s exited (%v): %w", s.cmd.Path, s.werr, err)
	case <-time.After(2 * time.Second): // the child closed its pipe but lingers
		return fmt.Errorf("python subprocess %s: %w", s.cmd.Path, err)
	}
}

func (s *subprocess) send(op string, meta []byte, bufs [][]byte) error {
	w := bufio.NewWriterSize(s.w, 1<<16)
	var hdr [8]byte
	put32 := func(n int) { binary.LittleEndian.PutUint32(hdr[:4], uint32(n)); w.Write(hdr[:4]) }
	put32(len(op))
	w.WriteString(op)
	put32(len(meta))
	w.Write(meta)
	put32(len(bufs))
	for _, b := range bufs {
		binary.LittleEndian.PutUint64(hdr[:], uint64(len(b)))
		w.Write(hdr[:])
		w.Write(b)
	}
	return w.Flush()
}

func (s *subprocess) recv() (reply, error) {
	var hdr [8]byte
	get := func(n int) (uint64, error) {
		if _, err := io.ReadFull(s.r, hdr[:n]); err != nil {
			return 0, err
		}
		if n == 4 {
			return uint64(binary.LittleEndian.Uint32(hdr[:4])), nil
		}
		return binary.LittleEndian.Uint64(hdr[:]), nil
	}
	n, err := get(4)
	if err != nil {
		return reply{}, err
	}
	var out reply
	out.meta = make([]byte, n)
	if _, err := io.ReadFull(s.r, out.meta); err != nil {
		return reply{}, err
	}
	count, err := get(4)
	if err != nil {
		return reply{}, err
	}
	for i := uint64(0); i < count; i++ {
		n, err := get(8)
		if err != nil {
			return reply{}, err
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(s.r, b); err != nil {
			return reply{}, err
		}
		out.arrays = append(out.arrays, b)
	}
	return out, nil
}

// close ends the child: closing its request pipe makes the helper return;
// after a grace period it is killed.
func (s *subprocess) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken == nil {
		s.broken = ErrClosed
	}
	s.w.Close()
	select {
	case <-s.dead:
	case <-time.After(5 * time.Second): // atexit handlers already ran in "shutdown"
		s.cmd.Process.Kill()
		<-s.dead
	}
	s.rf.Close()
	var ee *exec.ExitError
	if s.werr != nil && !errors.As(s.werr, &ee) {
		return s.werr
	}
	return nil
}
