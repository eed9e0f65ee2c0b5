package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/wire"
)

var (
	aserpcBin string // our binary, built once by TestMain
	testdata  string // testdata/, absolute
)

func TestMain(m *testing.M) {
	var dir string
	aserpcBin, dir = proctest.MustBuildAserpc("aserpc-e2e-bin-")
	var err error
	if testdata, err = filepath.Abs("testdata"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// debian returns Debian's python3 with ase and numpy, or skips.
func debian(t *testing.T) string {
	t.Helper()
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy")
	return py
}

// proc is a started process; it is killed when its test ends.
type proc = proctest.Proc

// cluster is one test's world: a short temp directory (unix socket paths
// must stay under 107 bytes), our broker's endpoints in it, a clean
// environment and the processes started so far.
type cluster struct {
	t           *testing.T
	dir         string
	front, back string
	env         []string
	procs       *proctest.Group
	// curve: compute authenticates with these keys (nil: plaintext).
	curve *auth.Peer
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "aserpc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{t: t, dir: dir}
	ipc := filepath.Join(dir, "ipc")
	c.front = "ipc://" + filepath.Join(ipc, "f.ipc")
	c.back = "ipc://" + filepath.Join(ipc, "b.ipc")
	// No ASERPC_* or PYTHON* from the caller; default addresses inside the
	// test's directory so nothing can reach another broker; the test's
	// calculator packages and entry-point provider on PYTHONPATH.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ASERPC_") && !strings.HasPrefix(kv, "PYTHON") && !strings.HasPrefix(kv, "VIRTUAL_ENV=") {
			c.env = append(c.env, kv)
		}
	}
	c.env = append(c.env, "ASERPC_IPC_DIR="+ipc, "PYTHONUNBUFFERED=1",
		"PYTHONPATH="+filepath.Join(testdata, "eps")+":"+testdata)
	c.procs = proctest.NewGroup(t)
	return c
}

// start runs argv in its own process group.
func (c *cluster) start(name string, argv ...string) *proc {
	c.t.Helper()
	return c.procs.Start(name, c.env, c.dir, argv...)
}

// startBroker starts our broker with a worker timeout of timeout seconds
// and waits until it answers LIST.
func (c *cluster) startBroker(timeout string) *proc {
	c.t.Helper()
	p := c.start("broker", aserpcBin, "broker", "--frontend", c.front, "--backend", c.back,
		"--timeout", timeout, "--queue-timeout", "10", "--log-level", "INFO")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.list(); err == nil {
			return p
		}
		if !p.Running() || time.Now().After(deadline) {
			c.t.Fatalf("broker never answered LIST; output:\n%s", p.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startWorker starts `aserpc worker CALC --broker back --heartbeat 0.2`
// from python (Debian's unless --python is in args).
func (c *cluster) startWorker(name, python, calc string, args ...string) *proc {
	c.t.Helper()
	argv := []string{aserpcBin, "worker", calc, "--broker", c.back, "--heartbeat", "0.2", "--python", python, "--log-level", "DEBUG"}
	return c.start(name, append(argv, args...)...)
}

// run runs a short aserpc command and returns its stdout, stderr and exit
// code.
func (c *cluster) run(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, aserpcBin, args...)
	cmd.Dir = c.dir
	cmd.Env = c.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		c.t.Fatalf("aserpc %s: timed out\n%s%s", strings.Join(args, " "), o.String(), e.String())
	}
	if err != nil && cmd.ProcessState == nil {
		c.t.Fatalf("aserpc %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// list is the broker's LIST: calculator → worker count.
func (c *cluster) list() (map[string]int64, error) {
	m, err := proctest.Request(c.front, 500*time.Millisecond, wire.List.Frame())
	if err != nil {
		return nil, err
	}
	v, err := wire.Unmarshal(m[1])
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	if mm, ok := v.(map[string]any); ok {
		for k, n := range mm {
			out[k], _ = n.(int64)
		}
	}
	return out, nil
}

// waitWorkers waits until calc has n workers registered.
func (c *cluster) waitWorkers(calc string, n int64, procs ...*proc) {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		l, _ := c.list()
		if l[calc] == n {
			return
		}
		for _, p := range procs {
			if !p.Running() && n > 0 {
				c.t.Fatalf("%s exited (%d) before registering:\n%s", p.Name, p.ExitCode(), p.Logs())
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s has %d workers, want %d", calc, l[calc], n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// structure is one of testdata/local.py's structures and, when computed
// there, its in-process results, all as little-endian bytes.
type structure struct {
	Numbers, Positions, Cell hexBytes
	PBC                      [3]bool
	Energy, Forces, Stress   hexBytes
	raw                      json.RawMessage
}

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

// local runs testdata/local.py in python: the structures and, with a
// factory, their results computed in-process.
func local(t *testing.T, python, factory string, args []any, kwargs map[string]any, names ...string) map[string]*structure {
	t.Helper()
	spec, _ := json.Marshal(map[string]any{"factory": factory, "args": args, "kwargs": kwargs, "structures": names})
	cmd := exec.Command(python, filepath.Join(testdata, "local.py"), string(spec))
	cmd.Env = append(os.Environ(), "PYTHONPATH="+testdata)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("local.py %s: %v\n%s", spec, err, stderr)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatal(err)
	}
	res := map[string]*structure{}
	for k, v := range raw {
		s := &structure{raw: v}
		if err := json.Unmarshal(v, s); err != nil {
			t.Fatal(err)
		}
		res[k] = s
	}
	return res
}

// compute asks calc for properties of s through the broker, as a Go
// client, and returns the decoded response.
func (c *cluster) compute(calc string, s *structure, props ...string) *wire.CalcResponse {
	c.t.Helper()
	r := c.computeErr(calc, s, props...)
	if cmd, _ := wire.ParseCommand(r.cmd); cmd != wire.Response {
		c.t.Fatalf("%s: broker error %q", calc, r.resp.Error)
	}
	return r.resp
}

type reply struct {
	cmd  []byte
	resp *wire.CalcResponse
}

func (c *cluster) computeErr(calc string, s *structure, props ...string) reply {
	c.t.Helper()
	if props == nil {
		props = []string{"energy", "forces"}
		if s.PBC == [3]bool{true, true, true} {
			props = append(props, "stress")
		}
	}
	pbc := make([]byte, 3)
	for i, b := range s.PBC {
		if b {
			pbc[i] = 1
		}
	}
	payload, err := wire.EncodeRequest(&wire.CalcRequest{Numbers: s.Numbers, Positions: s.Positions, Cell: s.Cell, PBC: pbc, Properties: props})
	if err != nil {
		c.t.Fatal(err)
	}
	m, err := proctest.RequestAs(c.front, c.curve, 30*time.Second, wire.Request.Frame(), []byte(calc), payload)
	if err != nil {
		c.t.Fatalf("%s: no reply: %v", calc, err)
	}
	resp, err := wire.DecodeResponse(m[1])
	if err != nil {
		c.t.Fatalf("%s: bad response: %v", calc, err)
	}
	return reply{m[0], resp}
}

// sameResults checks a successful response against in-process results,
// bit for bit.
func sameResults(t *testing.T, what string, resp *wire.CalcResponse, want *structure) {
	t.Helper()
	if !resp.Success {
		t.Fatalf("%s: error %q (%s)\n%s", what, resp.Error, resp.ErrorType, resp.Traceback)
	}
	e, ok := resp.Results["energy"].(float64)
	if !ok {
		t.Fatalf("%s: energy %T %v", what, resp.Results["energy"], resp.Results["energy"])
	}
	if got := wire.Float64Bytes([]float64{e}); !bytes.Equal(got, want.Energy) {
		t.Errorf("%s: energy %v, in-process %v", what, e, wire.Float64s(want.Energy))
	}
	if got, _ := resp.Results["forces"].([]byte); !bytes.Equal(got, want.Forces) {
		t.Errorf("%s: forces differ from in-process:\n got %v\nwant %v", what, wire.Float64s(got), wire.Float64s(want.Forces))
	}
	if want.Stress != nil {
		if got, _ := resp.Results["stress"].([]byte); !bytes.Equal(got, want.Stress) {
			t.Errorf("%s: stress differs from in-process:\n got %v\nwant %v", what, wire.Float64s(got), wire.Float64s(want.Stress))
		}
	}
}

func finite(b []byte) bool {
	for _, x := range wire.Float64s(b) {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}
