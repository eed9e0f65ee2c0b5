package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// slurmUp starts a one-node SLURM cluster (scripts/slurm-up.sh) for the
// test and returns its slurm.conf; it skips where SLURM cannot run here.
func slurmUp(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("a SLURM cluster of our own needs root (slurmd runs steps as their user)")
	}
	for _, b := range []string{"srun", "squeue", "scancel", "slurmctld", "slurmd", "munged"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("no %s: apt-get install slurm-wlm munge (scripts/bootstrap.sh does)", b)
		}
	}
	dir, err := os.MkdirTemp("", "aserpc-slurm-")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs("../../scripts/slurm-up.sh")
	if out, err := exec.Command("bash", script, dir).CombinedOutput(); err != nil {
		t.Fatalf("slurm-up: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		down, _ := filepath.Abs("../../scripts/slurm-down.sh")
		exec.Command("bash", down, dir).Run()
		os.RemoveAll(dir)
	})
	conf := filepath.Join(dir, "slurm.conf")
	t.Setenv("SLURM_CONF", conf)
	return conf
}

// steps lists the running job steps (squeue --steps), one "jobid.step" each.
func steps(t *testing.T) []string {
	out, err := exec.Command("squeue", "--steps", "-h", "-o", "%i").CombinedOutput()
	if err != nil {
		t.Logf("squeue: %v %s", err, out)
		return nil
	}
	var ids []string
	for _, l := range strings.Fields(string(out)) {
		if !strings.HasSuffix(l, ".extern") && !strings.HasSuffix(l, ".batch") {
			ids = append(ids, l)
		}
	}
	return ids
}

const slurmCalcs = `
import os, time
from ase.calculators.calculator import Calculator, all_changes

class Probe(Calculator):
    implemented_properties = ["energy"]
    def __init__(self, delay=0.4):
        super().__init__()
        self.delay = delay
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self.delay)
        # what the step sees: SLURM's job id, and CUDA_VISIBLE_DEVICES (-1: unset)
        self.results["energy"] = float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1")) + 1000 * (os.environ.get("SLURM_JOB_ID") is not None)

CALCS = {"probe": Probe, "slow": lambda: Probe(delay=4.0)}
`

// TestManager_SLURM (issue 15): the manager's workers as SLURM job steps
// (`srun ... aserpc worker ...`) on a real one-node cluster.
func TestManager_SLURM(t *testing.T) {
	slurmUp(t)
	c := newCluster(t, "5")
	reg := filepath.Join(c.dir, "calcs.py")
	if err := os.WriteFile(reg, []byte(slurmCalcs), 0o644); err != nil {
		t.Fatal(err)
	}
	srun := func(calc string, extra ...string) []string {
		argv := append([]string{"srun", "--ntasks=1", "--cpus-per-task=1", "--job-name=aserpc-{name}"}, extra...)
		return append(argv, c.worker(calc, "--registry", reg+":CALCS")...)
	}
	pending := append(srun("probe", "--begin=now+3600"), "--name", "pending")
	// A worker as a job of its own (sbatch --wait), in the wrapper that
	// docs/deployment.md gives: a killed sbatch --wait leaves its job
	// running, so the shell cancels the job (by its unique name) when the
	// manager stops it.
	var quoted []string
	for _, a := range c.worker("probe", "--registry", reg+":CALCS", "--name", "batchjob") {
		quoted = append(quoted, "'"+a+"'")
	}
	sbatch := []string{"sh", "-c", `trap 'scancel --name="$0"; exit 143' TERM INT; sbatch --wait --job-name="$0" --ntasks=1 --cpus-per-task=1 --output="$1/sbatch-%j.log" --wrap "$2" & wait $!`,
		"aserpc-{name}-{index}", c.logDir, strings.Join(quoted, " ")}
	c.startManager(map[string]map[string]any{
		"batchjob": {"command": sbatch},
		// gpus: the manager must leave CUDA_VISIBLE_DEVICES to SLURM for srun.
		"probe":   {"command": srun("probe"), "max_workers": 2, "gpus": []int{0, 1}},
		"slow":    {"command": srun("slow"), "min_workers": 1},
		"pending": {"command": pending, "start_timeout": 3},
	})

	t.Run("ScaleFromZeroAndOut", func(t *testing.T) {
		var mu sync.Mutex
		maxSteps := 0
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				n := len(steps(t))
				mu.Lock()
				maxSteps = max(maxSteps, n)
				mu.Unlock()
			}
		}()
		t0 := time.Now()
		e, err := c.calc("probe", 60*time.Second)
		first := time.Since(t0)
		if err != nil || e != 999 {
			t.Fatalf("first request: %v %v (want 999: a SLURM job, no CUDA_VISIBLE_DEVICES from the manager)", e, err)
		}
		t.Logf("request to first result through srun, from zero: %v", first.Round(time.Millisecond))
		if seen := c.calcMany("probe", 12); len(seen) != 1 || seen[999] != 12 {
			t.Errorf("answers %v, want 12 × 999", seen)
		}
		close(stop)
		mu.Lock()
		defer mu.Unlock()
		if n := c.spawns("probe"); n != 2 {
			t.Errorf("%d spawns, want 2 (max_workers)", n)
		}
		// probe's two steps and slow's min_workers step.
		if maxSteps < 2 {
			t.Errorf("squeue --steps showed at most %d steps", maxSteps)
		}
	})

	// slowJob is the SLURM job of slow's worker step.
	slowJob := func(t *testing.T) string {
		t.Helper()
		var job string
		c.waitFor(60*time.Second, "slow's step", func() bool {
			out, _ := exec.Command("squeue", "-h", "-t", "RUNNING", "-o", "%i %j").CombinedOutput()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if f := strings.Fields(l); len(f) == 2 && f[1] == "aserpc-slow" {
					job = f[0]
				}
			}
			l, _ := c.list()
			return job != "" && l["slow"] >= 1
		})
		return job
	}
	cancelMidJob := func(t *testing.T, how ...string) time.Duration {
		t.Helper()
		job := slowJob(t)
		type res struct {
			e   float64
			err error
		}
		done := make(chan res, 1)
		go func() { e, err := c.calc("slow", 90*time.Second); done <- res{e, err} }()
		time.Sleep(1500 * time.Millisecond) // dispatched, computing (4 s)
		t0 := time.Now()
		cmd := exec.Command("scancel", job)
		if len(how) > 0 {
			// Killed on the node: SIGKILL to the worker process slurmstepd runs (not
			// to srun, whose command line names the worker too).
			cmd = exec.Command("pkill", "-KILL", "-f", "^"+bin+" worker slow --broker")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", cmd.Args, err, out)
		}
		r := <-done
		if r.err != nil || r.e != 999 {
			t.Fatalf("the cancelled step's request: %v %v", r.e, r.err)
		}
		return time.Since(t0)
	}

	t.Run("Scancel", func(t *testing.T) {
		// SLURM's SIGTERM: the worker finishes the job in hand (--on-signal finish), answers, leaves.
		d := cancelMidJob(t)
		t.Logf("scancel: the job in hand answered %v later by its own worker, which then left", d.Round(time.Millisecond))
	})

	t.Run("KilledOnTheNode", func(t *testing.T) {
		// SIGKILL on the node: the job goes to the step the manager starts for min_workers.
		d := cancelMidJob(t, "kill")
		t.Logf("worker killed on the node: re-dispatched, answered %v later (a new step, then 4 s of work)", d.Round(time.Millisecond))
		if d < 4*time.Second {
			t.Errorf("answered %v after the kill: faster than the 4 s the job takes", d)
		}
		slowJob(t) // and min_workers holds again
	})

	t.Run("SbatchWait", func(t *testing.T) {
		t0 := time.Now()
		e, err := c.calc("batchjob", 60*time.Second)
		if err != nil || e != 999 {
			t.Fatalf("through sbatch --wait: %v %v", e, err)
		}
		t.Logf("request to first result through sbatch --wait, from zero: %v", time.Since(t0).Round(time.Millisecond))
	})

	t.Run("PendingStepSaysSo", func(t *testing.T) {
		_, err := c.calc("pending", 60*time.Second)
		if err == nil || !strings.Contains(err.Error(), "pending in SLURM") {
			t.Fatalf("a step SLURM never started: %v", err)
		}
	})

	t.Run("StoppingTheManagerEndsEverySteps", func(t *testing.T) {
		c.manager.Stop(20 * time.Second)
		deadline := time.Now().Add(15 * time.Second)
		for {
			out, _ := exec.Command("squeue", "-h", "-o", "%i %j %T %r").CombinedOutput()
			if strings.TrimSpace(string(out)) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("jobs left 15 s after the manager stopped:\n%s", out)
			}
			time.Sleep(200 * time.Millisecond)
		}
		c.waitFor(10*time.Second, "no aserpc worker left on the node", func() bool {
			return exec.Command("pgrep", "-f", reg).Run() != nil
		})
	})
}
