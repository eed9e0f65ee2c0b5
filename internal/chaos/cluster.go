package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/wire"
)

// calcName is the calculator every scenario serves: ASE's LennardJones,
// which the client also runs in-process to check each result.
const calcName = "LJ"

// Settings are the timing knobs shared by every scenario.
type Settings struct {
	Bin    string // the aserpc binary
	Python string // interpreter with ase, numpy, pyzmq and msgpack (workers and clients)
	Root   string // module root: clientpy/src goes on the clients' PYTHONPATH
	// Workers is how many `aserpc worker LJ` the manager keeps running
	// (min_workers = max_workers).
	Workers int
	// Heartbeat is the workers' and the manager's heartbeat.
	Heartbeat time.Duration
	// WorkerTimeout is the broker's --timeout: a worker silent that long
	// is dead and its job goes to another worker.
	WorkerTimeout time.Duration
	// Logf receives progress lines.
	Logf func(format string, args ...any)
}

func (s Settings) withDefaults() Settings {
	if s.Workers <= 0 {
		s.Workers = 4
	}
	if s.Heartbeat <= 0 {
		s.Heartbeat = 500 * time.Millisecond
	}
	if s.WorkerTimeout <= 0 {
		s.WorkerTimeout = 2 * time.Second
	}
	if s.Logf == nil {
		s.Logf = func(string, ...any) {}
	}
	return s
}

// cluster is one scenario's world: a short temp directory (Unix socket
// paths stay under 107 bytes), our broker on ipc endpoints in it, and a
// manager keeping Workers LJ workers alive. Every process runs in a
// process group of its own; close kills them all and removes the
// directory.
type cluster struct {
	Settings
	dir         string
	front, back string
	env         []string
	brokerArgs  []string // extra `aserpc broker` flags

	mu      sync.Mutex
	broker  *proctest.Proc
	brokers []*proctest.Proc // every broker started, for the logs
	manager *proctest.Proc
	procs   []*proctest.Proc
}

func newCluster(s Settings) (*cluster, error) {
	dir, err := os.MkdirTemp("", "aserpc-chaos-")
	if err != nil {
		return nil, err
	}
	c := &cluster{Settings: s.withDefaults(), dir: dir,
		front: "ipc://" + filepath.Join(dir, "f.ipc"), back: "ipc://" + filepath.Join(dir, "b.ipc")}
	// Nothing from the caller's ASERPC_* or PYTHON* may point the
	// processes at another broker or another client package.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ASERPC_") && !strings.HasPrefix(kv, "PYTHON") && !strings.HasPrefix(kv, "VIRTUAL_ENV=") {
			c.env = append(c.env, kv)
		}
	}
	c.env = append(c.env, "ASERPC_IPC_DIR="+filepath.Join(dir, "ipc"), "PYTHONUNBUFFERED=1",
		"PYTHONPATH="+filepath.Join(c.Root, "clientpy", "src"))
	return c, nil
}

// start launches argv in its own process group and remembers it.
func (c *cluster) start(name string, argv ...string) (*proctest.Proc, error) {
	p, err := proctest.Launch(name, c.env, c.dir, true, argv...)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// startBroker starts a broker on the cluster's endpoints (again after a
// kill: same endpoints) and waits until it answers LIST.
func (c *cluster) startBroker() (*proctest.Proc, error) {
	argv := append([]string{c.Bin, "broker", "--frontend", c.front, "--backend", c.back,
		"--timeout", secs(c.WorkerTimeout), "--log-level", "INFO"}, c.brokerArgs...)
	p, err := c.start("broker", argv...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.broker = p
	c.brokers = append(c.brokers, p)
	c.mu.Unlock()
	if err := c.waitFor(15*time.Second, "broker answers LIST", func() bool {
		_, err := c.list(200 * time.Millisecond)
		return err == nil || !p.Running()
	}); err != nil {
		return nil, err
	}
	if !p.Running() {
		return nil, fmt.Errorf("broker exited: %s", lastLines(p.Logs(), 10))
	}
	return p, nil
}

// startManager writes the spawn config (Workers × `aserpc worker LJ`,
// min_workers = max_workers = Workers) and starts `aserpc manager` on it;
// it returns once every worker has registered.
func (c *cluster) startManager() error {
	worker := []string{c.Bin, "worker", calcName, "--broker", "{broker}", "--python", c.Python,
		"--heartbeat", secs(c.Heartbeat), "--log-level", "INFO"}
	q := make([]string, len(worker))
	for i, a := range worker {
		q[i] = strconv.Quote(a)
	}
	reg := filepath.Join(c.dir, "spawns.py")
	src := fmt.Sprintf("CONFIGS = {%q: {\"command\": [%s], \"min_workers\": %d, \"max_workers\": %d}}\n",
		calcName, strings.Join(q, ", "), c.Workers, c.Workers)
	if err := os.WriteFile(reg, []byte(src), 0o644); err != nil {
		return err
	}
	p, err := c.start("manager", c.Bin, "manager", "--registry", reg+":CONFIGS", "--broker", c.back,
		"--heartbeat", secs(c.Heartbeat), "--log-dir", filepath.Join(c.dir, "logs"), "--python", c.Python,
		"--stop-grace", "2", "--log-level", "INFO")
	if err != nil {
		return err
	}
	c.manager = p
	return c.waitFor(60*time.Second, fmt.Sprintf("%d %s workers registered", c.Workers, calcName), func() bool {
		l, err := c.list(time.Second)
		return err == nil && l[calcName] == c.Workers
	})
}

// spawns counts the workers the manager started so far.
func (c *cluster) spawns() int {
	return strings.Count(c.manager.Logs(), `msg="spawned worker" calc=`+calcName+" ")
}

// waitFor polls cond every 10 ms until it holds or d passes.
func (c *cluster) waitFor(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// control sends a LIST or STATUS to the broker and decodes the reply map.
func (c *cluster) control(cmd wire.Command, timeout time.Duration) (map[string]any, error) {
	frames, err := proctest.Request(c.front, timeout, cmd.Frame())
	if err != nil {
		return nil, err
	}
	if len(frames) != 2 {
		return nil, fmt.Errorf("%s reply has %d frames", cmd, len(frames))
	}
	v, err := wire.Unmarshal(frames[1])
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s reply is %T", cmd, v)
	}
	return m, nil
}

// list is LIST as calculator → registered workers.
func (c *cluster) list(timeout time.Duration) (map[string]int, error) {
	m, err := c.control(wire.List, timeout)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for k, v := range m {
		out[k] = toInt(v)
	}
	return out, nil
}

// status is the STATUS fields the scenarios read.
type status struct {
	workers          int   // registered LJ workers
	managerConnected bool  // the manager is registered
	children         []int // pids of the manager's running children
	counters         map[string]int
}

func (c *cluster) status(timeout time.Duration) (status, error) {
	m, err := c.control(wire.Status, timeout)
	if err != nil {
		return status{}, err
	}
	var st status
	if w, ok := m["workers"].(map[string]any)[calcName].(map[string]any); ok {
		st.workers = toInt(w["total"])
	}
	mgr, _ := m["manager"].(map[string]any)
	st.managerConnected = mgr["connected"] == true
	kids, _ := mgr["children"].([]any)
	for _, k := range kids {
		if k, ok := k.(map[string]any); ok && k["state"] == "running" {
			st.children = append(st.children, toInt(k["pid"]))
		}
	}
	st.counters = map[string]int{}
	b, _ := m["broker"].(map[string]any)
	cs, _ := b["counters"].(map[string]any)
	for k, v := range cs {
		st.counters[k] = toInt(v)
	}
	return st, nil
}

// killBroker SIGKILLs the broker and waits for it to be gone.
func (c *cluster) killBroker() error {
	c.mu.Lock()
	p := c.broker
	c.mu.Unlock()
	p.KillGroup()
	if !p.Exited(10 * time.Second) {
		return errors.New("broker did not die on SIGKILL")
	}
	return nil
}

// close stops the manager gracefully (it stops its workers), then kills
// every process group left and removes the directory. It returns the
// logs of everything that ran when dump is set.
func (c *cluster) close(dump bool) string {
	if c.manager != nil && c.manager.Running() {
		c.manager.Stop(10 * time.Second)
	}
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].KillGroup()
		procs[i].Exited(10 * time.Second)
	}
	var b strings.Builder
	if dump {
		for _, p := range procs {
			fmt.Fprintf(&b, "---- %s (pid %d) ----\n%s\n", p.Name, p.Cmd.Process.Pid, lastLines(p.Logs(), 60))
		}
		files, _ := filepath.Glob(filepath.Join(c.dir, "logs", "*.log"))
		for _, f := range files {
			data, _ := os.ReadFile(f)
			if strings.Contains(string(data), "level=ERROR") || strings.Contains(string(data), "panic") {
				fmt.Fprintf(&b, "---- %s ----\n%s\n", filepath.Base(f), lastLines(string(data), 40))
			}
		}
	}
	os.RemoveAll(c.dir)
	return b.String()
}

// busy reports whether any thread of pid is running ('R' in
// /proc/PID/task/*/stat): a worker computes on a locked OS thread of its
// own, not necessarily the main one.
func busy(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		// "tid (comm) S ...": comm may hold spaces and parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'R' {
			return true
		}
	}
	return false
}

// rssKiB is VmRSS of /proc/PID/status in KiB.
func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, errors.New("no VmRSS line")
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

func toInt(v any) int {
	switch n := v.(type) {
	case int64:
		return int(n)
	case uint64:
		return int(n)
	case float64:
		return int(n)
	}
	return 0
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// moduleRoot is the directory of the go.mod this program is built from.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the aserpc module")
	}
	return filepath.Dir(gomod), nil
}
