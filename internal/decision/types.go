// Package decision turns CrowdSec LAPI decisions into what enforcement
// needs: validated prefixes with an origin and an expiry (Parse), packed
// sets of them (Set), and the Entry and Backend types the reconcile core
// (internal/engine) and the enforcement backends share.
package decision

import (
	"cmp"
	"context"
	"net/netip"
	"time"
)

// Entry is one banned prefix as an enforcement backend sees it: the
// effective result of every decision on that prefix.
type Entry struct {
	// Prefix is masked (no host bits set). IPv4-mapped IPv6 values are
	// stored as IPv4.
	Prefix netip.Prefix
	// Origin is the LAPI origin of the decision that expires last
	// ("crowdsec", "cscli", "CAPI", "lists", ...).
	Origin string
	// Expiry is when the last decision on the prefix runs out; the zero
	// time means never.
	Expiry time.Time
}

// Backend enforces a set of entries: the XDP maps, nftables, or both.
// The reconcile core computes differences and calls Apply with them only.
type Backend interface {
	// Name is a short label for logs and metrics ("xdp", "nftables").
	Name() string
	// Apply inserts or updates upserts and removes deletes. It applies as
	// much as it can: on error, what was applied before the error stays.
	Apply(ctx context.Context, upserts []Entry, deletes []netip.Prefix) error
	// List returns every entry the backend enforces now, as read back from
	// the kernel, so that a restarted agent reconciles by difference.
	List(ctx context.Context) ([]Entry, error)
	// SetAllowlist replaces the prefixes that are never dropped.
	SetAllowlist(ctx context.Context, allow []netip.Prefix) error
}

// ComparePrefix orders prefixes: IPv4 before IPv6, then by address, then
// shorter prefixes first. For masked prefixes (all that Decision and Entry
// hold) it agrees with netip.Prefix.Compare, without masking every time.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
