package decision

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func dec(id int64, prefix, origin string, expiry time.Duration) Decision {
	d := Decision{ID: id, Prefix: netip.MustParsePrefix(prefix), Origin: origin, Scope: ScopeIP, Type: "ban"}
	if expiry != 0 {
		d.Expiry = t0.Add(expiry)
	}
	return d
}

func ent(prefix, origin string, expiry time.Duration) Entry {
	e := Entry{Prefix: netip.MustParsePrefix(prefix), Origin: origin}
	if expiry != 0 {
		e.Expiry = t0.Add(expiry)
	}
	return e
}

func sorted(es []Entry) []Entry {
	slices.SortFunc(es, func(a, b Entry) int { return ComparePrefix(a.Prefix, b.Prefix) })
	return es
}

func equalEntries(a, b []Entry) bool {
	return slices.EqualFunc(a, b, func(x, y Entry) bool {
		return x.Prefix == y.Prefix && x.Origin == y.Origin && x.Expiry.Equal(y.Expiry)
	})
}

const never = 0 // an expiry offset of zero builds the zero (never) time

func TestStore(t *testing.T) {
	type op struct {
		add    *Decision
		del    int64
		prune  bool
		pruned int // expected count when prune
	}
	add := func(d Decision) op { return op{add: &d} }
	del := func(id int64) op { return op{del: id} }
	h := time.Hour

	tests := []struct {
		name string
		ops  []op
		at   time.Duration // Entries(t0+at)
		want []Entry
		len  int
	}{
		{
			name: "one decision",
			ops:  []op{add(dec(1, "192.0.2.1/32", "crowdsec", 4*h))},
			want: []Entry{ent("192.0.2.1/32", "crowdsec", 4*h)},
			len:  1,
		},
		{
			name: "two decisions on one prefix: longest wins with its origin",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				add(dec(2, "192.0.2.1/32", "CAPI", 24*h)),
				add(dec(3, "192.0.2.1/32", "cscli", 1*h)),
			},
			want: []Entry{ent("192.0.2.1/32", "CAPI", 24*h)},
			len:  3,
		},
		{
			name: "never beats every expiry",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "CAPI", 9999*h)),
				add(dec(2, "192.0.2.1/32", "lists", never)),
			},
			want: []Entry{ent("192.0.2.1/32", "lists", never)},
			len:  2,
		},
		{
			name: "deleting one of two keeps the value",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				add(dec(2, "192.0.2.1/32", "CAPI", 24*h)),
				del(2),
			},
			want: []Entry{ent("192.0.2.1/32", "crowdsec", 4*h)},
			len:  1,
		},
		{
			name: "deleting the head of a chain of three",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "a", 1*h)),
				add(dec(2, "192.0.2.1/32", "b", 2*h)),
				add(dec(3, "192.0.2.1/32", "c", 3*h)),
				del(3), del(1),
			},
			want: []Entry{ent("192.0.2.1/32", "b", 2*h)},
			len:  1,
		},
		{
			name: "deleting both removes the value",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				add(dec(2, "192.0.2.1/32", "CAPI", 24*h)),
				del(1), del(2),
			},
			want: nil,
			len:  0,
		},
		{
			name: "deleting an unknown id is harmless",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				del(99), del(99),
			},
			want: []Entry{ent("192.0.2.1/32", "crowdsec", 4*h)},
			len:  1,
		},
		{
			name: "re-adding an id replaces it",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				add(dec(1, "192.0.2.1/32", "crowdsec", 8*h)),
			},
			want: []Entry{ent("192.0.2.1/32", "crowdsec", 8*h)},
			len:  1,
		},
		{
			name: "re-adding an id on another prefix moves it",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				add(dec(2, "192.0.2.1/32", "cscli", 1*h)),
				add(dec(1, "198.51.100.0/24", "crowdsec", 4*h)),
			},
			want: []Entry{ent("192.0.2.1/32", "cscli", 1*h), ent("198.51.100.0/24", "crowdsec", 4*h)},
			len:  2,
		},
		{
			name: "an address and its /24 are distinct entries",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 4*h)),
				add(dec(2, "192.0.2.0/24", "lists", 1*h)),
				add(dec(3, "2001:db8::/48", "lists", 1*h)),
			},
			want: []Entry{ent("192.0.2.0/24", "lists", 1*h), ent("192.0.2.1/32", "crowdsec", 4*h), ent("2001:db8::/48", "lists", 1*h)},
			len:  3,
		},
		{
			name: "expired entries are left out",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "crowdsec", 1*h)),
				add(dec(2, "192.0.2.2/32", "crowdsec", 3*h)),
				add(dec(3, "192.0.2.3/32", "crowdsec", never)),
			},
			at:   2 * h,
			want: []Entry{ent("192.0.2.2/32", "crowdsec", 3*h), ent("192.0.2.3/32", "crowdsec", never)},
			len:  3,
		},
		{
			name: "an expired decision does not hide a running one",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "CAPI", 1*h)),
				add(dec(2, "192.0.2.1/32", "cscli", 3*h)),
			},
			at:   2 * h,
			want: []Entry{ent("192.0.2.1/32", "cscli", 3*h)},
			len:  2,
		},
		{
			name: "expiry exactly now is expired",
			ops:  []op{add(dec(1, "192.0.2.1/32", "crowdsec", 1*h))},
			at:   1 * h,
			want: nil,
			len:  1,
		},
		{
			name: "equal expiries: smaller origin wins whatever the order",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "lists", 1*h)),
				add(dec(2, "192.0.2.1/32", "CAPI", 1*h)),
				add(dec(3, "192.0.2.2/32", "CAPI", 1*h)),
				add(dec(4, "192.0.2.2/32", "lists", 1*h)),
			},
			want: []Entry{ent("192.0.2.1/32", "CAPI", 1*h), ent("192.0.2.2/32", "CAPI", 1*h)},
			len:  4,
		},
		{
			name: "prune drops expired decisions only",
			ops: []op{
				add(dec(1, "192.0.2.1/32", "a", 1*h)),
				add(dec(2, "192.0.2.1/32", "b", 5*h)),
				add(dec(3, "192.0.2.3/32", "c", 1*h)),
				add(dec(4, "192.0.2.4/32", "d", never)),
				{prune: true, pruned: 2},
				del(1), del(3), // already pruned: harmless
				add(dec(5, "192.0.2.5/32", "e", 6*h)), // reuses a freed slot
			},
			at:   2 * h,
			want: []Entry{ent("192.0.2.1/32", "b", 5*h), ent("192.0.2.4/32", "d", never), ent("192.0.2.5/32", "e", 6*h)},
			len:  3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Store // the zero Store is usable
			for _, o := range tt.ops {
				switch {
				case o.add != nil:
					s.Add(*o.add)
				case o.prune:
					if n := s.Prune(t0.Add(tt.at)); n != o.pruned {
						t.Errorf("Prune = %d, want %d", n, o.pruned)
					}
				default:
					s.Delete(Decision{ID: o.del})
				}
			}
			got := sorted(s.Entries(t0.Add(tt.at)))
			if !equalEntries(got, tt.want) {
				t.Errorf("Entries =\n  %v\nwant\n  %v", got, tt.want)
			}
			if s.Len() != tt.len {
				t.Errorf("Len = %d, want %d", s.Len(), tt.len)
			}
			for _, w := range tt.want {
				if e, ok := s.Lookup(w.Prefix, t0.Add(tt.at)); !ok || e.Origin != w.Origin || !e.Expiry.Equal(w.Expiry) {
					t.Errorf("Lookup(%v) = %v, %v, want %v", w.Prefix, e, ok, w)
				}
			}
		})
	}
}

func TestStoreReplace(t *testing.T) {
	s := NewStore()
	for i := range 3000 {
		s.Add(dec(int64(i), fmt.Sprintf("10.0.%d.%d/32", i/256, i%256), "old", time.Hour))
	}
	next := []Decision{
		dec(1, "192.0.2.1/32", "crowdsec", time.Hour),
		dec(2, "192.0.2.1/32", "CAPI", 2*time.Hour),
		dec(3, "192.0.2.3/32", "cscli", time.Hour),
	}
	s.Replace(next)
	want := []Entry{ent("192.0.2.1/32", "CAPI", 2*time.Hour), ent("192.0.2.3/32", "cscli", time.Hour)}
	if got := sorted(s.Entries(t0)); !equalEntries(got, want) {
		t.Fatalf("after Replace: %v, want %v", got, want)
	}
	if s.Len() != 3 || s.PrefixCount() != 2 {
		t.Errorf("Len, PrefixCount = %d, %d, want 3, 2", s.Len(), s.PrefixCount())
	}
	s.Delete(next[1])
	if got := sorted(s.Entries(t0)); !equalEntries(got, []Entry{ent("192.0.2.1/32", "crowdsec", time.Hour), want[1]}) {
		t.Errorf("after Delete: %v", got)
	}
	s.Replace(nil)
	if s.Len() != 0 || len(s.Entries(t0)) != 0 {
		t.Errorf("Replace(nil) left %d decisions", s.Len())
	}
}

// TestStoreRandom checks the store against a plain map of decisions.
func TestStoreRandom(t *testing.T) {
	var s Store
	model := map[int64]Decision{}
	seed := uint64(1)
	rnd := func(n int) int {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int(seed>>33) % n
	}
	origins := []string{"CAPI", "crowdsec", "cscli", "lists"}
	for step := range 20000 {
		id := int64(rnd(300))
		switch rnd(10) {
		case 0, 1, 2:
			s.Delete(Decision{ID: id})
			delete(model, id)
		case 3:
			if step%500 == 0 {
				now := t0.Add(time.Duration(rnd(5)) * time.Hour)
				want := 0
				for k, d := range model {
					if !d.Expiry.IsZero() && !d.Expiry.After(now) {
						delete(model, k)
						want++
					}
				}
				if n := s.Prune(now); n != want {
					t.Fatalf("step %d: Prune = %d, want %d", step, n, want)
				}
			}
		default:
			d := dec(id, fmt.Sprintf("192.0.2.%d/32", rnd(40)), origins[rnd(4)], time.Duration(rnd(6))*time.Hour)
			s.Add(d)
			model[id] = d
		}
		if step%97 == 0 {
			now := t0.Add(time.Duration(rnd(4)) * time.Hour)
			want := map[netip.Prefix]Entry{}
			for _, d := range model {
				e, ok := want[d.Prefix]
				cand := Entry{Prefix: d.Prefix, Origin: d.Origin, Expiry: d.Expiry}
				if !ok || modelLater(cand, e) {
					want[d.Prefix] = cand
				}
			}
			var wantList []Entry
			for _, e := range want {
				if e.Expiry.IsZero() || e.Expiry.After(now) {
					wantList = append(wantList, e)
				}
			}
			if got := sorted(s.Entries(now)); !equalEntries(got, sorted(wantList)) {
				t.Fatalf("step %d: Entries =\n %v\nwant\n %v", step, got, wantList)
			}
			if s.Len() != len(model) {
				t.Fatalf("step %d: Len = %d, want %d", step, s.Len(), len(model))
			}
		}
	}
}

func TestStoreAddDoesNotAllocate(t *testing.T) {
	var s Store
	ds := make([]Decision, 1000)
	for i := range ds {
		ds[i] = dec(int64(i), fmt.Sprintf("10.0.%d.%d/32", i/256, i%256), "crowdsec", time.Hour)
	}
	s.Replace(ds)
	allocs := testing.AllocsPerRun(10, func() {
		for i := range ds {
			s.Delete(ds[i])
		}
		for i := range ds {
			s.Add(ds[i])
		}
	})
	if allocs > 0 {
		t.Errorf("Delete+Add of 1000 decisions on a grown store: %v allocations, want 0", allocs)
	}
	allocs = testing.AllocsPerRun(10, func() { s.Replace(ds) })
	if allocs > 0 {
		t.Errorf("Replace of the same size: %v allocations, want 0", allocs)
	}
}

// modelLater is the rule of the store, written plainly: never beats any
// expiry, a later expiry beats an earlier one, and the smaller origin
// breaks ties.
func modelLater(a, b Entry) bool {
	switch {
	case a.Expiry.IsZero() != b.Expiry.IsZero():
		return a.Expiry.IsZero()
	case !a.Expiry.Equal(b.Expiry):
		return a.Expiry.After(b.Expiry)
	}
	return a.Origin < b.Origin
}
