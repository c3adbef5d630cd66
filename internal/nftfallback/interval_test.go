package nftfallback

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLastAddr(t *testing.T) {
	for _, tc := range []struct{ p, want string }{
		{"10.0.0.0/8", "10.255.255.255"},
		{"10.1.2.3/32", "10.1.2.3"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"2001:db8::/61", "2001:db8:0:7:ffff:ffff:ffff:ffff"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
	} {
		if got := lastAddr(netip.MustParsePrefix(tc.p)); got.String() != tc.want {
			t.Errorf("lastAddr(%s) = %s, want %s", tc.p, got, tc.want)
		}
	}
}

func TestCover(t *testing.T) {
	for _, tc := range []struct {
		lo, hi string
		want   []string
	}{
		{"10.0.0.0", "10.0.0.255", []string{"10.0.0.0/24"}},
		{"10.0.0.1", "10.0.0.6", []string{"10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"}},
		{"0.0.0.0", "255.255.255.255", []string{"0.0.0.0/0"}},
		{"255.255.255.254", "255.255.255.255", []string{"255.255.255.254/31"}},
		{"2001:db8::", "2001:db8::1:ffff", []string{"2001:db8::/111"}},
	} {
		var got []string
		for _, p := range cover(netip.MustParseAddr(tc.lo), netip.MustParseAddr(tc.hi)) {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("cover(%s, %s) = %v, want %v", tc.lo, tc.hi, got, tc.want)
		}
	}
}

func TestMergeSpans(t *testing.T) {
	sp := func(p string) span { return prefixSpan(netip.MustParsePrefix(p)) }
	in := []span{sp("10.0.1.0/24"), sp("10.0.0.0/24"), sp("10.0.0.128/25"), sp("10.0.3.0/24"), sp("255.255.255.255/32"), sp("255.255.255.0/24")}
	got := mergeSpans(in, true)
	want := []span{
		{netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.1.255")},
		sp("10.0.3.0/24"),
		sp("255.255.255.0/24"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("mergeSpans(touching) = %v, want %v", got, want)
	}
	got = mergeSpans(in, false)
	want = []span{sp("10.0.0.0/24"), sp("10.0.1.0/24"), sp("10.0.3.0/24"), sp("255.255.255.0/24")}
	if !slices.Equal(got, want) {
		t.Errorf("mergeSpans = %v, want %v", got, want)
	}
}

func TestCommentRoundTrip(t *testing.T) {
	for _, m := range []meta{
		{origin: "crowdsec", exp: 1767225600123},
		{origin: "", exp: 0},
		{origin: "-", exp: 1},
		{origin: "lists:firehol level 1/%", exp: 42},
		{origin: "ünïcode", exp: 7},
	} {
		c := encodeHost(m)
		if strings.ContainsAny(c[:strings.LastIndexByte(c, ' ')], " ") {
			t.Errorf("encodeHost(%+v) = %q: origin holds a space", m, c)
		}
		got, ok := decodeHost(c)
		if !ok || got != m {
			t.Errorf("decodeHost(%q) = %+v, %v; want %+v", c, got, ok, m)
		}
		e := netEntry{p: netip.MustParsePrefix("2001:db8::/48"), m: m}
		es, ok := decodeAnchors(encodeAnchor(e) + " " + encodeAnchor(e))
		if !ok || len(es) != 2 || es[0] != e || es[1] != e {
			t.Errorf("decodeAnchors(encodeAnchor(%+v)) = %+v, %v", e, es, ok)
		}
	}
	for _, bad := range []string{"", "x", "10.0.0.0/24 crowdsec", "10.0.0.1/24 a 1", "10.0.0.0/24 a -1", "junk a 1"} {
		if es, ok := decodeAnchors(bad); ok {
			t.Errorf("decodeAnchors(%q) = %+v, want failure", bad, es)
		}
	}
	long := newMeta(strings.Repeat("é", 100), time.Time{})
	if len(long.origin) > maxOrigin || !strings.HasPrefix(strings.Repeat("é", 100), long.origin) {
		t.Errorf("newMeta kept origin of %d bytes", len(long.origin))
	}
}

// TestFlatten checks flatten against a brute force evaluation, address by
// address, of random nested prefixes in a small space.
func TestFlatten(t *testing.T) {
	base := netip.MustParsePrefix("10.0.0.0/26")
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 2000; round++ {
		set := map[netip.Prefix]meta{}
		for n := rng.IntN(12); n > 0; n-- {
			bits := 26 + rng.IntN(7)
			a := base.Addr().As4()
			a[3] = byte(rng.IntN(64))
			p := netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked()
			var exp int64
			if rng.IntN(4) > 0 {
				exp = 1000 + int64(rng.IntN(5))
			}
			set[p] = meta{origin: []string{"crowdsec", "CAPI", ""}[rng.IntN(3)], exp: exp}
		}
		var es []netEntry
		for p, m := range set {
			es = append(es, netEntry{p, m})
		}
		slices.SortFunc(es, func(x, y netEntry) int { return comparePrefix(x.p, y.p) })
		frags, overflow := flatten(es)
		if overflow != 0 {
			t.Fatalf("overflow %d with %d prefixes", overflow, len(es))
		}
		for i := range frags {
			if frags[i].hi.Less(frags[i].lo) {
				t.Fatalf("interval %v reversed", frags[i])
			}
			if i > 0 && !frags[i-1].hi.Less(frags[i].lo) {
				t.Fatalf("intervals %v and %v overlap or are out of order", frags[i-1], frags[i])
			}
			if i > 0 && frags[i-1].hi.Next() == frags[i].lo && frags[i-1].exp == frags[i].exp && frags[i].comment == "" {
				t.Fatalf("intervals %v and %v should have been merged", frags[i-1], frags[i])
			}
		}
		for a := base.Addr(); base.Contains(a); a = a.Next() {
			covered, exp := false, int64(-1)
			for p, m := range set {
				if p.Contains(a) {
					if !covered {
						exp = m.exp
					} else {
						exp = maxExp(exp, m.exp)
					}
					covered = true
				}
			}
			i := slices.IndexFunc(frags, func(f frag) bool { return f.lo.Compare(a) <= 0 && a.Compare(f.hi) <= 0 })
			if covered != (i >= 0) {
				t.Fatalf("round %d: %s covered=%v, in interval %v: %v", round, a, covered, i >= 0, frags)
			}
			if covered && frags[i].exp != exp {
				t.Fatalf("round %d: %s expires %d, interval %v says %d", round, a, exp, frags[i], frags[i].exp)
			}
		}
		got := map[netip.Prefix]meta{}
		for _, f := range frags {
			if f.comment == "" {
				continue
			}
			anchors, ok := decodeAnchors(f.comment)
			if !ok {
				t.Fatalf("bad comment %q", f.comment)
			}
			for _, e := range anchors {
				if e.p.Addr() != f.lo {
					t.Fatalf("%s anchored in interval starting at %s", e.p, f.lo)
				}
				got[e.p] = e.m
			}
		}
		if len(got) != len(set) {
			t.Fatalf("round %d: anchors give %v, want %v", round, got, set)
		}
		for p, m := range set {
			if got[p] != m {
				t.Fatalf("round %d: anchor of %s = %+v, want %+v", round, p, got[p], m)
			}
		}
	}
}

func TestFlattenEdges(t *testing.T) {
	e := func(p string, exp int64) netEntry {
		return netEntry{p: netip.MustParsePrefix(p), m: meta{origin: "o", exp: exp}}
	}
	for _, tc := range []struct {
		name string
		in   []netEntry
		want []string // lo-hi/exp
	}{
		{"top of the space", []netEntry{e("0.0.0.0/0", 5), e("255.255.255.0/24", 9)},
			[]string{"0.0.0.0-255.255.254.255/5", "255.255.255.0-255.255.255.255/9"}},
		{"never wins", []netEntry{e("10.0.0.0/8", 0), e("10.1.0.0/16", 9)},
			[]string{"10.0.0.0-10.0.255.255/0", "10.1.0.0-10.255.255.255/0"}},
		{"inner outlives outer", []netEntry{e("10.0.0.0/16", 5), e("10.0.1.0/24", 9)},
			[]string{"10.0.0.0-10.0.0.255/5", "10.0.1.0-10.0.1.255/9", "10.0.2.0-10.0.255.255/5"}},
		{"same start", []netEntry{e("10.0.0.0/16", 5), e("10.0.0.0/24", 9)},
			[]string{"10.0.0.0-10.0.0.255/9", "10.0.1.0-10.0.255.255/5"}},
		{"ipv6 top", []netEntry{e("ff00::/8", 1)},
			[]string{"ff00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/1"}},
	} {
		frags, _ := flatten(tc.in)
		var got []string
		for _, f := range frags {
			got = append(got, f.lo.String()+"-"+f.hi.String()+"/"+strconv.FormatInt(f.exp, 10))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: flatten = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFlattenOverflow(t *testing.T) {
	var es []netEntry
	for bits := 8; bits < 32; bits++ {
		es = append(es, netEntry{p: netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), bits), m: meta{origin: "crowdsec", exp: 1767225600123}})
	}
	frags, overflow := flatten(es)
	if overflow == 0 {
		t.Fatal("24 ranges starting at one address fit in one comment?")
	}
	if len(frags[0].comment) > maxComment {
		t.Fatalf("comment of %d bytes", len(frags[0].comment))
	}
	anchors, ok := decodeAnchors(frags[0].comment)
	if !ok || len(anchors)+overflow != len(es) || anchors[0].p.Bits() != 8 {
		t.Fatalf("anchors %v ok=%v overflow=%d", anchors, ok, overflow)
	}
}
