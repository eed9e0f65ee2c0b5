package packaging_test

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/wire"
)

var (
	tmpRoot string // removed after the tests

	distOnce  sync.Once
	distFiles dist
	distErr   error
)

// dist is what `just wheel` makes: a portable wheel per architecture and
// the sdist that explains the platforms.
type dist struct {
	wheels  map[string]string // "x86_64", "aarch64" -> path
	sdist   string
	version string // of the wheels, as `aserpc --version` prints it
}

func TestMain(m *testing.M) {
	var err error
	if tmpRoot, err = os.MkdirTemp("", "aserpc-packaging-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// moduleRoot is the directory of go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(gomod)))
}

// distWheels returns the wheels and sdist: those in $ASERPC_TEST_DIST when
// set (`just test` builds them once with `just wheel`), otherwise built
// here once per test binary with scripts/build_wheel.py (which builds the
// zig toolchain and the static libzmq on first use, cached).
func distWheels(t *testing.T) dist {
	t.Helper()
	root := moduleRoot(t)
	distOnce.Do(func() {
		dir := os.Getenv("ASERPC_TEST_DIST")
		if dir == "" {
			dir = filepath.Join(tmpRoot, "dist")
			cmd := exec.Command("python3", filepath.Join(root, "scripts", "build_wheel.py"), "--out", dir, "--sdist")
			cmd.Dir = root
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				distErr = fmt.Errorf("build_wheel.py: %v\n%s", err, out.String())
				return
			}
		}
		distFiles, distErr = findDist(dir)
	})
	if distErr != nil {
		t.Fatal(distErr)
	}
	return distFiles
}

// findDist picks the one wheel per architecture and the one sdist in dir.
func findDist(dir string) (dist, error) {
	d := dist{wheels: map[string]string{}}
	for _, arch := range []string{"x86_64", "aarch64"} {
		m, _ := filepath.Glob(filepath.Join(dir, "aserpc-*-py3-none-manylinux_2_17_"+arch+".manylinux2014_"+arch+".whl"))
		if len(m) != 1 {
			return d, fmt.Errorf("%s: want one %s wheel, found %v", dir, arch, m)
		}
		d.wheels[arch] = m[0]
		if n := wheelName.FindStringSubmatch(filepath.Base(m[0])); n != nil {
			d.version = n[1]
		}
	}
	m, _ := filepath.Glob(filepath.Join(dir, "aserpc-*.tar.gz"))
	if len(m) != 1 {
		return d, fmt.Errorf("%s: want one sdist, found %v", dir, m)
	}
	d.sdist = m[0]
	return d, nil
}

// wheel is the x86_64 wheel, the one this machine installs.
func wheel(t *testing.T) string {
	t.Helper()
	return distWheels(t).wheels["x86_64"]
}

var wheelName = regexp.MustCompile(`^aserpc-([0-9][^-]*)-py3-none-manylinux_2_17_(x86_64|aarch64)\.manylinux2014_(x86_64|aarch64)\.whl$`)

// readZip returns every file of a zip archive and its mode.
func readZip(t *testing.T, path string) (files map[string][]byte, modes map[string]os.FileMode, order []string) {
	t.Helper()
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	files, modes = map[string][]byte{}, map[string]os.FileMode{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		files[f.Name] = b
		modes[f.Name] = f.Mode()
		order = append(order, f.Name)
	}
	return files, modes, order
}

func TestWheelContents(t *testing.T) {
	for arch, path := range distWheels(t).wheels {
		t.Run(arch, func(t *testing.T) { checkWheel(t, arch, path) })
	}
}

// elfMachine is the ELF e_machine of each architecture.
var elfMachine = map[string]elf.Machine{"x86_64": elf.EM_X86_64, "aarch64": elf.EM_AARCH64}

func checkWheel(t *testing.T, arch, path string) {
	m := wheelName.FindStringSubmatch(filepath.Base(path))
	if m == nil || m[2] != arch || m[3] != arch {
		t.Fatalf("wheel name %s", filepath.Base(path))
	}
	ver := m[1]
	files, modes, order := readZip(t, path)
	info := "aserpc-" + ver + ".dist-info/"
	script := "aserpc-" + ver + ".data/scripts/aserpc"

	for _, want := range []string{"aserpc/__init__.py", "aserpc/client.py", "aserpc/calculators.py", "aserpc/py.typed",
		script, info + "METADATA", info + "WHEEL", info + "RECORD", info + "entry_points.txt"} {
		if _, ok := files[want]; !ok {
			t.Errorf("wheel lacks %s (has %v)", want, order)
		}
	}
	for name := range files {
		if strings.Contains(name, "__pycache__") || strings.HasSuffix(name, ".pyc") {
			t.Errorf("wheel carries bytecode %s", name)
		}
	}
	if modes[script].Perm() != 0o755 {
		t.Errorf("%s mode %v, want 0755", script, modes[script])
	}
	if ef, err := elf.NewFile(bytes.NewReader(files[script])); err != nil {
		t.Errorf("%s is not an ELF binary: %v", script, err)
	} else if ef.Machine != elfMachine[arch] {
		t.Errorf("%s is for %v, want %v", script, ef.Machine, elfMachine[arch])
	}

	wheelMeta := string(files[info+"WHEEL"])
	for _, want := range []string{"Wheel-Version: 1.0\n", "Root-Is-Purelib: false\n", "Tag: py3-none-manylinux_2_17_" + arch + "\n",
		"Tag: py3-none-manylinux2014_" + arch + "\n"} {
		if !strings.Contains(wheelMeta, want) {
			t.Errorf("WHEEL lacks %q:\n%s", want, wheelMeta)
		}
	}
	meta := string(files[info+"METADATA"])
	for _, want := range []string{"Name: aserpc\n", "Version: " + ver + "\n", "Requires-Python: >=3.9\n",
		"Requires-Dist: ase", "Requires-Dist: numpy", "Requires-Dist: pyzmq", "Requires-Dist: msgpack"} {
		if !strings.Contains(meta, want) {
			t.Errorf("METADATA lacks %q:\n%s", want, meta)
		}
	}
	eps := string(files[info+"entry_points.txt"])
	if !strings.Contains(eps, "[aserpc.calculators]\nbuiltin = aserpc.calculators:get_calculators\n") {
		t.Errorf("entry_points.txt:\n%s", eps)
	}

	// RECORD: every file but RECORD itself with its sha256 and size; RECORD
	// listed without either.
	recorded := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(files[info+"RECORD"]))
	for sc.Scan() {
		parts := strings.Split(sc.Text(), ",")
		if len(parts) != 3 {
			t.Fatalf("RECORD line %q", sc.Text())
		}
		name := parts[0]
		recorded[name] = true
		if name == info+"RECORD" {
			if parts[1] != "" || parts[2] != "" {
				t.Errorf("RECORD's own line %q", sc.Text())
			}
			continue
		}
		b, ok := files[name]
		if !ok {
			t.Errorf("RECORD lists %s, not in the wheel", name)
			continue
		}
		sum := sha256.Sum256(b)
		if want := "sha256=" + base64.RawURLEncoding.EncodeToString(sum[:]); parts[1] != want {
			t.Errorf("RECORD hash of %s: %s, want %s", name, parts[1], want)
		}
		if parts[2] != fmt.Sprint(len(b)) {
			t.Errorf("RECORD size of %s: %s, want %d", name, parts[2], len(b))
		}
	}
	for name := range files {
		if !recorded[name] {
			t.Errorf("%s missing from RECORD", name)
		}
	}
}

// calcWheel writes a tiny pure-Python wheel, aserpc-testcalc, whose
// aserpc.calculators provider registers TestLJ: ASE's LennardJones with
// non-default sigma and epsilon, so a result proves the provider was used.
func calcWheel(t *testing.T) string {
	t.Helper()
	const di = "aserpc_testcalc-0.1.dist-info/"
	files := []struct{ name, body string }{
		{"aserpc_testcalc.py", "def get_calculators():\n" +
			"    return {\"TestLJ\": {\"factory\": \"ase.calculators.lj:LennardJones\",\n" +
			"                       \"kwargs\": {\"sigma\": 1.1, \"epsilon\": 0.7}}}\n"},
		{di + "METADATA", "Metadata-Version: 2.1\nName: aserpc-testcalc\nVersion: 0.1\nRequires-Dist: ase\n"},
		{di + "WHEEL", "Wheel-Version: 1.0\nGenerator: aserpc packaging test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
		{di + "entry_points.txt", "[aserpc.calculators]\ntestcalc = aserpc_testcalc:get_calculators\n"},
	}
	path := filepath.Join(t.TempDir(), "aserpc_testcalc-0.1-py3-none-any.whl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	var record strings.Builder
	for _, fl := range files {
		w, err := zw.Create(fl.name)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, fl.body)
		sum := sha256.Sum256([]byte(fl.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", fl.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(fl.body))
	}
	fmt.Fprintf(&record, "%sRECORD,,\n", di)
	w, _ := zw.Create(di + "RECORD")
	io.WriteString(w, record.String())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// cleanEnv is the environment of the processes a test starts: nothing that
// picks a Python (ASERPC_*, PYTHON*, VIRTUAL_ENV, CONDA_PREFIX), no venv on
// PATH, ipc sockets in dir.
func cleanEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "ASERPC_") || strings.HasPrefix(k, "PYTHON") || strings.HasPrefix(k, "UV_") ||
			k == "VIRTUAL_ENV" || k == "CONDA_PREFIX" || k == "PATH" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH=/usr/local/bin:/usr/bin:/bin", "ASERPC_IPC_DIR="+filepath.Join(dir, "ipc"), "PYTHONUNBUFFERED=1")
}

// run runs argv to completion (at most limit) and returns stdout, failing
// the test with both outputs when it fails.
func run(t *testing.T, env []string, dir string, limit time.Duration, argv ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = env, dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(argv, " "), err, o.String(), e.String())
	}
	return o.String(), e.String()
}

// tcpPair returns two tcp://127.0.0.1 addresses on ports free just now.
func tcpPair(t *testing.T) (front, back string) {
	ep := proctest.FreeTCP(t, 2)
	return ep[0], ep[1]
}

// brokerList is the broker's LIST (calculator → workers), or an error.
func brokerList(front string) (map[string]any, error) {
	m, err := proctest.Request(front, 500*time.Millisecond, wire.List.Frame())
	if err != nil {
		return nil, err
	}
	if len(m) < 2 {
		return nil, fmt.Errorf("short reply %q", m)
	}
	v, err := wire.Unmarshal(m[1])
	if err != nil {
		return nil, err
	}
	mm, _ := v.(map[string]any)
	return mm, nil
}

func waitBroker(t *testing.T, p *proctest.Proc, front string, d time.Duration) {
	t.Helper()
	proctest.WaitFor(t, d, "the broker to answer LIST", func() bool {
		if !p.Running() {
			t.Fatalf("broker exited:\n%s", p.Logs())
		}
		_, err := brokerList(front)
		return err == nil
	})
}

func waitWorker(t *testing.T, p *proctest.Proc, front, calc string, d time.Duration) {
	t.Helper()
	proctest.WaitFor(t, d, calc+" to have a worker", func() bool {
		if !p.Running() {
			t.Fatalf("worker %s exited:\n%s", calc, p.Logs())
		}
		m, err := brokerList(front)
		if err != nil {
			return false
		}
		n, _ := m[calc].(int64)
		return n > 0
	})
}

// clientScript computes H2O's energy and forces through RemoteCalculator and
// with ASE's LennardJones(**kwargs) in-process, in the same interpreter.
const clientScript = `import json, sys
import numpy as np
from ase.build import molecule
from ase.calculators.lj import LennardJones
from aserpc import RemoteCalculator
broker, name, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
a = molecule("H2O")
a.calc = RemoteCalculator(name, broker=broker, timeout=60000)
b = molecule("H2O")
b.calc = LennardJones(**kwargs)
e, f = a.get_potential_energy(), a.get_forces()
print(json.dumps({"energy": e, "local": b.get_potential_energy(),
                  "forces_equal": bool(np.array_equal(f, b.get_forces())),
                  "client": __import__("aserpc").__file__}))
`

// checkClient runs clientScript with argv (an interpreter, or a command that
// runs one) and checks the remote energy and forces equal the in-process ones.
func checkClient(t *testing.T, env []string, dir string, argv []string, front, calc string, kwargs map[string]any) string {
	t.Helper()
	script := filepath.Join(dir, "client.py")
	if err := os.WriteFile(script, []byte(clientScript), 0o644); err != nil {
		t.Fatal(err)
	}
	kw, _ := json.Marshal(kwargs)
	out, _ := run(t, env, dir, 3*time.Minute, append(argv, script, front, calc, string(kw))...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var r struct {
		Energy       float64 `json:"energy"`
		Local        float64 `json:"local"`
		ForcesEqual  bool    `json:"forces_equal"`
		ClientModule string  `json:"client"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	if r.Energy != r.Local || !r.ForcesEqual || r.Energy == 0 {
		t.Errorf("%s: remote energy %v, in-process %v, forces equal %v", calc, r.Energy, r.Local, r.ForcesEqual)
	}
	t.Logf("%s: H2O energy %v through the broker = in-process (client %s)", calc, r.Energy, r.ClientModule)
	return r.ClientModule
}

// TestPipInstall installs the wheel with `pip install --no-index` into a
// fresh venv over Debian's python3 (whose python3-ase, -numpy, -zmq and
// -msgpack satisfy its Requires-Dist), with the test calculator package,
// then runs that venv's aserpc with no --python: list shows the venv's
// entry points, and a broker plus LJ and TestLJ workers serve the venv's
// own client.
func TestPipInstall(t *testing.T) {
	whl := wheel(t)
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy", "zmq", "msgpack", "pip")
	dir := t.TempDir()
	venv := filepath.Join(dir, "venv")
	env := cleanEnv(dir)
	run(t, env, dir, time.Minute, py, "-m", "venv", "--system-site-packages", venv)
	run(t, env, dir, 2*time.Minute, filepath.Join(venv, "bin", "python"), "-m", "pip", "install",
		"--no-index", "--disable-pip-version-check", "-q", whl, calcWheel(t))
	aserpc := filepath.Join(venv, "bin", "aserpc")
	if fi, err := os.Stat(aserpc); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("pip put no executable %s: %v", aserpc, err)
	}

	// The venv's aserpc.calculators entry points, as its Python sees them.
	out, _ := run(t, env, dir, time.Minute, filepath.Join(venv, "bin", "python"), "-c", `
import json
from importlib.metadata import entry_points
eps = entry_points()
sel = eps.select(group="aserpc.calculators") if hasattr(eps, "select") else eps.get("aserpc.calculators", [])
print(json.dumps({ep.value: sorted(ep.load()()) for ep in sel}))`)
	var eps map[string][]string
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &eps); err != nil {
		t.Fatalf("entry points %q: %v", out, err)
	}
	if got := fmt.Sprint(eps["aserpc.calculators:get_calculators"]); got != "[EMT LJ]" {
		t.Errorf("aserpc's own provider gives %s, want [EMT LJ] (all: %v)", got, eps)
	}

	// `aserpc list` embeds the venv's Python, found from the binary's place.
	stdout, stderr := run(t, env, dir, time.Minute, aserpc, "list", "--json")
	var rows []struct{ Name, Factory, Source, Warning string }
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("aserpc list --json: %v\n%s", err, stdout)
	}
	got := map[string]string{}
	for _, r := range rows {
		if r.Warning != "" {
			t.Errorf("provider %s failed: %s", r.Name, r.Warning)
		}
		got[r.Name] = r.Factory + " (" + r.Source + ")"
	}
	want := map[string]string{
		"LJ":     "ase.calculators.lj:LennardJones (builtin)",
		"EMT":    "ase.calculators.emt:EMT (builtin)",
		"TestLJ": "ase.calculators.lj:LennardJones (entry point)",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("aserpc list: %v, want %v", got, want)
	}
	// TestLJ comes from the venv's entry points: list ran the venv's python (which python, and
	// why, the workers below log; list prints no INFO line).
	if strings.Contains(stderr, "INFO") {
		t.Errorf("aserpc list printed INFO lines:\n%s", stderr)
	}

	// A broker, workers for LJ and TestLJ, and the venv's client.
	front, back := tcpPair(t)
	procs := proctest.NewGroup(t)
	broker := procs.Start("broker", env, dir, aserpc, "broker", "--frontend", front, "--backend", back)
	waitBroker(t, broker, front, 15*time.Second)
	lj := procs.Start("worker LJ", env, dir, aserpc, "worker", "LJ", "--broker", back, "--heartbeat", "0.5")
	tlj := procs.Start("worker TestLJ", env, dir, aserpc, "worker", "TestLJ", "--broker", back, "--heartbeat", "0.5")
	waitWorker(t, lj, front, "LJ", time.Minute)
	waitWorker(t, tlj, front, "TestLJ", time.Minute)
	if !strings.Contains(lj.Logs(), `chosen_by="binary's venv"`) {
		t.Errorf("worker LJ did not serve from the binary's venv:\n%s", lj.Logs())
	}
	pyv := filepath.Join(venv, "bin", "python")
	client := checkClient(t, env, dir, []string{pyv}, front, "LJ", map[string]any{})
	if !strings.HasPrefix(client, venv) {
		t.Errorf("client imported from %s, not the venv %s", client, venv)
	}
	checkClient(t, env, dir, []string{pyv}, front, "TestLJ", map[string]any{"sigma": 1.1, "epsilon": 0.7})
}

// TestUvx installs uv from PyPI into a cached tools venv, then runs the
// broker and a worker straight from the wheel with uvx, the worker with the
// test calculator package beside it (--with), and a client in the same kind
// of uvx environment. uvx fetches ase, numpy, pyzmq and msgpack from PyPI
// into UV_CACHE_DIR (under the test cache, so a second run is offline and
// quick) and runs on Debian's python3 (it has a shared libpython to embed).
func TestUvx(t *testing.T) {
	whl := wheel(t)
	dir := t.TempDir()
	uvx, env := uvxEnv(t, dir)
	calc := calcWheel(t)

	out, _ := run(t, env, dir, 5*time.Minute, uvx, "--from", whl, "--with", calc, "aserpc", "list")
	if !regexp.MustCompile(`(?m)^TestLJ\s+ase\.calculators\.lj:LennardJones\s+entry point$`).MatchString(out) {
		t.Errorf("uvx ... aserpc list does not show TestLJ from the --with package:\n%s", out)
	}

	front, back := tcpPair(t)
	procs := proctest.NewGroup(t)
	broker := procs.Start("broker", env, dir, uvx, "--from", whl, "aserpc", "broker", "--frontend", front, "--backend", back)
	waitBroker(t, broker, front, 2*time.Minute)
	w := procs.Start("worker TestLJ", env, dir, uvx, "--from", whl, "--with", calc,
		"aserpc", "worker", "TestLJ", "--broker", back, "--heartbeat", "0.5")
	waitWorker(t, w, front, "TestLJ", 2*time.Minute)
	if !strings.Contains(w.Logs(), `chosen_by="binary's venv"`) {
		t.Errorf("uvx worker did not serve from its own environment:\n%s", w.Logs())
	}
	checkClient(t, env, dir, []string{uvx, "--from", whl, "python"}, front, "TestLJ", map[string]any{"sigma": 1.1, "epsilon": 0.7})
}

// uvxEnv returns uvx (uv from PyPI, in a cached tools venv) and the
// environment it runs in: cleanEnv(dir), the uv cache under the test cache
// (a second run is offline and quick), Debian's python3 (it has a shared
// libpython to embed), no managed Python downloads, no user config. extra
// is appended.
func uvxEnv(t *testing.T, dir string, extra ...string) (uvx string, env []string) {
	t.Helper()
	py := testenv.SystemPython(t)
	uvPy := testenv.Venv(t, "uv", py, testenv.VenvOptions{Packages: []string{"uv"}})
	env = append(cleanEnv(dir),
		"UV_CACHE_DIR="+filepath.Join(testenv.CacheDir(), "uv-cache"),
		"UV_PYTHON="+py, "UV_PYTHON_DOWNLOADS=never", "UV_NO_CONFIG=1")
	return filepath.Join(filepath.Dir(uvPy), "uvx"), append(env, extra...)
}
