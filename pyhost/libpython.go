package pyhost

import (
	"debug/elf"
	"fmt"
	"path/filepath"
	"strings"
)

// Lib is a shared libpython found for an interpreter.
type Lib struct {
	Path string // the file to dlopen
	How  string // which rule found it, for the log line
}

// FindLib locates the shared libpython of a probed interpreter, trying in order:
//
//  1. the executable's own ELF: a DT_NEEDED libpython resolved through its
//     RUNPATH/RPATH ($ORIGIN expanded) and LIBDIR;
//  2. sysconfig: LIBDIR/INSTSONAME, <base_prefix>/lib/<MULTIARCH>/INSTSONAME
//     (Debian), LIBDIR/LDLIBRARY and LIBPL/LDLIBRARY when they are .so files;
//  3. <base_prefix>/lib and <realpath(exe)>/../lib (conda, python-build-
//     standalone, whose sysconfig may name a bogus build prefix).
//
// Each candidate must be an ELF shared object whose SONAME names
// python3.X and which exports Py_InitializeEx. When none qualifies the
// error wraps ErrStaticInterpreter and says what the executable is.
func FindLib(info *Info) (Lib, error) {
	xy := info.XY()
	var tried []string
	try := func(path, how string) (Lib, bool) {
		if path == "" || !filepath.IsAbs(path) {
			return Lib{}, false
		}
		for _, t := range tried {
			if t == path {
				return Lib{}, false
			}
		}
		tried = append(tried, path)
		if err := checkLib(path, xy); err != nil {
			return Lib{}, false
		}
		return Lib{Path: path, How: how}, true
	}

	exe, _ := filepath.EvalSymlinks(info.Python)
	if exe == "" {
		exe = info.Python
	}
	kind := "unreadable executable"
	if f, err := elf.Open(exe); err == nil {
		needed, _ := f.ImportedLibraries()
		var dirs []string
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			vals, _ := f.DynString(tag)
			for _, v := range vals {
				for _, d := range strings.Split(v, ":") {
					d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", "$ORIGIN"), "$ORIGIN", filepath.Dir(exe))
					dirs = append(dirs, d)
				}
			}
		}
		dirs = append(dirs, info.LibDir)
		kind = "dynamic executable without libpython"
		for _, n := range needed {
			if !strings.HasPrefix(n, "libpython") {
				continue
			}
			kind = "executable needs " + n
			for _, d := range dirs {
				if l, ok := try(filepath.Join(d, n), "DT_NEEDED "+n+" in "+d); ok {
					f.Close()
					return l, nil
				}
			}
		}
		if definesSymbol(f, "Py_InitializeEx") {
			kind = "static executable (libpython linked in)"
		}
		f.Close()
	}

	soname := info.InstSOName
	if soname == "" {
		soname = "libpython" + xy + info.ABIFlags + ".so.1.0"
	}
	cands := []struct{ path, how string }{
		{filepath.Join(info.LibDir, soname), "sysconfig LIBDIR/INSTSONAME"},
	}
	if info.Multiarch != "" {
		cands = append(cands, struct{ path, how string }{filepath.Join(info.BasePrefix, "lib", info.Multiarch, soname), "multiarch directory"})
	}
	if strings.Contains(info.LDLibrary, ".so") {
		cands = append(cands,
			struct{ path, how string }{filepath.Join(info.LibDir, info.LDLibrary), "sysconfig LIBDIR/LDLIBRARY"},
			struct{ path, how string }{filepath.Join(info.LibPL, info.LDLibrary), "sysconfig LIBPL/LDLIBRARY"})
	}
	base := "libpython" + xy + info.ABIFlags
	for _, dir := range []string{filepath.Join(info.BasePrefix, "lib"), filepath.Join(filepath.Dir(filepath.Dir(exe)), "lib")} {
		for _, name := range []string{base + ".so.1.0", base + ".so"} {
			cands = append(cands, struct{ path, how string }{filepath.Join(dir, name), "next to the installation"})
		}
	}
	for _, c := range cands {
		if l, ok := try(c.path, c.how); ok {
			return l, nil
		}
	}
	return Lib{}, fmt.Errorf("%w: %s is a %s; tried %s", ErrStaticInterpreter, info.Python, kind, strings.Join(tried, ", "))
}

// checkLib accepts an ELF shared object whose SONAME names pythonX.Y and
// which exports Py_InitializeEx.
func checkLib(path, xy string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Type != elf.ET_DYN {
		return fmt.Errorf("%s: not a shared object", path)
	}
	sonames, _ := f.DynString(elf.DT_SONAME)
	ok := false
	for _, s := range sonames {
		if strings.Contains(s, "python"+xy) {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("%s: SONAME %v does not name python%s", path, sonames, xy)
	}
	if !definesSymbol(f, "Py_InitializeEx") {
		return fmt.Errorf("%s: does not export Py_InitializeEx", path)
	}
	return nil
}

func definesSymbol(f *elf.File, name string) bool {
	syms, err := f.DynamicSymbols()
	if err != nil {
		return false
	}
	for _, s := range syms {
		if s.Name == name && s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			return true
		}
	}
	return false
}
