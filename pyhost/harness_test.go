package pyhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// One libpython per process: every test that initialises an interpreter
// re-executes this test binary as a child (PYHOST_CHILD holds the job as
// JSON) and reads the child's findings from a JSON file.

type childJob struct {
	Scenario string            `json:"scenario"`
	Python   string            `json:"python"`
	Mode     Mode              `json:"mode"`
	Env      map[string]string `json:"env"`
	Dirs     []string          `json:"dirs"`    // input structures
	Factory  string            `json:"factory"` // FactorySpec.Spec
	Kwargs   map[string]any    `json:"kwargs"`
	Out      string            `json:"out"`
}

func TestMain(m *testing.M) {
	if s := os.Getenv("PYHOST_CHILD"); s != "" {
		os.Exit(childMain(s))
	}
	os.Exit(m.Run())
}

func childMain(spec string) int {
	var job childJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	fn := childScenarios[job.Scenario]
	if fn == nil {
		fmt.Fprintln(os.Stderr, "child: unknown scenario", job.Scenario)
		return 2
	}
	ctx := context.Background()
	h, err := Open(ctx, Config{Python: job.Python, Reason: "test", Mode: job.Mode, Env: job.Env, Argv: []string{"aserpc-test"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 1
	}
	out, err := fn(ctx, h, job)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", job.Scenario+":", err)
		var pe *PyError
		if errors.As(err, &pe) {
			fmt.Fprintln(os.Stderr, pe.Traceback)
		}
		return 1
	}
	out["mode"] = string(h.Mode())
	if err := h.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "child: close:", err)
		return 1
	}
	b, _ := json.Marshal(out)
	if err := os.WriteFile(job.Out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// childTimeout bounds one child: the slowest (EMT on 100k atoms) takes
// about 25 s on a 2-core machine.
const childTimeout = 3 * time.Minute

// runChild runs job in a fresh process and returns what it reported.
func runChild(t *testing.T, job childJob) map[string]any {
	t.Helper()
	job.Out = filepath.Join(t.TempDir(), "out.json")
	spec, _ := json.Marshal(job)
	// A child that hangs dumps its goroutines (SIGQUIT) into the failure
	// message instead of stalling the suite until go test's own timeout.
	ctx, cancel := context.WithTimeout(t.Context(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = append(os.Environ(), "PYHOST_CHILD="+string(spec))
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	t.Logf("child %s (%s, %s) took %v", job.Scenario, job.Python, job.Mode, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("child %s: %v\n%s", job.Scenario, err, buf.String())
	}
	b, err := os.ReadFile(job.Out)
	if err != nil {
		t.Fatalf("child %s wrote nothing: %v\n%s", job.Scenario, err, buf.String())
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	out["_log"] = buf.String()
	return out
}

// structure is a calculation input as the wire carries it.
type structure struct {
	numbers, positions, cell, pbc []byte
}

func (s structure) request() *Request {
	return &Request{Numbers: s.numbers, Positions: s.positions, Cell: s.cell, PBC: s.pbc, Properties: []string{"energy", "forces"}}
}

func f64bytes(v []float64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	return b
}

func i32bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

func h2o() structure {
	return structure{
		numbers:   i32bytes([]int32{8, 1, 1}),
		positions: f64bytes([]float64{0, 0, 0.119262, 0, 0.763239, -0.477047, 0, -0.763239, -0.477047}),
		cell:      make([]byte, 72),
		pbc:       make([]byte, 3),
	}
}

// dilute returns n copper atoms on a jittered 4 Å grid: a 100k-atom system
// that ASE's pure-Python LJ and EMT compute in seconds, not minutes.
func dilute(n int) structure {
	side := int(math.Ceil(math.Cbrt(float64(n))))
	rng := rand.New(rand.NewPCG(1, 2))
	nums := make([]int32, n)
	pos := make([]float64, 0, 3*n)
	for i := 0; i < n; i++ {
		nums[i] = 29
		x, y, z := i/(side*side), (i/side)%side, i%side
		for _, c := range []int{x, y, z} {
			pos = append(pos, 4.0*float64(c)+0.1*rng.NormFloat64())
		}
	}
	l := 4.0 * float64(side)
	return structure{i32bytes(nums), f64bytes(pos), f64bytes([]float64{l, 0, 0, 0, l, 0, 0, 0, l}), make([]byte, 3)}
}

func writeStructure(t testing.TB, s structure) string {
	t.Helper()
	d := t.TempDir()
	for name, b := range map[string][]byte{"numbers": s.numbers, "positions": s.positions, "cell": s.cell, "pbc": s.pbc} {
		if err := os.WriteFile(filepath.Join(d, name+".bin"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func readStructure(d string) (structure, error) {
	var s structure
	for _, p := range []struct {
		dst  *[]byte
		name string
	}{{&s.numbers, "numbers"}, {&s.positions, "positions"}, {&s.cell, "cell"}, {&s.pbc, "pbc"}} {
		b, err := os.ReadFile(filepath.Join(d, p.name+".bin"))
		if err != nil {
			return s, err
		}
		*p.dst = b
	}
	return s, nil
}

// digest is how results are compared bit for bit with plain python:
// energy as its float64 bits, forces as the sha256 of their bytes.
func digest(r *Result) (map[string]string, error) {
	e, ok := r.Values["energy"].Scalar.(float64)
	if !ok {
		return nil, fmt.Errorf("energy is %T %v", r.Values["energy"].Scalar, r.Values["energy"].Scalar)
	}
	f := r.Values["forces"]
	if f.DType != "<f8" {
		return nil, fmt.Errorf("forces dtype %q", f.DType)
	}
	sum := sha256.Sum256(f.Data)
	return map[string]string{"energy": strconv.FormatUint(math.Float64bits(e), 10), "forces": hex.EncodeToString(sum[:])}, nil
}

// plainReference runs testdata/plain.py under python on dirs.
func plainReference(t *testing.T, python, factory string, kwargs map[string]any, dirs ...string) map[string]map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "plain.json")
	kw, _ := json.Marshal(kwargs)
	if kwargs == nil {
		kw = []byte("{}")
	}
	args := append([]string{"testdata/plain.py", out, factory, string(kw)}, dirs...)
	start := time.Now()
	if b, err := exec.Command(python, args...).CombinedOutput(); err != nil {
		t.Fatalf("plain python: %v\n%s", err, b)
	}
	t.Logf("plain python %s %s took %v", python, factory, time.Since(start).Round(time.Millisecond))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]map[string]string
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func testdata(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
