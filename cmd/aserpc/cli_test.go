package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests build the real binary and assert on what a user sees.

var aserpcBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "aserpc-bin-")
	if err != nil {
		panic(err)
	}
	aserpcBin = filepath.Join(dir, "aserpc")
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version=9.9.9-test", "-o", aserpcBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a clean environment whose ipc_dir is a short temp dir.
func env(t *testing.T, extra ...string) (dir string, e []string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ASERPC_") {
			e = append(e, kv)
		}
	}
	e = append(e, "ASERPC_IPC_DIR="+filepath.Join(dir, "ipc"))
	return dir, append(e, extra...)
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, e []string, cwd string, args ...string) result {
	t.Helper()
	cmd := exec.Command(aserpcBin, args...)
	cmd.Env, cmd.Dir = e, cwd
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, o.String(), er.String()}
}

// startBroker starts `aserpc broker` and waits until it answers STATUS.
func startBroker(t *testing.T, e []string, cwd string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(aserpcBin, append([]string{"broker"}, args...)...)
	cmd.Env, cmd.Dir = e, cwd
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r := run(t, e, cwd, "status", "--json", "--timeout", "200ms"); r.code == 0 {
			return cmd, &logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker never answered; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCLI_Version(t *testing.T) {
	r := run(t, nil, "", "--version")
	if r.code != 0 || !strings.Contains(r.stdout, "9.9.9-test") {
		t.Fatalf("%+v", r)
	}
}

func TestCLI_BrokerLifecycle(t *testing.T) {
	dir, e := env(t)
	cmd, logs := startBroker(t, e, dir)

	r := run(t, e, dir, "status", "--json")
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	for _, k := range []string{"workers", "pending_requests", "manager"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status lacks %q: %v", k, st)
		}
	}
	if r := run(t, e, dir, "status"); r.code != 0 || !strings.Contains(r.stdout, "No workers connected") ||
		!strings.Contains(r.stdout, "Manager: not connected") {
		t.Errorf("status table: %+v", r)
	}

	// The socket directory is private.
	fi, err := os.Stat(filepath.Join(dir, "ipc"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("ipc dir: %v %v", fi, err)
	}

	// A second broker on the same sockets refuses, saying who holds them.
	r = run(t, e, dir, "broker")
	if r.code != 1 || !strings.Contains(r.stderr, "in use by a live broker") ||
		!strings.Contains(r.stderr, fmt.Sprint(cmd.Process.Pid)) {
		t.Fatalf("second broker: %+v", r)
	}

	if r := run(t, e, dir, "shutdown", "--workers", "lj"); r.code != 0 || r.stdout != "Shutdown 0 workers for 'lj'\n" {
		t.Errorf("shutdown --workers: %+v", r)
	}
	if r := run(t, e, dir, "shutdown", "--broker-process"); r.code != 1 || !strings.Contains(r.stderr, "--allow-shutdown") {
		t.Errorf("shutdown refused: %+v", r)
	}

	// SIGTERM: prompt, clean exit, socket files gone.
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("broker exit: %v\n%s", err, logs)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("SIGTERM took %v", el)
	}
	if _, err := os.Stat(filepath.Join(dir, "ipc")); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(filepath.Join(dir, "ipc"))
		t.Errorf("ipc dir left behind: %v", entries)
	}
}

func TestCLI_ShutdownBrokerProcess(t *testing.T) {
	dir, e := env(t)
	cmd, _ := startBroker(t, e, dir, "--allow-shutdown")
	if r := run(t, e, dir, "shutdown", "--broker-process"); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("broker still running 3 s after SHUTDOWN")
	}
}

func TestCLI_Errors(t *testing.T) {
	dir, e := env(t)
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"broker", "--log-level", "LOUD"}, nil, `invalid --log-level "LOUD"`},
		{[]string{"broker", "--timeout", "-1"}, nil, "--timeout must be positive"},
		{[]string{"status", "--timeout", "300ms"}, nil, "Timeout - broker not responding"},
		{[]string{"shutdown"}, nil, "Specify --workers CALC_NAME, --all or --broker-process"},
		{[]string{"config"}, []string{"ASERPC_WORKER_TIMEOUT=soon"}, `worker_timeout = "soon" (from env ASERPC_WORKER_TIMEOUT): want a number`},
		{[]string{"broker", "--frontend", "ipc:///" + strings.Repeat("x", 120) + "/f.ipc"}, nil, "over the 107-byte Unix limit"},
	}
	for _, c := range cases {
		r := run(t, append(append([]string{}, e...), c.env...), dir, c.args...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("aserpc %s: code %d, stderr %q; want %q", strings.Join(c.args, " "), r.code, r.stderr, c.want)
		}
	}
}

func TestCLI_Config(t *testing.T) {
	dir, e := env(t, "ASERPC_HEARTBEAT_INTERVAL=0.5")
	os.WriteFile(filepath.Join(dir, "pyproject.toml"), []byte("[tool.aserpc]\nidle_timeout = 12\n"), 0o644)
	r := run(t, e, dir, "config", "--json")
	var got map[string]map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v: %+v", err, r)
	}
	if got["heartbeat_interval"]["value"] != "0.5" || !strings.HasPrefix(got["heartbeat_interval"]["source"], "env") {
		t.Errorf("heartbeat_interval %v", got["heartbeat_interval"])
	}
	if got["idle_timeout"]["value"] != "12" || !strings.Contains(got["idle_timeout"]["source"], "pyproject.toml") {
		t.Errorf("idle_timeout %v", got["idle_timeout"])
	}
	if got["worker_timeout"]["source"] != "default" {
		t.Errorf("worker_timeout %v", got["worker_timeout"])
	}
}

// TestCLI_HelpDefaults: each flag's help shows one default, and a default
// that comes from the configuration shows the value it has here (the ipc
// address under ASERPC_IPC_DIR, not the key's name alone).
func TestCLI_HelpDefaults(t *testing.T) {
	dir, e := env(t, "ASERPC_HEARTBEAT_INTERVAL=7")
	for _, cmd := range []string{"broker", "worker", "manager", "list", "status", "shutdown"} {
		r := run(t, e, dir, cmd, "--help")
		if r.code != 0 {
			t.Fatalf("aserpc %s --help: exit %d\n%s", cmd, r.code, r.stderr)
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			if strings.Count(line, "(default:") > 1 {
				t.Errorf("aserpc %s --help: two defaults in %q", cmd, strings.TrimSpace(line))
			}
		}
	}
	r := run(t, e, dir, "worker", "--help")
	ipc := filepath.Join(dir, "ipc")
	for _, want := range []string{
		"(default: ipc://" + ipc + "/backend.ipc, config ipc_backend)",
		"(default: 7, config heartbeat_interval)", // from the environment
		"(default: 0, config idle_timeout; a manager passes its own)",
		"(default: 1000, config worker_spin_us; 0 = never)",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("aserpc worker --help lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestCLI_UnknownCommand: a mistyped command gets exit 2, the nearest
// command and the list of commands, not urfave/cli's "No help topic".
func TestCLI_UnknownCommand(t *testing.T) {
	dir, e := env(t)
	r := run(t, e, dir, "statsu")
	if r.code != 2 {
		t.Errorf("exit %d, want 2", r.code)
	}
	for _, want := range []string{`unknown command "statsu"`, `did you mean "status"?`, "commands: broker, config, keys, list, manager, shutdown, status, worker"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if r := run(t, e, dir, "frobnicate"); r.code != 2 || strings.Contains(r.stderr, "did you mean") {
		t.Errorf("aserpc frobnicate: exit %d, stderr %q (no suggestion expected)", r.code, r.stderr)
	}
	if r := run(t, e, dir); r.code != 0 || !strings.Contains(r.stdout, "COMMANDS:") {
		t.Errorf("aserpc with no command: exit %d, want the help:\n%s", r.code, r.stdout)
	}
}

// TestCLI_TimeoutHint: with no --broker and the default socket directory
// (which follows the directory a command runs in), a silent broker gets a
// hint after 0.1.3's message; with --broker or ASERPC_IPC_DIR, none.
func TestCLI_TimeoutHint(t *testing.T) {
	dir, e := env(t)
	var noIPCDir []string
	for _, kv := range e {
		if !strings.HasPrefix(kv, "ASERPC_IPC_DIR=") {
			noIPCDir = append(noIPCDir, kv)
		}
	}
	r := run(t, noIPCDir, dir, "status", "--timeout", "300ms")
	for _, want := range []string{"Timeout - broker not responding at ipc://" + filepath.Join(dir, ".aserpc", "frontend.ipc"),
		"No broker socket at " + filepath.Join(dir, ".aserpc", "frontend.ipc") + ": the file does not exist",
		"No --broker given, so this looked in " + filepath.Join(dir, ".aserpc"), "set ASERPC_IPC_DIR"} {
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("status from %s: exit %d, stderr lacks %q:\n%s", dir, r.code, want, r.stderr)
		}
	}
	for _, args := range [][]string{{"status", "--timeout", "300ms", "--broker", "ipc://" + filepath.Join(dir, "x.ipc")}} {
		r := run(t, e, dir, args...)
		if strings.Contains(r.stderr, "No --broker given") {
			t.Errorf("%v: a hint where the address was chosen:\n%s", args, r.stderr)
		}
		if !strings.Contains(r.stderr, "No broker socket at "+filepath.Join(dir, "x.ipc")+": the file does not exist") ||
			!strings.Contains(r.stderr, "given with --broker") {
			t.Errorf("%v: no word of the missing socket file:\n%s", args, r.stderr)
		}
	}
	if r := run(t, e, dir, "shutdown", "--all", "--timeout", "300ms"); strings.Contains(r.stderr, "No --broker given") ||
		!strings.Contains(r.stderr, "from env ASERPC_IPC_DIR") {
		t.Errorf("shutdown with ASERPC_IPC_DIR set: the default directory's hint, or no word of where the address came from:\n%s", r.stderr)
	}
}
