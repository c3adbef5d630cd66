package lapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
	csbouncer "github.com/crowdsecurity/go-cs-bouncer"
	"github.com/crowdsecurity/go-cs-lib/version"
)

// ErrUsageMetricsUnsupported is returned by SendUsageMetrics when LAPI has
// no usage metrics endpoint (CrowdSec before 1.6 answers 404).
var ErrUsageMetricsUnsupported = errors.New("LAPI does not accept usage metrics")

// MetricsUpdater fills a usage report with the component's own metrics for
// the last interval. It is go-cs-bouncer's type, so an updater written for
// its MetricsProvider works here.
type MetricsUpdater = csbouncer.MetricsUpdater

// UsageMetrics configures RunUsageMetrics.
type UsageMetrics struct {
	// Type is the remediation component type, "xdpgate" for example.
	Type string
	// Version is the component's version.
	Version string
	// Interval is the time between two reports (go-cs-bouncer sends one
	// every 15 min). Zero disables the reports.
	Interval time.Duration
	// Update adds the component's metrics to each report; may be nil.
	Update MetricsUpdater
}

// SendUsageMetrics posts one usage report (POST /v1/usage-metrics).
func (c *Client) SendUsageMetrics(ctx context.Context, m *models.AllMetrics) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, resp, err := c.api.UsageMetrics.Add(ctx, m)
	if resp != nil && resp.Response != nil && resp.Response.StatusCode == http.StatusNotFound {
		return ErrUsageMetricsUnsupported
	}
	if err != nil {
		return fmt.Errorf("send usage metrics to %s: %w", c.baseURL, err)
	}
	return nil
}

// RunUsageMetrics reports usage metrics to LAPI: a first report at once,
// then one every Interval, until ctx is done. A LAPI without the endpoint
// is not an error: RunUsageMetrics logs it once and returns nil. Other
// failures are logged and the next report is tried as usual.
func (c *Client) RunUsageMetrics(ctx context.Context, u UsageMetrics) error {
	if u.Interval <= 0 {
		return nil
	}
	osName, osFamily, osVersion := version.DetectOS()
	started := time.Now().Unix()
	report := func() *models.AllMetrics {
		now := time.Now()
		m := &models.RemediationComponentsMetrics{
			BaseMetrics: models.BaseMetrics{
				Os:                  &models.OSversion{Name: &osName, Family: osFamily, Version: &osVersion},
				Version:             &u.Version,
				FeatureFlags:        []string{},
				Metrics:             []*models.DetailedMetrics{},
				UtcStartupTimestamp: &started,
			},
			Type: u.Type,
		}
		if last := c.LastSuccess(); !last.IsZero() {
			m.LastPull = last.Unix()
		}
		if u.Update != nil {
			u.Update(m, u.Interval)
		}
		for _, dm := range m.Metrics {
			if dm.Meta == nil {
				ts, win := now.Unix(), int64(u.Interval.Seconds())
				dm.Meta = &models.MetricsMeta{UtcNowTimestamp: &ts, WindowSizeSeconds: &win}
			}
		}
		return &models.AllMetrics{RemediationComponents: []*models.RemediationComponentsMetrics{m}}
	}

	ticker := time.NewTicker(u.Interval)
	defer ticker.Stop()
	for {
		err := c.SendUsageMetrics(ctx, report())
		switch {
		case errors.Is(err, ErrUsageMetricsUnsupported):
			c.usageOnce.Do(func() {
				c.log.Info("LAPI has no usage metrics endpoint (CrowdSec older than 1.6): not sending usage metrics")
			})
			return nil
		case err != nil && ctx.Err() == nil:
			c.log.Warn("usage metrics not sent", "err", err)
		case err == nil:
			c.log.Debug("usage metrics sent")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}
