package e2e

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/wire"
)

// TestMLIP_CHGNet serves a real machine-learning potential on CPU:
// CHGNet 0.3.0, whose pretrained weights ship inside the chgnet wheel
// (chgnet/pretrained/0.3.0/*.pth.tar), so nothing is downloaded at run
// time. Opt-in (ASERPC_TEST_MLIP=1): the venv holds torch from PyPI with
// its CUDA libraries, about 3 GB, though only the CPU is used.
func TestMLIP_CHGNet(t *testing.T) {
	if os.Getenv("ASERPC_TEST_MLIP") != "1" {
		t.Skip("set ASERPC_TEST_MLIP=1 to build a 3 GB venv with torch and CHGNet and serve it (just test-mlip)")
	}
	venv := testenv.Venv(t, "mlip-chgnet-0.4.2-py3.11", testenv.PyenvPython(t, "3.11"),
		testenv.VenvOptions{Packages: []string{"chgnet==0.4.2"}})
	c := newCluster(t)
	// No hub, no downloads: the model must come from the wheel.
	c.env = append(c.env, "HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1")
	kwargs := map[string]any{"use_device": "cpu"}
	c.startBroker("30")
	start := time.Now()
	w := c.startWorker("CHGNet", venv, "chgnet.model.dynamics:CHGNetCalculator",
		"--kwargs", `{"use_device": "cpu"}`, "--name", "CHGNet")
	c.waitWorkers("CHGNet", 1, w)
	t.Logf("worker registered %v after start (model loaded once, before registering)", time.Since(start).Round(time.Millisecond))

	want := local(t, venv, "chgnet.model.dynamics:CHGNetCalculator", nil, kwargs, "Cu")["Cu"]
	t0 := time.Now()
	r := c.compute("CHGNet", want)
	t.Logf("first request %v", time.Since(t0).Round(time.Millisecond))
	if !r.Success {
		t.Fatalf("error %q (%s)\n%s", r.Error, r.ErrorType, r.Traceback)
	}
	e := r.Results["energy"].(float64)
	we := wire.Float64s(want.Energy)[0]
	t.Logf("CHGNet Cu32 (rattled): energy served %.10f eV, in-process %.10f eV, |diff| %.3g", e, we, math.Abs(e-we))
	check := func(name string, got []byte, want []byte) {
		g, w := wire.Float64s(got), wire.Float64s(want)
		if len(g) != len(w) {
			t.Fatalf("%s: %d values, in-process %d", name, len(g), len(w))
		}
		maxd := 0.0
		for i := range g {
			maxd = math.Max(maxd, math.Abs(g[i]-w[i]))
		}
		t.Logf("%s: max |served − in-process| = %.3g (bit-identical: %v)", name, maxd, string(got) == string(want))
		if maxd > 1e-5 {
			t.Errorf("%s differs from in-process by %g", name, maxd)
		}
	}
	check("energy", wire.Float64Bytes([]float64{e}), want.Energy)
	check("forces", r.Results["forces"].([]byte), want.Forces)
	check("stress", r.Results["stress"].([]byte), want.Stress)
	for _, bad := range []string{"huggingface", "Downloading", "urlopen"} {
		if strings.Contains(w.Logs(), bad) {
			t.Errorf("worker log mentions %q:\n%s", bad, w.Logs())
		}
	}
}

// TestMLIP_Batch checks the batch adapters of real models (issue 27): CHGNet
// (its PyPI wheel ships its weights) and MACE (mace-torch, a small model
// with random weights built in testdata/mlipbatch/tinymace.py). A mixed set
// of structures (periodic bulk cells of different elements and sizes, a
// slab, molecules in a box) goes through a batching worker twice with
// calculate_many, all in one batch; every result (energy, forces, stress,
// and the model's per-atom extras) must equal the model's own single-structure
// result in process, within the model's float tolerance: CHGNet computes
// in float32 (1e-5 eV, eV/Å, eV/Å³), the MACE model in float64 (1e-9).
// Opt-in (ASERPC_TEST_MLIP=1, `just test-mlip`): the venv holds torch.
func TestMLIP_Batch(t *testing.T) {
	if os.Getenv("ASERPC_TEST_MLIP") != "1" {
		t.Skip("set ASERPC_TEST_MLIP=1 to build a venv with torch, CHGNet and mace-torch and batch them (just test-mlip)")
	}
	venv := testenv.Venv(t, testenv.MLIPBatchKey, testenv.PyenvPython(t, "3.11"), testenv.MLIPBatchVenv)
	client := debian(t)
	repo, _ := filepath.Abs("..")
	compare := filepath.Join(testdata, "mlipbatch", "compare.py")
	for _, m := range []struct {
		name, factory, kwargs, tol, extra string // extra: the model's own per-atom results compared too
	}{
		{"chgnet", "chgnet.model.dynamics:CHGNetCalculator", `{"use_device": "cpu"}`, "1e-5", "magmoms"},
		{"mace", "mlipbatch.tinymace:calculator", `{}`, "1e-9", "energies,node_energy"},
	} {
		t.Run(m.name, func(t *testing.T) {
			c := newCluster(t)
			c.env = append(c.env, "HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=2")
			ref := filepath.Join(c.dir, "ref.npz")
			cmd := exec.Command(venv, compare, "ref", m.factory, m.kwargs, ref, m.extra)
			cmd.Env = c.env
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("in-process reference: %v\n%s", err, out)
			}
			c.startBroker("30")
			w := c.startWorker(m.name, venv, m.factory, "--name", m.name, "--kwargs", m.kwargs,
				"--batch-size", "32", "--batch-wait-ms", "20")
			c.waitWorkers(m.name, 1, w)
			cmd = exec.Command(client, compare, "served", m.name, c.front, ref, m.tol, m.extra)
			cmd.Env = append(append([]string{}, c.env...), "PYTHONPATH="+filepath.Join(repo, "clientpy", "src")+":"+testdata)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("served: %v\n%s\nworker:\n%s", err, out, w.Logs())
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			var got struct {
				MaxAbsDiff map[string]float64 `json:"max_abs_diff"`
				Batch      struct {
					Sizes      []int   `json:"sizes"`
					Structures int     `json:"structures"`
					MeanSize   float64 `json:"mean_size"`
				} `json:"batch"`
			}
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			t.Logf("%s: max |batched − single in process| %v; batches: %+v", m.name, got.MaxAbsDiff, got.Batch)
			multi := 0
			for i, n := range got.Batch.Sizes {
				if i > 0 {
					multi += n
				}
			}
			if multi == 0 {
				t.Fatalf("no model call held more than one structure: %+v\n%s", got.Batch, w.Logs())
			}
			if !strings.Contains(w.Logs(), "batching") {
				t.Errorf("worker did not say how it batches:\n%s", w.Logs())
			}
		})
	}
}
