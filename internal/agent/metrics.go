package agent

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/maps"
)

// metrics holds the agent's Prometheus metrics. The packet counters are
// read from the BPF maps at scrape time, so they are exact and cost the
// data path nothing.
type metrics struct {
	reg *prometheus.Registry

	skipped     *prometheus.CounterVec
	allowlisted prometheus.Counter
	pulls       *prometheus.CounterVec
	lastPull    prometheus.Gauge
	writes      *prometheus.CounterVec
	resyncs     *prometheus.CounterVec
	corrected   prometheus.Counter
	lastResync  prometheus.Gauge
}

func (m *metrics) Skipped(r decision.SkipReason) { m.skipped.WithLabelValues(string(r)).Inc() }
func (m *metrics) Allowlisted()                  { m.allowlisted.Inc() }
func (m *metrics) Applied(backend string, up, del int) {
	m.writes.WithLabelValues(backend, "upsert").Add(float64(up))
	m.writes.WithLabelValues(backend, "delete").Add(float64(del))
}

// PullResult counts one LAPI pull.
func (m *metrics) PullResult(ok bool, at time.Time) {
	if ok {
		m.pulls.WithLabelValues("ok").Inc()
		m.lastPull.Set(float64(at.Unix()))
		return
	}
	m.pulls.WithLabelValues("error").Inc()
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdpgate_decisions_skipped_total",
			Help: "LAPI decisions not enforced, by reason (bad_value, too_broad, unsupported_scope, ...).",
		}, []string{"reason"}),
		allowlisted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpgate_decisions_allowlisted_total",
			Help: "LAPI decisions that fall inside the allowlist: held, but their sources keep passing.",
		}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdpgate_lapi_pulls_total",
			Help: "Pulls from the CrowdSec LAPI decision stream, by result.",
		}, []string{"result"}),
		lastPull: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpgate_lapi_last_success_timestamp_seconds",
			Help: "Unix time of the last successful LAPI pull.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdpgate_backend_writes_total",
			Help: "Entries written to (upsert) or removed from (delete) an enforcement backend.",
		}, []string{"backend", "op"}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdpgate_resyncs_total",
			Help: "Full resyncs against the LAPI's complete decision set, by result.",
		}, []string{"result"}),
		corrected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpgate_resync_corrections_total",
			Help: "Entries a full resync had to write or remove: deltas that were lost.",
		}),
		lastResync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpgate_last_resync_timestamp_seconds",
			Help: "Unix time of the last successful full resync.",
		}),
	}
	for _, r := range decision.SkipReasons() {
		m.skipped.WithLabelValues(string(r))
	}
	m.pulls.WithLabelValues("ok")
	m.pulls.WithLabelValues("error")
	for _, r := range []string{"ok", "error", "held"} {
		m.resyncs.WithLabelValues(r)
	}
	m.reg.MustRegister(m.skipped, m.allowlisted, m.pulls, m.lastPull, m.writes, m.resyncs, m.corrected, m.lastResync,
		&kernelCollector{a: a, log: a.log})
	return m
}

var (
	descPackets = prometheus.NewDesc("xdpgate_packets_total",
		"Packets seen by the XDP program, by verdict (pass, drop, allowlisted, would_drop, not_ip, malformed) and family.",
		[]string{"verdict", "family"}, nil)
	descBytes = prometheus.NewDesc("xdpgate_bytes_total",
		"Bytes seen by the XDP program, by verdict and family.",
		[]string{"verdict", "family"}, nil)
	descDropped = prometheus.NewDesc("xdpgate_dropped_packets_total",
		"Packets dropped (or, in count-only mode, that would have been) by origin of the ban and family.",
		[]string{"origin", "family"}, nil)
	descDroppedBytes = prometheus.NewDesc("xdpgate_dropped_bytes_total",
		"Bytes dropped (or that would have been) by origin of the ban and family.",
		[]string{"origin", "family"}, nil)
	descActive = prometheus.NewDesc("xdpgate_active_bans",
		"Banned prefixes enforced, by origin and family.",
		[]string{"origin", "family"}, nil)
	descMapEntries = prometheus.NewDesc("xdpgate_map_entries",
		"Entries in each BPF ban map.", []string{"map"}, nil)
	descMapCapacity = prometheus.NewDesc("xdpgate_map_capacity",
		"Capacity of each BPF ban map.", []string{"map"}, nil)
	descAttached = prometheus.NewDesc("xdpgate_interface_enforcement",
		"1 for each interface and the way it is enforced (native, generic, nftables).",
		[]string{"interface", "mode"}, nil)
	descNft = prometheus.NewDesc("xdpgate_nftables_dropped_packets_total",
		"Packets dropped by the nftables fallback, by hook and family.",
		[]string{"hook", "family"}, nil)
)

// kernelCollector reads the BPF counters and the engine's state at scrape
// time.
type kernelCollector struct {
	a       *Agent
	log     *slog.Logger
	errOnce sync.Once
}

func (c *kernelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDropped, descDroppedBytes, descActive, descMapEntries, descMapCapacity, descAttached, descNft} {
		ch <- d
	}
}

func (c *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	if x := a.xdpMaps(); x != nil {
		st, err := x.Stats()
		if err != nil {
			c.errOnce.Do(func() { c.log.Warn("read XDP counters", "error", err) })
		} else {
			for _, v := range []struct {
				verdict, family string
				c               maps.Counter
			}{
				{"pass", "ipv4", st.PassV4}, {"pass", "ipv6", st.PassV6},
				{"drop", "ipv4", st.DropV4}, {"drop", "ipv6", st.DropV6},
				{"allowlisted", "ipv4", st.AllowedV4}, {"allowlisted", "ipv6", st.AllowedV6},
				{"would_drop", "ipv4", st.WouldDropV4}, {"would_drop", "ipv6", st.WouldDropV6},
				{"not_ip", "", st.PassNotIP}, {"malformed", "", st.PassMalformed},
			} {
				ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(v.c.Packets), v.verdict, v.family)
				ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(v.c.Bytes), v.verdict, v.family)
			}
			for origin, fams := range st.DropsByOrigin {
				for fam, v := range fams {
					ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(v.Packets), origin, fam)
					ch <- prometheus.MustNewConstMetric(descDroppedBytes, prometheus.CounterValue, float64(v.Bytes), origin, fam)
				}
			}
		}
	}

	// Active bans and map use, from what the engine knows it enforces:
	// counting it needs no walk over the kernel maps.
	type key struct{ origin, family string }
	active := map[key]int{}
	perMap := map[string]int{"bans_v4": 0, "ranges_v4": 0, "bans_v6": 0, "ranges_v6": 0}
	a.engine.Each(func(en decision.Entry) {
		fam := "ipv4"
		if en.Prefix.Addr().Is6() {
			fam = "ipv6"
		}
		active[key{en.Origin, fam}]++
		perMap[mapOf(en.Prefix)]++
	})
	for k, n := range active {
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(n), k.origin, k.family)
	}
	caps := map[string]uint32{"bans_v4": a.cfg.Maps.IPv4Exact, "ranges_v4": a.cfg.Maps.IPv4Ranges, "bans_v6": a.cfg.Maps.IPv6Exact, "ranges_v6": a.cfg.Maps.IPv6Ranges}
	for m, n := range perMap {
		ch <- prometheus.MustNewConstMetric(descMapEntries, prometheus.GaugeValue, float64(n), m)
		ch <- prometheus.MustNewConstMetric(descMapCapacity, prometheus.GaugeValue, float64(caps[m]), m)
	}
	for _, s := range a.interfaceStates() {
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 1, s.Interface, s.Mode)
	}
	if nft := a.nftBackend(); nft != nil {
		if cs, err := nft.Counters(); err == nil {
			for _, v := range cs {
				fam := "ipv4"
				if v.Family == "ip6" {
					fam = "ipv6"
				}
				ch <- prometheus.MustNewConstMetric(descNft, prometheus.CounterValue, float64(v.Packets), v.Hook, fam)
			}
		}
	}
}

// mapOf names the BPF map that holds a prefix.
func mapOf(p netip.Prefix) string {
	switch {
	case p.Addr().Is4() && p.Bits() == 32:
		return "bans_v4"
	case p.Addr().Is4():
		return "ranges_v4"
	case p.Bits() == 128:
		return "bans_v6"
	default:
		return "ranges_v6"
	}
}
