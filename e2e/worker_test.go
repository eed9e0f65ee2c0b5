package e2e

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/wire"
)

// TestWorker_Resolution serves LJ through every way of naming a factory,
// from Debian's python3, and checks the results bit for bit against the
// same calculator computed in-process by the same interpreter.
func TestWorker_Resolution(t *testing.T) {
	py := debian(t)
	c := newCluster(t)
	batchLog := filepath.Join(c.dir, "batch.log")
	c.env = append(c.env, "E2E_BATCH_LOG="+batchLog)
	c.startBroker("5")
	regFile := filepath.Join(testdata, "reg_file.py") + ":CALCS"
	type tc struct {
		name    string   // registered name
		argv    []string // CALCULATOR and options
		factory string   // the same factory for local.py
		args    []any
		kwargs  map[string]any
	}
	cases := []tc{
		{"LJ", []string{"LJ"}, "ase.calculators.lj:LennardJones", nil, nil},
		{"EMT", []string{"EMT"}, "ase.calculators.emt:EMT", nil, nil},
		{"EPLJ", []string{"EPLJ"}, "ase.calculators.lj:LennardJones", nil, map[string]any{"sigma": 1.1}},
		{"FileLJ", []string{"FileLJ", "--registry", regFile}, "ase.calculators.lj:LennardJones", nil, map[string]any{"sigma": 0.95, "epsilon": 1.1}},
		{"ModLJ", []string{"ModLJ", "--registry", "e2epkg.registry:CALCS"}, "ase.calculators.lj:LennardJones", nil, map[string]any{"sigma": 1.05}},
		{"DirectLJ", []string{"e2epkg.calcs:lj", "--args", "[1.2]", "--kwargs", `{"epsilon": 0.9}`, "--name", "DirectLJ"}, "e2epkg.calcs:lj", []any{1.2}, map[string]any{"epsilon": 0.9}},
		{"LennardJones", []string{"ase.calculators.lj:LennardJones"}, "ase.calculators.lj:LennardJones", nil, nil},
		// An entry point that names a batch adapter: a batching worker computes through it.
		{"EPBATCH", []string{"EPBATCH", "--batch-size", "4"}, "ase.calculators.lj:LennardJones", nil, map[string]any{"sigma": 1.1}},
	}
	procs := map[string]*proc{}
	for _, k := range cases {
		procs[k.name] = c.startWorker(k.name, py, k.argv[0], k.argv[1:]...)
	}
	wants := make([]map[string]*structure, len(cases))
	for i, k := range cases { // while the workers start
		wants[i] = local(t, py, k.factory, k.args, k.kwargs, "H2O", "Cu")
	}
	for i, k := range cases {
		t.Run(k.name, func(t *testing.T) {
			c.waitWorkers(k.name, 1, procs[k.name])
			for _, s := range []string{"H2O", "Cu"} {
				sameResults(t, k.name+" "+s, c.compute(k.name, wants[i][s]), wants[i][s])
			}
			// Asking twice hits ASE's cache in the reused calculator.
			sameResults(t, k.name+" H2O again", c.compute(k.name, wants[i]["H2O"]), wants[i]["H2O"])
		})
	}
	if !strings.Contains(procs["EPBATCH"].Logs(), `via="adapter LJBatch"`) {
		t.Errorf("EPBATCH worker does not say it batches through its entry point's adapter:\n%s", procs["EPBATCH"].Logs())
	}
	if b, err := os.ReadFile(batchLog); err != nil || len(strings.Fields(string(b))) < 3 {
		t.Errorf("the batch adapter was not called for each request: %q %v", b, err)
	}
	// The start line says which python, mode, calculator and broker.
	logs := procs["LJ"].Logs()
	for _, want := range []string{"python=" + py, "mode=", "calc=LJ", "broker=" + c.back} {
		if !strings.Contains(logs, want) {
			t.Errorf("LJ worker's start line lacks %q:\n%s", want, logs)
		}
	}
}

// TestWorker_Failures: every calculation failure is an error RESPONSE with
// type, message and traceback, and the worker keeps serving.
func TestWorker_Failures(t *testing.T) {
	py := debian(t)
	c := newCluster(t)
	c.startBroker("1") // 1 s worker timeout: only BUSY keeps a 3 s job alive
	emt := c.startWorker("EMT", py, "EMT")
	exits := c.startWorker("Exits", py, "e2epkg.calcs:Exits")
	nan := c.startWorker("NaN", py, "e2epkg.calcs:NaN")
	slow := c.startWorker("Slow", py, "e2epkg.calcs:Slow", "--kwargs", `{"seconds": 3}`)
	s := local(t, py, "", nil, nil, "U", "Ar", "H2O")

	t.Run("EMTUnsupportedElement", func(t *testing.T) {
		c.waitWorkers("EMT", 1, emt)
		r := c.compute("EMT", s["U"])
		if r.Success || r.Error != "No EMT-potential for U" {
			t.Fatalf("response %+v, want the error \"No EMT-potential for U\"", r)
		}
		if r.ErrorType != "NotImplementedError" || !strings.Contains(r.Traceback, "Traceback") || !strings.Contains(r.Traceback, "emt.py") {
			t.Fatalf("error type %q, traceback:\n%s", r.ErrorType, r.Traceback)
		}
		if !emt.Logged("No EMT-potential for U", 5*time.Second) || !emt.Logged("Traceback", 5*time.Second) {
			t.Errorf("the worker did not log the error")
		}
	})

	t.Run("SystemExit", func(t *testing.T) {
		c.waitWorkers("Exits", 1, exits)
		r := c.compute("Exits", s["Ar"])
		if r.Success || r.ErrorType != "SystemExit" || r.Error != "calculator called exit" {
			t.Fatalf("response %+v, want a SystemExit error", r)
		}
		if !exits.Running() {
			t.Fatal("SystemExit ended the worker")
		}
		if r := c.compute("Exits", s["H2O"]); !r.Success || !finite(r.Results["forces"].([]byte)) {
			t.Fatalf("after SystemExit: %+v", r)
		}
		c.waitWorkers("Exits", 1, exits)
	})

	t.Run("NonFinite", func(t *testing.T) {
		c.waitWorkers("NaN", 1, nan)
		r := c.compute("NaN", s["H2O"])
		if r.Success || !strings.Contains(r.Error, "non-finite") {
			t.Fatalf("response %+v, want a non-finite error", r)
		}
		if r := c.compute("NaN", s["H2O"], "forces"); r.Success || !strings.Contains(r.Error, "non-finite") {
			t.Fatalf("forces: %+v, want a non-finite error", r)
		}
	})

	t.Run("SlowerThanTheBrokerTimeout", func(t *testing.T) {
		c.waitWorkers("Slow", 1, slow)
		start := time.Now()
		r := c.compute("Slow", s["H2O"])
		if !r.Success {
			t.Fatalf("a 3 s job at a 1 s broker timeout: %+v", r)
		}
		if d := time.Since(start); d < 3*time.Second {
			t.Fatalf("took %v, less than the calculator's sleep", d)
		}
	})
}

// TestWorker_NonFiniteInput: positions or a cell with NaN or inf are
// refused (aserpc.InvalidRequest) before they reach the calculator, and the next
// request is computed right. Found by the live fuzzer (internal/chaos):
// ASE's LennardJones keeps its neighbour list across calls and rebuilds it
// only when a position moved by more than the skin, a test that NaN always
// fails — so one request with NaN positions left the reused calculator
// with a list that made every later structure with the same atomic numbers
// come out with energy 0: a wrong result for the next client, silently.
func TestWorker_NonFiniteInput(t *testing.T) {
	py := debian(t)
	c := newCluster(t)
	c.startBroker("5")
	lj := c.startWorker("LJ", py, "LJ")
	want := local(t, py, "ase.calculators.lj:LennardJones", nil, nil, "H2O")["H2O"]
	c.waitWorkers("LJ", 1, lj)
	poison := func(what string, mutate func(s *structure)) {
		t.Helper()
		bad := *want
		bad.Positions = append([]byte(nil), want.Positions...)
		bad.Cell = append([]byte(nil), want.Cell...)
		mutate(&bad)
		// Other atomic numbers first, so that LennardJones builds a new
		// neighbour list from the poisoned request's positions.
		other := *want
		other.Numbers = wire.Int32Bytes([]int32{1, 1, 8})
		if r := c.compute("LJ", &other); !r.Success {
			t.Fatalf("HHO: %+v", r)
		}
		r := c.compute("LJ", &bad)
		if r.Success || r.ErrorType != "aserpc.InvalidRequest" || !strings.Contains(r.Error, "must be finite") {
			t.Errorf("%s: response %+v, want aserpc.InvalidRequest about non-finite input", what, r)
		}
		sameResults(t, "H2O after "+what, c.compute("LJ", want), want)
	}
	sameResults(t, "H2O", c.compute("LJ", want), want)
	poison("NaN positions", func(s *structure) {
		p := wire.Float64s(s.Positions)
		for i := range p {
			p[i] = math.NaN()
		}
		s.Positions = wire.Float64Bytes(p)
	})
	poison("inf position", func(s *structure) {
		p := wire.Float64s(s.Positions)
		p[8] = math.Inf(-1)
		s.Positions = wire.Float64Bytes(p)
	})
	poison("NaN cell", func(s *structure) {
		cell := wire.Float64s(s.Cell)
		cell[4] = math.NaN()
		s.Cell = wire.Float64Bytes(cell)
	})
	if !lj.Running() {
		t.Fatal("the worker died")
	}
}

// TestWorker_Lifecycle: broker restart, idle timeout, WORKER_SHUTDOWN and
// a worker killed mid-job.
func TestWorker_Lifecycle(t *testing.T) {
	py := debian(t)
	s := local(t, py, "ase.calculators.lj:LennardJones", nil, nil, "H2O")["H2O"]

	t.Run("BrokerRestart", func(t *testing.T) {
		c := newCluster(t)
		b := c.startBroker("5")
		w := c.startWorker("LJ", py, "LJ")
		c.waitWorkers("LJ", 1, w)
		sameResults(t, "before", c.compute("LJ", s), s)
		b.Cmd.Process.Signal(syscall.SIGTERM)
		if !b.Exited(10 * time.Second) {
			t.Fatal("broker did not stop on SIGTERM")
		}
		c.startBroker("5")
		c.waitWorkers("LJ", 1, w) // the READY heartbeat re-registers it
		sameResults(t, "after", c.compute("LJ", s), s)
	})

	t.Run("IdleTimeout", func(t *testing.T) {
		c := newCluster(t)
		c.startBroker("30") // only the DISCONNECT can deregister it quickly
		w := c.startWorker("LJ", py, "LJ", "--idle-timeout", "1.5")
		c.waitWorkers("LJ", 1, w)
		if !w.Exited(15 * time.Second) {
			t.Fatal("worker still running 15 s after a 1.5 s idle timeout")
		}
		if code := w.ExitCode(); code != 0 {
			t.Fatalf("exit code %d, want 0", code)
		}
		c.waitWorkers("LJ", 0)
	})

	t.Run("WorkerShutdown", func(t *testing.T) {
		c := newCluster(t)
		c.startBroker("30")
		w := c.startWorker("LJ", py, "LJ")
		c.waitWorkers("LJ", 1, w)
		out, errOut, code := c.run("shutdown", "--broker", c.front, "--workers", "LJ")
		if code != 0 || !strings.Contains(out, "Shutdown 1 workers for 'LJ'") {
			t.Fatalf("aserpc shutdown: exit %d\n%s%s", code, out, errOut)
		}
		if !w.Exited(10 * time.Second) {
			t.Fatal("worker still running after WORKER_SHUTDOWN")
		}
		if code := w.ExitCode(); code != 0 {
			t.Fatalf("exit code %d, want 0", code)
		}
		c.waitWorkers("LJ", 0)
	})

	t.Run("KilledMidJob", func(t *testing.T) {
		c := newCluster(t)
		c.startBroker("1")
		first := c.startWorker("first", py, "e2epkg.calcs:Slow", "--kwargs", `{"seconds": 2}`)
		c.waitWorkers("Slow", 1, first)
		got := make(chan reply, 1)
		go func() { got <- c.computeErr("Slow", s) }()
		// The job is with the first worker; a second one joins, then the
		// first dies without a word.
		time.Sleep(500 * time.Millisecond)
		second := c.startWorker("second", py, "e2epkg.calcs:Slow", "--kwargs", `{"seconds": 2}`)
		c.waitWorkers("Slow", 2, second)
		syscall.Kill(-first.Cmd.Process.Pid, syscall.SIGKILL)
		select {
		case r := <-got:
			if cmd, _ := wire.ParseCommand(r.cmd); cmd != wire.Response || !r.resp.Success {
				t.Fatalf("reply %v %+v, want the second worker's result", cmd, r.resp)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no reply 20 s after the worker died")
		}
		if !second.Logged("request handled", 5*time.Second) {
			t.Errorf("the second worker did not handle the job:\n%s", second.Logs())
		}
	})
}

// TestWorker_Venv: a calculator package only a venv has, with an
// aserpc.calculators entry point, is listed and served from that venv.
func TestWorker_Venv(t *testing.T) {
	base := debian(t)
	venv := testenv.Venv(t, "e2e-tinycalc-"+treeHash(t, filepath.Join(testdata, "tinycalc")), base,
		testenv.VenvOptions{SystemSitePackages: true, Packages: []string{filepath.Join(testdata, "tinycalc")}})
	c := newCluster(t)

	out, errOut, code := c.run("list", "--python", venv)
	if code != 0 || !regexpLine(out, `^Tiny\s+tinycalc:Harmonic\s+entry point$`) || !regexpLine(out, `^LJ\s+ase.calculators.lj:LennardJones\s+builtin$`) {
		t.Fatalf("aserpc list --python venv: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := c.run("list", "--python", base); strings.Contains(out, "Tiny") {
		t.Fatalf("Debian's python3 lists Tiny:\n%s", out)
	}

	c.startBroker("5")
	w := c.startWorker("Tiny", venv, "Tiny")
	c.waitWorkers("Tiny", 1, w)
	want := local(t, venv, "tinycalc:Harmonic", nil, map[string]any{"k": 2.5}, "H2O", "Cu")
	for _, n := range []string{"H2O", "Cu"} {
		sameResults(t, "Tiny "+n, c.compute("Tiny", want[n]), want[n])
	}
	if !w.Logged("python="+venv, 5*time.Second) {
		t.Errorf("start line does not name the venv's python:\n%s", w.Logs())
	}
}

// TestWorker_ReferenceClient: aserpc 0.1.3's RemoteCalculator (PyPI) gets
// our worker's results unchanged.
func TestWorker_ReferenceClient(t *testing.T) {
	py := debian(t)
	ref := testenv.Venv(t, "ref-aserpc-0.1.3-py3.11", testenv.PyenvPython(t, "3.11"),
		testenv.VenvOptions{Packages: []string{"aserpc==0.1.3"}})
	c := newCluster(t)
	c.startBroker("5")
	w := c.startWorker("LJ", py, "LJ")
	// A batching worker too: its jobs carry tokens and hints the client never sees.
	wb := c.startWorker("EPBATCH", py, "EPBATCH", "--batch-size", "4")
	wants := map[string]map[string]*structure{
		"LJ":      local(t, py, "ase.calculators.lj:LennardJones", nil, nil, "H2O", "Cu"),
		"EPBATCH": local(t, py, "ase.calculators.lj:LennardJones", nil, map[string]any{"sigma": 1.1}, "H2O", "Cu"),
	}
	c.waitWorkers("LJ", 1, w)
	c.waitWorkers("EPBATCH", 1, wb)
	for _, calc := range []string{"LJ", "EPBATCH"} {
		want := wants[calc]
		for _, n := range []string{"H2O", "Cu"} {
			cmd := runPy(t, c, ref, filepath.Join(testdata, "refclient.py"), c.front, calc, string(want[n].raw))
			var got structure
			if err := json.Unmarshal(cmd, &got); err != nil {
				t.Fatalf("refclient: %v\n%s", err, cmd)
			}
			for _, p := range []struct {
				name      string
				got, want []byte
			}{{"energy", got.Energy, want[n].Energy}, {"forces", got.Forces, want[n].Forces}, {"stress", got.Stress, want[n].Stress}} {
				if string(p.got) != string(p.want) {
					t.Errorf("%s %s %s: 0.1.3 client got %v, in-process %v", calc, n, p.name, wire.Float64s(p.got), wire.Float64s(p.want))
				}
			}
		}
	}
}
