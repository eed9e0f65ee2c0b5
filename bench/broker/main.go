// Command benchbroker measures the aserpc broker against libzmq's bare
// ROUTER–DEALER zmq_proxy on the same transport, side by side in one run:
// round trip with one REQ client and one echo worker for a 200 B and a
// 2.4 MB (100k atoms of positions) payload over ipc and tcp, and
// throughput with 4 clients and 2 or 8 echo workers.
//
// Both setups run in this process with the same Go echo workers and
// clients, so the differences are the routers. The bare proxy lets a
// worker queue several requests (DEALER round-robin); the broker gives each
// worker one job at a time, which is the point of it.
//
// Usage: go run ./bench/broker [-rt 1s] [-tp 2s] [-rounds 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/broker"
	"github.com/aserpc/aserpc/wire"
)

var (
	rtTime = flag.Duration("rt", time.Second, "time per round-trip measurement")
	tpTime = flag.Duration("tp", 2*time.Second, "time per throughput measurement")
	rounds = flag.Int("rounds", 3, "alternating rounds per measurement (best kept)")
)

type router interface {
	frontend() string
	// startWorker starts an echo worker; it stops when ctx ends.
	startWorker(ctx context.Context, wg *sync.WaitGroup)
	close()
}

// ---- bare proxy ------------------------------------------------------------

type proxy struct {
	front, back string
	ctx         *zmq.Context
	done        chan struct{}
}

func newProxy(front, back string) *proxy {
	ctx, _ := zmq.NewContext()
	f, _ := ctx.NewSocket(zmq.ROUTER)
	b, _ := ctx.NewSocket(zmq.DEALER)
	f.SetLinger(0)
	b.SetLinger(0)
	must(f.Bind(front))
	must(b.Bind(back))
	p := &proxy{front: front, back: back, ctx: ctx, done: make(chan struct{})}
	go func() {
		zmq.Proxy(f, b, nil) // returns when the context is terminated
		f.Close()
		b.Close()
		close(p.done)
	}()
	return p
}

func (p *proxy) frontend() string { return p.front }

func (p *proxy) startWorker(ctx context.Context, wg *sync.WaitGroup) {
	s, _ := zmq.NewSocket(zmq.REP)
	s.SetLinger(0)
	s.SetRcvtimeo(100 * time.Millisecond)
	must(s.Connect(p.back))
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer s.Close()
		for ctx.Err() == nil {
			m, err := s.RecvMessageBytes(0)
			if err != nil {
				continue
			}
			s.SendMessage(m)
		}
	}()
}

func (p *proxy) close() {
	p.ctx.Term()
	<-p.done
}

// ---- aserpc broker ---------------------------------------------------------

type ours struct {
	front, back string
	b           *broker.Broker
	cancel      context.CancelFunc
	done        chan struct{}
}

func newOurs(front, back string) *ours {
	b, err := broker.New(broker.Config{Frontend: front, Backend: back,
		Logger: slog.New(slog.DiscardHandler)})
	must(err)
	ctx, cancel := context.WithCancel(context.Background())
	o := &ours{front: front, back: back, b: b, cancel: cancel, done: make(chan struct{})}
	go func() { b.Run(ctx); close(o.done) }()
	return o
}

func (o *ours) frontend() string { return o.front }

func (o *ours) startWorker(ctx context.Context, wg *sync.WaitGroup) {
	s, _ := zmq.NewSocket(zmq.DEALER)
	s.SetLinger(0)
	s.SetRcvtimeo(100 * time.Millisecond)
	must(s.Connect(o.back))
	ready := []byte{byte(wire.Ready)}
	resp := []byte{byte(wire.Response)}
	s.SendMessage("", ready, "echo")
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer s.Close()
		for ctx.Err() == nil {
			m, err := s.RecvMessageBytes(0)
			if err != nil {
				s.SendMessage("", ready, "echo") // idle heartbeat
				continue
			}
			if len(m) == 3 {
				// RESPONSE alone frees the worker, in our broker and in
				// 0.1.3's; the READY 0.1.3 workers send after it is
				// redundant.
				s.SendMessage("", resp, m[1], m[2])
			}
		}
	}()
}

func (o *ours) close() {
	o.cancel()
	<-o.done
	o.b.Close()
}

// ---- measurements ----------------------------------------------------------

func newREQ(ep string) *zmq.Socket {
	s, _ := zmq.NewSocket(zmq.REQ)
	s.SetLinger(0)
	s.SetRcvtimeo(10 * time.Second)
	must(s.Connect(ep))
	return s
}

// request sends one request the way each router expects it.
func request(s *zmq.Socket, isOurs bool, payload []byte) error {
	var err error
	if isOurs {
		_, err = s.SendMessage([]byte{byte(wire.Request)}, "echo", payload)
	} else {
		_, err = s.SendMessage(payload)
	}
	if err != nil {
		return err
	}
	_, err = s.RecvMessageBytes(0)
	return err
}

func roundTrip(r router, isOurs bool, size int) time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	r.startWorker(ctx, &wg)
	c := newREQ(r.frontend())
	payload := make([]byte, size)
	// Warm up (connections, registration).
	for i := 0; i < 20; i++ {
		for request(c, isOurs, payload) != nil {
			time.Sleep(10 * time.Millisecond)
			c.Close()
			c = newREQ(r.frontend())
		}
	}
	n := 0
	start := time.Now()
	for time.Since(start) < *rtTime {
		must(request(c, isOurs, payload))
		n++
	}
	el := time.Since(start)
	c.Close()
	cancel()
	wg.Wait()
	return el / time.Duration(n)
}

func throughput(r router, isOurs bool, workers, clients int) float64 {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		r.startWorker(ctx, &wg)
	}
	time.Sleep(200 * time.Millisecond) // let workers register
	payload := make([]byte, 200)
	var total atomic.Int64
	var cw sync.WaitGroup
	stop := time.Now().Add(*tpTime)
	for i := 0; i < clients; i++ {
		cw.Add(1)
		go func() {
			defer cw.Done()
			c := newREQ(r.frontend())
			defer c.Close()
			for time.Now().Before(stop) {
				if request(c, isOurs, payload) != nil {
					return
				}
				total.Add(1)
			}
		}()
	}
	cw.Wait()
	cancel()
	wg.Wait()
	return float64(total.Load()) / tpTime.Seconds()
}

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "aserpc-bench-")
	must(err)
	defer os.RemoveAll(dir)
	port := 25500
	endpoints := func(transport, tag string) (string, string) {
		if transport == "ipc" {
			return "ipc://" + filepath.Join(dir, tag+"-f.ipc"), "ipc://" + filepath.Join(dir, tag+"-b.ipc")
		}
		port += 2
		return fmt.Sprintf("tcp://127.0.0.1:%d", port), fmt.Sprintf("tcp://127.0.0.1:%d", port+1)
	}
	maj, min, pat := zmqVersion()
	fmt.Printf("aserpc broker vs bare zmq_proxy (libzmq %d.%d.%d), same process, same echo workers\n\n", maj, min, pat)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measurement\tzmq_proxy\taserpc broker\tratio\ttarget\t")
	// Each pair is measured in alternating rounds and the best round of
	// each kept: on a shared 2-core machine, noise only ever slows a round.
	for _, transport := range []string{"ipc", "tcp"} {
		for _, size := range []int{200, 2_400_000} {
			var rp, ro time.Duration
			for round := 0; round < *rounds; round++ {
				pf, pb := endpoints(transport, "p")
				p := newProxy(pf, pb)
				if d := roundTrip(p, false, size); rp == 0 || d < rp {
					rp = d
				}
				p.close()
				of, ob := endpoints(transport, "o")
				o := newOurs(of, ob)
				if d := roundTrip(o, true, size); ro == 0 || d < ro {
					ro = d
				}
				o.close()
			}
			fmt.Fprintf(tw, "round trip %s %s\t%s\t%s\t%.2f×\t≤ 1.30×\t\n", transport, sizeName(size),
				us(rp), us(ro), float64(ro)/float64(rp))
			tw.Flush()
		}
	}
	for _, workers := range []int{2, 8} {
		var tp, to float64
		for round := 0; round < *rounds; round++ {
			pf, pb := endpoints("ipc", "p")
			p := newProxy(pf, pb)
			tp = max(tp, throughput(p, false, workers, 4))
			p.close()
			of, ob := endpoints("ipc", "o")
			o := newOurs(of, ob)
			to = max(to, throughput(o, true, workers, 4))
			o.close()
		}
		target := "\t"
		if workers == 8 {
			target = "≥ 50%\t"
		}
		fmt.Fprintf(tw, "throughput ipc 4 clients %d workers\t%.0f/s\t%.0f/s\t%.0f%%\t%s\n", workers, tp, to, 100*to/tp, target)
		tw.Flush()
	}
}

func zmqVersion() (int, int, int) { return zmq.Version() }

func sizeName(n int) string {
	if n >= 1_000_000 {
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%d B", n)
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/1e3) }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchbroker:", err)
		os.Exit(1)
	}
}
