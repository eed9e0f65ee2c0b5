// Command chaos tests aserpc's reliability with real processes: our broker,
// `aserpc manager` keeping LJ workers alive, and Python clients using our
// RemoteCalculator with retries, each checking every result against ASE's
// LennardJones computed in its own process.
//
//	kill     a worker SIGKILLed every 0.5–2 s while the clients send
//	         (default 10000 requests); no request may be lost or wrong
//	restart  the broker SIGKILLed and started again on the same endpoints
//	         while the clients send; the manager and every worker must
//	         register with it again (without being respawned) and no request
//	         may be lost or wrong
//	fuzz     random and malformed messages at both broker sockets and, through
//	         the broker, at the workers, while valid traffic flows: the broker
//	         must not crash, valid requests must keep succeeding, and the
//	         broker's memory must stay bounded (VmRSS before and after)
//
// Each prints its measurements (latency percentiles, kills, retries, the
// broker's counters, re-registration times, RSS) and exits 1 when a check
// fails. `just chaos` runs kill and restart, `just fuzz-live` runs fuzz;
// chaos_test.go and fuzz_test.go run short versions in `go test ./...`.
//
// Usage (from the repository root):
//
//	go run ./internal/chaos kill    [-requests 10000] [-clients 2] [-workers 4] [-kill-min 0.5s] [-kill-max 2s]
//	go run ./internal/chaos restart [-requests 3000] [-restarts 5] [-every 3s]
//	go run ./internal/chaos fuzz    [-duration 60s] [-senders 4]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
)

func main() { os.Exit(run()) }

// run is main with an exit code, so that deferred clean-ups run.
func run() int {
	if len(os.Args) < 2 {
		usage()
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	python := fs.String("python", "/usr/bin/python3", "Python with ase, numpy, pyzmq and msgpack (workers and clients)")
	workers := fs.Int("workers", 4, "workers the manager keeps running")
	heartbeat := fs.Duration("heartbeat", 500*time.Millisecond, "workers' and manager's heartbeat")
	wtimeout := fs.Duration("worker-timeout", 2*time.Second, "broker --timeout")
	clients := fs.Int("clients", 2, "client processes")
	seed := fs.Int64("seed", time.Now().UnixNano()%1000, "random seed")
	verbose := fs.Bool("v", false, "print progress")
	var requests, restarts, senders *int
	var killMin, killMax, every, duration *time.Duration
	switch mode {
	case "kill":
		requests = fs.Int("requests", 10000, "requests in total")
		killMin = fs.Duration("kill-min", 500*time.Millisecond, "shortest interval between kills")
		killMax = fs.Duration("kill-max", 2*time.Second, "longest interval between kills")
	case "restart":
		requests = fs.Int("requests", 3000, "requests in total")
		restarts = fs.Int("restarts", 5, "broker restarts")
		every = fs.Duration("every", 3*time.Second, "time between restarts")
	case "fuzz":
		duration = fs.Duration("duration", 60*time.Second, "how long to fuzz")
		senders = fs.Int("senders", 4, "fuzzing goroutines")
	default:
		usage()
	}
	fs.Parse(os.Args[2:])

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	root, err := moduleRoot()
	if err != nil {
		return fail("%v (run from the repository)", err)
	}
	dir, err := os.MkdirTemp("", "aserpc-chaos-bin-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	bin, err := proctest.BuildAserpc(dir)
	if err != nil {
		return fail("build aserpc: %v", err)
	}
	s := Settings{Bin: bin, Python: *python, Root: root, Workers: *workers, Heartbeat: *heartbeat, WorkerTimeout: *wtimeout}
	if *verbose {
		s.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "  · "+f+"\n", a...) }
	}
	load := Load{Clients: *clients, Seed: *seed}

	var problems []string
	switch mode {
	case "kill", "restart":
		cfg := Chaos{Settings: s, Load: load}
		cfg.Load.Requests = *requests
		if mode == "kill" {
			cfg.KillMin, cfg.KillMax, cfg.Recover = *killMin, *killMax, true
			fmt.Printf("chaos kill: %d workers (heartbeat %s, broker timeout %s), %d clients, %d requests, a worker SIGKILLed every %s–%s, seed %d\n",
				*workers, *heartbeat, *wtimeout, *clients, *requests, *killMin, *killMax, *seed)
		} else {
			cfg.BrokerRestarts, cfg.RestartEvery = *restarts, *every
			fmt.Printf("chaos restart: %d workers (heartbeat %s, broker timeout %s), %d clients, %d requests, broker SIGKILLed and restarted %d times every %s, seed %d\n",
				*workers, *heartbeat, *wtimeout, *clients, *requests, *restarts, *every, *seed)
		}
		rep, err := Run(ctx, cfg)
		if err != nil {
			return fail("%v", err)
		}
		fmt.Print(rep)
		problems = rep.Problems()
	case "fuzz":
		cfg := Fuzz{Settings: s, Load: load, Duration: *duration, Senders: *senders}
		fmt.Printf("fuzz-live: %s of random and malformed messages from %d senders at the broker's frontend and backend and, through it, at %d LJ workers, while %d clients send valid requests; seed %d\n",
			*duration, *senders, *workers, *clients, *seed)
		rep, err := RunFuzz(ctx, cfg)
		if err != nil {
			return fail("%v", err)
		}
		fmt.Print(rep)
		problems = rep.Problems()
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Println("FAIL:", p)
		}
		return 1
	}
	fmt.Println("PASS")
	return 0
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./internal/chaos kill|restart|fuzz [flags]  (-h for a mode's flags)")
	os.Exit(2)
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "chaos: "+format+"\n", args...)
	return 1
}
