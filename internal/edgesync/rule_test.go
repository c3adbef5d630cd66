package edgesync

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
)

func TestExpression(t *testing.T) {
	for _, tc := range []struct {
		hosts []string
		want  string
		err   string
	}{
		{want: "(ip.src in $crowdsec_ban)"},
		{hosts: []string{"Auth.Example.com.", "login.example.com", "auth.example.com"},
			want: `(ip.src in $crowdsec_ban) and not (http.host in {"auth.example.com" "login.example.com"})`},
		{hosts: []string{"*.example.com"}, err: "not a host name"},
		{hosts: []string{`evil" or true or "x`}, err: "not a host name"},
		{hosts: []string{""}, err: "not a host name"},
	} {
		hosts, err := NormalizeHosts(tc.hosts)
		if err != nil {
			if tc.err == "" || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: %v", tc.hosts, err)
			}
			continue
		}
		got, err := Expression("crowdsec_ban", hosts)
		if err != nil || got != tc.want {
			t.Errorf("%v: %q %v", tc.hosts, got, err)
		}
	}

	var many []string
	for i := range 200 {
		many = append(many, fmt.Sprintf("host-number-%03d.example.com", i))
	}
	hosts, _ := NormalizeHosts(many)
	if _, err := Expression("crowdsec_ban", hosts); !errors.Is(err, ErrExpressionTooLong) || !strings.Contains(err.Error(), "4096") {
		t.Errorf("long expression: %v", err)
	}
}

func TestPlanRule(t *testing.T) {
	want, _ := WantRule("crowdsec_ban", []string{"auth.example.com"})
	foreign := cloudflare.Rule{ID: "f1", Ref: "foreign", Action: "skip", Expression: "(cf.client.bot)", Enabled: true}
	mine := want
	mine.ID = "m1"
	old := mine
	old.Expression = "(ip.src in $crowdsec_ban)"
	disabled := mine
	disabled.Enabled = false
	for _, tc := range []struct {
		name   string
		rs     cloudflare.Ruleset
		exists bool
		action RuleAction
		id     string
	}{
		{name: "no entrypoint", action: RuleCreateRuleset},
		{name: "only foreign rules", rs: cloudflare.Ruleset{ID: "rs", Rules: []cloudflare.Rule{foreign}}, exists: true, action: RuleCreate},
		{name: "already right", rs: cloudflare.Ruleset{ID: "rs", Rules: []cloudflare.Rule{foreign, mine}}, exists: true, action: RuleUnchanged},
		{name: "expression changed", rs: cloudflare.Ruleset{ID: "rs", Rules: []cloudflare.Rule{old, foreign}}, exists: true, action: RuleUpdate, id: "m1"},
		{name: "disabled by hand", rs: cloudflare.Ruleset{ID: "rs", Rules: []cloudflare.Rule{disabled}}, exists: true, action: RuleUpdate, id: "m1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, r := PlanRule("z", tc.rs, tc.exists, want)
			if ch.Action != tc.action || r.ID != tc.id || r.Ref != "edgesync_crowdsec_ban" || r.Action != "block" || !r.Enabled {
				t.Errorf("%+v %+v", ch, r)
			}
		})
	}
}
