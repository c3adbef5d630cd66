package nftfallback

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// loadSet returns n disjoint entries: addresses (hosts) or /24 ranges,
// from 11.0.0.0 on, expiring in four hours.
func loadSet(n int, ranges bool, from int) []decision.Entry {
	exp := time.Now().Add(4 * time.Hour)
	out := make([]decision.Entry, n)
	for i := range out {
		v := uint32(0x0b000000) + uint32(from+i)
		bits := 32
		if ranges {
			v, bits = uint32(0x0b000000)+uint32(from+i)<<8, 24
		}
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		out[i] = decision.Entry{Prefix: netip.PrefixFrom(a, bits), Origin: "CAPI", Expiry: exp}
	}
	return out
}

type loadResult struct {
	full, delta time.Duration
	deltaTx     uint64 // transactions of the delta
	deltaElems  uint64 // element operations of the delta
	fullTx      uint64
}

// loadAndDelta loads n entries into a fresh backend, then applies a delta
// of 10 (5 new entries, 5 deleted).
func loadAndDelta(tb testing.TB, b *Backend, n int, ranges bool) loadResult {
	tb.Helper()
	ctx := context.Background()
	es := loadSet(n, ranges, 0)
	var r loadResult
	tx := b.Stats().Transactions
	start := time.Now()
	if err := b.Apply(ctx, es, nil); err != nil {
		tb.Fatalf("load %d: %v", n, err)
	}
	r.full = time.Since(start)
	r.fullTx = b.Stats().Transactions - tx
	before := b.Stats()
	del := []netip.Prefix{es[1].Prefix, es[n/3].Prefix, es[n/2].Prefix, es[2*n/3].Prefix, es[n-2].Prefix}
	start = time.Now()
	if err := b.Apply(ctx, loadSet(5, ranges, n), del); err != nil {
		tb.Fatalf("delta: %v", err)
	}
	r.delta = time.Since(start)
	after := b.Stats()
	r.deltaTx, r.deltaElems = after.Transactions-before.Transactions, after.Elements-before.Elements
	return r
}

// BenchmarkLoad100k loads 100k bans (addresses, then /24 ranges) into
// fresh tables, applies a 10-entry delta on top and reports both times and
// their ratio: a delta must cost a small fraction of a full load, because
// it neither reads nor rewrites the set.
func BenchmarkLoad100k(b *testing.B) {
	const n = 100_000
	for _, tc := range []struct {
		name   string
		ranges bool
	}{{"hosts", false}, {"ranges", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var full, delta time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ns := newNS(b)
				be := newBackend(b, ns, Config{Hooks: []string{"input"}})
				b.StartTimer()
				r := loadAndDelta(b, be, n, tc.ranges)
				b.StopTimer()
				full += r.full
				delta += r.delta
				b.Logf("%s: load %d in %v (%d transactions), delta of 10 in %v (%d transaction, %d element ops), delta/full = %.4f",
					tc.name, n, r.full.Round(time.Millisecond), r.fullTx, r.delta.Round(10*time.Microsecond), r.deltaTx, r.deltaElems,
					float64(r.delta)/float64(r.full))
				if i == b.N-1 {
					start := time.Now()
					got, err := be.List(context.Background())
					if err != nil || len(got) != n+5-5 {
						b.Fatalf("List: %d entries, %v", len(got), err)
					}
					b.Logf("%s: List of %d read back in %v", tc.name, len(got), time.Since(start).Round(time.Millisecond))
				}
				_ = be.Close()
			}
			b.ReportMetric(full.Seconds()/float64(b.N), "s/load")
			b.ReportMetric(float64(delta.Microseconds())/1000/float64(b.N), "ms/delta")
			b.ReportMetric(float64(delta)/float64(full), "delta/load")
		})
	}
}

// TestLoadSized runs the benchmark's load at test size (100k, 5k with
// -short) and checks what it wrote, not how fast: everything is listed
// back, and the delta is one transaction of a few element operations.
func TestLoadSized(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 5_000
	}
	for _, tc := range []struct {
		name     string
		ranges   bool
		maxElems uint64
	}{
		// 5 adds (1 element each), 5 deletes (ensure + delete).
		{"hosts", false, 15},
		// An interval is two elements.
		{"ranges", true, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t)
			b := newBackend(t, ns, Config{})
			r := loadAndDelta(t, b, n, tc.ranges)
			t.Logf("load %d in %v (%d transactions), delta of 10 in %v, delta/full = %.4f",
				n, r.full.Round(time.Millisecond), r.fullTx, r.delta, float64(r.delta)/float64(r.full))
			if r.deltaTx != 1 || r.deltaElems != tc.maxElems {
				t.Errorf("delta of 10 wrote %d transactions, %d element ops; want 1, %d", r.deltaTx, r.deltaElems, tc.maxElems)
			}
			got, err := b.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Errorf("List returned %d entries, want %d", len(got), n)
			}
			rs := listRuleset(t, ns)
			set := setHosts
			if tc.ranges {
				set = setRanges
			}
			if k := len(rs.elems("ip", set)); k != n {
				t.Errorf("nft lists %d elements in %s, want %d", k, set, n)
			}
		})
	}
}
