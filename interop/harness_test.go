package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
)

// The harness: our broker binary, aserpc 0.1.3's venv, and real processes
// that every test kills when it ends.

var (
	aserpcBin string // our binary, built once by TestMain
	refClient string // testdata/refclient.py, absolute
	testdata  string // testdata/, absolute
)

func TestMain(m *testing.M) {
	var dir string
	aserpcBin, dir = proctest.MustBuildAserpc("aserpc-interop-bin-")
	var err error
	if testdata, err = filepath.Abs("testdata"); err != nil {
		panic(err)
	}
	refClient = filepath.Join(testdata, "refclient.py")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// refBin returns the bin directory of the aserpc 0.1.3 venv: the same key
// and recipe as wire/compat_test.go, so both share one cached venv. It
// skips only when pyenv has no Python 3.11; a failed pip install fails.
func refBin(t *testing.T) string {
	t.Helper()
	py := testenv.Venv(t, "ref-aserpc-0.1.3-py3.11", testenv.PyenvPython(t, "3.11"),
		testenv.VenvOptions{Packages: []string{"aserpc==0.1.3"}})
	return filepath.Dir(py)
}

// proc is a started process; it is killed when its test ends.
type proc = proctest.Proc

// cluster is one test's world: a short temp directory (unix socket paths
// must stay under 107 bytes), our broker's endpoints in it, the reference
// venv, and the processes started so far.
type cluster struct {
	t           *testing.T
	dir         string // the temp dir, cwd of every process
	ipc         string // dir/ipc: created by the broker (0700), removed on exit
	front, back string
	ref         string // the reference venv's bin directory
	env         []string
	procs       *proctest.Group
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	ref := refBin(t)
	dir, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{t: t, dir: dir, ipc: filepath.Join(dir, "ipc"), ref: ref}
	c.front = "ipc://" + filepath.Join(c.ipc, "f.ipc")
	c.back = "ipc://" + filepath.Join(c.ipc, "b.ipc")
	// A clean environment: no ASERPC_* from the caller (the reference reads
	// its configuration at import), ipc_dir inside the test's directory so
	// a default address can never reach another broker, wide Rich output
	// so log lines are not wrapped, and unbuffered Python.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ASERPC_") && !strings.HasPrefix(kv, "COLUMNS=") {
			c.env = append(c.env, kv)
		}
	}
	c.env = append(c.env, "ASERPC_IPC_DIR="+c.ipc, "COLUMNS=200", "PYTHONUNBUFFERED=1")
	c.procs = proctest.NewGroup(t)
	return c
}

// start runs argv in its own process group with extra environment.
func (c *cluster) start(name string, extraEnv []string, argv ...string) *proc {
	c.t.Helper()
	return c.procs.Start(name, append(append([]string(nil), c.env...), extraEnv...), c.dir, argv...)
}

// startBroker starts our broker on the cluster's endpoints with a 1 s
// worker timeout and a 5 s queue timeout unless args override them, and
// waits until it answers STATUS.
func (c *cluster) startBroker(args ...string) *proc {
	c.t.Helper()
	argv := []string{aserpcBin, "broker", "--frontend", c.front, "--backend", c.back,
		"--timeout", "1", "--queue-timeout", "5", "--log-level", "DEBUG"}
	p := c.start("broker", nil, append(argv, args...)...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.statusErr(); err == nil {
			return p
		}
		if !p.Running() || time.Now().After(deadline) {
			c.t.Fatalf("broker never answered STATUS; output:\n%s", p.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startWorker starts a reference worker (`aserpc worker CALC`) on our
// backend with a 0.2 s heartbeat.
func (c *cluster) startWorker(name string, extraEnv []string, calc string, args ...string) *proc {
	c.t.Helper()
	argv := []string{filepath.Join(c.ref, "aserpc"), "worker", calc, "--broker", c.back,
		"--heartbeat", "0.2", "--log-level", "INFO"}
	return c.start(name, extraEnv, append(argv, args...)...)
}

// startManager starts a reference manager (`aserpc manager`) on our
// backend with testdata/spawnreg/interop_spawn.py's configs; its children
// append their pids to pids and are killed when the test ends.
func (c *cluster) startManager(pids string) *proc {
	c.t.Helper()
	c.t.Cleanup(func() { killSpawned(c.t, pids, c.dir) })
	return c.start("manager", []string{
		"PYTHONPATH=" + filepath.Join(testdata, "spawnreg"),
		"INTEROP_ASERPC=" + filepath.Join(c.ref, "aserpc"),
		"INTEROP_PIDS=" + pids,
	}, filepath.Join(c.ref, "aserpc"), "manager", "--registry", "interop_spawn:CONFIGS",
		"--broker", c.back, "--heartbeat", "0.2", "--log-level", "INFO")
}

// status is our broker's STATUS through our CLI (fast; the reference's
// helpers are exercised by the tests themselves).
type status struct {
	Workers map[string]struct {
		Total, Idle, Busy int
	} `json:"workers"`
	Pending map[string]int `json:"pending_requests"`
	Manager struct {
		Connected bool     `json:"connected"`
		Spawnable []string `json:"spawnable"`
	} `json:"manager"`
	Broker struct {
		Counters map[string]int `json:"counters"`
	} `json:"broker"`
}

func (c *cluster) statusErr() (status, error) {
	var st status
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, aserpcBin, "status", "--broker", c.front, "--json", "--timeout", "300ms")
	cmd.Env = c.env
	out, err := cmd.Output()
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

func (c *cluster) status() status {
	c.t.Helper()
	st, err := c.statusErr()
	if err != nil {
		c.t.Fatalf("aserpc status: %v", err)
	}
	return st
}

// waitFor polls cond every 50 ms until it holds or d passes.
func (c *cluster) waitFor(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	proctest.WaitFor(c.t, d, what, cond)
}

// waitWorkers waits until our broker has exactly n workers for calc.
func (c *cluster) waitWorkers(calc string, n int, d time.Duration) {
	c.t.Helper()
	c.waitFor(d, fmt.Sprintf("%d %q worker(s) registered", n, calc), func() bool {
		st, err := c.statusErr()
		return err == nil && st.Workers[calc].Total == n
	})
}

// op is one refclient.py operation.
type op map[string]any

// refRun runs refclient.py with ops against our frontend and returns one
// raw JSON result per op. Safe to call from any goroutine.
func (c *cluster) refRun(ops ...op) ([]json.RawMessage, error) {
	spec, err := json.Marshal(map[string]any{"broker": c.front, "ops": ops})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.ref, "python"), refClient, string(spec))
	cmd.Dir, cmd.Env = c.dir, c.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("refclient.py: %v\nstderr:\n%s", err, stderr.String())
	}
	var res struct{ Results []json.RawMessage }
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("refclient.py output: %v\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	if len(res.Results) != len(ops) {
		return nil, fmt.Errorf("refclient.py: %d results for %d ops", len(res.Results), len(ops))
	}
	return res.Results, nil
}

func (c *cluster) refOps(ops ...op) []json.RawMessage {
	c.t.Helper()
	res, err := c.refRun(ops...)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

// computed is one item of a compute op.
type computed struct {
	Name        string      `json:"name"`
	Energy      *float64    `json:"energy"`
	Forces      [][]float64 `json:"forces"`
	LocalEnergy *float64    `json:"local_energy"`
	LocalForces [][]float64 `json:"local_forces"`
	Stress      []float64   `json:"stress"`
	LocalStress []float64   `json:"local_stress"`
	ErrorType   string      `json:"error_type"`
	Error       string      `json:"error"`
	Seconds     float64     `json:"seconds"`
}

// opError is the result of an op that raised.
type opError struct {
	ErrorType string `json:"error_type"`
	Error     string `json:"error"`
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

// requireOK fails unless every op result is free of an error.
func requireOK(t *testing.T, raws ...json.RawMessage) {
	t.Helper()
	for i, raw := range raws {
		if len(raw) == 0 || raw[0] != '{' {
			continue // a list or a number: not an error
		}
		if e := decode[opError](t, raw); e.ErrorType != "" {
			t.Fatalf("op %d raised %s: %s", i, e.ErrorType, e.Error)
		}
	}
}

// requireExact fails unless r succeeded and its remote energy and forces
// are bit-for-bit the local calculator's (same ASE code, same float64s).
func requireExact(t *testing.T, r computed) {
	t.Helper()
	if r.ErrorType != "" {
		t.Fatalf("%s: %s: %s", r.Name, r.ErrorType, r.Error)
	}
	if r.Energy == nil || r.LocalEnergy == nil {
		t.Fatalf("%s: no energy (remote %v, local %v)", r.Name, r.Energy, r.LocalEnergy)
	}
	if *r.Energy != *r.LocalEnergy {
		t.Errorf("%s: remote energy %.17g, local %.17g", r.Name, *r.Energy, *r.LocalEnergy)
	}
	if len(r.Forces) == 0 || len(r.Forces) != len(r.LocalForces) {
		t.Fatalf("%s: forces %v, local %v", r.Name, r.Forces, r.LocalForces)
	}
	for i := range r.Forces {
		if len(r.Forces[i]) != 3 || len(r.LocalForces[i]) != 3 {
			t.Fatalf("%s: force row %d: %v vs %v", r.Name, i, r.Forces[i], r.LocalForces[i])
		}
		for k := range 3 {
			if r.Forces[i][k] != r.LocalForces[i][k] {
				t.Errorf("%s: force[%d][%d] remote %.17g, local %.17g", r.Name, i, k, r.Forces[i][k], r.LocalForces[i][k])
			}
		}
	}
	if len(r.Stress) != len(r.LocalStress) {
		t.Fatalf("%s: stress %v, local %v", r.Name, r.Stress, r.LocalStress)
	}
	for i := range r.Stress {
		if r.Stress[i] != r.LocalStress[i] {
			t.Errorf("%s: stress[%d] remote %.17g, local %.17g", r.Name, i, r.Stress[i], r.LocalStress[i])
		}
	}
}

// handled is the request count a reference worker logs when it stops
// ("Worker 'LJ' stopped after handling N requests"), or -1.
func handled(logs string) int {
	i := strings.Index(logs, "stopped after handling ")
	if i < 0 {
		return -1
	}
	var n int
	if _, err := fmt.Sscanf(logs[i+len("stopped after handling "):], "%d", &n); err != nil {
		return -1
	}
	return n
}

// problems returns the lines of a reference process's log that report
// errors or warnings.
func problems(logs string) []string {
	var bad []string
	for _, line := range strings.Split(logs, "\n") {
		for _, w := range []string{"ERROR", "WARNING", "Traceback", "Exception"} {
			if strings.Contains(line, w) {
				bad = append(bad, line)
				break
			}
		}
	}
	return bad
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// killSpawned kills the processes the manager spawned (in sessions of their
// own, so they outlive it), each only while its command line still names
// this test's directory: a pid of an exited child may have been reused.
func killSpawned(t *testing.T, pidFile, dir string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 1 {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", f, "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Logf("kill spawned %d: %v", pid, err)
		}
	}
}
