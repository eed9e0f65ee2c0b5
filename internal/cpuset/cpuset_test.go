package cpuset

import (
	"reflect"
	"testing"
)

func TestParseFormat(t *testing.T) {
	for in, want := range map[string][]int{"0": {0}, "0-3": {0, 1, 2, 3}, "3,1-2, 8": {1, 2, 3, 8}, "5,5": {5}} {
		got, err := Parse(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Parse(%q) = %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "a", "3-1", "-1", "1-", "99999"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
	if s := Format([]int{8, 0, 1, 2, 5, 6}); s != "0-2,5-6,8" {
		t.Errorf("Format %q", s)
	}
}

func TestSlice(t *testing.T) {
	all := []int{0, 1, 2, 3}
	if a, b := Slice(all, 2, 0), Slice(all, 2, 1); !reflect.DeepEqual(a, []int{0, 1}) || !reflect.DeepEqual(b, []int{2, 3}) {
		t.Fatalf("%v %v", a, b)
	}
	if c := Slice(all, 3, 1); !reflect.DeepEqual(c, []int{3, 0, 1}) {
		t.Fatalf("wrap %v", c)
	}
}

func TestAllowedAndPin(t *testing.T) {
	all, err := Allowed()
	if err != nil || len(all) == 0 {
		t.Fatalf("%v %v", all, err)
	}
	defer Pin(0, all)
	if err := Pin(0, all[:1]); err != nil {
		t.Fatal(err)
	}
	now, _ := Allowed()
	if !reflect.DeepEqual(now, all[:1]) {
		t.Fatalf("pinned to %v, want %v", now, all[:1])
	}
}
