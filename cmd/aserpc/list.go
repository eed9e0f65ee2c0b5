package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/registry"
	"github.com/aserpc/aserpc/wire"
)

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "List available calculators. With no options, lists calculators from entry points.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "registry", Usage: "Python path to registry (module:variable or file.py:variable)"},
			&cli.StringFlag{Name: "broker", Usage: "List what a running broker serves (worker counts; spawnable names with 0)"},
			&cli.BoolFlag{Name: "json", Usage: "Print JSON (for scripts)"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "How long to wait for the broker"},
		}, append(pythonFlags(), curveFlags()...)...),
		Action: func(c *cli.Context) error {
			if c.IsSet("broker") && !c.IsSet("registry") {
				return listBroker(c)
			}
			if r := c.String("registry"); r != "" {
				if _, err := registry.ParseSource(r, false); err != nil {
					return fail("Error listing calculators: %v", err)
				}
			}
			// A listing is the output: the interpreter's INFO line (which Python, which
			// libpython) is for worker logs, not for every `aserpc list`.
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
			host, err := openPython(c)
			if err != nil {
				return err
			}
			defer host.Close()
			rows, err := host.List(c.Context, c.String("registry"))
			if err != nil {
				return pyFail("Error listing calculators", err)
			}
			if c.Bool("json") {
				if rows == nil {
					rows = rows[:0]
				}
				return printJSON(rows)
			}
			if len(rows) == 0 {
				fmt.Println("No calculators registered via providers")
				fmt.Println("Register a provider under the entry-point group aserpc.calculators, or use --registry file.py:VAR")
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "Name\tFactory\tSource")
			for _, r := range rows {
				if r.Warning != "" {
					fmt.Fprintf(tw, "%s\t(warning: %s)\t%s\n", r.Name, r.Warning, r.Source)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, r.Factory, r.Source)
			}
			return tw.Flush()
		},
	}
}

func listBroker(c *cli.Context) error {
	keys, err := peerKeys(c)
	if err != nil {
		return err
	}
	v, err := call(c.String("broker"), keys, c.Duration("timeout"), wire.List)
	if err != nil {
		return fail("%v", err)
	}
	m, _ := v.(map[string]any)
	if c.Bool("json") {
		return printJSON(m)
	}
	if len(m) == 0 {
		fmt.Println("No calculators available")
		return nil
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Name\tWorkers")
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t%v\n", n, m[n])
	}
	return tw.Flush()
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
