package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/broker"
	"github.com/aserpc/aserpc/config"
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
			&cli.Float64Flag{Name: "startup-grace", Value: 3, Usage: "Seconds after start during which a request for a calculator with no worker yet waits for one to register (a restarted broker's workers come back) instead of failing at once; 0: never"},
			&cli.Float64Flag{Name: "queue-timeout", Usage: "Request queue timeout in seconds (default: request_queue_timeout, 60)"},
			&cli.Float64Flag{Name: "spawn-timeout", Value: broker.DefaultSpawnTimeout.Seconds(), Usage: "Seconds to wait for a worker the manager spawned to register"},
			&cli.IntFlag{Name: "max-pending", Value: broker.DefaultMaxPending, Usage: "Most requests waiting per calculator"},
			&cli.IntFlag{Name: "max-redispatch", Value: broker.DefaultMaxRedispatch, Usage: "Times a request whose worker died is given to another worker"},
			&cli.Int64Flag{Name: "max-message-size", Usage: "Largest accepted frame in bytes; a bigger one disconnects its sender (default: max_message_size, 256 MiB)"},
			&cli.BoolFlag{Name: "allow-shutdown", Usage: "Let clients stop the broker with SHUTDOWN (aserpc shutdown --broker-process)"},
			&cli.StringFlag{Name: "curve-secret", Usage: "The broker's CURVE secret certificate (.key_secret): tcp endpoints then admit only authorized keys (default: broker_curve_secret)"},
			&cli.StringFlag{Name: "authorized-keys", Usage: "File of 'ROLE KEY [NAME]' lines (roles client, worker, admin; KEY Z85 or a .key file); reread on SIGHUP (default: broker_authorized_keys)"},
			&cli.StringFlag{Name: "metrics", Usage: "Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 (default: metrics_address, none)"},
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
			if c.Float64("startup-grace") < 0 {
				return fail("--startup-grace must be zero or positive")
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
					StartupGrace:  seconds(c.Float64("startup-grace")),
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
			secret, keysFile := cfg.BrokerCurveSecret, cfg.BrokerAuthorizedKeys
			if c.IsSet("curve-secret") {
				secret = c.String("curve-secret")
			}
			if c.IsSet("authorized-keys") {
				keysFile = c.String("authorized-keys")
			}
			if bc.Curve, err = brokerCurve(secret, keysFile, log); err != nil {
				return err
			}
			metricsAddr := cfg.MetricsAddress
			if c.IsSet("metrics") {
				metricsAddr = c.String("metrics")
			}
			if metricsAddr != "" {
				bc.Metrics = broker.NewMetrics()
			}
			// What this broker serves, for the next one on this frontend
			// (--startup-grace), private to this user.
			if bc.StartupGrace > 0 {
				bc.StateFile = broker.StatePath(config.StateDir(), bc.Frontend)
			}
			b, err := broker.New(bc)
			if err != nil {
				return fail("%v", err)
			}
			defer b.Close()
			if bc.Metrics != nil {
				addr, err := bc.Metrics.Serve(c.Context, metricsAddr)
				if err != nil {
					return fail("--metrics %s: %v", metricsAddr, err)
				}
				log.Info("serving metrics", "url", "http://"+addr+"/metrics")
			}
			if bc.Curve != nil {
				stop := reloadOnHUP(b, keysFile, log)
				defer stop()
			}
			return b.Run(c.Context)
		},
	}
}

// brokerCurve loads the broker's certificate and authorized keys; nil
// when neither is given (no authentication, as 0.1.3).
func brokerCurve(secret, keysFile string, log *slog.Logger) (*broker.Curve, error) {
	switch {
	case secret == "" && keysFile == "":
		return nil, nil
	case secret == "":
		return nil, fail("--authorized-keys needs the broker's --curve-secret")
	case keysFile == "":
		return nil, fail("--curve-secret needs --authorized-keys: a CURVE broker admits only listed keys")
	}
	cert, err := auth.LoadSecret(secret)
	if err != nil {
		return nil, fail("%v", err)
	}
	if auth.LooseMode(secret) {
		log.Warn("the broker's secret certificate is readable by others; chmod 600 it", "file", secret)
	}
	keys, err := auth.LoadKeys(keysFile)
	if err != nil {
		return nil, fail("authorized keys: %v", err)
	}
	n := keys.Count()
	log.Info("CURVE keys loaded", "public_key", cert.Public, "authorized", keysFile,
		"clients", n[auth.Client], "workers", n[auth.Worker], "admins", n[auth.Admin])
	return &broker.Curve{Cert: cert, Keys: keys}, nil
}

// reloadOnHUP rereads the authorized keys on SIGHUP; a file that no longer
// parses keeps the old list. The returned func stops listening.
func reloadOnHUP(b *broker.Broker, file string, log *slog.Logger) func() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				keys, err := auth.LoadKeys(file)
				if err != nil {
					log.Error("SIGHUP: authorized keys not reloaded, keeping the old ones", "err", err)
					continue
				}
				b.SetKeys(keys)
				n := keys.Count()
				log.Info("SIGHUP: authorized keys reloaded (new connections)", "file", file,
					"clients", n[auth.Client], "workers", n[auth.Worker], "admins", n[auth.Admin])
			}
		}
	}()
	return func() { signal.Stop(hup); close(done) }
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
