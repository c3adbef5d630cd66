package nftfallback

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// baseSlack is how far apart the expiry in an element comment and the
// kernel timer may be before the element is rewritten; the time spent
// reading is added to it.
const baseSlack = 2000 // milliseconds

// load reads every set of every family back and rebuilds the state.
func (b *Backend) load() error {
	for _, f := range b.fams {
		if err := b.loadFamily(f); err != nil {
			b.redial()
			if errors.Is(err, unix.ENOENT) {
				// A table or set vanished: recreate it, and write back
				// what the state held, on the next call.
				b.ready, b.lost = false, b.loaded
				return fmt.Errorf("%w: %w", errTablesGone, err)
			}
			return err
		}
	}
	b.loaded = true
	return nil
}

func (b *Backend) loadFamily(f *family) error {
	t0 := time.Now()
	hosts, err := b.dump.elements(f.hosts)
	if err != nil {
		return fmt.Errorf("read set %s %s %s: %w", f.name(), f.table.Name, f.hosts.Name, err)
	}
	ranges, err := b.dump.elements(f.ranges)
	if err != nil {
		return fmt.Errorf("read set %s %s %s: %w", f.name(), f.table.Name, f.ranges.Name, err)
	}
	allow, err := b.dump.elements(f.allow)
	if err != nil {
		return fmt.Errorf("read set %s %s %s: %w", f.name(), f.table.Name, f.allow.Name, err)
	}
	t1 := time.Now()
	lo, hi := t0.UnixMilli(), t1.UnixMilli()
	f.reset()
	f.slack = baseSlack + (hi - lo)
	keyLen := f.bits / 8

	var foreignHosts, foreignRanges, fix int
	for _, e := range hosts {
		if e.IntervalEnd || len(e.Key) != keyLen {
			continue
		}
		a, _ := netip.AddrFromSlice(e.Key)
		kexp := kernelExp(e, hi)
		m, ok := decodeHost(e.Comment)
		switch {
		case !ok:
			foreignHosts++
			m = meta{exp: kexp}
		case !timerAgrees(m.exp, e, lo, hi, f.slack):
			fix++
			f.hostFix[a] = true
		}
		f.hostState[a] = m
	}

	f.frags = pairIntervals(ranges, keyLen, hi)
	var es []netEntry
	for _, fr := range f.frags {
		if fr.comment == "" {
			continue
		}
		anchors, ok := decodeAnchors(fr.comment)
		if !ok {
			continue
		}
		for _, a := range anchors {
			if a.p.Addr() != fr.lo || a.p.Addr().BitLen() != f.bits {
				continue
			}
			if _, dup := f.nets[a.p]; !dup && !expired(a.m.exp, hi) {
				f.setNet(a.p, &a.m)
				es = append(es, a)
			}
		}
	}
	slices.SortFunc(es, func(x, y netEntry) int { return comparePrefix(x.p, y.p) })
	want, _ := flatten(es)
	// Whatever the kernel enforces that no entry explains (elements added
	// by hand, metadata lost to an overflow) is listed as entries of its
	// own, so that the next reconcile removes it or takes it over.
	for _, g := range uncovered(f.frags, want) {
		for _, p := range cover(g.lo, g.hi) {
			foreignRanges++
			m := meta{exp: g.exp}
			f.setNet(p, &m)
		}
	}
	f.idx = f.idx[:0]
	for p := range f.nets {
		f.idx = append(f.idx, p)
	}
	slices.SortFunc(f.idx, comparePrefix)
	f.repairAll = foreignRanges > 0 || !sameFrags(f.frags, want, f.slack)

	for _, fr := range pairIntervals(allow, keyLen, hi) {
		f.allowState = append(f.allowState, span{fr.lo, fr.hi})
	}

	if foreign := foreignHosts + foreignRanges; foreign > 0 {
		b.stats.foreign.Add(uint64(foreign))
		b.log.Warn("nftables: elements without xdpgate metadata found; listed with an empty origin",
			"family", f.name(), "table", f.table.Name, "entries", foreign)
	}
	b.log.Debug("nftables: read sets", "family", f.name(), "hosts", len(f.hostState), "ranges", len(f.nets),
		"intervals", len(f.frags), "allowlist", len(f.allowState), "to_fix", fix, "repair", f.repairAll,
		"took", t1.Sub(t0))
	return nil
}

// kernelExp estimates the expiry of an element read at nowMs.
func kernelExp(e nftables.SetElement, nowMs int64) int64 {
	if e.Timeout == 0 {
		return 0
	}
	return max(nowMs+e.Expires.Milliseconds(), 1)
}

// timerAgrees reports whether the kernel timer of an element read between
// lo and hi matches the expiry written in its comment.
func timerAgrees(exp int64, e nftables.SetElement, lo, hi, slack int64) bool {
	if e.Timeout == 0 {
		return exp == 0
	}
	if exp == 0 {
		return false
	}
	left := e.Expires.Milliseconds()
	if exp >= lo+left-slack && exp <= hi+left+slack {
		return true
	}
	// An expiry beyond maxTimeout was written with that timeout.
	return exp > hi+left && e.Timeout >= maxTimeout-time.Hour
}

// pairIntervals turns the elements of an interval set into intervals. The
// kernel keeps a start element and an end element one past the last
// address; an interval running to the last address has no end element.
func pairIntervals(els []nftables.SetElement, keyLen int, nowMs int64) []frag {
	els = slices.DeleteFunc(slices.Clone(els), func(e nftables.SetElement) bool { return len(e.Key) != keyLen })
	slices.SortFunc(els, func(x, y nftables.SetElement) int {
		if c := bytes.Compare(x.Key, y.Key); c != 0 {
			return c
		}
		// At the same key an end closes the interval before the next
		// one starts.
		switch {
		case x.IntervalEnd == y.IntervalEnd:
			return 0
		case x.IntervalEnd:
			return -1
		}
		return 1
	})
	var (
		out   []frag
		start *nftables.SetElement
	)
	closeAt := func(end netip.Addr) {
		lo, _ := netip.AddrFromSlice(start.Key)
		if hi := end.Prev(); hi.IsValid() && lo.Compare(hi) <= 0 {
			out = append(out, frag{lo: lo, hi: hi, exp: kernelExp(*start, nowMs), comment: start.Comment})
		}
		start = nil
	}
	for i := range els {
		e := &els[i]
		a, _ := netip.AddrFromSlice(e.Key)
		if start != nil {
			closeAt(a)
		}
		if !e.IntervalEnd {
			start = e
		}
	}
	if start != nil {
		lo, _ := netip.AddrFromSlice(start.Key)
		last := lastAddr(netip.PrefixFrom(lo, 0))
		out = append(out, frag{lo: lo, hi: last, exp: kernelExp(*start, nowMs), comment: start.Comment})
	}
	return out
}

// uncovered returns the parts of the kernel intervals that the wanted
// intervals do not cover, with the kernel expiry.
func uncovered(have, want []frag) []frag {
	var out []frag
	j := 0
	for _, h := range have {
		lo := h.lo
		for j < len(want) && want[j].hi.Less(lo) {
			j++
		}
		k := j
		for lo.IsValid() && lo.Compare(h.hi) <= 0 {
			if k >= len(want) || h.hi.Less(want[k].lo) {
				out = append(out, frag{lo: lo, hi: h.hi, exp: h.exp})
				break
			}
			if lo.Less(want[k].lo) {
				out = append(out, frag{lo: lo, hi: want[k].lo.Prev(), exp: h.exp})
			}
			lo = want[k].hi.Next()
			k++
		}
	}
	return out
}

func sameFrags(have, want []frag, slack int64) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		if !sameFrag(have[i], want[i], slack) {
			return false
		}
	}
	return true
}
