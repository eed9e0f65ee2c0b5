package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/config"
	"github.com/aserpc/aserpc/wire"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "Query broker status.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "broker", Usage: "Broker frontend socket address (default: ipc_frontend)"},
			&cli.BoolFlag{Name: "json", Usage: "Print the raw status as JSON (for scripts)"},
			&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "A live view, refreshed every --interval, until q or Ctrl-C"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "How often --watch refreshes"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "How long to wait for the broker"},
		}, curveFlags()...),
		Action: func(c *cli.Context) error {
			addr, hint, err := frontend(c)
			if err != nil {
				return err
			}
			keys, err := peerKeys(c)
			if err != nil {
				return err
			}
			if c.Bool("watch") {
				if c.Bool("json") {
					return fail("--watch and --json do not go together: --json is for scripts, --watch for a terminal")
				}
				return watch(c.Context, addr, hint, keys, c.Duration("timeout"), c.Duration("interval"))
			}
			v, err := call(addr, keys, c.Duration("timeout"), wire.Status)
			if err != nil {
				return explain(err, hint)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			printStatus(os.Stdout, v)
			return nil
		},
	}
}

// frontend returns the broker address of a control command and, when that
// is the default one (the socket directory follows the project root or the
// working directory), a hint for a broker that does not answer: one
// started in another directory listens somewhere else.
func frontend(c *cli.Context) (addr, hint string, err error) {
	if c.IsSet("broker") {
		addr = c.String("broker")
		return addr, missingSocket(addr, "given with --broker"), nil
	}
	cfg, err := loadConfig()
	if err != nil {
		return "", "", err
	}
	if cfg.Sources["ipc_dir"] == string(config.FromDefault) && strings.HasPrefix(cfg.Sources["ipc_frontend"], string(config.FromDerived)) {
		hint = fmt.Sprintf("No --broker given, so this looked in %s, the default socket directory: .aserpc in the "+
			"project root (the nearest directory with a pyproject.toml) or else in the working directory. A broker "+
			"started from another directory listens in that one's .aserpc: run this command where the broker runs, "+
			"pass --broker ADDR, or set ASERPC_IPC_DIR for both.", cfg.IPCDir)
		if m := missingSocket(cfg.Frontend, ""); m != "" {
			hint = m + "\n" + hint
		}
		return cfg.Frontend, hint, nil
	}
	src := "ipc_frontend from " + cfg.Sources["ipc_frontend"]
	if strings.HasPrefix(cfg.Sources["ipc_frontend"], string(config.FromDerived)) {
		src = "in ipc_dir " + cfg.IPCDir + ", from " + cfg.Sources["ipc_dir"]
	}
	return cfg.Frontend, missingSocket(cfg.Frontend, src), nil
}

// missingSocket says that an ipc address's socket file does not exist (no
// broker listens there) and where the address came from; "" for another
// address or an existing file.
func missingSocket(addr, from string) string {
	path, ok := strings.CutPrefix(addr, "ipc://")
	if !ok || path == "" {
		return ""
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	m := fmt.Sprintf("No broker socket at %s: the file does not exist, so no broker listens there", path)
	if from != "" {
		m += " (the address was " + from + ")"
	}
	return m + "."
}

// explain is fail for a control command's error, with the hint of frontend
// added to a timeout.
func explain(err error, hint string) error {
	var te errTimeout
	if hint != "" && errors.As(err, &te) {
		return fail("%v\n%s", err, hint)
	}
	return fail("%v", err)
}

func printStatus(out io.Writer, v any) {
	st, _ := v.(map[string]any)
	workers, _ := st["workers"].(map[string]any)
	pending, _ := st["pending_requests"].(map[string]any)
	names := map[string]bool{}
	for n := range workers {
		names[n] = true
	}
	for n := range pending {
		names[n] = true
	}
	if len(names) == 0 {
		fmt.Fprintln(out, "No workers connected")
	} else {
		sorted := make([]string, 0, len(names))
		for n := range names {
			sorted = append(sorted, n)
		}
		sort.Strings(sorted)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "Calculator\tTotal\tIdle\tBusy\tPending")
		for _, n := range sorted {
			w, _ := workers[n].(map[string]any)
			fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t%v\n", n, num(w["total"]), num(w["idle"]), num(w["busy"]), num(pending[n]))
		}
		tw.Flush()
		printBatching(out, sorted, workers)
		printSessions(out, st["sessions"])
	}
	if m, ok := st["manager"].(map[string]any); ok {
		if m["connected"] == true {
			var sp []string
			if l, ok := m["spawnable"].([]any); ok {
				for _, x := range l {
					sp = append(sp, fmt.Sprint(x))
				}
			}
			fmt.Fprintf(out, "Manager: connected (spawnable: %s)\n", strings.Join(sp, ", "))
			if kids, ok := m["children"].([]any); ok && len(kids) > 0 {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "  Child\tPID\tState\tGPU\tLog")
				for _, k := range kids {
					c, _ := k.(map[string]any)
					fmt.Fprintf(tw, "  %v\t%v\t%v\t%v\t%v\n", c["name"], c["pid"], c["state"], orDash(c["gpu"]), c["log"])
				}
				tw.Flush()
			}
		} else {
			fmt.Fprintln(out, "Manager: not connected")
		}
	}
}

// printBatching shows the calculators whose workers batch: jobs held of
// what they may hold, and their batches so far.
func printBatching(out io.Writer, names []string, workers map[string]any) {
	var rows []string
	for _, n := range names {
		w, _ := workers[n].(map[string]any)
		if w["capacity"] == nil {
			continue
		}
		row := fmt.Sprintf("%s\t%v/%v", n, num(w["held"]), w["capacity"])
		b, _ := w["batch"].(map[string]any)
		if b == nil {
			rows = append(rows, row+"\t0\t-\t-\t0")
			continue
		}
		calls, _ := b["batches"].(int64)
		waited := "-"
		if us, ok := b["wait_us"].(int64); ok && calls > 0 {
			waited = fmt.Sprintf("%.2f", float64(us)/1000/float64(calls))
		}
		mean, _ := b["mean_size"].(float64)
		rows = append(rows, fmt.Sprintf("%s\t%v\t%.1f\t%s\t%v", row, calls, mean, waited, num(b["splits"])))
	}
	if len(rows) == 0 {
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Batching\tHeld\tCalls\tMean size\tWait (ms)\tOOM splits")
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	tw.Flush()
}

// printSessions lists the reserved workers (RemoteCalculator(session=True)).
func printSessions(out io.Writer, v any) {
	l, _ := v.([]any)
	if len(l) == 0 {
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Session\tCalculator\tWorker PID\tHeld (s)\tIdle (s)\tTimeout (s)\tServed\tWaiting")
	for _, x := range l {
		s, _ := x.(map[string]any)
		f := func(k string) string { v, _ := s[k].(float64); return fmt.Sprintf("%.0f", v) }
		fmt.Fprintf(tw, "%v\t%v\t%v\t%s\t%s\t%s\t%v\t%v\n", s["session"], s["calc"], num(s["pid"]), f("held_s"), f("idle_s"),
			f("idle_timeout_s"), num(s["served"]), num(s["waiting"]))
	}
	tw.Flush()
}

func num(v any) any {
	if v == nil {
		return 0
	}
	return v
}

func orDash(v any) any {
	if v == nil || v == "" {
		return "-"
	}
	return v
}
