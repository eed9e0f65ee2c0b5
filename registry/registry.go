// Package registry is the one owner of "what can be served and how to
// build it": the CALCULATOR argument of a worker, the --registry paths of
// the worker, `aserpc list` and the manager, and discovery through the
// entry-point groups aserpc.calculators and aserpc.spawn.
//
// The Go side parses and classifies what a user typed, with aserpc 0.1.3's
// rules and messages, before any Python starts (ParseSpec, ParseSource).
// The Python side, aserpc_registry.py, embedded here as Source, loads the
// code in the user's interpreter: pyhost installs it next to its helper,
// which calls it for the worker and `aserpc list`, and the manager calls
// its discover_spawn through pyhost (see package spawn). It needs only the
// standard library.
package registry

import (
	_ "embed"
	"fmt"
	"strings"
)

// Source is aserpc_registry.py, the Python half of this package.
//
//go:embed aserpc_registry.py
var Source []byte

// Module is the name Source is imported under; File is its file name.
const (
	Module = "aserpc_registry"
	File   = Module + ".py"
)

// The entry-point groups.
const (
	CalculatorsGroup = "aserpc.calculators"
	SpawnGroup       = "aserpc.spawn"
)

// Kind says how a CALCULATOR argument is resolved.
type Kind int

const (
	// Name is looked up in --registry, then among the entry points of
	// aserpc.calculators and the built-ins (LJ, EMT).
	Name Kind = iota
	// Direct is "pkg.module:callable": imported and called with --args and
	// --kwargs.
	Direct
)

func (k Kind) String() string {
	if k == Direct {
		return "direct"
	}
	return "name"
}

// Spec is a worker's CALCULATOR argument.
type Spec struct {
	Raw  string
	Kind Kind
	// Module and Attr are set for Direct: "mace.calculators" and "mace_mp".
	Module, Attr string
}

// ParseSpec classifies a CALCULATOR argument as aserpc 0.1.3 does: a
// colon with a dot before it ("pkg.mod:fn") is a direct import, anything
// else a name.
func ParseSpec(s string) (Spec, error) {
	if strings.TrimSpace(s) == "" {
		return Spec{}, fmt.Errorf("CALCULATOR is empty: give a name (LJ, mace_mp ...) or module:callable")
	}
	head, _, found := strings.Cut(s, ":")
	if !found || !strings.Contains(head, ".") {
		return Spec{Raw: s, Kind: Name}, nil
	}
	i := strings.LastIndex(s, ":")
	mod, attr := s[:i], s[i+1:]
	if attr == "" {
		return Spec{}, fmt.Errorf("Invalid target '%s': expected 'module:name'", s)
	}
	return Spec{Raw: s, Kind: Direct, Module: mod, Attr: attr}, nil
}

// SourcePath is a --registry path, "SOURCE:VAR".
type SourcePath struct {
	Raw string
	// Path is the file (File) or the dotted module name; Var the variable,
	// possibly dotted, a dict or a callable returning one.
	Path, Var string
	// File is set when Path names a file: it ends with .py or contains /.
	File bool
}

// ParseSource splits a --registry path on its last colon, with aserpc
// 0.1.3's message for a path without one, which differs between the
// worker's registry (spawn false) and the manager's (spawn true).
func ParseSource(s string, spawn bool) (SourcePath, error) {
	i := strings.LastIndex(s, ":")
	if i <= 0 || i == len(s)-1 {
		if spawn {
			return SourcePath{}, fmt.Errorf("Invalid registry path '%s': expected 'module:variable'", s)
		}
		return SourcePath{}, fmt.Errorf("Invalid registry path '%s', expected 'path:variable'", s)
	}
	p := SourcePath{Raw: s, Path: s[:i], Var: s[i+1:]}
	p.File = strings.HasSuffix(p.Path, ".py") || strings.Contains(p.Path, "/")
	return p, nil
}
