package decision

import (
	"fmt"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// budget is what one reconcile of 100k decisions may cost in Go (parse
// aside): Store.Replace, Store.Entries and Diff together.
const budget = 100 * time.Millisecond

// benchDecisions builds n LAPI decisions shaped like a real startup set:
// mostly distinct IPv4 addresses with CAPI's fractional durations, some
// ranges, some IPv6, and a few values held by two decisions. The first
// decision's value is held by it alone.
func benchDecisions(n int) []*models.Decision {
	out := make([]*models.Decision, 0, n)
	origins := []string{"CAPI", "crowdsec", "cscli", "lists"}
	for i := range n {
		var scope, value string
		switch {
		case i%20 == 7:
			scope, value = "Range", fmt.Sprintf("10.%d.%d.0/24", i>>16&255, i>>8&255)
		case i%20 == 13:
			scope, value = "Ip", fmt.Sprintf("2001:db8:%x::%x", i>>16, i&0xffff)
		case i%50 == 49:
			scope, value = "Ip", fmt.Sprintf("100.%d.%d.%d", (i-1)>>16&255, (i-1)>>8&255, (i-1)&255) // same as i-1
		default:
			scope, value = "Ip", fmt.Sprintf("100.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		}
		dur := fmt.Sprintf("%dh%dm%d.%09ds", 1+i%167, i%60, i%59, (i*7919)%1000000000)
		out = append(out, &models.Decision{
			ID:       int64(i + 1),
			Origin:   ptr(origins[i%len(origins)]),
			Scenario: ptr("crowdsecurity/http-probing"),
			Scope:    ptr(scope),
			Type:     ptr("ban"),
			Value:    ptr(value),
			Duration: ptr(dur),
		})
	}
	return out
}

func parseAll(tb testing.TB, raw []*models.Decision, now time.Time) []Decision {
	tb.Helper()
	out := make([]Decision, 0, len(raw))
	for _, d := range raw {
		p, err := Parse(d, now, defaultOpts)
		if err != nil {
			tb.Fatalf("Parse: %v", err)
		}
		out = append(out, p)
	}
	return out
}

func BenchmarkParse(b *testing.B) {
	raw := benchDecisions(100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := Parse(raw[i%len(raw)], t0, defaultOpts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreReplaceEntries measures a startup reconcile of the store:
// Replace with the complete set, then Entries. It prints the share of the
// 100 ms budget it uses.
func BenchmarkStoreReplaceEntries(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			ds := parseAll(b, benchDecisions(n), t0)
			var s Store
			s.Replace(ds)
			dst := s.Entries(t0)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				s.Replace(ds)
				dst = s.AppendEntries(dst[:0], t0)
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(per.Nanoseconds())/float64(n), "ns/decision")
			b.ReportMetric(float64(per)/float64(budget)*float64(100_000)/float64(n), "budget-share@100k")
		})
	}
}

// BenchmarkDiff measures the reconcile core on 100k entries: a resync that
// changes nothing (the expiries drifted by a few milliseconds) and one
// where 1% of the entries changed. writes/op shows what a backend would
// have to do, against the 100k writes of rewriting everything.
func BenchmarkDiff(b *testing.B) {
	const n = 100_000
	raw := benchDecisions(n)
	var s Store
	s.Replace(parseAll(b, raw, t0))
	current := s.Entries(t0)

	s.Replace(parseAll(b, raw, t0.Add(42*time.Millisecond)))
	noop := s.Entries(t0)

	churn := append([]Entry(nil), noop...)
	for i := 0; i < len(churn); i += 200 { // 0.5% gone, 0.5% changed
		churn[i].Expiry = churn[i].Expiry.Add(time.Hour)
	}
	kept := churn[:0]
	for i := range churn {
		if i%200 != 100 {
			kept = append(kept, churn[i])
		}
	}
	churn = kept

	for _, c := range []struct {
		name    string
		desired []Entry
	}{{"noop", noop}, {"churn=1%", churn}} {
		b.Run(c.name, func(b *testing.B) {
			// The baseline: the obvious diff, with maps of
			// netip.Prefix and a sort, timed in the same run.
			const baseRuns = 3
			begin := time.Now()
			for range baseRuns {
				naiveDiff(c.desired, current, time.Second)
			}
			baseline := time.Since(begin) / baseRuns

			Diff(c.desired, current, time.Second) // grow the scratch buffers
			var writes int
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				up, del := Diff(c.desired, current, time.Second)
				writes = len(up) + len(del)
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(writes), "writes/op")
			b.ReportMetric(float64(writes)/float64(len(current)), "writes/full-rewrite")
			b.ReportMetric(float64(per.Nanoseconds())/float64(n), "ns/entry")
			b.ReportMetric(float64(per)/float64(budget), "budget-share")
			b.ReportMetric(float64(baseline)/float64(per), "x-faster-than-map-diff")
		})
	}
}

// BenchmarkApplyStartup measures the whole startup path in Go: parsing a
// 100k startup set as LAPI sends it into the store, then Entries.
func BenchmarkApplyStartup(b *testing.B) {
	raw := benchDecisions(100_000)
	var s Store
	s.Apply(true, raw, nil, t0, defaultOpts, nil)
	dst := s.Entries(t0)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.Apply(true, raw, nil, t0, defaultOpts, nil)
		dst = s.AppendEntries(dst[:0], t0)
	}
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(per.Nanoseconds())/float64(len(raw)), "ns/decision")
}
