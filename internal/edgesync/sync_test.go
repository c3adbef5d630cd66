package edgesync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/cffake"
	"github.com/xdpgate/xdpgate/internal/cloudflare"
	"github.com/xdpgate/xdpgate/internal/configfile"
	"github.com/xdpgate/xdpgate/internal/lapi"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

type env struct {
	fake   *cffake.Server
	client *cloudflare.SDK
	syncer *Syncer
	logs   *testutil.Log
	mu     sync.Mutex
	waits  []time.Duration
}

// newEnv is a fake Cloudflare with one zone and a syncer driving it
// through the SDK. Retry waits are recorded, not slept.
func newEnv(t testing.TB, opts cffake.Options, hosts ...string) *env {
	t.Helper()
	if opts.Zones == nil {
		opts.Zones = []string{"zone-a"}
	}
	e := &env{fake: cffake.New(t, opts), logs: &testutil.Log{}}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := cloudflare.New(cloudflare.Config{
		AccountID: e.fake.AccountID(), Token: configfile.Secret(e.fake.Token()), BaseURL: e.fake.URL(), Logger: log,
		Retry: cloudflare.RetryPolicy{Sleep: func(ctx context.Context, d time.Duration) error {
			e.mu.Lock()
			e.waits = append(e.waits, d)
			e.mu.Unlock()
			time.Sleep(time.Millisecond)
			return ctx.Err()
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	hosts, err = NormalizeHosts(hosts)
	if err != nil {
		t.Fatal(err)
	}
	var zones []Zone
	for _, z := range opts.Zones {
		zones = append(zones, Zone{ID: z, ExcludeHosts: hosts})
	}
	e.syncer = &Syncer{Client: c, ListName: "crowdsec_ban", Zones: zones, MaxDeleteRatio: 0.5,
		Poll: cloudflare.PollPolicy{First: time.Millisecond, Max: 5 * time.Millisecond}, Log: log}
	return e
}

func (e *env) sync(t testing.TB, desired []Desired, opt RunOptions) (Report, error) {
	t.Helper()
	return e.syncer.Sync(context.Background(), desired, t0, opt)
}

func (e *env) listed() []string {
	var out []string
	for _, it := range e.fake.Items("crowdsec_ban") {
		out = append(out, it.IP)
	}
	slices.Sort(out)
	return out
}

// many returns n desired /32s from 10.0.0.0 up, starting at offset.
func many(offset, n int) []Desired {
	out := make([]Desired, n)
	for i := range n {
		v := offset + i
		a := netip.AddrFrom4([4]byte{10, byte(v >> 16), byte(v >> 8), byte(v)})
		out[i] = Desired{Prefix: netip.PrefixFrom(a, 32), Origin: "crowdsec", Scenario: "crowdsecurity/http-probing", Expiry: t0.Add(4 * time.Hour)}
	}
	return out
}

func ips(ds []Desired) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = ItemIP(d.Prefix)
	}
	slices.Sort(out)
	return out
}

func sentItems(ops []cffake.OperationRecord, kind string) int {
	n := 0
	for _, o := range ops {
		if o.Kind == kind {
			n += o.Items
		}
	}
	return n
}

func TestSyncFirstFillThenSteadyChurn(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	first := many(0, 10000)
	rep, err := e.sync(t, first, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.ListCreated || rep.Added != 10000 || rep.Deleted != 0 || rep.Operations != 10 || len(rep.Rules) != 1 || rep.Rules[0].Action != RuleCreateRuleset {
		t.Fatalf("first sync %+v", rep)
	}
	if got := e.listed(); !slices.Equal(got, ips(first)) {
		t.Fatalf("list holds %d items, want 10000", len(got))
	}
	rs, ok := e.fake.Entrypoint("zone-a", cloudflare.PhaseCustomRules)
	if !ok || len(rs.Rules) != 1 || rs.Rules[0].Expression != "(ip.src in $crowdsec_ban)" || rs.Rules[0].Action != "block" || rs.Rules[0].Ref != "edgesync_crowdsec_ban" {
		t.Fatalf("ruleset %+v", rs)
	}
	if it := e.fake.Items("crowdsec_ban")[0]; it.Comment != "crowdsec: crowdsecurity/http-probing (until 2026-03-01T16:00Z)" {
		t.Errorf("comment %q", it.Comment)
	}

	// Steady state with 1% churn: 100 gone, 100 new.
	e.fake.ResetCounts()
	opsBefore := len(e.fake.Operations())
	second := append(many(100, 9900), many(20000, 100)...)
	rep, err = e.sync(t, second, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Added != 100 || rep.Deleted != 100 || rep.Plan.Keep != 9900 || rep.Rules[0].Action != RuleUnchanged {
		t.Fatalf("churn sync %+v", rep)
	}
	ops := e.fake.Operations()[opsBefore:]
	if len(ops) != 2 || ops[0].Kind != "delete" || ops[1].Kind != "add" || sentItems(ops, "add") != 100 {
		t.Fatalf("operations %+v: unchanged items must not be sent again", ops)
	}
	if got := e.listed(); !slices.Equal(got, ips(second)) {
		t.Fatal("list does not match after churn")
	}
	c := e.fake.Counts()
	if c[cffake.EPReplaceItems] != 0 || c[cffake.EPEditRule] != 0 || c[cffake.EPCreateRule] != 0 {
		t.Errorf("counts %v", c)
	}
	for _, n := range e.fake.SizeHistory("crowdsec_ban") {
		if n == 0 {
			t.Fatal("the list was emptied on the way")
		}
	}

	// Nothing changed: reads only.
	e.fake.ResetCounts()
	if _, err := e.sync(t, second, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if w := e.fake.Writes(); w != 0 {
		t.Errorf("%d writes for an unchanged list", w)
	}
}

func TestSyncCapWithMoreDecisionsThanRoom(t *testing.T) {
	e := newEnv(t, cffake.Options{ItemCap: 10000})
	other := e.fake.CreateList("someone_elses", "ip")
	e.fake.SeedItems(other, []cffake.Item{{IP: "198.51.100.1"}})
	opt := defaultSelect()
	opt.MaxItems = 9999 // the account cap minus the other list
	sel := Select(toDecisions(many(0, 12000)), t0, opt, nil)
	if len(sel.Items) != 9999 || sel.OverCap != 2001 {
		t.Fatalf("selection %d over %d", len(sel.Items), sel.OverCap)
	}
	if _, err := e.sync(t, sel.Items, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := len(e.fake.Items("crowdsec_ban")); n != 9999 {
		t.Fatalf("%d items", n)
	}

	// Without the cap, Cloudflare's account limit fails the operation and
	// the error says so.
	e2 := newEnv(t, cffake.Options{ItemCap: 100})
	_, err := e2.sync(t, many(0, 150), RunOptions{})
	if !errors.Is(err, cloudflare.ErrOperationFailed) || !strings.Contains(err.Error(), "limit of 100") {
		t.Fatalf("over the account cap: %v", err)
	}
}

func TestSyncRuleCarveOutsAndForeignRules(t *testing.T) {
	e := newEnv(t, cffake.Options{Zones: []string{"zone-a", "zone-b"}}, "login.example.com", "auth.example.com")
	foreign := []cffake.Rule{
		{Ref: "allow-bots", Action: "skip", ActionParameters: json.RawMessage(`{"ruleset":"current"}`), Expression: "(cf.client.bot)", Enabled: true, Description: "theirs"},
		{Ref: "challenge-admin", Action: "managed_challenge", Expression: `(http.request.uri.path contains "/admin")`, Enabled: false},
	}
	before := e.fake.SetEntrypoint("zone-b", cloudflare.PhaseCustomRules, foreign)

	rep, err := e.sync(t, many(0, 3), RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rules[0].Action != RuleCreateRuleset || rep.Rules[1].Action != RuleCreate {
		t.Fatalf("rules %+v", rep.Rules)
	}
	wantExpr := `(ip.src in $crowdsec_ban) and not (http.host in {"auth.example.com" "login.example.com"})`
	for _, z := range []string{"zone-a", "zone-b"} {
		rs, _ := e.fake.Entrypoint(z, cloudflare.PhaseCustomRules)
		last := rs.Rules[len(rs.Rules)-1]
		if last.Expression != wantExpr || last.Ref != "edgesync_crowdsec_ban" {
			t.Errorf("%s: %+v", z, last)
		}
	}
	after, _ := e.fake.Entrypoint("zone-b", cloudflare.PhaseCustomRules)
	if len(after.Rules) != 3 || fmt.Sprint(after.Rules[:2]) != fmt.Sprint(before.Rules) {
		t.Fatalf("foreign rules changed:\n%+v\n%+v", before.Rules, after.Rules[:2])
	}

	// The rule is right: no rule writes.
	e.fake.ResetCounts()
	rep, err = e.sync(t, many(0, 3), RunOptions{})
	if err != nil || rep.Rules[0].Action != RuleUnchanged || rep.Rules[1].Action != RuleUnchanged || e.fake.Writes() != 0 {
		t.Fatalf("second run: %+v %v writes=%d", rep.Rules, err, e.fake.Writes())
	}

	// Someone edits the expression by hand: put back, foreign rules kept.
	rs, _ := e.fake.Entrypoint("zone-b", cloudflare.PhaseCustomRules)
	rs.Rules[2].Expression = "(ip.src in $crowdsec_ban)"
	handEdited := e.fake.SetEntrypoint("zone-b", cloudflare.PhaseCustomRules, rs.Rules)
	e.fake.ResetCounts()
	rep, err = e.sync(t, many(0, 3), RunOptions{})
	if err != nil || rep.Rules[1].Action != RuleUpdate || rep.Rules[1].From != "(ip.src in $crowdsec_ban)" {
		t.Fatalf("repair: %+v %v", rep.Rules, err)
	}
	if c := e.fake.Counts(); c[cffake.EPEditRule] != 1 || e.fake.Writes() != 1 {
		t.Errorf("repair writes %v", c)
	}
	final, _ := e.fake.Entrypoint("zone-b", cloudflare.PhaseCustomRules)
	if final.Rules[2].Expression != wantExpr || fmt.Sprint(final.Rules[:2]) != fmt.Sprint(handEdited.Rules[:2]) {
		t.Errorf("after repair %+v", final.Rules)
	}
}

func TestSyncExpressionTooLongWritesNothing(t *testing.T) {
	var hosts []string
	for i := range 200 {
		hosts = append(hosts, fmt.Sprintf("host-%03d.example.com", i))
	}
	e := newEnv(t, cffake.Options{}, hosts...)
	_, err := e.sync(t, many(0, 3), RunOptions{})
	if !errors.Is(err, ErrExpressionTooLong) {
		t.Fatalf("err %v", err)
	}
	if e.fake.Requests() != 0 {
		t.Errorf("%d requests before refusing", e.fake.Requests())
	}
}

func TestSyncDeleteGuard(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	if _, err := e.sync(t, many(0, 100), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	e.fake.ResetCounts()
	for _, tc := range []struct {
		name    string
		desired []Desired
	}{
		{"empty answer", nil},
		{"60 of 100 gone", many(0, 40)},
	} {
		_, err := e.sync(t, tc.desired, RunOptions{})
		if !errors.Is(err, ErrDeleteGuard) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if w := e.fake.Writes(); w != 0 || len(e.listed()) != 100 {
		t.Fatalf("the guard let %d writes through; %d items left", w, len(e.listed()))
	}
	rep, err := e.sync(t, many(0, 40), RunOptions{Force: true})
	if err != nil || rep.Deleted != 60 || len(e.listed()) != 40 {
		t.Fatalf("forced: %+v %v", rep, err)
	}
	// Expired items go without --force.
	exp := many(0, 40)
	for i := range exp {
		exp[i].Expiry = t0.Add(-time.Hour)
	}
	e2 := newEnv(t, cffake.Options{})
	if _, err := e2.syncer.Sync(context.Background(), exp, t0.Add(-2*time.Hour), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.sync(t, nil, RunOptions{}); err != nil || len(e2.listed()) != 0 {
		t.Fatalf("expired items: %v, %d left", err, len(e2.listed()))
	}
}

func TestSyncDryRunWritesNothing(t *testing.T) {
	e := newEnv(t, cffake.Options{}, "auth.example.com")
	rep, err := e.sync(t, many(0, 5), RunOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.DryRun || !rep.ListCreated || len(rep.Plan.Add) != 5 || rep.Rules[0].Action != RuleCreateRuleset || rep.Added != 0 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := e.sync(t, many(0, 5), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	e.fake.ResetCounts()
	rep, err = e.sync(t, many(1, 5), RunOptions{DryRun: true})
	if err != nil || len(rep.Plan.Add) != 1 || len(rep.Plan.Delete) != 1 {
		t.Fatalf("second dry run %+v %v", rep, err)
	}
	if w := e.fake.Writes(); w != 0 {
		t.Fatalf("dry run wrote %d times: %v", w, e.fake.Counts())
	}
	var out bytes.Buffer
	PrintReport(&out, rep, "crowdsec_ban")
	// A dry run that the delete guard would stop says so, and still shows
	// the rules.
	rep2, err := e.sync(t, nil, RunOptions{DryRun: true})
	if !errors.Is(err, ErrDeleteGuard) || len(rep2.Plan.Delete) != 5 || len(rep2.Rules) != 1 || e.fake.Writes() != 0 {
		t.Errorf("guarded dry run: %v %+v", err, rep2)
	}
	for _, s := range []string{"dry run", "+ 10.0.0.5", "- 10.0.0.0", "unchanged"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("printed plan lacks %q:\n%s", s, out.String())
		}
	}
}

func TestSyncRecovers429And5xx(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	if _, err := e.sync(t, many(0, 1200), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPListItems, Status: 503})
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPListItems, Status: 502, HTML: true})
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPDeleteItems, Status: 429, RetryAfter: "3"})
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPAddItems, Status: 500, AfterApply: true})
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPBulkOperation, Drop: true, Times: 2})
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPGetEntrypoint, Status: 429, RetryAfter: "5"})
	want := many(100, 1200)
	rep, err := e.sync(t, want, RunOptions{})
	if err != nil {
		t.Fatalf("sync through faults: %v\n%s", err, e.logs.String())
	}
	if got := e.listed(); !slices.Equal(got, ips(want)) {
		t.Fatalf("list wrong after recovery: %d items", len(got))
	}
	if rep.Deleted != 100 || rep.Added != 100 {
		t.Errorf("report %+v", rep)
	}
	e.mu.Lock()
	waits := fmt.Sprint(e.waits)
	e.mu.Unlock()
	if !strings.Contains(waits, "3s") || !strings.Contains(waits, "5s") {
		t.Errorf("Retry-After not honoured: waits %s", waits)
	}
	if !strings.Contains(e.logs.String(), "retrying") {
		t.Error("retries were not logged")
	}
}

func TestSyncFailedBulkOperation(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	e.fake.FailNextOperation("list item limit exceeded for this account")
	rep, err := e.sync(t, many(0, 10), RunOptions{})
	var opErr *cloudflare.OperationError
	if !errors.As(err, &opErr) || opErr.Message != "list item limit exceeded for this account" {
		t.Fatalf("err %v", err)
	}
	if rep.Added != 0 || rep.Rules[0].Action != RuleCreateRuleset {
		t.Errorf("report %+v (rules are still kept)", rep)
	}
	// The next run converges.
	if _, err := e.sync(t, many(0, 10), RunOptions{}); err != nil || len(e.listed()) != 10 {
		t.Fatalf("next run: %v, %d items", err, len(e.listed()))
	}
}

func TestSyncRejectsForeignKindList(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	e.fake.CreateList("crowdsec_ban", "hostname")
	if _, err := e.sync(t, many(0, 1), RunOptions{}); err == nil || !strings.Contains(err.Error(), "kind") {
		t.Fatalf("err %v", err)
	}
}

// chanStream is a decision stream fed by the test.
type chanStream chan lapi.Batch

func (c chanStream) Run(ctx context.Context, out chan<- lapi.Batch) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b := <-c:
			out <- b
		}
	}
}

func TestDaemonRetriesAndForcesOnce(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	// The daemon runs on the real clock: fill with bans that have not expired.
	fill := many(0, 10)
	for i := range fill {
		fill[i].Expiry = time.Now().Add(4 * time.Hour)
	}
	if _, err := e.syncer.Sync(context.Background(), fill, time.Now(), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	stream := make(chanStream)
	r := &Runner{Select: defaultSelect(), Syncer: e.syncer, Interval: 20 * time.Millisecond, Log: e.syncer.Log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Daemon(ctx, stream, RunOptions{Force: true}) }()

	// A startup answer with 2 of the 10: the guard would stop it, but
	// --force covers the first sync.
	stream <- lapi.Batch{Startup: true, Received: time.Now(), New: []*models.Decision{
		lapiDecision(1, "crowdsec", "Ip", "10.0.0.0", "ban", "4h"),
		lapiDecision(2, "crowdsec", "Ip", "10.0.0.1", "ban", "4h"),
	}}
	waitList(t, e, "10.0.0.0", "10.0.0.1")

	// The next write fails; the sync is tried again at the next tick.
	e.fake.InjectFault(cffake.Fault{Endpoint: cffake.EPAddItems, Status: 400})
	stream <- lapi.Batch{Received: time.Now(), New: []*models.Decision{lapiDecision(3, "cscli", "Ip", "10.0.0.2", "ban", "4h")}}
	waitList(t, e, "10.0.0.0", "10.0.0.1", "10.0.0.2")

	// Force was for the first sync only: wiping the list is refused now.
	stream <- lapi.Batch{Received: time.Now(), Deleted: []*models.Decision{
		lapiDecision(1, "crowdsec", "Ip", "10.0.0.0", "ban", "-1s"),
		lapiDecision(2, "crowdsec", "Ip", "10.0.0.1", "ban", "-1s"),
		lapiDecision(3, "cscli", "Ip", "10.0.0.2", "ban", "-1s"),
	}}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(e.logs.String(), "delete guard") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.logs.String(), "delete guard") || len(e.listed()) != 3 {
		t.Fatalf("guard: %d items left\n%s", len(e.listed()), e.logs.String())
	}
}

func waitList(t *testing.T, e *env, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if slices.Equal(e.listed(), want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("list holds %v, want %v\n%s", e.listed(), want, e.logs.String())
}

type staticSource struct {
	ds  []*models.Decision
	err error
}

func (s staticSource) FullPull(context.Context) ([]*models.Decision, error) { return s.ds, s.err }

func TestOnceLAPIFailureTouchesNothing(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	r := &Runner{Select: defaultSelect(), Syncer: e.syncer, Log: e.syncer.Log}
	_, err := r.Once(context.Background(), staticSource{err: errors.New("connection refused")}, RunOptions{})
	if err == nil || !strings.Contains(err.Error(), "connection refused") || e.fake.Requests() != 0 {
		t.Fatalf("err %v, %d requests", err, e.fake.Requests())
	}
}

func TestOnceDryRunPrintsPlan(t *testing.T) {
	e := newEnv(t, cffake.Options{})
	var out bytes.Buffer
	r := &Runner{Select: defaultSelect(), Syncer: e.syncer, Log: e.syncer.Log, Out: &out, Now: func() time.Time { return t0 }}
	src := staticSource{ds: []*models.Decision{
		lapiDecision(1, "crowdsec", "Ip", "192.0.2.1", "ban", "4h"),
		lapiDecision(2, "CAPI", "Ip", "192.0.2.2", "ban", "4h"),
	}}
	rep, err := r.Once(context.Background(), src, RunOptions{DryRun: true})
	if err != nil || len(rep.Plan.Add) != 1 || e.fake.Writes() != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
	for _, want := range []string{"dry run", "does not exist", "+ 192.0.2.1\tcrowdsec: crowdsecurity/test-crowdsec (until 2026-03-01T16:00Z)", "rule create-ruleset"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, out.String())
		}
	}
}
