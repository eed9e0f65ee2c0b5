package e2e

import (
	"fmt"
	"math/bits"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/wire"
)

// TestManager_ScaleFromZero: a request with no worker makes the manager
// spawn `aserpc worker`; the result arrives; five concurrent requests for
// another calculator cause exactly one spawn; a --kwargs JSON argument
// reaches the worker intact.
func TestManager_ScaleFromZero(t *testing.T) {
	c := newCluster(t, "5")
	c.startManager(map[string]map[string]any{
		"LJ":   {"command": c.worker("LJ")},
		"LJ2":  {"command": c.worker("ase.calculators.lj:LennardJones", "--name", "{name}", "--kwargs", `{"epsilon": 2.0, "sigma": 1.0}`)},
		"five": {"command": c.worker("LJ", "--name", "five")},
	})
	if l, _ := c.list(); l["LJ"] != 0 {
		t.Fatalf("LIST before any request = %v, want LJ spawnable with 0 workers", l)
	}

	t.Run("FirstRequest", func(t *testing.T) {
		t0 := time.Now()
		e, err := c.calc("LJ", 30*time.Second)
		if err != nil || !near(e, h2oLJ) {
			t.Fatalf("energy %v, %v; want %v", e, err, h2oLJ)
		}
		t.Logf("cold start through the manager: %s", time.Since(t0).Round(time.Millisecond))
		if l, _ := c.list(); l["LJ"] != 1 {
			t.Errorf("LIST = %v, want LJ: 1", l)
		}
		st, err := c.control(wire.Status)
		if err != nil {
			t.Fatal(err)
		}
		kids := fmt.Sprint(st["manager"].(map[string]any)["children"])
		if !strings.Contains(kids, "state:running") || !strings.Contains(kids, "name:LJ") {
			t.Errorf("STATUS manager.children = %s, want LJ running", kids)
		}
	})
	t.Run("JSONBraces", func(t *testing.T) {
		e, err := c.calc("LJ2", 30*time.Second)
		if err != nil || !near(e, 2*h2oLJ) {
			t.Fatalf("energy %v, %v; want %v (epsilon 2 from --kwargs JSON)", e, err, 2*h2oLJ)
		}
	})
	t.Run("FiveConcurrentOneSpawn", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 5)
		for i := 0; i < 5; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e, err := c.calc("five", 30*time.Second)
				if err == nil && !near(e, h2oLJ) {
					err = fmt.Errorf("energy %v", e)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if n := c.spawns("five"); n != 1 {
			t.Errorf("%d spawns for 5 concurrent requests, want 1", n)
		}
	})
	t.Run("ChildLog", func(t *testing.T) {
		files, _ := filepath.Glob(filepath.Join(c.logDir, "LJ-*.log"))
		if len(files) != 1 {
			t.Fatalf("log files %v, want one for LJ", files)
		}
		b, _ := os.ReadFile(files[0])
		if !strings.Contains(string(b), "worker registered") {
			t.Errorf("child log lacks the worker's own output:\n%s", b)
		}
	})
}

// TestManager_SpawnFailures: a missing executable, a child that exits at
// once and one that never registers each fail the waiting client with a
// clear error within start_timeout, and a later request spawns again.
func TestManager_SpawnFailures(t *testing.T) {
	c := newCluster(t, "5")
	flag := filepath.Join(c.dir, "flaky-ran-once")
	c.startManager(map[string]map[string]any{
		"LJ":      {"command": c.worker("LJ")},
		"missing": {"command": []string{"/nonexistent/aserpc-worker", "{name}"}},
		// Fails the first time, works the second.
		"flaky": {"command": []string{"sh", "-c",
			`if [ -e "$0" ]; then exec "$@"; fi; touch "$0"; echo "model file missing" >&2; exit 3`,
			flag, bin, "worker", "LJ", "--name", "flaky", "--broker", "{broker}", "--python", c.python}},
		"silent": {"command": []string{"sleep", "60"}, "start_timeout": 2},
	})
	// Start timeouts are enforced once the broker has shown it reports
	// registrations (WORKER_JOINED), which the first worker's arrival does.
	if _, err := c.calc("LJ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	expectErr := func(t *testing.T, calc string, within time.Duration, want ...string) {
		t.Helper()
		t0 := time.Now()
		_, err := c.calc(calc, 20*time.Second)
		took := time.Since(t0)
		if err == nil {
			t.Fatalf("%s: request succeeded", calc)
		}
		t.Logf("%s: error after %s: %v", calc, took.Round(time.Millisecond), err)
		if took > within {
			t.Errorf("%s: error after %s, want within %s", calc, took, within)
		}
		for _, w := range append([]string{"Failed to spawn worker"}, want...) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", calc, err, w)
			}
		}
	}
	t.Run("NoSuchExecutable", func(t *testing.T) {
		expectErr(t, "missing", 2*time.Second, "/nonexistent/aserpc-worker", "no such file")
		expectErr(t, "missing", 2*time.Second, "no such file")
	})
	t.Run("ExitsAtOnce", func(t *testing.T) {
		expectErr(t, "flaky", 3*time.Second, "exit code 3 before registering", "model file missing", c.logDir)
		e, err := c.calc("flaky", 30*time.Second)
		if err != nil || !near(e, h2oLJ) {
			t.Fatalf("second request: %v, %v", e, err)
		}
		if n := c.spawns("flaky"); n != 2 {
			t.Errorf("%d spawns, want 2", n)
		}
	})
	t.Run("NeverRegisters", func(t *testing.T) {
		expectErr(t, "silent", 5*time.Second, "did not register with ipc://", "within 2s")
		expectErr(t, "silent", 5*time.Second, "did not register with ipc://", "within 2s")
		if n := c.spawns("silent"); n != 2 {
			t.Errorf("%d spawns, want 2", n)
		}
	})
}

// TestManager_Restart: a stopped manager takes its workers down and its
// names off the broker at once; a new manager serves the next request.
func TestManager_Restart(t *testing.T) {
	c := newCluster(t, "5")
	configs := map[string]map[string]any{"LJ": {"command": c.worker("LJ")}}
	m1 := c.startManager(configs)
	if _, err := c.calc("LJ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	m1.Cmd.Process.Signal(syscall.SIGTERM)
	if !m1.Exited(10 * time.Second) {
		t.Fatal("manager did not exit on SIGTERM")
	}
	if !strings.Contains(m1.Logs(), `msg="worker stopped" calc=LJ`) {
		t.Errorf("manager did not stop its worker:\n%s", m1.Logs())
	}
	c.waitFor(3*time.Second, "LJ gone from LIST", func() bool {
		l, err := c.list()
		_, ok := l["LJ"]
		return err == nil && !ok
	})
	c.startManager(configs)
	e, err := c.calc("LJ", 30*time.Second)
	if err != nil || !near(e, h2oLJ) {
		t.Fatalf("after restart: %v, %v", e, err)
	}
	if n := c.spawns("LJ"); n != 1 {
		t.Errorf("new manager spawned %d, want 1", n)
	}
}

// TestManager_Killed: a SIGKILLed manager's names vanish from LIST after
// the broker's worker timeout, and its children stop (Pdeathsig).
func TestManager_Killed(t *testing.T) {
	c := newCluster(t, "1")
	m := c.startManager(map[string]map[string]any{"LJ": {"command": c.worker("LJ")}})
	if _, err := c.calc("LJ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	m.Cmd.Process.Kill()
	c.waitFor(5*time.Second, "LJ and its worker gone from LIST", func() bool {
		l, err := c.list()
		_, ok := l["LJ"]
		return err == nil && !ok
	})
	st, _ := c.control(wire.Status)
	if mgr := st["manager"].(map[string]any); mgr["connected"] != false {
		t.Errorf("STATUS manager = %v, want disconnected", mgr)
	}
	if _, err := c.calc("LJ", 5*time.Second); err == nil || !strings.Contains(err.Error(), "No workers available") {
		t.Errorf("request after the manager died: %v, want No workers available", err)
	}
}

// TestManager_ScaleOutOverGPUs: max_workers=2 and gpus=[0,1] under a queue:
// our broker asks for a second worker, each child sees its own
// CUDA_VISIBLE_DEVICES, and both get work.
func TestManager_ScaleOutOverGPUs(t *testing.T) {
	c := newCluster(t, "5")
	reg := filepath.Join(c.dir, "probe.py")
	if err := os.WriteFile(reg, []byte(slowCalc), 0o644); err != nil {
		t.Fatal(err)
	}
	c.startManager(map[string]map[string]any{
		"probe": {"command": c.worker("probe", "--registry", reg+":CALCS"), "max_workers": 2, "gpus": []int{0, 1}},
	})
	seen := c.calcMany("probe", 12) // 4.8 s of work: time for the second worker to start on a loaded machine
	if n := c.spawns("probe"); n != 2 {
		t.Errorf("%d spawns, want 2 (max_workers)", n)
	}
	if strings.Contains(c.manager.Logs(), "spawn request refused") {
		t.Errorf("our broker asked for more than max_workers")
	}
	var gpus []string
	for g, n := range seen {
		gpus = append(gpus, fmt.Sprintf("%v×%d", g, n))
	}
	sort.Strings(gpus)
	if seen[0] == 0 || seen[1] == 0 || len(seen) != 2 {
		t.Errorf("answers by CUDA_VISIBLE_DEVICES: %v, want both 0 and 1", gpus)
	}
	t.Logf("answers by CUDA_VISIBLE_DEVICES: %v", gpus)
}

// TestManager_IdleTimeout: workers exit on their idle timeout; the next
// request spawns again.
func TestManager_IdleTimeout(t *testing.T) {
	c := newCluster(t, "5")
	c.startManager(map[string]map[string]any{
		"LJ": {"command": c.worker("LJ", "--idle-timeout", "{idle_timeout}"), "idle_timeout": 1},
	})
	if _, err := c.calc("LJ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	c.waitFor(10*time.Second, "idle worker gone", func() bool {
		l, err := c.list()
		return err == nil && l["LJ"] == 0
	})
	c.waitFor(5*time.Second, "manager saw the exit", func() bool {
		return strings.Contains(c.manager.Logs(), `msg="worker exited normally" calc=LJ`)
	})
	if e, err := c.calc("LJ", 30*time.Second); err != nil || !near(e, h2oLJ) {
		t.Fatalf("after idle exit: %v, %v", e, err)
	}
	if n := c.spawns("LJ"); n != 2 {
		t.Errorf("%d spawns, want 2", n)
	}
}

// TestManager_MinWorkers: a min_workers child starts without a request and
// is restarted when it dies.
func TestManager_MinWorkers(t *testing.T) {
	c := newCluster(t, "5")
	c.startManager(map[string]map[string]any{"LJ": {"command": c.worker("LJ"), "min_workers": 1}})
	c.waitFor(15*time.Second, "min_workers child registered", func() bool {
		l, err := c.list()
		return err == nil && l["LJ"] == 1
	})
	st, _ := c.control(wire.Status)
	kids := st["manager"].(map[string]any)["children"].([]any)
	pid := kids[0].(map[string]any)["pid"]
	var p int
	fmt.Sscan(fmt.Sprint(pid), &p)
	if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.waitFor(15*time.Second, "restarted", func() bool { return c.spawns("LJ") == 2 })
	if e, err := c.calc("LJ", 30*time.Second); err != nil || !near(e, h2oLJ) {
		t.Fatalf("%v, %v", e, err)
	}
}

// TestManager_ReferenceBroker: our manager with aserpc 0.1.3's broker
// (which ignores the capabilities frame and never sends WORKER_JOINED):
// scale from zero works, and a child that exits at once fails the waiting
// client with the reason instead of leaving it to the queue timeout.
func TestManager_ReferenceBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the aserpc 0.1.3 venv")
	}
	ref := filepath.Dir(testenv.Venv(t, "ref-aserpc-0.1.3-py3.11", testenv.PyenvPython(t, "3.11"),
		testenv.VenvOptions{Packages: []string{"aserpc==0.1.3"}}))
	c := newClusterWith(t, func(c *cluster) *proc {
		return c.startCmd("0.1.3 broker", filepath.Join(ref, "aserpc"), "broker", "--frontend", c.front, "--backend", c.back, "--timeout", "5")
	})
	c.startManager(map[string]map[string]any{
		"LJ":    {"command": c.worker("LJ"), "start_timeout": 1},
		"crash": {"command": []string{"sh", "-c", "echo cannot load model >&2; exit 2"}},
	})
	if e, err := c.calc("LJ", 30*time.Second); err != nil || !near(e, h2oLJ) {
		t.Fatalf("scale from zero via the 0.1.3 broker: %v, %v", e, err)
	}
	_, err := c.calc("crash", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "Failed to spawn worker: ") || !strings.Contains(err.Error(), "cannot load model") {
		t.Errorf("crash: %v, want the exit and the log line", err)
	}
	// Without WORKER_JOINED the LJ child is assumed running after its
	// start timeout, not killed.
	c.waitFor(5*time.Second, "LJ assumed running", func() bool {
		return strings.Contains(c.manager.Logs(), "assuming the worker registered")
	})
	if e, err := c.calc("LJ", 10*time.Second); err != nil || !near(e, h2oLJ) {
		t.Fatalf("second request: %v, %v", e, err)
	}
	if n := c.spawns("LJ"); n != 1 {
		t.Errorf("%d LJ spawns, want 1", n)
	}
}

// TestManagerCLI_Errors: what a user sees when the configs do not load.
func TestManagerCLI_Errors(t *testing.T) {
	py := testenv.SystemPython(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "empty.py"), []byte("CONFIGS = {}\nBROKEN = 1/0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "ok.py"), []byte("CONFIGS = {}\n"), 0o644)
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"NoColon":    {[]string{"--registry", "nocolon"}, []string{"Error loading spawn configs", "expected 'module:variable'"}},
		"Raises":     {[]string{"--registry", filepath.Join(dir, "empty.py") + ":CONFIGS"}, []string{"Error loading spawn configs", "ZeroDivisionError"}},
		"Empty":      {[]string{"--registry", filepath.Join(dir, "ok.py") + ":CONFIGS"}, []string{"No spawn configs found", "Register spawn configs via entry points (aserpc.spawn) or --registry"}},
		"BadLevel":   {[]string{"--log-level", "LOUD"}, []string{"invalid --log-level"}},
		"Positional": {[]string{"mod:CONFIGS"}, []string{"--registry"}},
	} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"manager", "--python", py}, tc.args...)...)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want 1\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestManager_DeathReported: a worker the manager started is SIGKILLed
// mid-job (as the OOM killer does) with no attempt left for the job: the
// client's error says how the worker ended and what it last wrote, from the
// manager's report, not just "Worker died".
func TestManager_DeathReported(t *testing.T) {
	c := newClusterWith(t, func(c *cluster) *proc {
		return c.start("broker", "broker", "--frontend", c.front, "--backend", c.back,
			"--timeout", "30", "--max-redispatch", "0", "--log-level", "DEBUG")
	})
	if strings.Contains(c.broker.Logs(), "no ZMQ_ROUTER_NOTIFY") {
		t.Skip("this aserpc binary's libzmq has no ZMQ_ROUTER_NOTIFY: a killed worker is found by the 30 s timeout")
	}
	reg := filepath.Join(c.dir, "doomed.py")
	os.WriteFile(reg, []byte(`
import sys, time
from ase.calculators.calculator import Calculator, all_changes

class Doomed(Calculator):
    implemented_properties = ["energy"]
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        print("allocating a very large array", file=sys.stderr, flush=True)
        time.sleep(60)

CALCS = {"doomed": Doomed}
`), 0o644)
	c.startManager(map[string]map[string]any{
		"doomed": {"command": c.worker("doomed", "--registry", reg+":CALCS")},
	})
	errc := make(chan error, 1)
	go func() { _, err := c.calc("doomed", 60*time.Second); errc <- err }()
	var pid int
	c.waitFor(30*time.Second, "the worker computing", func() bool {
		logs, _ := filepath.Glob(filepath.Join(c.logDir, "*.log"))
		for _, l := range logs {
			if b, _ := os.ReadFile(l); strings.Contains(string(b), "allocating a very large array") {
				st, err := c.control(wire.Status)
				if err != nil {
					return false
				}
				for _, k := range st["manager"].(map[string]any)["children"].([]any) {
					if p, ok := k.(map[string]any)["pid"].(int64); ok {
						pid = int(p)
					}
				}
				return pid > 0
			}
		}
		return false
	})
	killed := time.Now()
	syscall.Kill(pid, syscall.SIGKILL)
	err := <-errc
	took := time.Since(killed)
	for _, want := range []string{"Worker died during calculation: worker for 'doomed' (pid " + fmt.Sprint(pid) + ") signal killed",
		"out of memory?", "allocating a very large array"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("client error %v, want it to contain %q", err, want)
		}
	}
	t.Logf("SIGKILL -> the client's error with the manager's report: %v", took.Round(time.Millisecond))
}

// TestManager_SaysWhereItsBrokerIs: a manager says when aserpc's broker has
// answered it, and warns when none has at its address after 5 s.
func TestManager_SaysWhereItsBrokerIs(t *testing.T) {
	c := newCluster(t, "5")
	m := c.startManager(map[string]map[string]any{"LJ": {"command": c.worker("LJ")}})
	c.waitFor(10*time.Second, "the manager's registration line", func() bool {
		return strings.Contains(m.Logs(), "manager registered with the broker")
	})
	lonely := c.start("lonely-manager", "manager", "--registry", filepath.Join(c.dir, "spawns.py")+":CONFIGS",
		"--broker", "ipc://"+filepath.Join(c.dir, "nobody.ipc"), "--python", c.python, "--log-dir", c.logDir)
	c.waitFor(15*time.Second, "the lonely manager's warning", func() bool {
		return strings.Contains(lonely.Logs(), "no aserpc broker has answered here yet")
	})
	if strings.Contains(lonely.Logs(), "manager registered") {
		t.Errorf("a manager without a broker says it registered:\n%s", lonely.Logs())
	}
}

// placementCalc reports where its worker runs: energy = the CPU bitmask of
// the calculating thread + 1000 × OMP_NUM_THREADS, or -1 when a thread the
// worker's Python starts runs elsewhere (threads must inherit the set).
const placementCalc = `
import os, threading, time
from ase.calculators.calculator import Calculator, all_changes

def mask():
    return sum(2 ** c for c in os.sched_getaffinity(0))

class Where(Calculator):
    implemented_properties = ["energy"]
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(0.4)
        seen = []
        t = threading.Thread(target=lambda: seen.append(mask()))
        t.start(); t.join()
        m = mask()
        self.results["energy"] = -1.0 if seen[0] != m else float(m + 1000 * int(os.environ.get("OMP_NUM_THREADS", "0")))

CALCS = {"where": Where}
`

// TestManager_CPUPlacement (issue 22): two workers of a config with
// cpus_per_worker 1 run on disjoint CPUs with a thread budget of 1 (the
// threads their Python starts too); a config whose env sets
// OMP_NUM_THREADS keeps it.
func TestManager_CPUPlacement(t *testing.T) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil || set.Count() < 2 {
		t.Skipf("needs two CPUs to place two workers apart (%d)", set.Count())
	}
	c := newCluster(t, "5")
	reg := filepath.Join(c.dir, "where.py")
	if err := os.WriteFile(reg, []byte(placementCalc), 0o644); err != nil {
		t.Fatal(err)
	}
	c.startManager(map[string]map[string]any{
		"where":  {"command": c.worker("where", "--registry", reg+":CALCS"), "max_workers": 2, "cpus_per_worker": 1},
		"where7": {"command": c.worker("where", "--registry", reg+":CALCS", "--name", "where7"), "env": map[string]string{"OMP_NUM_THREADS": "7"}},
	})
	seen := c.calcMany("where", 12)
	if c.spawns("where") != 2 {
		t.Fatalf("%d spawns, want 2", c.spawns("where"))
	}
	var masks []int
	for e := range seen {
		if e < 1000 || int(e)/1000 != 1 {
			t.Errorf("answer %v: want CPU mask + 1000 × OMP_NUM_THREADS 1 (−1: a new thread ran elsewhere)", e)
			continue
		}
		masks = append(masks, int(e)%1000)
	}
	if len(masks) != 2 || masks[0]&masks[1] != 0 || bits.OnesCount(uint(masks[0])) != 1 || bits.OnesCount(uint(masks[1])) != 1 {
		t.Errorf("workers' CPU masks %v: want two disjoint single CPUs", masks)
	}
	e, err := c.calc("where7", 60*time.Second)
	if err != nil || int(e)/1000 != 7 {
		t.Errorf("the config's OMP_NUM_THREADS=7 was not kept: %v %v", e, err)
	}
	if !strings.Contains(c.manager.Logs(), "cpus=") {
		t.Errorf("the manager did not log the children's CPUs:\n%s", c.manager.Logs())
	}
}
