package main

import (
	"strings"
	"testing"
)

func TestIntersperse(t *testing.T) {
	app := newApp()
	cases := []struct{ in, want string }{
		{"aserpc worker LJ --broker ipc://x --heartbeat 0.2", "aserpc worker --broker ipc://x --heartbeat 0.2 -- LJ"},
		{"aserpc worker --name a mace.calculators:mace_mp --kwargs {\"m\":1}", "aserpc worker --name a --kwargs {\"m\":1} -- mace.calculators:mace_mp"},
		{"aserpc --log-format json worker LJ -n x", "aserpc --log-format json worker -n x -- LJ"},
		{"aserpc status --json --broker b", "aserpc status --json --broker b"},
		{"aserpc worker -- -weird", "aserpc worker -- -weird"},
		{"aserpc nosuch LJ --x", "aserpc nosuch LJ --x"},
	}
	for _, c := range cases {
		got := strings.Join(intersperse(app, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("%s\n got  %s\n want %s", c.in, got, c.want)
		}
	}
}
