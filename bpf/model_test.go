package bpf_test

import (
	"net/netip"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/frame"
)

// verdict is the program's answer in the terms of the reference model.
type verdict int

const (
	vPass verdict = iota
	vDrop
	vAllowed   // banned, allowlisted: passed
	vWouldDrop // count-only: passed
	vNotIP
	vMalformed
)

func (v verdict) String() string {
	return [...]string{"pass", "drop", "allowed", "would-drop", "not-ip", "malformed"}[v]
}

// model is the plain-Go reference for the program: the bans and allowlist
// it holds and the verdict it must give.
type model struct {
	bans      []decision.Entry
	allow     []netip.Prefix
	countOnly bool
}

func (m *model) judge(b []byte, now time.Time) verdict {
	src, kind := frame.Parse(b)
	switch kind {
	case frame.KindMalformed:
		return vMalformed
	case frame.KindNotIP:
		return vNotIP
	}
	banned := m.banned(src, now)
	if !banned {
		return vPass
	}
	for _, p := range m.allow {
		if p.Contains(src) {
			return vAllowed
		}
	}
	if m.countOnly {
		return vWouldDrop
	}
	return vDrop
}

// banned mirrors the program's lookup order exactly: an unexpired exact
// ban, else the longest unexpired range, stepping over at most 8 expired
// matches as the program does.
func (m *model) banned(src netip.Addr, now time.Time) bool {
	live := func(e decision.Entry) bool { return e.Expiry.IsZero() || e.Expiry.After(now) }
	var ranges []decision.Entry
	for _, e := range m.bans {
		if !e.Prefix.Contains(src) {
			continue
		}
		if e.Prefix.Bits() == src.BitLen() {
			if live(e) {
				return true
			}
			continue
		}
		ranges = append(ranges, e)
	}
	limit := src.BitLen()
	for range 8 {
		var best *decision.Entry
		for i := range ranges {
			if b := ranges[i].Prefix.Bits(); b <= limit && (best == nil || b > best.Prefix.Bits()) {
				best = &ranges[i]
			}
		}
		if best == nil {
			return false
		}
		if live(*best) {
			return true
		}
		if best.Prefix.Bits() == 0 {
			return false
		}
		limit = best.Prefix.Bits() - 1
	}
	return false
}
