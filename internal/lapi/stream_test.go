package lapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// TestDecodeStreamSet decodes one startup answer both ways: as the
// *models.Decision list CrowdSec's client returns, and packed into a
// decision.Set through the reused, pointer-free path. Every decision must
// parse to the same result, or be skipped for the same reason.
func TestDecodeStreamSet(t *testing.T) {
	body, err := os.ReadFile("testdata/startup.json")
	if err != nil {
		t.Fatal(err)
	}
	var list []*models.Decision
	if err := decodeStream(strings.NewReader(string(body)), func(d *models.Decision) { list = append(list, d) }, false); err != nil {
		t.Fatal(err)
	}
	var set decision.Set
	if err := decodeStream(strings.NewReader(string(body)), set.Add, true); err != nil {
		t.Fatal(err)
	}
	if len(list) != 16 || set.Len() != len(list) {
		t.Fatalf("decoded %d as a list and %d as a set, want 16", len(list), set.Len())
	}
	now := time.Now()
	opts := decision.ParseOptions{Types: map[string]bool{"ban": true, "captcha": true}, MinPrefixV4: 8, MinPrefixV6: 16}
	i, ok := 0, 0
	for got, gotErr := range set.Decisions(now, opts) {
		want, wantErr := decision.Parse(list[i], now, opts)
		switch {
		case (gotErr == nil) != (wantErr == nil):
			t.Errorf("decision %d: set says %v, list says %v", i, gotErr, wantErr)
		case gotErr != nil:
			var g, w *decision.SkipError
			if !errors.As(gotErr, &g) || !errors.As(wantErr, &w) || g.Reason != w.Reason || g.ID != w.ID {
				t.Errorf("decision %d: set skips with %v, list with %v", i, gotErr, wantErr)
			}
		default:
			ok++
			// Scenario and UUID are not kept by a Set.
			want.Scenario, want.UUID = "", ""
			if got != want {
				t.Errorf("decision %d: set %+v, list %+v", i, got, want)
			}
		}
		i++
	}
	if ok != 5 {
		t.Errorf("%d decisions parsed, want 5 (ids 1, 2, 3, 4 and 15; 14 has no origin)", ok)
	}
}

// TestDecodeStreamBad checks that a broken answer is an error, not a
// partial set taken as complete.
func TestDecodeStreamBad(t *testing.T) {
	for _, body := range []string{
		`{"new": [{"id": 1, "value": "192.0.2.1"`,
		`{"new": {"id": 1}}`,
		`[1, 2]`,
		`{"new": [{"id": "one"}]}`,
	} {
		for _, reuse := range []bool{false, true} {
			var set decision.Set
			add := set.Add
			if err := decodeStream(strings.NewReader(body), add, reuse); err == nil {
				t.Errorf("%s (reuse %v): no error", body, reuse)
			}
		}
	}
	for _, body := range []string{``, `null`, `{}`, `{"new": null, "deleted": null}`} {
		var set decision.Set
		if err := decodeStream(strings.NewReader(body), set.Add, true); err != nil || set.Len() != 0 {
			t.Errorf("%q: %d decisions, %v; want an empty set", body, set.Len(), err)
		}
	}
}

// TestUserAgent checks that both pull paths, the startup pull decoded by
// xdpgate and the delta through CrowdSec's client, send a "name/version"
// user agent, the form LAPI splits into the bouncer's type and version.
func TestUserAgent(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"", "xdpgate/dev"},
		{"xdpgate", "xdpgate/dev"},
		{"xdpgate/v1.2.3", "xdpgate/v1.2.3"},
	} {
		var mu sync.Mutex
		var got []string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			got = append(got, r.URL.Query().Get("startup")+" "+r.UserAgent())
			mu.Unlock()
			_, _ = io.WriteString(w, `{"new": null, "deleted": null}`)
		}))
		c, err := New(Config{URL: srv.URL, APIKey: "k", UserAgent: tc.set})
		if err != nil {
			t.Fatal(err)
		}
		for _, startup := range []bool{true, false} {
			if _, err := c.pull(context.Background(), startup, startup); err != nil {
				t.Fatal(err)
			}
		}
		srv.Close()
		if want := []string{"true " + tc.want, " " + tc.want}; !slices.Equal(got, want) {
			t.Errorf("UserAgent %q: requests %q, want %q", tc.set, got, want)
		}
	}
}
