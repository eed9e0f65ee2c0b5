// Command aserpc serves ASE calculators over ZeroMQ: the broker, workers,
// the manager and client-side utilities, with aserpc 0.1.3's commands and
// options. Each subcommand lives in a file of its own, fills a package
// Config and runs it; only main exits and turns signals into cancellation.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/config"
	"github.com/aserpc/aserpc/internal/trace"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "0.0.0-dev"
}

// exitError carries an exit code with a message for the user.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(format string, args ...any) error {
	return &exitError{code: 1, msg: fmt.Sprintf(format, args...)}
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "aserpc",
		Usage:                "RPC framework for ASE calculators over ZeroMQ",
		Version:              buildVersion(),
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"ASERPC_LOG_FORMAT"},
				Usage: "log format of long-running commands: text (for people) or json (for log collectors)"},
		},
		Commands: []*cli.Command{
			brokerCommand(),
			workerCommand(),
			managerCommand(),
			listCommand(),
			statusCommand(),
			shutdownCommand(),
			configCommand(),
			keysCommand(),
		},
		// Reached only when the first argument is no command (urfave/cli's
		// own answer is "No help topic for 'x'" with exit 3).
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				return cli.ShowAppHelp(c)
			}
			return unknownCommand(c.App, c.Args().First())
		},
	}
	if cfg, err := config.Load("", nil); err == nil {
		resolveHelpDefaults(app.Commands, cfg)
	}
	return app
}

func main() {
	// First SIGINT/SIGTERM cancels the context (graceful stop); a second
	// one kills the process at once.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		<-sigs
		fmt.Fprintln(os.Stderr, "aserpc: second signal, exiting now")
		os.Exit(130)
	}()

	app := newApp()
	err := app.RunContext(ctx, intersperse(app, os.Args))
	trace.Flush() // ASERPC_TRACE (benchmarks): the marks not yet written
	if err != nil {
		var ee *exitError
		code := 1
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(code)
	}
}

// setupLogging installs the default slog logger for a long-running command.
func setupLogging(c *cli.Context, level string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToUpper(strings.TrimSpace(level)) {
	case "DEBUG":
		lv = slog.LevelDebug
	case "INFO", "":
		lv = slog.LevelInfo
	case "WARNING", "WARN":
		lv = slog.LevelWarn
	case "ERROR", "CRITICAL":
		lv = slog.LevelError
	default:
		return nil, fail("invalid --log-level %q: use DEBUG, INFO, WARNING or ERROR", level)
	}
	var h slog.Handler
	var w io.Writer = os.Stderr
	opts := &slog.HandlerOptions{Level: lv}
	switch f := strings.ToLower(c.String("log-format")); f {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fail("invalid --log-format %q: use text or json", f)
	}
	l := slog.New(h)
	slog.SetDefault(l)
	return l, nil
}

// loadConfig resolves the configuration, turning errors into exit 1.
func loadConfig() (*config.Config, error) {
	cfg, err := config.Load("", nil)
	if err != nil {
		return nil, fail("%v", err)
	}
	return cfg, nil
}
