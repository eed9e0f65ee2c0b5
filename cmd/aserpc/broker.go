package main

import (
	"time"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/broker"
)

func brokerCommand() *cli.Command {
	return &cli.Command{
		Name:  "broker",
		Usage: "Start the message broker.",
		Description: "Routes client requests to workers, one job per worker at a time, least recently used first;\n" +
			"queues requests while workers are busy and asks a manager for workers when none exist.\n" +
			"Defaults come from ASERPC_* variables, then [tool.aserpc] in pyproject.toml (see `aserpc config`).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "frontend", Usage: "Frontend socket address for clients (default: ipc_frontend)"},
			&cli.StringFlag{Name: "backend", Usage: "Backend socket address for workers (default: ipc_backend)"},
			&cli.Float64Flag{Name: "timeout", Usage: "Worker timeout in seconds (default: worker_timeout, 30)"},
			&cli.Float64Flag{Name: "queue-timeout", Usage: "Request queue timeout in seconds (default: request_queue_timeout, 60)"},
			&cli.Float64Flag{Name: "spawn-timeout", Value: broker.DefaultSpawnTimeout.Seconds(), Usage: "Seconds to wait for a worker the manager spawned to register"},
			&cli.IntFlag{Name: "max-pending", Value: broker.DefaultMaxPending, Usage: "Most requests waiting per calculator"},
			&cli.IntFlag{Name: "max-redispatch", Value: broker.DefaultMaxRedispatch, Usage: "Times a request whose worker died is given to another worker"},
			&cli.Int64Flag{Name: "max-message-size", Usage: "Largest accepted frame in bytes; a bigger one disconnects its sender (default: max_message_size, 256 MiB)"},
			&cli.BoolFlag{Name: "allow-shutdown", Usage: "Let clients stop the broker with SHUTDOWN (aserpc shutdown --broker-process)"},
			&cli.StringFlag{Name: "log-level", Value: "INFO", Usage: "DEBUG, INFO, WARNING or ERROR"},
		},
		Action: func(c *cli.Context) error {
			log, err := setupLogging(c, c.String("log-level"))
			if err != nil {
				return err
			}
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			bc := broker.Config{
				Frontend: cfg.Frontend,
				Backend:  cfg.Backend,
				Options: broker.Options{
					WorkerTimeout: seconds(cfg.WorkerTimeout),
					QueueTimeout:  seconds(cfg.RequestQueueTimeout),
					SpawnTimeout:  seconds(c.Float64("spawn-timeout")),
					MaxPending:    c.Int("max-pending"),
					MaxRedispatch: redispatch(c.Int("max-redispatch")),
					AllowShutdown: c.Bool("allow-shutdown"),
				},
				MaxMessageSize: cfg.MaxMessageSize,
				Logger:         log,
			}
			if c.IsSet("max-message-size") {
				bc.MaxMessageSize = c.Int64("max-message-size")
			}
			if c.IsSet("frontend") {
				bc.Frontend = c.String("frontend")
			}
			if c.IsSet("backend") {
				bc.Backend = c.String("backend")
			}
			if c.IsSet("timeout") {
				bc.WorkerTimeout = seconds(c.Float64("timeout"))
			}
			if c.IsSet("queue-timeout") {
				bc.QueueTimeout = seconds(c.Float64("queue-timeout"))
			}
			for _, f := range []string{"timeout", "queue-timeout", "spawn-timeout"} {
				if c.IsSet(f) && c.Float64(f) <= 0 {
					return fail("--%s must be positive", f)
				}
			}
			b, err := broker.New(bc)
			if err != nil {
				return fail("%v", err)
			}
			defer b.Close()
			return b.Run(c.Context)
		},
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// redispatch maps the flag (0 = never) onto broker.Options (0 = default,
// negative = never).
func redispatch(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}
