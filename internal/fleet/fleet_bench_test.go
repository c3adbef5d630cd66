package fleet

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/configfile"
	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/lapi"
	"github.com/xdpgate/xdpgate/internal/lapitest"
)

var (
	fleetSizes  = flag.String("fleet.n", "10", "comma-separated fleet sizes for BenchmarkFleet (make bench-fleet: 10,50,200)")
	fleetWindow = flag.Duration("fleet.window", 60*time.Second, "how long BenchmarkFleet runs each fleet at the default rates")
	fleetShared = flag.Duration("fleet.shared-resync", 30*time.Second, "resync interval of the shared-key runs, which measure how long a new ban takes to reach every agent")
)

// The agent's defaults, which the load runs use unscaled.
const (
	defaultUpdate = 10 * time.Second
	defaultResync = 5 * time.Minute
	fleetDecision = 100_000
)

// BenchmarkFleet simulates fleets of N agents against one real LAPI
// (CrowdSec 1.4.6) holding 100k decisions, and prints, against N: the
// LAPI's CPU and RSS, the latency of delta and full pulls, and how long a
// new ban takes to reach every agent.
//
// Each simulated agent is the agent's LAPI client: a stream client polling
// every update_frequency and a full pull every resync_interval, jittered
// ±10% and started at a random point of the interval, as a fleet that has
// run for a while. Two kinds of runs:
//
//   - load, at the default rates (10 s, 5 min, not scaled), with one key
//     per agent: the stream clients filter on origin cscli, so that their
//     own startup pull is small (the 100k imported decisions are
//     cscli-import; a delta poll costs LAPI the same either way, the query
//     scans the table), and the resyncs pull the whole 100k set;
//   - propagation with one shared key, the reference DaemonSet's setup,
//     with a short resync interval (-fleet.shared-resync) and filtered,
//     cheap resyncs: a new ban reaches one agent by delta and every other
//     at its next resync.
//
// `make bench-fleet` runs N = 10, 50, 200 (-fleet.n); the default is N = 10
// only.
func BenchmarkFleet(b *testing.B) {
	var sizes []int
	for _, f := range strings.Split(*fleetSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("-fleet.n: %q is not a fleet size", f)
		}
		sizes = append(sizes, n)
	}
	for b.Loop() {
		benchFleet(b, sizes)
	}
}

func benchFleet(b *testing.B, sizes []int) {
	l := lapitest.Start(b)
	rows := make([]lapitest.ImportRow, 0, fleetDecision)
	for i := range fleetDecision {
		rows = append(rows, lapitest.ImportRow{Value: fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&0xff, i&0xff)})
	}
	l.Import(b, rows)
	pid := crowdsecPID(b, l)
	maxN := slices.Max(sizes)
	keys := make([]string, maxN)
	for i := range keys {
		keys[i] = l.AddBouncer(b, fmt.Sprintf("node-%d", i))
	}
	shared := l.AddBouncer(b, "shared")

	// One full pull, alone.
	c, err := lapi.New(lapi.Config{URL: l.URL(), APIKey: configfile.Secret(keys[0])})
	if err != nil {
		b.Fatal(err)
	}
	cpu0, t0 := procCPU(b, pid), time.Now()
	if _, err := c.FullPullSet(context.Background()); err != nil {
		b.Fatal(err)
	}
	fullCPU, fullWall := procCPU(b, pid)-cpu0, time.Since(t0)

	fmt.Printf("\nfleets on one LAPI (CrowdSec 1.4.6, 127.0.0.1, %d decisions), %s\n", fleetDecision, time.Now().Format("2006-01-02"))
	fmt.Printf("one full pull, alone: %v of LAPI CPU, %v\n", fullCPU.Round(10*time.Millisecond), fullWall.Round(10*time.Millisecond))
	fmt.Printf("\nload: update_frequency %v, resync_interval %v ±10%%, one key per agent, %v per run\n", defaultUpdate, defaultResync, *fleetWindow)
	fmt.Printf("%5s %9s %9s %18s %24s %22s\n", "N", "LAPI CPU", "LAPI RSS", "delta p50 / p99", "full pull p50 / p99 (n)", "ban on all N by delta")
	var loads []fleetResult
	for _, n := range sizes {
		waitIdle(b, pid)
		r := runFleet(b, l, pid, fleetRun{n: n, keys: keys[:n], update: defaultUpdate, resync: defaultResync, window: *fleetWindow, markerAt: *fleetWindow / 4})
		loads = append(loads, r)
		fmt.Printf("%5d %8.0f%% %6.0f MB %8v / %7v %10v / %7v (%3d) %22s\n", n, r.cpuShare*100, float64(r.rss)/1e6,
			pct(r.deltas, 50), pct(r.deltas, 99), pct(r.fulls, 50), pct(r.fulls, 99), len(r.fulls), r.allDesc())
		b.ReportMetric(r.cpuShare*100, fmt.Sprintf("%%cpu-lapi-N%d", n))
	}

	fmt.Printf("\npropagation: one shared key, update_frequency %v, resync_interval %v ±10%% (filtered, cheap resyncs)\n", defaultUpdate, *fleetShared)
	fmt.Printf("%5s %9s %20s %22s\n", "N", "LAPI CPU", "by delta", "ban on all N")
	for _, n := range sizes {
		waitIdle(b, pid)
		r := runFleet(b, l, pid, fleetRun{n: n, keys: []string{shared}, update: defaultUpdate, resync: *fleetShared, filteredResync: true,
			markerAt: 5 * time.Second, window: 5*time.Second + *fleetShared*11/10 + 15*time.Second, stopWhenAll: true})
		fmt.Printf("%5d %8.0f%% %20s %22s\n", n, r.cpuShare*100, fmt.Sprintf("%d agent(s)", r.byDelta), r.allDesc())
	}
	_ = loads
}

// fleetRun describes one simulated fleet.
type fleetRun struct {
	n              int
	keys           []string // one per agent, or one shared
	update, resync time.Duration
	filteredResync bool
	window         time.Duration
	markerAt       time.Duration // when the new ban is added
	stopWhenAll    bool          // end as soon as every agent has it
}

type fleetResult struct {
	cpuShare      float64 // LAPI CPU time over wall time
	rss           int64   // the LAPI's largest resident set during the run
	deltas, fulls []time.Duration
	got           []time.Duration // per agent that has the ban: after how long
	byDelta       int
	n             int
}

func (r fleetResult) allDesc() string {
	if len(r.got) < r.n {
		return fmt.Sprintf("%d of %d in the run", len(r.got), r.n)
	}
	return fmt.Sprintf("%v (p50 %v)", slices.Max(r.got).Round(100*time.Millisecond), pct(r.got, 50).Round(100*time.Millisecond))
}

func runFleet(b *testing.B, l *lapitest.LAPI, pid int, run fleetRun) fleetResult {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	marker := netip.MustParseAddr(fmt.Sprintf("10.200.%d.%d", rand.N(250), 1+rand.N(250)))
	res := fleetResult{n: run.n}
	var mu sync.Mutex
	var up atomic.Int32 // stream clients past their first pull
	observe := func(full bool) lapi.Option {
		return lapi.WithPullObserver(func(ev lapi.PullEvent) {
			if ev.Result != lapi.ResultOK {
				return
			}
			if !full && ev.Startup {
				up.Add(1)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case full && ev.Startup:
				res.fulls = append(res.fulls, ev.Duration)
			case !ev.Startup:
				res.deltas = append(res.deltas, ev.Duration)
			}
		})
	}
	var added atomic.Int64 // Unix nanoseconds the marker was added at
	var have atomic.Int32
	var wg sync.WaitGroup
	for i := range run.n {
		key := configfile.Secret(run.keys[i%len(run.keys)])
		stream, err := lapi.New(lapi.Config{URL: l.URL(), APIKey: key, UpdateFrequency: run.update, Origins: []string{"cscli"}},
			observe(false), lapi.WithBackoff(time.Second, 10*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		fullCfg := lapi.Config{URL: l.URL(), APIKey: key}
		if run.filteredResync {
			fullCfg.Origins = []string{"cscli"}
		}
		full, err := lapi.New(fullCfg, observe(true))
		if err != nil {
			b.Fatal(err)
		}
		var got atomic.Bool
		mark := func(byDelta bool) {
			at := added.Load()
			if at == 0 || !got.CompareAndSwap(false, true) {
				return
			}
			have.Add(1)
			mu.Lock()
			res.got = append(res.got, time.Since(time.Unix(0, at)))
			if byDelta {
				res.byDelta++
			}
			mu.Unlock()
		}
		out := make(chan lapi.Batch, 4)
		wg.Add(3)
		go func() { defer wg.Done(); _ = stream.Run(ctx, out) }()
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case bt := <-out:
					if holds(bt.New, marker) {
						mark(!bt.Startup)
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			// A fleet that has run a while: each agent is somewhere in
			// its interval.
			next := time.Duration(rand.Int64N(int64(run.resync)))
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(next):
				}
				set, err := full.FullPullSet(ctx)
				if err == nil && setHolds(set, marker) {
					mark(false)
				}
				next = run.resync - run.resync/10 + time.Duration(rand.Int64N(int64(run.resync/5)+1))
			}
		}()
	}

	var rss atomic.Int64
	go func() {
		for ctx.Err() == nil {
			rss.Store(max(rss.Load(), procRSS(pid)))
			time.Sleep(500 * time.Millisecond)
		}
	}()
	// The fleet starts: every stream client pulls its (filtered) startup
	// set first. The run is measured from when they all have.
	for deadline := time.Now().Add(time.Minute); int(up.Load()) < run.n && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	cpu0, t0 := procCPU(b, pid), time.Now()
	time.Sleep(run.markerAt)
	l.AddDecision(b, "--ip", marker.String(), "--duration", "1h")
	added.Store(time.Now().UnixNano())
	for time.Since(t0) < run.window && !(run.stopWhenAll && int(have.Load()) == run.n) {
		time.Sleep(100 * time.Millisecond)
	}
	res.cpuShare = float64(procCPU(b, pid)-cpu0) / float64(time.Since(t0))
	res.rss = rss.Load()
	cancel()
	wg.Wait()
	l.DeleteDecisions(b, "--ip", marker.String())
	return res
}

func holds(ds []*models.Decision, a netip.Addr) bool {
	for _, d := range ds {
		if d != nil && d.Value != nil && *d.Value == a.String() {
			return true
		}
	}
	return false
}

func setHolds(s *decision.Set, a netip.Addr) bool {
	if s == nil {
		return false
	}
	for d, err := range s.Decisions(time.Now(), decision.ParseOptions{}) {
		if err == nil && d.Prefix.Contains(a) && d.Prefix.Bits() == a.BitLen() {
			return true
		}
	}
	return false
}

// pct returns the p-th percentile of ds.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(time.Millisecond)
}

// crowdsecPID finds the crowdsec process of l by its configuration path.
func crowdsecPID(tb testing.TB, l *lapitest.LAPI) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) == "crowdsec" && strings.Contains(string(cmdline), l.ConfigPath()) {
			pid, _ := strconv.Atoi(e.Name())
			return pid
		}
	}
	tb.Fatalf("no crowdsec process for %s", l.ConfigPath())
	return 0
}

// procCPU returns the CPU time, user and system, of a process.
func procCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// The fields after the command name, which may hold spaces; utime
	// and stime are fields 14 and 15 of the line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(utime+stime) * time.Second / clkTck
}

// procRSS returns a process's resident set in bytes, 0 if unknown.
func procRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// waitIdle waits until the LAPI has finished the work of the previous
// run (requests cancelled by their client are still answered).
func waitIdle(tb testing.TB, pid int) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		c0 := procCPU(tb, pid)
		time.Sleep(time.Second)
		if procCPU(tb, pid)-c0 < 100*time.Millisecond {
			return
		}
	}
}
