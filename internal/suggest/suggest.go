// Package suggest finds the name a user probably meant: "did you mean
// 'EMT'?" for a calculator, a command.
package suggest

import "strings"

// Closest returns the name in names nearest to s: one equal but for case,
// else the nearest within an edit distance below maxDist (case ignored); ""
// when none is that close, or s is empty.
func Closest(s string, names []string, maxDist int) string {
	if s == "" {
		return ""
	}
	best, bestD := "", maxDist
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return n
		}
		if d := Distance(strings.ToLower(s), strings.ToLower(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// Distance is the Levenshtein distance between a and b, in runes.
func Distance(a, b string) int {
	x, y := []rune(a), []rune(b)
	prev := make([]int, len(y)+1)
	cur := make([]int, len(y)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(x); i++ {
		cur[0] = i
		for j := 1; j <= len(y); j++ {
			cost := 1
			if x[i-1] == y[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(y)]
}
