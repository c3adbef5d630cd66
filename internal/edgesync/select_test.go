package edgesync

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
)

func ptr[T any](v T) *T { return &v }

// lapiDecision is a decision as the LAPI stream sends it.
func lapiDecision(id int64, origin, scope, value, typ, dur string) *models.Decision {
	return &models.Decision{
		ID: id, Origin: ptr(origin), Scope: ptr(scope), Value: ptr(value), Type: ptr(typ),
		Duration: ptr(dur), Scenario: ptr("crowdsecurity/test-" + origin),
	}
}

func defaultSelect() SelectOptions {
	c := Defaults()
	return c.SelectOptions()
}

func selectRaw(t *testing.T, raw []*models.Decision, opt SelectOptions) Selection {
	t.Helper()
	skipped := map[string]int{}
	ds := ParseDecisions(raw, t0, opt, skipped)
	return Select(ds, t0, opt, skipped)
}

func prefixes(ds []Desired) string {
	var s []string
	for _, d := range ds {
		s = append(s, ItemIP(d.Prefix))
	}
	return strings.Join(s, " ")
}

func TestSelectFilters(t *testing.T) {
	raw := []*models.Decision{
		lapiDecision(1, "crowdsec", "Ip", "192.0.2.1", "ban", "4h"),
		lapiDecision(2, "cscli", "Ip", "192.0.2.2", "captcha", "4h"),
		lapiDecision(3, "console", "Range", "198.51.100.0/24", "ban", "4h"),
		lapiDecision(4, "CAPI", "Ip", "203.0.113.1", "ban", "4h"),
		lapiDecision(5, "lists", "Ip", "203.0.113.2", "ban", "4h"),
		lapiDecision(6, "cscli-import", "Ip", "203.0.113.3", "ban", "4h"),
		lapiDecision(7, "crowdsec", "Ip", "192.0.2.7", "throttle", "4h"),
		lapiDecision(8, "crowdsec", "Country", "FR", "ban", "4h"),
		lapiDecision(9, "crowdsec", "Range", "10.0.0.0/7", "ban", "4h"),
		lapiDecision(10, "crowdsec", "Range", "10.0.0.0/8", "ban", "4h"),
		lapiDecision(11, "crowdsec", "Ip", "::ffff:192.0.2.11", "ban", "4h"),
		lapiDecision(12, "crowdsec", "Ip", "not-an-ip", "ban", "4h"),
		lapiDecision(13, "crowdsec", "Ip", "192.0.2.13", "ban", "-1s"),
		lapiDecision(14, "CrowdSec", "Ip", "192.0.2.14", "BAN", "1h"),
	}
	sel := selectRaw(t, raw, defaultSelect())
	got := prefixes(sel.Items)
	// Ranked: crowdsec (newest first), console, cscli.
	if got != "192.0.2.14 192.0.2.11 10.0.0.0/8 192.0.2.1 198.51.100.0/24 192.0.2.2" {
		t.Errorf("items %s", got)
	}
	want := map[string]int{"origin": 3, "unsupported_type": 1, "unsupported_scope": 1, "too_broad": 1, "bad_value": 1, "bad_duration": 1}
	if fmt.Sprint(sel.Skipped) != fmt.Sprint(want) {
		t.Errorf("skipped %v, want %v", sel.Skipped, want)
	}

	opt := defaultSelect()
	opt.Origins = append(opt.Origins, "CAPI", "lists")
	opt.Types = []string{"ban"}
	sel = selectRaw(t, raw, opt)
	if got := prefixes(sel.Items); !strings.Contains(got, "203.0.113.1") || !strings.Contains(got, "203.0.113.2") || strings.Contains(got, "192.0.2.2 ") {
		t.Errorf("with CAPI and lists, ban only: %s (%v)", got, sel.Skipped)
	}
}

func TestSelectIPv6WideningAndMerging(t *testing.T) {
	raw := []*models.Decision{
		lapiDecision(1, "crowdsec", "Ip", "2001:db8:1:2::1", "ban", "1h"),
		lapiDecision(2, "crowdsec", "Ip", "2001:db8:1:2:ffff::9", "ban", "3h"),
		lapiDecision(3, "cscli", "Range", "2001:db8:1:2:8000::/66", "ban", "2h"),
		lapiDecision(4, "crowdsec", "Range", "2001:db8:ff00::/40", "ban", "1h"),
		lapiDecision(5, "crowdsec", "Ip", "2001:db8:1:3::1", "captcha", "1h"),
		lapiDecision(6, "crowdsec", "Range", "2001:db8::/8", "ban", "1h"),
		lapiDecision(7, "crowdsec", "Ip", "192.0.2.1", "ban", "1h"),
		lapiDecision(8, "cscli", "Ip", "192.0.2.1", "ban", "9h"),
	}
	sel := selectRaw(t, raw, defaultSelect())
	if got := prefixes(sel.Items); got != "192.0.2.1 2001:db8:1:3::/64 2001:db8:ff00::/40 2001:db8:1:2::/64" {
		t.Errorf("items %s", got)
	}
	if sel.Widened != 4 || sel.Merged != 3 || sel.Skipped["too_broad"] != 1 {
		t.Errorf("widened %d merged %d skipped %v", sel.Widened, sel.Merged, sel.Skipped)
	}
	for _, d := range sel.Items {
		switch ItemIP(d.Prefix) {
		case "2001:db8:1:2::/64":
			// Best ranked is crowdsec id 2; the expiry is the latest of all three.
			if d.Origin != "crowdsec" || !d.Expiry.Equal(t0.Add(3*time.Hour)) {
				t.Errorf("merged v6: %+v", d)
			}
		case "192.0.2.1":
			if d.Origin != "crowdsec" || d.Scenario != "crowdsecurity/test-crowdsec" || !d.Expiry.Equal(t0.Add(9*time.Hour)) {
				t.Errorf("merged v4: %+v", d)
			}
		}
	}

	opt := defaultSelect()
	opt.IPv6Prefix = 48
	sel = selectRaw(t, raw, opt)
	if got := prefixes(sel.Items); got != "192.0.2.1 2001:db8:1::/48 2001:db8:ff00::/40" {
		t.Errorf("/48: %s", got)
	}
}

func TestSelectCap(t *testing.T) {
	var raw []*models.Decision
	id := int64(0)
	add := func(n int, origin string, base byte) {
		for i := range n {
			id++
			raw = append(raw, lapiDecision(id, origin, "Ip", fmt.Sprintf("10.%d.%d.%d", base, i/256, i%256), "ban", "4h"))
		}
	}
	add(300, "cscli", 1)
	add(500, "crowdsec", 2)
	add(400, "console", 3)
	opt := defaultSelect()
	opt.MaxItems = 1000
	sel := selectRaw(t, raw, opt)
	if len(sel.Items) != 1000 || sel.OverCap != 200 {
		t.Fatalf("%d items, %d over the cap", len(sel.Items), sel.OverCap)
	}
	count := map[string]int{}
	for _, d := range sel.Items {
		count[d.Origin]++
	}
	// crowdsec and console fit whole; cscli, ranked last, keeps its 100 newest.
	if count["crowdsec"] != 500 || count["console"] != 400 || count["cscli"] != 100 {
		t.Fatalf("kept %v", count)
	}
	if last := sel.Items[999]; last.Origin != "cscli" || ItemIP(last.Prefix) != "10.1.0.200" {
		t.Errorf("last kept %+v, want the 100th newest cscli decision", last)
	}
	// Same input, any order: same choice.
	for i, j := 0, len(raw)-1; i < j; i, j = i+1, j-1 {
		raw[i], raw[j] = raw[j], raw[i]
	}
	again := selectRaw(t, raw, opt)
	if prefixes(again.Items) != prefixes(sel.Items) {
		t.Error("the choice depends on input order")
	}
}

func TestSelectDropsExpired(t *testing.T) {
	ds := ParseDecisions([]*models.Decision{lapiDecision(1, "crowdsec", "Ip", "192.0.2.1", "ban", "1m")}, t0, defaultSelect(), map[string]int{})
	sel := Select(ds, t0.Add(2*time.Minute), defaultSelect(), nil)
	if len(sel.Items) != 0 || sel.Skipped[SkipExpired] != 1 {
		t.Errorf("%+v", sel)
	}
}

// toDecisions turns desired items into crowdsec decisions, newest last.
func toDecisions(ds []Desired) []decision.Decision {
	out := make([]decision.Decision, len(ds))
	for i, d := range ds {
		scope := decision.ScopeIP
		if !d.Prefix.IsSingleIP() {
			scope = decision.ScopeRange
		}
		out[i] = decision.Decision{ID: int64(i + 1), Origin: d.Origin, Scenario: d.Scenario, Scope: scope,
			Type: "ban", Value: d.Prefix.String(), Prefix: d.Prefix, Expiry: d.Expiry}
	}
	return out
}
