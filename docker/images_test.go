// Package docker holds the tests that build and run the image recipes of
// docker/*/Dockerfile. (BuildKit's linter runs in the separate module
// docker/lint: `just lint-docker`.)
package docker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
)

// No Docker engine runs on the build machines and Docker Hub cannot be
// reached, so the images are built with buildah (`--isolation chroot`) on a
// Debian base made here from Debian's own packages, and run with `buildah
// run`: the same recipes a user builds with `docker build` on the official
// python image (the base is a build argument).

// baseOSPackages make an image like python:*-slim for the recipes: python3
// with venv and a shared libpython, useradd, CA certificates.
const baseOSPackages = "python3,python3-venv,libpython3.11,passwd,ca-certificates"

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// baseOSImage returns a local image of Debian bookworm with baseOSPackages
// and this machine's CA bundle (pip inside a build then trusts what the
// host trusts, such as a site's TLS proxy), made once per buildah storage.
func baseOSImage(t *testing.T) string {
	t.Helper()
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Skipf("no CA bundle at /etc/ssl/certs: %v", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", baseOSPackages)
	h.Write(ca)
	key := hex.EncodeToString(h.Sum(nil))[:12]
	image := "localhost/aserpc-test-debian:" + key
	if exec.Command("buildah", "inspect", "--type", "image", image).Run() == nil {
		return image
	}
	root := testenv.DebianRoot(t, "imagebase-bookworm-"+key,
		[]string{"--variant=minbase", "--include=" + baseOSPackages}, "bookworm", nil, nil)
	ctr := run(t, "buildah", "from", "scratch")
	defer exec.Command("buildah", "rm", ctr).Run()
	run(t, "buildah", "copy", "--quiet", ctr, root+"/", "/")
	run(t, "buildah", "copy", "--quiet", ctr, "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt")
	run(t, "buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--env", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "--cmd", "/bin/bash", ctr)
	run(t, "buildah", "commit", "--quiet", ctr, image)
	return image
}

// imageConfig is what a test reads of `buildah inspect` (Docker format, which
// keeps HEALTHCHECK; OCI's has no field for it).
type imageConfig struct {
	User        string
	Entrypoint  []string
	Cmd         []string
	Healthcheck *struct{ Test []string }
}

func inspect(t *testing.T, image string) imageConfig {
	t.Helper()
	var out struct {
		Docker struct {
			Config imageConfig `json:"config"`
		}
	}
	if err := json.Unmarshal([]byte(run(t, "buildah", "inspect", "--type", "image", image)), &out); err != nil {
		t.Fatal(err)
	}
	return out.Docker.Config
}

// TestImages builds docker/base (aserpc-base) from the x86_64 wheel in
// dist/ and runs it as a user's `docker run` would: a worker container
// serving LJ (its entrypoint and command) registers with a broker on the
// host over tcp 127.0.0.1, a client on the host gets the in-process result,
// the health check passes while the broker is up and fails when it is gone,
// the container runs as a non-root user, and SIGTERM to its process (what
// `docker stop` sends) makes the worker say goodbye to the broker. It logs
// the compressed image size and the time from start to registration. The
// model images (docker/chgnet ...) are built the same way by `just images`;
// they pull torch (gigabytes), so no test builds them.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a container image")
	}
	if os.Geteuid() != 0 {
		t.Skip("buildah builds and runs images as root here")
	}
	if _, err := exec.LookPath("buildah"); err != nil {
		t.Skip("buildah not installed (apt-get install buildah; scripts/bootstrap.sh does)")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	wheels, _ := filepath.Glob(filepath.Join(repo, "dist", "aserpc-*-manylinux_2_17_x86_64.*.whl"))
	if len(wheels) == 0 {
		t.Skip("no x86_64 wheel in dist/: run `just wheel` (just test does) first")
	}
	bin, err := proctest.BuildAserpc(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy", "zmq", "msgpack")

	base := baseOSImage(t)
	image := "localhost/aserpc-base:test"
	start := time.Now()
	run(t, "buildah", "bud", "--quiet", "--isolation", "chroot", "--network", "host", "--format", "docker",
		"--build-arg", "BASE_IMAGE="+base, "-f", filepath.Join(repo, "docker", "base", "Dockerfile"), "-t", image, repo)
	t.Logf("built %s in %v", image, time.Since(start).Round(time.Second))
	t.Cleanup(func() { exec.Command("buildah", "rmi", "-f", image).Run() })

	cfg := inspect(t, image)
	if cfg.User == "" || cfg.User == "root" || cfg.User == "0" {
		t.Errorf("image user %q, want a non-root user", cfg.User)
	}
	if strings.Join(cfg.Entrypoint, " ") != "aserpc worker" || strings.Join(cfg.Cmd, " ") != "LJ" {
		t.Errorf("entrypoint %q, cmd %q", cfg.Entrypoint, cfg.Cmd)
	}
	if cfg.Healthcheck == nil || len(cfg.Healthcheck.Test) < 2 || cfg.Healthcheck.Test[0] != "CMD" {
		t.Fatalf("health check %+v", cfg.Healthcheck)
	}
	archive := filepath.Join(t.TempDir(), "image.tar")
	run(t, "buildah", "push", "--quiet", "--compression-format", "gzip", image, "oci-archive:"+archive)
	if fi, err := os.Stat(archive); err == nil {
		t.Logf("%s: %.0f MB as an OCI archive (compressed layers)", image, float64(fi.Size())/1e6)
	}

	// A broker on the host; the container shares the host's network.
	procs := proctest.NewGroup(t)
	ep := proctest.FreeTCP(t, 2)
	front, back := ep[0], ep[1]
	dir := t.TempDir()
	broker := procs.Start("broker", nil, dir, bin, "broker", "--frontend", front, "--backend", back, "--log-level", "DEBUG")
	logs := broker.Logs
	waitLogN := func(what string, n int, d time.Duration) bool {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if strings.Count(logs(), what) >= n {
				return true
			}
		}
		return false
	}
	waitLog := func(what string, d time.Duration) bool { return broker.Logged(what, d) }

	c := newContainer(t, image, front, back)
	ctr, inCtr := c.name, c.cmd
	if out, err := inCtr("id", "-un").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != cfg.User {
		t.Errorf("the container runs as %q (%v), want %s", out, err, cfg.User)
	}
	var wout bytes.Buffer
	started := time.Now()
	worker := c.start(t, cfg, &wout)
	if !waitLog("worker registered", 60*time.Second) {
		t.Fatalf("the container's worker never registered:\n%s\nbroker:\n%s", wout.String(), logs())
	}
	t.Logf("container start -> worker registered: %v", time.Since(started).Round(10*time.Millisecond))

	script := `import sys
from ase.build import molecule
from ase.calculators.lj import LennardJones
from aserpc import RemoteCalculator
a, b = molecule("H2O"), molecule("H2O")
a.calc, b.calc = RemoteCalculator("LJ", broker=sys.argv[1]), LennardJones()
assert a.get_potential_energy() == b.get_potential_energy() and (a.get_forces() == b.get_forces()).all()
print("same")
`
	client := exec.Command(py, "-c", script, front)
	client.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(repo, "clientpy", "src"))
	if out, err := client.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "same" {
		t.Fatalf("client: %v\n%s", err, out)
	}

	health := cfg.Healthcheck.Test[1:]
	if out, err := inCtr(health...).CombinedOutput(); err != nil {
		t.Errorf("health check failed with the broker up: %v\n%s", err, out)
	}

	// docker stop: SIGTERM to the entrypoint's process (buildah run does not forward signals, so
	// the test signals that process itself). The worker says goodbye: DISCONNECT, not a lost
	// connection.
	pid := findWorker(t, worker.Process.Pid)
	syscall.Kill(pid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- worker.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the container did not stop on SIGTERM")
	}
	if !waitLog("worker disconnected", 5*time.Second) || strings.Contains(logs(), "worker connection closed") {
		t.Errorf("the worker did not say goodbye on SIGTERM; broker:\n%s\nworker:\n%s", logs(), wout.String())
	}

	// The manager spawning containers: from zero on the first request, then the idle worker
	// exits and its container process with it. `buildah run` gives the container the image's
	// environment, not the manager's, so the command carries --idle-timeout {idle_timeout}.
	reg := filepath.Join(dir, "spawn.py")
	os.WriteFile(reg, []byte(fmt.Sprintf(`CONFIGS = {"LJc": {"command": ["buildah", "run", "--isolation", "chroot",
    "--network", "host", %q, "--", "aserpc", "worker", "LJ", "--name", "{name}", "--broker", "{broker}",
    "--idle-timeout", "{idle_timeout}"], "idle_timeout": 3, "start_timeout": 60}}
`, ctr)), 0o644)
	manager := procs.Start("manager", nil, dir, bin, "manager", "--registry", reg+":CONFIGS", "--broker", back,
		"--python", py, "--log-dir", filepath.Join(dir, "spawned"))
	if !waitLog("manager connected", 30*time.Second) {
		t.Fatalf("the manager never connected; broker:\n%s", logs())
	}
	client = exec.Command(py, "-c", strings.ReplaceAll(script, `RemoteCalculator("LJ"`, `RemoteCalculator("LJc"`), front)
	client.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(repo, "clientpy", "src"))
	requested := time.Now()
	if out, err := client.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "same" {
		t.Fatalf("client through a spawned container: %v\n%s\nmanager:\n%s", err, out, manager.Logs())
	}
	t.Logf("request -> result through a container the manager started from zero: %v",
		time.Since(requested).Round(10*time.Millisecond))
	if !waitLogN("worker disconnected", 2, 30*time.Second) {
		t.Errorf("the spawned container's worker did not idle out; broker:\n%s", logs())
	}

	if os.Getenv("ASERPC_TEST_IMAGES_MLIP") != "" {
		chgnetImage(t, repo, image, front, back, py)
	} else {
		t.Log("aserpc-chgnet not built (it pulls torch, gigabytes): ASERPC_TEST_IMAGES_MLIP=1 or `just test-images-mlip`")
	}

	broker.Stop(10 * time.Second)
	if out, err := inCtr(health...).CombinedOutput(); err == nil {
		t.Errorf("health check passed with no broker:\n%s", out)
	}
}

// container is a working container of an image, its broker addresses set,
// whose commands run through `buildah run` on the host's network.
type container struct{ name string }

func newContainer(t *testing.T, image, front, back string) container {
	t.Helper()
	c := container{run(t, "buildah", "from", image)}
	t.Cleanup(func() { exec.Command("buildah", "rm", c.name).Run() })
	run(t, "buildah", "config", "--env", "ASERPC_IPC_FRONTEND="+front, "--env", "ASERPC_IPC_BACKEND="+back, c.name)
	return c
}

func (c container) cmd(args ...string) *exec.Cmd {
	return exec.Command("buildah", append([]string{"run", "--isolation", "chroot", "--network", "host", c.name, "--"}, args...)...)
}

// start runs the image's entrypoint and command (what `docker run IMAGE`
// runs) in the background, its output in out; the test's end stops it.
func (c container) start(t *testing.T, cfg imageConfig, out *bytes.Buffer) *exec.Cmd {
	t.Helper()
	w := c.cmd(append(cfg.Entrypoint, cfg.Cmd...)...)
	w.Stdout, w.Stderr = out, out
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // whatever happened, no worker outlives the test
		if pid := findWorkerNow(w.Process.Pid); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		w.Process.Kill()
		w.Wait()
	})
	return w
}

// findWorker returns the pid of the `aserpc worker` process that `buildah
// run` (pid root) started (through buildah-chroot-runtime and
// buildah-chroot-exec), waiting up to 10 s for it.
func findWorker(t *testing.T, root int) int {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if pid := findWorkerNow(root); pid > 0 {
			return pid
		}
	}
	t.Fatalf("no aserpc worker process under pid %d", root)
	return 0
}

// findWorkerNow is findWorker without waiting: 0 when there is none.
func findWorkerNow(root int) int {
	parent := map[int]int{}
	var match []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 1 {
			parent[pid], _ = strconv.Atoi(f[1])
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if argv := strings.Split(string(cmd), "\x00"); len(argv) > 1 && filepath.Base(argv[0]) == "aserpc" && argv[1] == "worker" {
			match = append(match, pid)
		}
	}
	for _, pid := range match {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == root {
				return pid
			}
		}
	}
	return 0
}

// chgnetImage builds docker/chgnet on the base image just built (torch from
// PyPI: the CPU index cannot be reached here) and runs its default command
// against the broker: a client on the host gets the energy that CHGNet
// computes in-process inside the same image, with the weights the chgnet
// wheel ships (no download at run time).
func chgnetImage(t *testing.T, repo, base, front, back, py string) {
	image := "localhost/aserpc-chgnet:test"
	start := time.Now()
	run(t, "buildah", "bud", "--quiet", "--isolation", "chroot", "--network", "host", "--format", "docker",
		"--build-arg", "BASE="+base, "--build-arg", "TORCH_INDEX=",
		"-f", filepath.Join(repo, "docker", "chgnet", "Dockerfile"), "-t", image, repo)
	t.Logf("built %s in %v", image, time.Since(start).Round(time.Second))
	defer exec.Command("buildah", "rmi", "-f", image).Run()
	archive := filepath.Join(t.TempDir(), "chgnet.tar")
	run(t, "buildah", "push", "--quiet", image, "oci-archive:"+archive)
	if fi, err := os.Stat(archive); err == nil {
		t.Logf("%s: %.2f GB as an OCI archive (compressed layers)", image, float64(fi.Size())/1e9)
	}
	os.Remove(archive)
	cfg := inspect(t, image)
	if cfg.User != "aserpc" || strings.Join(cfg.Entrypoint, " ") != "aserpc worker" || cfg.Healthcheck == nil {
		t.Errorf("chgnet image config %+v: the base's user, entrypoint and health check must carry over", cfg)
	}
	c := newContainer(t, image, front, back)
	var wout bytes.Buffer
	started := time.Now()
	c.start(t, cfg, &wout)
	const si = `from ase.build import bulk
a = bulk("Si", "diamond", a=5.43) * (2, 2, 2)
a.rattle(0.02, seed=1)
`
	remote := exec.Command(py, "-c", si+`import sys, time
from aserpc import RemoteCalculator
end = time.time() + 300
while True:
    try:
        a.calc = RemoteCalculator("CHGNet", broker=sys.argv[1])
        print(repr(float(a.get_potential_energy())))
        break
    except Exception:
        if time.time() > end:
            raise
        time.sleep(1)
`, front)
	remote.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(repo, "clientpy", "src"))
	var stderr bytes.Buffer
	remote.Stderr = &stderr // (the client warns while the worker is not there yet)
	out, err := remote.Output()
	if err != nil {
		t.Fatalf("client: %v\n%s%s\nworker:\n%s", err, out, stderr.String(), wout.String())
	}
	t.Logf("container start -> first CHGNet result: %v", time.Since(started).Round(100*time.Millisecond))
	local, err := c.cmd("python", "-c", si+`from chgnet.model.dynamics import CHGNetCalculator
a.calc = CHGNetCalculator(use_device="cpu")
print(repr(float(a.get_potential_energy())))  # CHGNet's float32, as the worker sends it
`).Output()
	if err != nil {
		t.Fatalf("in-process CHGNet in the image: %v", err)
	}
	got, want := strings.TrimSpace(string(out)), lastLine(string(local))
	if got != want {
		t.Errorf("CHGNet through the image's worker: %s, in-process in the same image: %s", got, want)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
