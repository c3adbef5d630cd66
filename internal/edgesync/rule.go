package edgesync

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
)

// ErrExpressionTooLong refuses a rule Cloudflare would refuse.
var ErrExpressionTooLong = errors.New("rule expression too long")

var hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// NormalizeHosts lower-cases, checks, sorts and de-duplicates carve-out
// host names. Wildcards are refused: http.host in {...} matches exactly.
func NormalizeHosts(hosts []string) ([]string, error) {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		h = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
		if len(h) > 253 || !hostRE.MatchString(h) {
			return nil, fmt.Errorf("exclude_hosts: %q is not a host name", h)
		}
		out = append(out, h)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Expression is the rule's filter: sources in the list, minus the
// carve-out hosts. hosts must be normalized.
func Expression(listName string, hosts []string) (string, error) {
	expr := "(ip.src in $" + listName + ")"
	if len(hosts) > 0 {
		quoted := make([]string, len(hosts))
		for i, h := range hosts {
			quoted[i] = strconv.Quote(h)
		}
		expr += " and not (http.host in {" + strings.Join(quoted, " ") + "})"
	}
	if len(expr) > cloudflare.MaxExpressionLen {
		return "", fmt.Errorf("%w: %d characters, Cloudflare takes at most %d; carve out fewer hosts",
			ErrExpressionTooLong, len(expr), cloudflare.MaxExpressionLen)
	}
	return expr, nil
}

// RuleRef is the ref that marks edgesync's rule in a ruleset.
func RuleRef(listName string) string { return "edgesync_" + listName }

// WantRule is the rule edgesync keeps in a zone.
func WantRule(listName string, hosts []string) (cloudflare.Rule, error) {
	expr, err := Expression(listName, hosts)
	if err != nil {
		return cloudflare.Rule{}, err
	}
	return cloudflare.Rule{
		Ref:         RuleRef(listName),
		Action:      "block",
		Expression:  expr,
		Description: "edgesync: block sources banned by CrowdSec (list " + listName + ")",
		Enabled:     true,
	}, nil
}

// sameRule reports whether have already is want, ignoring ids.
func sameRule(have, want cloudflare.Rule) bool {
	return have.Action == want.Action && have.Expression == want.Expression &&
		have.Description == want.Description && have.Enabled == want.Enabled
}

// RuleAction is what a sync does to a zone's rule.
type RuleAction string

// The rule actions.
const (
	RuleUnchanged     RuleAction = "unchanged"
	RuleCreateRuleset RuleAction = "create-ruleset"
	RuleCreate        RuleAction = "create"
	RuleUpdate        RuleAction = "update"
)

// RuleChange is the rule plan of one zone.
type RuleChange struct {
	Zone   string
	Action RuleAction
	// From is the expression replaced (update only).
	From string
	// To is the expression wanted.
	To string
}

// PlanRule decides what to do with a zone's entrypoint ruleset; exists
// tells whether the zone has one.
func PlanRule(zone string, rs cloudflare.Ruleset, exists bool, want cloudflare.Rule) (RuleChange, cloudflare.Rule) {
	ch := RuleChange{Zone: zone, To: want.Expression}
	if !exists {
		ch.Action = RuleCreateRuleset
		return ch, want
	}
	have, ok := rs.RuleByRef(want.Ref)
	switch {
	case !ok:
		ch.Action = RuleCreate
	case sameRule(have, want):
		ch.Action = RuleUnchanged
	default:
		ch.Action, ch.From = RuleUpdate, have.Expression
		want.ID = have.ID
	}
	return ch, want
}
