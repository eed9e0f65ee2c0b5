package spawn

import (
	"context"
	"encoding/json"
	"fmt"

	reg "github.com/aserpc/aserpc/registry"
)

// Caller runs a Python callable: *pyhost.Host does.
type Caller interface {
	Call(ctx context.Context, target string, args []any, kwargs map[string]any) (any, error)
}

// Discovery is what Discover found.
type Discovery struct {
	Configs  map[string]SpawnConfig
	Warnings []string // providers that failed or returned something unusable
	Python   string   // sys.executable of the interpreter that ran discovery
}

// Discover loads the spawn configs through py, the Python of the manager's
// environment: from registry ("module.path:ATTR" or "file.py:ATTR", a dict
// or a callable returning one) if given, else from every entry point of
// group aserpc.spawn (reference §6.2). Values may be SpawnConfig objects
// (0.1.3's or ours, read by attribute) or plain dicts. Python errors come
// back as *pyhost.PyError. A registry's invalid config is an error; an
// entry point's is a warning, and the config is skipped (a broken provider
// must not take the others down). An empty result is not an error here.
func Discover(ctx context.Context, py Caller, registry string) (*Discovery, error) {
	var args []any
	if registry != "" {
		if _, err := reg.ParseSource(registry, true); err != nil {
			return nil, err
		}
		args = []any{registry}
	}
	// pyhost installs the registry's module next to its helper, on sys.path.
	res, err := py.Call(ctx, reg.Module+":discover_spawn", args, nil)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("discovery result: %w", err)
	}
	var out struct {
		Configs  map[string]pyConfig `json:"configs"`
		Sources  map[string]string   `json:"sources"`
		Warnings []string            `json:"warnings"`
		Python   string              `json:"python"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("discovery result: %w", err)
	}
	d := &Discovery{Configs: map[string]SpawnConfig{}, Warnings: out.Warnings, Python: out.Python}
	for key, pc := range out.Configs {
		pc.Key = key
		c, err := pc.config(out.Sources[key])
		if err != nil {
			if registry != "" {
				return nil, err
			}
			d.Warnings = append(d.Warnings, fmt.Sprintf("%s: %v; skipped", out.Sources[key], err))
			continue
		}
		d.Configs[key] = c
	}
	return d, nil
}
