package decision

import (
	"net/netip"
	"strings"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// The normalised scopes of a Decision.
const (
	ScopeIP    = "ip"
	ScopeRange = "range"
)

// Decision is one LAPI decision, validated and reduced to what enforcement
// needs.
type Decision struct {
	ID       int64
	UUID     string
	Origin   string
	Scenario string
	// Scope is ScopeIP or ScopeRange, whatever the case LAPI used.
	Scope string
	// Type is lower-case: "ban", "captcha", ...
	Type string
	// Value is the value as LAPI sent it.
	Value string
	// Prefix is masked, and IPv4-mapped IPv6 values (::ffff:a.b.c.d, and
	// ranges inside ::ffff:0:0/96) are unmapped to IPv4.
	Prefix netip.Prefix
	// Expiry is the time the decision runs out; the zero time means never.
	// Parse sets it from the duration; ParseDeleted leaves it zero.
	Expiry time.Time
}

// ParseOptions says which decisions are accepted.
type ParseOptions struct {
	// Types holds the accepted decision types, lower-case. Empty accepts
	// every type.
	Types map[string]bool
	// MinPrefixV4 and MinPrefixV6 are the shortest prefix lengths
	// accepted: a /8 with MinPrefixV4 16 is too broad. Zero accepts all.
	MinPrefixV4, MinPrefixV6 int
	// DisableIPv6 skips every IPv6 value.
	DisableIPv6 bool
}

// Parse validates a new decision (from the "new" list of the stream) and
// computes its expiry from its duration, counted from now.
//
// The error, when not nil, is a *SkipError.
func Parse(d *models.Decision, now time.Time, opt ParseOptions) (Decision, error) {
	out, err := parse(d, opt, true)
	if err != nil {
		return Decision{}, err
	}
	dur, perr := time.ParseDuration(*d.Duration)
	if perr != nil {
		return Decision{}, &SkipError{Reason: ReasonBadDuration, ID: out.ID, Value: out.Value, Err: perr}
	}
	if dur <= 0 {
		return Decision{}, skip(ReasonBadDuration, out.ID, out.Value, "duration %s has already run out", *d.Duration)
	}
	out.Expiry = now.Add(dur)
	return out, nil
}

// ParseDeleted validates a decision from the "deleted" list of the stream.
// LAPI sends those with negative or meaningless durations, so the duration
// is not read and Expiry is zero; only the ID matters to Store.Delete, the
// rest is for logs and metrics.
//
// The error, when not nil, is a *SkipError: the decision would have been
// skipped when added, so there is nothing to remove.
func ParseDeleted(d *models.Decision, opt ParseOptions) (Decision, error) {
	return parse(d, opt, false)
}

func parse(d *models.Decision, opt ParseOptions, isNew bool) (Decision, error) {
	if d == nil {
		return Decision{}, skip(ReasonMissingField, 0, "", "decision is nil")
	}
	var out Decision
	out.ID = d.ID
	out.UUID = d.UUID
	if d.Value != nil {
		out.Value = *d.Value
	}
	switch {
	case d.Value == nil:
		return Decision{}, skip(ReasonMissingField, d.ID, "", "value is missing")
	case d.Scope == nil:
		return Decision{}, skip(ReasonMissingField, d.ID, out.Value, "scope is missing")
	case d.Type == nil:
		return Decision{}, skip(ReasonMissingField, d.ID, out.Value, "type is missing")
	case isNew && d.Origin == nil:
		return Decision{}, skip(ReasonMissingField, d.ID, out.Value, "origin is missing")
	case isNew && d.Duration == nil:
		return Decision{}, skip(ReasonMissingField, d.ID, out.Value, "duration is missing")
	}
	if d.Origin != nil {
		out.Origin = *d.Origin
	}
	if d.Scenario != nil {
		out.Scenario = *d.Scenario
	}

	out.Type = strings.ToLower(*d.Type) // no allocation when already lower-case
	if out.Type == "" || (len(opt.Types) > 0 && !opt.Types[out.Type]) {
		return Decision{}, skip(ReasonUnsupportedType, d.ID, out.Value, "type %q is not enforced", *d.Type)
	}

	scope := *d.Scope
	switch {
	case strings.EqualFold(scope, ScopeIP):
		out.Scope = ScopeIP
	case strings.EqualFold(scope, ScopeRange):
		out.Scope = ScopeRange
	default:
		return Decision{}, skip(ReasonUnsupportedScope, d.ID, out.Value, "scope %q is neither Ip nor Range", scope)
	}

	p, serr := parseValue(out.Value)
	if serr != nil {
		serr.ID = d.ID
		serr.Value = out.Value
		return Decision{}, serr
	}
	if p.Addr().Is6() && opt.DisableIPv6 {
		return Decision{}, skip(ReasonIPv6Disabled, d.ID, out.Value, "IPv6 is disabled")
	}
	minBits := opt.MinPrefixV4
	if p.Addr().Is6() {
		minBits = opt.MinPrefixV6
	}
	if p.Bits() < minBits {
		return Decision{}, skip(ReasonTooBroad, d.ID, out.Value, "prefix %s is broader than /%d", p, minBits)
	}
	out.Prefix = p
	return out, nil
}

// parseValue turns a value into a masked, unmapped prefix. An Ip value is
// normally an address and a Range value a CIDR, but either form is taken in
// either scope: LAPI matches an Ip decision holding a CIDR as the range it
// is (and `cscli decisions import` in CrowdSec 1.4 stores every imported
// range with scope Ip), and a bare address in a Range is a single-address
// range. Host bits of a range are cleared, not refused.
func parseValue(v string) (netip.Prefix, *SkipError) {
	if v == "" {
		return netip.Prefix{}, skip(ReasonBadValue, 0, v, "value is empty")
	}
	if strings.IndexByte(v, '/') < 0 {
		a, err := netip.ParseAddr(v)
		if err != nil {
			if hasZone(v) {
				return netip.Prefix{}, &SkipError{Reason: ReasonIPv6Zone, Err: err}
			}
			return netip.Prefix{}, &SkipError{Reason: ReasonBadValue, Err: err}
		}
		if a.Zone() != "" {
			return netip.Prefix{}, skip(ReasonIPv6Zone, 0, v, "address %s has an IPv6 zone", v)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		if hasZone(v) {
			return netip.Prefix{}, &SkipError{Reason: ReasonIPv6Zone, Err: err}
		}
		return netip.Prefix{}, &SkipError{Reason: ReasonBadValue, Err: err}
	}
	return unmapPrefix(p).Masked(), nil
}

func hasZone(v string) bool {
	return strings.IndexByte(v, '%') >= 0 && strings.IndexByte(v, ':') >= 0
}

// unmapPrefix turns a prefix inside ::ffff:0:0/96 into its IPv4 form;
// broader IPv6 prefixes stay IPv6.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if !a.Is4In6() || p.Bits() < 96 {
		return p
	}
	return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
}
