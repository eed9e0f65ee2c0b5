package broker

// Prometheus metrics (docs/metrics.md lists each name and label). The
// router counts and times events as they happen, through the nil-safe
// methods below (a router without metrics pays a nil check); what is a
// state rather than an event (queues, workers, what each worker reported,
// the manager's children) is copied by the loop into a snapshot each tick
// and read by the scrape, so the router stays owned by one goroutine.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/aserpc/aserpc/wire"
)

// unknownCalc labels requests for a calculator nobody serves or can
// spawn: clients choose names freely, and a label per misspelling would
// grow without bound.
const unknownCalc = "(unknown)"

// Metrics are a broker's Prometheus metrics.
type Metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	queueWait     *prometheus.HistogramVec
	service       *prometheus.HistogramVec
	redispatched  *prometheus.CounterVec
	spawns        *prometheus.CounterVec
	spawnFailures *prometheus.CounterVec
	malformed     *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	undeliverable prometheus.Counter
	stale         prometheus.Counter
	unknownCmd    prometheus.Counter
	disconnects   prometheus.Counter
	loop          prometheus.Histogram

	mu   sync.Mutex
	snap snapshot
}

type snapshot struct {
	services []serviceSnap
	workers  []workerSnap
	children map[[2]string]int // (calc, state) → children
	manager  bool
}

type serviceSnap struct {
	name                             string
	pending, idle, busy, held, slots int
	reserved                         int // workers held by a session
	parked                           int // of those, the ones waiting for their session's client
	batch                            *wire.BatchStats
}

type workerSnap struct {
	calc, host, pid string
	info            *wire.WorkerInfo
}

// NewMetrics makes the broker's metrics, with Go's and the process's own.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{reg: reg}
	byCalc := []string{"calc"}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aserpc_requests_total",
		Help: "Requests answered, by calculator and outcome: ok, error (the calculator's), no_workers, queue_full, " +
			"queue_timeout, worker_lost, spawn_failed, shutting_down, cancelled."}, []string{"calc", "outcome"})
	buckets := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800}
	m.queueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "aserpc_queue_wait_seconds",
		Help: "Time from a request's arrival to its first dispatch to a worker.", Buckets: buckets}, byCalc)
	m.service = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "aserpc_service_seconds",
		Help: "Time from a request's (last) dispatch to its worker's response.", Buckets: buckets}, byCalc)
	m.redispatched = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aserpc_redispatched_total",
		Help: "Jobs handed to another worker after theirs was lost."}, byCalc)
	m.spawns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aserpc_spawn_requests_total",
		Help: "Workers asked of the manager."}, byCalc)
	m.spawnFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aserpc_spawn_failures_total",
		Help: "Spawns that failed or never registered."}, byCalc)
	m.malformed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aserpc_malformed_messages_total",
		Help: "Messages that broke a frame layout, by socket side (frontend, backend)."}, []string{"side"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aserpc_message_bytes_total",
		Help: "Bytes of messages, by socket side and direction (in, out)."}, []string{"side", "direction"})
	m.undeliverable = prometheus.NewCounter(prometheus.CounterOpts{Name: "aserpc_undeliverable_replies_total",
		Help: "Replies whose client was gone."})
	m.stale = prometheus.NewCounter(prometheus.CounterOpts{Name: "aserpc_stale_responses_total",
		Help: "Worker responses nobody waited for."})
	m.unknownCmd = prometheus.NewCounter(prometheus.CounterOpts{Name: "aserpc_unknown_commands_total",
		Help: "Messages with an unknown command byte."})
	m.disconnects = prometheus.NewCounter(prometheus.CounterOpts{Name: "aserpc_worker_disconnects_total",
		Help: "Workers whose connection closed without a goodbye."})
	m.loop = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aserpc_broker_loop_seconds",
		Help:    "Time the broker's loop spent on one message.",
		Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2}})
	reg.MustRegister(m.requests, m.queueWait, m.service, m.redispatched, m.spawns, m.spawnFailures, m.malformed,
		m.bytes, m.undeliverable, m.stale, m.unknownCmd, m.disconnects, m.loop, (*stateCollector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the text exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Serve serves /metrics on addr until ctx is done. It returns once
// listening (or failing to), with the address it listens on.
func (m *Metrics) Serve(ctx context.Context, addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "aserpc broker: metrics are at /metrics", http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go srv.Serve(ln) // (returns when closed; nothing to report to after that)
	return ln.Addr().String(), nil
}

// The router's hooks; each is a no-op on a nil *Metrics.

func (m *Metrics) outcome(calc, outcome string) {
	if m != nil {
		m.requests.WithLabelValues(calc, outcome).Inc()
	}
}

func (m *Metrics) dispatched(calc string, wait time.Duration) {
	if m != nil {
		m.queueWait.WithLabelValues(calc).Observe(wait.Seconds())
	}
}

func (m *Metrics) served(calc string, took time.Duration) {
	if m != nil {
		m.service.WithLabelValues(calc).Observe(took.Seconds())
	}
}

func (m *Metrics) redispatch(calc string) {
	if m != nil {
		m.redispatched.WithLabelValues(calc).Inc()
	}
}

func (m *Metrics) spawn(calc string) {
	if m != nil {
		m.spawns.WithLabelValues(calc).Inc()
	}
}

func (m *Metrics) spawnFailed(calc string) {
	if m != nil {
		m.spawnFailures.WithLabelValues(calc).Inc()
	}
}

func (m *Metrics) malformedMsg(side string) {
	if m != nil {
		m.malformed.WithLabelValues(side).Inc()
	}
}

func (m *Metrics) undeliverableReply() {
	if m != nil {
		m.undeliverable.Inc()
	}
}

func (m *Metrics) staleResponse() {
	if m != nil {
		m.stale.Inc()
	}
}

func (m *Metrics) unknownCommand() {
	if m != nil {
		m.unknownCmd.Inc()
	}
}

func (m *Metrics) disconnect() {
	if m != nil {
		m.disconnects.Inc()
	}
}

// Message notes one message handled by the loop: its side, size and the
// time the loop spent on it.
func (m *Metrics) Message(front bool, bytes int, took time.Duration) {
	if m == nil {
		return
	}
	m.bytes.WithLabelValues(side(front), "in").Add(float64(bytes))
	m.loop.Observe(took.Seconds())
}

// Sent notes bytes sent on a side.
func (m *Metrics) Sent(front bool, bytes int) {
	if m != nil {
		m.bytes.WithLabelValues(side(front), "out").Add(float64(bytes))
	}
}

func side(front bool) string {
	if front {
		return "frontend"
	}
	return "backend"
}

// outcomeOf classifies an error a client gets from the broker.
func outcomeOf(msg string) string {
	switch {
	case strings.HasPrefix(msg, errShuttingDown):
		return "shutting_down"
	case strings.HasPrefix(msg, "No workers available"):
		return "no_workers"
	case strings.HasPrefix(msg, "Queue for calculator"):
		return "queue_full"
	case strings.HasPrefix(msg, "Request timed out waiting"):
		return "queue_timeout"
	case strings.HasPrefix(msg, errWorkerDied), strings.HasPrefix(msg, errWorkerLeft):
		return "worker_lost"
	case strings.HasPrefix(msg, "Failed to spawn worker"):
		return "spawn_failed"
	}
	return "error"
}

// update replaces the snapshot the scrape reads.
func (m *Metrics) update(s snapshot) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.snap = s
	m.mu.Unlock()
}

// stateCollector exports the snapshot. It describes nothing up front (an
// "unchecked" collector): its series come and go with calculators and
// workers.
type stateCollector Metrics

func (c *stateCollector) Describe(chan<- *prometheus.Desc) {}

var (
	descPending   = prometheus.NewDesc("aserpc_pending_requests", "Requests waiting for a worker.", []string{"calc"}, nil)
	descWorkers   = prometheus.NewDesc("aserpc_workers", "Registered workers, by state (idle, busy, reserved: held by a session and waiting for its client).", []string{"calc", "state"}, nil)
	descHeld      = prometheus.NewDesc("aserpc_held_jobs", "Jobs the calculator's workers hold (computing or collected for a batch).", []string{"calc"}, nil)
	descSlots     = prometheus.NewDesc("aserpc_job_slots", "Jobs the calculator's workers may hold at once (one each; a batching worker's batch size).", []string{"calc"}, nil)
	descBatchSize = prometheus.NewDesc("aserpc_batch_size", "Structures per model call of batching workers (as they report it).", []string{"calc"}, nil)
	descBatchWait = prometheus.NewDesc("aserpc_batch_wait_seconds", "How long a batch's first job waited for others.", []string{"calc"}, nil)
	descBatchAtom = prometheus.NewDesc("aserpc_batch_atoms_total", "Atoms computed in batching workers' model calls.", []string{"calc"}, nil)
	descOOM       = prometheus.NewDesc("aserpc_batch_oom_splits_total", "Batches split after an out-of-memory error.", []string{"calc"}, nil)
	descCompute   = prometheus.NewDesc("aserpc_worker_compute_seconds_total", "Time a worker spent computing (its own count).", []string{"calc", "host", "pid"}, nil)
	descHandled   = prometheus.NewDesc("aserpc_worker_requests_total", "Requests a worker answered (its own count).", []string{"calc", "host", "pid"}, nil)
	descRSS       = prometheus.NewDesc("aserpc_worker_resident_memory_bytes", "A worker's resident memory.", []string{"calc", "host", "pid"}, nil)
	descGPU       = prometheus.NewDesc("aserpc_worker_gpu_memory_bytes", "GPU memory torch has allocated in a worker (when torch uses CUDA there).", []string{"calc", "host", "pid"}, nil)
	descChildren  = prometheus.NewDesc("aserpc_manager_children", "The manager's children, by state.", []string{"calc", "state"}, nil)
	descManager   = prometheus.NewDesc("aserpc_manager_connected", "1 when a manager is registered.", nil, nil)
)

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	s := c.snap
	c.mu.Unlock()
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ctr := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, sv := range s.services {
		g(descPending, float64(sv.pending), sv.name)
		g(descWorkers, float64(sv.idle), sv.name, "idle")
		g(descWorkers, float64(sv.busy), sv.name, "busy")
		g(descWorkers, float64(sv.parked), sv.name, "reserved")
		g(descHeld, float64(sv.held), sv.name)
		g(descSlots, float64(sv.slots), sv.name)
		if b := sv.batch; b != nil {
			ch <- histogram(descBatchSize, b.Sizes, floats(wire.SizeBuckets), b.Batches, float64(b.Structures), sv.name)
			waits := make([]float64, len(wire.WaitBucketsMs))
			for i, ms := range wire.WaitBucketsMs {
				waits[i] = ms / 1000
			}
			var n int64
			for _, v := range b.Waits {
				n += v
			}
			ch <- histogram(descBatchWait, b.Waits, waits, n, float64(b.WaitMicros)/1e6, sv.name)
			ctr(descBatchAtom, float64(b.Atoms), sv.name)
			ctr(descOOM, float64(b.Splits), sv.name)
		}
	}
	for _, w := range s.workers {
		if w.info == nil {
			continue
		}
		ctr(descCompute, w.info.ComputeSeconds, w.calc, w.host, w.pid)
		ctr(descHandled, float64(w.info.Handled), w.calc, w.host, w.pid)
		if w.info.RSS > 0 {
			g(descRSS, float64(w.info.RSS), w.calc, w.host, w.pid)
		}
		if w.info.GPU >= 0 {
			g(descGPU, float64(w.info.GPU), w.calc, w.host, w.pid)
		}
	}
	keys := make([][2]string, 0, len(s.children))
	for k := range s.children {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		g(descChildren, float64(s.children[k]), k[0], k[1])
	}
	mgr := 0.0
	if s.manager {
		mgr = 1
	}
	g(descManager, mgr)
}

func floats(v []int64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// histogram makes a Prometheus histogram from per-bucket counts (the last
// bucket counting what is above the last bound).
func histogram(d *prometheus.Desc, counts []int64, bounds []float64, n int64, sum float64, labels ...string) prometheus.Metric {
	cum := map[float64]uint64{}
	var c uint64
	for i, b := range bounds {
		if i < len(counts) {
			c += uint64(max(counts[i], 0))
		}
		cum[b] = c
	}
	return prometheus.MustNewConstHistogram(d, uint64(max(n, 0)), sum, cum, labels...)
}

// snapshot copies what the metrics show of the router's state.
func (r *Router) snapshot() snapshot {
	s := snapshot{manager: r.mgr != nil}
	for name, sv := range r.services {
		s.services = append(s.services, figures(sv))
		for _, w := range sv.workers {
			if w.info != nil {
				s.workers = append(s.workers, workerSnap{calc: name, host: w.info.Host, pid: strconv.Itoa(w.pid), info: w.info})
			}
		}
	}
	if r.mgr != nil {
		if kids, ok := r.mgr.children.([]any); ok {
			s.children = map[[2]string]int{}
			for _, k := range kids {
				c, _ := k.(map[string]any)
				name, _ := c["name"].(string)
				state, _ := c["state"].(string)
				if name != "" && state != "" {
					s.children[[2]string{name, state}]++
				}
			}
		}
	}
	return s
}

// calcLabel is calc, or unknownCalc for a name nobody serves or can spawn.
func (r *Router) calcLabel(calc string) string {
	if s := r.services[calc]; s != nil && (len(s.workers) > 0 || len(s.starting) > 0) {
		return calc
	}
	if r.mgr != nil && r.mgr.spawnable[calc] {
		return calc
	}
	return unknownCalc
}
