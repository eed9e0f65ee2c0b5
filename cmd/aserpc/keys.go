package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/aserpc/aserpc/auth"
)

func keysCommand() *cli.Command {
	return &cli.Command{
		Name:  "keys",
		Usage: "Make and inspect CURVE certificates (security of tcp endpoints).",
		Description: "Each party (the broker, each client, worker or admin) has a certificate: NAME.key (public,\n" +
			"share it) and NAME.key_secret (keep it private). The files are pyzmq/czmq certificates.\n" +
			"The broker lists who may connect in an authorized-keys file of 'ROLE KEY [NAME]' lines.",
		Subcommands: []*cli.Command{
			{
				Name:      "generate",
				Usage:     "Write NAME.key and NAME.key_secret for each NAME.",
				ArgsUsage: "NAME...",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "dir", Value: ".", Usage: "Directory for the files (created 0700 if missing)"},
					&cli.StringFlag{Name: "role", Usage: "Also print the authorized-keys line for this role (client, worker or admin)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return fail("give a NAME for the certificate (e.g. broker, alice, gpu-node-1)")
					}
					role, err := roleFlag(c)
					if err != nil {
						return err
					}
					for _, name := range c.Args().Slice() {
						cert, err := auth.NewCert()
						if err != nil {
							return fail("%v", err)
						}
						pub, sec, err := auth.WriteCerts(c.String("dir"), name, cert)
						if err != nil {
							return fail("%v", err)
						}
						fmt.Printf("%s\t%s\n%s\t(secret: keep it private)\n", pub, cert.Public, sec)
						if role != "" {
							fmt.Printf("authorized-keys line: %s %s %s\n", role, cert.Public, name)
						}
					}
					return nil
				},
			},
			{
				Name:      "show",
				Usage:     "Print the public key of certificate files (.key or .key_secret).",
				ArgsUsage: "FILE...",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "role", Usage: "Print an authorized-keys line for this role instead (client, worker or admin)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return fail("give a certificate FILE")
					}
					role, err := roleFlag(c)
					if err != nil {
						return err
					}
					for _, f := range c.Args().Slice() {
						cert, err := auth.LoadCert(f)
						if err != nil {
							return fail("%v", err)
						}
						if role == "" {
							fmt.Println(cert.Public)
							continue
						}
						name := filepath.Base(f)
						for _, ext := range []string{".key_secret", ".key"} {
							if n := len(name) - len(ext); n > 0 && name[n:] == ext {
								name = name[:n]
								break
							}
						}
						fmt.Printf("%s %s %s\n", role, cert.Public, name)
					}
					return nil
				},
			},
		},
	}
}

// roleFlag parses --role ("" when not given).
func roleFlag(c *cli.Context) (auth.Role, error) {
	r := c.String("role")
	if r == "" {
		return "", nil
	}
	role, ok := auth.ParseRole(r)
	if !ok {
		return "", fail("--role must be client, worker or admin, not %q", r)
	}
	return role, nil
}
