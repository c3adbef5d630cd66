package nftfallback

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// counter returns the packets a drop counter counted.
func counter(t *testing.T, b *Backend, family, hook string) uint64 {
	t.Helper()
	cs, err := b.Counters()
	if err != nil {
		t.Fatalf("Counters: %v", err)
	}
	for _, c := range cs {
		if c.Family == family && c.Hook == hook {
			return c.Packets
		}
	}
	t.Fatalf("no counter %s %s in %+v", family, hook, cs)
	return 0
}

// TestTrafficInput sends TCP connections from a client namespace to a
// server namespace whose backend bans some of the client's addresses.
func TestTrafficInput(t *testing.T) {
	client, server := newNS(t), newNS(t)
	link(t, client, server, "c0", "s0", "02:00:00:00:00:02", "02:00:00:00:00:01",
		[]string{"10.9.0.2/24", "10.9.0.3/24", "10.9.0.4/24", "10.9.0.5/24", "fd00:9::2/64", "fd00:9::3/64", "fd00:9::4/64"},
		[]string{"10.9.0.1/24", "fd00:9::1/64"})
	const port = 7777
	serve(t, server, port)
	b := newBackend(t, server, Config{})

	for _, src := range []string{"10.9.0.2", "10.9.0.4", "fd00:9::2", "fd00:9::3"} {
		dst := "10.9.0.1"
		if netip.MustParseAddr(src).Is6() {
			dst = "fd00:9::1"
		}
		if !connects(t, client, src, dst, port) {
			t.Fatalf("%s cannot connect before any ban", src)
		}
	}

	mustApply(t, b, []decision.Entry{
		entry("10.9.0.0/24", "CAPI", time.Hour),      // the whole client subnet...
		entry("10.9.0.3", "crowdsec", time.Hour),     // ...an address inside it too
		entry("fd00:9::2", "crowdsec", time.Hour),    // an IPv6 address
		entry("fd00:9::/120", "crowdsec", time.Hour), // an IPv6 range
	})
	if err := b.SetAllowlist(context.Background(), []netip.Prefix{pfx("10.9.0.4"), pfx("fd00:9::3")}); err != nil {
		t.Fatal(err)
	}
	in4, in6 := counter(t, b, "ip", "input"), counter(t, b, "ip6", "input")

	for _, tc := range []struct {
		src, dst string
		pass     bool
	}{
		{"10.9.0.2", "10.9.0.1", false}, // in the banned range
		{"10.9.0.3", "10.9.0.1", false}, // exact ban inside the range
		{"10.9.0.4", "10.9.0.1", true},  // allowlisted inside the banned range
		{"fd00:9::2", "fd00:9::1", false},
		{"fd00:9::3", "fd00:9::1", true}, // allowlisted inside the banned range
		{"fd00:9::4", "fd00:9::1", false},
	} {
		if got := connects(t, client, tc.src, tc.dst, port); got != tc.pass {
			t.Errorf("connection from %s: passed=%v, want %v", tc.src, got, tc.pass)
		}
	}
	if n := counter(t, b, "ip", "input"); n < in4+2 {
		t.Errorf("ip input counter %d -> %d, want at least 2 drops", in4, n)
	}
	if n := counter(t, b, "ip6", "input"); n < in6+2 {
		t.Errorf("ip6 input counter %d -> %d, want at least 2 drops", in6, n)
	}
	if n := counter(t, b, "ip", "forward"); n != 0 {
		t.Errorf("ip forward counter = %d, want 0", n)
	}

	// Lift the range: the exact ban inside it stays.
	mustApply(t, b, nil, "10.9.0.0/24", "fd00:9::/120")
	for _, tc := range []struct {
		src, dst string
		pass     bool
	}{
		{"10.9.0.2", "10.9.0.1", true},
		{"10.9.0.3", "10.9.0.1", false},
		{"fd00:9::2", "fd00:9::1", false},
		{"fd00:9::4", "fd00:9::1", true},
	} {
		if got := connects(t, client, tc.src, tc.dst, port); got != tc.pass {
			t.Errorf("after lifting the ranges, connection from %s: passed=%v, want %v", tc.src, got, tc.pass)
		}
	}
}

// TestTrafficForward bans a client that reaches a server through a router
// running the backend: the router's forward chain drops it.
func TestTrafficForward(t *testing.T) {
	client, router, server := newNS(t), newNS(t), newNS(t)
	link(t, client, router, "c0", "r0", "02:00:00:00:01:02", "02:00:00:00:01:01",
		[]string{"10.10.1.2/24", "10.10.1.3/24"}, []string{"10.10.1.1/24"})
	link(t, router, server, "r1", "s0", "02:00:00:00:02:01", "02:00:00:00:02:02",
		[]string{"10.10.2.1/24"}, []string{"10.10.2.2/24"})
	client.Run(t, "ip", "route", "add", "default", "via", "10.10.1.1")
	server.Run(t, "ip", "route", "add", "default", "via", "10.10.2.1")
	router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	const port = 7778
	serve(t, server, port)
	b := newBackend(t, router, Config{})

	if !connects(t, client, "10.10.1.2", "10.10.2.2", port) {
		t.Fatal("no route through the router before any ban")
	}
	mustApply(t, b, []decision.Entry{entry("10.10.1.2", "crowdsec", time.Hour)})
	fwd := counter(t, b, "ip", "forward")
	if connects(t, client, "10.10.1.2", "10.10.2.2", port) {
		t.Error("banned client reached the server through the router")
	}
	if !connects(t, client, "10.10.1.3", "10.10.2.2", port) {
		t.Error("a client not banned could not reach the server")
	}
	if n := counter(t, b, "ip", "forward"); n <= fwd {
		t.Errorf("forward counter %d -> %d, want drops", fwd, n)
	}
	if n := counter(t, b, "ip", "input"); n != 0 {
		t.Errorf("input counter = %d, want 0: the traffic is forwarded", n)
	}
	mustApply(t, b, nil, "10.10.1.2")
	if !connects(t, client, "10.10.1.2", "10.10.2.2", port) {
		t.Error("unbanned client still dropped")
	}
}
