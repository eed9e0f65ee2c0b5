package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/wire"
)

// watch is `aserpc status --watch`: the status, and a row per worker,
// redrawn every interval in place (the alternate screen, each line
// overwritten and cleared to its end, so nothing flickers) until q, Esc or
// Ctrl-C. A broker that stops answering is said so on the screen, and the
// view goes on trying.
func watch(ctx context.Context, addr, hint string, keys *auth.Peer, timeout, interval time.Duration) error {
	out := os.Stdout
	fd := int(os.Stdin.Fd())
	if term.IsTerminal(fd) {
		old, err := term.MakeRaw(fd)
		if err == nil {
			defer term.Restore(fd, old)
		}
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	keysIn := make(chan byte, 8)
	go func() {
		b := make([]byte, 1)
		for {
			if n, err := os.Stdin.Read(b); err != nil || n == 0 {
				return
			} else {
				keysIn <- b[0]
			}
		}
	}()
	io.WriteString(out, "\x1b[?1049h\x1b[?25l") // alternate screen, cursor hidden
	defer io.WriteString(out, "\x1b[?25h\x1b[?1049l")
	for {
		width, height := 80, 24
		if w, h, err := term.GetSize(int(out.Fd())); err == nil && w > 0 && h > 0 {
			width, height = w, h
		}
		var frame bytes.Buffer
		v, err := call(addr, keys, timeout, wire.Status)
		fmt.Fprintf(&frame, "aserpc status  %s  %s   (q to quit)\n\n", addr, time.Now().Format("15:04:05"))
		if err != nil {
			fmt.Fprintf(&frame, "No answer: %v\n", err)
			if hint != "" {
				frame.WriteString(hint + "\n")
			}
		} else {
			printStatus(&frame, v)
			printWorkers(&frame, v)
		}
		draw(out, frame.String(), width, height)
		select {
		case <-ctx.Done():
			return nil
		case k := <-keysIn:
			if k == 'q' || k == 'Q' || k == 3 || k == 27 { // q, Ctrl-C (raw mode), Esc
				return nil
			}
		case <-time.After(interval):
		}
	}
}

// draw writes frame from the top-left corner, each line cut to width and
// cleared to its end, and clears what is below: the screen changes only
// where the text does.
func draw(out io.Writer, frame string, width, height int) {
	var b strings.Builder
	b.WriteString("\x1b[H")
	lines := strings.Split(strings.TrimRight(frame, "\n"), "\n")
	if len(lines) > height {
		lines = lines[:height]
	}
	for i, l := range lines {
		if r := []rune(l); len(r) > width {
			l = string(r[:width])
		}
		b.WriteString(l)
		b.WriteString("\x1b[K")
		if i < len(lines)-1 {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\x1b[J")
	io.WriteString(out, b.String())
}

// printWorkers adds a row per worker from STATUS's worker_list (our
// broker's; a 0.1.3 broker has none).
func printWorkers(out io.Writer, v any) {
	st, _ := v.(map[string]any)
	list, _ := st["worker_list"].([]any)
	if len(list) == 0 {
		return
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	fmt.Fprintln(tw, "Worker\tPID\tHost\tCPUs\tState\tJobs\tUp\tLast job\tRSS\tGPU")
	for _, x := range list {
		w, _ := x.(map[string]any)
		jobs := fmt.Sprint(num(w["handled"]))
		if c, ok := w["capacity"]; ok {
			jobs = fmt.Sprintf("%v (%v/%v)", num(w["handled"]), num(w["held"]), c)
		}
		cpus := fmt.Sprint(orDash(w["cpus"]))
		if t, ok := w["threads"].(int64); ok && w["cpus"] == nil {
			cpus = fmt.Sprintf("%dt", t) // a thread budget without placement
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\n", cut(fmt.Sprint(w["calc"]), 14), num(w["pid"]),
			cut(fmt.Sprint(orDash(w["host"])), 12), cut(cpus, 9), w["state"], jobs, dur(w["uptime_s"]),
			dur(w["last_job_s"]), bytesOf(w["rss"]), bytesOf(w["gpu"]))
	}
	tw.Flush()
}

func cut(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// dur renders seconds briefly: 850ms, 12.3s, 5m02s, 3h04m.
func dur(v any) string {
	s, ok := v.(float64)
	if !ok || s <= 0 {
		return "-"
	}
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// bytesOf renders a byte count: 412M, 1.3G; "-" when unknown.
func bytesOf(v any) string {
	n, ok := v.(int64)
	if !ok || n <= 0 {
		return "-"
	}
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%dM", n>>20)
	}
	return fmt.Sprintf("%dK", n>>10)
}
