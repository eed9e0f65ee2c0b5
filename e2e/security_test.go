package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/internal/proctest"
)

// TestSecurity_Curve runs the how-to of docs/security.md with
// real processes on tcp://127.0.0.1: keys from `aserpc keys generate`
// (which pyzmq loads), a broker with an authorized-keys file, an LJ worker
// with a worker key and a client with a client key getting the in-process
// result; and each refusal next to its accepted counterpart.
func TestSecurity_Curve(t *testing.T) {
	py := debian(t)
	c := newCluster(t)
	ep := proctest.FreeTCP(t, 2)
	c.front, c.back = ep[0], ep[1]
	keys := filepath.Join(c.dir, "keys")
	names := []string{"broker", "alice", "gpu1", "ops", "stranger"}
	out, errOut, code := c.run(append([]string{"keys", "generate", "--dir", keys}, names...)...)
	if code != 0 {
		t.Fatalf("keys generate: %d\n%s%s", code, out, errOut)
	}
	public := map[string]string{}
	for _, n := range names {
		o, e, code := c.run("keys", "show", filepath.Join(keys, n+".key"))
		if code != 0 {
			t.Fatalf("keys show %s: %s", n, e)
		}
		public[n] = strings.TrimSpace(o)
	}

	t.Run("KeysLoadInPyzmq", func(t *testing.T) {
		script := `import sys, zmq, zmq.auth
for n in sys.argv[2:]:
    pub, sec = zmq.auth.load_certificate(f"{sys.argv[1]}/{n}.key_secret")
    pub2, none = zmq.auth.load_certificate(f"{sys.argv[1]}/{n}.key")
    assert pub == pub2 and none is None and zmq.curve_public(sec) == pub, n
    print(n, pub.decode())
`
		got := runPy(t, c, py, append([]string{"-c", script, keys}, names...)...)
		for _, n := range names {
			if !strings.Contains(string(got), n+" "+public[n]+"\n") {
				t.Errorf("pyzmq read %s as:\n%s\nwant key %s", n, got, public[n])
			}
		}
	})

	authorized := filepath.Join(c.dir, "authorized_keys")
	os.WriteFile(authorized, []byte("# role key-or-file name\nclient keys/alice.key\nworker keys/gpu1.key\nadmin "+public["ops"]+" ops\n"), 0o644)
	broker := c.start("broker", aserpcBin, "broker", "--frontend", c.front, "--backend", c.back,
		"--curve-secret", filepath.Join(keys, "broker.key_secret"), "--authorized-keys", authorized, "--log-level", "DEBUG")
	as := func(name string) []string {
		return []string{"--broker", c.front, "--curve-server-key", filepath.Join(keys, "broker.key"), "--curve-secret", filepath.Join(keys, name+".key_secret")}
	}
	status := func(args ...string) (string, string, int) {
		return c.run(append([]string{"status", "--json", "--timeout", "1500ms"}, args...)...)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, code := status(as("ops")...); code == 0 {
			break
		}
		if !broker.Running() || time.Now().After(deadline) {
			t.Fatalf("broker never answered an admin's STATUS:\n%s", broker.Logs())
		}
	}
	// (slog quotes the key when it holds Z85 punctuation.)
	if !broker.Logged(`msg="CURVE keys loaded" public_key=`, 5*time.Second) || !broker.Logged(public["broker"], time.Second) {
		t.Errorf("broker did not log its key:\n%s", broker.Logs())
	}

	// A worker with a client key cannot register; the worker key can.
	bad := c.startWorker("LJbad", py, "LJ", "--name", "LJbad", "--curve-server-key", filepath.Join(keys, "broker.key"),
		"--curve-secret", filepath.Join(keys, "alice.key_secret"))
	good := c.startWorker("LJ", py, "LJ", "--curve-server-key", filepath.Join(keys, "broker.key"),
		"--curve-secret", filepath.Join(keys, "gpu1.key_secret"))
	listAs := func(name string) string {
		o, e, code := c.run(append([]string{"list", "--json", "--timeout", "1500ms"}, as(name)...)...)
		if code != 0 {
			t.Fatalf("list as %s: %d %s", name, code, e)
		}
		return o
	}
	deadline = time.Now().Add(60 * time.Second)
	for !strings.Contains(listAs("alice"), `"LJ": 1`) {
		if !good.Running() || time.Now().After(deadline) {
			t.Fatalf("the worker-key worker never registered:\n%s\nbroker:\n%s", good.Logs(), broker.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Run("ClientKeyCannotRegisterWorker", func(t *testing.T) {
		if !broker.Logged("connection refused by CURVE authentication", 10*time.Second) {
			t.Errorf("broker never refused the client-key worker:\n%s", broker.Logs())
		}
		if l := listAs("ops"); strings.Contains(l, "LJbad") {
			t.Errorf("a client key registered a worker: %s", l)
		}
		if !bad.Running() {
			t.Errorf("the refused worker exited: it should keep trying, like any worker whose broker is away:\n%s", bad.Logs())
		}
	})

	t.Run("ClientGetsRealResult", func(t *testing.T) {
		want := local(t, py, "ase.calculators.lj:LennardJones", nil, nil, "H2O")["H2O"]
		var err error
		if c.curve, err = auth.LoadPeer(filepath.Join(keys, "broker.key"), filepath.Join(keys, "alice.key_secret")); err != nil {
			t.Fatal(err)
		}
		sameResults(t, "LJ H2O over CURVE", c.compute("LJ", want), want)
	})

	t.Run("UnknownKeyRejected", func(t *testing.T) {
		// stranger has a valid certificate and the broker's key, but is not listed.
		if o, e, code := status(as("stranger")...); code == 0 || !strings.Contains(e, "Timeout") {
			t.Errorf("status with an unknown key: exit %d\n%s%s", code, o, e)
		}
		if _, e, code := status(as("alice")...); code != 0 {
			t.Errorf("status with a client key: exit %d %s", code, e)
		}
	})

	t.Run("PlaintextRejected", func(t *testing.T) {
		if o, e, code := status("--broker", c.front); code == 0 || !strings.Contains(e, "Timeout") {
			t.Errorf("plaintext status: exit %d\n%s%s", code, o, e)
		}
		// The server key alone is no key: CURVE needs the client's pair.
		if _, e, code := status("--broker", c.front, "--curve-server-key", public["broker"]); code != 1 || !strings.Contains(e, "no secret certificate") {
			t.Errorf("status with the server key only: exit %d %s", code, e)
		}
	})

	t.Run("AdminOperationNeedsAdminKey", func(t *testing.T) {
		o, e, code := c.run(append([]string{"shutdown", "--workers", "LJ"}, as("alice")...)...)
		if code != 1 || !strings.Contains(e, "Permission denied: WORKER_SHUTDOWN needs an admin key") || !strings.Contains(e, `client "alice"`) {
			t.Errorf("shutdown --workers as a client: exit %d\n%s%s", code, o, e)
		}
		if !good.Running() {
			t.Fatal("the worker stopped on a client's request")
		}
		o, e, code = c.run(append([]string{"shutdown", "--workers", "LJ"}, as("ops")...)...)
		if code != 0 || !strings.Contains(o, "Shutdown 1 workers for 'LJ'") {
			t.Fatalf("shutdown --workers as admin: exit %d\n%s%s", code, o, e)
		}
		if !good.Exited(20 * time.Second) {
			t.Errorf("the worker did not stop:\n%s", good.Logs())
		}
	})
}
