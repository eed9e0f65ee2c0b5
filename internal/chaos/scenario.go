package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"time"
)

// Chaos is one run: Load against the cluster while workers are killed,
// the broker is restarted, or both.
type Chaos struct {
	Settings
	Load
	// Duration is how long the clients run when Load.Requests is 0.
	Duration time.Duration
	// KillMin and KillMax: a worker is SIGKILLed every uniformly random
	// interval in [KillMin, KillMax) (KillMax 0: no kills).
	KillMin, KillMax time.Duration
	// BrokerRestarts is how many times the broker is SIGKILLed and started
	// again on the same endpoints, RestartEvery apart, while clients run.
	BrokerRestarts int
	RestartEvery   time.Duration
	// Recover waits, after the chaos, until the manager has every worker
	// running again, and reports how long that took. The manager's
	// restart backoff (0.5 s doubling to 60 s, per calculator, reset by a
	// child that ran 60 s) makes that up to a minute after a kill storm.
	Recover bool
}

// Report is what a Chaos run saw.
type Report struct {
	Clients ClientResult
	// Kills are the workers SIGKILLed; KillsBusy those seen computing
	// (state R in /proc) when picked.
	Kills, KillsBusy int
	// Spawns are the workers the manager started after the first Workers.
	Spawns int
	// Counters are the broker's STATUS counters, summed over every broker
	// process (each sampled just before it was killed, and at the end).
	Counters map[string]int
	Restarts []Restart
	// Recovered is how long after the chaos stopped every worker was
	// registered again (the manager keeps min_workers).
	Recovered time.Duration
	Settings  Settings
	NClients  int
	// WantRestarts is Chaos.BrokerRestarts: fewer done is a failure.
	WantRestarts int
}

// Restart is one broker restart, timed.
type Restart struct {
	Up       time.Duration // SIGKILL → the new broker answers LIST
	Workers  time.Duration // new broker answers → every worker registered again
	Manager  time.Duration // new broker answers → the manager registered again
	Respawns int           // workers the manager started meanwhile (re-registration needs none)
}

// Problems lists what makes the run a failure: any lost or wrong request.
func (r Report) Problems() []string {
	var p []string
	if r.Clients.Lost > 0 {
		p = append(p, fmt.Sprintf("%d lost requests", r.Clients.Lost))
	}
	if r.Clients.Wrong > 0 {
		p = append(p, fmt.Sprintf("%d wrong results", r.Clients.Wrong))
	}
	if r.Clients.OK != r.Clients.Requests-r.Clients.Lost-r.Clients.Wrong {
		p = append(p, fmt.Sprintf("ok %d + lost + wrong != %d requests", r.Clients.OK, r.Clients.Requests))
	}
	if len(r.Restarts) < r.WantRestarts {
		p = append(p, fmt.Sprintf("only %d of %d broker restarts happened before the clients finished", len(r.Restarts), r.WantRestarts))
	}
	for i, rs := range r.Restarts {
		if rs.Respawns > 0 {
			p = append(p, fmt.Sprintf("restart %d: the manager started %d workers instead of the old ones re-registering", i+1, rs.Respawns))
		}
	}
	return p
}

// String is the report as `just chaos` prints it.
func (r Report) String() string {
	var b strings.Builder
	c := r.Clients
	fmt.Fprintf(&b, "  requests  %d from %d clients in %.1fs (%.0f/s): %d ok, %d wrong, %d lost\n",
		c.Requests, r.NClients, c.Elapsed.Seconds(), float64(c.Requests)/c.Elapsed.Seconds(), c.OK, c.Wrong, c.Lost)
	fmt.Fprintf(&b, "  latency   p50 %s  p90 %s  p99 %s  max %s\n",
		ms(c.Quantile(0.5)), ms(c.Quantile(0.9)), ms(c.Quantile(0.99)), ms(c.Quantile(1)))
	fmt.Fprintf(&b, "  retries   %d client retries (%d REQUESTs for %d requests)\n", c.Retries(), c.RoundTrips, c.Requests)
	if r.Kills > 0 {
		fmt.Fprintf(&b, "  kills     %d workers SIGKILLed (%d seen computing), %d started by the manager\n",
			r.Kills, r.KillsBusy, r.Spawns)
		if r.Recovered > 0 {
			fmt.Fprintf(&b, "  recovery  all %d workers registered %s after the chaos stopped (min_workers, after the manager's restart backoff)\n",
				r.Settings.Workers, ms(r.Recovered))
		}
	}
	k := r.Counters
	fmt.Fprintf(&b, "  broker    redispatched %d, stale responses %d, undeliverable %d, expired %d, queue full %d, malformed %d\n",
		k["redispatched"], k["stale_responses"], k["undeliverable"], k["expired"], k["queue_full"], k["malformed"])
	for i, rs := range r.Restarts {
		fmt.Fprintf(&b, "  restart %d up %s after SIGKILL; then manager in %s, all %d workers in %s (target ≤ 2 heartbeats = %s: %s); respawns %d\n",
			i+1, ms(rs.Up), ms(rs.Manager), r.Settings.Workers, ms(rs.Workers), ms(2*r.Settings.Heartbeat),
			verdict(max(rs.Workers, rs.Manager) <= 2*r.Settings.Heartbeat), rs.Respawns)
	}
	for _, f := range c.Failures {
		fmt.Fprintf(&b, "  FAILED    %s\n", f)
	}
	return b.String()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func ms(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}

// Run runs cfg: a cluster, its clients, the chaos, then the recovery
// check. On error the processes' logs are appended to it.
func Run(ctx context.Context, cfg Chaos) (rep Report, err error) {
	c, err := newCluster(cfg.Settings)
	if err != nil {
		return rep, err
	}
	cfg.Settings = c.Settings
	if cfg.Load.Clients <= 0 {
		cfg.Load.Clients = 2
	}
	rep.Settings, rep.NClients, rep.WantRestarts = cfg.Settings, cfg.Load.Clients, cfg.BrokerRestarts
	defer func() {
		logs := c.close(err != nil)
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, logs)
		}
	}()
	if _, err = c.startBroker(); err != nil {
		return rep, err
	}
	if err = c.startManager(); err != nil {
		return rep, err
	}
	c.Logf("%d workers up; starting %d clients", c.Workers, cfg.Load.Clients)
	spawns0 := c.spawns()
	cs, err := c.startClients(cfg.Load)
	if err != nil {
		return rep, err
	}
	defer cs.stop()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex // guards rep and chaosErr while the chaos runs
	var chaosErr error
	counters := map[string]int{}
	if cfg.KillMax > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, kb := c.killLoop(stop, cfg.KillMin, cfg.KillMax, cfg.Seed)
			mu.Lock()
			rep.Kills, rep.KillsBusy = k, kb
			mu.Unlock()
		}()
	}
	if cfg.BrokerRestarts > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs, err := c.restartLoop(stop, cfg.BrokerRestarts, cfg.RestartEvery, counters)
			mu.Lock()
			rep.Restarts, chaosErr = rs, err
			mu.Unlock()
		}()
	}

	// Let the clients run: for Duration, or until they made their
	// requests.
	deadline := time.Now().Add(cfg.Duration)
	for !cs.done() {
		if cfg.Load.Requests == 0 && time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			close(stop)
			wg.Wait()
			return rep, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	cs.stop()
	rep.Clients, err = cs.wait(2 * time.Minute)
	close(stop)
	wg.Wait()
	if err != nil {
		return rep, err
	}
	if chaosErr != nil {
		return rep, chaosErr
	}

	if cfg.Recover {
		// The manager must bring the pool back to min_workers: within its
		// longest backoff and a start.
		t0 := time.Now()
		if err = c.waitFor(90*time.Second, "every worker registered after the chaos", func() bool {
			l, err := c.list(time.Second)
			return err == nil && l[calcName] == c.Workers
		}); err != nil {
			return rep, err
		}
		rep.Recovered = time.Since(t0)
	}
	st, err := c.status(5 * time.Second)
	if err != nil {
		return rep, fmt.Errorf("final STATUS: %w", err)
	}
	for k, v := range st.counters {
		counters[k] += v
	}
	rep.Counters = counters
	rep.Spawns = c.spawns() - spawns0
	return rep, nil
}

// killLoop SIGKILLs one of the manager's running workers every random
// interval in [lo, hi) until stop is closed, preferring one seen
// computing: a worker killed with a job in hand is the case that can lose
// a request. It returns the kills and how many of them were busy.
func (c *cluster) killLoop(stop <-chan struct{}, lo, hi time.Duration, seed int64) (kills, killsBusy int) {
	rng := rand.New(rand.NewSource(seed))
	for {
		wait := lo
		if hi > lo {
			wait += time.Duration(rng.Int63n(int64(hi - lo)))
		}
		select {
		case <-stop:
			return kills, killsBusy
		case <-time.After(wait):
		}
		st, err := c.status(time.Second)
		if err != nil {
			continue
		}
		var pids []int
		for _, pid := range st.children {
			if c.ourWorker(pid) {
				pids = append(pids, pid)
			}
		}
		if len(pids) == 0 {
			continue
		}
		// Sample each process's state a few times over ~50 ms.
		seen := map[int]bool{}
		for i := 0; i < 10; i++ {
			for _, pid := range pids {
				if busy(pid) {
					seen[pid] = true
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		cands := pids
		if len(seen) > 0 {
			cands = cands[:0:0]
			for pid := range seen {
				cands = append(cands, pid)
			}
		}
		victim := cands[rng.Intn(len(cands))]
		if killPid(victim) == nil {
			kills++
			if seen[victim] {
				killsBusy++
			}
		}
	}
}

// ourWorker reports whether pid is an `aserpc worker` of this cluster (a
// pid from a stale STATUS may have been reused by another process).
func (c *cluster) ourWorker(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 2 && args[0] == c.Bin && args[1] == "worker" && strings.Contains(string(b), c.back)
}

// restartLoop SIGKILLs the broker n times, every apart, and times how long
// the manager and every worker take to register with its successor.
func (c *cluster) restartLoop(stop <-chan struct{}, n int, every time.Duration, counters map[string]int) ([]Restart, error) {
	var out []Restart
	for i := 0; i < n; i++ {
		select {
		case <-stop:
			return out, nil
		case <-time.After(every):
		}
		if st, err := c.status(time.Second); err == nil {
			for k, v := range st.counters {
				counters[k] += v
			}
		}
		sp := c.spawns()
		t0 := time.Now()
		if err := c.killBroker(); err != nil {
			return out, err
		}
		if _, err := c.startBroker(); err != nil {
			return out, fmt.Errorf("restart %d: %w", i+1, err)
		}
		up := time.Now()
		r := Restart{Up: up.Sub(t0)}
		err := c.waitFor(30*time.Second, "manager and workers registered with the new broker", func() bool {
			st, err := c.status(500 * time.Millisecond)
			if err != nil {
				return false
			}
			if st.managerConnected && r.Manager == 0 {
				r.Manager = time.Since(up)
			}
			if st.workers == c.Workers && r.Workers == 0 {
				r.Workers = time.Since(up)
			}
			return r.Manager > 0 && r.Workers > 0
		})
		r.Respawns = c.spawns() - sp
		out = append(out, r)
		c.Logf("broker restart %d: up in %s, manager in %s, %d workers in %s, respawns %d",
			i+1, ms(r.Up), ms(r.Manager), c.Workers, ms(r.Workers), r.Respawns)
		if err != nil {
			return out, fmt.Errorf("restart %d: %w", i+1, err)
		}
	}
	return out, nil
}
