package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/lapitest"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// peakRSS returns a process's peak resident set (VmHWM) in bytes.
func peakRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", pid)
}

var appliedRe = regexp.MustCompile(`decisions applied" startup=true new=(\d+).* took=(\S+) since_received=(\S+)`)

// BenchmarkAgent measures, against a real LAPI holding 100k decisions, the
// time from process start until all are enforced, how long after the LAPI
// answer arrived that was, the agent's peak RSS, and the time from
// `cscli decisions add` to enforcement with update_frequency 1s. It prints
// them against the goals.
func BenchmarkAgent(b *testing.B) {
	testutil.Privileged(b)
	for b.Loop() {
		benchAgentOnce(b)
	}
}

func benchAgentOnce(b *testing.B) {
	h := newHarnessWith(b, time.Second, 0, "")
	rows := make([]lapitest.ImportRow, 0, 100_000)
	for i := 0; i < 100_000; i++ {
		rows = append(rows, lapitest.ImportRow{Value: fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&0xff, i&0xff)})
	}
	h.lapi.Import(b, rows)

	start := time.Now()
	h.start()
	total := time.Since(start)
	m := appliedRe.FindStringSubmatch(h.logText())
	if m == nil {
		b.Fatalf("no startup line in the log:\n%s", h.logText())
	}
	sinceReceived, _ := time.ParseDuration(m[3])
	rss, err := peakRSS(h.pid())
	if err != nil {
		b.Fatal(err)
	}

	// Deltas at update_frequency 1s.
	var lat []time.Duration
	for i := 0; i < 8; i++ {
		addr := fmt.Sprintf("10.99.0.%d", 2+i%3)
		h.lapi.AddDecision(b, "--ip", addr, "--duration", "1h")
		t0 := time.Now()
		for h.check(addr) != maps.VerdictDrop && time.Since(t0) < 10*time.Second {
			time.Sleep(5 * time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
		h.lapi.DeleteDecisions(b, "--ip", addr)
		for h.check(addr) != maps.VerdictPass && time.Since(t0) < 20*time.Second {
			time.Sleep(5 * time.Millisecond)
		}
	}
	worst := time.Duration(0)
	for _, l := range lat {
		worst = max(worst, l)
	}
	mark := func(ok bool) string {
		if ok {
			return "meets goal"
		}
		return "MISSES goal"
	}
	fmt.Printf("\nxdpgate agent, real LAPI (CrowdSec 1.4.6) holding %s decisions (%s)\n", m[1], time.Now().Format("2006-01-02"))
	fmt.Printf("  process start → all enforced:        %v\n", total.Round(time.Millisecond))
	fmt.Printf("  LAPI answer received → all enforced: %v   (goal ≤ 1s: %s)\n", sinceReceived.Round(time.Millisecond), mark(sinceReceived <= time.Second))
	fmt.Printf("  peak RSS:                            %.1f MiB (goal ≤ 60 MB: %s)\n", float64(rss)/(1<<20), mark(rss <= 60_000_000))
	fmt.Printf("  cscli add → enforced, update 1s:     %v, worst %v (goal ≤ 1.1s: %s)\n", lat, worst.Round(time.Millisecond), mark(worst <= 1100*time.Millisecond))
	b.ReportMetric(sinceReceived.Seconds(), "s-enforce-100k")
	b.ReportMetric(float64(rss)/(1<<20), "MiB-peak-rss")
	b.ReportMetric(worst.Seconds(), "s-delta-worst")
}
