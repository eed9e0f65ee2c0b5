package packaging_test

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
)

// auditwheelVersion is pinned so that a new policy cannot change a verdict
// unnoticed.
const auditwheelVersion = "6.8.2"

// manylinux2014Libs is PEP 599's list of libraries a manylinux2014 wheel may
// link without bundling them, plus each architecture's dynamic loader.
var manylinux2014Libs = map[string]bool{
	"libgcc_s.so.1": true, "libstdc++.so.6": true, "libm.so.6": true, "libdl.so.2": true, "librt.so.1": true,
	"libc.so.6": true, "libnsl.so.1": true, "libutil.so.1": true, "libpthread.so.0": true, "libresolv.so.2": true,
	"libX11.so.6": true, "libXext.so.6": true, "libXrender.so.1": true, "libICE.so.6": true, "libSM.so.6": true,
	"libGL.so.1": true, "libgobject-2.0.so.0": true, "libgthread-2.0.so.0": true, "libglib-2.0.so.0": true,
	"ld-linux-x86-64.so.2": true, "ld-linux-aarch64.so.1": true,
}

// wheelBinary extracts the aserpc binary of a wheel into dir.
func wheelBinary(t *testing.T, whl, dir string) string {
	t.Helper()
	files, _, _ := readZip(t, whl)
	for name, b := range files {
		if strings.HasSuffix(name, ".data/scripts/aserpc") {
			path := filepath.Join(dir, "aserpc")
			if err := os.WriteFile(path, b, 0o755); err != nil {
				t.Fatal(err)
			}
			return path
		}
	}
	t.Fatalf("%s has no .data/scripts/aserpc", whl)
	return ""
}

// TestPortable checks each wheel's binary as a package index and an old
// cluster would: auditwheel (from PyPI) must find it consistent with
// manylinux_2_17 with no external library, and its ELF dynamic section must
// need no glibc symbol newer than 2.17 and no library outside the
// manylinux2014 list (no libzmq, no libsodium, no libstdc++).
func TestPortable(t *testing.T) {
	d := distWheels(t)
	py := testenv.SystemPython(t)
	auditPy := testenv.Venv(t, "auditwheel-"+auditwheelVersion, py,
		testenv.VenvOptions{Packages: []string{"auditwheel==" + auditwheelVersion}})
	auditwheel := filepath.Join(filepath.Dir(auditPy), "auditwheel")
	for arch, whl := range d.wheels {
		t.Run(arch, func(t *testing.T) {
			out, err := exec.Command(auditwheel, "show", "--json", whl).Output()
			if err != nil {
				t.Fatalf("auditwheel show --json: %v\n%s", err, out)
			}
			var verdict struct {
				Overall      string         `json:"overall_tag"`
				Sym          string         `json:"sym_tag"`
				ExternalLibs map[string]any `json:"external_libs"`
				Unsupported  bool           `json:"unsupported_isa"`
			}
			if err := json.Unmarshal(out, &verdict); err != nil {
				t.Fatalf("auditwheel show --json: %v\n%s", err, out)
			}
			t.Logf("auditwheel %s: overall %s, symbols %s, external libraries %v", auditwheelVersion,
				verdict.Overall, verdict.Sym, verdict.ExternalLibs)
			if want := "manylinux_2_17_" + arch; verdict.Overall != want {
				t.Errorf("auditwheel: overall tag %q, want %q", verdict.Overall, want)
			}
			if len(verdict.ExternalLibs) != 0 || verdict.Unsupported {
				t.Errorf("auditwheel: external libraries %v, unsupported ISA %v", verdict.ExternalLibs, verdict.Unsupported)
			}

			bin := wheelBinary(t, whl, t.TempDir())
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			libs, err := f.ImportedLibraries()
			if err != nil {
				t.Fatal(err)
			}
			for _, lib := range libs {
				if !manylinux2014Libs[lib] {
					t.Errorf("the binary needs %s, outside the manylinux2014 list", lib)
				}
			}
			syms, err := f.ImportedSymbols()
			if err != nil {
				t.Fatal(err)
			}
			newest, newestSym := [2]int{}, ""
			glibc := regexp.MustCompile(`^GLIBC_(\d+)\.(\d+)`)
			for _, s := range syms {
				m := glibc.FindStringSubmatch(s.Version)
				if m == nil {
					if s.Version != "" {
						t.Errorf("symbol %s needs version %s of %s", s.Name, s.Version, s.Library)
					}
					continue
				}
				major, _ := strconv.Atoi(m[1])
				minor, _ := strconv.Atoi(m[2])
				if v := [2]int{major, minor}; v[0] > newest[0] || v[0] == newest[0] && v[1] > newest[1] {
					newest, newestSym = v, s.Name
				}
			}
			if newest[0] != 2 || newest[1] > 17 || newest[1] == 0 {
				t.Errorf("newest glibc symbol: %s@GLIBC_%d.%d, want <= 2.17", newestSym, newest[0], newest[1])
			}
			t.Logf("%s: needs %v; newest glibc symbol %s@GLIBC_%d.%d", arch, libs, newestSym, newest[0], newest[1])
		})
	}
}

// qemu returns the command prefix that runs an aarch64 Linux binary on this
// machine (qemu-user with Debian's arm64 cross glibc as its root), or skips.
func qemu(t *testing.T) []string {
	t.Helper()
	q, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Skip("qemu-aarch64-static not installed (apt-get install qemu-user-static; scripts/bootstrap.sh does)")
	}
	const sysroot = "/usr/aarch64-linux-gnu"
	if _, err := os.Stat(filepath.Join(sysroot, "lib", "ld-linux-aarch64.so.1")); err != nil {
		t.Skip("no arm64 glibc in " + sysroot + " (apt-get install libc6-arm64-cross; scripts/bootstrap.sh does)")
	}
	return []string{q, "-L", sysroot}
}

// TestAarch64 runs the aarch64 wheel's binary under qemu-user: its
// --version, then a broker and a worker of it (LennardJones) serving this
// machine's client. What runs emulated is all of the aarch64 binary's Go
// and C: the CLI, the broker's routing, the worker's protocol loop,
// libzmq with its tcp transport and libsodium. Python is not: this worker
// runs its calculator in a child process (--python-mode subprocess), and
// that child is this machine's native x86_64 python3 (qemu-user hands an
// execve of a native binary to the kernel). TestAarch64Embedded embeds an
// arm64 Python instead; this test needs no arm64 root.
func TestAarch64(t *testing.T) {
	d := distWheels(t)
	q := qemu(t)
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy", "zmq", "msgpack")
	dir := t.TempDir()
	bin := wheelBinary(t, d.wheels["aarch64"], dir)
	env := cleanEnv(dir)
	emu := func(args ...string) []string { return append(append(append([]string{}, q...), bin), args...) }

	if out, _ := run(t, env, dir, time.Minute, emu("--version")...); !strings.Contains(out, "aserpc version "+d.version) {
		t.Fatalf("aarch64 aserpc --version: %q", out)
	}
	// The binary really is aarch64, not something this machine runs natively.
	if f, err := elf.Open(bin); err != nil || f.Machine != elf.EM_AARCH64 {
		t.Fatalf("%s: not an aarch64 ELF binary (%v)", bin, err)
	} else {
		f.Close()
	}

	front, back := tcpPair(t)
	procs := proctest.NewGroup(t)
	broker := procs.Start("aarch64 broker", env, dir, emu("broker", "--frontend", front, "--backend", back)...)
	waitBroker(t, broker, front, time.Minute)
	w := procs.Start("aarch64 worker", env, dir, emu("worker", "LJ", "--broker", back, "--heartbeat", "1",
		"--python", py, "--python-mode", "subprocess")...)
	waitWorker(t, w, front, "LJ", 2*time.Minute)
	root := moduleRoot(t)
	checkClient(t, append(env, "PYTHONPATH="+filepath.Join(root, "clientpy", "src")), dir, []string{py}, front, "LJ", map[string]any{})
}

// arm64Packages is what the arm64 root holds: Debian's CPython 3.11 with
// its shared libpython, numpy and ASE (which brings scipy).
const arm64Packages = "python3,libpython3.11,python3-numpy,python3-ase"

// arm64Root returns a Debian bookworm arm64 root with arm64Packages, made
// once with `mmdebstrap --variant=extract` (packages unpacked, no
// maintainer scripts, so nothing arm64 runs while it is made: about 250 MB
// from Debian's mirror and half a minute) and cached under the test cache,
// or skips where mmdebstrap or root is missing. What the maintainer
// scripts would have done and matters here is done by hand: the
// libblas.so.3/liblapack.so.3 alternatives numpy loads, and byte-compiling
// (with this machine's python3.11: the same bytecode format), so that
// imports under emulation take seconds, not tens of seconds.
func arm64Root(t *testing.T) string {
	t.Helper()
	py := testenv.SystemPython(t)
	return testenv.DebianRoot(t, "arm64root-bookworm-"+strings.ReplaceAll(arm64Packages, ",", "-"),
		[]string{"--arch=arm64", "--variant=extract", "--include=" + arm64Packages}, "bookworm",
		[]string{"deb http://deb.debian.org/debian bookworm main",
			"deb http://deb.debian.org/debian bookworm-updates main",
			"deb http://deb.debian.org/debian-security bookworm-security main"},
		func(dir string) error {
			lib := filepath.Join(dir, "usr", "lib", "aarch64-linux-gnu")
			for _, l := range []string{"blas/libblas.so.3", "lapack/liblapack.so.3"} {
				if err := os.Symlink(l, filepath.Join(lib, filepath.Base(l))); err != nil {
					return err
				}
			}
			compile := []string{"-m", "compileall", "-q", "-j", "2", "-s", dir, "-p", "/",
				filepath.Join(dir, "usr", "lib", "python3.11")}
			for _, pkg := range []string{"numpy", "scipy", "ase"} {
				compile = append(compile, filepath.Join(dir, "usr", "lib", "python3", "dist-packages", pkg))
			}
			if out, err := exec.Command(py, compile...).CombinedOutput(); err != nil {
				t.Logf("byte-compiling the arm64 root (imports will be slower): %v\n%.2000s", err, out)
			}
			return nil
		})
}

// TestAarch64Embedded runs the aarch64 broker and worker under qemu-user
// with an arm64 Debian root as their sysroot, the worker embedding that
// root's arm64 CPython 3.11 (dlopen of an aarch64 libpython, numpy and
// ASE's LennardJones in the same emulated process): the path a worker on
// a Grace Hopper node takes. The worker learns about its interpreter by
// running it, so --python is a script that runs the arm64 python3 under
// qemu (no binfmt_misc registration needed). A client on this machine gets
// the energy and forces of in-process x86_64 LennardJones, bit for bit.
func TestAarch64Embedded(t *testing.T) {
	d := distWheels(t)
	q := qemu(t)
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy", "zmq", "msgpack")
	root := arm64Root(t)
	dir := t.TempDir()
	bin := wheelBinary(t, d.wheels["aarch64"], dir)
	arm64Python := filepath.Join(dir, "python3-arm64")
	script := fmt.Sprintf("#!/bin/sh\nexec %s -L %s %s \"$@\"\n", q[0], root, filepath.Join(root, "usr", "bin", "python3"))
	if err := os.WriteFile(arm64Python, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	env := cleanEnv(dir)
	emu := func(args ...string) []string { return append([]string{q[0], "-L", root, bin}, args...) }

	front, back := tcpPair(t)
	procs := proctest.NewGroup(t)
	broker := procs.Start("aarch64 broker", env, dir, emu("broker", "--frontend", front, "--backend", back)...)
	waitBroker(t, broker, front, time.Minute)
	start := time.Now()
	w := procs.Start("aarch64 worker (embedded arm64 python)", env, dir, emu("worker", "LJ", "--broker", back,
		"--heartbeat", "1", "--python", arm64Python, "--python-mode", "embed")...)
	waitWorker(t, w, front, "LJ", 3*time.Minute)
	t.Logf("the emulated worker registered after %v", time.Since(start).Round(100*time.Millisecond))
	for _, want := range []string{"mode=embed", "libpython=/usr/lib/aarch64-linux-gnu/libpython3.11.so.1.0"} {
		if !strings.Contains(w.Logs(), want) {
			t.Errorf("the worker's log lacks %q:\n%s", want, w.Logs())
		}
	}
	checkClient(t, append(env, "PYTHONPATH="+filepath.Join(moduleRoot(t), "clientpy", "src")), dir, []string{py}, front, "LJ", map[string]any{})
}

// TestAarch64GoTests cross-compiles the Go packages whose tests need no
// Python — wire (frames, payloads, golden vectors), auth (CURVE keys and
// ZAP over real sockets) and broker (the routing state machine and the
// socket loop over ipc and tcp) — for aarch64 against the static libzmq
// the aarch64 wheel links, and runs them under qemu-user.
func TestAarch64GoTests(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	q := qemu(t)
	root := moduleRoot(t)
	out, err := exec.Command("python3", filepath.Join(root, "scripts", "toolchain.py"), "env", "aarch64").Output()
	if err != nil {
		t.Fatalf("scripts/toolchain.py env aarch64: %v", err)
	}
	env := os.Environ()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		env = append(env, strings.TrimPrefix(line, "export "))
	}
	cmd := exec.Command("go", "test", "-count=1", "-exec", strings.Join(q, " "), "./wire", "./auth", "./broker")
	cmd.Dir, cmd.Env = root, env
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err = cmd.Run()
	t.Logf("GOARCH=arm64 go test -exec %q ./wire ./auth ./broker (%v):\n%s", strings.Join(q, " "),
		time.Since(start).Round(time.Second), buf.String())
	if err != nil {
		t.Fatalf("aarch64 tests under qemu failed: %v", err)
	}
	if got := len(regexp.MustCompile(`(?m)^ok\s`).FindAllString(buf.String(), -1)); got != 3 {
		t.Errorf("want 3 packages ok:\n%s", buf.String())
	}
}
