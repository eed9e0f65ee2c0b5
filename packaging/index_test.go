package packaging_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
)

// index serves a PEP 503 simple index of files on 127.0.0.1 (as a
// project's private index or a release page would) and returns its
// /simple/ URL. Each project gets /simple/<name>/ listing its files with
// their sha256, which pip and uv verify.
func index(t *testing.T, projects map[string][]string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "files"), 0o755); err != nil {
		t.Fatal(err)
	}
	var top strings.Builder
	top.WriteString("<!DOCTYPE html>\n<html><body>\n")
	for name, files := range projects {
		dir := filepath.Join(root, "simple", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var page strings.Builder
		page.WriteString("<!DOCTYPE html>\n<html><body>\n")
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			base := filepath.Base(f)
			if err := os.WriteFile(filepath.Join(root, "files", base), b, 0o644); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&page, "<a href=\"../../files/%s#sha256=%s\" data-requires-python=\"&gt;=3.9\">%s</a><br>\n",
				base, hex.EncodeToString(sum[:]), base)
		}
		page.WriteString("</body></html>\n")
		if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(page.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&top, "<a href=\"%s/\">%s</a><br>\n", name, name)
	}
	top.WriteString("</body></html>\n")
	if err := os.WriteFile(filepath.Join(root, "simple", "index.html"), []byte(top.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(root))) // 127.0.0.1, a free port
	t.Cleanup(srv.Close)
	return srv.URL + "/simple/"
}

// noLibzmq returns a command prefix that runs a command in a private mount
// namespace in which every libzmq shared library of the system reads as
// /dev/null: the machine, as far as that command can tell, has no libzmq
// installed. It skips the test where that cannot be done (not root, no
// unshare), and fails it if the hiding does not take: Python's ctypes must
// be unable to load libzmq.so.5 there while it can outside.
func noLibzmq(t *testing.T, dir string) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("hiding the system's libzmq needs a private mount namespace: run as root")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("hiding the system's libzmq needs unshare (util-linux)")
	}
	script := filepath.Join(dir, "no-libzmq.sh")
	body := `#!/bin/sh
# Runs "$@" where every libzmq.so* of the system is /dev/null.
set -e
for f in $(ls /usr/lib/libzmq.so* /usr/lib/*/libzmq.so* /usr/local/lib/libzmq.so* /usr/local/lib/*/libzmq.so* 2>/dev/null | xargs -r readlink -f | sort -u); do
  mount --bind /dev/null "$f"
done
exec "$@"
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := []string{"unshare", "--mount", "--propagation", "private", "/bin/sh", script}
	const probe = "import ctypes\ntry:\n    ctypes.CDLL('libzmq.so.5')\n    print('loaded')\nexcept OSError as e:\n    print('hidden:', e)\n"
	py := testenv.SystemPython(t)
	out, err := exec.Command(py, "-c", probe).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "loaded") {
		t.Logf("libzmq.so.5 is not installed on this machine at all (%s)", strings.TrimSpace(string(out)))
	}
	out, err = exec.Command(prefix[0], append(prefix[1:], py, "-c", probe)...).CombinedOutput()
	if err != nil {
		t.Skipf("no private mount namespace here (%v): %s", err, out)
	}
	if !strings.HasPrefix(string(out), "hidden:") {
		t.Fatalf("libzmq.so.5 still loads inside the namespace: %s", out)
	}
	t.Logf("inside the namespace: %s", strings.TrimSpace(string(out)))
	return prefix
}

// TestIndex publishes the wheel and the sdist on a PEP 503 index served on
// 127.0.0.1, configured the way users configure theirs (UV_INDEX,
// PIP_EXTRA_INDEX_URL; PyPI stays the default for everything else), and
// runs the README's lines literally against it — on a machine with no
// libzmq (hidden by noLibzmq): `uvx aserpc broker`, `uvx --with <a
// calculator package from the index> aserpc worker TestLJ`, `uvx aserpc
// worker ase.calculators.lj:LennardJones --kwargs ...`, and `pip install
// aserpc` into a fresh venv. Every client's energy and forces equal
// in-process ones. PyPI also has an aserpc (0.1.3, the Python original):
// each install must still get this one.
func TestIndex(t *testing.T) {
	d := distWheels(t)
	py := testenv.SystemPython(t)
	dir := t.TempDir()
	hide := noLibzmq(t, dir)
	url := index(t, map[string][]string{
		"aserpc":          {d.wheels["x86_64"], d.wheels["aarch64"], d.sdist},
		"aserpc-testcalc": {calcWheel(t)},
	})
	t.Logf("index: %s", url)
	ver := d.version
	hidden := func(argv ...string) []string { return append(append([]string{}, hide...), argv...) }

	t.Run("uvx", func(t *testing.T) {
		uvx, env := uvxEnv(t, dir, "UV_INDEX="+url)

		out, _ := run(t, env, dir, 5*time.Minute, hidden(uvx, "aserpc", "--version")...)
		if !strings.Contains(out, "aserpc version "+ver) {
			t.Fatalf("uvx aserpc --version: %q, want version %s (not PyPI's 0.1.3)", out, ver)
		}

		front, back := tcpPair(t)
		procs := proctest.NewGroup(t)
		broker := procs.Start("uvx aserpc broker", env, dir, hidden(uvx, "aserpc", "broker", "--frontend", front, "--backend", back)...)
		waitBroker(t, broker, front, 2*time.Minute)
		w := procs.Start("uvx --with aserpc-testcalc aserpc worker TestLJ", env, dir,
			hidden(uvx, "--with", "aserpc-testcalc", "aserpc", "worker", "TestLJ", "--broker", back, "--heartbeat", "0.5")...)
		lj := procs.Start("uvx aserpc worker ase.calculators.lj:LennardJones", env, dir,
			hidden(uvx, "aserpc", "worker", "ase.calculators.lj:LennardJones", "--kwargs", `{"sigma": 3.4}`,
				"--broker", back, "--heartbeat", "0.5")...)
		waitWorker(t, w, front, "TestLJ", 3*time.Minute)
		waitWorker(t, lj, front, "LennardJones", 3*time.Minute)
		client := hidden(uvx, "--from", "aserpc", "python")
		checkClient(t, env, dir, client, front, "TestLJ", map[string]any{"sigma": 1.1, "epsilon": 0.7})
		checkClient(t, env, dir, client, front, "LennardJones", map[string]any{"sigma": 3.4})
	})

	t.Run("pip", func(t *testing.T) {
		env := append(cleanEnv(dir), "PIP_EXTRA_INDEX_URL="+url, "PIP_DISABLE_PIP_VERSION_CHECK=1")
		venv := filepath.Join(dir, "pipvenv")
		run(t, env, dir, time.Minute, py, "-m", "venv", venv)
		pip := []string{filepath.Join(venv, "bin", "python"), "-m", "pip", "install", "-q"}

		// The sdist stands for every platform without a wheel (macOS, musl):
		// pip must stop with the explanation, not build, not fall back to 0.1.3.
		nobin := exec.Command(pip[0], append(pip[1:], "--no-binary", "aserpc", "--no-deps", "aserpc")...)
		nobin.Env, nobin.Dir = env, dir
		out, err := nobin.CombinedOutput()
		if err == nil {
			t.Fatalf("pip install --no-binary aserpc succeeded:\n%s", out)
		}
		for _, want := range []string{"pip found no wheel for this machine", "manylinux_2_17_x86_64", "manylinux_2_17_aarch64",
			"Go >= 1.26"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("pip's failure without a wheel lacks %q:\n%s", want, out)
			}
		}

		run(t, env, dir, 5*time.Minute, append(pip, "aserpc")...)
		aserpc := filepath.Join(venv, "bin", "aserpc")
		out2, _ := run(t, env, dir, time.Minute, hidden(aserpc, "--version")...)
		if !strings.Contains(out2, "aserpc version "+ver) {
			t.Fatalf("pip installed %q, want aserpc %s", out2, ver)
		}
		front, back := tcpPair(t)
		procs := proctest.NewGroup(t)
		broker := procs.Start("broker", env, dir, hidden(aserpc, "broker", "--frontend", front, "--backend", back)...)
		waitBroker(t, broker, front, 30*time.Second)
		w := procs.Start("worker LJ", env, dir, hidden(aserpc, "worker", "LJ", "--broker", back, "--heartbeat", "0.5")...)
		waitWorker(t, w, front, "LJ", time.Minute)
		if !strings.Contains(w.Logs(), `chosen_by="binary's venv"`) {
			t.Errorf("the worker did not serve from the venv pip installed it into:\n%s", w.Logs())
		}
		checkClient(t, env, dir, hidden(filepath.Join(venv, "bin", "python")), front, "LJ", map[string]any{})
	})
}
