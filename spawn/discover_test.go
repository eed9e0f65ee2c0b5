package spawn

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/testenv"
	"github.com/aserpc/aserpc/pyhost"
)

// openPy runs python as a child (subprocess mode: no libpython in the test
// process), with extra environment such as PYTHONPATH.
func openPy(t *testing.T, python string, env map[string]string) *pyhost.Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := pyhost.Open(ctx, pyhost.Config{Python: python, Mode: pyhost.ModeSubprocess, Env: env, HelperDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

const registryPy = `
from dataclasses import dataclass
from typing import Optional

@dataclass
class SpawnConfig:  # the shape of aserpc 0.1.3's class
    name: str
    command: list
    env: Optional[dict] = None
    cwd: Optional[str] = None
    idle_timeout: float = 300.0

DICTS = {
    "LJ": {"command": ["aserpc", "worker", "{name}", "--kwargs", '{"epsilon": 1}'], "idle_timeout": 60,
           "max_workers": 2, "min_workers": 1, "gpus": [0, "1"], "start_timeout": 7.5,
           "env": {"A": 1}, "cwd": "/tmp"},
}

def objects():
    return {"mace_mp": SpawnConfig(name="mace_mp", command=["uvx", "aserpc", "worker", "mace_mp"])}

NOT_A_DICT = [1, 2]
UNKNOWN_FIELD = {"x": {"command": ["a"], "max_worker": 2}}
BAD_VALUE = {"x": 42}
STRING_COMMAND = {"x": {"command": "aserpc worker LJ"}}
COMMA = {"a,b": {"command": ["a"]}}
`

func TestDiscover_Registry(t *testing.T) {
	py := testenv.SystemPython(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "reg.py"), registryPy)
	write(t, filepath.Join(dir, "pkg", "__init__.py"), "")
	write(t, filepath.Join(dir, "pkg", "spawns.py"), registryPy)
	h := openPy(t, py, map[string]string{"PYTHONPATH": dir})
	ctx := context.Background()

	t.Run("FileDicts", func(t *testing.T) {
		d, err := Discover(ctx, h, filepath.Join(dir, "reg.py")+":DICTS")
		if err != nil {
			t.Fatal(err)
		}
		want := SpawnConfig{
			Key: "LJ", Name: "LJ", Command: []string{"aserpc", "worker", "{name}", "--kwargs", `{"epsilon": 1}`},
			Env: map[string]string{"A": "1"}, Cwd: "/tmp", IdleTimeout: 60, MaxWorkers: 2, MinWorkers: 1,
			GPUs: []string{"0", "1"}, StartTimeout: 7500 * time.Millisecond,
		}
		got := d.Configs["LJ"]
		got.Source = ""
		if len(d.Configs) != 1 || !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", d.Configs, want)
		}
	})
	t.Run("ModuleCallableObjects", func(t *testing.T) {
		d, err := Discover(ctx, h, "pkg.spawns:objects")
		if err != nil {
			t.Fatal(err)
		}
		c := d.Configs["mace_mp"]
		if c.Name != "mace_mp" || c.IdleTimeout != 300 || c.MaxWorkers != 1 || c.StartTimeout != DefaultStartTimeout ||
			!reflect.DeepEqual(c.Command, []string{"uvx", "aserpc", "worker", "mace_mp"}) || c.Env != nil {
			t.Errorf("got %+v", c)
		}
		if !strings.Contains(c.Source, "pkg.spawns:objects") {
			t.Errorf("source %q", c.Source)
		}
	})
	for name, tc := range map[string]struct{ registry, want string }{
		"NoColon":       {"pkg.spawns", "expected 'module:variable'"},
		"NotADict":      {"pkg.spawns:NOT_A_DICT", "must be a dict"},
		"UnknownField":  {"pkg.spawns:UNKNOWN_FIELD", "unknown field(s) max_worker"},
		"BadValue":      {"pkg.spawns:BAD_VALUE", "must be a SpawnConfig or a dict"},
		"StringCommand": {"pkg.spawns:STRING_COMMAND", "non-empty list of strings"},
		"Comma":         {"pkg.spawns:COMMA", "comma"},
		"NoModule":      {"no_such_module_xyz:C", "No module named"},
		"NoFile":        {"/nonexistent/reg.py:C", "not found"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Discover(ctx, h, tc.registry)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Discover(%q) error = %v, want it to mention %q", tc.registry, err, tc.want)
			}
		})
	}
}

// TestDiscover_EntryPoints installs a fake distribution whose aserpc.spawn
// entry points are a good provider, a failing one and one returning a list.
func TestDiscover_EntryPoints(t *testing.T) {
	py := testenv.SystemPython(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "myspawn.py"), `
def good():
    return {"LJ": {"command": ["aserpc", "worker", "LJ"]}, "bad": 42}
def broken():
    raise RuntimeError("boom")
def listy():
    return ["LJ"]
`)
	write(t, filepath.Join(dir, "myspawn-1.0.dist-info", "METADATA"), "Metadata-Version: 2.1\nName: myspawn\nVersion: 1.0\n")
	write(t, filepath.Join(dir, "myspawn-1.0.dist-info", "entry_points.txt"),
		"[aserpc.spawn]\na = myspawn:good\nb = myspawn:broken\nc = myspawn:listy\n")
	h := openPy(t, py, map[string]string{"PYTHONPATH": dir})
	d, err := Discover(context.Background(), h, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := Names(d.Configs); !reflect.DeepEqual(got, []string{"LJ"}) {
		t.Errorf("configs %v, want [LJ]", got)
	}
	w := strings.Join(d.Warnings, "\n")
	for _, s := range []string{"boom", "not a dict", "'bad' must be a SpawnConfig"} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings %q lack %q", w, s)
		}
	}
}

// TestDiscover_Reference reads aserpc 0.1.3's own SpawnConfig objects.
func TestDiscover_Reference(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the aserpc 0.1.3 venv")
	}
	py := testenv.Venv(t, "ref-aserpc-0.1.3-py3.11", testenv.PyenvPython(t, "3.11"),
		testenv.VenvOptions{Packages: []string{"aserpc==0.1.3"}})
	dir := t.TempDir()
	write(t, filepath.Join(dir, "ref_spawn.py"), `
from aserpc.spawn import SpawnConfig
def get_spawn_configs():
    return {"mace_mp": SpawnConfig(name="mace_mp", command=["uvx", "--with", "mace-torch", "aserpc", "worker",
            "mace.calculators:mace_mp", "--kwargs", '{"model": "medium"}'], idle_timeout=120.0)}
`)
	h := openPy(t, py, nil)
	d, err := Discover(context.Background(), h, filepath.Join(dir, "ref_spawn.py")+":get_spawn_configs")
	if err != nil {
		t.Fatal(err)
	}
	c := d.Configs["mace_mp"]
	argv, _, _ := c.render(Vars{Name: c.Name, IdleTimeout: c.IdleTimeout})
	if got, want := argv[len(argv)-1], `{"model": "medium"}`; got != want || c.IdleTimeout != 120 {
		t.Errorf("got %+v, last arg %q", c, got)
	}
}
