package nftfallback

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// TestLayout checks the tables, sets, chains, rules and counters Ensure
// creates, with the default configuration.
func TestLayout(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	mustApply(t, b, []decision.Entry{
		entry("192.0.2.1", "crowdsec", time.Hour),
		entry("198.51.100.0/24", "CAPI", 2*time.Hour),
		entry("2001:db8::1", "cscli", 0),
	})
	if err := b.SetAllowlist(context.Background(), []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")}); err != nil {
		t.Fatal(err)
	}
	t.Logf("nft list ruleset:\n%s", ns.Run(t, "nft", "list", "ruleset"))
	rs := listRuleset(t, ns)
	if !slices.Equal(rs.tables, []string{"ip xdpgate", "ip6 xdpgate6"}) {
		t.Errorf("tables = %v", rs.tables)
	}
	for _, fam := range []string{"ip xdpgate", "ip6 xdpgate6"} {
		for _, hook := range []string{"input", "forward"} {
			c, ok := rs.chains[fam+" "+hook]
			if !ok || c.hook != hook || c.prio != -10 || c.policy != "accept" {
				t.Errorf("%s chain %s = %+v, %v", fam, hook, c, ok)
			}
			if got := rs.rules[fam+" "+hook]; !slices.Equal(got, ruleTags) {
				t.Errorf("%s chain %s rules = %q", fam, hook, got)
			}
			if _, ok := rs.counters[fam+" drop_"+hook]; !ok {
				t.Errorf("%s: no counter drop_%s", fam, hook)
			}
		}
	}
	out := ns.Run(t, "nft", "list", "counters")
	for _, c := range []string{`counter drop_input`, `counter drop_forward`} {
		if strings.Count(out, c) != 2 {
			t.Errorf("nft list counters does not show %s in both tables:\n%s", c, out)
		}
	}
	hosts := rs.elems("ip", setHosts)
	if len(hosts) != 1 || hosts[0].comment == "" || hosts[0].timeout < 3500 || hosts[0].timeout > 3600 {
		t.Errorf("hosts = %+v", hosts)
	}
	ranges := rs.elems("ip", setRanges)
	if len(ranges) != 1 || ranges[0].lo != netip.MustParseAddr("198.51.100.0") || ranges[0].hi != netip.MustParseAddr("198.51.100.255") {
		t.Errorf("ranges = %+v", ranges)
	}
	if h6 := rs.elems("ip6", setHosts); len(h6) != 1 || h6[0].timeout != 0 {
		t.Errorf("ip6 hosts = %+v", h6)
	}
}

// TestNested walks nested and overlapping bans through inserts and
// deletes, in both families, and checks after each step what the kernel
// enforces and what List returns.
func TestNested(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	type step struct {
		name   string
		up     []decision.Entry
		del    []string
		banned []string
		free   []string
	}
	outer := entry("10.1.0.0/16", "CAPI", time.Hour)
	inner := entry("10.1.2.0/24", "crowdsec", 2*time.Hour)
	host := entry("10.1.2.3", "cscli", 3*time.Hour)
	same := entry("10.1.0.0/24", "lists", 30*time.Minute)
	outer6 := entry("2001:db8::/32", "CAPI", time.Hour)
	inner6 := entry("2001:db8:1::/48", "crowdsec", 0)
	host6 := entry("2001:db8:1::5", "cscli", time.Hour)
	want := map[netip.Prefix]decision.Entry{}
	for _, s := range []step{
		{name: "outer, inner and host inside both", up: []decision.Entry{outer, inner, host},
			banned: []string{"10.1.0.1", "10.1.2.100", "10.1.2.3", "10.1.255.255"},
			free:   []string{"10.0.255.255", "10.2.0.0"}},
		{name: "a range starting where the outer one starts", up: []decision.Entry{same},
			banned: []string{"10.1.0.1", "10.1.1.0"}},
		{name: "delete inner: outer still enforced", del: []string{"10.1.2.0/24"},
			banned: []string{"10.1.2.100", "10.1.2.3", "10.1.0.1"}},
		{name: "inner again, delete outer: inner still enforced", up: []decision.Entry{inner}, del: []string{"10.1.0.0/16"},
			banned: []string{"10.1.2.100", "10.1.2.3", "10.1.0.5"}, free: []string{"10.1.1.0", "10.1.3.0", "10.1.255.255"}},
		{name: "delete host: inner still enforced", del: []string{"10.1.2.3"},
			banned: []string{"10.1.2.3"}},
		{name: "delete the same-start range", del: []string{"10.1.0.0/24"},
			free: []string{"10.1.0.5"}},
		{name: "delete inner: nothing left", del: []string{"10.1.2.0/24"},
			free: []string{"10.1.2.3", "10.1.2.100"}},
		{name: "ipv6 nested", up: []decision.Entry{outer6, inner6, host6},
			banned: []string{"2001:db8::1", "2001:db8:1::5", "2001:db8:1:ffff::1", "2001:db8:ffff::1"},
			free:   []string{"2001:db9::1", "2001:db7:ffff::1"}},
		{name: "ipv6 delete outer", del: []string{"2001:db8::/32"},
			banned: []string{"2001:db8:1::5", "2001:db8:1::6"}, free: []string{"2001:db8::1", "2001:db8:2::1"}},
		{name: "ipv6 delete inner", del: []string{"2001:db8:1::/48"},
			banned: []string{"2001:db8:1::5"}, free: []string{"2001:db8:1::6"}},
		{name: "exact and range side by side", up: []decision.Entry{entry("192.0.2.1", "crowdsec", time.Hour), entry("192.0.2.0/31", "crowdsec", time.Hour), entry("192.0.2.2/31", "crowdsec", time.Hour)},
			banned: []string{"192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.3"}, free: []string{"192.0.2.4"}},
	} {
		t.Run(s.name, func(t *testing.T) {
			mustApply(t, b, s.up, s.del...)
			for _, d := range s.del {
				delete(want, pfx(d))
			}
			for _, e := range s.up {
				want[e.Prefix] = e
			}
			checkBanned(t, ns, s.banned, s.free)
			got, err := b.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			sameEntries(t, got, mapValues(want))
			// Applying the same again writes nothing.
			before := b.Stats().Elements
			mustApply(t, b, mapValues(want))
			if n := b.Stats().Elements - before; n != 0 {
				t.Errorf("re-applying what is enforced wrote %d elements", n)
			}
		})
	}
}

func mapValues[K comparable, V any](m map[K]V) []V {
	var out []V
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestRandomNested applies random changes to random nested prefixes of a
// small space and compares, after each change, every address of the space
// in the kernel sets with a brute force evaluation.
func TestRandomNested(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{Hooks: []string{"input"}})
	space := netip.MustParsePrefix("10.7.0.0/23")
	rng := rand.New(rand.NewPCG(7, 7))
	want := map[netip.Prefix]decision.Entry{}
	steps := 60
	if testing.Short() {
		steps = 20
	}
	base := time.Now()
	for step := 0; step < steps; step++ {
		var up []decision.Entry
		var del []netip.Prefix
		touched := map[netip.Prefix]bool{}
		for n := 1 + rng.IntN(6); n > 0; n-- {
			a := space.Addr().As4()
			a[2] += byte(rng.IntN(2))
			a[3] = byte(rng.IntN(256))
			p := netip.PrefixFrom(netip.AddrFrom4(a), 21+rng.IntN(12)).Masked()
			if touched[p] {
				continue
			}
			touched[p] = true
			if _, ok := want[p]; ok && rng.IntN(2) == 0 {
				del = append(del, p)
				delete(want, p)
				continue
			}
			e := decision.Entry{Prefix: p, Origin: "o" + string(rune('a'+rng.IntN(3)))}
			if rng.IntN(4) > 0 {
				e.Expiry = base.Add(time.Duration(1+rng.IntN(5)) * time.Hour)
			}
			up = append(up, e)
			want[p] = e
		}
		if err := b.Apply(context.Background(), up, del); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		rs := listRuleset(t, ns)
		for a := space.Addr(); space.Contains(a); a = a.Next() {
			covered := false
			for p := range want {
				covered = covered || p.Contains(a)
			}
			// Prefixes wider than the space reach out of it: probe its
			// edges too.
			if covered != rs.banned(a) {
				t.Fatalf("step %d: %s banned=%v, want %v", step, a, rs.banned(a), covered)
			}
		}
	}
	got, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, mapValues(want))
}

// TestExpiry checks that elements time out in the kernel on their own, an
// outer range outliving an inner one, and that deleting or re-adding
// entries the kernel has already expired works.
func TestExpiry(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	long := entry("198.51.0.0/16", "CAPI", time.Hour)
	mustApply(t, b, []decision.Entry{
		entry("192.0.2.10", "crowdsec", 2*time.Second),
		entry("203.0.113.0/24", "crowdsec", 2*time.Second),
		entry("198.51.100.0/24", "crowdsec", 2*time.Second),
		entry("2001:db8::10", "crowdsec", 2*time.Second),
		long,
	})
	checkBanned(t, ns, []string{"192.0.2.10", "203.0.113.7", "198.51.100.7", "198.51.7.7", "2001:db8::10"}, nil)
	rs := listRuleset(t, ns)
	if h := rs.elems("ip", setHosts); len(h) != 1 || h[0].timeout < 1 || h[0].timeout > 2 {
		t.Errorf("hosts = %+v, want one element with a 2s timeout", h)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(500 * time.Millisecond)
		rs = listRuleset(t, ns)
		if len(rs.elems("ip", setHosts)) == 0 && len(rs.elems("ip6", setHosts)) == 0 && !rs.banned(netip.MustParseAddr("203.0.113.7")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("elements did not expire: %+v", rs.sets)
		}
	}
	// The /16 stays, over the /24 that expired inside it.
	checkBanned(t, ns, []string{"198.51.100.7", "198.51.7.7"}, []string{"192.0.2.10", "203.0.113.7", "2001:db8::10"})
	got, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, []decision.Entry{long})

	// The state of a backend that did not List still holds the expired
	// entries; deleting them must not fail on elements the kernel removed.
	b2 := newBackend(t, ns, Config{})
	mustApply(t, b2, []decision.Entry{entry("192.0.2.20", "crowdsec", 1500*time.Millisecond), entry("203.0.114.0/24", "crowdsec", 1500*time.Millisecond)})
	time.Sleep(2500 * time.Millisecond)
	mustApply(t, b2, nil, "192.0.2.20", "203.0.114.0/24")
	mustApply(t, b2, []decision.Entry{entry("192.0.2.20", "crowdsec", time.Hour), entry("203.0.114.0/24", "crowdsec", time.Hour)})
	checkBanned(t, ns, []string{"192.0.2.20", "203.0.114.9"}, nil)
	// An entry that expired before it was written is not written.
	before := b2.Stats()
	mustApply(t, b2, []decision.Entry{{Prefix: pfx("192.0.2.30"), Origin: "crowdsec", Expiry: time.Now().Add(-time.Second)}})
	if s := b2.Stats(); s.SkippedExpired != before.SkippedExpired+1 || s.Elements != before.Elements {
		t.Errorf("expired upsert: stats %+v -> %+v", before, s)
	}
	checkBanned(t, ns, nil, []string{"192.0.2.30"})
}

// TestRestart checks that a second backend on the same namespace lists
// what the first wrote, that reconciling the same state writes nothing,
// that Close leaves the rules and that Uninstall removes only our tables.
func TestRestart(t *testing.T) {
	ns := newNS(t)
	ns.Run(t, "nft", "add table inet keepme")
	ns.Run(t, "nft", "add chain inet keepme input { type filter hook input priority 0; policy accept; }")
	ns.Run(t, "nft", "add table ip other")
	entries := []decision.Entry{
		entry("192.0.2.1", "crowdsec", time.Hour),
		entry("192.0.2.2", "cscli", 0),
		entry("10.1.0.0/16", "CAPI", time.Hour),
		entry("10.1.2.0/24", "crowdsec", 2*time.Hour),
		entry("10.1.0.0/24", "lists", 3*time.Hour),
		entry("2001:db8::/32", "CAPI", 0),
		entry("2001:db8::1", "origin with spaces", time.Hour),
		entry("0.0.0.0/1", "crowdsec", time.Hour), // not a sane ban, but a valid one
		entry("255.255.255.0/24", "crowdsec", time.Hour),
		entry("192.0.2.4", "cscli", 20*365*24*time.Hour), // beyond the longest kernel timeout
	}
	allow := []netip.Prefix{pfx("10.1.2.3"), pfx("fd00::/8")}
	b1 := newBackend(t, ns, Config{})
	if err := b1.SetAllowlist(context.Background(), allow); err != nil {
		t.Fatal(err)
	}
	mustApply(t, b1, entries)
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b1.Apply(context.Background(), entries, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
	checkBanned(t, ns, []string{"192.0.2.1", "10.1.255.1", "2001:db8::5", "255.255.255.255", "127.0.0.1"}, []string{"192.0.2.3"})
	before := ns.Run(t, "nft", "list", "ruleset")

	b2 := newBackend(t, ns, Config{})
	if n := b2.Stats().Transactions; n != 0 {
		t.Errorf("Ensure on tables in order wrote %d transactions", n)
	}
	got, err := b2.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, entries)
	ups, dels := diff(entries, got, time.Second)
	if len(ups)+len(dels) != 0 {
		t.Errorf("diff after restart: %d upserts, %d deletes", len(ups), len(dels))
	}
	if err := b2.Apply(context.Background(), ups, dels); err != nil {
		t.Fatal(err)
	}
	mustApply(t, b2, entries) // the whole state again: still a no-op
	if err := b2.SetAllowlist(context.Background(), allow); err != nil {
		t.Fatal(err)
	}
	if s := b2.Stats(); s.Transactions != 0 || s.Elements != 0 {
		t.Errorf("no-op reconcile wrote: %+v", s)
	}
	if after := ns.Run(t, "nft", "list", "ruleset"); stripExpires(after) != stripExpires(before) {
		t.Errorf("ruleset changed by a no-op reconcile:\n%s\n---\n%s", before, after)
	}

	if n, err := b2.Uninstall(); err != nil || n != 2 {
		t.Fatalf("Uninstall removed %d tables, %v; want 2", n, err)
	}
	rs := listRuleset(t, ns)
	if !slices.Equal(rs.tables, []string{"inet keepme", "ip other"}) {
		t.Errorf("after Uninstall, tables = %v", rs.tables)
	}
	if _, ok := rs.chains["inet keepme input"]; !ok {
		t.Error("Uninstall removed a chain of another table")
	}
	// Uninstall twice is fine; the backend recreates its tables on use.
	if n, err := b2.Uninstall(); err != nil || n != 0 {
		t.Fatalf("second Uninstall removed %d tables, %v; want 0", n, err)
	}
	mustApply(t, b2, entries[:1])
	checkBanned(t, ns, []string{"192.0.2.1"}, []string{"192.0.2.2"})
}

// stripExpires drops the "expires" counters that move with time.
func stripExpires(s string) string { return expiresRE.ReplaceAllString(s, "") }

var expiresRE = regexp.MustCompile(`expires [0-9a-z]+`)

// TestEnsureRepairs changes the configuration under existing tables and
// tampers with them: Ensure brings chains and rules back to the
// configuration and leaves the elements alone.
func TestEnsureRepairs(t *testing.T) {
	ns := newNS(t)
	b1 := newBackend(t, ns, Config{})
	mustApply(t, b1, []decision.Entry{entry("192.0.2.1", "crowdsec", time.Hour), entry("10.0.0.0/8", "CAPI", time.Hour)})
	_ = b1.Close()

	ns.Run(t, "nft", "flush chain ip xdpgate input")
	ns.Run(t, "nft", "add rule ip xdpgate forward counter")
	// A set with other flags (rules must go before it can).
	ns.Run(t, "nft", "flush chain ip6 xdpgate6 input")
	ns.Run(t, "nft", "flush chain ip6 xdpgate6 forward")
	ns.Run(t, "nft", "delete set ip6 xdpgate6 banned_ranges")
	ns.Run(t, "nft", "add set ip6 xdpgate6 banned_ranges { type ipv6_addr; flags interval; }")
	b2 := newBackend(t, ns, Config{Hooks: []string{"input", "prerouting"}, Priority: -200})
	rs := listRuleset(t, ns)
	for _, fam := range []string{"ip xdpgate", "ip6 xdpgate6"} {
		if _, ok := rs.chains[fam+" forward"]; ok {
			t.Errorf("%s: forward chain left", fam)
		}
		for _, hook := range []string{"input", "prerouting"} {
			if c := rs.chains[fam+" "+hook]; c.hook != hook || c.prio != -200 {
				t.Errorf("%s %s = %+v", fam, hook, c)
			}
			if got := rs.rules[fam+" "+hook]; !slices.Equal(got, ruleTags) {
				t.Errorf("%s %s rules = %q", fam, hook, got)
			}
		}
	}
	if !strings.Contains(ns.Run(t, "nft", "list set ip6 xdpgate6 banned_ranges"), "flags interval,timeout") {
		t.Error("set with other flags not recreated")
	}
	checkBanned(t, ns, []string{"192.0.2.1", "10.2.3.4"}, nil)
	got, err := b2.List(context.Background())
	if err != nil || len(got) != 2 {
		t.Errorf("List = %v, %v", got, err)
	}

	// IPv6 disabled: the ip6 table goes.
	b3 := newBackend(t, ns, Config{DisableIPv6: true})
	if rs := listRuleset(t, ns); slices.Contains(rs.tables, "ip6 xdpgate6") {
		t.Error("ip6 table left with IPv6 disabled")
	}
	_ = b3
}

// TestBadInput checks that invalid prefixes and IPv6 with IPv6 disabled
// are skipped and counted, never lose what is enforced, and never panic.
func TestBadInput(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{DisableIPv6: true})
	mustApply(t, b, []decision.Entry{entry("192.0.2.1", "crowdsec", time.Hour), entry("10.0.0.0/8", "CAPI", time.Hour)})

	err := b.Apply(context.Background(), []decision.Entry{
		{Prefix: netip.Prefix{}, Origin: "crowdsec"},
		entry("2001:db8::1", "crowdsec", time.Hour),
		{Prefix: netip.PrefixFrom(netip.MustParseAddr("192.0.2.77"), 24), Origin: "crowdsec"}, // host bits set
		{Prefix: netip.MustParsePrefix("::ffff:198.51.100.7/128"), Origin: "crowdsec"},        // IPv4-mapped
	}, []netip.Prefix{{}, pfx("2001:db8::/32")})
	if !errors.Is(err, ErrInvalidPrefix) {
		t.Fatalf("Apply = %v, want ErrInvalidPrefix", err)
	}
	s := b.Stats()
	if s.SkippedInvalid != 2 || s.SkippedIPv6 != 2 {
		t.Errorf("stats = %+v, want 2 invalid and 2 IPv6 skipped", s)
	}
	checkBanned(t, ns, []string{"192.0.2.1", "10.9.9.9", "192.0.2.200", "198.51.100.7"}, nil)
	if rs := listRuleset(t, ns); slices.Contains(rs.tables, "ip6 xdpgate6") {
		t.Error("ip6 table created with IPv6 disabled")
	}
	if err := b.SetAllowlist(context.Background(), []netip.Prefix{{}, pfx("fd00::/8"), pfx("10.1.0.0/16")}); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("SetAllowlist = %v, want ErrInvalidPrefix", err)
	}
	if rs := listRuleset(t, ns); len(rs.elems("ip", setAllow)) != 1 {
		t.Errorf("allowlist = %+v", rs.elems("ip", setAllow))
	}
}

// TestForeignElements adds elements by hand: List reports them (origin
// ""), and a reconcile removes them.
func TestForeignElements(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	keep := entry("10.0.0.0/16", "CAPI", time.Hour)
	mustApply(t, b, []decision.Entry{keep})
	ns.Run(t, "nft", "add element ip xdpgate banned_hosts { 203.0.113.5 }")
	ns.Run(t, "nft", "add element ip xdpgate banned_ranges { 203.0.113.64/26, 10.1.0.0-10.1.0.9 }")
	got, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var foreign []string
	for _, e := range got {
		if e.Origin == "" {
			foreign = append(foreign, e.Prefix.String())
		}
	}
	slices.Sort(foreign)
	if want := []string{"10.1.0.0/29", "10.1.0.8/31", "203.0.113.5/32", "203.0.113.64/26"}; !slices.Equal(foreign, want) {
		t.Errorf("foreign entries = %v, want %v", foreign, want)
	}
	ups, dels := diff([]decision.Entry{keep}, got, time.Second)
	if err := b.Apply(context.Background(), ups, dels); err != nil {
		t.Fatal(err)
	}
	checkBanned(t, ns, []string{"10.0.1.1"}, []string{"203.0.113.5", "203.0.113.70", "10.1.0.3"})
	got, err = b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, []decision.Entry{keep})
}

// TestPartialFailure makes the kernel refuse one change of a batch (a
// range overlapping an interval added by hand, which the backend does not
// know of): the others are applied, the refused one is reported, and a
// List lets the next Apply succeed.
func TestPartialFailure(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	ns.Run(t, "nft", "add element ip xdpgate banned_ranges { 10.5.0.0/16 }")
	good := []decision.Entry{
		entry("192.0.2.1", "crowdsec", time.Hour),
		entry("10.6.0.0/16", "crowdsec", time.Hour),
		entry("10.4.0.0/16", "crowdsec", time.Hour),
		entry("2001:db8::/48", "crowdsec", time.Hour),
	}
	bad := entry("10.5.1.0/24", "crowdsec", time.Hour)
	err := b.Apply(context.Background(), append(slices.Clone(good), bad), nil)
	if err == nil || !strings.Contains(err.Error(), "10.5.1.0") {
		t.Fatalf("Apply = %v, want an error naming 10.5.1.0/24", err)
	}
	t.Logf("Apply: %v", err)
	checkBanned(t, ns, []string{"192.0.2.1", "10.6.1.1", "10.4.1.1", "2001:db8::1", "10.5.1.1"}, nil)
	got, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, append(slices.Clone(good), decision.Entry{Prefix: pfx("10.5.0.0/16")}))
	mustApply(t, b, []decision.Entry{bad}, "10.5.0.0/16")
	checkBanned(t, ns, []string{"10.5.1.1"}, []string{"10.5.2.1"})
	got, err = b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, append(slices.Clone(good), bad))
}

// TestCanceled checks that an Apply whose context is done applies nothing
// and leaves the state as it was, so that the same Apply succeeds later.
func TestCanceled(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	es := []decision.Entry{entry("192.0.2.1", "crowdsec", time.Hour), entry("10.6.0.0/16", "crowdsec", time.Hour)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Apply(ctx, es, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want context.Canceled", err)
	}
	checkBanned(t, ns, nil, []string{"192.0.2.1", "10.6.0.1"})
	mustApply(t, b, es)
	checkBanned(t, ns, []string{"192.0.2.1", "10.6.0.1"}, nil)
}

// TestTablesVanish removes the backend's tables under it, as a tool
// flushing the ruleset would: the next Apply recreates them and writes
// back every ban and the allowlist, then applies its own change.
func TestTablesVanish(t *testing.T) {
	for _, tc := range []struct {
		name, cmd string
		listFirst bool
	}{
		{"flush ruleset", "flush ruleset", false},
		{"one table", "delete table ip xdpgate", false},
		{"flush ruleset then List", "flush ruleset", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t)
			b := newBackend(t, ns, Config{})
			es := []decision.Entry{
				entry("192.0.2.1", "crowdsec", time.Hour),
				entry("10.0.0.0/8", "CAPI", time.Hour),
				entry("10.1.2.0/24", "crowdsec", 2*time.Hour),
				entry("2001:db8::/32", "CAPI", 0),
			}
			mustApply(t, b, es)
			if err := b.SetAllowlist(context.Background(), []netip.Prefix{pfx("10.1.2.3"), pfx("fd00::/8")}); err != nil {
				t.Fatal(err)
			}
			ns.Run(t, "nft", tc.cmd)
			if tc.listFirst {
				got, err := b.List(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				sameEntries(t, got, es)
			}
			more := entry("198.51.100.0/24", "cscli", time.Hour)
			mustApply(t, b, []decision.Entry{more})
			checkBanned(t, ns, []string{"192.0.2.1", "10.9.9.9", "10.1.2.9", "2001:db8::1", "198.51.100.1"}, nil)
			rs := listRuleset(t, ns)
			if a := rs.elems("ip", setAllow); len(a) != 1 {
				t.Errorf("allowlist not written back: %+v", a)
			}
			got, err := b.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			sameEntries(t, got, append(es, more))
		})
	}
}

// TestUpdate changes the origin and expiry of enforced entries: the
// elements are rewritten with the new metadata and timeout.
func TestUpdate(t *testing.T) {
	ns := newNS(t)
	b := newBackend(t, ns, Config{})
	mustApply(t, b, []decision.Entry{
		entry("192.0.2.1", "crowdsec", time.Hour),
		entry("10.0.0.0/16", "CAPI", time.Hour),
		entry("10.0.1.0/24", "crowdsec", time.Hour),
	})
	want := []decision.Entry{
		entry("192.0.2.1", "cscli", 3*time.Hour),
		entry("10.0.0.0/16", "CAPI", 5*time.Hour),
		entry("10.0.1.0/24", "lists", 0),
	}
	mustApply(t, b, want)
	rs := listRuleset(t, ns)
	h := rs.elems("ip", setHosts)
	if len(h) != 1 || !strings.HasPrefix(h[0].comment, "cscli ") || h[0].timeout < 3*3600-5 || h[0].timeout > 3*3600 {
		t.Errorf("hosts = %+v", h)
	}
	for _, e := range rs.elems("ip", setRanges) {
		switch e.lo.String() {
		case "10.0.1.0":
			if e.timeout != 0 || !strings.Contains(e.comment, "10.0.1.0/24 lists 0") {
				t.Errorf("inner interval %+v, want no timeout", e)
			}
		default:
			if e.timeout < 5*3600-5 || e.timeout > 5*3600 {
				t.Errorf("outer interval %+v, want a 5h timeout", e)
			}
		}
	}
	got, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, got, want)
}

// diff returns what turns current into desired: the entries of desired
// that current lacks or holds with another origin or an expiry more than
// tolerance away, and the prefixes of current that desired lacks.
func diff(desired, current []decision.Entry, tolerance time.Duration) ([]decision.Entry, []netip.Prefix) {
	have := make(map[netip.Prefix]decision.Entry, len(current))
	for _, e := range current {
		have[e.Prefix] = e
	}
	var ups []decision.Entry
	for _, e := range desired {
		h, ok := have[e.Prefix]
		delete(have, e.Prefix)
		d := h.Expiry.Sub(e.Expiry)
		same := ok && h.Origin == e.Origin && h.Expiry.IsZero() == e.Expiry.IsZero() && d <= tolerance && d >= -tolerance
		if !same {
			ups = append(ups, e)
		}
	}
	var dels []netip.Prefix
	for p := range have {
		dels = append(dels, p)
	}
	return ups, dels
}
