package maps_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

func load(tb testing.TB, sizes loader.Sizes) *maps.Maps {
	tb.Helper()
	testutil.Privileged(tb)
	dp, err := loader.Load(loader.Options{Sizes: sizes})
	if err != nil {
		tb.Fatalf("%+v", err)
	}
	tb.Cleanup(dp.Close)
	m, err := maps.New(&dp.Maps)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

var small = loader.Sizes{V4Exact: 64, V6Exact: 64, V4Ranges: 16, V6Ranges: 16, Allow: 16}

func e(p, origin string, exp time.Time) decision.Entry {
	return decision.Entry{Prefix: netip.MustParsePrefix(p), Origin: origin, Expiry: exp}
}

func TestApplyListCheck(t *testing.T) {
	m := load(t, small)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour).Round(time.Millisecond)
	in := []decision.Entry{
		e("192.0.2.1/32", "crowdsec", exp),
		e("198.51.100.0/24", "CAPI", time.Time{}),
		e("2001:db8::1/128", "cscli", exp),
		e("2001:db8:1::/48", "lists", exp),
		e("::ffff:203.0.113.5/128", "cscli", exp), // mapped: stored as IPv4
	}
	if err := m.Apply(ctx, in, nil); err != nil {
		t.Fatal(err)
	}
	got, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"192.0.2.1/32": "crowdsec", "198.51.100.0/24": "CAPI", "203.0.113.5/32": "cscli",
		"2001:db8::1/128": "cscli", "2001:db8:1::/48": "lists",
	}
	if len(got) != len(want) {
		t.Fatalf("List = %v", got)
	}
	for _, g := range got {
		if want[g.Prefix.String()] != g.Origin {
			t.Errorf("entry %v: origin %q, want %q", g.Prefix, g.Origin, want[g.Prefix.String()])
		}
		if g.Prefix.String() == "198.51.100.0/24" {
			if !g.Expiry.IsZero() {
				t.Errorf("no-expiry entry read back with expiry %v", g.Expiry)
			}
		} else if d := g.Expiry.Sub(exp); d > 10*time.Millisecond || d < -10*time.Millisecond {
			t.Errorf("entry %v expiry %v, want %v", g.Prefix, g.Expiry, exp)
		}
	}
	if err := m.SetAllowlist(ctx, []netip.Prefix{netip.MustParsePrefix("198.51.100.128/25")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr   string
		want   maps.Verdict
		prefix string
	}{
		{"192.0.2.1", maps.VerdictDrop, "192.0.2.1/32"},
		{"198.51.100.7", maps.VerdictDrop, "198.51.100.0/24"},
		{"198.51.100.200", maps.VerdictAllowed, "198.51.100.0/24"},
		{"2001:db8:1:2::3", maps.VerdictDrop, "2001:db8:1::/48"},
		{"::ffff:203.0.113.5", maps.VerdictDrop, "203.0.113.5/32"},
		{"192.0.2.2", maps.VerdictPass, ""},
	} {
		res, err := m.Check(netip.MustParseAddr(tc.addr))
		if err != nil {
			t.Fatal(err)
		}
		if res.Verdict != tc.want {
			t.Errorf("Check(%s) = %v, want %v", tc.addr, res.Verdict, tc.want)
		}
		if tc.prefix != "" && (res.Ban == nil || res.Ban.Prefix.String() != tc.prefix) {
			t.Errorf("Check(%s) ban = %+v, want %s", tc.addr, res.Ban, tc.prefix)
		}
	}
	fill, err := m.Fill()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fill {
		if f.Map == "bans_v4" && (f.Entries != 2 || f.Capacity != 64) {
			t.Errorf("fill of bans_v4 = %+v", f)
		}
	}
}

// TestFull fills a map past its size: the error names the map and its
// size, and what fitted stays.
func TestFull(t *testing.T) {
	m := load(t, small)
	var in []decision.Entry
	for i := 0; i < 100; i++ {
		in = append(in, e(fmt.Sprintf("192.0.2.%d/32", i), "crowdsec", time.Time{}))
	}
	in = append(in, e("2001:db8::1/128", "crowdsec", time.Time{}))
	err := m.Apply(context.Background(), in, nil)
	var full *maps.FullError
	if !errors.As(err, &full) || !errors.Is(err, maps.ErrMapFull) || full.Map != "bans_v4" || full.Size != 64 {
		t.Fatalf("err = %v, want a FullError for bans_v4 of 64", err)
	}
	list, _ := m.List(context.Background())
	if len(list) != 65 {
		t.Errorf("%d entries kept, want the 64 that fit and the IPv6 one", len(list))
	}
}

func TestInvalidPrefixesSkipped(t *testing.T) {
	m := load(t, small)
	err := m.Apply(context.Background(), []decision.Entry{{Prefix: netip.Prefix{}}, e("192.0.2.1/32", "x", time.Time{})}, nil)
	if err == nil {
		t.Fatal("invalid prefix accepted silently")
	}
	if list, _ := m.List(context.Background()); len(list) != 1 {
		t.Errorf("valid entry lost: %v", list)
	}
}

// TestRebuildClearsStaleBits deletes many bans and checks the summary is
// rebuilt from what is left, without losing a live ban.
func TestRebuildClearsStaleBits(t *testing.T) {
	m := load(t, loader.Sizes{V4Exact: 1 << 14, V6Exact: 64, V4Ranges: 16, V6Ranges: 16, Allow: 16})
	ctx := context.Background()
	var in []decision.Entry
	var del []netip.Prefix
	for i := 0; i < 10000; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(i >> 8), byte(i), 1}), 32)
		in = append(in, decision.Entry{Prefix: p, Origin: "CAPI"})
		if i%10 != 0 {
			del = append(del, p)
		}
	}
	if err := m.Apply(ctx, in, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(ctx, nil, del); err != nil { // triggers a rebuild
		t.Fatal(err)
	}
	for i := 0; i < 10000; i += 10 {
		a := netip.AddrFrom4([4]byte{100, byte(i >> 8), byte(i), 1})
		if res, _ := m.Check(a); res.Verdict != maps.VerdictDrop {
			t.Fatalf("%v lost by the rebuild", a)
		}
	}
	if err := m.Rebuild(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkFill(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			in := make([]decision.Entry, n)
			exp := time.Now().Add(4 * time.Hour)
			for i := range in {
				v := uint32(i)*2654435761 + 1
				in[i] = decision.Entry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32), Origin: "CAPI", Expiry: exp}
			}
			for b.Loop() {
				b.StopTimer()
				m := load(b, loader.Sizes{V4Exact: 1 << 20, V6Exact: 1 << 10, V4Ranges: 1 << 10, V6Ranges: 1 << 10, Allow: 16})
				b.StartTimer()
				if err := m.Apply(context.Background(), in, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
