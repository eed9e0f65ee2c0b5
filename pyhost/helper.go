package pyhost

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/aserpc/aserpc/registry"
)

// helperSource is the Python side of pyhost (the host protocol),
// computeSource its calculator code (atoms, compute, results), and
// stateSource and resultsSource their siblings (ASE's check_state, fast;
// ASE's conventions for results), whose copies the client package ships
// (clientpy/src/aserpc/_state.py and _results.py, made by go generate). They are written to
// disk rather than exec'd from a string so that tracebacks name a real file
// and multiprocessing children can import them.
//
//go:embed aserpc_pyhost.py
var helperSource []byte

//go:embed aserpc_state.py
var stateSource []byte

//go:embed aserpc_results.py
var resultsSource []byte

//go:embed aserpc_compute.py
var computeSource []byte

//go:embed aserpc_batch.py
var batchSource []byte

//go:generate cp aserpc_state.py ../clientpy/src/aserpc/_state.py
//go:generate cp aserpc_results.py ../clientpy/src/aserpc/_results.py

// helperModule is the module name the helper is imported under.
const helperModule = "aserpc_pyhost"

// helperFiles are the files of the helper directory: the helper, its
// siblings, and the registry's discovery module (which the helper imports
// for resolve and list, and the manager calls through Host.Call).
var helperFiles = []struct {
	name string
	src  []byte
}{{helperModule + ".py", helperSource}, {"aserpc_compute.py", computeSource}, {"aserpc_batch.py", batchSource}, {"aserpc_state.py", stateSource},
	{"aserpc_results.py", resultsSource}, {registry.File, registry.Source}}

// writeHelper writes the helper files into dir/<content hash>/ (the default
// dir is the user cache, else the temp dir) and returns that directory. A
// content-addressed directory means concurrent workers of different
// versions never overwrite each other's files; each write is a rename, so
// no reader sees half a file.
func writeHelper(dir string) (string, error) {
	if dir == "" {
		if c, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(c, "aserpc", "pyhost")
		} else {
			dir = filepath.Join(os.TempDir(), fmt.Sprintf("aserpc-pyhost-%d", os.Getuid()))
		}
	}
	h := sha256.New()
	for _, f := range helperFiles {
		fmt.Fprintf(h, "%s %d\n", f.name, len(f.src))
		h.Write(f.src)
	}
	d := filepath.Join(dir, hex.EncodeToString(h.Sum(nil))[:16])
	for _, f := range helperFiles {
		if err := writeFile(d, f.name, f.src); err != nil {
			return "", err
		}
	}
	return d, nil
}

// writeFile writes src to d/name unless it is there already, by rename.
func writeFile(d, name string, src []byte) error {
	path := filepath.Join(d, name)
	if b, err := os.ReadFile(path); err == nil && string(b) == string(src) {
		return nil
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("helper dir: %w", err)
	}
	tmp, err := os.CreateTemp(d, ".helper-*")
	if err != nil {
		return fmt.Errorf("helper: %w", err)
	}
	_, werr := tmp.Write(src)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("helper: write %s: %v %v", tmp.Name(), werr, cerr)
	}
	os.Chmod(tmp.Name(), 0o644)
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("helper: %w", err)
	}
	return nil
}
