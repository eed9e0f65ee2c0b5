package spawn

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/aserpc/aserpc/wire"
)

// Defaults of the optional SpawnConfig fields.
const (
	// DefaultIdleTimeout is 0.1.3's IDLE_TIMEOUT, the {idle_timeout} value
	// when a config does not set one.
	DefaultIdleTimeout = 300.0
	// DefaultStartTimeout is how long a child has to register with the
	// broker. It matches the broker's default spawn timeout: a model that
	// downloads weights or a `uvx` that installs torch on first use needs
	// minutes, not seconds.
	DefaultStartTimeout = 120 * time.Second
)

// SpawnConfig is how to start a worker for one calculator: aserpc 0.1.3's
// SpawnConfig (name, command, env, cwd, idle_timeout) plus MaxWorkers,
// MinWorkers, GPUs and StartTimeout. The name mirrors the Python class that
// users write.
type SpawnConfig struct {
	// Key is the name the manager advertises and the broker asks for: the
	// key of the registry dict.
	Key string
	// Name is the {name} template value (SpawnConfig.name; usually Key).
	Name string
	// Command is the worker's argv (no shell); each element is a template.
	Command []string
	// Env is merged over the manager's environment (values are templates);
	// nil inherits it unchanged.
	Env map[string]string
	// Cwd is the child's working directory (a template; "" = the
	// manager's). It also decides a child's default ipc paths.
	Cwd string
	// IdleTimeout is used only as the {idle_timeout} value, rendered as
	// Python's str(float): 120 → "120.0". Discovery defaults it to
	// DefaultIdleTimeout, as 0.1.3 does.
	IdleTimeout float64
	// MaxWorkers is the most children running at once (default 1).
	MaxWorkers int
	// MinWorkers children are kept running even without requests, and
	// restarted with backoff when they exit (default 0: scale to zero).
	MinWorkers int
	// GPUs are device ids handed out round-robin by child slot: child i
	// gets GPUs[i % len(GPUs)] as CUDA_VISIBLE_DEVICES and {gpu}.
	GPUs []string
	// CPUsPerWorker is each child's share of the CPUs the manager may use:
	// child i gets the i-th consecutive slice (disjoint while they last),
	// pinned there, with OMP/MKL/OpenBLAS threads (and torch's) set to its
	// size unless the user set them. 0: the allowed CPUs divided by
	// MaxWorkers, at least 1.
	CPUsPerWorker int
	// StartTimeout is how long a child may take to register before it is
	// killed and the waiting clients are told why (default 120 s).
	StartTimeout time.Duration
	// Source says where the config came from, for the log.
	Source string
}

// ErrNoConfigs is returned when discovery finds nothing.
var ErrNoConfigs = errors.New("No spawn configs found")

// withDefaults fills unset optional fields and checks the rest.
func (c SpawnConfig) withDefaults() (SpawnConfig, error) {
	if !wire.ValidName([]byte(c.Key)) {
		return c, fmt.Errorf("spawn config %q: name must be 1-%d bytes of UTF-8", c.Key, wire.MaxNameLen)
	}
	if strings.Contains(c.Key, ",") {
		// MANAGER_READY joins the names with commas (reference bug 10.2/15).
		return c, fmt.Errorf("spawn config %q: a name cannot contain a comma", c.Key)
	}
	if c.Name == "" {
		c.Name = c.Key
	}
	if len(c.Command) == 0 || c.Command[0] == "" {
		return c, fmt.Errorf("spawn config %q: empty command", c.Key)
	}
	if c.IdleTimeout < 0 {
		return c, fmt.Errorf("spawn config %q: idle_timeout cannot be negative", c.Key)
	}
	if c.MaxWorkers == 0 {
		c.MaxWorkers = 1
	}
	if c.MaxWorkers < 0 || c.MinWorkers < 0 {
		return c, fmt.Errorf("spawn config %q: max_workers and min_workers cannot be negative", c.Key)
	}
	if c.MinWorkers > c.MaxWorkers {
		return c, fmt.Errorf("spawn config %q: min_workers (%d) exceeds max_workers (%d)", c.Key, c.MinWorkers, c.MaxWorkers)
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.StartTimeout < 0 {
		return c, fmt.Errorf("spawn config %q: start_timeout cannot be negative", c.Key)
	}
	return c, nil
}

// pyConfig is one config as aserpc_spawn.py returns it.
type pyConfig struct {
	Key          string            `json:"key"`
	Name         string            `json:"name"`
	Command      []string          `json:"command"`
	Env          map[string]string `json:"env"`
	Cwd          string            `json:"cwd"`
	IdleTimeout  *float64          `json:"idle_timeout"`
	MaxWorkers   *int              `json:"max_workers"`
	MinWorkers   *int              `json:"min_workers"`
	GPUs         []string          `json:"gpus"`
	StartTimeout *float64          `json:"start_timeout"`
	CPUsPer      *int              `json:"cpus_per_worker"`
}

func (p pyConfig) config(source string) (SpawnConfig, error) {
	c := SpawnConfig{Key: p.Key, Name: p.Name, Command: p.Command, Env: p.Env, Cwd: p.Cwd, GPUs: p.GPUs, Source: source}
	c.IdleTimeout = DefaultIdleTimeout
	if p.IdleTimeout != nil {
		c.IdleTimeout = *p.IdleTimeout
	}
	if p.MaxWorkers != nil {
		if *p.MaxWorkers < 1 {
			return c, fmt.Errorf("spawn config %q: max_workers must be at least 1", p.Key)
		}
		c.MaxWorkers = *p.MaxWorkers
	}
	if p.MinWorkers != nil {
		c.MinWorkers = *p.MinWorkers
	}
	if p.CPUsPer != nil {
		if *p.CPUsPer < 1 {
			return c, fmt.Errorf("spawn config %q: cpus_per_worker must be at least 1", p.Key)
		}
		c.CPUsPerWorker = *p.CPUsPer
	}
	if p.StartTimeout != nil {
		if *p.StartTimeout <= 0 {
			return c, fmt.Errorf("spawn config %q: start_timeout must be positive", p.Key)
		}
		c.StartTimeout = time.Duration(*p.StartTimeout * float64(time.Second))
	}
	return c.withDefaults()
}

// Names returns the keys of configs, sorted.
func Names(configs map[string]SpawnConfig) []string {
	names := make([]string, 0, len(configs))
	for k := range configs {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
