package spawn

import (
	"math"
	"strconv"
	"strings"
)

// Vars are the template values of one child.
type Vars struct {
	Name        string  // {name}: SpawnConfig.Name
	Broker      string  // {broker}: the broker backend the manager uses
	IdleTimeout float64 // {idle_timeout}: rendered as Python's str(float)
	GPU         string  // {gpu}: this child's device ("" without GPUs)
	Index       int     // {index}: this child's slot, 0 … max_workers-1
	CPUs        string  // {cpus}: this child's CPU list ("" when not placed)
	Threads     int     // its thread budget (0: not set)
	Host        string  // the manager's host name (ManagerHostEnv; "" unknown)
}

func (v Vars) lookup(key string) (string, bool) {
	switch key {
	case "name":
		return v.Name, true
	case "broker":
		return v.Broker, true
	case "idle_timeout":
		return PyFloat(v.IdleTimeout), true
	case "gpu":
		return v.GPU, true
	case "index":
		return strconv.Itoa(v.Index), true
	case "cpus":
		return v.CPUs, true
	}
	return "", false
}

// Render substitutes the placeholders {name}, {broker}, {idle_timeout},
// {gpu} and {index} in s, and never fails.
//
// A string that is a valid Python format string using only those names
// (aserpc 0.1.3 called str.format on every argument) is rendered as Python
// would, so a 0.1.3 config that doubled its literal braces ('{{"model":
// "medium"}}') still yields '{"model": "medium"}'. Any other string — JSON
// such as '{"model": "medium"}', which made 0.1.3's manager crash — keeps
// every brace and only whole known placeholders are replaced.
func Render(s string, v Vars) string {
	if !strings.ContainsAny(s, "{}") {
		return s
	}
	if out, ok := pyFormat(s, v); ok {
		return out
	}
	return wholePlaceholders(s, v)
}

// pyFormat renders s as Python's str.format would, if every replacement
// field is exactly a known name (no index, attribute, conversion or spec).
func pyFormat(s string, v Vars) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '{':
			if i+1 < len(s) && s[i+1] == '{' {
				b.WriteByte('{')
				i++
				continue
			}
			end := strings.IndexAny(s[i+1:], "{}")
			if end < 0 || s[i+1+end] != '}' {
				return "", false
			}
			val, ok := v.lookup(s[i+1 : i+1+end])
			if !ok {
				return "", false
			}
			b.WriteString(val)
			i += end + 1
		case '}':
			if i+1 < len(s) && s[i+1] == '}' {
				b.WriteByte('}')
				i++
				continue
			}
			return "", false // a single '}' is an error in Python
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// wholePlaceholders replaces each "{key}" of a known key, left to right, and
// leaves every other byte alone (substituted text is not scanned again).
func wholePlaceholders(s string, v Vars) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '{' {
			if end := strings.IndexByte(s[i+1:], '}'); end >= 0 {
				if val, ok := v.lookup(s[i+1 : i+1+end]); ok {
					b.WriteString(val)
					i += end + 1
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// PyFloat formats f as Python's str(float) does: 120 → "120.0",
// 0.5 → "0.5", 1e-05 → "1e-05", 1e+16 → "1e+16".
func PyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	if a := math.Abs(f); a != 0 && (a < 1e-4 || a >= 1e16) {
		return strconv.FormatFloat(f, 'e', -1, 64)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// render is one child's argv, environment additions and directory.
func (c *SpawnConfig) render(v Vars) (argv []string, env map[string]string, cwd string) {
	argv = make([]string, len(c.Command))
	for i, a := range c.Command {
		argv[i] = Render(a, v)
	}
	if c.Env != nil {
		env = make(map[string]string, len(c.Env))
		for k, val := range c.Env {
			env[k] = Render(val, v)
		}
	}
	return argv, env, Render(c.Cwd, v)
}
