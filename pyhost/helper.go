package pyhost

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// helperSource is the Python side of pyhost. It is written to disk rather
// than exec'd from a string so that tracebacks name a real file and
// multiprocessing children can import it.
//
//go:embed aserpc_pyhost.py
var helperSource []byte

// helperModule is the module name the helper is imported under.
const helperModule = "aserpc_pyhost"

// writeHelper writes the helper into dir/<content hash>/ (the default dir
// is the user cache, else the temp dir) and returns that directory. A
// content-addressed directory means concurrent workers of different
// versions never overwrite each other's file; the write is a rename, so no
// reader sees half a file.
func writeHelper(dir string) (string, error) {
	if dir == "" {
		if c, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(c, "aserpc", "pyhost")
		} else {
			dir = filepath.Join(os.TempDir(), fmt.Sprintf("aserpc-pyhost-%d", os.Getuid()))
		}
	}
	sum := sha256.Sum256(helperSource)
	d := filepath.Join(dir, hex.EncodeToString(sum[:])[:16])
	path := filepath.Join(d, helperModule+".py")
	if b, err := os.ReadFile(path); err == nil && string(b) == string(helperSource) {
		return d, nil
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("helper dir: %w", err)
	}
	tmp, err := os.CreateTemp(d, ".helper-*")
	if err != nil {
		return "", fmt.Errorf("helper: %w", err)
	}
	_, werr := tmp.Write(helperSource)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("helper: write %s: %v %v", tmp.Name(), werr, cerr)
	}
	os.Chmod(tmp.Name(), 0o644)
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("helper: %w", err)
	}
	return d, nil
}
