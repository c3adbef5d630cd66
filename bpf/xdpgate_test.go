package bpf_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdpgate/xdpgate/bpf"
	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/frame"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// testSizes keep the maps small so each test loads in milliseconds.
var testSizes = loader.Sizes{V4Exact: 1 << 14, V6Exact: 1 << 12, V4Ranges: 1 << 12, V6Ranges: 1 << 12, Allow: 256}

type env struct {
	dp *loader.Dataplane
	m  *maps.Maps
}

func newEnv(tb testing.TB, opts loader.Options) *env {
	tb.Helper()
	testutil.Privileged(tb)
	if opts.Sizes == (loader.Sizes{}) {
		opts.Sizes = testSizes
	}
	dp, err := loader.Load(opts)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("verifier rejected the program: %+v", ve)
		}
		tb.Fatal(err)
	}
	tb.Cleanup(dp.Close)
	m, err := maps.New(&dp.Maps)
	if err != nil {
		tb.Fatal(err)
	}
	return &env{dp: dp, m: m}
}

func (e *env) apply(tb testing.TB, up []decision.Entry, del ...netip.Prefix) {
	tb.Helper()
	if err := e.m.Apply(context.Background(), up, del); err != nil {
		tb.Fatal(err)
	}
}

func (e *env) allow(tb testing.TB, ps ...string) {
	tb.Helper()
	var out []netip.Prefix
	for _, p := range ps {
		out = append(out, netip.MustParsePrefix(p))
	}
	if err := e.m.SetAllowlist(context.Background(), out); err != nil {
		tb.Fatal(err)
	}
}

// counters reads the stats map: one counter per stat, summed over CPUs.
func (e *env) counters(tb testing.TB) [bpf.XdpgateStatSTAT_MAX]maps.Counter {
	tb.Helper()
	var out [bpf.XdpgateStatSTAT_MAX]maps.Counter
	var key uint32
	var vals []bpf.XdpgateCounter
	it := e.dp.Maps.Stats.Iterate()
	for it.Next(&key, &vals) {
		for _, v := range vals {
			out[key].Packets += v.Packets
			out[key].Bytes += v.Bytes
		}
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// statVerdicts maps each stat to the verdict it counts.
var statVerdicts = [bpf.XdpgateStatSTAT_MAX]verdict{
	bpf.XdpgateStatSTAT_PASS_V4: vPass, bpf.XdpgateStatSTAT_PASS_V6: vPass,
	bpf.XdpgateStatSTAT_DROP_V4: vDrop, bpf.XdpgateStatSTAT_DROP_V6: vDrop,
	bpf.XdpgateStatSTAT_ALLOWED_V4: vAllowed, bpf.XdpgateStatSTAT_ALLOWED_V6: vAllowed,
	bpf.XdpgateStatSTAT_WOULD_DROP_V4: vWouldDrop, bpf.XdpgateStatSTAT_WOULD_DROP_V6: vWouldDrop,
	bpf.XdpgateStatSTAT_PASS_NOT_IP: vNotIP, bpf.XdpgateStatSTAT_PASS_MALFORMED: vMalformed,
}

// mustRun runs one frame through the program and returns its verdict,
// told apart by the return code and the one counter that moved.
func (e *env) mustRun(tb testing.TB, b []byte) verdict {
	tb.Helper()
	before := e.counters(tb)
	ret, err := e.dp.Program.Run(&ebpf.RunOptions{Data: b, Repeat: 1})
	if err != nil {
		tb.Fatalf("run program on %d bytes: %v", len(b), err)
	}
	after := e.counters(tb)
	var got verdict
	n := 0
	for i := range after {
		a, c := before[i], after[i]
		if c.Packets == a.Packets {
			continue
		}
		if c.Packets != a.Packets+1 || c.Bytes != a.Bytes+uint64(len(b)) {
			tb.Fatalf("counter %d moved by %d packets, %d bytes; want 1, %d", i, c.Packets-a.Packets, c.Bytes-a.Bytes, len(b))
		}
		got = statVerdicts[i]
		n++
	}
	if n != 1 {
		tb.Fatalf("%d counters moved for one packet, want exactly 1", n)
	}
	wantRet := uint32(2) // XDP_PASS
	if got == vDrop {
		wantRet = 1 // XDP_DROP
	}
	if ret != wantRet {
		tb.Fatalf("verdict %v with return code %d", got, ret)
	}
	return got
}

func ban(p string) decision.Entry {
	return decision.Entry{Prefix: netip.MustParsePrefix(p), Origin: "crowdsec"}
}

func pkt(src string, opts ...func(*frame.Spec)) []byte {
	s := frame.Spec{Src: netip.MustParseAddr(src), Pad: true}
	if s.Src.Is4() {
		s.Dst = netip.MustParseAddr("192.0.2.1")
	} else {
		s.Dst = netip.MustParseAddr("2001:db8::1")
	}
	for _, o := range opts {
		o(&s)
	}
	return frame.Build(s)
}

func tags(t ...frame.Tag) func(*frame.Spec)   { return func(s *frame.Spec) { s.Tags = t } }
func options(words int) func(*frame.Spec)     { return func(s *frame.Spec) { s.OptionWords = words } }
func fragment(s *frame.Spec)                  { s.Fragment = true }
func ethertype(et uint16) func(*frame.Spec)   { return func(s *frame.Spec) { s.EtherType = et } }
func truncate(b []byte, n int) []byte         { return b[:n] }
func mutate(b []byte, fn func([]byte)) []byte { c := append([]byte(nil), b...); fn(c); return c }

func TestVerdicts(t *testing.T) {
	e := newEnv(t, loader.Options{})
	past := time.Now().Add(-time.Second)
	e.apply(t, []decision.Entry{
		ban("203.0.113.7/32"),
		ban("198.51.100.0/24"),
		ban("10.0.0.0/8"),    // a wide range, with an allowlisted hole below
		ban("100.64.0.0/16"), // nested: /16 ...
		ban("100.64.1.0/24"), // ... /24 inside ...
		ban("100.64.1.1/32"), // ... and a /32 inside both
		ban("2001:db8:bad::1/128"),
		ban("2001:db8:dead::/48"),
		ban("2a00:1450::/32"),
		{Prefix: netip.MustParsePrefix("203.0.113.9/32"), Origin: "cscli", Expiry: past},
		{Prefix: netip.MustParsePrefix("2001:db8:bad::9/128"), Origin: "cscli", Expiry: past},
		{Prefix: netip.MustParsePrefix("172.20.0.0/24"), Origin: "cscli", Expiry: past}, // expired range ...
		ban("172.20.0.0/16"), // ... over a live one
		{Prefix: netip.MustParsePrefix("192.0.2.99/32"), Origin: "CAPI", Expiry: time.Now().Add(time.Hour)},
	})
	e.allow(t, "10.1.0.0/16", "2001:db8:dead:1::/64")

	banned := pkt("203.0.113.7")
	for _, tc := range []struct {
		name string
		b    []byte
		want verdict
	}{
		{"v4 exact ban", banned, vDrop},
		{"v4 neighbour of exact ban", pkt("203.0.113.8"), vPass},
		{"v4 range /24", pkt("198.51.100.200"), vDrop},
		{"v4 outside range", pkt("198.51.101.1"), vPass},
		{"v4 wide /8", pkt("10.200.3.4"), vDrop},
		{"v4 allowlist hole in a banned /8", pkt("10.1.2.3"), vAllowed},
		{"v4 nested /16", pkt("100.64.200.1"), vDrop},
		{"v4 nested /24", pkt("100.64.1.200"), vDrop},
		{"v4 nested /32", pkt("100.64.1.1"), vDrop},
		{"v4 ban with future expiry", pkt("192.0.2.99"), vDrop},
		{"v4 expired exact ban", pkt("203.0.113.9"), vPass},
		{"v4 expired /24 inside live /16", pkt("172.20.0.5"), vDrop},
		{"v6 exact ban", pkt("2001:db8:bad::1"), vDrop},
		{"v6 neighbour", pkt("2001:db8:bad::2"), vPass},
		{"v6 expired exact ban", pkt("2001:db8:bad::9"), vPass},
		{"v6 range /48", pkt("2001:db8:dead:beef::1"), vDrop},
		{"v6 allowlist /64 in banned /48", pkt("2001:db8:dead:1::42"), vAllowed},
		{"v6 range /32", pkt("2a00:1450:4001::1"), vDrop},
		{"v6 outside", pkt("2a00:1451::1"), vPass},
		{"v4-mapped v6 source checked as v4", pkt("::ffff:203.0.113.7", ethertype(frame.EtherTypeIPv6)), vDrop},
		{"v4-mapped v6 not banned", pkt("::ffff:203.0.113.8", ethertype(frame.EtherTypeIPv6)), vPass},
		{"802.1Q", pkt("203.0.113.7", tags(frame.Tag8021Q(10))), vDrop},
		{"QinQ 802.1ad+802.1Q", pkt("203.0.113.7", tags(frame.Tag8021AD(100), frame.Tag8021Q(10))), vDrop},
		{"QinQ v6", pkt("2001:db8:bad::1", tags(frame.Tag8021AD(100), frame.Tag8021Q(10))), vDrop},
		{"double 802.1Q", pkt("203.0.113.7", tags(frame.Tag8021Q(1), frame.Tag8021Q(2))), vDrop},
		{"three tags: not parsed, passes", pkt("203.0.113.7", tags(frame.Tag8021AD(1), frame.Tag8021Q(2), frame.Tag8021Q(3))), vNotIP},
		{"IPv4 options IHL 6", pkt("203.0.113.7", options(1)), vDrop},
		{"IPv4 options IHL 15", pkt("203.0.113.7", options(10)), vDrop},
		{"IPv4 fragment", pkt("203.0.113.7", fragment), vDrop},
		{"IPv4 fragment, not banned", pkt("203.0.113.8", fragment), vPass},
		{"ARP", pkt("203.0.113.7", ethertype(frame.EtherTypeARP)), vNotIP},
		{"LLDP", pkt("203.0.113.7", ethertype(frame.EtherTypeLLDP)), vNotIP},
		{"IHL below 5", mutate(banned, func(b []byte) { b[14] = 0x44 }), vMalformed},
		{"IP version 6 in an IPv4 frame", mutate(banned, func(b []byte) { b[14] = 0x65 }), vMalformed},
		{"IHL beyond the frame", truncate(pkt("203.0.113.7", options(10)), 14+40), vMalformed},
		{"IPv6 bad version", mutate(pkt("2001:db8:bad::1"), func(b []byte) { b[14] = 0x45 }), vMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.mustRun(t, tc.b); got != tc.want {
				t.Errorf("verdict %v, want %v", got, tc.want)
			}
		})
	}
}

// TestTruncated cuts banned frames at every length: a frame cut anywhere
// before the end of its IP header passes as malformed; from there on the
// source is readable and it drops.
func TestTruncated(t *testing.T) {
	e := newEnv(t, loader.Options{})
	e.apply(t, []decision.Entry{ban("203.0.113.7/32"), ban("2001:db8:bad::1/128")})
	for _, full := range [][]byte{
		pkt("203.0.113.7", tags(frame.Tag8021AD(1), frame.Tag8021Q(2)), options(3)),
		pkt("2001:db8:bad::1", tags(frame.Tag8021Q(2))),
	} {
		m := model{bans: []decision.Entry{ban("203.0.113.7/32"), ban("2001:db8:bad::1/128")}}
		for n := 14; n <= len(full); n++ {
			b := full[:n]
			want := m.judge(b, time.Now())
			if got := e.mustRun(t, b); got != want {
				t.Errorf("frame cut to %d of %d bytes: verdict %v, want %v", n, len(full), got, want)
			}
		}
	}
}

func TestCountOnly(t *testing.T) {
	e := newEnv(t, loader.Options{CountOnly: true})
	e.apply(t, []decision.Entry{ban("203.0.113.0/24"), ban("2001:db8::/32")})
	for _, src := range []string{"203.0.113.1", "2001:db8::5"} {
		if got := e.mustRun(t, pkt(src)); got != vWouldDrop {
			t.Errorf("%s: verdict %v, want %v", src, got, vWouldDrop)
		}
	}
	st, err := e.m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.DropV4.Packets+st.DropV6.Packets != 0 {
		t.Errorf("count-only mode dropped: %+v", st)
	}
	if st.DropsByOrigin["crowdsec"]["ipv4"].Packets != 1 || st.DropsByOrigin["crowdsec"]["ipv6"].Packets != 1 {
		t.Errorf("per-origin counts: %+v", st.DropsByOrigin)
	}
}

func TestCounters(t *testing.T) {
	e := newEnv(t, loader.Options{})
	e.apply(t, []decision.Entry{
		{Prefix: netip.MustParsePrefix("203.0.113.7/32"), Origin: "crowdsec"},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Origin: "CAPI"},
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), Origin: "cscli"},
	})
	frames := map[string]int{"203.0.113.7": 3, "198.51.100.1": 2, "2001:db8::1": 4, "192.0.2.50": 5}
	var bytes4 uint64
	for src, n := range frames {
		for range n {
			b := pkt(src)
			if src == "203.0.113.7" {
				bytes4 += uint64(len(b))
			}
			e.mustRun(t, b)
		}
	}
	st, err := e.m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		got  uint64
		want uint64
	}{
		{"drop v4", st.DropV4.Packets, 5},
		{"drop v6", st.DropV6.Packets, 4},
		{"pass v4", st.PassV4.Packets, 5},
		{"crowdsec v4", st.DropsByOrigin["crowdsec"]["ipv4"].Packets, 3},
		{"crowdsec v4 bytes", st.DropsByOrigin["crowdsec"]["ipv4"].Bytes, bytes4},
		{"CAPI v4", st.DropsByOrigin["CAPI"]["ipv4"].Packets, 2},
		{"cscli v6", st.DropsByOrigin["cscli"]["ipv6"].Packets, 4},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestNestedDeletes removes nested ranges one at a time: what is left keeps
// dropping what it covers.
func TestNestedDeletes(t *testing.T) {
	e := newEnv(t, loader.Options{})
	e.apply(t, []decision.Entry{ban("100.64.0.0/16"), ban("100.64.1.0/24"), ban("100.64.1.1/32")})
	steps := []struct {
		del  string
		want map[string]verdict
	}{
		{"100.64.1.0/24", map[string]verdict{"100.64.1.1": vDrop, "100.64.1.2": vDrop, "100.64.2.1": vDrop}},
		{"100.64.0.0/16", map[string]verdict{"100.64.1.1": vDrop, "100.64.1.2": vPass, "100.64.2.1": vPass}},
		{"100.64.1.1/32", map[string]verdict{"100.64.1.1": vPass}},
	}
	for _, s := range steps {
		e.apply(t, nil, netip.MustParsePrefix(s.del))
		for src, want := range s.want {
			if got := e.mustRun(t, pkt(src)); got != want {
				t.Errorf("after deleting %s: %s is %v, want %v", s.del, src, got, want)
			}
		}
	}
	// Deleting what is not there is harmless.
	e.apply(t, nil, netip.MustParsePrefix("100.64.1.1/32"), netip.MustParsePrefix("9.9.9.0/24"))
}

func TestExpiryInKernel(t *testing.T) {
	e := newEnv(t, loader.Options{})
	e.apply(t, []decision.Entry{{Prefix: netip.MustParsePrefix("203.0.113.7/32"), Origin: "cscli", Expiry: time.Now().Add(300 * time.Millisecond)}})
	if got := e.mustRun(t, pkt("203.0.113.7")); got != vDrop {
		t.Fatalf("before expiry: %v", got)
	}
	time.Sleep(400 * time.Millisecond)
	if got := e.mustRun(t, pkt("203.0.113.7")); got != vPass {
		t.Fatalf("after expiry, with nobody pruning: %v", got)
	}
}

// sameBucket returns n public IPv4 addresses that the exact IPv4 cache
// puts in one bucket (the hash of bpf/xdpgate.c, on the address bytes read
// little-endian), starting the search at 100.70.0.1.
func sameBucket(n int, nbits uint32) []string {
	bucket := func(a netip.Addr) uint32 {
		b := a.As4()
		key := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24
		return uint32((key * 0x9E3779B97F4A7C15) >> (64 - nbits))
	}
	first := netip.MustParseAddr("100.70.0.1")
	out := []string{first.String()}
	for a := first.Next(); len(out) < n; a = a.Next() {
		if bucket(a) == bucket(first) {
			out = append(out, a.String())
		}
	}
	return out
}

// TestExactCacheOverflow bans more addresses than one bucket of the exact
// IPv4 cache holds: those beyond its four slots are found through the
// overflow mark in bans_v4, deletes of either kind take effect, a slot that
// frees up is reused, and a rebuild keeps every verdict.
func TestExactCacheOverflow(t *testing.T) {
	e := newEnv(t, loader.Options{})
	addrs := sameBucket(7, loader.ExactV4Bits(testSizes.V4Exact))
	neighbour := sameBucket(8, loader.ExactV4Bits(testSizes.V4Exact))[7] // same bucket, never banned
	var up []decision.Entry
	for _, a := range addrs[:6] {
		up = append(up, ban(a+"/32"))
	}
	e.apply(t, append(up, ban("0.0.0.0/32")))
	check := func(step string, banned ...string) {
		t.Helper()
		for _, a := range append(addrs, neighbour) {
			want := vPass
			for _, b := range banned {
				if a == b {
					want = vDrop
				}
			}
			if got := e.mustRun(t, pkt(a)); got != want {
				t.Errorf("%s: %s is %v, want %v", step, a, got, want)
			}
		}
	}
	check("six in a bucket of four", addrs[:6]...)
	if got := e.mustRun(t, pkt("0.0.0.0")); got != vDrop {
		t.Errorf("0.0.0.0, banned, is %v", got)
	}
	// One in a slot (the first in), one beyond the slots.
	e.apply(t, nil, netip.MustParsePrefix(addrs[0]+"/32"), netip.MustParsePrefix(addrs[5]+"/32"))
	check("two deleted", addrs[1:5]...)
	// The freed slot takes a new ban.
	e.apply(t, []decision.Entry{ban(addrs[6] + "/32")})
	check("a seventh in the freed slot", append(addrs[1:5:5], addrs[6])...)
	if err := e.m.Rebuild(); err != nil {
		t.Fatal(err)
	}
	check("after a rebuild", append(addrs[1:5:5], addrs[6])...)
}

// TestRebuildExact puts a ban into bans_v4 behind the cache's back, as an
// agent killed between the two writes would leave it: the program does
// not see it until RebuildExact, which an agent runs at start.
func TestRebuildExact(t *testing.T) {
	e := newEnv(t, loader.Options{})
	e.apply(t, []decision.Entry{ban("100.71.0.1/32")})
	key := bpf.XdpgateV4Addr{Addr: netip.MustParseAddr("100.71.0.2").As4()}
	var val bpf.XdpgateBan
	if err := e.dp.Maps.BansV4.Lookup(bpf.XdpgateV4Addr{Addr: netip.MustParseAddr("100.71.0.1").As4()}, &val); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.Maps.BansV4.Put(key, val); err != nil {
		t.Fatal(err)
	}
	if got := e.mustRun(t, pkt("100.71.0.2")); got != vPass {
		t.Fatalf("a ban the cache does not point to is %v before the rebuild; the test lost its point", got)
	}
	if err := e.m.RebuildExact(); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"100.71.0.1", "100.71.0.2"} {
		if got := e.mustRun(t, pkt(a)); got != vDrop {
			t.Errorf("after RebuildExact, %s is %v, want drop", a, got)
		}
	}
}

// TestExactCacheBulk drives the cache's three write paths on a small map
// crowded enough to overflow buckets: unread writes into a fresh cache,
// reading it whole in chunks when a batch touches much of it, and reading
// bucket by bucket through a second Maps that cannot know what the first
// wrote. Every verdict is checked after each step.
func TestExactCacheBulk(t *testing.T) {
	e := newEnv(t, loader.Options{Sizes: loader.Sizes{V4Exact: 1 << 12, V6Exact: 1 << 8, V4Ranges: 1 << 8, V6Ranges: 1 << 8, Allow: 16}})
	addrs := make([]netip.Addr, 3000) // 2048 buckets: ~1.5 a bucket
	for i := range addrs {
		v := uint32(i)*2654435761 | 1
		addrs[i] = netip.AddrFrom4([4]byte{100, 64 | byte(v>>16)&63, byte(v >> 8), byte(v)})
	}
	entries := func(from, to int, origin string) []decision.Entry {
		var out []decision.Entry
		for _, a := range addrs[from:to] {
			out = append(out, decision.Entry{Prefix: netip.PrefixFrom(a, 32), Origin: origin})
		}
		return out
	}
	verify := func(step string, banned func(i int) bool) {
		t.Helper()
		bad := 0
		for i, a := range addrs {
			want := vPass
			if banned(i) {
				want = vDrop
			}
			if got := e.mustRun(t, pkt(a.String())); got != want && bad < 5 {
				bad++
				t.Errorf("%s: %s is %v, want %v", step, a, got, want)
			}
		}
	}
	e.apply(t, entries(0, 3000, "crowdsec"))
	verify("3000 into a fresh cache", func(int) bool { return true })
	e.apply(t, entries(0, 3000, "cscli")) // every bucket read: the chunked path
	verify("3000 updated", func(int) bool { return true })
	// The drops now count for the new origin: the slots were updated.
	st, err := e.m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if n := st.DropsByOrigin["cscli"]["ipv4"].Packets; n != 3000 {
		t.Errorf("%d drops counted for cscli after the update, want 3000", n)
	}
	var del []netip.Prefix
	for i := 0; i < 3000; i += 2 {
		del = append(del, netip.PrefixFrom(addrs[i], 32))
	}
	e.apply(t, nil, del...)
	verify("every other deleted", func(i int) bool { return i%2 == 1 })

	// A second Maps over the same maps, as a restarted agent before its
	// rebuild: it reads each bucket it writes.
	m2, err := maps.New(&e.dp.Maps)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Apply(context.Background(), entries(0, 10, "lists"), []netip.Prefix{netip.PrefixFrom(addrs[11], 32), netip.PrefixFrom(addrs[13], 32)}); err != nil {
		t.Fatal(err)
	}
	verify("ten added and two deleted by another Maps", func(i int) bool { return i < 10 || (i%2 == 1 && i != 11 && i != 13) })
}
