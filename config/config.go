// Package config resolves aserpc's settings the way aserpc 0.1.3 does, so a
// Go broker and Python clients started in the same project meet on the same
// sockets: per key, the environment variable ASERPC_<KEY> wins over the
// [tool.aserpc] table of the nearest pyproject.toml (the working directory
// upwards), which wins over the built-in default
// (reference-behaviour.md §8).
//
// Unlike the reference, a bad value is an error naming the key and where it
// came from (the reference failed at import time), a relative ipc_dir is
// resolved against the directory of the pyproject.toml that set it (or the
// working directory for the environment), and every value remembers its
// source so `aserpc config` can show it.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Source says where a value came from.
type Source string

// Sources of a value.
const (
	FromDefault Source = "default"
	FromEnv     Source = "env"
	FromFile    Source = "pyproject"
	FromDerived Source = "derived" // ipc_frontend/ipc_backend built from ipc_dir
)

// Config is the resolved configuration.
type Config struct {
	IPCDir              string
	Frontend            string
	Backend             string
	WorkerTimeout       float64 // seconds
	HeartbeatInterval   float64 // seconds
	IdleTimeout         float64 // seconds
	RequestQueueTimeout float64 // seconds
	ClientTimeoutMS     int
	MaxMessageSize      int64 // bytes; the largest frame a broker accepts and a peer sends
	WorkerSpinUS        int   // µs a worker busy-polls for the next request after a job (0: never)
	ClientSpinUS        int   // µs a session's client busy-polls for its worker's reply (the Python client's; 0: never)
	BatchSize           int   // structures a worker computes in one call (1: no batching)
	BatchAtoms          int   // atoms in one batch (0: no bound)
	BatchWaitMS         float64
	MetricsAddress      string // host:port the broker serves Prometheus metrics on ("": none)
	// AdvertiseBackend is the broker backend a manager hands its workers
	// ({broker}) when they must reach it by another address than the
	// manager's own: workers on other hosts ("": the manager's address).
	AdvertiseBackend string

	// CURVE (tcp endpoints only; see the auth package). Paths are
	// absolute: relative ones are resolved like ipc_dir. "" = not set.
	CurveServerKey       string // peers: the broker's public key (Z85) or its certificate file
	CurveSecret          string // peers: this process's secret certificate file
	BrokerCurveSecret    string // broker: its secret certificate file
	BrokerAuthorizedKeys string // broker: the authorized-keys file

	// Project is the pyproject.toml consulted ("" when none was found).
	Project string
	// Sources maps each key to where its value came from, with the file
	// path or variable name.
	Sources map[string]string
}

// Keys in the reference's order.
var Keys = []string{
	"ipc_dir", "ipc_frontend", "ipc_backend", "worker_timeout",
	"heartbeat_interval", "idle_timeout", "request_queue_timeout", "client_timeout_ms",
	"max_message_size", "worker_spin_us", "client_spin_us", "batch_size", "batch_atoms", "batch_wait_ms", "metrics_address", "advertise_backend", // ours
	"curve_server_key", "curve_secret", "broker_curve_secret", "broker_authorized_keys",
}

// DefaultMaxMessageSize (256 MiB) fits a 1M-atom request with every
// extension array.
const DefaultMaxMessageSize = 256 << 20

// DefaultWorkerSpinUS: 1 ms covers the gap between one request and the
// next of a client that loops (MD, optimisation), measured 0.1–0.4 ms.
const DefaultWorkerSpinUS = 1000

// DefaultClientSpinUS: a session's client waiting for its worker's reply on
// the direct path polls for this long before it sleeps (clientpy's
// _transport.UnixDirect), so that a reply within it needs no wake-up.
const DefaultClientSpinUS = 1000

// DefaultBatchWaitMS is how long a batching worker holds a first job for
// others that the broker expects (never when it expects none).
const DefaultBatchWaitMS = 5

// Load resolves the configuration for the working directory dir ("" = the
// process's) and environment env (nil = the process's).
func Load(dir string, env func(string) (string, bool)) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	if dir == "" {
		var err error
		if dir, err = os.Getwd(); err != nil {
			return nil, err
		}
	}
	c := &Config{Sources: map[string]string{}}
	table, project, err := findProject(dir)
	if err != nil {
		return nil, err
	}
	c.Project = project
	root := dir
	if project != "" {
		root = filepath.Dir(project)
	}

	// raw looks a key up: env, then pyproject, then nothing.
	raw := func(key string) (any, Source, string, bool) {
		name := "ASERPC_" + strings.ToUpper(key)
		if v, ok := env(name); ok {
			return v, FromEnv, name, true
		}
		if v, ok := table[key]; ok {
			return v, FromFile, project, true
		}
		return nil, FromDefault, "", false
	}
	bad := func(key string, src Source, where string, v any, want string) error {
		return fmt.Errorf("config %s = %#v (from %s %s): %s", key, v, src, where, want)
	}

	str := func(key string, def func() string) (string, error) {
		v, src, where, ok := raw(key)
		if !ok {
			c.Sources[key] = string(FromDefault)
			return def(), nil
		}
		s, isStr := v.(string)
		if !isStr || s == "" {
			return "", bad(key, src, where, v, "want a non-empty string")
		}
		c.Sources[key] = fmt.Sprintf("%s %s", src, where)
		return s, nil
	}
	// num reads a number; zero is accepted only where zeroOK.
	num := func(key string, def float64, integer, zeroOK bool) (float64, error) {
		v, src, where, ok := raw(key)
		if !ok {
			c.Sources[key] = string(FromDefault)
			return def, nil
		}
		var f float64
		switch x := v.(type) {
		case string:
			var err error
			if integer {
				var i int64
				i, err = strconv.ParseInt(strings.TrimSpace(x), 10, 64)
				f = float64(i)
			} else {
				f, err = strconv.ParseFloat(strings.TrimSpace(x), 64)
			}
			if err != nil {
				kind := "a number"
				if integer {
					kind = "an integer"
				}
				return 0, bad(key, src, where, v, "want "+kind)
			}
		case int64:
			f = float64(x)
		case float64:
			if integer && x != float64(int64(x)) {
				return 0, bad(key, src, where, v, "want an integer")
			}
			f = x
		default:
			return 0, bad(key, src, where, v, "want a number")
		}
		if f < 0 || (f == 0 && !zeroOK) {
			want := "want a positive value"
			if zeroOK {
				want = "want zero or a positive value"
			}
			return 0, bad(key, src, where, v, want)
		}
		c.Sources[key] = fmt.Sprintf("%s %s", src, where)
		return f, nil
	}

	if c.IPCDir, err = str("ipc_dir", func() string { return filepath.Join(root, ".aserpc") }); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(c.IPCDir) {
		base := dir
		if strings.HasPrefix(c.Sources["ipc_dir"], string(FromFile)) {
			base = root
		}
		c.IPCDir = filepath.Join(base, c.IPCDir)
	}
	if c.Frontend, err = str("ipc_frontend", func() string { return "ipc://" + c.IPCDir + "/frontend.ipc" }); err != nil {
		return nil, err
	}
	if c.Backend, err = str("ipc_backend", func() string { return "ipc://" + c.IPCDir + "/backend.ipc" }); err != nil {
		return nil, err
	}
	for _, k := range []string{"ipc_frontend", "ipc_backend"} {
		if c.Sources[k] == string(FromDefault) {
			c.Sources[k] = string(FromDerived) + " from ipc_dir"
		}
	}
	if c.WorkerTimeout, err = num("worker_timeout", 30, false, false); err != nil {
		return nil, err
	}
	if c.HeartbeatInterval, err = num("heartbeat_interval", 5, false, false); err != nil {
		return nil, err
	}
	if c.IdleTimeout, err = num("idle_timeout", 0, false, true); err != nil {
		return nil, err
	}
	if c.RequestQueueTimeout, err = num("request_queue_timeout", 60, false, false); err != nil {
		return nil, err
	}
	ms, err := num("client_timeout_ms", 60000, true, false)
	if err != nil {
		return nil, err
	}
	c.ClientTimeoutMS = int(ms)
	size, err := num("max_message_size", DefaultMaxMessageSize, true, false)
	if err != nil {
		return nil, err
	}
	c.MaxMessageSize = int64(size)
	spin, err := num("worker_spin_us", DefaultWorkerSpinUS, true, true)
	if err != nil {
		return nil, err
	}
	c.WorkerSpinUS = int(spin)
	cspin, err := num("client_spin_us", DefaultClientSpinUS, true, true)
	if err != nil {
		return nil, err
	}
	c.ClientSpinUS = int(cspin)
	bsize, err := num("batch_size", 1, true, false)
	if err != nil {
		return nil, err
	}
	c.BatchSize = int(bsize)
	batoms, err := num("batch_atoms", 0, true, true)
	if err != nil {
		return nil, err
	}
	c.BatchAtoms = int(batoms)
	if c.BatchWaitMS, err = num("batch_wait_ms", DefaultBatchWaitMS, false, true); err != nil {
		return nil, err
	}
	if c.MetricsAddress, err = str("metrics_address", func() string { return "" }); err != nil {
		return nil, err
	}
	if c.AdvertiseBackend, err = str("advertise_backend", func() string { return "" }); err != nil {
		return nil, err
	}

	// path resolves a file name like ipc_dir: against the pyproject.toml
	// that set it, else the working directory.
	path := func(key string) (string, error) {
		v, err := str(key, func() string { return "" })
		if err != nil || v == "" || filepath.IsAbs(v) {
			return v, err
		}
		base := dir
		if strings.HasPrefix(c.Sources[key], string(FromFile)) {
			base = root
		}
		return filepath.Join(base, v), nil
	}
	if c.CurveServerKey, err = str("curve_server_key", func() string { return "" }); err != nil {
		return nil, err
	}
	if c.CurveServerKey != "" && !validZ85Key(c.CurveServerKey) {
		if c.CurveServerKey, err = path("curve_server_key"); err != nil {
			return nil, err
		}
	}
	for _, kv := range []struct {
		key string
		dst *string
	}{{"curve_secret", &c.CurveSecret}, {"broker_curve_secret", &c.BrokerCurveSecret}, {"broker_authorized_keys", &c.BrokerAuthorizedKeys}} {
		if *kv.dst, err = path(kv.key); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// validZ85Key: 40 characters of the Z85 alphabet, which a file name
// practically never is (checked without cgo: config stays pure Go).
func validZ85Key(s string) bool {
	const z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
	if len(s) != 40 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune(z85, r) {
			return false
		}
	}
	return true
}

// findProject returns the [tool.aserpc] table of the nearest pyproject.toml
// from dir upwards and its path. As the reference, the first file found is
// used even without the table. Unlike the reference, an unreadable or
// invalid file is an error rather than silently empty: a typo must not
// quietly move the broker to another socket.
func findProject(dir string) (map[string]any, string, error) {
	for d := dir; ; {
		p := filepath.Join(d, "pyproject.toml")
		data, err := os.ReadFile(p)
		if err == nil {
			var doc struct {
				Tool struct {
					Aserpc map[string]any `toml:"aserpc"`
				} `toml:"tool"`
			}
			if err := toml.Unmarshal(data, &doc); err != nil {
				return nil, "", fmt.Errorf("config: %s: %w", p, err)
			}
			return doc.Tool.Aserpc, p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("config: %w", err)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return nil, "", nil
		}
		d = parent
	}
}

// Value returns the value of key as text.
func (c *Config) Value(key string) string {
	switch key {
	case "ipc_dir":
		return c.IPCDir
	case "ipc_frontend":
		return c.Frontend
	case "ipc_backend":
		return c.Backend
	case "worker_timeout":
		return ftoa(c.WorkerTimeout)
	case "heartbeat_interval":
		return ftoa(c.HeartbeatInterval)
	case "idle_timeout":
		return ftoa(c.IdleTimeout)
	case "request_queue_timeout":
		return ftoa(c.RequestQueueTimeout)
	case "client_timeout_ms":
		return strconv.Itoa(c.ClientTimeoutMS)
	case "max_message_size":
		return strconv.FormatInt(c.MaxMessageSize, 10)
	case "worker_spin_us":
		return strconv.Itoa(c.WorkerSpinUS)
	case "client_spin_us":
		return strconv.Itoa(c.ClientSpinUS)
	case "batch_size":
		return strconv.Itoa(c.BatchSize)
	case "batch_atoms":
		return strconv.Itoa(c.BatchAtoms)
	case "batch_wait_ms":
		return ftoa(c.BatchWaitMS)
	case "metrics_address":
		return c.MetricsAddress
	case "advertise_backend":
		return c.AdvertiseBackend
	case "curve_server_key":
		return c.CurveServerKey
	case "curve_secret":
		return c.CurveSecret
	case "broker_curve_secret":
		return c.BrokerCurveSecret
	case "broker_authorized_keys":
		return c.BrokerAuthorizedKeys
	}
	return ""
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// Unknown returns keys of [tool.aserpc] that aserpc does not know, so a
// misspelt key can be warned about.
func Unknown(dir string) []string {
	table, _, err := findProject(dir)
	if err != nil {
		return nil
	}
	known := map[string]bool{}
	for _, k := range Keys {
		known[k] = true
	}
	var out []string
	for k := range table {
		if !known[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// StateDir is this user's aserpc state directory: $XDG_STATE_HOME/aserpc,
// else ~/.local/state/aserpc, else /tmp/aserpc-UID. The manager keeps its
// children's logs there, the broker its state file (not in the ipc
// directory, which a broker that made it removes when it exits).
func StateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "aserpc")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "aserpc")
	}
	return filepath.Join(os.TempDir(), "aserpc-"+strconv.Itoa(os.Getuid()))
}
