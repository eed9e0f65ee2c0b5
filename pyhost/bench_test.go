package pyhost

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/aserpc/aserpc/internal/testenv"
)

// Benchmarks embed one interpreter in the benchmark process itself (tests
// never embed in-process, so this is the process's only libpython): the
// Debian --system-site-packages venv, or $PYHOST_BENCH_PYTHON.
//
//	go test -run '^$' -bench . ./pyhost

var bench struct {
	once sync.Once
	h    *Host
	sub  *Host // the same interpreter in subprocess mode
	py   string
	err  error
}

func benchHosts(b *testing.B) (*Host, *Host, string) {
	b.Helper()
	bench.once.Do(func() {
		py := os.Getenv("PYHOST_BENCH_PYTHON")
		if py == "" {
			if _, err := os.Stat(testenv.DebianPython); err != nil {
				bench.err = err
				return
			}
			py, bench.err = testenv.BuildVenv("pyhost-debian-ssp", testenv.DebianPython, testenv.VenvOptions{SystemSitePackages: true}, nil)
			if bench.err != nil {
				return
			}
		}
		bench.py = py
		ctx := context.Background()
		env := map[string]string{"PYTHONPATH": mustAbs("testdata")}
		if bench.h, bench.err = Open(ctx, Config{Python: py, Mode: ModeEmbed, Env: env}); bench.err != nil {
			return
		}
		bench.sub, bench.err = Open(ctx, Config{Python: py, Mode: ModeSubprocess, Env: env})
	})
	if bench.err != nil {
		b.Skipf("no interpreter to benchmark: %v", bench.err)
	}
	return bench.h, bench.sub, bench.py
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

// BenchmarkTrivialCall: Go→Python→Go f(x)=x+1 on the Python thread, one
// cgo crossing per call (target < 1 µs).
func BenchmarkTrivialCall(b *testing.B) {
	h, _, _ := benchHosts(b)
	e := h.backend.(*embedded)
	var err error
	b.ResetTimer()
	e.do(context.Background(), func() {
		for i := 0; i < b.N; i++ {
			var v int64
			if v, err = e.callInt(int64(i)); err != nil || v != int64(i)+1 {
				err = fmt.Errorf("f(%d) = %d, %v", i, v, err)
				return
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHandoff: one job handed to the Python thread and back (the
// thread takes and releases the GIL each time).
func BenchmarkHandoff(b *testing.B) {
	h, _, _ := benchHosts(b)
	e := h.backend.(*embedded)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		if err := e.do(ctx, func() {}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOp: a whole helper operation (JSON meta both ways, one hand-off):
// the fixed cost of every Host call.
func BenchmarkOp(b *testing.B) {
	embed, sub, _ := benchHosts(b)
	for _, h := range []*Host{embed, sub} {
		b.Run(string(h.Mode()), func(b *testing.B) {
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				if _, err := h.Call(ctx, "builtins:len", []any{"abc"}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchCalc(b *testing.B, h *Host, spec FactorySpec) *Calculator {
	b.Helper()
	ctx := context.Background()
	f, err := h.Resolve(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	c, err := f.New(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// Benchmark100kInOut: 100k atoms' positions in and forces out through a
// calculator that does nothing, with a fresh ase.Atoms per step as the
// worker builds it. In: no copy in Go (pinned), one in ase.Atoms. Out: one
// copy through the buffer protocol.
func Benchmark100kInOut(b *testing.B) {
	embed, sub, _ := benchHosts(b)
	s := dilute(100_000)
	for _, h := range []*Host{embed, sub} {
		b.Run(string(h.Mode()), func(b *testing.B) {
			c := benchCalc(b, h, FactorySpec{Spec: mustAbs("testdata/userfuncs.py") + ":null_calculator"})
			req := s.request()
			b.SetBytes(int64(2 * len(s.positions)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r, err := c.Compute(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				if len(r.Values["forces"].Data) != len(s.positions) {
					b.Fatal("short forces")
				}
			}
		})
	}
}

// BenchmarkH2OLJStep: one worker step on H2O with LennardJones — fresh
// Atoms, the reused calculator, energy and forces, results out — embedded
// and as a subprocess, side by side with the same loop in plain python
// (same interpreter, timing itself). Two geometries alternate so ASE's
// cache never answers. Target: embedded ≤ 1.15× plain.
func BenchmarkH2OLJStep(b *testing.B) {
	embed, sub, py := benchHosts(b)
	geoms := [2]structure{h2o(), h2o()}
	p := make([]byte, len(geoms[1].positions))
	copy(p, geoms[1].positions)
	binary.LittleEndian.PutUint64(p[8*2:], math.Float64bits(0.15)) // move O a little
	geoms[1].positions = p
	plain := plainStepNs(b, py, geoms)
	b.Run("embed-pyloop", func(b *testing.B) {
		// The same step through the helper, looped inside the embedded
		// interpreter: the shared-libpython cost without Go's hand-offs.
		v, err := embed.Call(context.Background(), mustAbs("testdata/userfuncs.py")+":h2o_handle_loop", []any{2000}, nil)
		if err != nil {
			b.Fatal(err)
		}
		ns, _ := v.(float64)
		b.ReportMetric(ns, "py-ns/step")
		b.ReportMetric(plain, "plain-ns/op")
		b.ReportMetric(ns/plain, "x-plain")
	})
	b.Run("embed-run", func(b *testing.B) {
		// The request loop inside Host.Run: no hand-off per request.
		c := benchCalc(b, embed, FactorySpec{Spec: ljFactory})
		reqs := [2]*Request{geoms[0].request(), geoms[1].request()}
		ctx := context.Background()
		b.ResetTimer()
		err := embed.Run(ctx, func() error {
			for i := 0; i < b.N; i++ {
				if _, err := c.Compute(ctx, reqs[i%2]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(plain, "plain-ns/op")
		b.ReportMetric(ns/plain, "x-plain")
	})
	for _, h := range []*Host{embed, sub} {
		b.Run(string(h.Mode()), func(b *testing.B) {
			c := benchCalc(b, h, FactorySpec{Spec: ljFactory})
			reqs := [2]*Request{geoms[0].request(), geoms[1].request()}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Compute(context.Background(), reqs[i%2]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(plain, "plain-ns/op")
			b.ReportMetric(ns/plain, "x-plain")
		})
	}
}

var plainOnce struct {
	sync.Once
	ns float64
}

// plainStepNs runs the worker's step in plain python (best of 5 runs of
// 2000 steps) and returns ns per step.
func plainStepNs(b *testing.B, py string, g [2]structure) float64 {
	plainOnce.Do(func() {
		src := `
import sys, time, numpy as np
from ase import Atoms
from ase.calculators.lj import LennardJones
nums = np.frombuffer(bytes.fromhex(sys.argv[1]), "<i4")
pos = [np.frombuffer(bytes.fromhex(a), "<f8").reshape(-1, 3) for a in sys.argv[2:4]]
cell = np.zeros((3, 3)); pbc = np.zeros(3, bool)
calc = LennardJones()
best = 1e9
for rep in range(5):
    t = time.perf_counter()
    for i in range(2000):
        atoms = Atoms(numbers=nums, positions=pos[i % 2], cell=cell, pbc=pbc)
        atoms.calc = calc
        e = atoms.get_potential_energy()
        f = np.ascontiguousarray(atoms.get_forces(), dtype=np.float64)
    best = min(best, (time.perf_counter() - t) / 2000)
print(best * 1e9)
`
		hexs := func(b []byte) string { return fmt.Sprintf("%x", b) }
		out, err := exec.Command(py, "-c", src, hexs(g[0].numbers), hexs(g[0].positions), hexs(g[1].positions)).CombinedOutput()
		if err != nil {
			b.Fatalf("plain python: %v\n%s", err, out)
		}
		plainOnce.ns, err = strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			b.Fatal(err)
		}
	})
	return plainOnce.ns
}
