package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/auth"
	"github.com/aserpc/aserpc/spawn"
)

func managerCommand() *cli.Command {
	return &cli.Command{
		Name:  "manager",
		Usage: "Start the infrastructure manager for scale-to-zero workers.",
		Description: "Spawn configs come from the entry points of group aserpc.spawn, or from --registry\n" +
			"(module.path:ATTR or file.py:ATTR: a dict of name -> SpawnConfig or plain dict, or a callable\n" +
			"returning one), loaded by the Python of --python. Each child's output goes to a log file\n" +
			"under --log-dir; the path is logged when it starts.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "registry", Usage: "Python path to spawn config registry (module:variable or file.py:variable)"},
			&cli.StringFlag{Name: "broker", Usage: "Broker backend socket address (default: ipc_backend)"},
			&cli.StringFlag{Name: "advertise", Usage: "Broker backend address the workers are given ({broker}) when they reach it by another address than the manager, e.g. tcp://login01:5556 for workers on other nodes (default: advertise_backend, else --broker)"},
			&cli.Float64Flag{Name: "heartbeat", Usage: "Heartbeat interval in seconds (default: heartbeat_interval, 5)"},
			&cli.StringFlag{Name: "log-dir", Usage: "Directory for the workers' log files (default: $XDG_STATE_HOME/aserpc/manager-logs or ~/.local/state/aserpc/manager-logs)"},
			&cli.Float64Flag{Name: "stop-grace", Value: 5, Usage: "Seconds workers get after SIGTERM before SIGKILL when the manager stops"},
			&cli.StringFlag{Name: "log-level", Value: "INFO", Usage: "DEBUG, INFO, WARNING or ERROR"},
			&cli.StringFlag{Name: "python", Usage: "Python interpreter whose environment holds the spawn configs (default: $ASERPC_PYTHON, the venv aserpc sits in, $VIRTUAL_ENV, $CONDA_PREFIX, python3 on PATH)"},
			// Discovery runs once; a child interpreter then exits and leaves
			// nothing a registry imported (torch ...) in the manager.
			&cli.StringFlag{Name: "python-mode", Value: "subprocess", Usage: "subprocess (run Python as a child for discovery), embed or auto"},
			// Its children (workers) get the same keys through the
			// environment, so they need a worker key too.
			&cli.StringFlag{Name: "curve-server-key", Usage: "The broker's CURVE public key (Z85) or its .key file, for tcp endpoints; passed on to spawned workers (default: curve_server_key)"},
			&cli.StringFlag{Name: "curve-secret", Usage: "CURVE secret certificate (.key_secret) of the manager and its workers, for tcp endpoints (default: curve_secret)"},
		},
		Action: runManager,
	}
}

func runManager(c *cli.Context) error {
	log, err := setupLogging(c, c.String("log-level"))
	if err != nil {
		return err
	}
	if c.NArg() > 0 {
		return fail("unexpected argument %q (the registry goes in --registry)", c.Args().First())
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	broker := cfg.Backend
	if c.IsSet("broker") {
		broker = c.String("broker")
	}
	advertise := cfg.AdvertiseBackend
	if c.IsSet("advertise") {
		advertise = c.String("advertise")
	}
	if advertise != "" {
		if err := spawn.CheckEndpoint(advertise); err != nil {
			return fail("--advertise: %v", err)
		}
	}
	heartbeat := cfg.HeartbeatInterval
	if c.IsSet("heartbeat") {
		heartbeat = c.Float64("heartbeat")
	}
	if heartbeat <= 0 {
		return fail("--heartbeat must be positive")
	}
	if c.Float64("stop-grace") <= 0 {
		return fail("--stop-grace must be positive")
	}
	keys, err := peerKeys(c)
	if err != nil {
		return err
	}
	// Spawned workers read their keys from the environment, resolved
	// here (absolute paths: a child may run in another directory).
	for _, f := range []struct{ flag, env string }{{"curve-server-key", "ASERPC_CURVE_SERVER_KEY"}, {"curve-secret", "ASERPC_CURVE_SECRET"}} {
		if c.IsSet(f.flag) {
			v := c.String(f.flag)
			if abs, err := filepath.Abs(v); err == nil && !auth.ValidKey(v) {
				v = abs
			}
			os.Setenv(f.env, v)
		}
	}

	host, err := openPython(c)
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			return fail("Error loading spawn configs: %s", ee.msg)
		}
		return err
	}
	d, err := spawn.Discover(c.Context, host, c.String("registry"))
	host.Close()
	if err != nil {
		return pyFail("Error loading spawn configs", err)
	}
	for _, w := range d.Warnings {
		log.Warn(w)
	}
	if len(d.Configs) == 0 {
		return fail("No spawn configs found\nRegister spawn configs via entry points (aserpc.spawn) or --registry")
	}
	fmt.Printf("Spawn configs (%d):\n", len(d.Configs))
	for _, name := range spawn.Names(d.Configs) {
		sc := d.Configs[name]
		extra := ""
		if sc.MaxWorkers != 1 || sc.MinWorkers != 0 {
			extra += fmt.Sprintf("  [workers %d..%d]", sc.MinWorkers, sc.MaxWorkers)
		}
		if len(sc.GPUs) > 0 {
			extra += fmt.Sprintf("  [gpus %s]", strings.Join(sc.GPUs, ","))
		}
		fmt.Printf("  %s: %s%s\n", name, strings.Join(sc.Command, " "), extra)
	}

	m, err := spawn.New(spawn.Config{
		Broker:    broker,
		Advertise: advertise,
		Heartbeat: seconds(heartbeat),
		Configs:   d.Configs,
		LogDir:    c.String("log-dir"),
		StopGrace: seconds(c.Float64("stop-grace")),
		Logger:    log,
		Curve:     keys,
	})
	if err != nil {
		return fail("%v", err)
	}
	defer m.Close()
	if err := m.Run(c.Context); err != nil && !errors.Is(err, spawn.ErrStopped) {
		return fail("%v", err)
	}
	return nil
}
