package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/config"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "Print the resolved configuration and where each value comes from.",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "Print as JSON"}},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				out := map[string]any{}
				for _, k := range config.Keys {
					out[k] = map[string]string{"value": cfg.Value(k), "source": cfg.Sources[k]}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "Key\tValue\tSource")
			for _, k := range config.Keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", k, cfg.Value(k), cfg.Sources[k])
			}
			tw.Flush()
			if cfg.Project != "" {
				fmt.Printf("\npyproject.toml: %s\n", cfg.Project)
				wd, _ := os.Getwd()
				for _, k := range config.Unknown(wd) {
					fmt.Printf("warning: unknown key [tool.aserpc] %s\n", k)
				}
			}
			return nil
		},
	}
}
