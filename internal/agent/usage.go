package agent

import (
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/maps"
)

// usageState is what the last usage report counted, so that each report
// carries the drops of its own window.
type usageState struct {
	dropped map[string]map[string]maps.Counter // origin, family
}

// UsageMetrics fills a LAPI usage report (lapi.RunUsageMetrics) the way
// CrowdSec's own remediation components do, so that `cscli metrics` shows
// xdpgate beside them: "dropped" packets and bytes since the last report
// and "active_decisions" now, per origin and ip_type. The drops are the
// XDP program's per-origin counters; drops by the nftables fallback carry
// no origin and are not reported.
func (a *Agent) UsageMetrics(m *models.RemediationComponentsMetrics, _ time.Duration) {
	var items []*models.MetricsDetailItem
	add := func(name, unit string, v float64, origin, family string) {
		items = append(items, &models.MetricsDetailItem{
			Name: &name, Unit: &unit, Value: &v,
			Labels: models.MetricsLabels{"origin": origin, "ip_type": family},
		})
	}

	type key struct{ origin, family string }
	active := map[key]int{}
	a.engine.Each(func(en decision.Entry) {
		fam := "ipv4"
		if en.Prefix.Addr().Is6() {
			fam = "ipv6"
		}
		active[key{en.Origin, fam}]++
	})
	for k, n := range active {
		add("active_decisions", "ip", float64(n), k.origin, k.family)
	}

	if x := a.xdpMaps(); x != nil {
		st, err := x.Stats()
		if err != nil {
			a.log.Warn("usage metrics: read the XDP counters", "error", err)
		} else {
			a.usageMu.Lock()
			last := a.usage.dropped
			for origin, fams := range st.DropsByOrigin {
				for fam, c := range fams {
					prev := last[origin][fam]
					// A counter that went back (the maps were
					// recreated) counts from zero.
					if c.Packets < prev.Packets || c.Bytes < prev.Bytes {
						prev = maps.Counter{}
					}
					if c.Packets > prev.Packets {
						add("dropped", "packet", float64(c.Packets-prev.Packets), origin, fam)
						add("dropped", "byte", float64(c.Bytes-prev.Bytes), origin, fam)
					}
				}
			}
			a.usage.dropped = st.DropsByOrigin
			a.usageMu.Unlock()
		}
	}
	if len(items) > 0 {
		m.Metrics = append(m.Metrics, &models.DetailedMetrics{Items: items})
	}
}
