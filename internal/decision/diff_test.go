package decision

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestDiff(t *testing.T) {
	ms := time.Millisecond
	h := time.Hour
	tol := time.Second
	tests := []struct {
		name             string
		desired, current []Entry
		upserts          []Entry
		deletes          []string
	}{
		{name: "both empty"},
		{
			name:    "all new",
			desired: []Entry{ent("192.0.2.2/32", "cscli", h), ent("192.0.2.1/32", "cscli", h)},
			upserts: []Entry{ent("192.0.2.1/32", "cscli", h), ent("192.0.2.2/32", "cscli", h)},
		},
		{
			name:    "all gone",
			current: []Entry{ent("2001:db8::1/128", "cscli", h), ent("192.0.2.1/32", "cscli", h)},
			deletes: []string{"192.0.2.1/32", "2001:db8::1/128"},
		},
		{
			name:    "no-op within tolerance",
			desired: []Entry{ent("192.0.2.1/32", "cscli", h+300*ms), ent("192.0.2.2/32", "CAPI", h-999*ms), ent("192.0.2.3/32", "lists", never)},
			current: []Entry{ent("192.0.2.3/32", "lists", never), ent("192.0.2.2/32", "CAPI", h), ent("192.0.2.1/32", "cscli", h)},
		},
		{
			name:    "tolerance edge is equal",
			desired: []Entry{ent("192.0.2.1/32", "cscli", h+tol)},
			current: []Entry{ent("192.0.2.1/32", "cscli", h)},
		},
		{
			name:    "expiry moved beyond tolerance",
			desired: []Entry{ent("192.0.2.1/32", "cscli", h+tol+ms)},
			current: []Entry{ent("192.0.2.1/32", "cscli", h)},
			upserts: []Entry{ent("192.0.2.1/32", "cscli", h+tol+ms)},
		},
		{
			name:    "expiry shortened beyond tolerance",
			desired: []Entry{ent("192.0.2.1/32", "cscli", h-2*tol)},
			current: []Entry{ent("192.0.2.1/32", "cscli", h)},
			upserts: []Entry{ent("192.0.2.1/32", "cscli", h-2*tol)},
		},
		{
			name:    "origin changed",
			desired: []Entry{ent("192.0.2.1/32", "CAPI", h)},
			current: []Entry{ent("192.0.2.1/32", "cscli", h)},
			upserts: []Entry{ent("192.0.2.1/32", "CAPI", h)},
		},
		{
			name:    "never against an expiry",
			desired: []Entry{ent("192.0.2.1/32", "cscli", never)},
			current: []Entry{ent("192.0.2.1/32", "cscli", h)},
			upserts: []Entry{ent("192.0.2.1/32", "cscli", never)},
		},
		{
			name:    "an expiry against never",
			desired: []Entry{ent("192.0.2.1/32", "cscli", h)},
			current: []Entry{ent("192.0.2.1/32", "cscli", never)},
			upserts: []Entry{ent("192.0.2.1/32", "cscli", h)},
		},
		{
			name:    "a /32 is not its /24",
			desired: []Entry{ent("192.0.2.0/24", "lists", h)},
			current: []Entry{ent("192.0.2.0/32", "lists", h)},
			upserts: []Entry{ent("192.0.2.0/24", "lists", h)},
			deletes: []string{"192.0.2.0/32"},
		},
		{
			name: "mixed, sorted output",
			desired: []Entry{
				ent("2001:db8::/48", "lists", h), ent("10.0.0.0/8", "lists", h),
				ent("192.0.2.1/32", "cscli", h), ent("192.0.2.0/24", "lists", 2*h),
				ent("198.51.100.1/32", "crowdsec", h),
			},
			current: []Entry{
				ent("203.0.113.9/32", "crowdsec", h), ent("192.0.2.1/32", "cscli", h),
				ent("2001:db8::1/128", "cscli", h), ent("192.0.2.0/24", "lists", h),
				ent("10.0.0.0/8", "lists", h),
			},
			upserts: []Entry{ent("192.0.2.0/24", "lists", 2*h), ent("198.51.100.1/32", "crowdsec", h), ent("2001:db8::/48", "lists", h)},
			deletes: []string{"203.0.113.9/32", "2001:db8::1/128"},
		},
		{
			name:    "duplicate in desired: last wins",
			desired: []Entry{ent("192.0.2.1/32", "a", h), ent("192.0.2.1/32", "b", h)},
			upserts: []Entry{ent("192.0.2.1/32", "b", h)},
		},
		{
			name:    "duplicate in current, wanted: not deleted",
			desired: []Entry{ent("192.0.2.1/32", "a", h)},
			current: []Entry{ent("192.0.2.1/32", "old", h), ent("192.0.2.1/32", "a", h)},
		},
		{
			name:    "duplicate in current, unwanted: deleted once",
			current: []Entry{ent("192.0.2.1/32", "a", h), ent("192.0.2.1/32", "a", h)},
			deletes: []string{"192.0.2.1/32"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			desired := slices.Clone(tt.desired)
			current := slices.Clone(tt.current)
			up, del := Diff(desired, current, tol)
			if !equalEntries(up, tt.upserts) {
				t.Errorf("upserts =\n  %v\nwant\n  %v", up, tt.upserts)
			}
			var want []netip.Prefix
			for _, p := range tt.deletes {
				want = append(want, netip.MustParsePrefix(p))
			}
			if !slices.Equal(del, want) {
				t.Errorf("deletes = %v, want %v", del, want)
			}
			if !equalEntries(desired, tt.desired) || !equalEntries(current, tt.current) {
				t.Error("Diff modified its inputs")
			}
		})
	}
}

// TestDiffStoreResync is the property the reconcile loop relies on: two
// pulls of the same LAPI state, milliseconds apart, produce no writes.
func TestDiffStoreResync(t *testing.T) {
	raw := benchDecisions(5000)
	var s Store
	s.Replace(parseAll(t, raw, t0))
	applied := s.Entries(t0)

	s.Replace(parseAll(t, raw, t0.Add(37*time.Millisecond)))
	up, del := Diff(s.Entries(t0), applied, time.Second)
	if len(up) != 0 || len(del) != 0 {
		t.Fatalf("no-op resync: %d upserts, %d deletes", len(up), len(del))
	}

	raw = raw[1:] // one deleted at LAPI
	s.Replace(parseAll(t, raw, t0.Add(80*time.Millisecond)))
	up, del = Diff(s.Entries(t0), applied, time.Second)
	if len(up) != 0 || len(del) != 1 {
		t.Fatalf("one removed: %d upserts, %d deletes", len(up), len(del))
	}
}

// naiveDiff is the definition of Diff, written with a map and a sort.
func naiveDiff(desired, current []Entry, tol time.Duration) ([]Entry, []netip.Prefix) {
	want := map[netip.Prefix]Entry{}
	for _, e := range desired {
		want[e.Prefix] = e
	}
	have := map[netip.Prefix]Entry{}
	for _, e := range current {
		have[e.Prefix] = e
	}
	var up []Entry
	var del []netip.Prefix
	for p, e := range want {
		if h, ok := have[p]; !ok || !Same(e, h, tol) {
			up = append(up, e)
		}
	}
	for p := range have {
		if _, ok := want[p]; !ok {
			del = append(del, p)
		}
	}
	slices.SortFunc(up, func(a, b Entry) int { return a.Prefix.Compare(b.Prefix) })
	slices.SortFunc(del, netip.Prefix.Compare)
	return up, del
}

func TestDiffRandom(t *testing.T) {
	seed := uint64(7)
	rnd := func(n int) int {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int(seed>>33) % n
	}
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"), netip.MustParsePrefix("::/1"),
		netip.MustParsePrefix("255.255.255.255/32"), netip.MustParsePrefix("ffff::/16"),
		netip.MustParsePrefix("::fffe:0:0/95"), netip.MustParsePrefix("128.0.0.0/1"),
	}
	for range 300 {
		var b [16]byte
		for i := range b {
			b[i] = byte(rnd(4)) * 85 // few distinct bytes: many near-equal keys
		}
		if rnd(2) == 0 {
			a := netip.AddrFrom4([4]byte(b[:4]))
			prefixes = append(prefixes, netip.PrefixFrom(a, rnd(33)).Masked())
		} else {
			prefixes = append(prefixes, netip.PrefixFrom(netip.AddrFrom16(b), rnd(129)).Masked())
		}
	}
	origins := []string{"CAPI", "cscli"}
	gen := func(n int) []Entry {
		out := make([]Entry, n)
		for i := range out {
			out[i] = Entry{Prefix: prefixes[rnd(len(prefixes))], Origin: origins[rnd(2)]}
			if rnd(5) > 0 {
				out[i].Expiry = t0.Add(time.Duration(rnd(3)) * time.Second)
			}
		}
		return out
	}
	for round := range 300 {
		// Both may hold a prefix twice: Diff, like the reference, takes
		// the last entry of each.
		desired, current := gen(rnd(200)), gen(rnd(200))
		up, del := Diff(desired, current, 500*time.Millisecond)
		wantUp, wantDel := naiveDiff(desired, current, 500*time.Millisecond)
		if !equalEntries(up, wantUp) || !slices.Equal(del, wantDel) {
			t.Fatalf("round %d:\nupserts %v\nwant    %v\ndeletes %v\nwant    %v", round, up, wantUp, del, wantDel)
		}
	}
}

// TestRadixSort checks that the radix sort orders any key, invalid ones
// included, as pkey.compare does, and keeps equal keys in input order.
func TestRadixSort(t *testing.T) {
	seed := uint64(3)
	rnd := func() uint64 {
		seed = seed*6364136223846793005 + 1442695040888963407
		return seed >> 20
	}
	for _, n := range []int{0, 1, 2, 3, 17, 1000, 5000} {
		a := make([]skey, n)
		for i := range a {
			a[i] = skey{hi: rnd() % 3 << (rnd() % 64), lo: rnd() % 5 << (rnd() % 64), bits: int16(rnd()%3) - 1 + int16(rnd()%2)*v6Flag, idx: int32(i)}
			if rnd()%4 == 0 && i > 0 {
				a[i].hi, a[i].lo, a[i].bits = a[i-1].hi, a[i-1].lo, a[i-1].bits
			}
		}
		got, _ := radixSort(slices.Clone(a), make([]skey, n))
		for i := 1; i < len(got); i++ {
			c := got[i-1].pkey().compare(got[i].pkey())
			if c > 0 || (c == 0 && got[i-1].idx > got[i].idx) {
				t.Fatalf("n=%d: %+v before %+v", n, got[i-1], got[i])
			}
		}
		if len(got) != n {
			t.Fatalf("n=%d: %d keys out", n, len(got))
		}
	}
}
