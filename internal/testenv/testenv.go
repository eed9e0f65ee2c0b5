// Package testenv builds and caches the Python environments that aserpc's
// tests run against: pyenv interpreters, venvs with packages from PyPI, and
// Debian's own python3 as the "system Python" case.
//
// Venvs are cached under $ASERPC_TEST_CACHE (default
// ${XDG_CACHE_HOME:-~/.cache}/aserpc-test) keyed by the caller's key and a
// hash of the recipe, so a second run costs nothing. Creation is serialised
// with an flock so parallel test binaries (go test runs packages in
// parallel) never build the same venv twice or see a half-built one: a venv
// is built in a temporary directory and renamed into place only when
// complete.
//
// An absent base interpreter skips the test; a failure to build a venv from
// a present interpreter (PyPI unreachable, a bad package) fails it, so CI
// never goes green by skipping.
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DebianPython is the distribution's interpreter ("system Python").
const DebianPython = "/usr/bin/python3"

// CacheDir returns the directory under which venvs are cached.
func CacheDir() string {
	if d := os.Getenv("ASERPC_TEST_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "aserpc-test")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "aserpc-test")
	}
	return filepath.Join(home, ".cache", "aserpc-test")
}

// PyenvPython returns pyenv's interpreter for version ("3.11"), or skips
// the test when pyenv has no such version. The highest patch release wins.
func PyenvPython(tb testing.TB, version string) string {
	tb.Helper()
	p, err := FindPyenv(version)
	if err != nil {
		tb.Skipf("pyenv python %s not available: %v", version, err)
	}
	return p
}

// FindPyenv is PyenvPython without a testing.TB.
func FindPyenv(version string) (string, error) {
	root := os.Getenv("PYENV_ROOT")
	if root == "" {
		home, _ := os.UserHomeDir()
		root = filepath.Join(home, ".pyenv")
	}
	matches, _ := filepath.Glob(filepath.Join(root, "versions", version+".*", "bin", "python"+version))
	if len(matches) == 0 {
		return "", fmt.Errorf("no %s/versions/%s.*", root, version)
	}
	sort.Slice(matches, func(i, j int) bool { return patch(matches[i]) > patch(matches[j]) })
	return matches[0], nil
}

func patch(p string) int {
	v := filepath.Base(filepath.Dir(filepath.Dir(p)))
	var a, b, c int
	fmt.Sscanf(v, "%d.%d.%d", &a, &b, &c)
	return c
}

// SystemPython returns Debian's python3, or skips when it is absent.
func SystemPython(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(DebianPython); err != nil {
		tb.Skipf("system python %s not available", DebianPython)
	}
	return DebianPython
}

// VenvOptions is the recipe of a venv.
type VenvOptions struct {
	// SystemSitePackages makes the venv see the base interpreter's packages
	// (Debian's python3-ase, python3-numpy ...).
	SystemSitePackages bool
	// Packages are pip requirement strings installed from PyPI, e.g.
	// "ase==3.26.0", "numpy", or a local path to a project.
	Packages []string
	// NoBinary is pip's --no-binary list, rarely needed.
	NoBinary []string
}

// MLIPBatchKey and MLIPBatchVenv are the venv of the batching tests and
// benchmark (`just test-mlip`, `just bench-batch`): CHGNet, whose PyPI wheel
// ships its weights, and mace-torch, for a small MACE with random weights;
// torch from PyPI (CPU used; about 6 GB with its CUDA libraries).
const MLIPBatchKey = "mlip-batch-py3.11"

// MLIPBatchVenv: see MLIPBatchKey.
var MLIPBatchVenv = VenvOptions{Packages: []string{"chgnet==0.4.2", "mace-torch==0.3.16"}}

// Venv returns the python of a cached venv built from basePython with opts,
// building it on first use. key names the venv in the cache (readable names
// help when debugging: "ref-aserpc-0.1.3-py3.11").
func Venv(tb testing.TB, key, basePython string, opts VenvOptions) string {
	tb.Helper()
	if _, err := os.Stat(basePython); err != nil {
		tb.Skipf("base python %s not available", basePython)
	}
	py, err := BuildVenv(key, basePython, opts, func(format string, args ...any) { tb.Logf(format, args...) })
	if err != nil {
		tb.Fatalf("build venv %s: %v", key, err)
	}
	return py
}

// BuildVenv is Venv without a testing.TB (for TestMain and benchmarks).
func BuildVenv(key, basePython string, opts VenvOptions, logf func(string, ...any)) (string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%v\n%q\n%q\n", basePython, opts.SystemSitePackages, opts.Packages, opts.NoBinary)
	if fi, err := os.Stat(basePython); err == nil {
		fmt.Fprintf(h, "%d\n", fi.ModTime().UnixNano()) // a rebuilt interpreter invalidates the venv
	}
	name := key + "-" + hex.EncodeToString(h.Sum(nil))[:12]
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	dir := filepath.Join(cache, name)
	py := filepath.Join(dir, "bin", "python")
	if ok(dir) {
		return py, nil
	}

	lock, err := os.OpenFile(filepath.Join(cache, name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if ok(dir) { // built by someone else while we waited
		return py, nil
	}

	// Build at the final path (venvs are not relocatable), marking
	// completion with a stamp file written last.
	os.RemoveAll(dir)
	logf("building venv %s from %s (%s)", dir, basePython, strings.Join(opts.Packages, " "))
	args := []string{"-m", "venv"}
	if opts.SystemSitePackages {
		args = append(args, "--system-site-packages")
	}
	args = append(args, dir)
	if out, err := exec.Command(basePython, args...).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("%s -m venv: %v\n%s", basePython, err, out)
	}
	if len(opts.Packages) > 0 {
		pip := []string{"-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"}
		for _, nb := range opts.NoBinary {
			pip = append(pip, "--no-binary", nb)
		}
		pip = append(pip, opts.Packages...)
		cmd := exec.Command(py, pip...)
		cmd.Env = append(os.Environ(), "PIP_NO_WARN_SCRIPT_LOCATION=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pip install %s: %v\n%s", strings.Join(opts.Packages, " "), err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".aserpc-test-complete"), nil, 0o644); err != nil {
		return "", err
	}
	return py, nil
}

func ok(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, ".aserpc-test-complete"))
	return err == nil
}

// RequireModules skips unless python can import every module; use it for a
// system interpreter whose packages the project does not install itself.
func RequireModules(tb testing.TB, python string, modules ...string) {
	tb.Helper()
	src := "import " + strings.Join(modules, ", ")
	if out, err := exec.Command(python, "-c", src).CombinedOutput(); err != nil {
		tb.Skipf("%s lacks %s: %s", python, strings.Join(modules, ","), strings.TrimSpace(string(out)))
	}
}

// DebianRoot returns a Debian root directory made once by mmdebstrap and
// cached as CacheDir()/key: `mmdebstrap --quiet OPTS... SUITE DIR MIRRORS...`,
// then finish(DIR) for what maintainer scripts would have done. It skips
// the test where mmdebstrap or root is missing. Like venvs, a root is made
// in a temporary directory under an flock and renamed into place complete.
func DebianRoot(tb testing.TB, key string, opts []string, suite string, mirrors []string, finish func(dir string) error) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("mmdebstrap makes Debian roots as root here")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		tb.Skip("mmdebstrap not installed (apt-get install mmdebstrap; scripts/bootstrap.sh does)")
	}
	root := filepath.Join(CacheDir(), key)
	done := func() bool { _, err := os.Stat(filepath.Join(root, ".complete")); return err == nil }
	if done() {
		return root
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		tb.Fatal(err)
	}
	lock, err := os.OpenFile(root+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		tb.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if done() { // made by someone else while we waited
		return root
	}
	partial := root + ".partial"
	os.RemoveAll(partial)
	start := time.Now()
	args := append(append(append([]string{"--quiet"}, opts...), suite, partial), mirrors...)
	if out, err := exec.Command("mmdebstrap", args...).CombinedOutput(); err != nil {
		os.RemoveAll(partial)
		tb.Fatalf("mmdebstrap %s: %v\n%s", suite, err, out)
	}
	if finish != nil {
		if err := finish(partial); err != nil {
			os.RemoveAll(partial)
			tb.Fatalf("finishing the %s root: %v", suite, err)
		}
	}
	if err := os.WriteFile(filepath.Join(partial, ".complete"), nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	os.RemoveAll(root)
	if err := os.Rename(partial, root); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("made the Debian %s root %s in %v", suite, root, time.Since(start).Round(time.Second))
	return root
}
