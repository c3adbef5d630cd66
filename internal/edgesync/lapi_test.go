package edgesync

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/cffake"
	"github.com/xdpgate/xdpgate/internal/configfile"
	"github.com/xdpgate/xdpgate/internal/lapi"
	"github.com/xdpgate/xdpgate/internal/lapitest"
)

// seedLAPI puts decisions of every origin and several types into l.
func seedLAPI(t *testing.T, l *lapitest.LAPI) {
	t.Helper()
	l.AddDecision(t, "--ip", "192.0.2.1", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "192.0.2.2", "--type", "captcha", "--duration", "4h")
	l.AddDecision(t, "--ip", "192.0.2.3", "--type", "throttle", "--duration", "4h")
	l.AddDecision(t, "--range", "198.51.100.0/24", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--range", "10.0.0.0/7", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "2001:db8:1:2::1", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "2001:db8:1:2::ff", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "::ffff:192.0.2.9", "--type", "ban", "--duration", "4h")
	l.Import(t, []lapitest.ImportRow{{Value: "203.0.113.1"}, {Value: "203.0.113.2", Type: "captcha"}})
	l.PostAlert(t,
		lapitest.Alert{Origin: "crowdsec", Value: "192.0.2.50", Scenario: "crowdsecurity/http-probing"},
		lapitest.Alert{Origin: "CAPI", Value: "203.0.113.100", Scenario: "crowdsecurity/ssh-bf"},
		lapitest.Alert{Origin: "CAPI", Scope: "Range", Value: "203.0.113.128/25", Scenario: "crowdsecurity/http-bad-user-agent"},
		lapitest.Alert{Origin: "lists", Value: "203.0.113.200", Scenario: "firehol_level1"},
	)
}

func lapiConfig(l *lapitest.LAPI, key string, origins ...string) lapi.Config {
	cfg := Defaults()
	cfg.APIURL = l.URL()
	cfg.APIKey = configfile.Secret(key)
	if len(origins) > 0 {
		cfg.Origins = origins
	}
	return cfg.LAPIConfig("edgesync-test")
}

// TestLAPIOriginsAsCrowdSecSetsThem checks where each origin comes from
// on the CrowdSec of this machine (1.4.6).
func TestLAPIOriginsAsCrowdSecSetsThem(t *testing.T) {
	l := lapitest.Start(t)
	seedLAPI(t, l)
	key := l.AddBouncer(t, "edgesync-origins")
	all, err := lapi.New(lapiConfig(l, key, "crowdsec", "cscli", "console", "cscli-import", "CAPI", "lists"))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := all.FullPull(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	origin := map[string]string{}
	for _, d := range ds {
		origin[*d.Value] = *d.Origin
	}
	for value, want := range map[string]string{
		"192.0.2.1":        "cscli",
		"198.51.100.0/24":  "cscli",
		"203.0.113.1":      "cscli-import",
		"192.0.2.50":       "crowdsec",
		"203.0.113.100":    "CAPI",
		"203.0.113.128/25": "CAPI",
		"203.0.113.200":    "lists",
	} {
		if origin[value] != want {
			t.Errorf("%s: origin %q, want %q (all: %v)", value, origin[value], want, origin)
		}
	}

	// The LAPI filters origins itself.
	local, err := lapi.New(lapiConfig(l, l.AddBouncer(t, "edgesync-local")))
	if err != nil {
		t.Fatal(err)
	}
	ds, err = local.FullPull(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if o := *d.Origin; o != "crowdsec" && o != "cscli" && o != "console" {
			t.Errorf("LAPI sent %s of origin %s despite the filter", *d.Value, o)
		}
	}
}

func TestOnceAgainstRealLAPI(t *testing.T) {
	l := lapitest.Start(t)
	seedLAPI(t, l)

	for _, tc := range []struct {
		name    string
		origins []string
		types   []string
		want    []string
		skipped []string
	}{
		{
			name:    "defaults: local origins, ban and captcha",
			want:    []string{"192.0.2.1", "192.0.2.2", "192.0.2.50", "192.0.2.9", "198.51.100.0/24", "2001:db8:1:2::/64"},
			skipped: []string{"skipped_unsupported_type=1", "skipped_too_broad=1", "widened=2", "merged=1"},
		},
		{
			name:    "every origin, ban only",
			origins: []string{"crowdsec", "cscli", "console", "cscli-import", "CAPI", "lists"},
			types:   []string{"ban"},
			want: []string{"192.0.2.1", "192.0.2.50", "192.0.2.9", "198.51.100.0/24", "2001:db8:1:2::/64",
				"203.0.113.1", "203.0.113.100", "203.0.113.128/25", "203.0.113.200"},
			skipped: []string{"skipped_unsupported_type=3", "skipped_too_broad=1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Defaults()
			if tc.origins != nil {
				cfg.Origins = tc.origins
			}
			if tc.types != nil {
				cfg.SupportedDecisionsTypes = tc.types
			}
			src, err := lapi.New(lapiConfig(l, l.AddBouncer(t, "edgesync-"+strings.ReplaceAll(tc.name[:8], " ", "-")), cfg.Origins...))
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, cffake.Options{})
			r := &Runner{Select: cfg.SelectOptions(), Syncer: e.syncer, Log: e.syncer.Log}
			rep, err := r.Once(context.Background(), src, RunOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := e.listed()
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("list holds %v\nwant       %v", got, want)
			}
			if rep.Added != len(want) {
				t.Errorf("report %+v", rep)
			}
			for _, it := range e.fake.Items("crowdsec_ban") {
				if it.IP == "192.0.2.50" && !strings.HasPrefix(it.Comment, "crowdsec: crowdsecurity/http-probing (until ") {
					t.Errorf("comment %q", it.Comment)
				}
			}
			for _, s := range tc.skipped {
				if !strings.Contains(e.logs.String(), s) {
					t.Errorf("log lacks %s:\n%s", s, e.logs.String())
				}
			}
		})
	}
}

// TestDaemonFollowsRealLAPI adds and deletes decisions while the daemon
// runs and waits for the list to follow.
func TestDaemonFollowsRealLAPI(t *testing.T) {
	l := lapitest.Start(t)
	l.AddDecision(t, "--ip", "192.0.2.1", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "192.0.2.2", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "192.0.2.3", "--type", "ban", "--duration", "4h")
	cfg := lapiConfig(l, l.AddBouncer(t, "edgesync-daemon"))
	cfg.UpdateFrequency = 200 * time.Millisecond
	src, err := lapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, cffake.Options{})
	r := &Runner{Select: defaultSelect(), Syncer: e.syncer, Interval: 100 * time.Millisecond, Log: e.syncer.Log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Daemon(ctx, src, RunOptions{}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}()

	waitFor := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if slices.Equal(e.listed(), want) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("list holds %v, want %v\n%s", e.listed(), want, e.logs.String())
	}
	waitFor("192.0.2.1", "192.0.2.2", "192.0.2.3")
	l.AddDecision(t, "--ip", "192.0.2.4", "--type", "captcha", "--duration", "4h")
	l.DeleteDecisions(t, "--ip", "192.0.2.1")
	waitFor("192.0.2.2", "192.0.2.3", "192.0.2.4")

	// Quiet: once the sync in progress has finished, no requests while
	// nothing changes.
	time.Sleep(300 * time.Millisecond)
	e.fake.ResetCounts()
	time.Sleep(500 * time.Millisecond)
	if w := e.fake.Writes(); w != 0 {
		t.Errorf("%d writes while nothing changed", w)
	}
	if n := e.fake.Requests(); n != 0 {
		t.Errorf("%d requests while nothing changed: %v", n, e.fake.Counts())
	}
}
