package nftfallback

import (
	"cmp"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file holds the address arithmetic of the backend, free of netlink:
// prefixes as address intervals, the flattening of nested prefixes into
// non-overlapping intervals, and the metadata written in element comments.

// meta is what an entry carries besides its prefix.
type meta struct {
	origin string
	exp    int64 // unix milliseconds; 0 means never
}

// maxOrigin bounds the origin kept per entry, so that the metadata of a few
// nested ranges fits in one element comment.
const maxOrigin = 64

// maxComment is the longest element comment written: the kernel keeps at
// most 256 bytes of element user data, and the comment is stored as a
// type-length-value with a trailing NUL.
const maxComment = 252

func newMeta(origin string, expiry time.Time) meta {
	if len(origin) > maxOrigin {
		cut := maxOrigin
		for cut > 0 && !isRuneStart(origin[cut]) {
			cut--
		}
		origin = origin[:cut]
	}
	return meta{origin: origin, exp: expMs(expiry)}
}

func isRuneStart(b byte) bool { return b&0xc0 != 0x80 }

// expMs is t in unix milliseconds, 0 for the zero time.
func expMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(t.UnixMilli(), 1)
}

// expTime is the inverse of expMs.
func expTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// maxExp is the later of two expiries, "never" (0) being the latest.
func maxExp(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	return max(a, b)
}

func expired(exp, nowMs int64) bool { return exp != 0 && exp <= nowMs }

// lastAddr is the last address a prefix covers.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if p.Bits() < 32 {
			v |= 1<<(32-p.Bits()) - 1
		}
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b := a.As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom16(b)
}

// span is a closed interval of addresses of one family.
type span struct{ lo, hi netip.Addr }

func prefixSpan(p netip.Prefix) span { return span{p.Addr(), lastAddr(p)} }

// frag is one interval of the ranges set: an elementary interval of the
// flattened prefixes, or an interval read back from the kernel.
type frag struct {
	lo, hi  netip.Addr
	exp     int64  // kernel expiry, unix milliseconds; 0 means never
	comment string // metadata of the prefixes that start at lo
}

// netEntry is a range entry.
type netEntry struct {
	p netip.Prefix
	m meta
}

// comparePrefix orders prefixes by first address, then shortest first: for
// prefixes, which nest or are disjoint, that is a pre-order walk of the
// nesting tree, so the prefixes inside a prefix follow it.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// flatten turns prefixes sorted by comparePrefix into sorted,
// non-overlapping intervals. Each interval expires with the last prefix
// covering it, and the interval that starts where a prefix starts carries
// that prefix's metadata in its comment, so that the exact prefixes can be
// read back. Adjacent intervals with the same expiry are merged unless the
// second one carries metadata. overflow counts prefixes whose metadata did
// not fit in the comment: they are enforced, but not listed after a restart.
func flatten(es []netEntry) (out []frag, overflow int) {
	if len(es) == 1 { // the common case: a range alone in its region
		s := prefixSpan(es[0].p)
		return []frag{{lo: s.lo, hi: s.hi, exp: es[0].m.exp, comment: encodeAnchor(es[0])}}, 0
	}
	out = make([]frag, 0, 2*len(es))
	type open struct {
		hi  netip.Addr
		exp int64 // latest expiry among this prefix and the ones around it
	}
	var (
		stack   []open
		cur     netip.Addr // first address not yet emitted
		done    bool       // cur went past the last address
		anchors []string
	)
	emit := func(lo, hi netip.Addr, exp int64) {
		var comment string
		if len(anchors) > 0 {
			var b strings.Builder
			for _, a := range anchors {
				if b.Len()+len(a)+1 > maxComment {
					overflow++
					continue
				}
				if b.Len() > 0 {
					b.WriteByte(' ')
				}
				b.WriteString(a)
			}
			comment = b.String()
			anchors = anchors[:0]
		}
		if n := len(out); n > 0 && comment == "" && out[n-1].exp == exp && out[n-1].hi.Next() == lo {
			out[n-1].hi = hi
			return
		}
		out = append(out, frag{lo: lo, hi: hi, exp: exp, comment: comment})
	}
	pop := func() {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !done && cur.Compare(top.hi) <= 0 {
			emit(cur, top.hi, top.exp)
			cur = top.hi.Next()
			done = !cur.IsValid()
		}
	}
	for _, e := range es {
		s := prefixSpan(e.p)
		for len(stack) > 0 && stack[len(stack)-1].hi.Less(s.lo) {
			pop()
		}
		exp := e.m.exp
		if n := len(stack); n > 0 {
			if cur.Less(s.lo) {
				emit(cur, s.lo.Prev(), stack[n-1].exp)
			}
			exp = maxExp(exp, stack[n-1].exp)
		}
		stack = append(stack, open{hi: s.hi, exp: exp})
		cur, done = s.lo, false
		anchors = append(anchors, encodeAnchor(e))
	}
	for len(stack) > 0 {
		pop()
	}
	return out, overflow
}

// escapeOrigin makes an origin one comment token: no space, never empty.
func escapeOrigin(o string) string {
	switch o {
	case "":
		return "-"
	case "-":
		return "%2D"
	}
	return url.PathEscape(o)
}

func unescapeOrigin(s string) (string, bool) {
	if s == "-" {
		return "", true
	}
	o, err := url.PathUnescape(s)
	return o, err == nil
}

// encodeHost is the comment of an element of the hosts set: "origin expiry".
func encodeHost(m meta) string {
	return escapeOrigin(m.origin) + " " + strconv.FormatInt(m.exp, 10)
}

func decodeHost(c string) (meta, bool) {
	o, e, ok := strings.Cut(c, " ")
	if !ok {
		return meta{}, false
	}
	origin, ok1 := unescapeOrigin(o)
	exp, err := strconv.ParseInt(e, 10, 64)
	if !ok1 || err != nil || exp < 0 {
		return meta{}, false
	}
	return meta{origin: origin, exp: exp}, true
}

// encodeAnchor is the metadata of one range: "prefix origin expiry".
func encodeAnchor(e netEntry) string {
	return e.p.String() + " " + encodeHost(e.m)
}

// decodeAnchors parses the comment of an interval of the ranges set.
// Anything unexpected makes it return false: the interval is then treated
// as not written by this backend.
func decodeAnchors(c string) ([]netEntry, bool) {
	f := strings.Fields(c)
	if len(f) == 0 || len(f)%3 != 0 {
		return nil, false
	}
	out := make([]netEntry, 0, len(f)/3)
	for i := 0; i < len(f); i += 3 {
		p, err := netip.ParsePrefix(f[i])
		if err != nil || p != p.Masked() {
			return nil, false
		}
		m, ok := decodeHost(f[i+1] + " " + f[i+2])
		if !ok {
			return nil, false
		}
		out = append(out, netEntry{p: p, m: m})
	}
	return out, true
}

// cover returns the fewest prefixes covering exactly [lo, hi].
func cover(lo, hi netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for {
		bits := lo.BitLen()
		for b := 0; b <= lo.BitLen(); b++ {
			p := netip.PrefixFrom(lo, b)
			if p.Masked().Addr() == lo && lastAddr(p).Compare(hi) <= 0 {
				bits = b
				break
			}
		}
		p := netip.PrefixFrom(lo, bits)
		out = append(out, p)
		last := lastAddr(p)
		if last.Compare(hi) >= 0 {
			return out
		}
		lo = last.Next()
	}
}

// mergeSpans sorts spans and merges the ones that overlap, and with
// touching also the ones that are adjacent.
func mergeSpans(in []span, touching bool) []span {
	s := slices.Clone(in)
	slices.SortFunc(s, func(a, b span) int { return a.lo.Compare(b.lo) })
	var out []span
	for _, x := range s {
		if n := len(out); n > 0 {
			last := &out[n-1]
			joins := x.lo.Compare(last.hi) <= 0
			if touching {
				next := last.hi.Next()
				joins = joins || !next.IsValid() || x.lo == next
			}
			if joins {
				if x.hi.Compare(last.hi) > 0 {
					last.hi = x.hi
				}
				continue
			}
		}
		out = append(out, x)
	}
	return out
}
