package decision

import (
	"net/netip"
	"slices"
	"testing"
)

func TestComparePrefix(t *testing.T) {
	ps := []string{"2001:db8::/32", "192.0.2.0/24", "192.0.2.0/25", "10.0.0.0/8", "::/0", "192.0.2.1/32", "2001:db8::/48"}
	var got []netip.Prefix
	for _, p := range ps {
		got = append(got, netip.MustParsePrefix(p))
	}
	want := slices.Clone(got)
	slices.SortFunc(got, ComparePrefix)
	slices.SortFunc(want, func(a, b netip.Prefix) int { return a.Compare(b) })
	if !slices.Equal(got, want) {
		t.Errorf("ComparePrefix order %v, netip.Prefix.Compare order %v", got, want)
	}
}
