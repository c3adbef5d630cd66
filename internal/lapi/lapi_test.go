package lapi

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/configfile"
	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/lapitest"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// The pull period and backoff of the tests: short, so that the package's
// tests take seconds.
const (
	testFrequency = 200 * time.Millisecond
	waitTimeout   = 15 * time.Second
)

type harness struct {
	t      *testing.T
	c      *Client
	log    *testutil.Log
	out    chan Batch
	runErr chan error
	cancel context.CancelFunc
}

// newClient makes a client for l with key and the test's short periods.
// At the end of the test it checks that the log never held the key.
func newClient(t *testing.T, l *lapitest.LAPI, key string, edit func(*Config), opts ...Option) *harness {
	t.Helper()
	cfg := Config{URL: l.URL(), APIKey: configfile.Secret(key), UpdateFrequency: testFrequency}
	if edit != nil {
		edit(&cfg)
	}
	h := &harness{t: t, log: &testutil.Log{}}
	logger := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts = append([]Option{WithLogger(logger), WithBackoff(50*time.Millisecond, 400*time.Millisecond)}, opts...)
	c, err := New(cfg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.c = c
	t.Cleanup(func() {
		if strings.Contains(h.log.String(), key) {
			t.Errorf("the API key is in the log:\n%s", h.log)
		}
		if t.Failed() {
			t.Logf("client log:\n%s", h.log)
		}
	})
	return h
}

// run starts Run; it is stopped at the end of the test, and must then
// return context.Canceled.
func (h *harness) run() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.out = make(chan Batch)
	h.runErr = make(chan error, 1)
	go func() { h.runErr <- h.c.Run(ctx, h.out) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.runErr:
			if !errors.Is(err, context.Canceled) {
				h.t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(waitTimeout):
			h.t.Error("Run did not return after cancel")
		}
	})
}

func (h *harness) next() Batch {
	h.t.Helper()
	select {
	case b := <-h.out:
		return b
	case err := <-h.runErr:
		h.t.Fatalf("Run returned early: %v", err)
	case <-time.After(waitTimeout):
		h.t.Fatalf("no batch within %v (last error: %v)", waitTimeout, h.c.LastError())
	}
	return Batch{}
}

// noBatch checks that nothing arrives for a few pull periods.
func (h *harness) noBatch() {
	h.t.Helper()
	select {
	case b := <-h.out:
		h.t.Fatalf("unexpected batch: startup=%v new=%v deleted=%v", b.Startup, values(b.New), values(b.Deleted))
	case err := <-h.runErr:
		h.t.Fatalf("Run returned: %v", err)
	case <-time.After(4 * testFrequency):
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func values(ds []*models.Decision) []string {
	var out []string
	for _, d := range ds {
		if d != nil && d.Value != nil {
			out = append(out, *d.Value)
		}
	}
	slices.Sort(out)
	return out
}

func TestStream(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	key := l.AddBouncer(t, "xdpgate")
	l.AddDecision(t, "--ip", "192.0.2.1", "--duration", "4h", "--type", "ban")
	l.AddDecision(t, "--range", "198.51.100.0/24", "--duration", "1h", "--type", "captcha")

	var mu sync.Mutex
	var events []PullEvent
	h := newClient(t, l, key, nil, WithPullObserver(func(ev PullEvent) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}))
	h.run()

	b := h.next()
	if !b.Startup {
		t.Error("first batch is not a startup batch")
	}
	if got, want := values(b.New), []string{"192.0.2.1", "198.51.100.0/24"}; !slices.Equal(got, want) {
		t.Fatalf("startup set %v, want %v", got, want)
	}
	if age := time.Since(b.Received); age < 0 || age > waitTimeout {
		t.Errorf("Received %v is not recent", b.Received)
	}
	// What LAPI sends is what the decision package accepts.
	opt := decision.ParseOptions{Types: map[string]bool{"ban": true, "captcha": true}}
	for _, d := range b.New {
		p, err := decision.Parse(d, b.Received, opt)
		if err != nil {
			t.Fatalf("Parse(%s): %v", *d.Value, err)
		}
		if p.Origin != "cscli" || p.Expiry.Sub(b.Received) > 4*time.Hour || p.Expiry.Sub(b.Received) < 59*time.Minute {
			t.Errorf("parsed %+v", p)
		}
	}

	l.AddDecision(t, "--ip", "2001:db8::7", "--duration", "2h")
	b = h.next()
	if b.Startup || !slices.Equal(values(b.New), []string{"2001:db8::7"}) || len(b.Deleted) != 0 {
		t.Fatalf("delta after add: startup=%v new=%v deleted=%v", b.Startup, values(b.New), values(b.Deleted))
	}

	l.DeleteDecisions(t, "--ip", "192.0.2.1")
	b = h.next()
	if b.Startup || len(b.New) != 0 || !slices.Equal(values(b.Deleted), []string{"192.0.2.1"}) {
		t.Fatalf("delta after delete: startup=%v new=%v deleted=%v", b.Startup, values(b.New), values(b.Deleted))
	}
	for _, d := range b.Deleted {
		if _, err := decision.ParseDeleted(d, opt); err != nil {
			t.Errorf("ParseDeleted(%s, duration %s): %v", *d.Value, *d.Duration, err)
		}
	}

	// LAPI 1.4 repeats a delete in the deltas of the next 2 s (its
	// expired-decisions query looks back 2 s before the last pull); after
	// that, pulls bring nothing and send nothing.
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); {
		select {
		case b := <-h.out:
			if b.Startup || len(b.New) != 0 || !slices.Equal(values(b.Deleted), []string{"192.0.2.1"}) {
				t.Fatalf("unexpected batch: startup=%v new=%v deleted=%v", b.Startup, values(b.New), values(b.Deleted))
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	h.noBatch()

	if err := h.c.LastError(); err != nil {
		t.Errorf("LastError = %v", err)
	}
	if s := h.c.LastSuccess(); time.Since(s) > time.Second {
		t.Errorf("LastSuccess = %v", s)
	}
	p := h.c.Pulls()
	if p.OK < 5 || p.Error != 0 {
		t.Errorf("Pulls = %+v, want 5 ok or more and no error", p)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) < 5 || events[0].Result != ResultOK || !events[0].Startup || events[0].New != 2 || events[1].Startup {
		t.Errorf("pull events: %+v", events[:min(len(events), 3)])
	}
}

func TestFilters(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	key := l.AddBouncer(t, "xdpgate")
	l.AddDecision(t, "--ip", "192.0.2.1", "--reason", "crowdsecurity/ssh-bf")
	l.AddDecision(t, "--range", "198.51.100.0/24", "--reason", "crowdsecurity/http-probing")
	l.AddDecision(t, "--ip", "2001:db8::1", "--type", "captcha", "--reason", "crowdsecurity/ssh-slow-bf")
	l.Import(t, []lapitest.ImportRow{{Value: "203.0.113.5", Reason: "firehol/level1"}}) // origin cscli-import

	tests := []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{"none", func(*Config) {}, []string{"192.0.2.1", "198.51.100.0/24", "2001:db8::1", "203.0.113.5"}},
		{"origin cscli", func(c *Config) { c.Origins = []string{"cscli"} }, []string{"192.0.2.1", "198.51.100.0/24", "2001:db8::1"}},
		{"origin cscli-import", func(c *Config) { c.Origins = []string{"cscli-import"} }, []string{"203.0.113.5"}},
		{"two origins", func(c *Config) { c.Origins = []string{"cscli-import", "CAPI"} }, []string{"203.0.113.5"}},
		{"scope range", func(c *Config) { c.Scopes = []string{"range"} }, []string{"198.51.100.0/24"}},
		{"scope ip", func(c *Config) { c.Scopes = []string{"ip"} }, []string{"192.0.2.1", "2001:db8::1", "203.0.113.5"}},
		{"scenarios containing", func(c *Config) { c.ScenariosContaining = []string{"ssh"} }, []string{"192.0.2.1", "2001:db8::1"}},
		{"scenarios not containing", func(c *Config) { c.ScenariosNotContaining = []string{"ssh"} }, []string{"198.51.100.0/24", "203.0.113.5"}},
		{"origin and scenario", func(c *Config) {
			c.Origins = []string{"cscli"}
			c.ScenariosContaining = []string{"http"}
		}, []string{"198.51.100.0/24"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newClient(t, l, key, tt.edit)
			got, err := h.c.FullPull(context.Background())
			if err != nil {
				t.Fatalf("FullPull: %v", err)
			}
			if !slices.Equal(values(got), tt.want) {
				t.Errorf("FullPull = %v, want %v", values(got), tt.want)
			}
		})
	}

	// Run applies the same filters to its startup pull and its deltas.
	t.Run("stream", func(t *testing.T) {
		h := newClient(t, l, key, func(c *Config) { c.Origins = []string{"cscli"}; c.Scopes = []string{"ip"} })
		h.run()
		if b := h.next(); !slices.Equal(values(b.New), []string{"192.0.2.1", "2001:db8::1"}) {
			t.Fatalf("startup set %v", values(b.New))
		}
		l.Import(t, []lapitest.ImportRow{{Value: "203.0.113.6"}}) // another origin
		l.AddDecision(t, "--range", "192.0.2.128/25")             // another scope
		l.AddDecision(t, "--ip", "192.0.2.2")
		if b := h.next(); !slices.Equal(values(b.New), []string{"192.0.2.2"}) {
			t.Fatalf("delta %v, want only 192.0.2.2", values(b.New))
		}
	})
}

func TestLAPIOutage(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	key := l.AddBouncer(t, "xdpgate")
	l.AddDecision(t, "--ip", "192.0.2.1")
	h := newClient(t, l, key, nil)
	h.run()
	if b := h.next(); !b.Startup || len(b.New) != 1 {
		t.Fatalf("startup batch: %+v", b)
	}

	l.Stop(t)
	before := h.c.Pulls().Error
	waitFor(t, "failed pulls", func() bool { return h.c.Pulls().Error >= before+3 })
	if err := h.c.LastError(); err == nil || errors.Is(err, ErrUnauthorized) {
		t.Errorf("LastError = %v during the outage", err)
	}
	lastOK := h.c.LastSuccess()
	h.noBatch() // an outage sends nothing, least of all an empty startup batch

	l.Start(t)
	l.AddDecision(t, "--ip", "192.0.2.2")
	b := h.next()
	if !b.Startup {
		t.Fatal("first batch after the outage is not a startup batch")
	}
	got := values(b.New)
	if !slices.Contains(got, "192.0.2.2") {
		// The startup pull may have come before the add: then the
		// next delta has it.
		if d := h.next(); d.Startup || !slices.Equal(values(d.New), []string{"192.0.2.2"}) {
			t.Fatalf("after the outage: startup %v, then %v", got, values(d.New))
		}
	}
	if !slices.Contains(got, "192.0.2.1") {
		t.Errorf("startup set after the outage lost 192.0.2.1: %v", got)
	}
	if err := h.c.LastError(); err != nil {
		t.Errorf("LastError = %v after recovery", err)
	}
	if !h.c.LastSuccess().After(lastOK) {
		t.Error("LastSuccess did not move after recovery")
	}
	if !strings.Contains(h.log.String(), "LAPI answers again") {
		t.Errorf("recovery not logged:\n%s", h.log)
	}
}

func TestLAPIDownAtStart(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	key := l.AddBouncer(t, "xdpgate")
	l.AddDecision(t, "--ip", "192.0.2.1")
	l.Stop(t)

	h := newClient(t, l, key, nil)
	h.run()
	waitFor(t, "failed pulls", func() bool { return h.c.Pulls().Error >= 3 })
	if !h.c.LastSuccess().IsZero() {
		t.Error("LastSuccess set without a successful pull")
	}
	h.noBatch()

	l.Start(t)
	if b := h.next(); !b.Startup || !slices.Equal(values(b.New), []string{"192.0.2.1"}) {
		t.Fatalf("first batch: startup=%v new=%v", b.Startup, values(b.New))
	}
}

func TestBadKey(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	l.AddBouncer(t, "xdpgate")
	l.AddDecision(t, "--ip", "192.0.2.1")
	const bad = "0123456789abcdef0123456789abcdef"
	h := newClient(t, l, bad, nil)
	h.run()
	waitFor(t, "retries", func() bool { return h.c.Pulls().Error >= 3 })
	err := h.c.LastError()
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("LastError = %v, want ErrUnauthorized", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "403") || strings.Contains(msg, bad) {
		t.Errorf("error %q: want the HTTP status and not the key", msg)
	}
	h.noBatch()
	if !strings.Contains(h.log.String(), "level=ERROR") {
		t.Errorf("refused credentials not logged as an error:\n%s", h.log)
	}

	_, err = h.c.FullPull(context.Background())
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("FullPull: %v, want ErrUnauthorized", err)
	}
}

func TestResyncAndFullPull(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	key := l.AddBouncer(t, "xdpgate")
	l.AddDecision(t, "--ip", "192.0.2.1")
	h := newClient(t, l, key, func(c *Config) { c.UpdateFrequency = time.Hour })
	h.run()
	if b := h.next(); !b.Startup {
		t.Fatal("no startup batch")
	}

	h.c.Resync()
	if b := h.next(); !b.Startup || !slices.Equal(values(b.New), []string{"192.0.2.1"}) {
		t.Fatalf("after Resync: startup=%v new=%v", b.Startup, values(b.New))
	}

	// A FullPull moves LAPI's cursor for this key: Run must not trust
	// its next delta, and pulls the startup set instead.
	h2 := newClient(t, l, key, func(c *Config) { c.UpdateFrequency = 2 * time.Second })
	h2.run()
	h2.next()
	l.AddDecision(t, "--ip", "192.0.2.2")
	got, err := h2.c.FullPull(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(values(got), []string{"192.0.2.1", "192.0.2.2"}) {
		t.Fatalf("FullPull = %v", values(got))
	}
	b := h2.next()
	if !b.Startup || !slices.Equal(values(b.New), []string{"192.0.2.1", "192.0.2.2"}) {
		t.Fatalf("after FullPull: startup=%v new=%v, want the startup set with 192.0.2.2", b.Startup, values(b.New))
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	h := newClient(t, l, l.AddBouncer(t, "xdpgate"), nil)
	h.run()
	h.next()
	if err := h.c.Run(context.Background(), make(chan Batch)); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Run = %v, want ErrAlreadyRunning", err)
	}
}

func TestUsageMetricsOldLAPI(t *testing.T) {
	t.Parallel()
	l := lapitest.Start(t)
	h := newClient(t, l, l.AddBouncer(t, "xdpgate"), nil)
	err := h.c.SendUsageMetrics(context.Background(), &models.AllMetrics{})
	if !errors.Is(err, ErrUsageMetricsUnsupported) {
		t.Fatalf("SendUsageMetrics = %v, want ErrUsageMetricsUnsupported from CrowdSec 1.4", err)
	}
	u := UsageMetrics{Type: "xdpgate", Version: "test", Interval: 50 * time.Millisecond}
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		err := h.c.RunUsageMetrics(ctx, u)
		cancel()
		if err != nil {
			t.Fatalf("RunUsageMetrics = %v, want nil", err)
		}
	}
	log := h.log.String()
	if n := strings.Count(log, "no usage metrics endpoint"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, log)
	}
	if strings.Contains(log, "level=ERROR") || strings.Contains(log, "level=WARN") {
		t.Errorf("a missing endpoint is not a problem:\n%s", log)
	}
}
