package edgesync

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/cloudflare-go/v7/option"
	"github.com/cloudflare/cloudflare-go/v7/rules"

	"github.com/xdpgate/xdpgate/internal/cffake"
	"github.com/xdpgate/xdpgate/internal/cloudflare"
)

// Bench settings: every API call takes 20 ms, and a bulk operation takes
// 100 ms plus 10 µs per item on Cloudflare's side (1,000 items: 110 ms), so
// the default poll policy (first poll after 250 ms) finds it done.
const (
	benchLatency   = 20 * time.Millisecond
	benchOpRunning = 100 * time.Millisecond
	benchOpPerItem = 10 * time.Microsecond
	benchItems     = 10000
	benchChurn     = 100 // 1%
)

func benchEnv(b *testing.B) *env {
	e := newEnv(b, cffake.Options{OpRunning: benchOpRunning, OpPerItem: benchOpPerItem})
	e.syncer.Poll = cloudflare.PollPolicy{} // production defaults
	return e
}

// printCounts logs the requests per endpoint on one line (benchmark logs
// are cut at 10 lines).
func printCounts(b *testing.B, title string, c map[string]int) int {
	total := 0
	var parts []string
	for _, ep := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, fmt.Sprintf("%s=%d", ep, c[ep]))
		total += c[ep]
	}
	b.Logf("%s: %d requests: %s", title, total, strings.Join(parts, ", "))
	return total
}

// BenchmarkFirstSync10k fills an empty account with 10,000 items.
func BenchmarkFirstSync10k(b *testing.B) {
	desired := many(0, benchItems)
	var counts map[string]int
	var wall time.Duration
	for b.Loop() {
		b.StopTimer()
		e := benchEnv(b)
		e.fake.SetLatency("", benchLatency)
		b.StartTimer()
		start := time.Now()
		rep, err := e.sync(b, desired, RunOptions{})
		wall = time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Added != benchItems {
			b.Fatalf("added %d", rep.Added)
		}
		counts = e.fake.Counts()
	}
	total := printCounts(b, fmt.Sprintf("first sync of %d items, %v per call, wall %v", benchItems, benchLatency, wall.Round(time.Millisecond)), counts)
	b.ReportMetric(float64(total), "requests/sync")
	b.ReportMetric(wall.Seconds(), "wall-s/sync")
}

// BenchmarkSteadySync1pct syncs a 10,000-item list after 1% churn (100
// bans gone, 100 new) and compares it with the goal (at most 6 requests
// plus the pages read, no unchanged item sent again) and with replacing
// the whole list, as the deprecated cs-cloudflare-bouncer did, measured on
// the same fake.
func BenchmarkSteadySync1pct(b *testing.B) {
	e := benchEnv(b)
	setA := many(0, benchItems)
	setB := append(many(benchChurn, benchItems-benchChurn), many(50000, benchChurn)...)
	if _, err := e.sync(b, setA, RunOptions{}); err != nil {
		b.Fatal(err)
	}
	e.fake.SetLatency("", benchLatency)

	var counts map[string]int
	var wall time.Duration
	var sent, removed int
	next := setB
	for b.Loop() {
		e.fake.ResetCounts()
		opsBefore := len(e.fake.Operations())
		start := time.Now()
		rep, err := e.sync(b, next, RunOptions{})
		wall = time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Added != benchChurn || rep.Deleted != benchChurn {
			b.Fatalf("report %+v", rep)
		}
		counts = e.fake.Counts()
		ops := e.fake.Operations()[opsBefore:]
		sent, removed = sentItems(ops, "add"), sentItems(ops, "delete")
		if slices.Equal(ips(next), ips(setA)) {
			next = setB
		} else {
			next = setA
		}
	}
	total := printCounts(b, fmt.Sprintf("steady sync, %d items, %d%% churn, %v per call, wall %v",
		benchItems, benchChurn*100/benchItems, benchLatency, wall.Round(time.Millisecond)), counts)
	pages := counts[cffake.EPListItems]
	goal := 6 + pages
	verdict := "meets"
	if total > goal || sent != benchChurn {
		verdict = "MISSES"
	}
	b.Logf("goal: <= 6 + %d pages = %d requests, no unchanged item re-sent; measured %d requests, %d items sent, %d removed: %s the goal",
		pages, goal, total, sent, removed, verdict)

	// Baseline: replace the whole list (PUT .../items) with the same set.
	e.fake.ResetCounts()
	svc := rules.NewListItemService(option.WithBaseURL(e.fake.URL()), option.WithAPIToken(e.fake.Token()), option.WithMaxRetries(0))
	listID, _ := e.fake.ListID("crowdsec_ban")
	var p rules.ListItemUpdateParams
	set(&p.AccountID.Value, &p.AccountID.Present, e.fake.AccountID())
	for _, d := range next {
		var it rules.ListItemUpdateParamsBodyListsListItemIPComment
		set(&it.IP.Value, &it.IP.Present, ItemIP(d.Prefix))
		set(&it.Comment.Value, &it.Comment.Present, d.Comment())
		p.Body = append(p.Body, it)
	}
	start := time.Now()
	res, err := svc.Update(context.Background(), listID, p)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := cloudflare.WaitOperation(context.Background(), e.client, res.OperationID, cloudflare.PollPolicy{}); err != nil {
		b.Fatal(err)
	}
	baseWall := time.Since(start)
	baseReqs := e.fake.Requests()
	changes := sent + removed
	const runsPer12h = 12 * 60 / 2 // a CronJob every 2 minutes
	b.Logf("baseline whole-list replace: %d requests, wall %v, %d item changes per run",
		baseReqs, baseWall.Round(time.Millisecond), benchItems)
	b.Logf("edgesync vs replace: %.1fx the requests, %.3fx the item changes (%d vs %d); every 2 min for 12 h: %d vs %d item changes (Cloudflare allows 1,000,000)",
		float64(total)/float64(baseReqs), float64(changes)/float64(benchItems), changes, benchItems,
		changes*runsPer12h, benchItems*runsPer12h)
	b.ReportMetric(float64(total), "requests/sync")
	b.ReportMetric(float64(goal), "goal-requests")
	b.ReportMetric(float64(sent), "items-sent/sync")
	b.ReportMetric(wall.Seconds(), "wall-s/sync")
}

// set fills an SDK request field.
func set[T any](value *T, present *bool, v T) { *value, *present = v, true }
