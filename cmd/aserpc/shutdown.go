package main

import (
	"fmt"
	"sort"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/wire"
)

func shutdownCommand() *cli.Command {
	return &cli.Command{
		Name:  "shutdown",
		Usage: "Shut down workers (or the broker).",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "broker", Usage: "Broker frontend socket address (default: ipc_frontend)"},
			&cli.StringFlag{Name: "workers", Usage: "Calculator name to shutdown workers for"},
			&cli.BoolFlag{Name: "all", Usage: "Shutdown all workers"},
			&cli.BoolFlag{Name: "broker-process", Usage: "Stop the broker itself (it must run with --allow-shutdown)"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "How long to wait for the broker"},
		}, curveFlags()...),
		Action: func(c *cli.Context) error {
			addr, hint, err := frontend(c)
			if err != nil {
				return err
			}
			to := c.Duration("timeout")
			keys, err := peerKeys(c)
			if err != nil {
				return err
			}
			switch {
			case c.Bool("broker-process"):
				if _, err := call(addr, keys, to, wire.Shutdown); err != nil {
					return explain(err, hint)
				}
				fmt.Println("Broker shutting down")
			case c.IsSet("workers"):
				n, err := shutdownWorkers(addr, keys, to, c.String("workers"))
				if err != nil {
					return explain(err, hint)
				}
				fmt.Printf("Shutdown %d workers for '%s'\n", n, c.String("workers"))
			case c.Bool("all"):
				v, err := call(addr, keys, to, wire.List)
				if err != nil {
					return explain(err, hint)
				}
				m, _ := v.(map[string]any)
				names := make([]string, 0, len(m))
				for n := range m {
					names = append(names, n)
				}
				sort.Strings(names)
				total := 0
				for _, n := range names {
					k, err := shutdownWorkers(addr, keys, to, n)
					if err != nil {
						return explain(err, hint)
					}
					total += k
				}
				fmt.Printf("Shutdown %d workers\n", total)
			default:
				return fail("Specify --workers CALC_NAME, --all or --broker-process")
			}
			return nil
		},
	}
}

func shutdownWorkers(addr string, keys *auth.Peer, to time.Duration, name string) (int, error) {
	v, err := call(addr, keys, to, wire.WorkerShutdown, name)
	if err != nil {
		return 0, err
	}
	m, _ := v.(map[string]any)
	switch n := m["shutdown_count"].(type) {
	case int64:
		return int(n), nil
	case uint64:
		return int(n), nil
	}
	return 0, nil
}
