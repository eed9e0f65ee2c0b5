package spawn

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// discoverSource is the Python side of discovery. It is written to disk
// (not exec'd from a string) so that tracebacks name a real file.
//
//go:embed aserpc_spawn.py
var discoverSource []byte

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
	path, err := writeDiscoverer()
	if err != nil {
		return nil, err
	}
	var args []any
	if registry != "" {
		args = []any{registry}
	}
	res, err := py.Call(ctx, path+":discover", args, nil)
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

// writeDiscoverer writes aserpc_spawn.py into a directory named by its
// content hash under the user cache (else the temp dir) and returns its
// path; concurrent managers of different versions never overwrite each
// other's file, and the write is a rename so nobody reads half a file.
func writeDiscoverer() (string, error) {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("aserpc-%d", os.Getuid()))
	if c, err := os.UserCacheDir(); err == nil {
		dir = filepath.Join(c, "aserpc")
	}
	sum := sha256.Sum256(discoverSource)
	d := filepath.Join(dir, "spawn", hex.EncodeToString(sum[:])[:16])
	path := filepath.Join(d, "aserpc_spawn.py")
	if b, err := os.ReadFile(path); err == nil && string(b) == string(discoverSource) {
		return path, nil
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("discovery helper: %w", err)
	}
	tmp, err := os.CreateTemp(d, ".aserpc_spawn-*")
	if err != nil {
		return "", fmt.Errorf("discovery helper: %w", err)
	}
	_, werr := tmp.Write(discoverSource)
	cerr := tmp.Close()
	if werr == nil && cerr == nil {
		os.Chmod(tmp.Name(), 0o644)
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("discovery helper: write %s: %v %v", path, werr, cerr)
	}
	return path, nil
}
