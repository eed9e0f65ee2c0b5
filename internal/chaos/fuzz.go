package main

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/wire"
)

// Fuzz is a live fuzzing run: Senders goroutines send random and
// malformed messages at the broker's frontend (as DEALER and REQ clients)
// and backend (as DEALERs pretending to be workers and managers), and
// malformed REQUEST bodies for LJ that the broker hands to the real
// workers, for Duration, while Load's clients send valid requests.
//
// Two things are left out on purpose, because the protocol trusts them
// until workers authenticate (CURVE): a fuzz peer never answers a real
// LJ job with a result (a registered worker that lies produces wrong
// results by definition), and never sends WORKER_SHUTDOWN for LJ (a valid
// command that stops the workers). Fuzz peers do register as LJ workers
// and then desert their job (DISCONNECT, re-register under another name,
// or vanish), which the broker must survive by re-dispatching.
type Fuzz struct {
	Settings
	Load
	Duration time.Duration
	Senders  int
}

// FuzzReport is what a Fuzz run saw.
type FuzzReport struct {
	Clients ClientResult
	// Sent counts the fuzz messages by kind; Replies the messages the
	// broker sent back to fuzz sockets.
	Sent    map[string]int
	Replies int
	// WorkerErrors are error RESPONSEs from workers that fuzz clients got.
	WorkerErrors int
	// RSS of the broker in KiB: before the fuzzing (with valid traffic
	// flowing), the highest seen during it, and after it (once the fake
	// workers and managers it registered have timed out).
	RSSBefore, RSSPeak, RSSAfter int
	// WorkerRSSBefore and WorkerRSSAfter are the workers' RSS in KiB,
	// summed (reported, not bounded: Python's allocator keeps memory).
	WorkerRSSBefore, WorkerRSSAfter int
	// WorkerDeaths are workers the manager had to start again: a worker
	// that died on a malformed request.
	WorkerDeaths int
	// Leftover is what the broker still held for fuzz peers after they
	// timed out (workers of other calculators, queued requests).
	Leftover string
	Counters map[string]int
	Duration time.Duration
	workers  int
}

// RSSBound is the most the broker's RSS may grow over a fuzz run: libzmq
// and Go keep some of the memory that bursts of big frames needed, but
// nothing may grow with the number of messages.
const RSSBound = 64 << 10 // KiB

// Problems lists what makes the run a failure.
func (r FuzzReport) Problems() []string {
	var p []string
	if r.Clients.Lost > 0 || r.Clients.Wrong > 0 {
		p = append(p, fmt.Sprintf("valid traffic: %d lost, %d wrong of %d", r.Clients.Lost, r.Clients.Wrong, r.Clients.Requests))
	}
	if r.WorkerDeaths > 0 {
		p = append(p, fmt.Sprintf("%d workers died under malformed requests", r.WorkerDeaths))
	}
	if r.RSSAfter-r.RSSBefore > RSSBound {
		p = append(p, fmt.Sprintf("broker RSS grew from %d to %d KiB (bound +%d KiB)", r.RSSBefore, r.RSSAfter, RSSBound))
	}
	if r.Leftover != "" {
		p = append(p, "the broker still holds state of fuzz peers after their timeouts: "+r.Leftover)
	}
	return p
}

// String is the report as `just fuzz-live` prints it.
func (r FuzzReport) String() string {
	var b strings.Builder
	total := 0
	var kinds []string
	for k, n := range r.Sent {
		total += n
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "  fuzz      %d messages in %.0fs (%.0f/s), %d replies to fuzz sockets, %d of them workers refusing a malformed request\n",
		total, r.Duration.Seconds(), float64(total)/r.Duration.Seconds(), r.Replies, r.WorkerErrors)
	for i := 0; i < len(kinds); i += 4 {
		fmt.Fprintf(&b, "            %s\n", strings.Join(kinds[i:min(i+4, len(kinds))], ", "))
	}
	c := r.Clients
	fmt.Fprintf(&b, "  valid     %d requests: %d ok, %d wrong, %d lost; p50 %s p99 %s max %s; %d client retries\n",
		c.Requests, c.OK, c.Wrong, c.Lost, ms(c.Quantile(0.5)), ms(c.Quantile(0.99)), ms(c.Quantile(1)), c.Retries())
	fmt.Fprintf(&b, "  broker    RSS before %.1f MiB, peak %.1f MiB, after %.1f MiB (bound: after ≤ before + %d MiB)\n",
		float64(r.RSSBefore)/1024, float64(r.RSSPeak)/1024, float64(r.RSSAfter)/1024, RSSBound>>10)
	k := r.Counters
	fmt.Fprintf(&b, "  counters  malformed %d, unknown command %d, stale responses %d, undeliverable %d, redispatched %d, expired %d, requests %d, responses %d\n",
		k["malformed"], k["unknown_command"], k["stale_responses"], k["undeliverable"], k["redispatched"], k["expired"], k["requests"], k["responses"])
	fmt.Fprintf(&b, "  workers   %d died; RSS of all %d before %.1f MiB, after %.1f MiB\n", r.WorkerDeaths, r.workers,
		float64(r.WorkerRSSBefore)/1024, float64(r.WorkerRSSAfter)/1024)
	for _, f := range c.Failures {
		fmt.Fprintf(&b, "  FAILED    %s\n", f)
	}
	return b.String()
}

// RunFuzz runs cfg.
func RunFuzz(ctx context.Context, cfg Fuzz) (rep FuzzReport, err error) {
	if cfg.Senders <= 0 {
		cfg.Senders = 4
	}
	c, err := newCluster(cfg.Settings)
	if err != nil {
		return rep, err
	}
	defer func() {
		logs := c.close(err != nil)
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, logs)
		}
	}()
	// Short queue and spawn timeouts: what fuzz peers leave behind must
	// expire within the run.
	c.brokerArgs = []string{"--queue-timeout", "5", "--spawn-timeout", "5"}
	b, err := c.startBroker()
	if err != nil {
		return rep, err
	}
	if err = c.startManager(); err != nil {
		return rep, err
	}
	cs, err := c.startClients(cfg.Load)
	if err != nil {
		return rep, err
	}
	defer cs.stop()
	// Valid traffic first, so RSSBefore is the broker at work.
	time.Sleep(3 * time.Second)
	pid := b.Cmd.Process.Pid
	if rep.RSSBefore, err = rssKiB(pid); err != nil {
		return rep, err
	}
	spawns0 := c.spawns()
	rep.workers = c.Workers
	rep.WorkerRSSBefore = c.workerRSS()
	c.Logf("fuzzing for %s with %d senders; broker RSS %d KiB", cfg.Duration, cfg.Senders, rep.RSSBefore)

	f := &fuzzer{front: c.front, back: c.back, sent: map[string]int{}}
	fctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Senders; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			f.run(fctx, rand.New(rand.NewSource(cfg.Seed*1000+int64(i))), i)
		}(i)
	}
	t0 := time.Now()
	for fctx.Err() == nil {
		if !b.Running() {
			break
		}
		if kib, err := rssKiB(pid); err == nil {
			rep.RSSPeak = max(rep.RSSPeak, kib)
		}
		select {
		case <-fctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	cancel()
	wg.Wait()
	rep.Duration = time.Since(t0)
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if !b.Running() {
		return rep, fmt.Errorf("the broker died while fuzzed:\n%s", lastLines(b.Logs(), 40))
	}
	c.Logf("fuzzing done; letting fuzz peers time out")
	cs.stop()
	if rep.Clients, err = cs.wait(2 * time.Minute); err != nil {
		return rep, err
	}
	rep.Sent, rep.Replies, rep.WorkerErrors = f.sent, f.replies, f.workerErrors
	rep.WorkerDeaths = c.spawns() - spawns0

	// Fake workers and managers time out after the worker timeout, queued
	// fuzz requests after the queue timeout (5 s), spawns after the spawn
	// timeout (5 s): then only LJ's workers may be left.
	var st status
	var raw map[string]any
	err = c.waitFor(c.WorkerTimeout+15*time.Second, "fuzz peers' state gone", func() bool {
		raw, err = c.control(wire.Status, time.Second)
		if err != nil {
			return false
		}
		rep.Leftover = leftover(raw, c.Workers)
		return rep.Leftover == ""
	})
	if err != nil && rep.Leftover == "" {
		return rep, err
	}
	err = nil
	if st, err = c.status(time.Second); err != nil {
		return rep, err
	}
	rep.Counters = st.counters
	if rep.RSSAfter, err = rssKiB(pid); err != nil {
		return rep, err
	}
	rep.WorkerRSSAfter = c.workerRSS()
	return rep, nil
}

// workerRSS sums the RSS of the manager's running workers, in KiB.
func (c *cluster) workerRSS() int {
	st, err := c.status(time.Second)
	if err != nil {
		return 0
	}
	sum := 0
	for _, pid := range st.children {
		if kib, err := rssKiB(pid); err == nil && c.ourWorker(pid) {
			sum += kib
		}
	}
	return sum
}

// leftover describes what STATUS holds beyond LJ's workers and the
// manager: "" when nothing.
func leftover(st map[string]any, workers int) string {
	var out []string
	ws, _ := st["workers"].(map[string]any)
	for name, v := range ws {
		w, _ := v.(map[string]any)
		if name != calcName || toInt(w["total"]) != workers {
			out = append(out, fmt.Sprintf("workers[%q]=%v", name, w))
		}
	}
	if p, _ := st["pending_requests"].(map[string]any); len(p) > 0 {
		out = append(out, fmt.Sprintf("pending=%v", p))
	}
	mgr, _ := st["manager"].(map[string]any)
	if sp, _ := mgr["spawning"].(map[string]any); len(sp) > 0 {
		out = append(out, fmt.Sprintf("spawning=%v", sp))
	}
	if names, _ := mgr["spawnable"].([]any); len(names) != 1 || names[0] != calcName {
		out = append(out, fmt.Sprintf("spawnable=%v", names))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// fuzzer is the state the senders share.
type fuzzer struct {
	front, back string

	mu      sync.Mutex
	sent    map[string]int
	replies int
	// workerErrors are RESPONSEs with a worker's error type that fuzz
	// clients got: malformed requests a real worker refused.
	workerErrors int
	clients      [][]byte // client identities fake workers saw in jobs
}

func (f *fuzzer) count(kind string, replies int) {
	f.mu.Lock()
	if kind != "" {
		f.sent[kind]++
	}
	f.replies += replies
	f.mu.Unlock()
}

// sawClient remembers a client identity for forged RESPONSEs.
func (f *fuzzer) sawClient(id []byte) {
	f.mu.Lock()
	if len(f.clients) < 256 {
		f.clients = append(f.clients, append([]byte(nil), id...))
	} else {
		f.clients[rand.Intn(len(f.clients))] = append([]byte(nil), id...)
	}
	f.mu.Unlock()
}

// someClient is a client identity to forge a RESPONSE for: one seen, one
// next to it (the broker numbers identities in sequence, so the real
// clients' are near), or random.
func (f *fuzzer) someClient(rng *rand.Rand) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.clients) == 0 || rng.Intn(4) == 0 {
		return randBytes(rng, 1+rng.Intn(8))
	}
	id := append([]byte(nil), f.clients[rng.Intn(len(f.clients))]...)
	if len(id) > 0 && rng.Intn(2) == 0 {
		id[len(id)-1] += byte(rng.Intn(16) - 8)
	}
	return id
}

// maxUnread caps the requests of the client that never reads its replies.
// The broker keeps each unread reply (up to its send high-water mark,
// 100000 per client) and, as it forwards frames without copying, each
// pins the libzmq receive buffer it arrived in: ~6 KiB apiece measured.
// That is bounded per client by design, not a leak; uncapped, it would
// make the RSS check measure the run's length instead of leaks.
const maxUnread = 1000

// peer is one fuzz socket; it is replaced now and then so identities vary.
type peer struct {
	sock  *zmq.Socket
	kind  zmq.Type
	front bool
	sends int
	// reg is the name the broker has this backend peer registered under
	// ("" when none), tracked from what the peer sent (see send). A peer
	// registered as LJ holds real clients' jobs: it deserts them and never
	// answers one.
	reg string
}

func (f *fuzzer) open(ctx *zmq.Context, t zmq.Type, ep string) *peer {
	s, err := ctx.NewSocket(t)
	if err != nil {
		return nil
	}
	s.SetLinger(0)
	s.SetSndhwm(1000)
	s.SetRcvhwm(1000)
	s.SetSndtimeo(0)
	if err := s.Connect(ep); err != nil {
		s.Close()
		return nil
	}
	return &peer{sock: s, kind: t, front: ep == f.front}
}

// run is one sender: it alternates between a frontend and a backend peer,
// sending one message per step and draining whatever came back.
func (f *fuzzer) run(ctx context.Context, rng *rand.Rand, idx int) {
	zctx, err := zmq.NewContext()
	if err != nil {
		return
	}
	defer zctx.Term()
	var front, back, silent *peer
	closeAll := func() {
		for _, p := range []*peer{front, back, silent} {
			if p != nil {
				p.sock.Close()
			}
		}
	}
	defer closeAll()
	for ctx.Err() == nil {
		if front == nil || front.sends > 200+rng.Intn(400) || (front.kind == zmq.REQ && front.sends > 0) {
			if front != nil {
				front.sock.Close()
			}
			t := zmq.DEALER
			if rng.Intn(10) == 0 {
				t = zmq.REQ // REQ: one message, then a new socket
			}
			front = f.open(zctx, t, f.front)
		}
		if back == nil || back.sends > 100+rng.Intn(300) {
			if back != nil {
				back.sock.Close()
			}
			back = f.open(zctx, zmq.DEALER, f.back)
		}
		// One client that sends requests and never reads a reply.
		if idx == 0 && silent == nil {
			silent = f.open(zctx, zmq.DEALER, f.front)
		}
		if front == nil || back == nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		switch r := rng.Intn(100); {
		case r < 45:
			kind, msg := frontMessage(rng)
			f.send(front, kind, msg)
		case r < 90:
			kind, msg := f.backMessage(rng, back)
			f.send(back, kind, msg)
		case silent != nil && silent.sends < maxUnread && r < 93:
			f.send(silent, "front/unread-request", [][]byte{{}, wire.Request.Frame(), []byte(calcName), malformedRequest(rng)})
		default:
			kind, msg := stormMessage(rng)
			f.send(back, kind, msg)
		}
		f.drain(front, rng)
		f.drain(back, rng)
		// Pace a little: the point is variety under load, not saturating
		// two cores with the fuzzer itself.
		if rng.Intn(4) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

func (f *fuzzer) send(p *peer, kind string, msg [][]byte) {
	args := make([]any, len(msg))
	for i, m := range msg {
		args[i] = m
	}
	if len(args) == 0 {
		args = []any{[]byte{}}
	}
	if _, err := p.sock.SendMessageDontwait(args...); err == nil {
		f.count(kind, 0)
		if !p.front {
			p.reg = registered(p.reg, msg)
		}
	}
	p.sends++
}

// registered is the name the broker has a backend peer under after it
// received msg, by the broker's own rules: a READY or HEARTBEAT with a
// valid name (re)registers, a DISCONNECT deregisters, and a message of
// more than zmsg.MaxFrames frames is dropped unread.
func registered(reg string, msg [][]byte) string {
	if len(msg) < 2 || len(msg) > 7 || len(msg[0]) != 0 || len(msg[1]) != 1 {
		return reg
	}
	switch wire.Command(msg[1][0]) {
	case wire.Ready, wire.Heartbeat:
		if len(msg) > 2 && wire.ValidName(msg[2]) {
			return string(msg[2])
		}
	case wire.Disconnect:
		return ""
	}
	return reg
}

// drain reads what came back; a fake worker acts on the jobs it got.
func (f *fuzzer) drain(p *peer, rng *rand.Rand) {
	n := 0
	for i := 0; i < 64; i++ {
		msg, err := p.sock.RecvMessageBytes(zmq.DONTWAIT)
		if err != nil {
			break
		}
		n++
		if p.front {
			// A worker's answer to a malformed LJ request: a RESPONSE
			// that failed with the worker's error type.
			if len(msg) >= 3 && len(msg[0]) == 0 && string(msg[1]) == string(wire.Response.Frame()) {
				if r, err := wire.DecodeResponse(msg[2]); err == nil && !r.Success && r.ErrorType != "" {
					f.mu.Lock()
					f.workerErrors++
					f.mu.Unlock()
				}
			}
			continue
		}
		if p.kind != zmq.DEALER || len(msg) != 3 || len(msg[0]) != 0 || p.reg == "" {
			continue
		}
		// A job ["", client, body] on a registered fake worker.
		client := msg[1]
		f.sawClient(client)
		if p.reg == calcName {
			// Desert the real LJ job: the broker must give it to another
			// worker.
			switch rng.Intn(3) {
			case 0:
				f.send(p, "back/desert-disconnect", [][]byte{{}, wire.Disconnect.Frame(), []byte(p.reg)})
			case 1:
				f.send(p, "back/desert-rename", [][]byte{{}, wire.Ready.Frame(), []byte("deserter")})
			default:
				f.count("back/desert-vanish", 0)
				p.sends = 1 << 20 // replaced (closed) at the next step, job in hand
			}
			continue
		}
		switch rng.Intn(4) {
		case 0: // answer garbage for its own job: a fuzz client gets it
			f.send(p, "back/job-garbage-response", [][]byte{{}, wire.Response.Frame(), client, randBytes(rng, rng.Intn(64))})
		case 1: // BUSY forever would hold the job: answer late instead
			f.send(p, "back/job-busy", [][]byte{{}, wire.Busy.Frame(), []byte(p.reg)})
		case 2: // READY with a job in hand: must not get a second one
			f.send(p, "back/job-ready", [][]byte{{}, wire.Ready.Frame(), []byte(p.reg)})
		default: // keep it: the broker times it out
		}
	}
	if n > 0 {
		f.count("", n)
	}
}

// frontMessage is a random or malformed client message (as a DEALER sends
// it: the empty delimiter is the message's first frame when present).
func frontMessage(rng *rand.Rand) (string, [][]byte) {
	corr := func() [][]byte {
		switch rng.Intn(4) {
		case 0:
			return nil
		case 1:
			return [][]byte{randBytes(rng, 65+rng.Intn(200))} // too long
		}
		return [][]byte{randBytes(rng, 1+rng.Intn(16))}
	}
	switch rng.Intn(16) {
	case 0:
		return "front/random-frames", randFrames(rng, rng.Intn(9))
	case 1:
		return "front/no-delimiter", append([][]byte{wire.Request.Frame(), []byte(calcName)}, randFrames(rng, rng.Intn(3))...)
	case 2:
		return "front/random-command", append([][]byte{{}, {byte(rng.Intn(256))}}, randFrames(rng, rng.Intn(4))...)
	case 3:
		return "front/long-command", append([][]byte{{}, randBytes(rng, 2+rng.Intn(8))}, randFrames(rng, rng.Intn(3))...)
	case 4, 5:
		return "front/request-bad-body-LJ", append([][]byte{{}, wire.Request.Frame(), []byte(calcName), malformedRequest(rng)}, corr()...)
	case 6:
		return "front/request-bad-name", append([][]byte{{}, wire.Request.Frame(), badName(rng), randBytes(rng, rng.Intn(64))}, corr()...)
	case 7:
		return "front/request-frame-count", append([][]byte{{}, wire.Request.Frame()}, randFrames(rng, []int{0, 1, 4, 5, 9}[rng.Intn(5)])...)
	case 8:
		return "front/request-unknown-calc", append([][]byte{{}, wire.Request.Frame(), []byte(fuzzName(rng)), validRequest(rng)}, corr()...)
	case 9:
		cmd := []wire.Command{wire.List, wire.Status}[rng.Intn(2)]
		return "front/control-extra-frames", append([][]byte{{}, cmd.Frame()}, randFrames(rng, rng.Intn(4))...)
	case 10:
		return "front/cancel", [][]byte{{}, wire.Cancel.Frame(), randBytes(rng, rng.Intn(80))}
	case 11:
		return "front/shutdown", append([][]byte{{}, wire.Shutdown.Frame()}, corr()...)
	case 12:
		return "front/worker-shutdown-other", [][]byte{{}, wire.WorkerShutdown.Frame(), []byte(fuzzName(rng))}
	case 13:
		// Backend commands at the frontend.
		cmd := []wire.Command{wire.Ready, wire.Response, wire.ManagerReady, wire.SpawnResponse, wire.Disconnect, wire.Progress, wire.Error}[rng.Intn(7)]
		return "front/backend-command", append([][]byte{{}, cmd.Frame()}, randFrames(rng, rng.Intn(4))...)
	case 14:
		return "front/huge-frame-count", append([][]byte{{}, wire.List.Frame()}, make([][]byte, 1000+rng.Intn(4000))...)
	default:
		return "front/big-frame", [][]byte{{}, wire.Request.Frame(), []byte(fuzzName(rng)), randBytes(rng, 64<<10+rng.Intn(512<<10))}
	}
}

// backMessage is a random or malformed worker/manager message from p.
func (f *fuzzer) backMessage(rng *rand.Rand, p *peer) (string, [][]byte) {
	name := func() []byte {
		if rng.Intn(3) == 0 {
			return badName(rng)
		}
		return []byte(fuzzName(rng))
	}
	switch rng.Intn(16) {
	case 0:
		return "back/random-frames", randFrames(rng, rng.Intn(9))
	case 1:
		return "back/random-command", append([][]byte{{}, {byte(rng.Intn(256))}}, randFrames(rng, rng.Intn(4))...)
	case 2, 3:
		// Register as a fake worker of some other calculator (or rename).
		n := name()
		cmd := []wire.Command{wire.Ready, wire.Heartbeat}[rng.Intn(2)]
		return "back/ready-other", append([][]byte{{}, cmd.Frame(), n}, randFrames(rng, rng.Intn(2))...)
	case 4:
		if p.reg == "" && rng.Intn(4) == 0 {
			// Register as LJ to desert the first job.
			return "back/ready-LJ-deserter", [][]byte{{}, wire.Ready.Frame(), []byte(calcName)}
		}
		return "back/busy", [][]byte{{}, wire.Busy.Frame(), []byte(calcName)}
	case 5, 6:
		// A RESPONSE for a client whose job this peer does not hold.
		return "back/forged-response", [][]byte{{}, wire.Response.Frame(), f.someClient(rng), forgedResult(rng)}
	case 7:
		return "back/response-frame-count", append([][]byte{{}, wire.Response.Frame()}, randFrames(rng, rng.Intn(2))...)
	case 8:
		return "back/disconnect", [][]byte{{}, wire.Disconnect.Frame(), []byte(calcName)}
	case 9, 10:
		return "back/manager-ready-bad-caps", managerReady(rng)
	case 11:
		return "back/spawn-response", append([][]byte{{}, wire.SpawnResponse.Frame(), name(), []byte([]string{"ok", "error", ""}[rng.Intn(3)])}, randFrames(rng, rng.Intn(3))...)
	case 12:
		cmd := []wire.Command{wire.ManagerHeartbeat, wire.WorkerJoined, wire.SpawnRequest, wire.Progress, wire.Cancel, wire.Request}[rng.Intn(6)]
		return "back/other-command", append([][]byte{{}, cmd.Frame()}, randFrames(rng, rng.Intn(3))...)
	case 13:
		return "back/huge-frame-count", append([][]byte{{}, wire.Ready.Frame(), name()}, make([][]byte, 1000+rng.Intn(4000))...)
	case 14:
		return "back/no-delimiter", [][]byte{wire.Ready.Frame(), name()}
	default:
		return "back/big-response", [][]byte{{}, wire.Response.Frame(), f.someClient(rng), randBytes(rng, 64<<10+rng.Intn(512<<10))}
	}
}

// stormMessage is one of a burst: DISCONNECTs and READY/DISCONNECT pairs.
func stormMessage(rng *rand.Rand) (string, [][]byte) {
	if rng.Intn(2) == 0 {
		return "storm/disconnect", [][]byte{{}, wire.Disconnect.Frame(), []byte(fuzzName(rng))}
	}
	return "storm/ready", [][]byte{{}, wire.Ready.Frame(), []byte(fuzzName(rng))}
}

func managerReady(rng *rand.Rand) [][]byte {
	names := []string{}
	for i := rng.Intn(4); i > 0; i-- {
		names = append(names, fuzzName(rng))
	}
	var caps []byte
	switch rng.Intn(7) {
	case 0:
		caps = randBytes(rng, rng.Intn(40)) // not msgpack
	case 1:
		caps, _ = wire.Marshal([]any{int64(1), "x"}) // not a map
	case 2:
		caps, _ = wire.Marshal(map[string]any{"protocol": int64(1), "max_workers": map[string]any{fuzzName(rng): int64(-5), calcName: uint64(math.MaxUint64)}})
	case 3:
		caps, _ = wire.Marshal(map[string]any{"max_workers": "lots", "children": int64(3)})
	case 4:
		caps, _ = wire.Marshal(map[string]any{"protocol": int64(1), "max_workers": map[string]any{fuzzName(rng): int64(1 << 40)}, "children": []any{map[string]any{"pid": "x"}}})
	case 5:
		caps = nil // no caps frame: a 0.1.3 manager
	default:
		b, _ := wire.Marshal(map[string]any{"protocol": int64(1)})
		caps = b[:len(b)-1-rng.Intn(len(b)-1)] // truncated
	}
	msg := [][]byte{{}, wire.ManagerReady.Frame(), []byte(strings.Join(names, ","))}
	if caps != nil {
		msg = append(msg, caps)
	}
	return msg
}

// validRequest is a well-formed H2O-sized request.
func validRequest(rng *rand.Rand) []byte {
	n := 1 + rng.Intn(5)
	nums := make([]int32, n)
	pos := make([]float64, 3*n)
	for i := range nums {
		nums[i] = int32(1 + rng.Intn(10))
		for j := 0; j < 3; j++ {
			pos[3*i+j] = float64(i)*1.1 + rng.Float64()*0.1
		}
	}
	b, _ := wire.EncodeRequest(wire.NewCalcRequest(nums, pos, nil, [3]bool{}, "energy", "forces"))
	return b
}

// malformedRequest is a REQUEST body that a real worker must refuse with an
// error response, not die on.
func malformedRequest(rng *rand.Rand) []byte {
	valid := validRequest(rng)
	n3 := func(v float64) []byte { return wire.Float64Bytes([]float64{v, v, v}) }
	arr := func(elems ...any) []byte { b, _ := wire.Marshal(elems); return b }
	pbc, cell := []byte{0, 0, 0}, make([]byte, 72)
	switch rng.Intn(16) {
	case 0:
		return valid[:rng.Intn(len(valid))] // truncated
	case 1:
		return randBytes(rng, rng.Intn(200))
	case 2:
		return arr(int64(2), []byte{}, []byte{}, cell, pbc, []any{}) // wrong version
	case 3:
		return arr(int64(1), []byte{1, 0, 0}, n3(0), cell, pbc, []any{"energy"}) // numbers not int32s
	case 4:
		return arr(int64(1), wire.Int32Bytes([]int32{1, 1}), n3(0), cell, pbc, []any{"energy"}) // 2 atoms, 1 position
	case 5:
		return arr(int64(1), wire.Int32Bytes([]int32{1}), n3(0), cell[:71], pbc, []any{"energy"})
	case 6:
		return arr(int64(1), wire.Int32Bytes([]int32{1}), n3(0), cell, []byte{1}, []any{"energy"})
	case 7:
		return arr(int64(1), wire.Int32Bytes([]int32{1}), n3(0), cell, pbc, []any{int64(3), nil, []byte("x")}) // properties not strings
	case 8:
		return arr(int64(1), wire.Int32Bytes([]int32{1, 1}), wire.Float64Bytes([]float64{0, 0, 0, 1, 1, 1}), cell, pbc, []any{"magmoms", "nonsense", ""})
	case 9:
		return arr(int64(1), wire.Int32Bytes([]int32{-7, 0, 1000}), wire.Float64Bytes(make([]float64, 9)), cell, pbc, []any{"energy"}) // bad numbers, overlapping atoms
	case 10:
		return arr(int64(1), wire.Int32Bytes([]int32{1, 1}), wire.Float64Bytes([]float64{math.NaN(), 0, 0, math.Inf(1), 0, 0}), cell, pbc, []any{"energy", "forces"})
	case 11:
		return arr(int64(1), []byte{}, []byte{}, cell, pbc, []any{"energy", "forces", "stress"}) // no atoms
	case 12: // extension with bad arrays and info
		ext := map[string]any{
			"arrays": map[string]any{"tags": map[string]any{"dtype": "<q8", "shape": []any{int64(1)}, "data": []byte{1}},
				"masses": map[string]any{"dtype": "<f8", "shape": []any{int64(7), int64(-1)}, "data": []byte{}}},
			"info":          map[string]any{"charge": []any{map[string]any{"x": nil}}, "": math.NaN()},
			"typed_results": "yes",
		}
		return arr(int64(1), wire.Int32Bytes([]int32{1}), n3(0), cell, pbc, []any{"energy"}, ext)
	case 13:
		return arr(int64(1), wire.Int32Bytes([]int32{1}), n3(0), cell, pbc, []any{"energy"}, "not a map", "extra")
	case 14:
		b := append([]byte(nil), valid...)
		for i := 0; i < 1+rng.Intn(4); i++ {
			b[rng.Intn(len(b))] ^= byte(1 + rng.Intn(255)) // bit flips
		}
		return b
	default:
		return arr(map[string]any{"version": int64(1)}) // wrong shape entirely
	}
}

// forgedResult is a plausible success Response: if the broker ever passed
// it to a real client, that client would see a wrong energy.
func forgedResult(rng *rand.Rand) []byte {
	b, _ := wire.Marshal([]any{int64(1), true, map[string]any{"energy": rng.Float64() * 1e6}, ""})
	return b
}

func fuzzName(rng *rand.Rand) string {
	return []string{"fz", "LJ2", "lj", "fuzz-calc", "EMT"}[rng.Intn(5)] + fmt.Sprint(rng.Intn(20))
}

func badName(rng *rand.Rand) []byte {
	switch rng.Intn(3) {
	case 0:
		return nil
	case 1:
		return []byte{0xff, 0xfe, 'x'} // not UTF-8
	}
	return randBytes(rng, 257+rng.Intn(100)) // too long
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	rng.Read(b)
	return b
}

func randFrames(rng *rand.Rand, n int) [][]byte {
	fs := make([][]byte, n)
	for i := range fs {
		if rng.Intn(3) > 0 {
			fs[i] = randBytes(rng, rng.Intn(32))
		}
	}
	return fs
}
