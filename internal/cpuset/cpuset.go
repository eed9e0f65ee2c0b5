// Package cpuset reads, writes and applies CPU lists ("0-3,8,10-11"): the
// CPUs a process may run on (its affinity, which a SLURM allocation or a
// cgroup narrows), and pinning a whole process to a set.
package cpuset

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Parse reads a CPU list: comma-separated CPUs and inclusive ranges.
func Parse(s string) ([]int, error) {
	seen := map[int]bool{}
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("cpu list %q: %q is not a CPU number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		if b >= 1<<16 {
			return nil, fmt.Errorf("cpu list %q: CPU %d out of range", s, b)
		}
		for c := a; c <= b; c++ {
			seen[c] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("cpu list %q is empty", s)
	}
	out := make([]int, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Ints(out)
	return out, nil
}

// Format writes cpus as a CPU list with ranges ("0-3,8").
func Format(cpus []int) string {
	c := append([]int(nil), cpus...)
	sort.Ints(c)
	var b strings.Builder
	for i := 0; i < len(c); {
		j := i
		for j+1 < len(c) && c[j+1] == c[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", c[i], c[j])
		} else {
			fmt.Fprintf(&b, "%d", c[i])
		}
		i = j + 1
	}
	return b.String()
}

// Allowed returns the CPUs this process may run on.
func Allowed() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, err
	}
	var out []int
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// Pin restricts pid (0: this process) and every thread it has to cpus;
// threads it starts later inherit the set from the thread that starts
// them.
func Pin(pid int, cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	if pid == 0 {
		pid = os.Getpid()
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return unix.SchedSetaffinity(pid, &set)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("pin thread %d to %s: %w", tid, Format(cpus), err)
		}
	}
	return nil
}

// Slice returns child slot idx's share of allowed when each child gets
// per CPUs: consecutive, disjoint while (idx+1)·per ≤ len(allowed), wrapping
// round after that.
func Slice(allowed []int, per, idx int) []int {
	if per <= 0 || len(allowed) == 0 {
		return nil
	}
	per = min(per, len(allowed))
	out := make([]int, per)
	for i := range per {
		out[i] = allowed[(idx*per+i)%len(allowed)]
	}
	return out
}
