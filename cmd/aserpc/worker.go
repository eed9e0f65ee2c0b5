package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/internal/cpuset"
	"github.com/aserpc/aserpc/pyhost"
	"github.com/aserpc/aserpc/registry"
	"github.com/aserpc/aserpc/spawn"
	"github.com/aserpc/aserpc/worker"
)

func pythonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "python", Usage: "Python interpreter of the environment to serve from (default: $ASERPC_PYTHON, the venv aserpc sits in, $VIRTUAL_ENV, $CONDA_PREFIX, python3 on PATH)"},
		&cli.StringFlag{Name: "python-mode", Value: "auto", Usage: "embed (load its libpython into this process), subprocess (run it as a child), or auto"},
	}
}

func workerCommand() *cli.Command {
	return &cli.Command{
		Name:      "worker",
		Usage:     "Start a worker serving one calculator.",
		ArgsUsage: "CALCULATOR",
		Description: "CALCULATOR is a name (looked up in --registry, then in the entry points of group\n" +
			"aserpc.calculators; LJ and EMT are always there) or a factory module.path:callable.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "name", Aliases: []string{"n"}, Usage: "Name to register with broker (default: extracted from calculator)"},
			&cli.StringFlag{Name: "kwargs", Usage: "JSON kwargs for calculator factory"},
			&cli.StringFlag{Name: "args", Usage: "JSON args for calculator factory"},
			&cli.StringFlag{Name: "registry", Usage: "Python path to registry (module:variable or file.py:variable)"},
			&cli.StringFlag{Name: "broker", Usage: "Broker backend socket address (default: ipc_backend)"},
			&cli.Float64Flag{Name: "idle-timeout", Usage: "Exit after this many seconds without a request; 0: never (default: idle_timeout, 0; a manager passes its own)"},
			&cli.Float64Flag{Name: "heartbeat", Usage: "Heartbeat interval in seconds (default: heartbeat_interval, 5)"},
			&cli.BoolFlag{Name: "no-direct", Usage: "Serve sessions only through the broker: no socket of the worker's own (on a tcp broker, no listening port)"},
			&cli.IntFlag{Name: "spin-us", Usage: "After a job, busy-poll this many µs for the next request before sleeping: lower latency for clients that loop, at most this much CPU per job (default: worker_spin_us, 1000; 0 = never)"},
			&cli.IntFlag{Name: "threads", Usage: "Thread budget: OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS and torch's threads, unless set already",
				DefaultText: "$ASERPC_WORKER_THREADS, else the number of --cpus, else unchanged"},
			&cli.StringFlag{Name: "cpus", Usage: "Run on these CPUs only, e.g. 0-3 or 0,2", DefaultText: "$ASERPC_WORKER_CPUS, else all allowed"},
			&cli.IntFlag{Name: "batch-size", Usage: "Compute up to this many concurrent requests in one model call, when the calculator batches (calculate_batch, or an adapter: CHGNet, MACE) (default: batch_size, 1 = one at a time)"},
			&cli.IntFlag{Name: "batch-atoms", Usage: "Atoms in one batch at most, the GPU-memory limit; a bigger structure still goes alone (default: batch_atoms, 0 = no bound)"},
			&cli.Float64Flag{Name: "batch-wait-ms", Usage: "How long a first request may wait for others the broker expects (never when it expects none) (default: batch_wait_ms, 5)"},
			&cli.StringFlag{Name: "on-signal", Value: "finish", Usage: "On SIGINT/SIGTERM during a job: finish (answer it, then exit) or cancel (interrupt it; the broker gives it to another worker)"},
			&cli.StringFlag{Name: "log-level", Value: "INFO", Usage: "DEBUG, INFO, WARNING or ERROR"},
		}, append(pythonFlags(), curveFlags()...)...),
		Action: runWorker,
	}
}

func runWorker(c *cli.Context) error {
	log, err := setupLogging(c, c.String("log-level"))
	if err != nil {
		return err
	}
	if c.NArg() != 1 {
		return fail("give exactly one CALCULATOR (a name or module.path:callable)")
	}
	spec := pyhost.FactorySpec{Spec: c.Args().First(), Name: c.String("name"), Registry: c.String("registry")}
	// What the user typed is checked before any Python starts.
	if _, err := registry.ParseSpec(spec.Spec); err != nil {
		return fail("Error loading calculator: %v", err)
	}
	if spec.Registry != "" {
		if _, err := registry.ParseSource(spec.Registry, false); err != nil {
			return fail("Error loading calculator: %v", err)
		}
	}
	if s := c.String("args"); s != "" {
		if err := json.Unmarshal([]byte(s), &spec.Args); err != nil {
			var v any
			if json.Unmarshal([]byte(s), &v) == nil {
				return fail("--args must be a JSON array")
			}
			return fail("Invalid JSON in --args: %v", err)
		}
	}
	if s := c.String("kwargs"); s != "" {
		if err := json.Unmarshal([]byte(s), &spec.Kwargs); err != nil || spec.Kwargs == nil {
			var v any
			if json.Unmarshal([]byte(s), &v) == nil {
				return fail("--kwargs must be a JSON object")
			}
			return fail("Invalid JSON in --kwargs: %v", err)
		}
	}
	onStop := worker.StopMode(c.String("on-signal"))
	if onStop != worker.Finish && onStop != worker.Cancel {
		return fail("--on-signal must be finish or cancel, not %q", onStop)
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	broker := cfg.Backend
	if c.IsSet("broker") {
		broker = c.String("broker")
	}
	if err := reachableFromHere(broker, log); err != nil {
		return err
	}
	heartbeat, idle := cfg.HeartbeatInterval, cfg.IdleTimeout
	if c.IsSet("heartbeat") {
		heartbeat = c.Float64("heartbeat")
	}
	if c.IsSet("idle-timeout") {
		idle = c.Float64("idle-timeout")
	}
	if heartbeat <= 0 {
		return fail("--heartbeat must be positive")
	}
	spin := cfg.WorkerSpinUS
	if c.IsSet("spin-us") {
		spin = c.Int("spin-us")
	}
	if spin < 0 {
		return fail("--spin-us must be zero or positive")
	}
	batchSize, batchAtoms, batchWait := cfg.BatchSize, cfg.BatchAtoms, cfg.BatchWaitMS
	if c.IsSet("batch-size") {
		batchSize = c.Int("batch-size")
	}
	if c.IsSet("batch-atoms") {
		batchAtoms = c.Int("batch-atoms")
	}
	if c.IsSet("batch-wait-ms") {
		batchWait = c.Float64("batch-wait-ms")
	}
	switch {
	case batchSize < 1:
		return fail("--batch-size must be 1 or more")
	case batchAtoms < 0:
		return fail("--batch-atoms must be zero or positive")
	case batchWait < 0 || batchWait > 10000:
		return fail("--batch-wait-ms must be between 0 and 10000")
	}
	keys, err := peerKeys(c)
	if err != nil {
		return err
	}
	budget, err := threadBudget(c, log)
	if err != nil {
		return err
	}

	host, err := openPython(c)
	if err != nil {
		return err
	}
	defer host.Close()
	ctx := c.Context
	factory, err := host.Resolve(ctx, spec)
	if err != nil {
		return pyFail("Error loading calculator", err)
	}
	for _, w := range factory.Warnings {
		log.Warn(w)
	}
	calc, err := factory.New(ctx)
	if err != nil {
		return pyFail("Error creating calculator", err)
	}
	log.Info("serving", "calc", factory.Name, "factory", factory.Description, "class", calc.Class,
		"python", host.Info().Executable, "mode", host.Mode(), "broker", broker)

	if budget.torch {
		if err := host.SetThreads(ctx, budget.threads); err != nil {
			log.Warn("could not set torch's threads", "err", err)
		}
	}
	wc := &worker.Calc{Calc: calc, Log: log, Kwargs: spec.Kwargs}
	var batch worker.BatchConfig
	var batchHandler worker.BatchHandler
	if batchSize > 1 {
		where, err := calc.BatchPath(ctx)
		switch {
		case err != nil:
			log.Warn("this calculator cannot batch; serving one request at a time", "err", err)
		case where == "":
			log.Warn("this calculator has no batch path (a calculate_batch method, an entry point's batch adapter, "+
				"or a built-in one for its class); serving one request at a time", "class", calc.Class)
		default:
			log.Info("batching", "via", where, "batch", batchSize, "batch_atoms", batchAtoms, "batch_wait_ms", batchWait)
			batch = worker.BatchConfig{Size: batchSize, Atoms: batchAtoms, Wait: time.Duration(batchWait * float64(time.Millisecond))}
			batchHandler = wc.HandleBatch
		}
	}
	direct, local := "", ""
	if !c.Bool("no-direct") {
		direct = directEndpoint(broker)
		if strings.HasPrefix(direct, "tcp://") {
			local = localEndpoint() // for a session's client on this host
		}
	}
	w, err := worker.New(worker.Config{
		Name:           factory.Name,
		Broker:         broker,
		Heartbeat:      seconds(heartbeat),
		IdleTimeout:    seconds(idle),
		OnStop:         onStop,
		MaxMessageSize: cfg.MaxMessageSize,
		Spin:           time.Duration(spin) * time.Microsecond,
		Handler:        wc.Handle,
		Batch:          batch,
		BatchHandler:   batchHandler,
		Threads:        budget.threads,
		CPUs:           budget.cpus,
		GPUMemory: func() int64 {
			n, err := host.GPUMemory(ctx)
			if err != nil {
				return -1
			}
			return n
		},
		Curve:       keys,
		Direct:      direct,
		DirectLocal: local,
		Logger:      log,
	})
	if err != nil {
		return fail("%v", err)
	}
	defer w.Close()
	// The protocol loop runs on the Python thread (GIL released while it
	// waits on the socket), so each request's Compute runs right there
	// instead of being handed to that thread and back: two cross-thread
	// wake-ups saved per request. BUSY still comes from a goroutine of
	// its own, whatever Python does.
	err = host.Run(ctx, func() error { return w.Run(ctx) })
	if err != nil && !errors.Is(err, worker.ErrIdle) {
		return fail("%v", err)
	}
	return nil
}

// openPython starts the interpreter chosen by --python and friends.
func openPython(c *cli.Context) (*pyhost.Host, error) {
	mode, err := pyhost.ParseMode(c.String("python-mode"))
	if err != nil {
		return nil, fail("%v", err)
	}
	ch, err := pyhost.Choose(c.String("python"))
	if err != nil {
		return nil, fail("no Python interpreter found (give --python): %v", err)
	}
	// PYTHONPATH is the user's way to put their own modules (a registry,
	// a factory) in reach, as it is for aserpc 0.1.3's Python worker:
	// pyhost drops it by default, so hand it over explicitly.
	env := map[string]string{}
	if p, ok := os.LookupEnv("PYTHONPATH"); ok {
		env["PYTHONPATH"] = p
	}
	// OpenBLAS (numpy's BLAS) keeps its threads spinning for 2^28 cycles
	// (~0.1 s) after every call that woke them: ASE's neighbour lists make
	// one every few MD steps, and those spinning threads take the cores the
	// broker, the client and this worker's next request need (an H2O MD
	// step through a worker: ~480-580 us of overhead with them, ~400
	// without, on 2 cores). Let them sleep at once, unless the user chose.
	if _, ok := os.LookupEnv("OPENBLAS_THREAD_TIMEOUT"); !ok {
		env["OPENBLAS_THREAD_TIMEOUT"] = "4"
	}
	h, err := pyhost.Open(c.Context, pyhost.Config{Python: ch.Python, Reason: ch.Reason, Mode: mode, Env: env})
	if err != nil {
		return nil, fail("start Python %s: %v", ch.Python, err)
	}
	return h, nil
}

// pyFail turns a Python error into the user's message: the not-found text
// as is, anything else with its traceback.
func pyFail(what string, err error) error {
	var pe *pyhost.PyError
	if !errors.As(err, &pe) {
		if errors.Is(err, context.Canceled) {
			return fail("%s: interrupted", what)
		}
		return fail("%s: %v", what, err)
	}
	if pyhost.IsNotFound(err) {
		return fail("%s", pe.Message)
	}
	tb := strings.TrimRight(pe.Traceback, "\n")
	if tb == "" {
		return fail("%s: %v", what, pe)
	}
	return fail("%s: %v\n%s", what, pe, tb)
}

// budget is a worker's thread budget and CPU placement (issue 22).
type budget struct {
	threads int    // 0: unchanged
	cpus    string // "" : all allowed
	torch   bool   // set torch's intra-op threads too (the user set no OMP_NUM_THREADS)
}

// threadVars are the thread-count variables a budget sets unless the user
// set them (the user always wins).
var threadVars = []string{"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}

// threadBudget applies --cpus/--threads (or ASERPC_WORKER_CPUS/THREADS,
// which the manager sets for its children): the process is pinned to the
// CPUs, and the thread variables are set to the budget before Python
// starts, so that OpenMP, MKL and OpenBLAS size their pools by it.
func threadBudget(c *cli.Context, log *slog.Logger) (budget, error) {
	var b budget
	cpuList := os.Getenv("ASERPC_WORKER_CPUS")
	if c.IsSet("cpus") {
		cpuList = c.String("cpus")
	}
	if cpuList != "" {
		cpus, err := cpuset.Parse(cpuList)
		if err != nil {
			return b, fail("--cpus: %v", err)
		}
		allowed, err := cpuset.Allowed()
		if err == nil {
			ok := map[int]bool{}
			for _, a := range allowed {
				ok[a] = true
			}
			for _, x := range cpus {
				if !ok[x] {
					return b, fail("--cpus %s: CPU %d is not one this process may use (%s)", cpuList, x, cpuset.Format(allowed))
				}
			}
		}
		if err := cpuset.Pin(0, cpus); err != nil {
			return b, fail("--cpus %s: %v", cpuList, err)
		}
		b.cpus = cpuset.Format(cpus)
		b.threads = len(cpus)
	}
	if s := os.Getenv("ASERPC_WORKER_THREADS"); s != "" && !c.IsSet("threads") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return b, fail("ASERPC_WORKER_THREADS=%q: want a positive integer", s)
		}
		b.threads = n
	}
	if c.IsSet("threads") {
		if c.Int("threads") < 1 {
			return b, fail("--threads must be 1 or more")
		}
		b.threads = c.Int("threads")
	}
	if b.threads == 0 {
		return b, nil
	}
	_, userOMP := os.LookupEnv("OMP_NUM_THREADS")
	b.torch = !userOMP // torch follows the user's OMP_NUM_THREADS if there is one
	var kept []string
	for _, k := range threadVars {
		if v, ok := os.LookupEnv(k); ok {
			kept = append(kept, k+"="+v)
			continue
		}
		os.Setenv(k, strconv.Itoa(b.threads))
	}
	args := []any{"threads", b.threads, "cpus", orAll(b.cpus)}
	if len(kept) > 0 {
		args = append(args, "kept", strings.Join(kept, " "))
	}
	log.Info("thread budget", args...)
	return b, nil
}

func orAll(s string) string {
	if s == "" {
		return "all allowed"
	}
	return s
}

// reachableFromHere refuses an ipc:// broker address that a manager on
// another host handed this worker (srun put it on another node): the
// socket is a file on the manager's host, so the worker would wait for a
// broker it can never reach. Where the socket is visible here (a mounted
// ipc directory, a container with a hostname of its own) it only warns.
func reachableFromHere(broker string, log *slog.Logger) error {
	path, ok := strings.CutPrefix(broker, "ipc://")
	managerHost := os.Getenv(spawn.ManagerHostEnv)
	here, err := os.Hostname()
	if !ok || managerHost == "" || err != nil || here == managerHost {
		return nil
	}
	if _, err := os.Stat(path); err == nil {
		log.Warn("the manager that started this worker runs on another host; its ipc:// broker address reaches "+
			"the broker only if this socket is the same file there (a shared or mounted directory)",
			"broker", broker, "manager_host", managerHost, "host", here)
		return nil
	}
	return fail("the broker address %s is a unix socket on host %s, where the manager that started this worker runs; "+
		"this worker runs on host %s, where no such socket exists, so it could never reach the broker.\n"+
		"Give the manager --advertise tcp://HOST:PORT (config advertise_backend): a tcp backend of the broker that %s can reach "+
		"(start the broker with --backend tcp://...)", broker, managerHost, here, here)
}

// directEndpoint is where the worker serves a session's client directly.
// For an ipc broker: its unix socket (localEndpoint). For a tcp broker: a
// tcp port (see below), and the unix socket too for clients on this host.
func directEndpoint(broker string) string {
	if rest, ok := strings.CutPrefix(broker, "tcp://"); ok {
		// The address this host reaches the broker from: the client, near
		// the broker, most likely reaches this host there too (it falls
		// back through the broker when it does not). A port of the
		// system's choosing; CURVE with a key pair of this process.
		conn, err := net.Dial("udp", rest) // sends nothing: only picks the route
		if err != nil {
			return ""
		}
		defer conn.Close()
		ip := conn.LocalAddr().(*net.UDPAddr).IP
		if ip.To4() == nil {
			return "tcp://[" + ip.String() + "]:*"
		}
		return "tcp://" + ip.String() + ":*"
	}
	if !strings.HasPrefix(broker, "ipc://") {
		return ""
	}
	return localEndpoint()
}

// localEndpoint is the worker's plain unix socket for a session's client
// on this host: named by pid in a directory only this user may enter
// ($XDG_RUNTIME_DIR/aserpc, else /tmp/aserpc-UID; not the broker's ipc
// directory, which the broker removes when it exits), "" when that
// directory is not ours.
func localEndpoint() string {
	dir := filepath.Join(os.TempDir(), "aserpc-"+strconv.Itoa(os.Getuid()))
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		dir = filepath.Join(d, "aserpc")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ""
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "" // someone else's, or open to others: no direct path
	}
	p := filepath.Join(dir, "w-"+strconv.Itoa(os.Getpid())+".sock")
	if len(p) > 107 {
		return ""
	}
	return "ipc://" + p
}
