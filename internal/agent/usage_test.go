package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/engine"
	"github.com/xdpgate/xdpgate/internal/frame"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

func ptr(s string) *string { return &s }

// TestUsageMetrics fills two usage reports from real maps: active
// decisions per origin and family, and the drops of each report's window
// only.
func TestUsageMetrics(t *testing.T) {
	testutil.Privileged(t)
	dp, err := loader.Load(loader.Options{Sizes: loader.Sizes{V4Exact: 1 << 10, V6Exact: 1 << 10, V4Ranges: 1 << 8, V6Ranges: 1 << 8, Allow: 16}})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer dp.Close()
	x, err := maps.New(&dp.Maps)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	e := engine.New(engine.Options{Logger: log, Parse: decision.ParseOptions{Types: map[string]bool{"ban": true}}}, x)
	ctx := context.Background()
	if err := e.Init(ctx); err != nil {
		t.Fatal(err)
	}
	dec := func(id int64, value, origin string) *models.Decision {
		return &models.Decision{ID: id, Scope: ptr("Ip"), Value: ptr(value), Type: ptr("ban"), Origin: ptr(origin), Duration: ptr("1h"), Scenario: ptr("t")}
	}
	if _, err := e.Startup(ctx, []*models.Decision{dec(1, "192.0.2.1", "cscli"), dec(2, "192.0.2.2", "cscli"), dec(3, "2001:db8::1", "crowdsec")}); err != nil {
		t.Fatal(err)
	}
	a := &Agent{log: log, engine: e, xdp: x}

	send := func(n int) {
		pkt := frame.Build(frame.Spec{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("198.51.100.1"), Payload: 8, Pad: true})
		for range n {
			if ret, err := dp.Program.Run(&ebpf.RunOptions{Data: pkt}); err != nil || ret != 1 /* XDP_DROP */ {
				t.Fatalf("run: %d, %v", ret, err)
			}
		}
	}
	report := func() map[string]float64 {
		var m models.RemediationComponentsMetrics
		a.UsageMetrics(&m, time.Minute)
		out := map[string]float64{}
		for _, dm := range m.Metrics {
			for _, it := range dm.Items {
				out[*it.Name+"/"+*it.Unit+"/"+it.Labels["origin"]+"/"+it.Labels["ip_type"]] += *it.Value
			}
		}
		return out
	}

	send(3)
	got := report()
	want := map[string]float64{
		"active_decisions/ip/cscli/ipv4":    2,
		"active_decisions/ip/crowdsec/ipv6": 1,
		"dropped/packet/cscli/ipv4":         3,
		"dropped/byte/cscli/ipv4":           3 * 60,
	}
	if !equal(got, want) {
		t.Errorf("first report %v, want %v", got, want)
	}
	send(2)
	got = report()
	want["dropped/packet/cscli/ipv4"], want["dropped/byte/cscli/ipv4"] = 2, 2*60
	if !equal(got, want) {
		t.Errorf("second report %v, want %v (the drops of its window only)", got, want)
	}
	got = report()
	delete(want, "dropped/packet/cscli/ipv4")
	delete(want, "dropped/byte/cscli/ipv4")
	if !equal(got, want) {
		t.Errorf("third report %v, want %v (no drops since the second)", got, want)
	}
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
