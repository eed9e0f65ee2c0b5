package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/testenv"
)

// The drop-in contract suite (clientpy/tests/test_dropin.py) compares every
// ASE feature in-process and through a RemoteCalculator. `just test` runs it
// with Debian 12's python3 (3.11, ASE 3.22, numpy 1.24); TestDropinVersions
// runs it again with the client and the worker it starts on the oldest and
// newest of each thing we support:
//
//	py3.9   ASE 3.22.1 (the oldest we support), numpy 1.x     pyenv + PyPI
//	py3.13  the newest ASE and numpy 2.x from PyPI            pyenv + PyPI
//	py3.14  ASE and numpy 2.x of Debian unstable              a sid root (chroot)
//	py3.15  ASE and numpy 2.x of Debian unstable              a sid root (chroot)
//
// The worker embeds the same interpreter as the client runs on, so each row
// is also the embedding tested on that Python (bit for bit against the
// in-process calculator: test_bit_for_bit_from_a_fresh_worker).

const dropinMinPassed = 35 // the suite has 41 tests; a few skip where a module is missing (spglib)

func TestDropinVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Python environments")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	common := []string{"pyzmq", "msgpack", "pytest"}
	for _, row := range []struct {
		name, python string
		packages     []string
	}{
		{"py3.9-ase3.22-numpy1", "3.9", []string{"ase==3.22.1", "numpy<2", "scipy<1.14", "matplotlib<3.10"}},
		{"py3.13-ase-newest-numpy2", "3.13", []string{"ase", "numpy>=2", "spglib"}},
	} {
		t.Run(row.name, func(t *testing.T) {
			base := testenv.PyenvPython(t, row.python)
			py := testenv.Venv(t, "dropin-"+row.name, base, testenv.VenvOptions{Packages: append(row.packages, common...)})
			runDropin(t, repo, []string{py}, map[string]string{
				"ASERPC_BIN": aserpcBin, "PYTHONPATH": filepath.Join(repo, "clientpy", "src")})
		})
	}
	t.Run("sid", func(t *testing.T) {
		root := sidRoot(t)
		for _, v := range []string{"3.14", "3.15"} {
			t.Run("py"+v, func(t *testing.T) {
				runDropinChroot(t, root, repo, "python"+v)
			})
		}
	})
}

var passedRe = regexp.MustCompile(`(\d+) passed`)

// runDropin runs the suite with argv (a python, or a chroot command line
// ending in one) and requires it to pass with at least dropinMinPassed tests.
func runDropin(t *testing.T, dir string, argv []string, env map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	args := append(argv[1:], "-m", "pytest", "-q", "-p", "no:cacheprovider", "clientpy/tests/test_dropin.py")
	cmd := exec.CommandContext(ctx, argv[0], args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	summary := lines[len(lines)-1]
	if err != nil {
		t.Fatalf("drop-in suite: %v\n%s", err, out)
	}
	n := 0
	if m := passedRe.FindStringSubmatch(summary); m != nil {
		n, _ = strconv.Atoi(m[1])
	}
	if n < dropinMinPassed || strings.Contains(summary, "failed") {
		t.Fatalf("drop-in suite: %q, want at least %d passed\n%s", summary, dropinMinPassed, out)
	}
	t.Logf("%s (%v)", summary, time.Since(start).Round(time.Second))
}

// sidPackages are what the sid root holds: both interpreters with their
// shared libpython (the worker embeds it), and the client's dependencies.
const sidPackages = "python3.14,python3.15,libpython3.14,libpython3.15,python3-numpy,python3-ase," +
	"python3-zmq,python3-msgpack,python3-pytest,python3-spglib"

// sidRoot returns a Debian unstable root with CPython 3.14 and 3.15, made
// once (mmdebstrap, ~90 s) and cached. The snapshot's Release file is
// expired, hence Check-Valid-Until.
func sidRoot(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (util-linux, coreutils)", tool)
		}
	}
	h := sha256.Sum256([]byte(sidPackages))
	return testenv.DebianRoot(t, "sidroot-"+hex.EncodeToString(h[:])[:12],
		[]string{"--variant=minbase", `--aptopt=Acquire::Check-Valid-Until "false"`, "--include=" + sidPackages},
		"sid", nil, func(dir string) error {
			for _, d := range []string{"opt/aserpc/repo", "opt/aserpc/bin"} {
				if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
					return err
				}
			}
			return nil
		})
}

// runDropinChroot runs the suite inside root with its python: in a mount
// namespace of its own, /proc, /dev (multiprocessing's semaphores live in
// /dev/shm) and a fresh /tmp are mounted, and this repository and our binary
// are bound read-only under /opt/aserpc.
func runDropinChroot(t *testing.T, root, repo, python string) {
	t.Helper()
	script := `set -e
R="$1"; shift
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/tmp"
mount --bind -o ro "$REPO" "$R/opt/aserpc/repo"
mount --bind -o ro "$BINDIR" "$R/opt/aserpc/bin"
cd "$R/opt/aserpc/repo"
exec chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
  ASERPC_BIN=/opt/aserpc/bin/aserpc PYTHONPATH=/opt/aserpc/repo/clientpy/src \
  sh -c 'cd /opt/aserpc/repo && exec "$0" "$@"' "$@"
`
	binDir := filepath.Dir(aserpcBin)
	if filepath.Base(aserpcBin) != "aserpc" { // bound as a directory: give it its name
		binDir = t.TempDir()
		b, err := os.ReadFile(aserpcBin)
		if err == nil {
			err = os.WriteFile(filepath.Join(binDir, "aserpc"), b, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	argv := []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", root, python}
	runDropin(t, repo, argv, map[string]string{"REPO": repo, "BINDIR": binDir})
}
