package registry

import (
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in         string
		kind       Kind
		module, fn string
		err        string
	}{
		{in: "LJ", kind: Name},
		{in: "mace_mp", kind: Name},
		{in: "mymod:fn", kind: Name}, // no dot before the colon: a name, as 0.1.3
		{in: "mace.calculators:mace_mp", kind: Direct, module: "mace.calculators", fn: "mace_mp"},
		{in: "a.b:C.create", kind: Direct, module: "a.b", fn: "C.create"},
		{in: "pkg.mod:", err: "Invalid target 'pkg.mod:'"},
		{in: " ", err: "CALCULATOR is empty"},
	} {
		got, err := ParseSpec(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSpec(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.Kind != tc.kind || got.Module != tc.module || got.Attr != tc.fn || got.Raw != tc.in {
			t.Errorf("ParseSpec(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

func TestParseSource(t *testing.T) {
	for _, tc := range []struct {
		in      string
		spawn   bool
		path, v string
		file    bool
		err     string
	}{
		{in: "calcs.py:CALCS", path: "calcs.py", v: "CALCS", file: true},
		{in: "dir/calcs:CALCS", path: "dir/calcs", v: "CALCS", file: true},
		{in: "/abs/c.py:get", path: "/abs/c.py", v: "get", file: true},
		{in: "pkg.mod:REG.items", path: "pkg.mod", v: "REG.items"},
		{in: "C:/x.py:V", path: "C:/x.py", v: "V", file: true}, // split on the last colon
		{in: "nocolon", err: "Invalid registry path 'nocolon', expected 'path:variable'"},
		{in: "nocolon", spawn: true, err: "Invalid registry path 'nocolon': expected 'module:variable'"},
		{in: "pkg.mod:", err: "expected 'path:variable'"},
		{in: ":VAR", err: "expected 'path:variable'"},
	} {
		got, err := ParseSource(tc.in, tc.spawn)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err && !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSource(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.Path != tc.path || got.Var != tc.v || got.File != tc.file {
			t.Errorf("ParseSource(%q) = %+v, %v", tc.in, got, err)
		}
	}
}
