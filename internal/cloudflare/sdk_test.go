package cloudflare_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/cffake"
	"github.com/xdpgate/xdpgate/internal/cloudflare"
	"github.com/xdpgate/xdpgate/internal/configfile"
)

type sleeps struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) got() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

func newClient(t *testing.T, f *cffake.Server, log *slog.Logger) (*cloudflare.SDK, *sleeps) {
	t.Helper()
	sl := &sleeps{}
	c, err := cloudflare.New(cloudflare.Config{
		AccountID: f.AccountID(),
		Token:     configfile.Secret(f.Token()),
		BaseURL:   f.URL(),
		Retry:     cloudflare.RetryPolicy{Sleep: sl.sleep},
		Logger:    log,
		UserAgent: "edgesync-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, sl
}

func TestListItemsPagesWithCursor(t *testing.T) {
	f := cffake.New(t, cffake.Options{})
	id := f.CreateList("crowdsec_ban", "ip")
	var seed []cffake.Item
	for i := range 1234 {
		seed = append(seed, cffake.Item{IP: fmt.Sprintf("10.1.%d.%d", i/256, i%256), Comment: "c"})
	}
	f.SeedItems(id, seed)
	c, _ := newClient(t, f, nil)
	l, err := c.FindList(context.Background(), "crowdsec_ban")
	if err != nil || l.ID != id || l.NumItems != 1234 || l.Kind != "ip" {
		t.Fatalf("FindList: %+v %v", l, err)
	}
	items, err := c.ListItems(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1234 || items[0].IP != "10.1.0.0" || items[1233].IP != "10.1.4.209" || items[5].ID == "" {
		t.Fatalf("%d items, first %+v", len(items), items[0])
	}
	if n := f.Counts()[cffake.EPListItems]; n != 3 {
		t.Errorf("%d page reads for 1234 items, want 3", n)
	}
	if _, err := c.FindList(context.Background(), "absent"); !errors.Is(err, cloudflare.ErrListNotFound) {
		t.Errorf("absent list: %v", err)
	}
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		faults    []cffake.Fault
		wantErr   error
		wantReqs  int
		checkWait func(t *testing.T, w []time.Duration)
	}{
		{
			name:     "429 waits as Retry-After says",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 429, RetryAfter: "7"}},
			wantReqs: 2,
			checkWait: func(t *testing.T, w []time.Duration) {
				if len(w) != 1 || w[0] != 7*time.Second {
					t.Errorf("waits %v, want [7s]", w)
				}
			},
		},
		{
			name:     "429 with an HTTP date",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 429, RetryAfter: time.Now().Add(30 * time.Second).UTC().Format("Mon, 02 Jan 2006 15:04:05 GMT")}},
			wantReqs: 2,
			checkWait: func(t *testing.T, w []time.Duration) {
				if len(w) != 1 || w[0] < 28*time.Second || w[0] > 30*time.Second {
					t.Errorf("waits %v, want ~30s", w)
				}
			},
		},
		{
			name:     "429 longer than the client waits",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 429, RetryAfter: "3600"}},
			wantErr:  cloudflare.ErrRateLimited,
			wantReqs: 1,
		},
		{
			name:     "5xx backs off exponentially",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 503, Times: 3}},
			wantReqs: 4,
			checkWait: func(t *testing.T, w []time.Duration) {
				if len(w) != 3 || w[0] > 500*time.Millisecond || w[0] < 375*time.Millisecond ||
					w[1] < 750*time.Millisecond || w[2] < 1500*time.Millisecond || w[2] > 2*time.Second {
					t.Errorf("waits %v, want ~0.5s, ~1s, ~2s", w)
				}
			},
		},
		{
			name:     "HTML 502 from a proxy",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 502, HTML: true}},
			wantReqs: 2,
		},
		{
			name:     "network error",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Drop: true, Times: 2}},
			wantReqs: 3, // the transport's own silent retry, then ours
		},
		{
			name:     "gives up after MaxAttempts",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 500, Times: 100}},
			wantReqs: 6,
		},
		{
			name:     "4xx is not retried",
			faults:   []cffake.Fault{{Endpoint: cffake.EPGetLists, Status: 400}},
			wantReqs: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := cffake.New(t, cffake.Options{})
			f.CreateList("crowdsec_ban", "ip")
			for _, fl := range tc.faults {
				f.InjectFault(fl)
			}
			c, sl := newClient(t, f, nil)
			_, err := c.FindList(context.Background(), "crowdsec_ban")
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("err %v, want %v", err, tc.wantErr)
				}
			case tc.name == "gives up after MaxAttempts" || tc.name == "4xx is not retried":
				var apiErr *cloudflare.APIError
				if !errors.As(err, &apiErr) {
					t.Errorf("err %v, want an APIError", err)
				}
			case err != nil:
				t.Errorf("unexpected error: %v", err)
			}
			if got := f.Counts()[cffake.EPGetLists]; got != tc.wantReqs {
				t.Errorf("%d requests, want %d", got, tc.wantReqs)
			}
			if tc.checkWait != nil {
				tc.checkWait(t, sl.got())
			}
		})
	}
}

// A write whose answer is lost is retried; the retry meets the first
// attempt's operation still running (429), waits it out, and the list ends
// with the item once.
func TestWriteRetryAfterLostAnswer(t *testing.T) {
	f := cffake.New(t, cffake.Options{OpRunning: 50 * time.Millisecond, BusyRetryAfter: "0.06"})
	id := f.CreateList("l", "ip")
	f.InjectFault(cffake.Fault{Endpoint: cffake.EPAddItems, Status: 500, AfterApply: true})
	c, err := cloudflare.New(cloudflare.Config{AccountID: f.AccountID(), Token: configfile.Secret(f.Token()), BaseURL: f.URL(),
		Retry: cloudflare.RetryPolicy{MinBackoff: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	op, err := c.AddItems(ctx, id, []cloudflare.NewItem{{IP: "192.0.2.1", Comment: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cloudflare.WaitOperation(ctx, c, op, cloudflare.PollPolicy{First: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if items := f.Items("l"); len(items) != 1 {
		t.Fatalf("items %+v", items)
	}
	if n := f.Counts()[cffake.EPAddItems]; n < 3 {
		t.Errorf("%d add requests, want the lost one, at least one 429, and the accepted one", n)
	}
}

func TestWaitOperation(t *testing.T) {
	f := cffake.New(t, cffake.Options{OpPending: 20 * time.Millisecond, OpRunning: 20 * time.Millisecond})
	id := f.CreateList("l", "ip")
	c, _ := newClient(t, f, nil)
	ctx := context.Background()
	poll := cloudflare.PollPolicy{First: 5 * time.Millisecond, Max: 10 * time.Millisecond}

	op, err := c.AddItems(ctx, id, []cloudflare.NewItem{{IP: "192.0.2.1"}})
	if err != nil {
		t.Fatal(err)
	}
	done, polls, err := cloudflare.WaitOperation(ctx, c, op, poll)
	if err != nil || done.Status != cloudflare.OperationCompleted || polls < 2 {
		t.Fatalf("completed op: %+v polls=%d err=%v", done, polls, err)
	}

	f.FailNextOperation("the list is locked")
	op, err = c.DeleteItems(ctx, id, []string{"whatever"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = cloudflare.WaitOperation(ctx, c, op, poll)
	var opErr *cloudflare.OperationError
	if !errors.Is(err, cloudflare.ErrOperationFailed) || !errors.As(err, &opErr) || opErr.Message != "the list is locked" {
		t.Fatalf("failed op: %v", err)
	}
}

func TestRulesets(t *testing.T) {
	f := cffake.New(t, cffake.Options{Zones: []string{"zone1"}})
	f.CreateList("crowdsec_ban", "ip")
	c, _ := newClient(t, f, nil)
	ctx := context.Background()
	_, err := c.Entrypoint(ctx, "zone1", cloudflare.PhaseCustomRules)
	if !errors.Is(err, cloudflare.ErrNoEntrypoint) {
		t.Fatalf("missing entrypoint: %v", err)
	}
	r := cloudflare.Rule{Ref: "edgesync_crowdsec_ban", Action: "block", Expression: "(ip.src in $crowdsec_ban)", Description: "d", Enabled: true}
	rs, err := c.CreateEntrypoint(ctx, "zone1", cloudflare.PhaseCustomRules, []cloudflare.Rule{r})
	if err != nil {
		t.Fatal(err)
	}
	got, ok := rs.RuleByRef(r.Ref)
	if !ok || got.Expression != r.Expression || got.Action != "block" || !got.Enabled || got.ID == "" {
		t.Fatalf("created %+v", rs)
	}
	got.Expression = `(ip.src in $crowdsec_ban) and not (http.host in {"auth.example.com"})`
	rs, err = c.EditRule(ctx, "zone1", rs.ID, got)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Entrypoint(ctx, "zone1", cloudflare.PhaseCustomRules)
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := again.RuleByRef(r.Ref); x.Expression != got.Expression || again.Version != rs.Version {
		t.Fatalf("after edit %+v", again)
	}
	other := cloudflare.Rule{Ref: "other", Action: "block", Expression: `(http.host eq "x")`, Enabled: false}
	rs, err = c.CreateRule(ctx, "zone1", rs.ID, other)
	if err != nil || len(rs.Rules) != 2 {
		t.Fatalf("create rule: %+v %v", rs, err)
	}
	if _, err := c.CreateRule(ctx, "zone1", rs.ID, cloudflare.Rule{Action: "skip"}); err == nil {
		t.Error("a non-block rule was accepted")
	}
	_, err = c.CreateRule(ctx, "zone1", rs.ID, cloudflare.Rule{Ref: "long", Action: "block", Expression: "(" + strings.Repeat("x", 4100) + ")"})
	var apiErr *cloudflare.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(err.Error(), "4096") {
		t.Errorf("long expression: %v", err)
	}
}

// The token reaches neither logs nor errors, and CLOUDFLARE_* variables do
// not override the configuration.
func TestTokenStaysSecret(t *testing.T) {
	const token = "tok-4f7c2a1e9b-very-secret"
	t.Setenv("CLOUDFLARE_API_TOKEN", "env-token")
	t.Setenv("CLOUDFLARE_BASE_URL", "http://127.0.0.1:1/")
	f := cffake.New(t, cffake.Options{Token: token, Zones: []string{"z"}})
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, _ := newClient(t, f, log)
	ctx := context.Background()
	f.InjectFault(cffake.Fault{Endpoint: cffake.EPGetLists, Status: 503})
	f.InjectFault(cffake.Fault{Endpoint: cffake.EPCreateList, Status: 400})
	var errs []string
	if _, err := c.FindList(ctx, "x"); err != nil {
		errs = append(errs, err.Error())
	}
	if _, err := c.CreateList(ctx, "x", ""); err != nil {
		errs = append(errs, err.Error())
	}
	if _, err := c.Entrypoint(ctx, "z", cloudflare.PhaseCustomRules); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) != 3 || !strings.Contains(logs.String(), "cloudflare request") {
		t.Fatalf("expected three errors and request logs; errs=%q\n%s", errs, logs.String())
	}
	all := logs.String() + strings.Join(errs, "\n")
	if strings.Contains(all, token) || strings.Contains(all, "Bearer") {
		t.Fatalf("the token leaked:\n%s", all)
	}
	if f.Requests() != 4 {
		t.Errorf("%d requests reached the fake, want 4 (the environment must not redirect them)", f.Requests())
	}
	if c.Requests() != 4 {
		t.Errorf("client counted %d requests, want 4", c.Requests())
	}
}

func TestValidateListName(t *testing.T) {
	for name, ok := range map[string]bool{
		"crowdsec_ban": true, "a": true, strings.Repeat("a", 50): true,
		"": false, strings.Repeat("a", 51): false, "CrowdSec": false, "crowdsec-ban": false, "ban list": false,
	} {
		if err := cloudflare.ValidateListName(name); (err == nil) != ok {
			t.Errorf("%q: %v", name, err)
		}
	}
}
