package pyhost

import (
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/aserpc/aserpc/internal/testenv"
)

var ljKwargs = map[string]any{"sigma": 1.8, "epsilon": 0.1, "rc": 4.5}

const (
	ljFactory  = "ase.calculators.lj:LennardJones"
	emtFactory = "ase.calculators.emt:EMT"
)

func TestChoose(t *testing.T) {
	venv := t.TempDir()
	os.MkdirAll(filepath.Join(venv, "bin"), 0o755)
	os.WriteFile(filepath.Join(venv, "pyvenv.cfg"), []byte("home = /usr/bin\n"), 0o644)
	os.WriteFile(filepath.Join(venv, "bin", "python"), nil, 0o755)
	conda := t.TempDir()
	os.MkdirAll(filepath.Join(conda, "bin"), 0o755)
	os.WriteFile(filepath.Join(conda, "bin", "python3"), nil, 0o755)
	plain := t.TempDir() // a binary that is not in a venv

	look := func(string) (string, error) { return "/usr/bin/python3", nil }
	for _, tc := range []struct {
		name, flag string
		env        map[string]string
		exe        string
		want       Choice
	}{
		{"Flag", "/x/python", map[string]string{"ASERPC_PYTHON": "/y/python"}, filepath.Join(venv, "bin", "aserpc"), Choice{"/x/python", "--python"}},
		{"EnvVar", "", map[string]string{"ASERPC_PYTHON": "/y/python", "VIRTUAL_ENV": conda}, filepath.Join(venv, "bin", "aserpc"), Choice{"/y/python", "ASERPC_PYTHON"}},
		{"BinaryVenv", "", map[string]string{"VIRTUAL_ENV": conda}, filepath.Join(venv, "bin", "aserpc"), Choice{filepath.Join(venv, "bin", "python"), "binary's venv"}},
		{"VirtualEnv", "", map[string]string{"VIRTUAL_ENV": venv, "CONDA_PREFIX": conda}, filepath.Join(plain, "aserpc"), Choice{filepath.Join(venv, "bin", "python"), "VIRTUAL_ENV"}},
		{"Conda", "", map[string]string{"CONDA_PREFIX": conda}, filepath.Join(plain, "aserpc"), Choice{filepath.Join(conda, "bin", "python3"), "CONDA_PREFIX"}},
		{"Path", "", nil, filepath.Join(plain, "aserpc"), Choice{"/usr/bin/python3", "PATH"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := choose(tc.flag, func(k string) string { return tc.env[k] }, tc.exe, look)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, "embed": ModeEmbed, "subprocess": ModeSubprocess} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("fork"); err == nil {
		t.Error("ParseMode(fork) succeeded")
	}
}

// TestNoLibpythonLinked: the binary (this test binary imports pyhost)
// needs no libpython; it loads one at run time.
func TestNoLibpythonLinked(t *testing.T) {
	f, err := elf.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range libs {
		if strings.Contains(l, "python") {
			t.Errorf("linked against %s (all: %v)", l, libs)
		}
	}
}

func TestValueFloat64Bytes(t *testing.T) {
	v := Value{DType: "<i4", Shape: []int{3}, Data: i32bytes([]int32{1, -2, 3})}
	got, err := v.Float64Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if want := f64bytes([]float64{1, -2, 3}); !reflect.DeepEqual(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
	if _, err := (Value{DType: "<c16"}).Float64Bytes(); err == nil {
		t.Error("complex converted")
	}
}

func TestFindLib(t *testing.T) {
	ctx := t.Context()
	t.Run("PyenvNeeded", func(t *testing.T) {
		py := testenv.PyenvPython(t, "3.12")
		info, err := Probe(ctx, py)
		if err != nil {
			t.Fatal(err)
		}
		lib, err := FindLib(info)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(lib.Path, "libpython3.12.so.1.0") || !strings.HasPrefix(lib.How, "DT_NEEDED") {
			t.Errorf("got %+v", lib)
		}
	})
	t.Run("DebianStaticExeSharedLib", func(t *testing.T) {
		py := testenv.SystemPython(t)
		info, err := Probe(ctx, py)
		if err != nil {
			t.Fatal(err)
		}
		lib, err := FindLib(info)
		if err != nil {
			t.Skipf("no libpython for %s (python3-dev missing?): %v", py, err)
		}
		if !strings.Contains(lib.Path, "libpython3.") {
			t.Errorf("got %+v", lib)
		}
	})
	t.Run("StaticDouble", func(t *testing.T) {
		py := staticDouble(t)
		info, err := Probe(ctx, py)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := FindLib(info); !errors.Is(err, ErrStaticInterpreter) || !strings.Contains(err.Error(), "static executable") {
			t.Errorf("got %v, want ErrStaticInterpreter naming a static executable", err)
		}
	})
	t.Run("FakeELF", func(t *testing.T) {
		// A shared object that exports Py_InitializeEx but has the wrong
		// SONAME is not accepted; one with the right SONAME is.
		cc, err := exec.LookPath("gcc")
		if err != nil {
			t.Skip("no gcc")
		}
		dir := t.TempDir()
		src := filepath.Join(dir, "fake.c")
		os.WriteFile(src, []byte("void Py_InitializeEx(int i) { (void)i; }\n"), 0o644)
		for soname, wantOK := range map[string]bool{"libpython3.99.so.1.0": true, "libfoo.so.1": false} {
			out := filepath.Join(dir, soname)
			if b, err := exec.Command(cc, "-shared", "-fPIC", "-Wl,-soname,"+soname, "-o", out, src).CombinedOutput(); err != nil {
				t.Fatalf("gcc: %v\n%s", err, b)
			}
			if err := checkLib(out, "3.99"); (err == nil) != wantOK {
				t.Errorf("checkLib(%s) = %v, want ok=%v", soname, err, wantOK)
			}
		}
	})
}

// staticDouble builds a stand-in for a statically linked interpreter
// without any shared libpython (pyenv's default build, Debian's python3
// without libpython3.X): a copy of Debian's python3.11, which has
// libpython linked in, in a private prefix whose stdlib is symlinked from
// the system and whose sysconfig says "not shared, LIBDIR here". It is a
// real interpreter that runs the helper; it just cannot be embedded.
func staticDouble(t testing.TB) string {
	t.Helper()
	const exe, stdlib = "/usr/bin/python3.11", "/usr/lib/python3.11"
	f, err := elf.Open(exe)
	if err != nil {
		t.Skipf("no %s: %v", exe, err)
	}
	static := definesSymbol(f, "Py_InitializeEx")
	f.Close()
	if !static {
		t.Skipf("%s is not a static interpreter", exe)
	}
	dir := t.TempDir()
	lib := filepath.Join(dir, "lib")
	for _, d := range []string{filepath.Join(dir, "bin"), filepath.Join(lib, "python3.11")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	py := filepath.Join(dir, "bin", "python3.11")
	if err := writeNew(py, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/lib/python3", filepath.Join(lib, "python3")); err != nil { // Debian's dist-packages
		t.Fatal(err)
	}
	entries, err := os.ReadDir(stdlib)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		src, dst := filepath.Join(stdlib, e.Name()), filepath.Join(lib, "python3.11", e.Name())
		if !strings.HasPrefix(e.Name(), "_sysconfigdata_") {
			if err := os.Symlink(src, dst); err != nil {
				t.Fatal(err)
			}
			continue
		}
		// A fresh file (never a write through a symlink into the system).
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, r := range [][2]string{
			{"'LIBDIR': '/usr/lib/x86_64-linux-gnu'", "'LIBDIR': '" + lib + "'"},
			{"'Py_ENABLE_SHARED': 1", "'Py_ENABLE_SHARED': 0"},
			{"'LDLIBRARY': 'libpython3.11.so'", "'LDLIBRARY': 'libpython3.11.a'"},
		} {
			s = strings.Replace(s, r[0], r[1], 1)
		}
		if err := writeNew(dst, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return py
}

// writeNew creates path, failing if anything (a symlink included) is there.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func debianVenv(t *testing.T) string {
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy")
	return testenv.Venv(t, "pyhost-debian-ssp", py, testenv.VenvOptions{SystemSitePackages: true})
}

func pyenvVenv(t *testing.T, version string) string {
	base := testenv.PyenvPython(t, version)
	return testenv.Venv(t, "pyhost-py"+version, base, testenv.VenvOptions{Packages: []string{"ase", "numpy"}})
}

func batteryEnv(t *testing.T) map[string]string {
	return map[string]string{"TESTDATA": testdata(t, ""), "PYTHONPATH": testdata(t, "eps"),
		"ATEXIT_FILE": filepath.Join(t.TempDir(), "atexit")}
}

// checkAtexit: the child's Close ran Python's atexit handlers and flushed
// stdout (a print without newline).
func checkAtexit(t *testing.T, env map[string]string, out map[string]any) {
	t.Helper()
	if b, err := os.ReadFile(env["ATEXIT_FILE"]); err != nil || string(b) != "atexit ran" {
		t.Errorf("atexit handler did not run: %q %v", b, err)
	}
	if log, _ := out["_log"].(string); !strings.Contains(log, "a line the host's Close must flush") {
		t.Errorf("unflushed Python output missing:\n%s", log)
	}
}

// TestDebian: Debian's python3 and a --system-site-packages venv made from
// it compute LJ and EMT on H2O and 100k atoms bit for bit as plain python.
func TestDebian(t *testing.T) {
	sys := testenv.SystemPython(t)
	testenv.RequireModules(t, sys, "ase", "numpy")
	venv := debianVenv(t)
	dirs := []string{writeStructure(t, h2o()), writeStructure(t, dilute(100_000))}
	for _, calc := range []struct {
		name, factory string
		kwargs        map[string]any
	}{{"LJ", ljFactory, ljKwargs}, {"EMT", emtFactory, nil}} {
		t.Run(calc.name, func(t *testing.T) {
			t.Parallel()
			want := plainReference(t, sys, calc.factory, calc.kwargs, dirs...)
			for _, py := range []string{sys, venv} {
				out := runChild(t, childJob{Scenario: "compute", Python: py, Factory: calc.factory, Kwargs: calc.kwargs, Dirs: dirs})
				if out["mode"] != "embed" {
					t.Errorf("%s ran in mode %v, want embed", py, out["mode"])
				}
				compareResults(t, py, out["results"], want)
			}
		})
	}
}

func compareResults(t *testing.T, py string, got any, want map[string]map[string]string) {
	t.Helper()
	g, _ := got.(map[string]any)
	for d, w := range want {
		gd, _ := g[d].(map[string]any)
		for k, wv := range w {
			if gd[k] != wv {
				t.Errorf("%s: %s of %s = %v, plain python %v", py, k, filepath.Base(d), gd[k], wv)
			}
		}
	}
	if len(g) != len(want) {
		t.Errorf("%s: %d results, want %d", py, len(g), len(want))
	}
}

func TestBattery(t *testing.T) {
	sys := testenv.SystemPython(t)
	testenv.RequireModules(t, sys, "ase", "numpy")
	venv := debianVenv(t)
	dirs := []string{writeStructure(t, h2o())}
	want := plainReference(t, sys, ljFactory, ljKwargs, dirs...)
	for _, mode := range []Mode{ModeEmbed, ModeSubprocess} {
		t.Run(string(mode), func(t *testing.T) {
			env := batteryEnv(t)
			out := runChild(t, childJob{Scenario: "battery", Python: venv, Mode: mode, Env: env,
				Factory: ljFactory, Kwargs: ljKwargs, Dirs: dirs})
			checkAtexit(t, env, out)
			if out["mode"] != string(mode) {
				t.Errorf("mode %v, want %s", out["mode"], mode)
			}
			compareResults(t, venv, out["results"], want)
			checkBattery(t, venv, out)
		})
	}
}

// TestVersionMatrix runs the battery on venvs of pyenv's 3.9–3.13 with ase
// and numpy from PyPI; LJ results must equal plain python of that venv.
func TestVersionMatrix(t *testing.T) {
	dirs := []string{writeStructure(t, h2o())}
	for _, v := range []string{"3.9", "3.10", "3.11", "3.12", "3.13"} {
		t.Run(v, func(t *testing.T) {
			venv := pyenvVenv(t, v)
			t.Parallel()
			want := plainReference(t, venv, ljFactory, ljKwargs, dirs...)
			env := batteryEnv(t)
			out := runChild(t, childJob{Scenario: "battery", Python: venv, Env: env,
				Factory: ljFactory, Kwargs: ljKwargs, Dirs: dirs})
			checkAtexit(t, env, out)
			if out["mode"] != "embed" {
				t.Errorf("mode %v, want embed", out["mode"])
			}
			compareResults(t, venv, out["results"], want)
			checkBattery(t, venv, out)
		})
	}
}

func checkBattery(t *testing.T, python string, out map[string]any) {
	t.Helper()
	get := func(path ...string) any {
		var cur any = out
		for _, p := range path {
			m, _ := cur.(map[string]any)
			cur = m[p]
		}
		return cur
	}
	eq := func(what string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}

	if os.Getenv("PYHOST_DUMP") != "" {
		b, _ := json.MarshalIndent(out, "", " ")
		t.Logf("%s", b)
	}
	t.Logf("cancel returned after %v ms: %v", get("cancel", "elapsed_ms"), get("cancel", "error"))

	// Host.Run: inline compute, cancel, and a concurrent call that waits.
	if d, _ := out["results"].(map[string]any); d != nil {
		for _, v := range d {
			if fmt.Sprint(get("inline", "digest")) != fmt.Sprint(v) {
				t.Errorf("inline digest %v, handed-off %v", get("inline", "digest"), v)
			}
			break
		}
	}
	eq("inline cancel", get("inline", "cancel", "canceled"), true)
	eq("inline cancel type", get("inline", "cancel", "type"), "builtins.KeyboardInterrupt")
	if get("mode") == "embed" && get("inline", "other_during_run") != nil {
		t.Errorf("another goroutine's call ran during Run: %v", get("inline", "other_during_run"))
	}
	eq("call from another goroutine after Run", get("inline", "other", "ok"), true)

	// Traceback: three frames of user code, the chained cause, no helper frames.
	eq("traceback type", get("traceback", "type"), "builtins.ValueError")
	eq("traceback message", get("traceback", "message"), "inner failed")
	tb, _ := get("traceback", "traceback").(string)
	last := tb[strings.LastIndex(tb, "Traceback (most recent call last)"):]
	if n := strings.Count(last, "userfuncs.py\", line"); n != 3 {
		t.Errorf("last traceback has %d user frames, want 3:\n%s", n, tb)
	}
	for _, s := range []string{"in outer", "in middle", "in inner", "KeyError: 'missing'", "direct cause"} {
		if !strings.Contains(tb, s) {
			t.Errorf("traceback lacks %q:\n%s", s, tb)
		}
	}
	if strings.Contains(tb, "aserpc_pyhost.py") {
		t.Errorf("traceback shows the helper's frames:\n%s", tb)
	}

	// The environment is the venv's: sys.executable, sys.prefix, its own modules.
	venv := filepath.Dir(filepath.Dir(python))
	eq("sys.executable", get("where", "executable"), python)
	eq("sys.prefix", get("where", "prefix"), venv)
	eq("sys.argv", get("where", "argv"), []any{"aserpc-test"})
	eq("multiprocessing start method", get("where", "start_method"), "spawn")
	eq("on Python's main thread", get("where", "main_thread"), true)
	eq("spawned child's sys.executable", get("spawn", "executable"), python)
	eq("spawned child's sys.prefix", get("spawn", "prefix"), venv)
	if w, _ := get("signal_warnings").([]any); len(w) != 1 || !strings.Contains(fmt.Sprint(w[0]), "SIGTERM") {
		t.Errorf("signal warnings %v, want one about SIGTERM", w)
	}
	if ase, _ := get("where", "ase").(string); !strings.HasPrefix(ase, venv) && !strings.HasPrefix(ase, "/usr/lib/python3/") {
		t.Errorf("ase imported from %s, outside %s", ase, venv)
	}

	// Cancellation: KeyboardInterrupt at the next bytecode, context.Canceled.
	eq("cancel canceled", get("cancel", "canceled"), true)
	eq("cancel type", get("cancel", "type"), "builtins.KeyboardInterrupt")
	if ms, _ := get("cancel", "elapsed_ms").(float64); ms < 290 || ms > 2000 {
		t.Errorf("cancel took %v ms, want about 300", ms)
	}
	eq("call after cancel", get("after_cancel", "value"), 3)

	eq("SystemExit type", get("system_exit", "type"), "builtins.SystemExit")
	eq("SystemExit message", get("system_exit", "message"), "3")
	eq("user KeyboardInterrupt type", get("user_interrupt", "type"), "builtins.KeyboardInterrupt")
	eq("user KeyboardInterrupt is not a cancel", get("user_interrupt", "canceled"), false)
	eq("NaN calculator", get("nan_calculator", "type"), "aserpc.NonFiniteResult")
	eq("exiting calculator", get("exiting_calculator", "type"), "builtins.SystemExit")

	// Typed results, info and per-atom arrays.
	eq("typed order", get("typed", "order"), []any{"energy", "forces", "charges", "labels", "flag", "unknown"})
	eq("typed energy", get("typed", "energy", "scalar"), 8) // info charge 2 + tags 1+2+3
	eq("typed forces dtype", get("typed", "forces", "dtype"), "<f4")
	eq("typed forces shape", get("typed", "forces", "shape"), []any{3, 3})
	eq("typed forces", get("typed", "forces", "f64"), []any{0, 1, 2, 3, 4, 5, 6, 7, 8})
	eq("typed charges", get("typed", "charges", "dtype"), "<i4")
	eq("typed labels", get("typed", "labels", "dtype"), "|b1")
	eq("typed flag", get("typed", "flag", "scalar"), 7)
	eq("typed unknown", get("typed", "unknown", "is_array"), false)
	eq("default properties", get("default_order"), []any{"energy", "forces"})

	// Resolution.
	eq("not found", get("not_found", "is_not_found"), true)
	if msg, _ := get("not_found", "err", "message").(string); !strings.HasPrefix(msg, "Calculator 'nope' not found. Available: [") ||
		!strings.Contains(msg, "'EMT'") || !strings.Contains(msg, "'SoftLJ'") {
		t.Errorf("not found message %q", msg)
	}
	eq("import error", get("import_error", "is_import_error"), true)
	for spec, want := range map[string]map[string]any{
		"lj_soft":                         {"source": "registry", "description": "functools.partial(ase.calculators.lj.LennardJones)", "class": "ase.calculators.lj.LennardJones"},
		"obj":                             {"source": "registry", "description": "_registry._Callable instance"},
		"SoftLJ":                          {"source": "entry point", "description": ljFactory},
		"FnLJ":                            {"source": "entry point", "description": "ase.calculators.lj.LennardJones"},
		"EMT":                             {"source": "builtin", "class": "ase.calculators.emt.EMT"},
		"ase.calculators.lj:LennardJones": {"source": "direct", "name": "mylj"},
	} {
		for k, v := range want {
			eq("resolve "+spec+" "+k, get("resolved", spec, k), v)
		}
	}
	// --kwargs apply to a name too (0.1.3 ignored them), and a misspelt one is a warning.
	if w, _ := get("resolved", "LJ", "warnings").([]any); len(w) != 0 {
		t.Errorf("LJ with sigma: warnings %v, want none", w)
	}
	eq("LJ's sigma from --kwargs", get("resolved", "LJ", "parameters", "sigma"), 1.5)
	if w, _ := get("resolved", "LJ typo", "warnings").([]any); len(w) != 1 || !strings.Contains(fmt.Sprint(w[0]), "did you mean 'sigma'?") {
		t.Errorf("LJ with sigmaa: warnings %v, want one that suggests sigma", w)
	}

	// Listing never crashes: the broken provider is a warning row.
	rows, _ := out["list"].([]any)
	names := map[string]map[string]any{}
	for _, r := range rows {
		m := r.(map[string]any)
		names[fmt.Sprint(m["name"])] = m
	}
	for _, n := range []string{"LJ", "EMT", "SoftLJ", "FnLJ"} {
		if names[n] == nil || names[n]["warning"] != nil {
			t.Errorf("list: row %s = %v", n, names[n])
		}
	}
	if w, _ := names["broken"]["warning"].(string); !strings.Contains(w, "provider exploded") {
		t.Errorf("list: broken provider row %v", names["broken"])
	}
	reg, _ := out["list_registry"].([]any)
	if len(reg) != 4 || fmt.Sprint(reg[2].(map[string]any)["name"]) != "lj_soft" ||
		fmt.Sprint(reg[2].(map[string]any)["factory"]) != "functools.partial(ase.calculators.lj.LennardJones)" {
		t.Errorf("list registry: %v", reg)
	}
}

// TestTicker: a Go ticker keeps ticking while Python computes for 2 s.
func TestTicker(t *testing.T) {
	venv := debianVenv(t)
	out := runChild(t, childJob{Scenario: "ticker", Python: venv, Env: batteryEnv(t)})
	gap, _ := out["max_gap_ms"].(float64)
	t.Logf("max tick gap %.1f ms over %v ms (%v ticks, %v numpy iterations)", gap, out["elapsed_ms"], out["ticks"], out["iterations"])
	if ms, _ := out["elapsed_ms"].(float64); ms < 1900 {
		t.Errorf("numpy ran only %v ms", ms)
	}
	if gap >= 50 {
		t.Errorf("max tick gap %.1f ms, want < 50", gap)
	}
}

// TestStaticFallback: an interpreter without a shared libpython runs the
// same helper as a subprocess (mode auto) and gives the same results.
func TestStaticFallback(t *testing.T) {
	sys := testenv.SystemPython(t)
	testenv.RequireModules(t, sys, "ase", "numpy")
	py := staticDouble(t)
	dirs := []string{writeStructure(t, h2o()), writeStructure(t, dilute(100_000))}
	want := plainReference(t, sys, ljFactory, ljKwargs, dirs...)
	out := runChild(t, childJob{Scenario: "compute", Python: py, Factory: ljFactory, Kwargs: ljKwargs, Dirs: dirs})
	if out["mode"] != "subprocess" {
		t.Errorf("mode %v, want subprocess", out["mode"])
	}
	if log, _ := out["_log"].(string); !strings.Contains(log, "static executable") {
		t.Errorf("the log does not say why:\n%s", log)
	}
	compareResults(t, py, out["results"], want)
	wantEMT := plainReference(t, sys, emtFactory, nil, dirs[0])
	out = runChild(t, childJob{Scenario: "compute", Python: py, Factory: emtFactory, Dirs: dirs[:1]})
	compareResults(t, py, out["results"], wantEMT)
}

// TestHelperRelease: a view of host memory that Python keeps is detected
// (and parked), so the host never frees or reuses memory Python can see.
func TestHelperRelease(t *testing.T) {
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "numpy")
	src := `
import sys
sys.path.insert(0, sys.argv[1])
import aserpc_pyhost as ap
buf = bytearray(8192)
def job(views):
    a = ap._array(views[1], "<f8", (1024,))
    b = ap._array(views[2], "<f8", (2, 512))
    return a, b[1, 1:]   # an array and a view of a view outlive the job
views = tuple(memoryview(buf) for _ in range(4))
kept = job(views)
gone = tuple(memoryview(buf) for _ in range(4))
job(gone)
print(ap.release(views), len(ap._parked), ap.release(gone), kept[0].flags.writeable)
`
	out, err := exec.Command(py, "-c", src, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "2 2 0 False" {
		t.Errorf("release reported %q, want 2 leaked and parked views, then 0, and read-only arrays", got)
	}
}

// TestHelperCheckState: the helper's fast check_state gives ASE's own
// answer (as a set: ASE's order follows set iteration) for every kind of
// change, within and beyond the 1e-15 tolerance, with ignored_changes,
// infinities and NaNs, and defers to a calculator that overrides it.
func TestHelperCheckState(t *testing.T) {
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "numpy", "ase")
	src := `
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import aserpc_compute as ap
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.lj import LennardJones

def base():
    return Atoms("H2O", positions=[[0, 0, 0.12], [0, 0.76, -0.48], [0, -0.76, -0.48]],
                 cell=[5, 5, 5], pbc=[True, False, True])

def variants():
    yield "same", lambda a: None
    yield "tiny move", lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-16)
    yield "move", lambda a: a.positions.__setitem__((1, 1), a.positions[1, 1] + 1e-10)
    yield "numbers", lambda a: a.set_atomic_numbers([1, 1, 7])
    yield "cell tiny", lambda a: a.set_cell(np.array(a.cell) + 1e-16)
    yield "cell", lambda a: a.set_cell([5, 5, 6])
    yield "pbc", lambda a: a.set_pbc([True, True, True])
    yield "magmoms added", lambda a: a.set_initial_magnetic_moments([1, 0, 0])
    yield "charges added", lambda a: a.set_initial_charges([0, 0.5, -0.5])
    yield "inf position", lambda a: a.positions.__setitem__((2, 2), np.inf)
    yield "nan position", lambda a: a.positions.__setitem__((2, 2), np.nan)
    yield "longer", lambda a: a.extend(Atoms("H", positions=[[1, 1, 1]]))

def start(kind):
    a = base()
    if kind == "magmoms":
        a.set_initial_magnetic_moments([1, 0, 0])
    if kind == "inf":
        a.positions[2, 2] = np.inf
    return a

bad = 0
checked = 0
for kind in ("plain", "magmoms", "inf"):
    for ignored in ((), ("pbc",), ("positions", "initial_magmoms")):
        for name, change in variants():
            calc = LennardJones()
            calc.ignored_changes = set(ignored)
            first = start(kind)
            if calc.atoms is None:
                assert set(ap._check_state(calc, first)) == set(calc.check_state(first))
            calc.atoms = first.copy()
            second = start(kind)
            change(second)
            want, got = set(calc.check_state(second)), set(ap._check_state(calc, second))
            checked += 1
            if want != got:
                bad += 1
                print("MISMATCH", kind, ignored, name, sorted(want), sorted(got))

class Own(LennardJones):
    def check_state(self, atoms, tol=1e-15):
        return ["mine"]

own = Own()
own.atoms = base()
print(checked, bad, ap._check_state(own, base()))
`
	out, err := exec.Command(py, "-c", src, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "108 0 ['mine']" {
		t.Errorf("got %q, want 108 cases, 0 mismatches and the override's own answer", got)
	}
}

// TestHelperReusesAtoms: the helper writes a request into the calculator's
// previous Atoms only while that is exactly what a new one would be, and an
// MD-like sequence gets the results of fresh Atoms step for step.
func TestHelperReusesAtoms(t *testing.T) {
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "numpy", "ase")
	src := `
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import aserpc_compute as ap
from ase.calculators.lj import LennardJones

rng = np.random.default_rng(1)
Z = np.array([8, 1, 1], np.int32)
P = np.array([[0, 0, 0.12], [0, 0.76, -0.48], [0, -0.76, -0.48]])
CELL, PBC = np.zeros((3, 3)), np.zeros(3, bool)
out = []

def req(calc, cid=1, z=Z, p=P, cell=CELL, pbc=PBC, info=None, arrays=None):
    return ap.atoms_for(cid, calc, z, p, cell, pbc, info, arrays)

def same(a, b):
    return "same" if a is b else "new"

calc = LennardJones()
a0 = req(calc)
a1 = req(calc, p=P + 0.01)
out.append(("moved", same(a0, a1), bool(np.array_equal(a1.positions, P + 0.01))))
raw = lambda p, z=Z: ap.reuse_raw(1, calc, z.tobytes(), memoryview(bytearray(p.tobytes())), CELL.tobytes(), PBC.tobytes(), None)
r1 = raw(P + 0.02)
out.append(("raw", same(a1, r1), bool(np.array_equal(r1.positions, P + 0.02)), raw(P, z=np.array([8, 1, 2], np.int32))))
a2 = req(calc, p=P + 0.01, info={"charge": 1})
out.append(("info", same(a1, a2), a2.info))
a3 = req(calc, p=P + 0.01)
out.append(("info gone", same(a2, a3), a3.info))
m = {"initial_magmoms": np.array([1.0, 0, 0])}
a4 = req(calc, arrays=m)
a5 = req(calc, arrays={"initial_magmoms": np.array([0.5, 0, 0])})
out.append(("array added", same(a3, a4), "then", same(a4, a5), a5.get_initial_magnetic_moments().tolist()))
a6 = req(calc, z=np.array([8, 1, 2], np.int32))
out.append(("numbers", same(a5, a6), a6.numbers.tolist()))
a7 = req(calc, z=np.array([8, 1, 2], np.int32), cell=np.eye(3) * 5)
out.append(("cell", same(a6, a7), a7.cell.array.tolist()[0]))
a8 = req(calc, z=np.array([8, 1, 2], np.int32), cell=np.eye(3) * 5, pbc=np.ones(3, bool))
out.append(("pbc", same(a7, a8), a8.pbc.tolist()))
a8.info["scratch"] = 1  # a calculator writing into atoms.info
a9 = req(calc, z=np.array([8, 1, 2], np.int32), cell=np.eye(3) * 5, pbc=np.ones(3, bool))
out.append(("info written", same(a8, a9), a9.info))
out.append(("other calculator", same(a9, req(LennardJones(), cid=2, z=np.array([8, 1, 2], np.int32), cell=np.eye(3) * 5, pbc=np.ones(3, bool)))))

class Keeps(LennardJones):
    def calculate(self, atoms=None, properties=None, system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.atoms = atoms  # the object itself, not ASE's copy

k = Keeps()
b0 = req(k, cid=3)
ap.compute(k, b0, ["energy", "forces"])
b1 = req(k, cid=3, p=P + 0.01)
out.append(("kept by the calculator", same(b0, b1)))

# An MD-like walk: reused Atoms and fresh Atoms give the same results.
c1, c2 = LennardJones(), LennardJones()
worst = 0.0
pos = P.copy()
for step in range(50):
    pos = pos + rng.normal(scale=0.01, size=pos.shape)
    info = {"step": step % 3} if step % 10 == 0 else None
    r1 = ap.compute(c1, req(c1, cid=4, p=pos, info=info), ["energy", "forces"])
    r2 = ap.compute(c2, ap.make_atoms(Z, pos, CELL, PBC, info, None), ["energy", "forces"])
    worst = max(worst, abs(r1["energy"] - r2["energy"]), float(np.abs(r1["forces"] - r2["forces"]).max()))
out.append(("walk", worst))
ap.forget(4)
out.append(("forgotten", 4 in ap._last))
for o in out:
    print(*o)
`
	out, err := exec.Command(py, "-c", src, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `moved same True
raw same True None
info new {'charge': 1}
info gone new {}
array added new then same [0.5, 0.0, 0.0]
numbers new [8, 1, 2]
cell new [5.0, 0.0, 0.0]
pbc new [True, True, True]
info written new {}
other calculator new
kept by the calculator new
walk 0.0
forgotten False`
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestSharedModuleCopies: the client package ships copies of aserpc_state.py
// and aserpc_results.py (go generate ./pyhost); they must not drift apart.
func TestSharedModuleCopies(t *testing.T) {
	for src, dst := range map[string]string{"aserpc_state.py": "_state.py", "aserpc_results.py": "_results.py"} {
		want, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("..", "clientpy", "src", "aserpc", dst))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("clientpy/src/aserpc/%s differs from pyhost/%s: run go generate ./pyhost", dst, src)
		}
	}
}
