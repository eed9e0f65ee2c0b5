package interop

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// g2 are molecules from ase.build.molecule whose LennardJones energies all
// differ, so a reply given to the wrong client cannot pass as right.
var g2 = []string{"H2", "H2O", "NH3", "CH4", "CO", "CO2", "O2", "N2", "C2H6", "CH3OH", "HCN", "C6H6"}

// TestInterop_WorkerAndClient: a 0.1.3 worker registers with our broker
// and serves the 0.1.3 RemoteCalculator; the 0.1.3 helpers read LIST and
// STATUS in the shapes they expect; shutdown_workers stops the worker,
// which then leaves LIST.
func TestInterop_WorkerAndClient(t *testing.T) {
	c := newCluster(t)
	c.startBroker()
	w := c.startWorker("worker", nil, "LJ")
	c.waitWorkers("LJ", 1, 20*time.Second)

	res := c.refOps(
		op{"op": "compute", "calc": "LJ", "local": "LJ", "items": []string{"H2O"}},
		op{"op": "list"},
		op{"op": "status"},
		op{"op": "shutdown", "calc": "LJ"},
		op{"op": "shutdown", "calc": "Nope"},
	)
	requireOK(t, res...)
	requireExact(t, decode[[]computed](t, res[0])[0])
	if got := decode[int](t, res[4]); got != 0 {
		t.Errorf("shutdown_workers(\"Nope\") = %d, want 0", got)
	}

	if got, want := decode[map[string]int](t, res[1]), map[string]int{"LJ": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("list_calculators = %v, want %v", got, want)
	}

	st := decode[map[string]any](t, res[2])
	wantWorkers := map[string]any{"LJ": map[string]any{"total": 1.0, "idle": 1.0, "busy": 0.0}}
	if !reflect.DeepEqual(st["workers"], wantWorkers) {
		t.Errorf("broker_status workers = %v, want %v", st["workers"], wantWorkers)
	}
	if !reflect.DeepEqual(st["pending_requests"], map[string]any{}) {
		t.Errorf("broker_status pending_requests = %v, want {}", st["pending_requests"])
	}
	mgr, _ := st["manager"].(map[string]any)
	if mgr["connected"] != false || !reflect.DeepEqual(mgr["spawnable"], []any{}) {
		t.Errorf("broker_status manager = %v, want connected false, spawnable []", st["manager"])
	}

	if got := decode[int](t, res[3]); got != 1 {
		t.Errorf("shutdown_workers = %d, want 1", got)
	}
	if !w.Exited(10 * time.Second) {
		t.Fatalf("worker still running 10 s after shutdown_workers")
	}
	if code := w.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("worker exit code %d, want 0", code)
	}
	// get_potential_energy and get_forces: one request each.
	if n := handled(w.Logs()); n != 2 {
		t.Errorf("worker handled %d requests, want 2", n)
	}
	c.waitWorkers("LJ", 0, 5*time.Second)
	list := decode[map[string]int](t, c.refOps(op{"op": "list"})[0])
	if _, ok := list["LJ"]; ok {
		t.Errorf("list_calculators after shutdown = %v, want no LJ", list)
	}
	if bad := problems(w.Logs()); len(bad) > 0 {
		t.Errorf("worker logged problems:\n%s", strings.Join(bad, "\n"))
	}
}

// TestInterop_CalculatorError: a calculator exception in a 0.1.3 EMT
// worker reaches the 0.1.3 client as RuntimeError with its text, and the
// worker goes on serving, here a periodic crystal whose cell and pbc must
// cross our broker intact for energy, forces and stress to be exact.
func TestInterop_CalculatorError(t *testing.T) {
	c := newCluster(t)
	c.startBroker()
	c.startWorker("worker", nil, "EMT")
	c.waitWorkers("EMT", 1, 20*time.Second)

	uranium := map[string]any{"name": "UH", "symbols": "UH", "positions": [][]float64{{0, 0, 0}, {0, 0, 2}}}
	copper := map[string]any{"name": "Cu108", "bulk": "Cu", "repeat": []int{3, 3, 3}, "rattle": 0.05}
	res := c.refOps(
		op{"op": "compute", "calc": "EMT", "items": []any{uranium}},
		op{"op": "compute", "calc": "EMT", "local": "EMT", "items": []any{copper}, "stress": true},
	)
	requireOK(t, res...)
	r := decode[[]computed](t, res[0])[0]
	if r.ErrorType != "RuntimeError" || !strings.Contains(r.Error, "No EMT-potential for U") {
		t.Errorf("U with EMT: %s %q, want RuntimeError containing %q", r.ErrorType, r.Error, "No EMT-potential for U")
	}
	cu := decode[[]computed](t, res[1])[0]
	requireExact(t, cu)
	if len(cu.Forces) != 108 || len(cu.Stress) != 6 {
		t.Errorf("Cu108: %d force rows and %d stress components, want 108 and 6", len(cu.Forces), len(cu.Stress))
	}
}

// TestInterop_NoWorkers: without workers our broker answers at once with
// the reference's text, also after a retry; a client whose broker is not
// there gets the reference's ConnectionError.
func TestInterop_NoWorkers(t *testing.T) {
	c := newCluster(t)
	c.startBroker()
	missing := "ipc://" + filepath.Join(c.dir, "missing.ipc")
	res := c.refOps(
		op{"op": "compute", "calc": "LJ", "items": []string{"H2O"}},
		op{"op": "compute", "calc": "LJ", "items": []string{"H2O"}, "retries": 1, "timeout": 1000},
		op{"op": "connect", "broker": missing},
	)
	for i, raw := range res[:2] {
		r := decode[[]computed](t, raw)[0]
		if r.ErrorType != "RuntimeError" || r.Error != "No workers available for calculator 'LJ'" {
			t.Errorf("compute %d: %s %q, want RuntimeError %q", i, r.ErrorType, r.Error, "No workers available for calculator 'LJ'")
		}
		// Answered, not timed out: the broker needs no queue timeout to know.
		if r.Seconds > 1.5 {
			t.Errorf("compute %d took %.2f s; the broker should answer at once", i, r.Seconds)
		}
	}
	e := decode[opError](t, res[2])
	if e.ErrorType != "ConnectionError" || !strings.Contains(e.Error, "Broker not reachable") {
		t.Errorf("check_broker on %s: %s %q, want ConnectionError containing %q", missing, e.ErrorType, e.Error, "Broker not reachable")
	}
}

// TestInterop_LoadBalancing: three 0.1.3 workers share sequential and
// concurrent requests; every result is right, sequential requests go round
// the workers least recently used first, and the workers log no errors.
func TestInterop_LoadBalancing(t *testing.T) {
	c := newCluster(t)
	c.startBroker()
	var ws []*proc
	for i := range 3 {
		ws = append(ws, c.startWorker("worker"+strconv.Itoa(i), nil, "LJ"))
	}
	c.waitWorkers("LJ", 3, 30*time.Second)

	res := c.refOps(
		op{"op": "compute", "calc": "LJ", "local": "LJ", "items": g2},
		op{"op": "compute", "calc": "LJ", "local": "LJ", "items": g2, "threads": 6},
		op{"op": "shutdown", "calc": "LJ"},
	)
	requireOK(t, res...)
	for _, raw := range res[:2] {
		for _, r := range decode[[]computed](t, raw) {
			requireExact(t, r)
		}
	}
	if got := decode[int](t, res[2]); got != 3 {
		t.Errorf("shutdown_workers = %d, want 3", got)
	}
	// Two requests per molecule (energy, then forces).
	seq, total := 2*len(g2), 4*len(g2)
	st := c.status()
	if got := st.Broker.Counters["responses"]; got != total {
		t.Errorf("broker delivered %d responses, want %d", got, total)
	}
	if got := st.Broker.Counters["redispatched"]; got != 0 {
		t.Errorf("broker re-dispatched %d jobs, want 0", got)
	}
	sum := 0
	for _, w := range ws {
		if !w.Exited(10 * time.Second) {
			t.Fatalf("%s still running 10 s after shutdown_workers", w.Name)
		}
		n := handled(w.Logs())
		// Sequential requests alone give each worker seq/3 (LRU order).
		if n < seq/3 {
			t.Errorf("%s handled %d requests, want at least %d", w.Name, n, seq/3)
		}
		sum += n
		if bad := problems(w.Logs()); len(bad) > 0 {
			t.Errorf("%s logged problems:\n%s", w.Name, strings.Join(bad, "\n"))
		}
	}
	if sum != total {
		t.Errorf("workers handled %d requests in all, want %d", sum, total)
	}
}

// TestInterop_LongCalculation: a calculation three times longer than our
// broker's worker timeout succeeds, because the 0.1.3 worker's BUSY keeps
// it alive; the broker neither drops the worker nor re-dispatches its job.
func TestInterop_LongCalculation(t *testing.T) {
	c := newCluster(t)
	b := c.startBroker() // --timeout 1
	w := c.startWorker("worker", []string{"INTEROP_SLOW_SECONDS=3"}, "SlowLJ",
		"--registry", filepath.Join(testdata, "slowcalc.py")+":CALCULATORS")
	c.waitWorkers("SlowLJ", 1, 20*time.Second)

	var (
		res  []json.RawMessage
		err  error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		res, err = c.refRun(op{"op": "compute", "calc": "SlowLJ", "local": "LJ", "items": []string{"H2O"}, "timeout": 30000})
	}()
	// While it computes, the broker counts the worker busy, and still has
	// it after twice the worker timeout.
	c.waitFor(10*time.Second, "SlowLJ busy", func() bool {
		st, err := c.statusErr()
		return err == nil && st.Workers["SlowLJ"].Busy == 1
	})
	time.Sleep(2 * time.Second)
	if st := c.status(); st.Workers["SlowLJ"].Total != 1 || st.Workers["SlowLJ"].Busy != 1 {
		t.Errorf("2 s into the calculation: status %+v, want SlowLJ total 1 busy 1", st.Workers)
	}
	<-done
	if err != nil {
		t.Fatal(err)
	}
	r := decode[[]computed](t, res[0])[0]
	requireExact(t, r)
	// One calculation of 3 s: LennardJones computes the forces with the
	// energy, and the worker's reused calculator answers get_forces from
	// its cache.
	if r.Seconds < 3 {
		t.Errorf("took %.2f s; SlowLJ sleeps 3 s per calculation", r.Seconds)
	}
	if strings.Contains(b.Logs(), "timed out") {
		t.Errorf("broker log mentions a time-out:\n%s", b.Logs())
	}
	if got := c.status().Broker.Counters["redispatched"]; got != 0 {
		t.Errorf("broker re-dispatched %d jobs, want 0", got)
	}
	if !w.Running() {
		t.Errorf("worker exited")
	}
}

// TestInterop_WorkerDiesMidCalculation: a 0.1.3 worker killed while it
// computes is declared dead after the worker timeout and its job goes to
// the other worker, so the 0.1.3 client gets its result instead of 0.1.3's
// "Worker died during calculation".
func TestInterop_WorkerDiesMidCalculation(t *testing.T) {
	c := newCluster(t)
	b := c.startBroker() // --timeout 1
	reg := filepath.Join(testdata, "slowcalc.py") + ":CALCULATORS"
	var ws []*proc
	for i := range 2 {
		ws = append(ws, c.startWorker("worker"+strconv.Itoa(i), []string{"INTEROP_SLOW_SECONDS=2"},
			"SlowLJ", "--registry", reg, "--log-level", "DEBUG"))
	}
	c.waitWorkers("SlowLJ", 2, 20*time.Second)

	var (
		res  []json.RawMessage
		err  error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		res, err = c.refRun(op{"op": "compute", "calc": "SlowLJ", "local": "LJ", "items": []string{"H2O"}, "timeout": 30000})
	}()
	var victim, survivor *proc
	c.waitFor(10*time.Second, "a worker to take the job", func() bool {
		for i, w := range ws {
			if strings.Contains(w.Logs(), "Processing request") {
				victim, survivor = w, ws[1-i]
				return true
			}
		}
		return false
	})
	victim.Signal(t, syscall.SIGKILL)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	requireExact(t, decode[[]computed](t, res[0])[0])
	if !strings.Contains(survivor.Logs(), "Processing request") {
		t.Errorf("%s never got the job", survivor.Name)
	}
	st := c.status()
	if got := st.Broker.Counters["redispatched"]; got != 1 {
		t.Errorf("broker re-dispatched %d jobs, want 1", got)
	}
	if got := st.Workers["SlowLJ"].Total; got != 1 {
		t.Errorf("SlowLJ workers: %d, want 1 (the killed one is gone)", got)
	}
	// The 0.1.3 worker's connection closing is the notice (ROUTER_NOTIFY), as for ours; a broker
	// on a libzmq without that draft option waits out the worker timeout instead.
	want := "worker connection closed"
	if strings.Contains(b.Logs(), "no ZMQ_ROUTER_NOTIFY") {
		want = "worker timed out"
	}
	if !strings.Contains(b.Logs(), want) {
		t.Errorf("broker log does not say %q", want)
	}
}

// TestInterop_IdleWorkerKilled: requests sent right after an idle 0.1.3
// worker was killed (before the broker can have timed it out) all
// succeed on the other worker: a job sent to the dead one is refused by
// ROUTER_MANDATORY or re-dispatched after the worker timeout.
func TestInterop_IdleWorkerKilled(t *testing.T) {
	c := newCluster(t)
	c.startBroker() // --timeout 1
	w0 := c.startWorker("worker0", nil, "LJ")
	c.waitWorkers("LJ", 1, 20*time.Second)
	c.startWorker("worker1", nil, "LJ")
	c.waitWorkers("LJ", 2, 20*time.Second)
	// worker0 registered first, so it heads the idle queue.
	w0.Signal(t, syscall.SIGKILL)
	res := c.refOps(op{"op": "compute", "calc": "LJ", "local": "LJ", "items": g2[:4]})
	for _, r := range decode[[]computed](t, res[0]) {
		requireExact(t, r)
	}
	c.waitWorkers("LJ", 1, 5*time.Second)
}

// TestInterop_BrokerRestart: our broker stopped with SIGTERM removes its
// socket files; a new broker on the same paths gets the 0.1.3 worker and
// manager back through their periodic READY and MANAGER_READY, and serves
// the same result again.
func TestInterop_BrokerRestart(t *testing.T) {
	c := newCluster(t)
	b := c.startBroker()
	w := c.startWorker("worker", nil, "LJ")
	c.startManager(filepath.Join(c.dir, "pids"))
	c.waitWorkers("LJ", 1, 20*time.Second)
	compute := op{"op": "compute", "calc": "LJ", "local": "LJ", "items": []string{"H2O"}}
	before := decode[[]computed](t, c.refOps(compute)[0])[0]
	requireExact(t, before)

	b.Signal(t, syscall.SIGTERM)
	if !b.Exited(5 * time.Second) {
		t.Fatal("broker still running 5 s after SIGTERM")
	}
	if code := b.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("broker exit code after SIGTERM: %d, want 0", code)
	}
	// The broker created the ipc directory, so it removes it with the
	// sockets and their lock files.
	if _, err := os.Stat(c.ipc); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(c.ipc)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("after SIGTERM %s still exists (%v), holding %v", c.ipc, err, names)
	}

	c.startBroker()
	c.waitWorkers("LJ", 1, 5*time.Second)
	c.waitFor(5*time.Second, "manager back", func() bool {
		st, err := c.statusErr()
		return err == nil && st.Manager.Connected
	})
	res := c.refOps(compute, op{"op": "list"})
	after := decode[[]computed](t, res[0])[0]
	requireExact(t, after)
	if *after.Energy != *before.Energy {
		t.Errorf("energy after restart %.17g, before %.17g", *after.Energy, *before.Energy)
	}
	if got, want := decode[map[string]int](t, res[1]), map[string]int{"LJ": 1, "Broken": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("list_calculators after restart = %v, want %v", got, want)
	}
	if !w.Running() {
		t.Errorf("worker exited across the broker restart")
	}
}

// TestInterop_SigtermAnswersClients: clients waiting on our broker when it
// gets SIGTERM (one whose job a worker computes, two queued behind it) are
// answered at once with an error, not left to their own timeout as 0.1.3's
// broker leaves them.
func TestInterop_SigtermAnswersClients(t *testing.T) {
	c := newCluster(t)
	b := c.startBroker()
	c.startWorker("worker", []string{"INTEROP_SLOW_SECONDS=3"}, "SlowLJ",
		"--registry", filepath.Join(testdata, "slowcalc.py")+":CALCULATORS")
	c.waitWorkers("SlowLJ", 1, 20*time.Second)
	var (
		res  []json.RawMessage
		err  error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		res, err = c.refRun(op{"op": "compute", "calc": "SlowLJ", "items": []string{"H2O", "H2O", "H2O"}, "threads": 3, "timeout": 10000})
	}()
	c.waitFor(10*time.Second, "one job running and two queued", func() bool {
		st, err := c.statusErr()
		return err == nil && st.Workers["SlowLJ"].Busy == 1 && st.Pending["SlowLJ"] == 2
	})
	b.Signal(t, syscall.SIGTERM)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range decode[[]computed](t, res[0]) {
		if r.ErrorType != "RuntimeError" || r.Error != "Broker shutting down" {
			t.Errorf("client %d: %s %q, want RuntimeError %q", i, r.ErrorType, r.Error, "Broker shutting down")
		}
		if r.Seconds > 5 {
			t.Errorf("client %d answered after %.2f s; SIGTERM should answer it at once", i, r.Seconds)
		}
	}
}

// TestInterop_Manager: a 0.1.3 manager registers with our broker, which
// lists its calculators with 0 workers, spawns a 0.1.3 worker from zero
// for a request, frees clients of a spawn that never registers after
// --spawn-timeout (and spawns again for the next request, unlike 0.1.3),
// and forgets the manager's names once it is killed.
func TestInterop_Manager(t *testing.T) {
	c := newCluster(t)
	// spawn-timeout well below the queue timeout, so the error we see is
	// the spawn time-out's; long enough for a real worker to start.
	const spawnTimeout, queueTimeout = 5.0, 12.0
	c.startBroker("--spawn-timeout", "5", "--queue-timeout", "12")
	pids := filepath.Join(c.dir, "pids")
	m := c.startManager(pids)
	c.waitFor(20*time.Second, "manager connected", func() bool {
		st, err := c.statusErr()
		return err == nil && st.Manager.Connected
	})

	res := c.refOps(op{"op": "list"}, op{"op": "status"})
	requireOK(t, res...)
	if got, want := decode[map[string]int](t, res[0]), map[string]int{"LJ": 0, "Broken": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("list_calculators = %v, want %v", got, want)
	}
	st := decode[map[string]any](t, res[1])
	mgr, _ := st["manager"].(map[string]any)
	if mgr["connected"] != true || !reflect.DeepEqual(mgr["spawnable"], []any{"Broken", "LJ"}) {
		t.Errorf("broker_status manager = %v, want connected true, spawnable [Broken LJ]", st["manager"])
	}
	if !reflect.DeepEqual(st["workers"], map[string]any{}) {
		t.Errorf("broker_status workers = %v, want {}", st["workers"])
	}

	t.Run("ScaleFromZero", func(t *testing.T) {
		// Five clients at once for a calculator without workers: one
		// spawn, and every client served by the worker it starts.
		res := c.refOps(op{"op": "compute", "calc": "LJ", "local": "LJ", "items": g2[:5], "threads": 5, "timeout": 30000})
		for _, r := range decode[[]computed](t, res[0]) {
			requireExact(t, r)
		}
		if n := countLines(t, pids); n != 1 {
			t.Errorf("%d spawns, want 1", n)
		}
		if st := c.status(); st.Workers["LJ"].Total != 1 {
			t.Errorf("after the spawn: workers %+v, want LJ total 1", st.Workers)
		}
	})

	t.Run("SpawnNeverRegisters", func(t *testing.T) {
		before := countLines(t, pids)
		broken := op{"op": "compute", "calc": "Broken", "items": []string{"H2O"}, "timeout": 30000}
		res := c.refOps(broken, broken)
		for i, raw := range res {
			r := decode[[]computed](t, raw)[0]
			if r.ErrorType != "RuntimeError" || !strings.Contains(r.Error, "Failed to spawn worker") {
				t.Errorf("request %d: %s %q, want RuntimeError containing %q", i, r.ErrorType, r.Error, "Failed to spawn worker")
			}
			if r.Seconds < spawnTimeout-0.5 || r.Seconds > queueTimeout-1 {
				t.Errorf("request %d failed after %.2f s, want about the %.0f s spawn timeout", i, r.Seconds, spawnTimeout)
			}
		}
		// Each request asked for a spawn: the 0.1.3 broker's stuck flag
		// would have asked only once.
		if n := countLines(t, pids) - before; n != 2 {
			t.Errorf("%d spawns for two requests, want 2", n)
		}
	})

	t.Run("ManagerKilled", func(t *testing.T) {
		m.Signal(t, syscall.SIGKILL)
		c.waitFor(5*time.Second, "manager dropped", func() bool {
			st, err := c.statusErr()
			return err == nil && !st.Manager.Connected
		})
		res := c.refOps(op{"op": "list"}, op{"op": "status"})
		requireOK(t, res...)
		// The spawned LJ worker outlives its manager and stays listed.
		if got, want := decode[map[string]int](t, res[0]), map[string]int{"LJ": 1}; !reflect.DeepEqual(got, want) {
			t.Errorf("list_calculators = %v, want %v", got, want)
		}
		st := decode[map[string]any](t, res[1])
		if want := map[string]any{"connected": false, "spawnable": []any{}}; !reflect.DeepEqual(st["manager"], want) {
			t.Errorf("broker_status manager = %v, want %v", st["manager"], want)
		}
	})
}

// TestInterop_ManyClients: many 0.1.3 clients at once, in two processes of
// eight threads each, against three 0.1.3 workers: every client gets the
// result for its own molecule.
func TestInterop_ManyClients(t *testing.T) {
	c := newCluster(t)
	c.startBroker()
	for i := range 3 {
		c.startWorker("worker"+strconv.Itoa(i), nil, "LJ")
	}
	c.waitWorkers("LJ", 3, 30*time.Second)

	const procs, threads = 2, 8
	items := append(append([]string(nil), g2...), g2...) // 24 clients per process
	var (
		wg      sync.WaitGroup
		results [procs][]json.RawMessage
		errs    [procs]error
	)
	for p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[p], errs[p] = c.refRun(op{"op": "compute", "calc": "LJ", "local": "LJ", "items": items, "threads": threads})
		}()
	}
	wg.Wait()
	local := map[string]float64{}
	n := 0
	for p := range procs {
		if errs[p] != nil {
			t.Fatal(errs[p])
		}
		for _, r := range decode[[]computed](t, results[p][0]) {
			requireExact(t, r)
			local[r.Name] = *r.LocalEnergy
			n++
		}
	}
	if n != procs*len(items) {
		t.Errorf("%d results, want %d", n, procs*len(items))
	}
	// The check above only catches a swapped reply if molecules differ.
	seen := map[float64]string{}
	for name, e := range local {
		if other, ok := seen[e]; ok {
			t.Errorf("%s and %s have the same LJ energy %.17g; pick other molecules", name, other, e)
		}
		seen[e] = name
	}
	if got, want := c.status().Broker.Counters["responses"], 2*n; got != want {
		t.Errorf("broker delivered %d responses, want %d", got, want)
	}
}
