package nftfallback

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// newNS returns a fresh network namespace with nft available.
func newNS(t testing.TB) *testutil.NetNS {
	t.Helper()
	testutil.Privileged(t)
	testutil.NeedCommand(t, "nft")
	return testutil.NewNetNS(t)
}

// newBackend returns an ensured backend programming ns.
func newBackend(t testing.TB, ns *testutil.NetNS, cfg Config) *Backend {
	t.Helper()
	cfg.NetNS = int(ns.Handle)
	b, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.Ensure(context.Background()); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return b
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func pfx(s string) netip.Prefix {
	if !strings.Contains(s, "/") {
		a := netip.MustParseAddr(s)
		return netip.PrefixFrom(a, a.BitLen())
	}
	return netip.MustParsePrefix(s)
}

func entry(p string, origin string, d time.Duration) decision.Entry {
	e := decision.Entry{Prefix: pfx(p), Origin: origin}
	if d != 0 {
		e.Expiry = time.Now().Add(d)
	}
	return e
}

func mustApply(t testing.TB, b *Backend, up []decision.Entry, del ...string) {
	t.Helper()
	var ps []netip.Prefix
	for _, d := range del {
		ps = append(ps, pfx(d))
	}
	if err := b.Apply(context.Background(), up, ps); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// ruleset is what `nft -j list ruleset` shows, reduced to what the tests
// look at.
type ruleset struct {
	tables   []string             // "family name"
	sets     map[string][]nftElem // "family table set"
	counters map[string][2]uint64 // "family table name": packets, bytes
	chains   map[string]nftChain  // "family table name"
	rules    map[string][]string  // "family table chain": comments
}

type nftElem struct {
	lo, hi           netip.Addr
	timeout, expires int
	comment          string
}

type nftChain struct {
	hook   string
	prio   int
	policy string
}

func listRuleset(t testing.TB, ns *testutil.NetNS) *ruleset {
	t.Helper()
	out := ns.Run(t, "nft", "-j", "list", "ruleset")
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v\n%s", err, out)
	}
	rs := &ruleset{sets: map[string][]nftElem{}, counters: map[string][2]uint64{}, chains: map[string]nftChain{}, rules: map[string][]string{}}
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			var v struct {
				Family, Table, Name, Chain, Hook, Policy, Comment string
				Prio                                              int
				Packets, Bytes                                    uint64
				Elem                                              []json.RawMessage
			}
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatalf("parse %s: %v", kind, err)
			}
			switch kind {
			case "table":
				rs.tables = append(rs.tables, v.Family+" "+v.Name)
			case "set":
				key := v.Family + " " + v.Table + " " + v.Name
				rs.sets[key] = []nftElem{}
				for _, e := range v.Elem {
					rs.sets[key] = append(rs.sets[key], parseElem(t, e))
				}
			case "counter":
				rs.counters[v.Family+" "+v.Table+" "+v.Name] = [2]uint64{v.Packets, v.Bytes}
			case "chain":
				rs.chains[v.Family+" "+v.Table+" "+v.Name] = nftChain{v.Hook, v.Prio, v.Policy}
			case "rule":
				k := v.Family + " " + v.Table + " " + v.Chain
				rs.rules[k] = append(rs.rules[k], v.Comment)
			}
		}
	}
	return rs
}

func parseElem(t testing.TB, raw json.RawMessage) nftElem {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		a := netip.MustParseAddr(s)
		return nftElem{lo: a, hi: a}
	}
	var v struct {
		Prefix *struct {
			Addr string
			Len  int
		}
		Range []string
		Elem  *struct {
			Val              json.RawMessage
			Timeout, Expires int
			Comment          string
		}
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("parse element %s: %v", raw, err)
	}
	switch {
	case v.Prefix != nil:
		p := netip.PrefixFrom(netip.MustParseAddr(v.Prefix.Addr), v.Prefix.Len)
		return nftElem{lo: p.Addr(), hi: lastAddr(p)}
	case len(v.Range) == 2:
		return nftElem{lo: netip.MustParseAddr(v.Range[0]), hi: netip.MustParseAddr(v.Range[1])}
	case v.Elem != nil:
		e := parseElem(t, v.Elem.Val)
		e.timeout, e.expires, e.comment = v.Elem.Timeout, v.Elem.Expires, v.Elem.Comment
		return e
	}
	t.Fatalf("unknown element %s", raw)
	return nftElem{}
}

// banned reports whether one of the ban sets of the default tables holds a.
func (rs *ruleset) banned(a netip.Addr) bool {
	fam, table := "ip", DefaultTable4
	if a.Is6() {
		fam, table = "ip6", DefaultTable6
	}
	for _, set := range []string{setHosts, setRanges} {
		for _, e := range rs.sets[fam+" "+table+" "+set] {
			if e.lo.Compare(a) <= 0 && a.Compare(e.hi) <= 0 {
				return true
			}
		}
	}
	return false
}

func (rs *ruleset) elems(fam, set string) []nftElem {
	table := DefaultTable4
	if fam == "ip6" {
		table = DefaultTable6
	}
	return rs.sets[fam+" "+table+" "+set]
}

// checkBanned asserts which addresses the kernel sets hold.
func checkBanned(t testing.TB, ns *testutil.NetNS, banned []string, free []string) {
	t.Helper()
	rs := listRuleset(t, ns)
	for _, a := range banned {
		if !rs.banned(netip.MustParseAddr(a)) {
			t.Errorf("%s is not banned; sets: %+v", a, rs.sets)
		}
	}
	for _, a := range free {
		if rs.banned(netip.MustParseAddr(a)) {
			t.Errorf("%s is banned", a)
		}
	}
}

// sameEntries compares entry lists by prefix, origin and expiry to the
// millisecond.
func sameEntries(t testing.TB, got, want []decision.Entry) {
	t.Helper()
	norm := func(es []decision.Entry) []string {
		var out []string
		for _, e := range es {
			var exp int64
			if !e.Expiry.IsZero() {
				exp = e.Expiry.UnixMilli()
			}
			out = append(out, fmt.Sprintf("%s %s %d", e.Prefix, e.Origin, exp))
		}
		slices.Sort(out)
		return out
	}
	g, w := norm(got), norm(want)
	if !slices.Equal(g, w) {
		t.Errorf("entries differ\n got: %q\nwant: %q", g, w)
	}
}

// Traffic between namespaces.

// link connects namespaces a and b with a veth pair of fixed MAC addresses
// and gives each end its addresses (IPv6 without duplicate address
// detection, with a static neighbour entry for the peer so that banned
// sources need no neighbour discovery).
func link(t testing.TB, a, b *testutil.NetNS, aDev, bDev, aMAC, bMAC string, aAddrs, bAddrs []string) {
	t.Helper()
	testutil.Run(t, "ip", "link", "add", aDev, "netns", a.Name, "address", aMAC, "type", "veth",
		"peer", "name", bDev, "netns", b.Name, "address", bMAC)
	setup := func(ns *testutil.NetNS, dev string, addrs, peer []string, peerMAC string) {
		for _, s := range addrs {
			args := []string{"ip", "addr", "add", s, "dev", dev}
			if strings.Contains(s, ":") {
				args = append(args, "nodad")
			}
			ns.Run(t, args...)
		}
		ns.Run(t, "ip", "link", "set", dev, "up")
		for _, p := range peer {
			addr := strings.Split(p, "/")[0]
			if strings.Contains(addr, ":") {
				ns.Run(t, "ip", "-6", "neigh", "replace", addr, "lladdr", peerMAC, "dev", dev, "nud", "permanent")
			}
		}
	}
	setup(a, aDev, aAddrs, bAddrs, bMAC)
	setup(b, bDev, bAddrs, aAddrs, aMAC)
}

// serve accepts TCP connections in ns on port and writes one byte to each.
func serve(t testing.TB, ns *testutil.NetNS, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{1})
			_ = c.Close()
		}
	}()
}

// connects reports whether a TCP connection from src in ns to dst
// completes.
func connects(t testing.TB, ns *testutil.NetNS, src, dst string, port int) bool {
	t.Helper()
	var ok bool
	err := ns.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 700 * time.Millisecond}
		c, err := d.Dial("tcp", net.JoinHostPort(dst, fmt.Sprint(port)))
		if err != nil {
			return nil
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 1))
		ok = err == nil
		return nil
	})
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	return ok
}
