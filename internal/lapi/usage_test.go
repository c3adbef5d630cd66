package lapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// TestUsageMetricsPayload checks what a LAPI with the usage metrics
// endpoint (CrowdSec 1.6 and later) would receive. CrowdSec 1.4, the
// LAPI of the other tests, has no such endpoint; this server stands in
// for the endpoint alone.
func TestUsageMetricsPayload(t *testing.T) {
	var mu sync.Mutex
	var got []models.AllMetrics
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/usage-metrics" || r.Header.Get("X-Api-Key") != "k3y" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(r.Body)
		var m models.AllMetrics
		if err := json.Unmarshal(body, &m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()

	c, err := New(Config{URL: srv.URL, APIKey: "k3y"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunUsageMetrics(ctx, UsageMetrics{
			Type: "xdpgate", Version: "v1.2.3", Interval: 50 * time.Millisecond,
			Update: func(m *models.RemediationComponentsMetrics, interval time.Duration) {
				name, unit, v := "dropped", "packet", 42.0
				m.Metrics = append(m.Metrics, &models.DetailedMetrics{
					Items: []*models.MetricsDetailItem{{Name: &name, Unit: &unit, Value: &v, Labels: models.MetricsLabels{"origin": "CAPI"}}},
				})
			},
		})
	}()
	waitFor(t, "two reports", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 2
	})
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("RunUsageMetrics = %v, want context.Canceled", err)
	}

	mu.Lock()
	defer mu.Unlock()
	rc := got[0].RemediationComponents
	if len(rc) != 1 {
		t.Fatalf("report: %+v", got[0])
	}
	m := rc[0]
	if m.Type != "xdpgate" || m.Version == nil || *m.Version != "v1.2.3" || m.Os == nil || m.UtcStartupTimestamp == nil {
		t.Errorf("base metrics: %+v", m)
	}
	if len(m.Metrics) != 1 || m.Metrics[0].Meta == nil || *m.Metrics[0].Meta.WindowSizeSeconds != 0 ||
		*m.Metrics[0].Items[0].Value != 42 || m.Metrics[0].Items[0].Labels["origin"] != "CAPI" {
		t.Errorf("detailed metrics: %+v", m.Metrics)
	}
}
