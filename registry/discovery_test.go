package registry_test

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
	"github.com/aserpc/aserpc/spawn"
)

// The rules aserpc_registry.py settles for both groups, through the same
// host the worker and the manager use (a child Python: no libpython in the
// test process). The cases of each group's own tests (pyhost's battery,
// spawn's TestDiscover_*) stay where they are; these are the ones the two
// former copies disagreed on.

// host runs the system python as a child with ase and numpy.
func host(t *testing.T, env map[string]string) *pyhost.Host {
	t.Helper()
	py := testenv.SystemPython(t)
	testenv.RequireModules(t, py, "ase", "numpy")
	return hostOf(t, py, env)
}

// hostOf runs python as a child (subprocess mode: no libpython in the test
// process), with extra environment such as PYTHONPATH.
func hostOf(t *testing.T, python string, env map[string]string) *pyhost.Host {
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

// A registry file whose factory is a dataclass with postponed annotations
// and pickles itself: both need the file's module in sys.modules (the
// spawn copy registered it, the worker's did not), and a dotted variable
// (the spawn copy followed dots, the worker's did not).
const registryFile = `
from __future__ import annotations
import dataclasses, pickle
from ase.calculators.lj import LennardJones

@dataclasses.dataclass
class Options:
    sigma: float = 1.0

class NS:
    @staticmethod
    def calcs():
        return {"lj": make}

def make():
    pickle.loads(pickle.dumps(Options()))  # finds its class through sys.modules
    return LennardJones(sigma=Options().sigma)

SPAWN = {"lj": {"command": ["aserpc", "worker", "LJ"]}}
`

func TestFileRegistry_SameRulesForBothGroups(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg.py")
	write(t, reg, registryFile)
	h := host(t, nil)
	ctx := context.Background()

	f, err := h.Resolve(ctx, pyhost.FactorySpec{Spec: "lj", Registry: reg + ":NS.calcs"})
	if err != nil {
		t.Fatalf("resolve through a dotted, callable variable: %v", err)
	}
	if f.Source != "registry" || f.Description != "_registry.make" {
		t.Errorf("factory %+v", f)
	}
	if _, err := f.New(ctx); err != nil {
		t.Fatalf("a factory pickling a dataclass of its registry file: %v", err)
	}
	rows, err := h.List(ctx, reg+":NS.calcs")
	if err != nil || len(rows) != 1 || rows[0].Name != "lj" {
		t.Errorf("list %+v, %v", rows, err)
	}
	d, err := spawn.Discover(ctx, h, reg+":SPAWN")
	if err != nil || len(d.Configs) != 1 {
		t.Fatalf("spawn discovery from the same file: %+v, %v", d, err)
	}
}

// TestEntryPoints_BrokenProvidersAreWarnings: in both groups a provider
// that fails to import, raises, or is not callable is reported and skipped,
// never hiding the good ones.
func TestEntryPoints_BrokenProvidersAreWarnings(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "prov.py"), `
def calcs():
    return {"SoftLJ": {"factory": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 0.9}}}
def spawns():
    return {"SoftLJ": {"command": ["aserpc", "worker", "SoftLJ"]}}
def boom():
    raise RuntimeError("provider exploded")
NOT_CALLABLE = {"x": 1}
`)
	write(t, filepath.Join(dir, "prov-1.0.dist-info", "METADATA"), "Metadata-Version: 2.1\nName: prov\nVersion: 1.0\n")
	write(t, filepath.Join(dir, "prov-1.0.dist-info", "entry_points.txt"),
		"[aserpc.calculators]\ngood = prov:calcs\nbad = prov:boom\nmissing = no_such_module_q:calcs\nplain = prov:NOT_CALLABLE\n"+
			"[aserpc.spawn]\ngood = prov:spawns\nbad = prov:boom\nmissing = no_such_module_q:spawns\nplain = prov:NOT_CALLABLE\n")
	h := host(t, map[string]string{"PYTHONPATH": dir})
	ctx := context.Background()

	rows, err := h.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	warn := map[string]string{}
	names := map[string]bool{}
	for _, r := range rows {
		if r.Warning != "" {
			warn[r.Name] = r.Warning
		} else {
			names[r.Name] = true
		}
	}
	if !names["SoftLJ"] || !names["LJ"] || !names["EMT"] {
		t.Errorf("calculators %v, want SoftLJ with the built-ins", names)
	}
	for name, want := range map[string]string{"bad": "provider exploded", "missing": "no_such_module_q", "plain": "not callable"} {
		if !strings.Contains(warn[name], want) {
			t.Errorf("calculator provider %s: warning %q, want it to mention %q", name, warn[name], want)
		}
	}
	f, err := h.Resolve(ctx, pyhost.FactorySpec{Spec: "SoftLJ"})
	if err != nil || f.Source != "entry point" {
		t.Errorf("resolve SoftLJ: %+v, %v", f, err)
	}

	d, err := spawn.Discover(ctx, h, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Configs["SoftLJ"]; !ok || len(d.Configs) != 1 {
		t.Errorf("spawn configs %v", spawn.Names(d.Configs))
	}
	w := strings.Join(d.Warnings, "\n")
	for _, want := range []string{"provider exploded", "no_such_module_q", "not callable"} {
		if !strings.Contains(w, want) {
			t.Errorf("spawn warnings %q lack %q", w, want)
		}
	}
}

// Spawn configs (the manager's discovery, aserpc.spawn): what spawn.Discover
// gets from discover_spawn.

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

func TestSpawnDiscovery_Registry(t *testing.T) {
	py := testenv.SystemPython(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "reg.py"), registryPy)
	write(t, filepath.Join(dir, "pkg", "__init__.py"), "")
	write(t, filepath.Join(dir, "pkg", "spawns.py"), registryPy)
	h := hostOf(t, py, map[string]string{"PYTHONPATH": dir})
	ctx := context.Background()

	t.Run("FileDicts", func(t *testing.T) {
		d, err := spawn.Discover(ctx, h, filepath.Join(dir, "reg.py")+":DICTS")
		if err != nil {
			t.Fatal(err)
		}
		want := spawn.SpawnConfig{
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
		d, err := spawn.Discover(ctx, h, "pkg.spawns:objects")
		if err != nil {
			t.Fatal(err)
		}
		c := d.Configs["mace_mp"]
		if c.Name != "mace_mp" || c.IdleTimeout != 300 || c.MaxWorkers != 1 || c.StartTimeout != spawn.DefaultStartTimeout ||
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
			_, err := spawn.Discover(ctx, h, tc.registry)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Discover(%q) error = %v, want it to mention %q", tc.registry, err, tc.want)
			}
		})
	}
}

// TestSpawnDiscovery_EntryPoints installs a fake distribution whose aserpc.spawn
// entry points are a good provider, a failing one and one returning a list.
func TestSpawnDiscovery_EntryPoints(t *testing.T) {
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
	h := hostOf(t, py, map[string]string{"PYTHONPATH": dir})
	d, err := spawn.Discover(context.Background(), h, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := spawn.Names(d.Configs); !reflect.DeepEqual(got, []string{"LJ"}) {
		t.Errorf("configs %v, want [LJ]", got)
	}
	w := strings.Join(d.Warnings, "\n")
	for _, s := range []string{"boom", "not a dict", "'bad' must be a SpawnConfig"} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings %q lack %q", w, s)
		}
	}
}

// TestSpawnDiscovery_Reference reads aserpc 0.1.3's own SpawnConfig objects.
func TestSpawnDiscovery_Reference(t *testing.T) {
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
	h := hostOf(t, py, nil)
	d, err := spawn.Discover(context.Background(), h, filepath.Join(dir, "ref_spawn.py")+":get_spawn_configs")
	if err != nil {
		t.Fatal(err)
	}
	c := d.Configs["mace_mp"]
	if got, want := c.Command[len(c.Command)-1], `{"model": "medium"}`; got != want || c.IdleTimeout != 120 {
		t.Errorf("got %+v, last arg %q", c, got)
	}
}
