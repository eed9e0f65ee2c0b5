package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// treeHash names a venv after the content of a local package, so that a
// changed package builds a new venv.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, ".egg-info") || strings.Contains(p, "__pycache__") || strings.Contains(p, "/build/") {
			return err
		}
		b, err := os.ReadFile(p)
		h.Write([]byte(p[len(dir):] + "\x00"))
		h.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))[:8]
}

// regexpLine reports whether a line of out matches re.
func regexpLine(out, re string) bool {
	return regexp.MustCompile("(?m)" + re).MatchString(out)
}

// runPy runs python with args in the cluster's environment and returns
// its stdout, failing the test on a non-zero exit.
func runPy(t *testing.T, c *cluster, python string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Dir = c.dir
	cmd.Env = c.env
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v\n%s", python, strings.Join(args, " "), err, stderr)
	}
	return out
}

// TestCLI_WorkerErrors: configuration errors exit 1 with a clear message,
// before any broker is needed.
func TestCLI_WorkerErrors(t *testing.T) {
	py := debian(t)
	c := newCluster(t)
	cases := []struct {
		name string
		argv []string
		want []string // substrings of stderr
	}{
		{"ArgsNotJSON", []string{"LJ", "--args", "[1,"}, []string{"Invalid JSON in --args"}},
		{"ArgsNotArray", []string{"LJ", "--args", `{"a": 1}`}, []string{"--args must be a JSON array"}},
		{"KwargsNotJSON", []string{"LJ", "--kwargs", "{x}"}, []string{"Invalid JSON in --kwargs"}},
		{"KwargsNotObject", []string{"LJ", "--kwargs", "[1]"}, []string{"--kwargs must be a JSON object"}},
		{"UnknownName", []string{"x"}, []string{"Calculator 'x' not found. Available: [", "'EMT'", "'EPLJ'", "'LJ'"}},
		{"ImportError", []string{"no_such.module:factory"}, []string{"ModuleNotFoundError", "no_such", "Traceback"}},
		{"MissingAttribute", []string{"e2epkg.calcs:nothing"}, []string{"AttributeError", "nothing"}},
		{"FactoryRaises", []string{"e2epkg.calcs:broken_factory"}, []string{"RuntimeError", "factory exploded: no model file", "Traceback", "calcs.py"}},
		{"BadRegistry", []string{"x", "--registry", "nocolon"}, []string{"Invalid registry path 'nocolon'"}},
	}
	for _, k := range cases {
		t.Run(k.name, func(t *testing.T) {
			argv := append([]string{"worker"}, k.argv...)
			argv = append(argv, "--python", py, "--broker", c.back)
			out, errOut, code := c.run(argv...)
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
			}
			for _, w := range k.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

// TestCLI_List: `aserpc list` from entry points, a registry and a broker.
func TestCLI_List(t *testing.T) {
	py := debian(t)
	c := newCluster(t)

	t.Run("EntryPoints", func(t *testing.T) {
		out, errOut, code := c.run("list", "--python", py)
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		if strings.Contains(errOut, "INFO") {
			t.Errorf("list printed INFO lines:\n%s", errOut)
		}
		for _, re := range []string{
			`^Name\s+Factory\s+Source$`,
			`^EMT\s+ase.calculators.emt:EMT\s+builtin$`,
			`^EPLJ\s+ase.calculators.lj:LennardJones\s+entry point$`,
			`^LJ\s+ase.calculators.lj:LennardJones\s+builtin$`,
			`^broken\s+\(warning: RuntimeError: provider exploded\)\s+entry point$`,
		} {
			if !regexpLine(out, re) {
				t.Errorf("no line matching %s:\n%s", re, out)
			}
		}
		out, _, code = c.run("list", "--python", py, "--json")
		var rows []map[string]string
		if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 0 {
			t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
		}
		got := map[string]map[string]string{}
		for _, r := range rows {
			got[r["name"]] = r
		}
		if got["EPLJ"]["factory"] != "ase.calculators.lj:LennardJones" || got["broken"]["warning"] == "" || got["LJ"]["source"] != "builtin" {
			t.Fatalf("--json rows %v", rows)
		}
	})

	t.Run("Registry", func(t *testing.T) {
		out, errOut, code := c.run("list", "--python", py, "--registry", filepath.Join(testdata, "reg_file.py")+":CALCS")
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		for _, re := range []string{
			`^FileLJ\s+functools.partial\(ase.calculators.lj.LennardJones\)\s+registry$`,
			`^PlainLJ\s+ase.calculators.lj.LennardJones\s+registry$`,
		} {
			if !regexpLine(out, re) {
				t.Errorf("no line matching %s:\n%s", re, out)
			}
		}
		if strings.Contains(out, "EPLJ") {
			t.Errorf("--registry also listed entry points:\n%s", out)
		}
	})

	t.Run("Broker", func(t *testing.T) {
		_, errOut, code := c.run("list", "--broker", c.front, "--timeout", "300ms")
		if code != 1 || !strings.Contains(errOut, "Timeout - broker not responding") {
			t.Fatalf("no broker: exit %d, want 1:\n%s", code, errOut)
		}
		c.startBroker("5")
		if out, _, _ := c.run("list", "--broker", c.front); !strings.Contains(out, "No calculators available") {
			t.Fatalf("empty broker:\n%s", out)
		}
		w1 := c.startWorker("LJ1", py, "LJ")
		w2 := c.startWorker("LJ2", py, "LJ")
		w3 := c.startWorker("EMT", py, "EMT")
		c.waitWorkers("LJ", 2, w1, w2)
		c.waitWorkers("EMT", 1, w3)
		out, errOut, code := c.run("list", "--broker", c.front)
		if code != 0 || !regexpLine(out, `^Name\s+Workers$`) || !regexpLine(out, `^LJ\s+2$`) || !regexpLine(out, `^EMT\s+1$`) {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		out, _, _ = c.run("list", "--broker", c.front, "--json")
		var m map[string]int
		if err := json.Unmarshal([]byte(out), &m); err != nil || m["LJ"] != 2 || m["EMT"] != 1 {
			t.Fatalf("--json: %v %s", err, out)
		}
	})
}

// TestCLI_StatusWatch: `aserpc status --watch` under a real terminal
// (tmux, 80×24): it shows the calculators and a row per worker, redraws
// as requests are served, and quits on q and on Ctrl-C.
func TestCLI_StatusWatch(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("needs tmux")
	}
	py := debian(t)
	c := newCluster(t)
	c.startBroker("5")
	w := c.startWorker("LJ", py, "LJ")
	c.waitWorkers("LJ", 1, w)
	sock := filepath.Join(c.dir, "tmux.sock") // a tmux server of this test's own
	tm := func(args ...string) string {
		out, _ := exec.Command(tmux, append([]string{"-S", sock}, args...)...).CombinedOutput()
		return string(out)
	}
	t.Cleanup(func() { tm("kill-server") })
	screen := func() string { return tm("capture-pane", "-p", "-t", "w") }
	waitFor := func(what string, ok func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			s := screen()
			if ok(s) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("screen never showed %s:\n%s", what, s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	jobs := 0
	for _, quit := range []string{"q", "C-c"} {
		tm("new-session", "-d", "-s", "w", "-x", "80", "-y", "24",
			aserpcBin+" status --watch --interval 200ms --broker "+c.front)
		s := waitFor("the LJ worker", func(s string) bool {
			return regexpLine(s, `^LJ\s+1\s+1\s+0\s+0$`) && regexpLine(s, fmt.Sprintf(`^LJ\s+\d+\s+\S+\s+\S+\s+idle\s+%d\s`, jobs))
		})
		for _, l := range strings.Split(s, "\n") {
			if len([]rune(l)) > 80 {
				t.Errorf("line wider than 80 columns: %q", l)
			}
		}
		if !strings.Contains(s, "(q to quit)") || !regexpLine(s, `^Worker\s+PID\s+Host\s+CPUs\s+State\s+Jobs\s+Up\s+Last job\s+RSS\s+GPU$`) {
			t.Errorf("no header:\n%s", s)
		}
		want := local(t, py, "ase.calculators.lj:LennardJones", nil, nil, "H2O")["H2O"]
		c.compute("LJ", want)
		c.compute("LJ", want)
		jobs += 2
		s = waitFor("two more jobs done", func(s string) bool {
			return regexpLine(s, fmt.Sprintf(`^LJ\s+\d+\s+\S+\s+\S+\s+idle\s+%d\s`, jobs))
		})
		if quit == "q" {
			t.Logf("status --watch, 80×24:\n%s", strings.TrimRight(s, "\n"))
		}
		tm("send-keys", "-t", "w", quit)
		deadline := time.Now().Add(5 * time.Second)
		for strings.Contains(tm("list-sessions"), "w:") {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not quit the view:\n%s", quit, screen())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
