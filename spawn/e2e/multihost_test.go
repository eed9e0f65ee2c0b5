package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aserpc/aserpc/auth"
)

// testNet is a network of hosts made of Linux network namespaces on a
// bridge: each host has its own interfaces, addresses, ports and host
// name (unshare --uts), as machines on a cluster network have; the test
// itself (the user's script) sits on the bridge in the root namespace.
type testNet struct {
	t      *testing.T
	id     int    // makes the names of this run's namespaces and links unique
	subnet string // 10.213.N: this run's /24
	hosts  []string
	boots  string // a directory of HOST.boot files: each host's kernel boot id
}

// newTestNet makes the hosts, or skips where namespaces cannot be made.
func newTestNet(t *testing.T, hosts ...string) *testNet {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("network namespaces need root (ip netns add)")
	}
	for _, b := range []string{"ip", "unshare"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("no %s (iproute2, util-linux)", b)
		}
	}
	id := os.Getpid() % 100000
	n := &testNet{t: t, id: id, subnet: fmt.Sprintf("10.213.%d", id%250)}
	probe := fmt.Sprintf("asr%dprobe", id)
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace here (%v: %s)", err, strings.TrimSpace(string(out)))
	}
	exec.Command("ip", "netns", "del", probe).Run()

	// Each host a boot id of its own, as separate machines have (a client
	// takes a worker's unix socket only on the worker's own host).
	n.boots = t.TempDir()
	for i, h := range hosts {
		id := fmt.Sprintf("0000%04d-0000-4000-8000-%012d\n", n.id%10000, i+1)
		if err := os.WriteFile(filepath.Join(n.boots, h+".boot"), []byte(id), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	br := n.bridge()
	t.Cleanup(func() {
		for _, h := range n.hosts {
			exec.Command("ip", "netns", "del", n.ns(h)).Run()
		}
		exec.Command("ip", "link", "del", br).Run()
	})
	n.ip("link", "add", br, "type", "bridge")
	n.ip("addr", "add", n.subnet+".254/24", "dev", br)
	n.ip("link", "set", br, "up")
	for i, h := range hosts {
		ns, veth := n.ns(h), fmt.Sprintf("asr%dv%d", id, i)
		n.hosts = append(n.hosts, h)
		n.ip("netns", "add", ns)
		n.ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		n.ip("link", "set", veth, "master", br, "up")
		n.ip("-n", ns, "addr", "add", n.addr(h)+"/24", "dev", "eth0")
		n.ip("-n", ns, "link", "set", "eth0", "up")
		n.ip("-n", ns, "link", "set", "lo", "up")
	}
	return n
}

func (n *testNet) bridge() string        { return fmt.Sprintf("asr%db", n.id) }
func (n *testNet) ns(host string) string { return fmt.Sprintf("aserpc%d-%s", n.id, host) }

// addr is host's address on the test network.
func (n *testNet) addr(host string) string {
	for i, h := range n.hosts {
		if h == host {
			return fmt.Sprintf("%s.%d", n.subnet, i+1)
		}
	}
	n.t.Fatalf("no host %s", host)
	return ""
}

func (n *testNet) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// on is argv run on host: in its network namespace, under its host name,
// with its kernel boot id. host may hold a {placeholder} the manager
// renders. Every program involved execs the next, so the process is the
// one that was started.
func (n *testNet) on(host string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", n.ns(host), "unshare", "--uts", "--mount",
		"sh", "-c", `hostname "$0" && mount --bind "` + n.boots + `/$0.boot" /proc/sys/kernel/random/boot_id && exec "$@"`,
		host}, argv...)
}

// setLink cuts (false) or restores host's link to the network.
func (n *testNet) setLink(host string, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	n.ip("-n", n.ns(host), "link", "set", "eth0", state)
}

// whereCalcs: "where" answers, as its energy, 10 + N on host nodeN (-1
// elsewhere), after delay seconds.
const whereCalcs = `
import socket, time
from ase.calculators.calculator import Calculator, all_changes

class Where(Calculator):
    implemented_properties = ["energy"]
    def __init__(self, delay=0.3):
        super().__init__()
        self.delay = delay
    def check_state(self, atoms, tol=1e-15):
        return ["positions"]  # compute every request: no answer from ASE's cache
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self.delay)
        host = socket.gethostname()
        self.results["energy"] = 10.0 + int(host[4:]) if host.startswith("node") else -1.0

CALCS = {"where": Where}
`

// TestMultiHost (issue 15): a broker on host "login" and workers on hosts
// node0 and node1, over tcp with CURVE on a network of namespaces: the
// workers register and serve, a cut link and a broker restart lose no
// request, and a manager on login that dials the broker over loopback
// hands its workers on the nodes the address they can reach (--advertise).
func TestMultiHost(t *testing.T) {
	n := newTestNet(t, "login", "node0", "node1")
	login := n.addr("login")
	var keys, authorized string
	brokerArgv := func(c *cluster) []string {
		// Inside login's namespace * is login's own interfaces only.
		return n.on("login", bin, "broker", "--frontend", "tcp://*:5555", "--backend", "tcp://*:5556",
			"--curve-secret", filepath.Join(keys, "broker.key_secret"), "--authorized-keys", authorized,
			"--timeout", "2", "--spawn-timeout", "30", "--log-level", "DEBUG")
	}
	c := newClusterWith(t, func(c *cluster) *proc {
		keys, authorized = filepath.Join(c.dir, "keys"), filepath.Join(c.dir, "authorized_keys")
		if out, err := exec.Command(bin, "keys", "generate", "--dir", keys, "broker", "user", "node").CombinedOutput(); err != nil {
			t.Fatalf("keys generate: %v\n%s", err, out)
		}
		os.WriteFile(authorized, []byte("admin keys/user.key\nworker keys/node.key\n"), 0o644)
		var err error
		if c.curve, err = auth.LoadPeer(filepath.Join(keys, "broker.key"), filepath.Join(keys, "user.key_secret")); err != nil {
			t.Fatal(err)
		}
		c.front, c.back = "tcp://"+login+":5555", "tcp://"+login+":5556"
		argv := brokerArgv(c)
		return c.startCmd("broker", argv[0], argv[1:]...)
	})
	reg := filepath.Join(c.dir, "where.py")
	if err := os.WriteFile(reg, []byte(whereCalcs), 0o644); err != nil {
		t.Fatal(err)
	}
	curve := []string{"--curve-server-key", filepath.Join(keys, "broker.key"), "--curve-secret", filepath.Join(keys, "node.key_secret")}
	workerOn := func(host string) *proc {
		argv := n.on(host, append([]string{bin, "worker", "where", "--registry", reg + ":CALCS", "--python", c.python,
			"--broker", c.back, "--heartbeat", "0.5"}, curve...)...)
		return c.startCmd(host, argv[0], argv[1:]...)
	}
	workers := func() int { l, _ := c.list(); return l["where"] }

	var nodes []*proc
	t.Run("WorkersOnTwoNodes", func(t *testing.T) {
		t0 := time.Now()
		nodes = []*proc{workerOn("node0"), workerOn("node1")}
		c.waitFor(60*time.Second, "both nodes' workers registered", func() bool { return workers() == 2 })
		t.Logf("two workers on other hosts registered over tcp + CURVE in %v", time.Since(t0).Round(time.Millisecond))
		seen := c.calcMany("where", 16)
		if seen[10] == 0 || seen[11] == 0 || seen[10]+seen[11] != 16 {
			t.Fatalf("answers by node (10 + N): %v; want both nodes and nothing else", seen)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("CutLink", func(t *testing.T) {
		l := startLoad(c, 4)
		time.Sleep(time.Second)
		n.setLink("node0", false)
		cut := time.Now()
		c.waitFor(10*time.Second, "the broker dropping the cut-off worker", func() bool { return workers() == 1 })
		dropped := time.Since(cut)
		time.Sleep(4*time.Second - dropped)
		n.setLink("node0", true)
		up := time.Now()
		c.waitFor(30*time.Second, "node0's worker back", func() bool { return workers() == 2 })
		back := time.Since(up)
		served := l.count(10)
		c.waitFor(20*time.Second, "node0 serving again", func() bool { return l.count(10) > served })
		r := l.stop()
		t.Logf("link of node0 cut for 4 s under load (4 clients): %d requests answered, %d lost; slowest %v (the job in flight on node0, re-dispatched); "+
			"the broker dropped node0 after %v, node0 registered again %v after its link came up",
			r.ok, r.lost, r.slowest.Round(time.Millisecond), dropped.Round(time.Millisecond), back.Round(time.Millisecond))
		if r.lost != 0 {
			t.Errorf("%d requests lost: %v", r.lost, r.errs)
		}
		if r.slowest < 1500*time.Millisecond {
			t.Errorf("no request waited for the re-dispatch (slowest %v): was one in flight on node0 when its link went down?", r.slowest)
		}
	})

	t.Run("BrokerRestart", func(t *testing.T) {
		l := startLoad(c, 2)
		time.Sleep(time.Second)
		c.broker.Signal(t, syscall.SIGKILL)
		c.broker.Exited(5 * time.Second)
		t0 := time.Now()
		argv := brokerArgv(c)
		c.broker = c.startCmd("broker2", argv[0], argv[1:]...)
		c.waitFor(30*time.Second, "both workers registered with the new broker", func() bool { return workers() == 2 })
		back := time.Since(t0)
		time.Sleep(time.Second)
		r := l.stop()
		t.Logf("broker SIGKILLed and restarted under load: both remote workers registered again %v after the restart; "+
			"%d requests answered, %d lost, %d resent by their clients (the client's retries=), slowest %v",
			back.Round(time.Millisecond), r.ok, r.lost, r.retries, r.slowest.Round(time.Millisecond))
		if r.lost != 0 {
			t.Errorf("%d requests lost: %v", r.lost, r.errs)
		}
		if !strings.Contains(c.broker.Logs(), `calculators=[where]`) {
			t.Errorf("the new broker did not say it holds requests for where (its predecessor's state file):\n%s", c.broker.Logs())
		}
		if seen := c.calcMany("where", 8); seen[10] == 0 || seen[11] == 0 {
			t.Errorf("after the restart, answers by node: %v; want both nodes", seen)
		}
	})

	t.Run("SessionDirectAcrossHosts", func(t *testing.T) {
		// Our Python client here (the user's host) with a session: after the first request
		// it talks to its worker on a node directly, tcp with the worker's own CURVE key.
		src, _ := filepath.Abs("../../clientpy/src")
		script := `
import json, sys
from ase.build import molecule
from aserpc import RemoteCalculator
front, server, secret = sys.argv[1:4]
a = molecule("H2O")
a.calc = RemoteCalculator("where", broker=front, session=True, curve_server_key=server, curve_secret=secret)
es = []
for i in range(5):
    a.positions[0, 0] += 0.01
    es.append(a.get_potential_energy())
d = a.calc.__dict__.get("_direct")
print(json.dumps({"energies": es, "direct": a.calc.direct_round_trips, "endpoint": d.endpoint if d else "",
                  "address": d.address if d else ""}))
a.calc.close()
`
		cmd := exec.Command(c.python, "-c", script, c.front, filepath.Join(keys, "broker.key"), filepath.Join(keys, "user.key_secret"))
		cmd.Env = append(os.Environ(), "PYTHONPATH="+src)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("client: %v\n%s", err, out)
		}
		var r struct {
			Energies []float64
			Direct   int
			Endpoint string
			Address  string
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Logf("session from the user's host: %d of 5 requests straight to the worker at %s", r.Direct, strings.Fields(r.Endpoint + " ")[0])
		// The node's worker also announces its unix socket, with its host's boot id: not this
		// host's, so the client took tcp.
		if r.Direct < 3 || !strings.HasPrefix(r.Address, "tcp://"+n.subnet+".") || !strings.Contains(r.Endpoint, " unix://") {
			t.Errorf("direct requests %d, endpoint %q, used %q: want most requests direct to a node's tcp address", r.Direct, r.Endpoint, r.Address)
		}
		for _, e := range r.Energies {
			if e != r.Energies[0] || (e != 10 && e != 11) {
				t.Errorf("energies %v: want one node throughout", r.Energies)
				break
			}
		}
	})

	t.Run("ManagerAdvertises", func(t *testing.T) {
		for _, p := range nodes {
			p.Stop(5 * time.Second)
		}
		c.waitFor(15*time.Second, "the hand-started workers gone", func() bool { return workers() == 0 })
		spawns := filepath.Join(c.dir, "spawns.py")
		command, _ := json.Marshal(n.on("node{index}", bin, "worker", "where", "--name", "{name}", "--registry", reg+":CALCS",
			"--python", c.python, "--broker", "{broker}", "--heartbeat", "0.5"))
		os.WriteFile(spawns, []byte(fmt.Sprintf("import json\nCONFIGS = {'remote': {'command': json.loads(%q), 'max_workers': 2}}\n", command)), 0o644)
		// The manager sits next to the broker and dials it over loopback,
		// which the nodes cannot use.
		argv := n.on("login", append([]string{bin, "manager", "--registry", spawns + ":CONFIGS", "--broker", "tcp://127.0.0.1:5556",
			"--advertise", c.back, "--heartbeat", "0.5", "--log-dir", c.logDir, "--python", c.python, "--log-level", "DEBUG"}, curve...)...)
		c.manager = c.startCmd("manager", argv[0], argv[1:]...)
		c.waitFor(20*time.Second, "the manager registered", func() bool { l, _ := c.list(); _, ok := l["remote"]; return ok })
		t0 := time.Now()
		if e, err := c.calc("remote", 60*time.Second); err != nil || e != 10 {
			t.Fatalf("first request: %v %v, want 10 (node0's worker)", e, err)
		}
		t.Logf("manager on login, worker spawned on node0 over tcp + CURVE: request to first result %v", time.Since(t0).Round(time.Millisecond))
		if seen := c.calcMany("remote", 12); seen[10] == 0 || seen[11] == 0 {
			t.Errorf("answers by node: %v; want node0 and node1 (scale out to max_workers 2)", seen)
		}
		if !strings.Contains(c.manager.Logs(), "workers_broker="+c.back) {
			t.Errorf("the manager does not say which address its workers get:\n%s", c.manager.Logs())
		}
	})
}

// TestManager_IPCToAnotherHost: a worker that a manager started on
// another host (here: another host name, and a file system where the
// socket is not) with the manager's ipc:// address fails at once, saying
// why and what to do, and the waiting client gets that message.
func TestManager_IPCToAnotherHost(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("unshare --uts --mount needs root")
	}
	c := newCluster(t, "5")
	// The other host: its own host name, and a tmpfs over the directory
	// the broker's socket is in (that host's own /tmp).
	away := []string{"unshare", "--uts", "--mount", "sh", "-c",
		`hostname elsewhere && mount -t tmpfs none "$0" && exec "$@"`, c.dir}
	c.startManager(map[string]map[string]any{
		"LJ": {"command": append(away, c.worker("LJ")...)},
	})
	_, err := c.calc("LJ", 30*time.Second)
	for _, want := range []string{"is a unix socket on host", "this worker runs on host elsewhere", "--advertise tcp://HOST:PORT"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("client error %v; want it to contain %q", err, want)
		}
	}
}

// load is clients sending requests back to back, each resent after 3 s
// without an answer (as RemoteCalculator's retries= does) up to 20 times.
type load struct {
	c    *cluster
	mu   sync.Mutex
	done chan struct{}
	wg   sync.WaitGroup
	byE  map[float64]int
	res  loadResult
}

type loadResult struct {
	ok, lost, retries int
	slowest           time.Duration
	errs              []string
}

func startLoad(c *cluster, clients int) *load {
	l := &load{c: c, done: make(chan struct{}), byE: map[float64]int{}}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.done:
					return
				default:
				}
				t0 := time.Now()
				var e float64
				var err error
				tries := 0
				for tries < 20 {
					tries++
					if e, err = c.calc("where", 3*time.Second); err == nil || !strings.Contains(err.Error(), "no reply within") {
						break
					}
				}
				took := time.Since(t0)
				l.mu.Lock()
				l.res.retries += tries - 1
				if err != nil {
					l.res.lost++
					l.res.errs = append(l.res.errs, err.Error())
				} else {
					l.res.ok++
					l.byE[e]++
					l.res.slowest = max(l.res.slowest, took)
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// count is how many answers came with energy e (node e-10).
func (l *load) count(e float64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byE[e]
}

func (l *load) stop() loadResult {
	close(l.done)
	l.wg.Wait()
	return l.res
}
