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
	banned := false
	for _, e := range m.bans {
		if e.Prefix.Contains(src) && (e.Expiry.IsZero() || e.Expiry.After(now)) {
			banned = true
			break
		}
	}
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
