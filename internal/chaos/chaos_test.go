package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/internal/testenv"
)

// bin is the aserpc binary, built once for the package's tests.
var bin string

func TestMain(m *testing.M) {
	var dir string
	bin, dir = proctest.MustBuildAserpc("aserpc-chaos-bin-")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// settings are the scenarios' settings for a test: Debian's python3 (which
// has ase, numpy, pyzmq and msgpack) for workers and clients, or a skip.
func settings(t *testing.T) Settings {
	t.Helper()
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy", "zmq", "msgpack")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return Settings{Bin: bin, Python: py, Root: root, Logf: t.Logf}
}

// TestChaos_KillWorkers is `just chaos`'s kill scenario, short: 4 LJ
// workers kept alive by the manager, 2 Python clients with retries for
// 20 s, a worker SIGKILLed every 0.5–2 s. No request may be lost or wrong;
// the kills must have happened and the broker must have moved jobs off
// dead workers (or the test proved nothing).
func TestChaos_KillWorkers(t *testing.T) {
	rep, err := Run(context.Background(), Chaos{Settings: settings(t), Load: Load{Clients: 2, Seed: 1},
		Duration: 20 * time.Second, KillMin: 500 * time.Millisecond, KillMax: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	for _, p := range rep.Problems() {
		t.Error(p)
	}
	// A kill every ≤ 2 s for 20 s: at least 5 even when a STATUS is slow.
	if rep.Kills < 5 {
		t.Errorf("%d kills in 20 s, want at least 5", rep.Kills)
	}
	if rep.Counters["redispatched"] == 0 {
		t.Errorf("no job was re-dispatched: the kills never hit a worker holding (or about to get) a job")
	}
	// The manager replaces the dead: from min_workers at first, on the
	// broker's demand once its restart backoff has grown (a worker killed
	// within a minute of starting counts as a crash), so the pool may run
	// a little below 4 but never dries up.
	if rep.Spawns < rep.Kills/2 {
		t.Errorf("the manager started %d workers after %d kills", rep.Spawns, rep.Kills)
	}
	if rep.Clients.OK < 100 {
		t.Errorf("only %d requests succeeded in 20 s", rep.Clients.OK)
	}
}

// TestChaos_BrokerRestart is `just chaos`'s restart scenario, short: the
// broker is SIGKILLed and started again on the same endpoints twice while
// the clients send. The manager and every worker must register with the
// new broker without being respawned, within two heartbeats plus a margin
// for a loaded machine, and no request may be lost or wrong.
func TestChaos_BrokerRestart(t *testing.T) {
	s := settings(t)
	s.Heartbeat = 500 * time.Millisecond
	rep, err := Run(context.Background(), Chaos{Settings: s, Load: Load{Clients: 2, Seed: 2},
		Duration: 14 * time.Second, BrokerRestarts: 2, RestartEvery: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	for _, p := range rep.Problems() {
		t.Error(p)
	}
	// Re-registration takes a reconnect (100 ms) and the next heartbeat;
	// anything slower than 2 heartbeats + 2 s is not the heartbeat path.
	bound := 2*s.Heartbeat + 2*time.Second
	for i, r := range rep.Restarts {
		if r.Workers > bound || r.Manager > bound {
			t.Errorf("restart %d: workers back in %s, manager in %s; want both within %s", i+1, r.Workers, r.Manager, bound)
		}
	}
	if rep.Clients.OK < 100 {
		t.Errorf("only %d requests succeeded in 14 s", rep.Clients.OK)
	}
}
