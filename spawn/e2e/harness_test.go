// Package e2e runs `aserpc manager` end to end: our broker binary, the
// manager and the `aserpc worker` children it spawns, as real processes,
// with Go REQ clients sending real calculation requests.
package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/wire"
)

// bin is the aserpc binary, built once.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "aserpc-bin-")
	if err != nil {
		panic(err)
	}
	if bin, err = proctest.BuildAserpc(dir); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// h2oLJ is LennardJones() (epsilon 1, sigma 1) on ase's molecule("H2O").
const h2oLJ = 1.772068860679255

// proc is a started process, killed when its test ends.
type proc = proctest.Proc

// cluster is one test's world: a short temp dir (unix socket paths must
// stay under 107 bytes), our broker, a manager and the configs it serves.
type cluster struct {
	t           *testing.T
	dir         string
	front, back string
	logDir      string
	python      string // Debian's python3, which has ase
	broker      *proc
	manager     *proc
	procs       []*proc
	curve       *auth.Peer // the test's client keys on tcp (nil: plaintext)
}

// newCluster starts our broker (worker timeout timeout, spawn timeout 30 s).
func newCluster(t *testing.T, timeout string) *cluster {
	t.Helper()
	return newClusterWith(t, func(c *cluster) *proc {
		return c.start("broker", "broker", "--frontend", c.front, "--backend", c.back,
			"--timeout", timeout, "--spawn-timeout", "30", "--log-level", "DEBUG")
	})
}

// newClusterWith starts a broker with startBroker.
func newClusterWith(t *testing.T, startBroker func(*cluster) *proc) *cluster {
	t.Helper()
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase")
	dir, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, python: py, logDir: filepath.Join(dir, "logs"),
		front: "ipc://" + dir + "/f.ipc", back: "ipc://" + dir + "/b.ipc"}
	t.Cleanup(func() {
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].Stop(5 * time.Second)
		}
		if t.Failed() {
			for _, p := range c.procs {
				t.Logf("---- %s ----\n%s", p.Name, p.Logs())
			}
			c.dumpChildLogs()
		}
		os.RemoveAll(dir)
	})
	c.broker = startBroker(c)
	c.waitFor(10*time.Second, "broker up", func() bool { _, err := c.control(wire.List); return err == nil })
	return c
}

func (c *cluster) dumpChildLogs() {
	files, _ := filepath.Glob(filepath.Join(c.logDir, "*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		c.t.Logf("---- %s ----\n%s", filepath.Base(f), b)
	}
}

func (c *cluster) start(name string, args ...string) *proc {
	c.t.Helper()
	return c.startCmd(name, bin, args...)
}

func (c *cluster) startCmd(name, path string, args ...string) *proc {
	c.t.Helper()
	p, err := proctest.Launch(name, c.env(), c.dir, false, append([]string{path}, args...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.procs = append(c.procs, p)
	return p
}

func (c *cluster) env() []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ASERPC_") {
			e = append(e, kv)
		}
	}
	// (XDG_STATE_HOME: the broker's state file stays in the test's dir.)
	return append(e, "ASERPC_IPC_DIR="+filepath.Join(c.dir, "ipc"), "XDG_STATE_HOME="+filepath.Join(c.dir, "state"))
}

// worker is an `aserpc worker` command for configs, serving calc from
// Debian's python3 with the given extra options.
func (c *cluster) worker(calc string, extra ...string) []string {
	return append([]string{bin, "worker", calc, "--broker", "{broker}", "--python", c.python,
		"--heartbeat", "1"}, extra...)
}

// startManager writes configs (name → SpawnConfig fields) to a registry
// file and starts `aserpc manager` on it.
func (c *cluster) startManager(configs map[string]map[string]any, extra ...string) *proc {
	c.t.Helper()
	b, err := json.Marshal(configs)
	if err != nil {
		c.t.Fatal(err)
	}
	reg := filepath.Join(c.dir, "spawns.py")
	src := fmt.Sprintf("import json\nCONFIGS = json.loads(%q)\n", b)
	if err := os.WriteFile(reg, []byte(src), 0o644); err != nil {
		c.t.Fatal(err)
	}
	args := append([]string{"manager", "--registry", reg + ":CONFIGS", "--broker", c.back,
		"--heartbeat", "0.5", "--log-dir", c.logDir, "--python", c.python, "--stop-grace", "2", "--log-level", "DEBUG"}, extra...)
	c.manager = c.start("manager", args...)
	c.waitFor(15*time.Second, "manager connected", func() bool {
		l, err := c.list()
		return err == nil && len(l) >= len(configs)
	})
	return c.manager
}

// waitFor polls cond every 50 ms until it holds or d passes.
func (c *cluster) waitFor(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	proctest.WaitFor(c.t, d, what, cond)
}

// control sends a LIST or STATUS and returns the decoded reply.
func (c *cluster) control(cmd wire.Command) (map[string]any, error) {
	frames, err := c.req([][]byte{cmd.Frame()}, 3*time.Second)
	if err != nil {
		return nil, err
	}
	v, err := wire.Unmarshal(frames[1])
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("reply %T", v)
	}
	return m, nil
}

// list is LIST as name → worker count.
func (c *cluster) list() (map[string]int, error) {
	m, err := c.control(wire.List)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for k, v := range m {
		switch n := v.(type) {
		case int64:
			out[k] = int(n)
		case uint64:
			out[k] = int(n)
		}
	}
	return out, nil
}

func (c *cluster) req(msg [][]byte, timeout time.Duration) ([][]byte, error) {
	frames, err := proctest.RequestAs(c.front, c.curve, timeout, msg...)
	if err != nil {
		return nil, fmt.Errorf("no reply within %s: %w", timeout, err)
	}
	if len(frames) != 2 {
		return nil, fmt.Errorf("reply has %d frames", len(frames))
	}
	return frames, nil
}

// calc asks calc for the energy of H2O, as a client would.
func (c *cluster) calc(name string, timeout time.Duration) (float64, error) {
	r := wire.NewCalcRequest([]int32{8, 1, 1},
		[]float64{0, 0, 0.119262, 0, 0.763239, -0.477047, 0, -0.763239, -0.477047}, nil, [3]bool{}, "energy")
	body, err := wire.EncodeRequest(r)
	if err != nil {
		return 0, err
	}
	frames, err := c.req([][]byte{wire.Request.Frame(), []byte(name), body}, timeout)
	if err != nil {
		return 0, err
	}
	resp, err := wire.DecodeResponse(frames[1])
	if err != nil {
		return 0, err
	}
	if err := resp.Err(); err != nil {
		return 0, err
	}
	e, ok := resp.Results["energy"].(float64)
	if !ok {
		return 0, fmt.Errorf("energy is %T", resp.Results["energy"])
	}
	return e, nil
}

// calcMany sends n requests for calc at once and counts the answers by
// energy (the probes report where they ran as their energy).
func (c *cluster) calcMany(calc string, n int) map[float64]int {
	c.t.Helper()
	var mu sync.Mutex
	seen := map[float64]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := c.calc(calc, 60*time.Second)
			if err != nil {
				c.t.Error(err)
				return
			}
			mu.Lock()
			seen[e]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return seen
}

// spawns counts the manager's "spawned worker" lines for calc.
func (c *cluster) spawns(calc string) int {
	return strings.Count(c.manager.Logs(), `msg="spawned worker" calc=`+calc+" ")
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }

// slowCalc is a worker registry whose "probe" calculator takes 0.4 s per
// call and returns as its energy the CUDA_VISIBLE_DEVICES it saw (-1 when
// unset), so a test sees which worker answered.
const slowCalc = `
import os, time
from ase.calculators.calculator import Calculator, all_changes

class Probe(Calculator):
    implemented_properties = ["energy"]
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(0.4)
        self.results["energy"] = float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))

CALCS = {"probe": Probe}
`
