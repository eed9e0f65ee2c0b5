package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/testenv"
)

// TestDemo runs the README's main job, scripts/demo.sh, as a user does:
// broker + manager (scale from zero) + a RemoteCalculator MD run checked
// against in-process MD, then a clean stop that leaves no process and no
// socket file behind (the script itself fails otherwise).
func TestDemo(t *testing.T) {
	py := debian(t)
	testenv.RequireModules(t, py, "zmq", "msgpack")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "demo.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "ASERPC_BIN="+aserpcBin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Manager: connected (spawnable: LJ-Ar)",
		"(worker spawned from zero)",
		"trajectory bit-identical to in-process MD",
		"== clean: no aserpc process",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
