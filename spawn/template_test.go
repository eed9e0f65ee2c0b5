package spawn

import (
	"reflect"
	"testing"
)

func TestRender(t *testing.T) {
	v := Vars{Name: "mace_mp", Broker: "ipc:///tmp/b.ipc", IdleTimeout: 120, GPU: "1", Index: 3}
	for _, tc := range []struct{ in, want string }{
		{"worker", "worker"},
		{"{name}", "mace_mp"},
		{"--broker={broker}", "--broker=ipc:///tmp/b.ipc"},
		{"{idle_timeout}", "120.0"},
		{"gpu{gpu}-{index}", "gpu1-3"},
		// JSON passes through untouched (0.1.3 crashed with KeyError).
		{`{"model": "medium"}`, `{"model": "medium"}`},
		{`{"a": {"b": 1}}`, `{"a": {"b": 1}}`},
		{`{}`, `{}`},
		// JSON holding a whole placeholder: only the placeholder changes.
		{`{"model": "{name}", "device": "cuda:{gpu}"}`, `{"model": "mace_mp", "device": "cuda:1"}`},
		// 0.1.3 configs doubled literal braces for str.format: still work.
		{`{{"model": "medium"}}`, `{"model": "medium"}`},
		{`{{"n": "{name}"}}`, `{"n": "mace_mp"}`},
		{`{{name}}`, `{name}`},
		// Unknown or partial placeholders stay.
		{"{unknown}", "{unknown}"},
		{"{name", "{name"},
		{"name}", "name}"},
		{"{name!r}", "{name!r}"},
		{"{0}", "{0}"},
		// Substituted text is not scanned again.
		{"{broker}", "ipc:///tmp/b.ipc"},
	} {
		if got := Render(tc.in, v); got != tc.want {
			t.Errorf("Render(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got, want := Render("{name}", Vars{Name: "{broker}", Broker: "x"}), "{broker}"; got != want {
		t.Errorf("re-scan: got %q, want %q", got, want)
	}
}

func TestPyFloat(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{120, "120.0"}, {300, "300.0"}, {0, "0.0"}, {0.5, "0.5"}, {1.25, "1.25"},
		{1e-4, "0.0001"}, {1e-5, "1e-05"}, {1e16, "1e+16"}, {123456789012345.0, "123456789012345.0"},
		{-2, "-2.0"},
	} {
		if got := PyFloat(tc.f); got != tc.want {
			t.Errorf("PyFloat(%v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestSpawnConfig_Render(t *testing.T) {
	c := SpawnConfig{
		Key: "LJ", Name: "LJ",
		Command: []string{"aserpc", "worker", "{name}", "--broker", "{broker}", "--idle-timeout", "{idle_timeout}", "--kwargs", `{"epsilon": 2}`},
		Env:     map[string]string{"CUDA_VISIBLE_DEVICES": "{gpu}", "TAG": "w{index}"},
		Cwd:     "/tmp/{name}",
	}
	argv, env, cwd := c.render(Vars{Name: "LJ", Broker: "tcp://h:5556", IdleTimeout: 60, GPU: "0", Index: 1})
	if want := []string{"aserpc", "worker", "LJ", "--broker", "tcp://h:5556", "--idle-timeout", "60.0", "--kwargs", `{"epsilon": 2}`}; !reflect.DeepEqual(argv, want) {
		t.Errorf("argv = %q, want %q", argv, want)
	}
	if want := map[string]string{"CUDA_VISIBLE_DEVICES": "0", "TAG": "w1"}; !reflect.DeepEqual(env, want) {
		t.Errorf("env = %v, want %v", env, want)
	}
	if cwd != "/tmp/LJ" {
		t.Errorf("cwd = %q", cwd)
	}
}

func TestSpawnConfig_Defaults(t *testing.T) {
	c, err := SpawnConfig{Key: "lj", Command: []string{"x"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "lj" || c.MaxWorkers != 1 || c.MinWorkers != 0 || c.StartTimeout != DefaultStartTimeout || c.Env != nil || c.Cwd != "" {
		t.Errorf("defaults: %+v", c)
	}
	for name, bad := range map[string]SpawnConfig{
		"Comma":       {Key: "a,b", Command: []string{"x"}},
		"Empty":       {Key: "", Command: []string{"x"}},
		"NoCommand":   {Key: "a"},
		"MinOverMax":  {Key: "a", Command: []string{"x"}, MinWorkers: 3, MaxWorkers: 2},
		"NegativeMax": {Key: "a", Command: []string{"x"}, MaxWorkers: -1},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := bad.withDefaults(); err == nil {
				t.Errorf("%+v accepted", bad)
			}
		})
	}
}
