package pyhost

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Choice is the interpreter to serve from and why it was chosen.
type Choice struct {
	// Python is the interpreter path exactly as found, not symlink-resolved:
	// a venv's bin/python is a symlink whose own location identifies the venv.
	Python string
	// Reason says which rule matched: "--python", "ASERPC_PYTHON",
	// "binary's venv", "VIRTUAL_ENV", "CONDA_PREFIX" or "PATH".
	Reason string
}

// Choose picks the interpreter, first match wins: flag (from --python),
// $ASERPC_PYTHON, the venv the running binary sits in (<venv>/bin/aserpc next
// to <venv>/pyvenv.cfg: how pip and uvx install it, and uvx does not set
// VIRTUAL_ENV), $VIRTUAL_ENV, $CONDA_PREFIX, then python3 on PATH.
func Choose(flag string) (Choice, error) {
	exe, _ := os.Executable()
	return choose(flag, os.Getenv, exe, exec.LookPath)
}

func choose(flag string, getenv func(string) string, exe string, lookPath func(string) (string, error)) (Choice, error) {
	if flag != "" {
		return Choice{flag, "--python"}, nil
	}
	if p := getenv("ASERPC_PYTHON"); p != "" {
		return Choice{p, "ASERPC_PYTHON"}, nil
	}
	if exe != "" {
		bin := filepath.Dir(exe)
		if isFile(filepath.Join(filepath.Dir(bin), "pyvenv.cfg")) {
			for _, name := range []string{"python", "python3"} {
				if p := filepath.Join(bin, name); isFile(p) {
					return Choice{p, "binary's venv"}, nil
				}
			}
		}
	}
	for _, v := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if d := getenv(v); d != "" {
			for _, name := range []string{"python", "python3"} {
				if p := filepath.Join(d, "bin", name); isFile(p) {
					return Choice{p, v}, nil
				}
			}
		}
	}
	p, err := lookPath("python3")
	if err != nil {
		return Choice{}, err
	}
	return Choice{p, "PATH"}, nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}
