package suggest

import "testing"

func TestClosest(t *testing.T) {
	names := []string{"EMT", "LJ", "mace_mp", "chgnet"}
	for s, want := range map[string]string{"EMTT": "EMT", "lj": "LJ", "mace-mp": "mace_mp", "chgnat": "chgnet", "orb": "", "": ""} {
		if got := Closest(s, names, 3); got != want {
			t.Errorf("Closest(%q) = %q, want %q", s, got, want)
		}
	}
	if got := Closest("statsu", []string{"status", "list"}, 3); got != "status" {
		t.Errorf("Closest(statsu) = %q", got)
	}
}

func TestDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"EMT", "EMTT", 1}, {"é", "e", 1}} {
		if got := Distance(tc.a, tc.b); got != tc.d {
			t.Errorf("Distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
	}
}
