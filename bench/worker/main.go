// Command bench measures what `aserpc worker` adds to a calculation: the
// round trip of an H2O LJ energy+forces request through our broker and a
// real `aserpc worker LJ` process, against the broker's echo path (the same
// request answered by a Go worker with a canned reply of the same size, in
// a process of its own as a real worker is) and against the same
// calculation in-process in Python, side by side in one run. A Null
// calculator (zero energy and forces, e2e/testdata) served and run the
// same way separates serving costs from the calculation's own speed in an
// embedded (shared) libpython.
//
//	worker overhead = via worker − echo (own process) − in-process calculation
//
// An echo worker inside the broker's process is shown too: the difference
// between the two echo rows is what a process boundary costs on this
// machine (wake-ups across processes), which any worker process pays.
//
// Requests alternate between two geometries so that ASE's result cache in
// the reused calculator never answers; the in-process loop does exactly
// what the worker does per request (a new Atoms, attach the calculator,
// get_potential_energy, get_forces).
//
// Usage (from the repository root): go run ./bench/worker [-python /usr/bin/python3] [-t 1s] [-rounds 3]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/broker"
	"github.com/aserpc/aserpc/config"
	"github.com/aserpc/aserpc/wire"
	"github.com/aserpc/aserpc/worker"
)

var (
	python = flag.String("python", "/usr/bin/python3", "interpreter with ase and numpy")
	dur    = flag.Duration("t", time.Second, "time per measurement")
	rounds = flag.Int("rounds", 3, "alternating rounds per measurement (best kept)")
	mode   = flag.String("python-mode", "embed", "the worker's --python-mode")
	wlog   = flag.String("worker-log", "WARNING", "the worker's --log-level (DEBUG shows each request's time)")
	spinUS = flag.Int("spin-us", config.DefaultWorkerSpinUS, "every worker's --spin-us, the echo workers' too (one more Null worker always has 0)")
)

// The two H2O geometries: ase.build.molecule("H2O") and the same with the
// first hydrogen moved 0.01 Å.
var (
	numbers = []int32{8, 1, 1}
	posA    = []float64{0, 0, 0.119262, 0, 0.763239, -0.477047, 0, -0.763239, -0.477047}
	posB    = []float64{0, 0, 0.119262, 0, 0.773239, -0.477047, 0, -0.763239, -0.477047}
)

func main() {
	flag.Parse()
	if ep := os.Getenv("ASERPC_BENCH_ECHO"); ep != "" {
		echoProcess(ep)
		return
	}
	dir, err := os.MkdirTemp("", "aserpc-bench-")
	must(err)
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "aserpc")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/aserpc").CombinedOutput(); err != nil {
		fatal("build aserpc (run from the repository root): %v\n%s", err, out)
	}
	front := "ipc://" + filepath.Join(dir, "f.ipc")
	back := "ipc://" + filepath.Join(dir, "b.ipc")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := broker.New(broker.Config{Frontend: front, Backend: back, Logger: quiet})
	must(err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx)
	defer b.Close()

	payloads := [2][]byte{request(posA), request(posB)}

	// The real worker processes.
	testdata, err := filepath.Abs("e2e/testdata")
	must(err)
	spin := strconv.Itoa(*spinUS)
	pids := map[string]int{}
	for _, wk := range []struct{ name, calc, spin string }{
		{"LJ", "LJ", spin}, {"Null", "e2epkg.calcs:Null", spin}, {"NullNoSpin", "e2epkg.calcs:Null", "0"},
	} {
		cmd := exec.Command(bin, "worker", wk.calc, "--name", wk.name, "--spin-us", wk.spin, "--broker", back,
			"--python", *python, "--python-mode", *mode, "--log-level", *wlog)
		cmd.Env = append(os.Environ(), "PYTHONPATH="+testdata)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		must(cmd.Start())
		defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		pids[wk.name] = cmd.Process.Pid
	}

	// The echo worker answers with the LJ worker's own reply bytes, so
	// the messages are the same size.
	waitFor(front, "LJ")
	c := newREQ(front)
	reply := call(c, "LJ", payloads[0])
	if r, err := wire.DecodeResponse(reply); err != nil || !r.Success {
		fatal("LJ reply: %v %+v", err, r)
	}
	w, err := worker.New(worker.Config{Name: "Echo", Broker: back, Heartbeat: 5 * time.Second, Logger: quiet,
		Spin:    time.Duration(*spinUS) * time.Microsecond,
		Handler: func(context.Context, []byte) []byte { return reply }})
	must(err)
	wctx, wstop := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { w.Run(wctx); close(wdone) }()
	defer func() { wstop(); <-wdone; w.Close() }()
	waitFor(front, "Echo")
	// The same echo worker in a process of its own, replying the same bytes.
	replyFile := filepath.Join(dir, "reply.bin")
	must(os.WriteFile(replyFile, reply, 0o600))
	self, err := os.Executable()
	must(err)
	echo := exec.Command(self, "-spin-us", spin)
	echo.Env = append(os.Environ(), "ASERPC_BENCH_ECHO="+back, "ASERPC_BENCH_REPLY="+replyFile)
	echo.Stderr = os.Stderr
	must(echo.Start())
	pids["EchoProc"] = echo.Process.Pid
	defer func() { echo.Process.Signal(syscall.SIGTERM); echo.Wait() }()
	waitFor(front, "EchoProc")
	waitFor(front, "Null")
	waitFor(front, "NullNoSpin")

	py := pythonLoop(testdata)

	type row struct {
		name string
		best time.Duration
		cpu  *cpuUse // the worker process's, per request, in the best round
	}
	rows := []*row{
		{name: "echo (broker + Go worker process)"},
		{name: "LJ via aserpc worker"},
		{name: "LJ in-process python"},
		{name: "Null via aserpc worker"},
		{name: "Null in-process python"},
		{name: "echo (broker + Go worker in the broker's process)"},
		{name: "Null via aserpc worker --spin-us 0"},
	}
	for i := 0; i < *rounds; i++ {
		for k, r := range rows {
			var d time.Duration
			var u *cpuUse
			switch k {
			case 0:
				d, u = measured(pids["EchoProc"], func() (time.Duration, int) { return roundTrip(c, "EchoProc", payloads) })
			case 1:
				d, u = measured(pids["LJ"], func() (time.Duration, int) { return roundTrip(c, "LJ", payloads) })
			case 2:
				d = py("LJ")
			case 3:
				d, u = measured(pids["Null"], func() (time.Duration, int) { return roundTrip(c, "Null", payloads) })
			case 4:
				d = py("Null")
			case 5:
				d, _ = roundTrip(c, "Echo", payloads)
			case 6:
				d, u = measured(pids["NullNoSpin"], func() (time.Duration, int) { return roundTrip(c, "NullNoSpin", payloads) })
			}
			if r.best == 0 || d < r.best {
				r.best, r.cpu = d, u
			}
		}
	}
	best := func(k int) time.Duration { return rows[k].best }
	fmt.Printf("H2O energy+forces, %s (%s), workers with --spin-us %d, mean round trip, best of %d × %v\n",
		*python, *mode, *spinUS, *rounds, *dur)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%7.1f µs\t", r.name, us(r.best))
		if r.cpu != nil {
			fmt.Fprintf(tw, "worker process: %s", r.cpu)
		}
		fmt.Fprintln(tw)
	}
	for _, o := range []struct {
		name      string
		remote, l int
	}{{"LJ", 1, 2}, {"Null", 3, 4}} {
		over := best(o.remote) - best(0) - best(o.l)
		verdict := "within"
		if over > 50*time.Microsecond {
			verdict = "OVER"
		}
		fmt.Fprintf(tw, "worker overhead, %s (via worker − echo − in-process)\t%7.1f µs\t(target ≤ 50 µs: %s)\n", o.name, us(over), verdict)
	}
	fmt.Fprintf(tw, "what spinning saves (Null, --spin-us 0 − --spin-us %d)\t%7.1f µs\t\n", *spinUS, us(best(6)-best(3)))
	tw.Flush()
}

// echoProcess is the bench re-run as an echo worker process: it serves
// "EchoProc" on the backend ep, answering every request with the bytes of
// $ASERPC_BENCH_REPLY, until SIGTERM.
func echoProcess(ep string) {
	reply, err := os.ReadFile(os.Getenv("ASERPC_BENCH_REPLY"))
	must(err)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := worker.New(worker.Config{Name: "EchoProc", Broker: ep, Heartbeat: 5 * time.Second, Logger: quiet,
		Spin:    time.Duration(*spinUS) * time.Microsecond,
		Handler: func(context.Context, []byte) []byte { return reply }})
	must(err)
	defer w.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	w.Run(ctx)
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func request(pos []float64) []byte {
	b, err := wire.EncodeRequest(wire.NewCalcRequest(numbers, pos, nil, [3]bool{}, "energy", "forces"))
	must(err)
	return b
}

func newREQ(ep string) *zmq.Socket {
	s, err := zmq.NewSocket(zmq.REQ)
	must(err)
	s.SetLinger(0)
	s.SetRcvtimeo(10 * time.Second)
	must(s.Connect(ep))
	return s
}

func call(s *zmq.Socket, calc string, payload []byte) []byte {
	if _, err := s.SendMessage(wire.Request.Frame(), calc, payload); err != nil {
		fatal("send: %v", err)
	}
	m, err := s.RecvMessageBytes(0)
	if err != nil {
		fatal("%s: no reply: %v", calc, err)
	}
	if c, _ := wire.ParseCommand(m[0]); c != wire.Response {
		fatal("%s: broker error %q", calc, m[1])
	}
	return m[1]
}

// roundTrip is the mean round trip over -t, alternating geometries, and
// the number of requests it made.
func roundTrip(s *zmq.Socket, calc string, payloads [2][]byte) (time.Duration, int) {
	for i := 0; i < 20; i++ { // warm up
		call(s, calc, payloads[i%2])
	}
	n := 0
	start := time.Now()
	for time.Since(start) < *dur {
		call(s, calc, payloads[n%2])
		n++
	}
	return time.Since(start) / time.Duration(n), n
}

// cpuUse is what a process's threads did per request: CPU time and
// context switches (each one a wake-up after a wait, or a preemption),
// in total and per thread name.
type cpuUse struct {
	cpu      time.Duration
	switches float64
	byName   map[string]time.Duration
}

func (u *cpuUse) String() string {
	names := make([]string, 0, len(u.byName))
	for n := range u.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%.1f µs CPU, %.1f switches per request (", us(u.cpu), u.switches)
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.1f", n, us(u.byName[n]))
	}
	b.WriteString(")")
	return b.String()
}

// taskStat is one thread's run time (schedstat, ns), context switches
// (voluntary and not) and name.
type taskStat struct {
	run, switches int64
	name          string
}

// taskStats reads every thread of pid, by thread id.
func taskStats(pid int) map[string]taskStat {
	out := map[string]taskStat{}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		var t taskStat
		if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat")); err == nil {
			fmt.Sscan(string(b), &t.run)
		}
		b, _ := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && f[0] == "Name:":
				t.name = f[1]
			case len(f) == 2 && (f[0] == "voluntary_ctxt_switches:" || f[0] == "nonvoluntary_ctxt_switches:"):
				n, _ := strconv.ParseInt(f[1], 10, 64)
				t.switches += n
			}
		}
		out[e.Name()] = t
	}
	return out
}

// measured runs f (returning a mean and a request count) and reports the
// CPU use of process pid per request.
func measured(pid int, f func() (time.Duration, int)) (time.Duration, *cpuUse) {
	before := taskStats(pid)
	d, n := f()
	after := taskStats(pid)
	u := &cpuUse{byName: map[string]time.Duration{}}
	for tid, a := range after {
		b := before[tid]
		run := time.Duration(a.run-b.run) / time.Duration(n)
		u.cpu += run
		u.switches += float64(a.switches-b.switches) / float64(n)
		u.byName[a.name] += run
	}
	return d, u
}

func waitFor(front, calc string) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		s := newREQ(front)
		s.SetRcvtimeo(500 * time.Millisecond)
		s.SendMessage(wire.List.Frame())
		if m, err := s.RecvMessageBytes(0); err == nil {
			if v, _ := wire.Unmarshal(m[1]); v != nil {
				if mm, ok := v.(map[string]any); ok && mm[calc] != nil && mm[calc] != int64(0) {
					s.Close()
					return
				}
			}
		}
		s.Close()
		time.Sleep(100 * time.Millisecond)
	}
	fatal("%s never registered", calc)
}

const pyLoop = `
import json, sys, time
import numpy as np
from ase import Atoms
from ase.calculators.lj import LennardJones
from e2epkg.calcs import Null
spec = json.loads(sys.argv[1])
numbers = np.array(spec["numbers"], dtype=np.int32)
pos = [np.array(p, dtype=np.float64).reshape(-1, 3) for p in spec["pos"]]
cell = np.zeros((3, 3)); pbc = np.zeros(3, bool)
calcs = {"LJ": LennardJones(), "Null": Null()}
def one(calc, k):
    atoms = Atoms(numbers=numbers, positions=pos[k % 2], cell=cell, pbc=pbc)
    atoms.calc = calc
    atoms.get_potential_energy(); atoms.get_forces()
for c in calcs.values():
    for k in range(200): one(c, k)
for line in sys.stdin:
    kind, t = line.split()
    calc, t = calcs[kind], float(t)
    n = 0; t0 = time.perf_counter()
    while time.perf_counter() - t0 < t:
        one(calc, n); n += 1
    print((time.perf_counter() - t0) / n * 1e9, flush=True)
`

// pythonLoop starts the in-process Python measurement and returns a
// function running one round of it for a calculator (LJ or Null).
func pythonLoop(testdata string) func(calc string) time.Duration {
	spec, _ := json.Marshal(map[string]any{"numbers": numbers, "pos": [][]float64{posA, posB}})
	cmd := exec.Command(*python, "-c", pyLoop, string(spec))
	cmd.Env = append(os.Environ(), "PYTHONPATH="+testdata)
	in, err := cmd.StdinPipe()
	must(err)
	out, err := cmd.StdoutPipe()
	must(err)
	cmd.Stderr = os.Stderr
	must(cmd.Start())
	lines := bufio.NewScanner(out)
	return func(calc string) time.Duration {
		fmt.Fprintf(in, "%s %g\n", calc, dur.Seconds())
		if !lines.Scan() {
			fatal("python loop: %v", lines.Err())
		}
		ns, err := strconv.ParseFloat(strings.TrimSpace(lines.Text()), 64)
		must(err)
		return time.Duration(ns)
	}
}

func must(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
