package edgesync

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func want(prefixes ...string) []Desired {
	out := make([]Desired, len(prefixes))
	for i, p := range prefixes {
		out[i] = Desired{Prefix: netip.MustParsePrefix(p), Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Expiry: t0.Add(4 * time.Hour)}
	}
	return out
}

func items(ips ...string) []cloudflare.Item {
	out := make([]cloudflare.Item, len(ips))
	for i, ip := range ips {
		out[i] = cloudflare.Item{ID: fmt.Sprintf("id%d", i), IP: ip, Comment: "crowdsec: x (until 2026-03-01T16:00Z)"}
	}
	return out
}

func TestMakePlan(t *testing.T) {
	for _, tc := range []struct {
		name       string
		desired    []Desired
		current    []cloudflare.Item
		add        []string
		del        []string // item ids
		keep       int
		stale, dup int
		invalid    int
	}{
		{name: "empty to empty"},
		{name: "first fill", desired: want("192.0.2.1/32", "10.0.0.0/8", "2001:db8::/64"),
			add: []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/64"}},
		{name: "steady", desired: want("192.0.2.1/32", "2001:db8::/64"), current: items("192.0.2.1", "2001:db8::/64"), keep: 2},
		{name: "textual forms compare as prefixes", desired: want("192.0.2.1/32", "2001:db8::/64"),
			current: items("192.0.2.1/32", "2001:DB8:0::/64"), keep: 2},
		{name: "churn", desired: want("192.0.2.1/32", "192.0.2.3/32"), current: items("192.0.2.1", "192.0.2.2"),
			add: []string{"192.0.2.3"}, del: []string{"id1"}, keep: 1, stale: 1},
		{name: "duplicates and garbage", desired: want("192.0.2.1/32"), current: items("192.0.2.1", "192.0.2.1/32", "not-an-ip"),
			del: []string{"id1", "id2"}, keep: 1, dup: 1, invalid: 1},
		{name: "duplicate stale items", desired: nil, current: items("192.0.2.9", "192.0.2.9"),
			del: []string{"id0", "id1"}, stale: 1, dup: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := MakePlan(tc.desired, tc.current, t0)
			var add, del []string
			for _, a := range p.Add {
				add = append(add, a.IP)
				if !strings.Contains(a.Comment, "crowdsec: crowdsecurity/ssh-bf (until ") {
					t.Errorf("comment %q", a.Comment)
				}
			}
			for _, d := range p.Delete {
				del = append(del, d.ID)
			}
			if fmt.Sprint(add) != fmt.Sprint(tc.add) || fmt.Sprint(del) != fmt.Sprint(tc.del) ||
				p.Keep != tc.keep || p.Stale != tc.stale || p.Duplicate != tc.dup || p.Invalid != tc.invalid {
				t.Errorf("plan add=%v del=%v keep=%d stale=%d dup=%d invalid=%d", add, del, p.Keep, p.Stale, p.Duplicate, p.Invalid)
			}
			if p.Current != len(tc.current) || p.Changes() != (len(tc.add)+len(tc.del) > 0) {
				t.Errorf("current %d changes %v", p.Current, p.Changes())
			}
		})
	}
}

func TestGuard(t *testing.T) {
	hundred := make([]string, 100)
	for i := range hundred {
		hundred[i] = fmt.Sprintf("10.0.%d.1", i)
	}
	cur := items(hundred...)
	keepFirst := func(n int) []Desired {
		var d []Desired
		for _, ip := range hundred[:n] {
			d = append(d, want(ip+"/32")...)
		}
		return d
	}
	for _, tc := range []struct {
		name    string
		desired []Desired
		current []cloudflare.Item
		ratio   float64
		trip    bool
	}{
		{name: "empty answer wipes nothing", desired: nil, current: cur, ratio: 0.5, trip: true},
		{name: "more than the ratio", desired: keepFirst(40), current: cur, ratio: 0.5, trip: true},
		{name: "exactly the ratio", desired: keepFirst(50), current: cur, ratio: 0.5},
		{name: "under the ratio", desired: keepFirst(90), current: cur, ratio: 0.5},
		{name: "ratio 1 still refuses all", desired: nil, current: cur, ratio: 1, trip: true},
		{name: "ratio 1 allows 99", desired: keepFirst(1), current: cur, ratio: 1},
		{name: "the only item, not expired", desired: nil, current: items("192.0.2.1"), ratio: 0.5, trip: true},
		{name: "expired items do not count", desired: nil, ratio: 0.5, current: []cloudflare.Item{
			{ID: "a", IP: "192.0.2.1", Comment: "crowdsec: x (until 2026-03-01T11:00Z)"},
			{ID: "b", IP: "192.0.2.2", Comment: "cscli: y (until 2026-03-01T11:59Z)"},
		}},
		{name: "an item without expiry counts", desired: nil, ratio: 0.4, trip: true, current: []cloudflare.Item{
			{ID: "a", IP: "192.0.2.1", Comment: "crowdsec: x (until 2026-03-01T11:00Z)"},
			{ID: "b", IP: "192.0.2.2", Comment: "added by hand"},
		}},
		{name: "duplicates and garbage do not count", desired: want("192.0.2.1/32"), ratio: 0.5,
			current: items("192.0.2.1", "192.0.2.1", "bogus", "bogus2")},
		{name: "empty list", desired: want("192.0.2.1/32"), ratio: 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := MakePlan(tc.desired, tc.current, t0).Guard(tc.ratio)
			if (err != nil) != tc.trip || (err != nil && !errors.Is(err, ErrDeleteGuard)) {
				t.Errorf("guard: %v, want trip=%v", err, tc.trip)
			}
		})
	}
}

func TestComment(t *testing.T) {
	d := Desired{Origin: "cscli", Scenario: "manual 'ban' from 'localhost'\n", Expiry: time.Date(2026, 3, 1, 16, 0, 59, 0, time.UTC)}
	c := d.Comment()
	if c != "cscli: manual 'ban' from 'localhost'  (until 2026-03-01T16:00Z)" {
		t.Errorf("comment %q", c)
	}
	exp, ok := commentExpiry(c)
	if !ok || !exp.Equal(time.Date(2026, 3, 1, 16, 1, 0, 0, time.UTC)) {
		t.Errorf("expiry %v %v", exp, ok)
	}
	long := Desired{Origin: "crowdsec", Scenario: strings.Repeat("é", 200), Expiry: t0}
	if c := long.Comment(); len(c) > maxComment || !strings.HasSuffix(c, "... (until 2026-03-01T12:00Z)") || !isUTF8(c) {
		t.Errorf("long comment %d %q", len(c), c)
	}
	if c := (Desired{Origin: "crowdsec"}).Comment(); c != "crowdsec" {
		t.Errorf("no expiry: %q", c)
	}
}

func isUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func TestItemIP(t *testing.T) {
	for in, out := range map[string]string{
		"192.0.2.1/32": "192.0.2.1", "10.0.0.0/8": "10.0.0.0/8", "2001:db8::/64": "2001:db8::/64",
	} {
		p := netip.MustParsePrefix(in)
		if got := ItemIP(p); got != out {
			t.Errorf("%s: %s", in, got)
		}
		back, err := ParseItemIP(out)
		if err != nil || back != p {
			t.Errorf("round trip %s: %v %v", out, back, err)
		}
	}
	if p, err := ParseItemIP("::ffff:192.0.2.1"); err != nil || p != netip.MustParsePrefix("192.0.2.1/32") {
		t.Errorf("mapped: %v %v", p, err)
	}
}
