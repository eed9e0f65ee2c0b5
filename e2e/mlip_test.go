package e2e

import (
	"math"
	"os"
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
