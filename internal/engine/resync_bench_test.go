package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/lapi"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// resyncGoal is what a full resync of 100k decisions that finds nothing to
// change may cost beyond decoding LAPI's answer.
const resyncGoal = 50 * time.Millisecond

// lapiSet is a set of active decisions as a LAPI holds them: each runs
// until a fixed time, and every answer states the time left, as CrowdSec
// 1.4.6 writes it (Go's Duration.String of until minus now).
type lapiSet struct {
	ds    []lapiDecision
	until []time.Time
}

type lapiDecision struct {
	Duration string `json:"duration"`
	ID       int64  `json:"id"`
	Origin   string `json:"origin"`
	Scenario string `json:"scenario"`
	Scope    string `json:"scope"`
	Type     string `json:"type"`
	Value    string `json:"value"`
}

// newLAPISet makes n decisions: one origin per source, mostly IPv4
// addresses, some ranges and IPv6 addresses, running from 1 to 167 hours.
func newLAPISet(n int, now time.Time) *lapiSet {
	origins := []string{"CAPI", "crowdsec", "cscli", "lists"}
	s := &lapiSet{}
	for i := range n {
		scope, value := "Ip", fmt.Sprintf("100.%d.%d.%d", 64+i>>16, i>>8&255, i&255)
		switch {
		case i%50 == 7:
			scope, value = "Range", fmt.Sprintf("10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255)
		case i%50 == 13:
			value = fmt.Sprintf("2001:db8:%x::%x", i>>16, i&0xffff)
		}
		s.ds = append(s.ds, lapiDecision{
			ID: int64(i + 1), Origin: origins[i%len(origins)], Scenario: "crowdsecurity/http-probing",
			Scope: scope, Type: "ban", Value: value,
		})
		s.until = append(s.until, now.Add(time.Duration(1+i%167)*time.Hour+time.Duration(i*7919)%time.Hour))
	}
	return s
}

// answer is the startup answer of the stream at now.
func (s *lapiSet) answer(tb testing.TB, now time.Time) []byte {
	tb.Helper()
	for i := range s.ds {
		s.ds[i].Duration = s.until[i].Sub(now).String()
	}
	b, err := json.Marshal(map[string]any{"new": s.ds, "deleted": nil})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// decode reads a stream answer the way the LAPI client does.
func decode(tb testing.TB, r io.Reader) []*models.Decision {
	tb.Helper()
	var resp models.DecisionsStreamResponse
	if err := json.NewDecoder(r).Decode(&resp); err != nil {
		tb.Fatal(err)
	}
	return resp.New
}

// decodeSet reads a stream answer with the agent's own decoder
// (lapi.DecodeSet): one decision at a time, packed as it comes.
func decodeSet(tb testing.TB, r io.Reader) *decision.Set {
	tb.Helper()
	set, err := lapi.DecodeSet(r)
	if err != nil {
		tb.Fatal(err)
	}
	return set
}

// countingBackend counts the calls that reach a backend.
type countingBackend struct {
	decision.Backend
	upserts, deletes int
}

func (c *countingBackend) Apply(ctx context.Context, up []decision.Entry, del []netip.Prefix) error {
	c.upserts += len(up)
	c.deletes += len(del)
	return c.Backend.Apply(ctx, up, del)
}

// cpuTime is the CPU time, user and system, the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// phase accumulates the cost of one step of a resync.
type phase struct {
	wall, cpu time.Duration
	bytes     uint64
}

func measure(p *phase, fn func()) {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	c0, t0 := cpuTime(), time.Now()
	fn()
	p.wall += time.Since(t0)
	p.cpu += cpuTime() - c0
	runtime.ReadMemStats(&m1)
	p.bytes += m1.TotalAlloc - m0.TotalAlloc
}

// BenchmarkResync measures a periodic full resync of 100k decisions into
// the real XDP maps, in two steps: decoding LAPI's JSON answer (the LAPI
// client's share), then the engine's reconcile by difference. Both ways
// the agent can take are measured: decisions decoded into
// []*models.Decision and Engine.Startup, and decisions packed into a
// decision.Set as they are decoded and Engine.StartupSet (the agent's, with
// lapi.WithDecisionSets). It prints both steps with the backend writes,
// for a resync that finds nothing to change and for one that repairs one
// lost delta, against the goal: at most 50 ms of CPU beyond decoding, and
// no map write when nothing changed.
func BenchmarkResync(b *testing.B) {
	testutil.Privileged(b)
	const n = 100_000
	set := newLAPISet(n, time.Now())
	dp, err := loader.Load(loader.Options{Sizes: loader.Sizes{V4Exact: 1 << 18, V6Exact: 1 << 14, V4Ranges: 1 << 13, V6Ranges: 1 << 10, Allow: 64}})
	if err != nil {
		b.Fatalf("%+v", err)
	}
	b.Cleanup(dp.Close)
	xm, err := maps.New(&dp.Maps)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cb := &countingBackend{Backend: xm}
	e := New(Options{Parse: decision.ParseOptions{Types: map[string]bool{"ban": true}}, Logger: slog.New(slog.DiscardHandler)}, cb)
	if err := e.Init(ctx); err != nil {
		b.Fatal(err)
	}
	full := decode(b, bytes.NewReader(set.answer(b, time.Now())))
	if st, err := e.Startup(ctx, full); err != nil || st.Upserts != n {
		b.Fatalf("initial fill: %+v, %v", st, err)
	}

	type path struct {
		name string
		// decode reads the answer; reconcile applies what it read.
		decode    func(raw []byte) any
		reconcile func(v any) (Stats, error)
	}
	paths := []path{
		{"decisions",
			func(raw []byte) any { return decode(b, bytes.NewReader(raw)) },
			func(v any) (Stats, error) { return e.Startup(ctx, v.([]*models.Decision)) }},
		{"set",
			func(raw []byte) any { return decodeSet(b, bytes.NewReader(raw)) },
			func(v any) (Stats, error) { return e.StartupSet(ctx, v.(*decision.Set)) }},
	}
	for _, p := range paths {
		for _, tc := range []struct {
			name    string
			prepare func()
			wantUp  int
		}{
			{"nothing changed", func() {}, 0},
			{"one delta lost", func() {
				// The newest decision, which the stream never
				// delivered, is missing from what the engine
				// enforces.
				ds := decode(b, bytes.NewReader(set.answer(b, time.Now())))
				if _, err := e.Startup(ctx, ds[:len(ds)-1]); err != nil {
					b.Fatal(err)
				}
			}, 1},
		} {
			b.Run(p.name+"/"+tc.name, func(b *testing.B) {
				var dec, rec phase
				writes, runs, size := 0, 0, 0
				for b.Loop() {
					b.StopTimer()
					tc.prepare()
					raw := set.answer(b, time.Now())
					size = len(raw)
					runtime.GC()
					before := cb.upserts + cb.deletes
					b.StartTimer()
					var v any
					measure(&dec, func() { v = p.decode(raw) })
					var st Stats
					measure(&rec, func() {
						if st, err = p.reconcile(v); err != nil {
							b.Fatal(err)
						}
					})
					b.StopTimer()
					if st.Upserts != tc.wantUp || st.Deletes != 0 {
						b.Fatalf("resync wrote %d upserts and %d deletes, want %d and 0", st.Upserts, st.Deletes, tc.wantUp)
					}
					writes += cb.upserts + cb.deletes - before
					runs++
					b.StartTimer()
				}
				per := func(d time.Duration) time.Duration { return (d / time.Duration(runs)).Round(10 * time.Microsecond) }
				verdict := "meets goal"
				if per(rec.cpu) > resyncGoal || (tc.wantUp == 0 && writes != 0) {
					verdict = "MISSES goal"
				}
				fmt.Printf("\nfull resync of %d decisions (%.1f MB of JSON) into the XDP maps, as %s, %s, %d runs:\n", n, float64(size)/1e6, p.name, tc.name, runs)
				fmt.Printf("  decode JSON:   %9v wall %9v CPU %6.1f MB allocated\n", per(dec.wall), per(dec.cpu), float64(dec.bytes)/float64(runs)/1e6)
				fmt.Printf("  reconcile:     %9v wall %9v CPU %6.1f MB allocated\n", per(rec.wall), per(rec.cpu), float64(rec.bytes)/float64(runs)/1e6)
				fmt.Printf("  map writes per resync: %d   (goal: reconcile ≤ %v CPU, 0 writes when nothing changed: %s)\n",
					writes/runs, resyncGoal, verdict)
				b.ReportMetric(float64(per(dec.cpu).Microseconds())/1e3, "ms-cpu-decode")
				b.ReportMetric(float64(per(rec.cpu).Microseconds())/1e3, "ms-cpu-reconcile")
				b.ReportMetric(float64(writes)/float64(runs), "writes/op")
			})
		}
	}
}
