package spawn

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestChild_Tail(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.log")
	header := "# header\n"
	var b strings.Builder
	b.WriteString(header)
	for i := 0; i < 2000; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	b.WriteString("\n   \n" + strings.Repeat("y", 400) + "\n")
	os.WriteFile(p, []byte(b.String()), 0o644)
	c := &child{key: "LJ", pid: 1, logPath: p, logStart: int64(len(header))}
	got := c.tail(3)
	if len(got) != 3 || got[0] != "line 1998" || got[1] != "line 1999" || len(got[2]) != 300+len("…") {
		t.Errorf("tail = %q", got)
	}
	// Only the header: nothing of the child's own.
	os.WriteFile(p, []byte(header), 0o644)
	if got := c.tail(3); got != nil {
		t.Errorf("tail of a silent child = %q", got)
	}
	if msg := c.failure("exit code 1"); !strings.Contains(msg, "it wrote nothing") || !strings.Contains(msg, p) {
		t.Errorf("failure = %q", msg)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "myworker")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "plain"), []byte(""), 0o644)
	env := []string{"PATH=/nonexistent:" + dir}
	if p, err := lookPath("myworker", env, ""); err != nil || p != exe {
		t.Errorf("lookPath in the child's PATH = %q, %v", p, err)
	}
	if _, err := lookPath("myworker", []string{"PATH=/usr/bin"}, ""); err == nil {
		t.Error("found outside the child's PATH")
	}
	if _, err := lookPath("./myworker", nil, dir); err != nil {
		t.Errorf("relative to cwd: %v", err)
	}
	for _, bad := range []string{filepath.Join(dir, "plain"), dir, "/nonexistent/x"} {
		if _, err := lookPath(bad, env, ""); err == nil {
			t.Errorf("lookPath(%q) succeeded", bad)
		}
	}
}

func TestPruneLogs(t *testing.T) {
	dir := t.TempDir()
	var lj []string
	for i := 0; i < 5; i++ {
		n := fmt.Sprintf("LJ-20260101-12000%d.000-0.log", i)
		lj = append(lj, n)
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	other := "LJ-fast-20260101-120000.000-0.log"
	os.WriteFile(filepath.Join(dir, other), nil, 0o644)
	pruneLogs(dir, "LJ", 2)
	var left []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if want := []string{lj[3], lj[4], other}; !reflect.DeepEqual(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
}

func TestFileSafe(t *testing.T) {
	if got := fileSafe("../mace mp/β"); got != ".._mace_mp___" {
		t.Errorf("fileSafe = %q", got)
	}
}

// TestChild_IdleTimeoutInEnvironment: a spawned worker gets its config's
// idle timeout through ASERPC_IDLE_TIMEOUT even when the command has no
// --idle-timeout {idle_timeout} (a hand-started worker's default is to never
// exit idle, so scale-to-zero depends on it); the config's own env wins.
func TestChild_IdleTimeoutInEnvironment(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{{nil, "idle=42.5"}, {map[string]string{"ASERPC_IDLE_TIMEOUT": "7"}, "idle=7"}} {
		cfg := &SpawnConfig{Key: "x", Name: "x", Command: []string{"sh", "-c", "echo idle=$ASERPC_IDLE_TIMEOUT"},
			Env: tc.env, IdleTimeout: 42.5}
		exits := make(chan exit, 1)
		c, err := start(cfg, Vars{Name: "x", IdleTimeout: cfg.IdleTimeout}, t.TempDir(), exits)
		if err != nil {
			t.Fatal(err)
		}
		if e := <-exits; e.failed() {
			t.Fatalf("child failed: %s", e.describe())
		}
		if got := c.tail(1); len(got) != 1 || got[0] != tc.want {
			t.Errorf("env %v: child printed %q, want %q", tc.env, got, tc.want)
		}
	}
}
