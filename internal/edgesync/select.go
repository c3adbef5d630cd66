package edgesync

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// SelectOptions says which decisions become list items.
type SelectOptions struct {
	// Origins are the accepted origins, compared without case.
	Origins []string
	// Types are the accepted decision types (ban, captcha): every one is
	// enforced as block at the edge.
	Types []string
	// IPv6Prefix is the length IPv6 values are widened to.
	IPv6Prefix int
	// MaxItems caps the list.
	MaxItems int
	// OriginPriority ranks origins for the cap: earlier first; origins not
	// named rank after all named ones.
	OriginPriority []string
}

// Smallest prefixes edgesync sends: Cloudflare takes IPv4 CIDRs /8 to /32
// and IPv6 CIDRs /4 to /64 (/12 in older documentation; the stricter bound
// is kept).
const (
	MinPrefixV4 = 8
	MinPrefixV6 = 12
)

// SkipOrigin is the skip reason of a decision whose origin is not accepted.
const SkipOrigin = "origin"

// SkipExpired is the skip reason of a decision that has run out.
const SkipExpired = "expired"

// ParseOptions is what decision.Parse needs of opt.
func (opt SelectOptions) ParseOptions() decision.ParseOptions {
	types := make(map[string]bool, len(opt.Types))
	for _, t := range opt.Types {
		types[strings.ToLower(t)] = true
	}
	return decision.ParseOptions{Types: types, MinPrefixV4: MinPrefixV4, MinPrefixV6: MinPrefixV6}
}

// ParseDecisions validates LAPI decisions, counting the skipped ones by
// reason.
func ParseDecisions(raw []*models.Decision, now time.Time, opt SelectOptions, skipped map[string]int) []decision.Decision {
	po := opt.ParseOptions()
	out := make([]decision.Decision, 0, len(raw))
	for _, r := range raw {
		d, err := decision.Parse(r, now, po)
		if err != nil {
			var se *decision.SkipError
			if errors.As(err, &se) {
				skipped[string(se.Reason)]++
			} else {
				skipped["error"]++
			}
			continue
		}
		out = append(out, d)
	}
	return out
}

// Selection is the outcome of Select.
type Selection struct {
	// Items are the prefixes to list, best ranked first.
	Items []Desired
	// Decisions is the number of decisions considered.
	Decisions int
	// Skipped counts decisions not used, by reason.
	Skipped map[string]int
	// Widened counts IPv6 decisions widened to IPv6Prefix.
	Widened int
	// Merged counts decisions on a prefix another decision already holds.
	Merged int
	// OverCap counts prefixes left out by MaxItems.
	OverCap int
}

type ranked struct {
	Desired
	rank int
	id   int64
}

// Select turns decisions into the list's prefixes: it keeps the accepted
// origins, drops what has run out, widens IPv6 to IPv6Prefix, merges
// decisions on one prefix, and, when there are more prefixes than
// MaxItems, keeps the best ranked: by origin priority, then newest (the
// highest LAPI decision id), then by prefix, so the choice is the same on
// every run. skipped may hold counts from ParseDecisions already.
func Select(ds []decision.Decision, now time.Time, opt SelectOptions, skipped map[string]int) Selection {
	if skipped == nil {
		skipped = map[string]int{}
	}
	sel := Selection{Decisions: len(ds), Skipped: skipped}
	accept := make(map[string]bool, len(opt.Origins))
	for _, o := range opt.Origins {
		accept[strings.ToLower(o)] = true
	}
	rankOf := make(map[string]int, len(opt.OriginPriority))
	for i, o := range opt.OriginPriority {
		if _, dup := rankOf[strings.ToLower(o)]; !dup {
			rankOf[strings.ToLower(o)] = i
		}
	}
	byPrefix := make(map[netip.Prefix]*ranked, len(ds))
	for _, d := range ds {
		origin := strings.ToLower(d.Origin)
		if !accept[origin] {
			sel.Skipped[SkipOrigin]++
			continue
		}
		if !d.Expiry.IsZero() && !d.Expiry.After(now) {
			sel.Skipped[SkipExpired]++
			continue
		}
		p := d.Prefix
		if p.Addr().Is6() && p.Bits() > opt.IPv6Prefix {
			p = netip.PrefixFrom(p.Addr(), opt.IPv6Prefix).Masked()
			sel.Widened++
		}
		rank, ok := rankOf[origin]
		if !ok {
			rank = len(opt.OriginPriority)
		}
		cand := ranked{Desired: Desired{Prefix: p, Origin: d.Origin, Scenario: d.Scenario, Expiry: d.Expiry}, rank: rank, id: d.ID}
		cur, seen := byPrefix[p]
		if !seen {
			byPrefix[p] = &cand
			continue
		}
		sel.Merged++
		expiry := laterExpiry(cur.Expiry, d.Expiry)
		if better(cand, *cur) {
			*cur = cand
		}
		cur.Expiry = expiry
	}
	all := make([]ranked, 0, len(byPrefix))
	for _, r := range byPrefix {
		all = append(all, *r)
	}
	slices.SortFunc(all, func(a, b ranked) int {
		if c := cmp.Compare(a.rank, b.rank); c != 0 {
			return c
		}
		if c := cmp.Compare(b.id, a.id); c != 0 {
			return c
		}
		return decision.ComparePrefix(a.Prefix, b.Prefix)
	})
	if opt.MaxItems > 0 && len(all) > opt.MaxItems {
		sel.OverCap = len(all) - opt.MaxItems
		all = all[:opt.MaxItems]
	}
	sel.Items = make([]Desired, len(all))
	for i, r := range all {
		sel.Items[i] = r.Desired
	}
	return sel
}

// better ranks a before b: better origin, then newer.
func better(a, b ranked) bool {
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	return a.id > b.id
}

// laterExpiry returns the later of two expiries, the zero time (never)
// being the latest.
func laterExpiry(a, b time.Time) time.Time {
	if a.IsZero() || b.IsZero() {
		return time.Time{}
	}
	if b.After(a) {
		return b
	}
	return a
}
