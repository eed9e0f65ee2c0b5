package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoad_Defaults(t *testing.T) {
	dir := t.TempDir()
	c, err := Load(dir, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Frontend, "ipc://"+dir+"/.aserpc/frontend.ipc"; got != want {
		t.Errorf("frontend %q, want %q", got, want)
	}
	if got, want := c.Backend, "ipc://"+dir+"/.aserpc/backend.ipc"; got != want {
		t.Errorf("backend %q, want %q", got, want)
	}
	if c.WorkerTimeout != 30 || c.HeartbeatInterval != 5 || c.IdleTimeout != 0 ||
		c.RequestQueueTimeout != 60 || c.ClientTimeoutMS != 60000 || c.MaxMessageSize != 256<<20 ||
		c.WorkerSpinUS != 1000 || c.ClientSpinUS != 1000 {
		t.Errorf("defaults %+v", c)
	}
	if c.Sources["worker_timeout"] != "default" {
		t.Errorf("source %q", c.Sources["worker_timeout"])
	}
}

func TestLoad_Precedence(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	os.MkdirAll(sub, 0o755)
	os.WriteFile(filepath.Join(root, "pyproject.toml"), []byte(`
[project]
name = "x"
[tool.aserpc]
ipc_dir = "sockets"
worker_timeout = 12
heartbeat_interval = 0.5
client_timeout_ms = 1000
max_message_size = 1048576
worker_spin_us = 0
`), 0o644)
	c, err := Load(sub, envOf(map[string]string{"ASERPC_WORKER_TIMEOUT": "7.5"}))
	if err != nil {
		t.Fatal(err)
	}
	// Relative ipc_dir from a pyproject is relative to that file, so every
	// process of the project meets on the same sockets whatever its cwd.
	if got, want := c.IPCDir, filepath.Join(root, "sockets"); got != want {
		t.Errorf("ipc_dir %q, want %q", got, want)
	}
	if c.WorkerTimeout != 7.5 || !strings.HasPrefix(c.Sources["worker_timeout"], "env ASERPC_WORKER_TIMEOUT") {
		t.Errorf("env must win: %v %q", c.WorkerTimeout, c.Sources["worker_timeout"])
	}
	if c.HeartbeatInterval != 0.5 || !strings.Contains(c.Sources["heartbeat_interval"], "pyproject.toml") {
		t.Errorf("pyproject value: %v %q", c.HeartbeatInterval, c.Sources["heartbeat_interval"])
	}
	if c.ClientTimeoutMS != 1000 {
		t.Errorf("client_timeout_ms %d", c.ClientTimeoutMS)
	}
	if c.IdleTimeout != 0 {
		t.Errorf("idle_timeout %v", c.IdleTimeout)
	}
	if c.MaxMessageSize != 1<<20 || c.Value("max_message_size") != "1048576" {
		t.Errorf("max_message_size %d", c.MaxMessageSize)
	}
	// Zero is a value here (never spin), not "unset".
	if c.WorkerSpinUS != 0 || !strings.Contains(c.Sources["worker_spin_us"], "pyproject.toml") {
		t.Errorf("worker_spin_us %d %q", c.WorkerSpinUS, c.Sources["worker_spin_us"])
	}
}

func TestLoad_BadValues(t *testing.T) {
	cases := []struct {
		env  map[string]string
		file string
		want string
	}{
		{env: map[string]string{"ASERPC_CLIENT_TIMEOUT_MS": "60000.0"}, want: "config client_timeout_ms = \"60000.0\" (from env ASERPC_CLIENT_TIMEOUT_MS): want an integer"},
		{env: map[string]string{"ASERPC_WORKER_TIMEOUT": "soon"}, want: "worker_timeout = \"soon\" (from env ASERPC_WORKER_TIMEOUT): want a number"},
		{env: map[string]string{"ASERPC_IDLE_TIMEOUT": "-1"}, want: "want zero or a positive value"},
		{env: map[string]string{"ASERPC_WORKER_TIMEOUT": "0"}, want: "want a positive value"},
		{env: map[string]string{"ASERPC_WORKER_SPIN_US": "-5"}, want: "want zero or a positive value"},
		{env: map[string]string{"ASERPC_WORKER_SPIN_US": "0.5"}, want: "want an integer"},
		{file: "[tool.aserpc]\nworker_timeout = \"x\"\n", want: "worker_timeout = \"x\" (from pyproject "},
		{file: "[tool.aserpc]\nipc_dir = 3\n", want: "ipc_dir = 3 (from pyproject"},
		{file: "[tool.aserpc\n", want: "pyproject.toml"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		if c.file != "" {
			os.WriteFile(filepath.Join(dir, "pyproject.toml"), []byte(c.file), 0o644)
		}
		_, err := Load(dir, envOf(c.env))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want an error containing %q", err, c.want)
		}
	}
}

func TestLoad_ExplicitAddressesAndUnknownKeys(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pyproject.toml"), []byte("[tool.aserpc]\nipc_frontend = \"tcp://127.0.0.1:5555\"\nworker_timout = 3\n"), 0o644)
	c, err := Load(dir, envOf(map[string]string{"ASERPC_IPC_BACKEND": "tcp://127.0.0.1:5556"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Frontend != "tcp://127.0.0.1:5555" || c.Backend != "tcp://127.0.0.1:5556" {
		t.Errorf("addresses %q %q", c.Frontend, c.Backend)
	}
	if got := Unknown(dir); len(got) != 1 || got[0] != "worker_timout" {
		t.Errorf("unknown keys %v", got)
	}
}

// TestLoad_Curve: the CURVE keys resolve like ipc_dir (env > pyproject >
// unset), relative files against where they were set; a Z85 server key
// stays as it is.
func TestLoad_Curve(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "sub")
	os.MkdirAll(sub, 0o755)
	os.WriteFile(filepath.Join(root, "pyproject.toml"), []byte(`
[tool.aserpc]
curve_server_key = "keys/broker.key"
curve_secret = "keys/me.key_secret"
broker_curve_secret = "/etc/aserpc/broker.key_secret"
broker_authorized_keys = "authorized_keys"
`), 0o644)
	c, err := Load(sub, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ got, want string }{
		{c.CurveServerKey, filepath.Join(root, "keys/broker.key")},
		{c.CurveSecret, filepath.Join(root, "keys/me.key_secret")},
		{c.BrokerCurveSecret, "/etc/aserpc/broker.key_secret"},
		{c.BrokerAuthorizedKeys, filepath.Join(root, "authorized_keys")},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	const key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
	c, err = Load(sub, envOf(map[string]string{"ASERPC_CURVE_SERVER_KEY": key, "ASERPC_CURVE_SECRET": "me.key_secret"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.CurveServerKey != key || c.CurveSecret != filepath.Join(sub, "me.key_secret") {
		t.Errorf("from env: server key %q, secret %q", c.CurveServerKey, c.CurveSecret)
	}
	if got := c.Sources["curve_server_key"]; got != "env ASERPC_CURVE_SERVER_KEY" {
		t.Errorf("source %q", got)
	}
	c, err = Load(t.TempDir(), envOf(nil))
	if err != nil || c.CurveServerKey != "" || c.CurveSecret != "" || c.BrokerCurveSecret != "" || c.BrokerAuthorizedKeys != "" {
		t.Errorf("unset: %+v %v", c, err)
	}
}
