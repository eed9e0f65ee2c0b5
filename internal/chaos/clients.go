package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
)

// clientPy is the Python client process (see its docstring).
//
//go:embed client.py
var clientPy []byte

// Load is the valid traffic of a scenario: Clients Python processes, each
// with one RemoteCalculator (retries on) computing distinct structures and
// checking every result against LennardJones in-process.
type Load struct {
	Clients int
	// Requests in total over all clients; 0 means run until stopped.
	Requests int
	// Timeout is the RemoteCalculator timeout (the longest a request waits
	// without hearing from the broker before it is retried).
	Timeout time.Duration
	// Retries per request (RemoteCalculator retries=).
	Retries int
	Seed    int64
}

// clients is a running Load.
type clients struct {
	load  Load
	procs []*proctest.Proc
	stdin []io.WriteCloser
	outs  []string
	start time.Time
}

// ClientResult sums the clients' reports.
type ClientResult struct {
	Requests   int
	OK         int
	Wrong      int
	Lost       int
	RoundTrips int
	Latencies  []float64 // seconds, sorted
	Failures   []string  // the first few lost or wrong requests, verbatim
	Elapsed    time.Duration
}

// Retries is the number of REQUESTs sent beyond one per request.
func (r ClientResult) Retries() int { return r.RoundTrips - r.Requests }

// Quantile of the latencies (q in [0, 1]).
func (r ClientResult) Quantile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(r.Latencies)-1))
	return time.Duration(r.Latencies[i] * float64(time.Second))
}

func (c *cluster) startClients(l Load) (*clients, error) {
	if l.Clients <= 0 {
		l.Clients = 2
	}
	if l.Timeout <= 0 {
		l.Timeout = 5 * time.Second
	}
	if l.Retries <= 0 {
		l.Retries = 20
	}
	script := filepath.Join(c.dir, "client.py")
	if err := os.WriteFile(script, clientPy, 0o644); err != nil {
		return nil, err
	}
	cs := &clients{load: l, start: time.Now()}
	for i := 0; i < l.Clients; i++ {
		out := filepath.Join(c.dir, fmt.Sprintf("client-%d.json", i))
		argv := []string{c.Python, script, "--broker", c.front, "--calc", calcName, "--out", out,
			"--threads", "1", "--seed", strconv.FormatInt(l.Seed*100+int64(i), 10),
			"--timeout", strconv.FormatInt(l.Timeout.Milliseconds(), 10), "--retries", strconv.Itoa(l.Retries)}
		if l.Requests > 0 {
			n := l.Requests / l.Clients
			if i < l.Requests%l.Clients {
				n++
			}
			argv = append(argv, "--requests", strconv.Itoa(n))
		} else {
			argv = append(argv, "--until-eof")
		}
		p, stdin, err := proctest.LaunchPiped(fmt.Sprintf("client-%d", i), c.env, c.dir, true, argv...)
		if err != nil {
			cs.stop()
			return nil, err
		}
		c.mu.Lock()
		c.procs = append(c.procs, p)
		c.mu.Unlock()
		cs.procs = append(cs.procs, p)
		cs.stdin = append(cs.stdin, stdin)
		cs.outs = append(cs.outs, out)
	}
	return cs, nil
}

// stop tells until-stopped clients to finish their current request and
// report (end of file on stdin).
func (cs *clients) stop() {
	for _, s := range cs.stdin {
		s.Close()
	}
}

// done reports whether every client has exited.
func (cs *clients) done() bool {
	for _, p := range cs.procs {
		if p.Running() {
			return false
		}
	}
	return true
}

// wait waits up to d for the clients to exit and sums their reports. A
// client that failed to report (crashed, or a bug in client.py) is an
// error: its requests would otherwise go uncounted.
func (cs *clients) wait(d time.Duration) (ClientResult, error) {
	deadline := time.Now().Add(d)
	var r ClientResult
	for i, p := range cs.procs {
		if !p.Exited(time.Until(deadline)) {
			return r, fmt.Errorf("%s still running after %v:\n%s", p.Name, d, lastLines(p.Logs(), 20))
		}
		if code := p.ExitCode(); code != 0 {
			return r, fmt.Errorf("%s exited with %d:\n%s", p.Name, code, lastLines(p.Logs(), 30))
		}
		b, err := os.ReadFile(cs.outs[i])
		if err != nil {
			return r, fmt.Errorf("%s: no report: %v\n%s", p.Name, err, lastLines(p.Logs(), 30))
		}
		var one struct {
			Requests   int       `json:"requests"`
			OK         int       `json:"ok"`
			Wrong      int       `json:"wrong"`
			Lost       int       `json:"lost"`
			RoundTrips int       `json:"round_trips"`
			Latencies  []float64 `json:"latencies"`
			Failures   []string  `json:"failures"`
			Crashed    []string  `json:"crashed"`
		}
		if err := json.Unmarshal(b, &one); err != nil {
			return r, fmt.Errorf("%s: report: %v", p.Name, err)
		}
		if len(one.Crashed) > 0 {
			return r, fmt.Errorf("%s: client thread crashed: %v", p.Name, one.Crashed)
		}
		r.Requests += one.Requests
		r.OK += one.OK
		r.Wrong += one.Wrong
		r.Lost += one.Lost
		r.RoundTrips += one.RoundTrips
		r.Latencies = append(r.Latencies, one.Latencies...)
		for _, f := range one.Failures {
			r.Failures = append(r.Failures, p.Name+": "+f)
		}
	}
	r.Elapsed = time.Since(cs.start)
	sort.Float64s(r.Latencies)
	if cs.load.Requests > 0 && r.Requests != cs.load.Requests {
		return r, fmt.Errorf("clients made %d requests, want %d", r.Requests, cs.load.Requests)
	}
	return r, nil
}
