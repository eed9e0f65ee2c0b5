// Package proctest is test support for aserpc's process-level test suites
// (e2e, interop, spawn/e2e): building the aserpc binary once per test
// binary, starting real processes whose output a test can read while they
// run, killing them when the test ends, polling for a condition, and
// sending one request to a broker frontend as a ZeroMQ REQ client.
//
// It is an ordinary package, not a _test.go file, so that several test
// packages can share it; nothing outside tests and internal tools should
// import it.
package proctest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/auth"
)

// BuildAserpc builds github.com/aserpc/aserpc/cmd/aserpc into dir/aserpc,
// from the module root, and returns the binary's path. The error carries
// the compiler's output.
//
// With ASERPC_TEST_BIN set it builds nothing and returns that binary: `just
// test` runs every process-level suite against the portable binary that
// goes into the wheels (static libzmq, zig-built for glibc 2.17), not a
// developer build linked to the system's libzmq.
func BuildAserpc(dir string) (string, error) {
	if bin := os.Getenv("ASERPC_TEST_BIN"); bin != "" {
		if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
			return "", fmt.Errorf("ASERPC_TEST_BIN=%s: not a binary (%v)", bin, err)
		}
		return filepath.Abs(bin)
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	bin := filepath.Join(dir, "aserpc")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/aserpc/aserpc/cmd/aserpc")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, out)
	}
	return bin, nil
}

// MustBuildAserpc is BuildAserpc for a TestMain: it builds the binary into
// a new directory os.MkdirTemp("", pattern) and returns the binary and that
// directory, which the caller removes once m.Run is done. On failure it
// prints why, removes what it made and exits with status 1.
func MustBuildAserpc(pattern string) (bin, dir string) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if bin, err = BuildAserpc(dir); err != nil {
		fmt.Fprintf(os.Stderr, "build aserpc: %v", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	return bin, dir
}

// FreeTCP returns n tcp://127.0.0.1 endpoints on ports that were free a
// moment ago (held together while chosen, so they differ).
func FreeTCP(tb testing.TB, n int) []string {
	tb.Helper()
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer l.Close()
		out = append(out, "tcp://"+l.Addr().String())
	}
	return out
}

// SyncBuf collects a process's output while the test reads it.
type SyncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Proc is a started process.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Out  *SyncBuf // stdout and stderr
	done chan struct{}
}

// Launch starts argv[0] with argv[1:], environment env and working
// directory dir (as exec.Cmd's Env and Dir), collecting its stdout and
// stderr in Out. With ownGroup it runs in a process group of its own (see
// KillGroup). The caller is responsible for ending it.
func Launch(name string, env []string, dir string, ownGroup bool, argv ...string) (*Proc, error) {
	p, _, err := launch(name, env, dir, ownGroup, false, argv)
	return p, err
}

// LaunchPiped is Launch with the process's stdin connected to the returned
// pipe: closing it is an end-of-file the process can wait for, which also
// reaches it if the caller dies.
func LaunchPiped(name string, env []string, dir string, ownGroup bool, argv ...string) (*Proc, io.WriteCloser, error) {
	return launch(name, env, dir, ownGroup, true, argv)
}

func launch(name string, env []string, dir string, ownGroup, piped bool, argv []string) (*Proc, io.WriteCloser, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = env
	p := &Proc{Name: name, Cmd: cmd, Out: &SyncBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Out, p.Out
	if ownGroup {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	var stdin io.WriteCloser
	if piped {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return nil, nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	go func() { cmd.Wait(); close(p.done) }()
	return p, stdin, nil
}

// Logs is everything the process wrote to stdout and stderr so far.
func (p *Proc) Logs() string { return p.Out.String() }

// Exited reports whether the process ended within d.
func (p *Proc) Exited(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Running reports whether the process is still alive.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Logged waits up to d for s to appear in the process's output (it is
// copied from a pipe, so it can trail what the process did).
func (p *Proc) Logged(s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !strings.Contains(p.Logs(), s) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// ExitCode is the exit code of a process that has exited.
func (p *Proc) ExitCode() int { return p.Cmd.ProcessState.ExitCode() }

// Signal sends sig to the process (not its group), failing tb if it cannot.
func (p *Proc) Signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("%s: signal %v: %v", p.Name, sig, err)
	}
}

// Stop sends SIGTERM, then SIGKILL if the process is still there after d,
// and waits for it to end.
func (p *Proc) Stop(d time.Duration) {
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if !p.Exited(d) {
		p.Cmd.Process.Kill()
		<-p.done
	}
}

// KillGroup sends SIGKILL to the process group the process leads (started
// with ownGroup).
func (p *Proc) KillGroup() {
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
}

// Group is the processes one test started, each in a process group of its
// own. When the test ends they are killed, group and all, in reverse start
// order, and if the test failed their output is logged.
type Group struct {
	tb    testing.TB
	mu    sync.Mutex
	procs []*Proc
}

// NewGroup returns an empty group whose processes are killed in a
// tb.Cleanup registered now.
func NewGroup(tb testing.TB) *Group {
	g := &Group{tb: tb}
	tb.Cleanup(func() {
		g.mu.Lock()
		procs := g.procs
		g.mu.Unlock()
		for i := len(procs) - 1; i >= 0; i-- {
			p := procs[i]
			p.KillGroup()
			if !p.Exited(10 * time.Second) {
				tb.Errorf("%s (pid %d) did not die", p.Name, p.Cmd.Process.Pid)
			}
		}
		if tb.Failed() {
			for _, p := range procs {
				tb.Logf("---- %s output ----\n%s", p.Name, p.Logs())
			}
		}
	})
	return g
}

// Start launches argv in its own process group with env in dir (see
// Launch) and adds it to the group; it fails the test if argv cannot start.
func (g *Group) Start(name string, env []string, dir string, argv ...string) *Proc {
	g.tb.Helper()
	p, err := Launch(name, env, dir, true, argv...)
	if err != nil {
		g.tb.Fatalf("start %s: %v", name, err)
	}
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	return p
}

// WaitFor polls cond every 50 ms until it holds, failing tb if d passes
// first.
func WaitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Request sends one message of parts to addr (a broker frontend) as a REQ
// client and returns the reply, waiting at most timeout to send and to
// receive.
func Request(addr string, timeout time.Duration, parts ...[]byte) ([][]byte, error) {
	return RequestAs(addr, nil, timeout, parts...)
}

// RequestAs is Request as a CURVE client with keys (nil: plaintext).
func RequestAs(addr string, keys *auth.Peer, timeout time.Duration, parts ...[]byte) ([][]byte, error) {
	s, err := zmq.NewSocket(zmq.REQ)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetLinger(0)
	if err := keys.Apply(s, addr); err != nil {
		return nil, err
	}
	s.SetRcvtimeo(timeout)
	s.SetSndtimeo(timeout)
	if err := s.Connect(addr); err != nil {
		return nil, err
	}
	args := make([]any, len(parts))
	for i, p := range parts {
		args[i] = p
	}
	if _, err := s.SendMessage(args...); err != nil {
		return nil, err
	}
	return s.RecvMessageBytes(0)
}
