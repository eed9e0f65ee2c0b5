package spawn

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aserpc/aserpc/config"
	"github.com/aserpc/aserpc/internal/cpuset"
)

// Child states, as the capabilities frame reports them.
const (
	stateStarting = "starting" // started, not yet registered with the broker
	stateRunning  = "running"  // registered (or assumed so with a 0.1.3 broker)
	stateStopping = "stopping" // signalled; waiting for it to exit
)

// child is one worker process. Only the manager loop touches it, except
// for the goroutine that waits for the process and reports its exit.
type child struct {
	key       string
	index     int
	gpu       string
	argv      []string
	pid       int
	cmd       *exec.Cmd
	logPath   string
	logStart  int64 // bytes of header in front of the child's own output
	started   time.Time
	state     string
	since     time.Time
	requested bool      // a broker's SPAWN_REQUEST waits to hear if this one failed
	killAt    time.Time // stopping: SIGKILL the group if still alive then
	reported  bool      // the failure was already sent as SPAWN_RESPONSE
}

// exit is what the wait goroutine reports.
type exit struct {
	c     *child
	state *os.ProcessState
	err   error
}

// describe says how a process ended: "exit code 1", "signal killed".
func (e exit) describe() string {
	if e.state == nil {
		return fmt.Sprintf("wait failed: %v", e.err)
	}
	if ws, ok := e.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit code %d", e.state.ExitCode())
}

func (e exit) failed() bool { return e.state == nil || !e.state.Success() }

// start renders cfg for one child and starts it in its own process group,
// its stdout and stderr appended to a log file of its own (the file is
// the child's; no pipe that nobody reads — reference bug 10.2/5).
func start(cfg *SpawnConfig, v Vars, logDir string, exits chan<- exit) (*child, error) {
	argv, extra, cwd := cfg.render(v)
	env := os.Environ()
	// The worker idles out after the config's idle_timeout even when the
	// command has no --idle-timeout {idle_timeout}: a hand-started worker
	// never does by default, a spawned one must (scale to zero).
	env = setEnv(env, "ASERPC_IDLE_TIMEOUT", strconv.FormatFloat(v.IdleTimeout, 'g', -1, 64))
	if v.Host != "" {
		env = setEnv(env, ManagerHostEnv, v.Host)
	}
	if v.GPU != "" {
		env = setEnv(env, "CUDA_VISIBLE_DEVICES", v.GPU)
	}
	if v.Threads > 0 {
		// The child's thread budget and CPUs: our worker pins itself to them
		// and sizes its pools; the thread variables reach any other command
		// too. What the manager's environment or the config sets wins.
		env = setEnv(env, "ASERPC_WORKER_CPUS", v.CPUs)
		env = setEnv(env, "ASERPC_WORKER_THREADS", strconv.Itoa(v.Threads))
		for _, k := range []string{"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"} {
			if _, set := os.LookupEnv(k); !set {
				env = setEnv(env, k, strconv.Itoa(v.Threads))
			}
		}
	}
	for k, val := range extra { // the config wins, e.g. its own CUDA_VISIBLE_DEVICES
		env = setEnv(env, k, val)
	}
	path, err := lookPath(argv[0], env, cwd)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	now := time.Now()
	logPath := filepath.Join(logDir, fmt.Sprintf("%s-%s-%d.log", fileSafe(cfg.Key), now.Format("20060102-150405.000"), v.Index))
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	defer f.Close() // the child has its own descriptor
	header := fmt.Sprintf("# aserpc manager %s: %q", now.Format(time.RFC3339), argv)
	if v.GPU != "" {
		header += " CUDA_VISIBLE_DEVICES=" + v.GPU
	}
	if v.CPUs != "" {
		header += " cpus=" + v.CPUs
	}
	header += "\n"
	f.WriteString(header)

	cmd := &exec.Cmd{Path: path, Args: argv, Env: env, Dir: cwd, Stdout: f, Stderr: f}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a signal to the group reaches the
		// worker's own children (uvx → python, srun → its steps) too, and
		// Ctrl-C in the manager's terminal does not hit the workers
		// before the manager has decided to stop them.
		Setpgid: true,
		// If the manager dies without stopping it (SIGKILL, OOM), the
		// worker is told to stop too. The signal is tied to the thread
		// that started the child; Run keeps its goroutine on one thread.
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		os.Remove(logPath)
		return nil, err
	}
	if v.CPUs != "" {
		// Best effort for commands that are not our worker (which pins
		// itself from ASERPC_WORKER_CPUS): threads it starts from now on
		// inherit the set.
		if cpus, err := cpuset.Parse(v.CPUs); err == nil {
			cpuset.Pin(cmd.Process.Pid, cpus)
		}
	}
	c := &child{
		key: cfg.Key, index: v.Index, gpu: v.GPU, argv: argv, pid: cmd.Process.Pid, cmd: cmd,
		logPath: logPath, logStart: int64(len(header)), started: now, state: stateStarting, since: now,
	}
	go func() {
		err := cmd.Wait()
		exits <- exit{c: c, state: cmd.ProcessState, err: err}
	}()
	return c, nil
}

// signal sends sig to the child's whole process group.
func (c *child) signal(sig syscall.Signal) {
	if err := syscall.Kill(-c.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		c.cmd.Process.Signal(sig)
	}
}

// tail returns up to n last lines of the child's own output (not the
// header), each cut to 300 bytes.
func (c *child) tail(n int) []string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	const max = 8 << 10
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	from := max64(c.logStart, st.Size()-max)
	buf := make([]byte, st.Size()-from)
	if _, err := f.ReadAt(buf, from); err != nil && err != io.EOF {
		return nil
	}
	if from > c.logStart {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 { // drop a partial first line
			buf = buf[i+1:]
		}
	}
	var lines []string
	for _, l := range strings.Split(strings.ToValidUTF8(string(buf), "?"), "\n") {
		if l = strings.TrimRight(l, "\r \t"); strings.TrimSpace(l) != "" {
			if len(l) > 300 {
				l = l[:300] + "…"
			}
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// pendingInSLURM reports whether the child is an srun (or salloc) whose
// job SLURM has not started: what srun prints while it waits.
func (c *child) pendingInSLURM() bool {
	for _, l := range c.tail(20) {
		if strings.Contains(l, "queued and waiting for resources") || strings.Contains(l, "Pending job allocation") {
			return true
		}
	}
	return false
}

// failure is the SPAWN_RESPONSE error text for a child that did not make
// it: why, where its log is, and the log's last lines.
func (c *child) failure(why string) string {
	msg := fmt.Sprintf("worker for '%s' (pid %d) %s (log: %s)", c.key, c.pid, why, c.logPath)
	if lines := c.tail(10); len(lines) > 0 {
		msg += "; last log lines:\n" + strings.Join(lines, "\n")
	} else {
		msg += "; it wrote nothing"
	}
	return msg
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// setEnv replaces or appends key=val in env.
func setEnv(env []string, key, val string) []string {
	prefix := key + "="
	for i, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			env[i] = prefix + val
			return env
		}
	}
	return append(env, prefix+val)
}

func getEnv(env []string, key string) string {
	prefix := key + "="
	for i := len(env) - 1; i >= 0; i-- {
		if strings.HasPrefix(env[i], prefix) {
			return env[i][len(prefix):]
		}
	}
	return ""
}

// lookPath finds argv[0] as Python's Popen does with env=: a name without a
// slash is searched in the child's PATH (which the config may set); a path
// is taken as is (relative to the child's directory).
func lookPath(name string, env []string, cwd string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) && cwd != "" {
			p = filepath.Join(cwd, p)
		}
		if err := executable(p); err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(getEnv(env, "PATH")) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in PATH", name)
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errors.New("no such file")
		}
		return err
	}
	if st.IsDir() {
		return errors.New("is a directory")
	}
	if st.Mode()&0o111 == 0 {
		return errors.New("not executable")
	}
	return nil
}

// fileSafe makes a calculator name usable in a file name.
func fileSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// pruneLogs keeps the newest keep log files of key in dir (names sort by
// start time) and removes older ones, so a long-lived manager that spawns
// on every scale-up does not fill the disk.
func pruneLogs(dir, key string, keep int) {
	// The date after the key keeps "LJ" from matching the files of "LJ-fast".
	const stamp = "[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9][0-9][0-9].[0-9][0-9][0-9]"
	files, err := filepath.Glob(filepath.Join(dir, fileSafe(key)+"-"+stamp+"-*.log"))
	if err != nil || len(files) <= keep {
		return
	}
	sort.Strings(files)
	for _, f := range files[:len(files)-keep] {
		os.Remove(f)
	}
}

// DefaultLogDir is where children's logs go without --log-dir:
// $XDG_STATE_HOME/aserpc/manager-logs, else ~/.local/state/aserpc/manager-logs.
func DefaultLogDir() string {
	return filepath.Join(config.StateDir(), "manager-logs")
}
