package pyhost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Info describes an interpreter, as reported by the interpreter itself.
type Info struct {
	// Python is the path Probe was given (not symlink-resolved).
	Python string `json:"-"`
	// Executable is sys.executable.
	Executable     string   `json:"executable"`
	Version        string   `json:"version"` // sys.version
	VersionInfo    []any    `json:"version_info"`
	Major          int      `json:"major"`
	Minor          int      `json:"minor"`
	Prefix         string   `json:"prefix"`
	BasePrefix     string   `json:"base_prefix"`
	ExecPrefix     string   `json:"exec_prefix"`
	BaseExecPrefix string   `json:"base_exec_prefix"`
	Path           []string `json:"path"`
	ABIFlags       string   `json:"abiflags"`
	// sysconfig values; any may be empty.
	LibDir      string `json:"LIBDIR"`
	LDLibrary   string `json:"LDLIBRARY"`
	InstSOName  string `json:"INSTSONAME"`
	LibPL       string `json:"LIBPL"`
	Multiarch   string `json:"MULTIARCH"`
	Shared      bool   `json:"shared"`       // Py_ENABLE_SHARED
	GILDisabled bool   `json:"gil_disabled"` // Py_GIL_DISABLED (free-threaded build)
}

// XY returns "3.11".
func (i *Info) XY() string { return fmt.Sprintf("%d.%d", i.Major, i.Minor) }

// Home returns the PYTHONHOME to initialise with: base_prefix, plus
// ":base_exec_prefix" when it differs (as PyCall and PythonCall do).
func (i *Info) Home() string {
	if i.BaseExecPrefix != "" && i.BaseExecPrefix != i.BasePrefix {
		return i.BasePrefix + ":" + i.BaseExecPrefix
	}
	return i.BasePrefix
}

const probeSource = `
import json, sys, sysconfig
v = sysconfig.get_config_var
print(json.dumps({
 "executable": sys.executable, "version": sys.version, "version_info": list(sys.version_info),
 "major": sys.version_info[0], "minor": sys.version_info[1],
 "prefix": sys.prefix, "base_prefix": getattr(sys, "base_prefix", sys.prefix),
 "exec_prefix": sys.exec_prefix, "base_exec_prefix": getattr(sys, "base_exec_prefix", sys.exec_prefix),
 "path": sys.path, "abiflags": getattr(sys, "abiflags", ""),
 "LIBDIR": v("LIBDIR") or "", "LDLIBRARY": v("LDLIBRARY") or "", "INSTSONAME": v("INSTSONAME") or "",
 "LIBPL": v("LIBPL") or "", "MULTIARCH": v("MULTIARCH") or "",
 "shared": bool(v("Py_ENABLE_SHARED")), "gil_disabled": bool(v("Py_GIL_DISABLED")),
}))
`

// probeTimeout bounds one run of the interpreter. A cold start on a network
// file system or a conda env with many .pth files can take seconds; 60 s
// only guards against a hung interpreter.
const probeTimeout = 60 * time.Second

// Probe runs python once, exactly as given, and reports what it says about
// itself. PYTHONHOME and PYTHONPATH are removed from its environment, as for
// the embedded interpreter, so both see the same paths.
func Probe(ctx context.Context, python string) (*Info, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", probeSource)
	cmd.Env = childEnv(os.Environ(), nil)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w: %s", python, err, strings.TrimSpace(stderr.String()))
	}
	info := &Info{Python: python}
	if err := json.Unmarshal(out, info); err != nil {
		return nil, fmt.Errorf("probe %s: %w (output %q)", python, err, out)
	}
	if info.Major != 3 || info.Minor < 8 {
		return info, fmt.Errorf("probe %s: Python %s is not supported (3.8 or later)", python, info.XY())
	}
	return info, nil
}

// childEnv is env without the variables that would make an interpreter see
// another installation (PYTHONHOME, PYTHONPATH) or take Go's signal
// handlers (PYTHONFAULTHANDLER), with extra appended.
func childEnv(env []string, extra map[string]string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, over := extra[k]; over || k == "PYTHONHOME" || k == "PYTHONPATH" || k == "PYTHONFAULTHANDLER" {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range extra {
		out = append(out, k+"="+v)
	}
	return out
}
