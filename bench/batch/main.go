// Command batch is `just bench-batch`: it builds (once, cached) the venv
// with CHGNet and mace-torch that the batching tests use, then runs
// bench_batch.py, which prints structures/s of each model in process, one
// by one through a worker, and batched with sizes 2 … 32, side by side.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/aserpc/aserpc/internal/testenv"
)

func main() {
	base, err := testenv.FindPyenv("3.11")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-batch: pyenv python 3.11:", err)
		os.Exit(1)
	}
	py, err := testenv.BuildVenv(testenv.MLIPBatchKey, base, testenv.MLIPBatchVenv, func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, f+"\n", a...)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-batch:", err)
		os.Exit(1)
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "bench_batch.py")
	cmd := exec.Command("/usr/bin/python3", append([]string{script, "--python", py}, os.Args[1:]...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-batch:", err)
		os.Exit(1)
	}
}
