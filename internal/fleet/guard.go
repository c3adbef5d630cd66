// Package fleet holds what keeps many agents on one CrowdSec LAPI correct:
// the guard that stops a complete decision set answered by a lagging LAPI
// replica from unbanning what the rest of the fleet knows is banned. Its
// tests hold a load simulation of a fleet against one real LAPI
// (`make bench-fleet`, docs/fleet.md).
package fleet

import (
	"strings"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// Defaults of ShrinkGuard.
const (
	// DefaultMaxShrink is the share of the enforced entries a complete
	// set may remove without being confirmed by the next one.
	DefaultMaxShrink = 0.10
	// DefaultMinShrink is the number of removals a complete set may
	// always make: small corrections are what a resync is for.
	DefaultMinShrink = 100
)

// ShrinkGuard decides whether a complete decision set from LAPI (a
// periodic resync) may be applied, or must wait for the next one.
//
// Behind a Service in front of several LAPI replicas, a resync may be
// answered by a replica with an older view of the database: a read replica
// that lags, a replica on a database that failed over, or one that just
// started on an empty one. Applied as it is, such a set removes every ban
// the older view lacks, until the next resync puts them back. A set that
// would remove more than MaxShrink of what is enforced (and at least
// MinShrink entries) is therefore held: nothing of it is applied, and the
// agent asks again soon. When the next complete set says the same, it is
// applied: a large removal that is real (`cscli decisions delete --all`, a
// blocklist dropped) takes one confirmation longer. Small removals, the
// lost deltas a resync exists to repair, are applied at once.
//
// The zero ShrinkGuard uses the defaults. It is not safe for concurrent
// use: one agent owns one.
type ShrinkGuard struct {
	// MaxShrink is the share of the enforced entries, from 0 to 1, a
	// complete set may remove at once; DefaultMaxShrink when zero.
	MaxShrink float64
	// MinShrink is the number of removals always allowed;
	// DefaultMinShrink when zero.
	MinShrink int

	held bool
}

// Decision is the guard's answer for one complete set.
type Decision struct {
	// Hold is set when the set must not be applied.
	Hold bool
	// Shrink is how many of the enforced entries the set removes at
	// least: enforced minus the candidates counted by Candidates.
	Shrink int
	// Confirmed is set when the set is applied whole although it shrinks
	// as much as a held one: the previous set was held and said the same.
	Confirmed bool
}

// Check decides for a complete set that holds at most incoming entries
// (Candidates) while enforced entries are enforced now.
func (g *ShrinkGuard) Check(enforced, incoming int) Decision {
	maxShrink, minShrink := g.MaxShrink, g.MinShrink
	if maxShrink <= 0 {
		maxShrink = DefaultMaxShrink
	}
	if minShrink <= 0 {
		minShrink = DefaultMinShrink
	}
	d := Decision{Shrink: max(enforced-incoming, 0)}
	large := d.Shrink >= minShrink && float64(d.Shrink) > maxShrink*float64(enforced)
	switch {
	case large && !g.held:
		d.Hold = true
	case large:
		d.Confirmed = true
	}
	g.held = d.Hold
	return d
}

// Candidates counts the decisions of a complete set that can become an
// entry: those with a value and, when types is not empty, of one of types
// (compared without case). It is an upper bound of the entries the set
// yields (duplicates and decisions the engine skips for other reasons are
// counted), so enforced minus Candidates never overstates a removal, and it
// costs a pass over the set without parsing it.
func Candidates(ds []*models.Decision, types []string) int {
	n := 0
	for _, d := range ds {
		if d == nil || d.Value == nil || d.Type == nil {
			continue
		}
		if len(types) == 0 {
			n++
			continue
		}
		for _, t := range types {
			if strings.EqualFold(*d.Type, t) {
				n++
				break
			}
		}
	}
	return n
}
