package main

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/config"
	"github.com/aserpc/aserpc/internal/suggest"
)

// configDefault matches a usage that ends in "(default: CONFIG_KEY[, built-in][; note])".
var configDefault = regexp.MustCompile(`^(.*?)\s*\(default: ([a-z_]+)(?:, [^;)]*)?(?:; ([^)]*))?\)$`)

// resolveHelpDefaults rewrites, in every flag of cmds, a default named by
// a configuration key into the value that key has here and now (config
// file, environment or built-in), named with its key:
// "(default: ipc:///home/u/.aserpc/backend.ipc, config ipc_backend)".
// The text moves from Usage into DefaultText, so urfave/cli prints one
// default and not a second "(default: 0)" from a numeric flag's zero
// value. Flags are reached by reflection: every urfave flag type has both
// fields. A configuration that does not load leaves the usages as written.
func resolveHelpDefaults(cmds []*cli.Command, cfg *config.Config) {
	for _, cmd := range cmds {
		for _, f := range cmd.Flags {
			v := reflect.ValueOf(f)
			if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
				continue
			}
			usage, text := v.Elem().FieldByName("Usage"), v.Elem().FieldByName("DefaultText")
			if !usage.IsValid() || !text.IsValid() || usage.Kind() != reflect.String {
				continue
			}
			m := configDefault.FindStringSubmatch(usage.String())
			if m == nil || !isConfigKey(m[2]) {
				continue
			}
			value := cfg.Value(m[2])
			if value == "" {
				value = "none"
			}
			def := fmt.Sprintf("%s, config %s", value, m[2])
			if m[3] != "" {
				def += "; " + m[3]
			}
			usage.SetString(m[1])
			text.SetString(def)
		}
		resolveHelpDefaults(cmd.Subcommands, cfg)
	}
}

func isConfigKey(k string) bool {
	for _, c := range config.Keys {
		if c == k {
			return true
		}
	}
	return false
}

// unknownCommand is the error for `aserpc NAME` where NAME is no command:
// the commands there are, and the nearest one when it is a likely typo.
func unknownCommand(app *cli.App, name string) error {
	var names []string
	best, bestDist := "", 3 // suggest only within two edits
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		names = append(names, c.Name)
		if d := suggest.Distance(name, c.Name); d < bestDist {
			best, bestDist = c.Name, d
		}
	}
	sort.Strings(names)
	msg := fmt.Sprintf("unknown command %q", name)
	if best != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", best)
	}
	return &exitError{code: 2, msg: msg + "; commands: " + strings.Join(names, ", ") + " (aserpc --help)"}
}
