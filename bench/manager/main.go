// Command benchmanager measures what `aserpc manager` adds to a cold start:
// the time from "no worker" to the first result, through the manager
// (request → SPAWN_REQUEST → child process → READY → result) versus a
// worker started by hand (start the process, send the request as soon as
// the broker knows the worker).
//
// Both use the same broker process and the same worker command
// (`aserpc worker LJ --python P`); rounds alternate between the two so
// that noise on a shared machine hits both, and the median and best of
// each are printed. The target is a difference of at most 100 ms.
//
// Usage (from the repository root):
//
//	go run ./bench/manager [-rounds 7] [-python /usr/bin/python3]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
	"github.com/aserpc/aserpc/wire"
)

var (
	rounds = flag.Int("rounds", 7, "rounds per mode (alternating)")
	python = flag.String("python", "/usr/bin/python3", "Python with ase, for the worker")
	calc   = flag.String("calc", "LJ", "calculator the worker serves")
)

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "aserpc-")
	must(err)
	defer os.RemoveAll(dir)
	bin, err := proctest.BuildAserpc(dir)
	if err != nil {
		fail("build: %v", err)
	}
	// Two identical brokers: one with the manager, one without (a broker
	// with a manager would ask it for the hand-started round's worker).
	front, back := "ipc://"+dir+"/f.ipc", "ipc://"+dir+"/b.ipc"
	hfront, hback := "ipc://"+dir+"/hf.ipc", "ipc://"+dir+"/hb.ipc"
	for _, fb := range [][2]string{{front, back}, {hfront, hback}} {
		b := startProc(bin, dir, "broker.log", "broker", "--frontend", fb[0], "--backend", fb[1], "--log-level", "WARNING")
		defer stop(b)
		waitFor(func() bool { _, err := list(fb[0]); return err == nil }, "broker")
	}

	worker := []string{bin, "worker", *calc, "--broker", "{broker}", "--python", *python}
	cfg := fmt.Sprintf("CONFIGS = {%q: {\"command\": %s}}\n", *calc, pyList(worker))
	must(os.WriteFile(filepath.Join(dir, "spawns.py"), []byte(cfg), 0o644))
	manager := startProc(bin, dir, "manager.log", "manager", "--registry", filepath.Join(dir, "spawns.py")+":CONFIGS",
		"--broker", back, "--python", *python, "--log-dir", filepath.Join(dir, "logs"), "--log-level", "WARNING")
	defer stop(manager)
	waitFor(func() bool { l, err := list(front); _, ok := l[*calc]; return err == nil && ok }, "manager")

	var viaManager, byHand []time.Duration
	for i := 0; i < *rounds; i++ {
		// Through the manager: nothing runs; one request.
		t0 := time.Now()
		if _, err := request(front, *calc); err != nil {
			fail("via manager: %v\n%s", err, readLog(dir, "manager.log"))
		}
		viaManager = append(viaManager, time.Since(t0))
		shutdownWorkers(front, *calc)

		// By hand: start the worker, request as soon as it is known.
		t0 = time.Now()
		args := append([]string{}, worker[1:]...)
		args[3] = hback // {broker}
		w := exec.Command(worker[0], args...)
		w.Dir = dir
		must(w.Start())
		for {
			_, err := request(hfront, *calc)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "No workers available") && !strings.Contains(err.Error(), "Failed to spawn") {
				fail("by hand: %v", err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		byHand = append(byHand, time.Since(t0))
		shutdownWorkers(hfront, *calc)
		w.Wait()
	}
	mm, mb := median(viaManager), median(byHand)
	fmt.Printf("cold start to first result, %s worker from %s, %d rounds each\n", *calc, *python, *rounds)
	fmt.Printf("  by hand        median %6s  best %6s\n", ms(mb), ms(minimum(byHand)))
	fmt.Printf("  via manager    median %6s  best %6s\n", ms(mm), ms(minimum(viaManager)))
	fmt.Printf("  manager adds   median %6s  best %6s  (target ≤ 100 ms)\n", ms(mm-mb), ms(minimum(viaManager)-minimum(byHand)))
}

// shutdownWorkers stops calc's workers and waits until the broker has
// forgotten them and the manager has reaped its child (STATUS lists no
// children), so the next round starts from zero.
func shutdownWorkers(front, calc string) {
	call(front, wire.WorkerShutdown, calc)
	waitFor(func() bool {
		st, err := call(front, wire.Status)
		if err != nil {
			return false
		}
		m, _ := st.(map[string]any)
		workers, _ := m["workers"].(map[string]any)
		mgr, _ := m["manager"].(map[string]any)
		kids, _ := mgr["children"].([]any)
		return len(workers) == 0 && len(kids) == 0
	}, "workers gone")
}

// request computes the LJ energy of H2O as a client would.
func request(front, calc string) (float64, error) {
	r := wire.NewCalcRequest([]int32{8, 1, 1},
		[]float64{0, 0, 0.119262, 0, 0.763239, -0.477047, 0, -0.763239, -0.477047}, nil, [3]bool{}, "energy")
	body, err := wire.EncodeRequest(r)
	if err != nil {
		return 0, err
	}
	frames, err := roundTrip(front, 60*time.Second, wire.Request.Frame(), []byte(calc), body)
	if err != nil {
		return 0, err
	}
	resp, err := wire.DecodeResponse(frames[1])
	if err != nil {
		return 0, err
	}
	if err := resp.Err(); err != nil {
		return 0, err
	}
	e, _ := resp.Results["energy"].(float64)
	return e, nil
}

func call(front string, cmd wire.Command, args ...string) (any, error) {
	msg := [][]byte{cmd.Frame()}
	for _, a := range args {
		msg = append(msg, []byte(a))
	}
	frames, err := roundTrip(front, 3*time.Second, msg...)
	if err != nil {
		return nil, err
	}
	return wire.Unmarshal(frames[1])
}

func list(front string) (map[string]any, error) {
	v, err := call(front, wire.List)
	if err != nil {
		return nil, err
	}
	m, _ := v.(map[string]any)
	return m, nil
}

func roundTrip(front string, timeout time.Duration, msg ...[]byte) ([][]byte, error) {
	frames, err := proctest.Request(front, timeout, msg...)
	if err != nil {
		return nil, err
	}
	if len(frames) != 2 {
		return nil, errors.New("bad reply")
	}
	return frames, nil
}

func startProc(bin, dir, logName string, args ...string) *exec.Cmd {
	f, err := os.OpenFile(filepath.Join(dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	must(err)
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, f, f
	must(cmd.Start())
	return cmd
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
	}
}

func readLog(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return string(b)
}

func waitFor(cond func() bool, what string) {
	end := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(end) {
			fail("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pyList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func minimum(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d[1:] {
		m = min(m, x)
	}
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

func must(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchmanager: "+format+"\n", args...)
	os.Exit(1)
}
