package nftfallback

import (
	"net/netip"
	"slices"
	"sort"

	"github.com/google/nftables"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// family is the state of one table: what is in its sets, as written or
// read back. Apply changes it and derives the element operations from the
// difference, so a small change never reads or rewrites a whole set.
type family struct {
	v6     bool
	bits   int
	table  *nftables.Table
	hosts  *nftables.Set
	ranges *nftables.Set
	allow  *nftables.Set

	// host entries: what the hosts set holds.
	hostState map[netip.Addr]meta
	// hosts whose kernel timeout disagrees with their metadata, rewritten
	// by the next Apply.
	hostFix map[netip.Addr]bool

	// range entries, the prefixes the ranges set enforces; idx holds their
	// keys sorted by comparePrefix and lenCount how many there are of each
	// length.
	nets     map[netip.Prefix]meta
	idx      []netip.Prefix
	lenCount []int
	// frags mirrors the intervals of the ranges set, sorted.
	frags []frag
	// repairAll asks the next Apply to bring the whole ranges set to the
	// flattening of nets (set when they disagree after a read).
	repairAll bool
	// slack is how far a kernel expiry read back may be from the one
	// written (timer granularity, time spent reading).
	slack int64

	allowState []span
}

func newFamily(v6 bool, table string) *family {
	f := &family{v6: v6, bits: 32}
	kt := nftables.TypeIPAddr
	fam := nftables.TableFamilyIPv4
	if v6 {
		f.bits, kt, fam = 128, nftables.TypeIP6Addr, nftables.TableFamilyIPv6
	}
	f.table = &nftables.Table{Name: table, Family: fam}
	f.allow = &nftables.Set{Table: f.table, Name: setAllow, KeyType: kt, Interval: true,
		Comment: "xdpgate: sources never dropped"}
	f.hosts = &nftables.Set{Table: f.table, Name: setHosts, KeyType: kt, HasTimeout: true,
		Comment: "xdpgate: banned addresses (comment: origin, expiry in unix ms or 0)"}
	f.ranges = &nftables.Set{Table: f.table, Name: setRanges, KeyType: kt, Interval: true, HasTimeout: true,
		Comment: "xdpgate: banned ranges, nested ones flattened (comment: prefix, origin, expiry of the ranges starting here)"}
	f.reset()
	return f
}

// reset empties the state: the sets were just created.
func (f *family) reset() {
	f.hostState = map[netip.Addr]meta{}
	f.hostFix = map[netip.Addr]bool{}
	f.nets = map[netip.Prefix]meta{}
	f.idx = nil
	f.lenCount = make([]int, f.bits+1)
	f.frags = nil
	f.repairAll = false
	f.slack = baseSlack
	f.allowState = nil
}

func (f *family) name() string {
	if f.v6 {
		return "ip6"
	}
	return "ip"
}

// appendKey appends the set key of a to dst.
func appendKey(dst []byte, a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return append(dst, b[:]...)
	}
	b := a.As16()
	return append(dst, b[:]...)
}

// entries appends the entries not expired at nowMs.
func (f *family) entries(out []decision.Entry, nowMs int64) []decision.Entry {
	for a, m := range f.hostState {
		if !expired(m.exp, nowMs) {
			out = append(out, decision.Entry{Prefix: netip.PrefixFrom(a, f.bits), Origin: m.origin, Expiry: expTime(m.exp)})
		}
	}
	for _, p := range f.idx {
		if m := f.nets[p]; !expired(m.exp, nowMs) {
			out = append(out, decision.Entry{Prefix: p, Origin: m.origin, Expiry: expTime(m.exp)})
		}
	}
	return out
}

// putInterval queues the interval [lo, hi] of an interval set (with del,
// its removal): a start element and an end element one past hi, none when
// hi is the last address.
func (f *family) putInterval(bt *batch, set *nftables.Set, lo, hi netip.Addr, del bool, exp int64, comment string) {
	end := hi.Next()
	if del {
		bt.put(phaseEnsure, set, nftables.SetElement{Key: bt.key(lo)}, 0)
		bt.put(phaseDelete, set, nftables.SetElement{Key: bt.key(lo)}, 0)
		if end.IsValid() {
			bt.put(phaseEnsure, set, nftables.SetElement{Key: bt.key(end), IntervalEnd: true}, 0)
			bt.put(phaseDelete, set, nftables.SetElement{Key: bt.key(end), IntervalEnd: true}, 0)
		}
		return
	}
	bt.put(phaseAdd, set, nftables.SetElement{Key: bt.key(lo), Comment: comment}, exp)
	if end.IsValid() {
		bt.put(phaseAdd, set, nftables.SetElement{Key: bt.key(end), IntervalEnd: true}, 0)
	}
}

func (f *family) intervalBytes(del bool, comment string) int {
	if del {
		return 4 * elemBytes(f.bits/8, 0)
	}
	return 2*elemBytes(f.bits/8, 0) + len(comment)
}

// planHosts applies host changes (nil: delete) to the state and returns
// one group per address whose element changes.
func (f *family) planHosts(changes map[netip.Addr]*meta, nowMs int64) []*group {
	for a := range f.hostFix {
		if _, ok := changes[a]; !ok {
			m := f.hostState[a]
			changes[a] = &m
		}
	}
	var groups []*group
	slab := make([]group, 0, len(changes)) // one allocation for all groups
	for a, m := range changes {
		if m != nil && expired(m.exp, nowMs) {
			m = nil
		}
		old, had := f.hostState[a]
		fix := f.hostFix[a]
		if !had && m == nil || had && m != nil && old == *m && !fix {
			continue
		}
		slab = append(slab, group{f: f, kind: groupHost, addr: a, old: old, hadOld: had, fix: fix})
		g := &slab[len(slab)-1]
		if had {
			g.bytes += 2 * elemBytes(f.bits/8, 0)
		}
		if m != nil {
			g.cur, g.hasCur = *m, true
			g.bytes += elemBytes(f.bits/8, 16+3*len(m.origin))
			f.hostState[a] = *m
		} else {
			delete(f.hostState, a)
		}
		delete(f.hostFix, a)
		groups = append(groups, g)
	}
	return groups
}

// Range entries.

func (f *family) setNet(p netip.Prefix, m *meta) {
	_, had := f.nets[p]
	switch {
	case m == nil && had:
		delete(f.nets, p)
		f.lenCount[p.Bits()]--
	case m != nil:
		f.nets[p] = *m
		if !had {
			f.lenCount[p.Bits()]++
		}
	}
}

// syncIndex brings idx in line with nets after the given keys changed: a
// few changes are inserted in place, more are merged in one pass.
func (f *family) syncIndex(changed []netip.Prefix) {
	if len(changed) <= 4 {
		for _, p := range changed {
			i, found := slices.BinarySearchFunc(f.idx, p, comparePrefix)
			_, want := f.nets[p]
			switch {
			case want && !found:
				f.idx = slices.Insert(f.idx, i, p)
			case !want && found:
				f.idx = slices.Delete(f.idx, i, i+1)
			}
		}
		return
	}
	c := slices.Clone(changed)
	slices.SortFunc(c, comparePrefix)
	c = slices.Compact(c)
	out := make([]netip.Prefix, 0, len(f.idx)+len(c))
	i := 0
	for _, p := range c {
		for i < len(f.idx) && comparePrefix(f.idx[i], p) < 0 {
			out = append(out, f.idx[i])
			i++
		}
		if i < len(f.idx) && f.idx[i] == p {
			i++
		}
		if _, want := f.nets[p]; want {
			out = append(out, p)
		}
	}
	f.idx = append(out, f.idx[i:]...)
}

// fragAt returns the index of the interval holding a, or -1.
func (f *family) fragAt(a netip.Addr) int {
	i := sort.Search(len(f.frags), func(i int) bool { return a.Less(f.frags[i].lo) }) - 1
	if i >= 0 && f.frags[i].hi.Compare(a) >= 0 {
		return i
	}
	return -1
}

// closure widens s until no range entry and no interval of the set
// crosses its bounds: the intervals inside it then depend only on the
// entries inside it. Prefixes nest or are disjoint, so the region of a
// prefix is the outermost prefix around it.
func (f *family) closure(s span) span {
	for {
		grown := false
		for _, a := range [2]netip.Addr{s.lo, s.hi} {
			for l := 0; l < f.bits; l++ {
				if f.lenCount[l] == 0 {
					continue
				}
				q := netip.PrefixFrom(a, l).Masked()
				qs := prefixSpan(q)
				if !qs.lo.Less(s.lo) && !s.hi.Less(qs.hi) {
					continue // inside s already
				}
				if _, ok := f.nets[q]; ok {
					if qs.lo.Less(s.lo) {
						s.lo, grown = qs.lo, true
					}
					if s.hi.Less(qs.hi) {
						s.hi, grown = qs.hi, true
					}
				}
			}
			if i := f.fragAt(a); i >= 0 {
				fr := f.frags[i]
				if fr.lo.Less(s.lo) {
					s.lo, grown = fr.lo, true
				}
				if s.hi.Less(fr.hi) {
					s.hi, grown = fr.hi, true
				}
			}
		}
		if !grown {
			return s
		}
	}
}

// sameFrag reports whether the interval in the kernel (old) can stay for
// the one wanted (nf).
func sameFrag(old, nf frag, slack int64) bool {
	if old.lo != nf.lo || old.hi != nf.hi || old.comment != nf.comment || (old.exp == 0) != (nf.exp == 0) {
		return false
	}
	d := old.exp - nf.exp
	return -slack <= d && d <= slack
}

// region is a closed span of the ranges set being rewritten.
type region struct {
	oldLo, oldHi int // frags[oldLo:oldHi] are its intervals now
	parts        []*part
	changed      []netip.Prefix // range changes inside the region
}

// part is a slice of a region rewritten in one group. A large region is
// cut into parts at addresses that no interval, old or new, straddles, so
// that each part swaps its intervals in a transaction of its own without
// lifting a ban in between.
type part struct {
	old, next []frag // the intervals before and after
	del, add  []frag // what changes: old not in next, next not in old
	committed bool
}

// maxPartBytes is the size above which a region is cut into parts.
const maxPartBytes = 512 << 10

// planRanges applies range changes (nil: delete) to the state and returns
// the groups that bring the ranges set to the flattening of the new
// state, and a function to call once they are sent, which records what the
// kernel then holds.
func (f *family) planRanges(changes map[netip.Prefix]*meta, nowMs int64, b *Backend) ([]*group, func()) {
	undo := make(map[netip.Prefix]*meta, len(changes))
	changed := make([]netip.Prefix, 0, len(changes))
	for p, m := range changes {
		old, had := f.nets[p]
		if m != nil && expired(m.exp, nowMs) {
			m = nil
		}
		if !had && m == nil || had && m != nil && old == *m {
			continue
		}
		if had {
			undo[p] = &old
		} else {
			undo[p] = nil
		}
		f.setNet(p, m)
		changed = append(changed, p)
	}
	if len(changed) == 0 && !f.repairAll {
		return nil, func() {}
	}
	f.syncIndex(changed)

	var spans []span
	for _, p := range changed {
		spans = append(spans, f.closure(prefixSpan(p)))
	}
	repairing := f.repairAll
	if repairing {
		for _, p := range f.idx {
			spans = append(spans, prefixSpan(p))
		}
		for _, fr := range f.frags {
			spans = append(spans, span{fr.lo, fr.hi})
		}
	}
	// Regions that merely touch stay apart: no interval crosses between
	// them.
	spans = mergeSpans(spans, false)

	// Regions and changes in address order: each change falls in the
	// first region not ending before it.
	slices.SortFunc(changed, comparePrefix)
	var (
		regions []*region
		groups  []*group
		pruned  []netip.Prefix
		ci      int
	)
	for _, s := range spans {
		r := &region{}
		r.oldLo = sort.Search(len(f.frags), func(i int) bool { return !f.frags[i].lo.Less(s.lo) })
		r.oldHi = r.oldLo
		for r.oldHi < len(f.frags) && f.frags[r.oldHi].lo.Compare(s.hi) <= 0 {
			r.oldHi++
		}
		var es []netEntry
		i := sort.Search(len(f.idx), func(i int) bool { return !f.idx[i].Addr().Less(s.lo) })
		for ; i < len(f.idx) && f.idx[i].Addr().Compare(s.hi) <= 0; i++ {
			p := f.idx[i]
			m := f.nets[p]
			if expired(m.exp, nowMs) {
				pruned = append(pruned, p)
				continue
			}
			es = append(es, netEntry{p: p, m: m})
		}
		c0 := ci
		for ci < len(changed) && changed[ci].Addr().Compare(s.hi) <= 0 {
			ci++
		}
		r.changed = changed[c0:ci]
		want, overflow := flatten(es)
		if overflow > 0 {
			b.stats.overflow.Add(uint64(overflow))
			b.log.Warn("nftables: range metadata does not fit in a comment; the ranges stay enforced but will not be listed after a restart",
				"family", f.name(), "region", s.lo.String()+"-"+s.hi.String(), "ranges", overflow)
		}
		regions = append(regions, r)
		for _, pt := range cutParts(f.frags[r.oldLo:r.oldHi], want) {
			r.parts = append(r.parts, pt)
			pt.committed = true // until reverted
			if g := f.partGroup(pt); g != nil {
				groups = append(groups, g)
			}
		}
	}
	for _, p := range pruned {
		f.setNet(p, nil)
	}
	f.syncIndex(pruned)

	return groups, func() {
		// The intervals the kernel now holds, region by region; regions
		// are spliced into frags from the last one, so that the indexes
		// of the others stay valid, or frags is rebuilt when there are
		// many.
		kept := make([][]frag, len(regions))
		allDone := true
		var reverted []netip.Prefix
		for ri, r := range regions {
			failed := 0
			for _, pt := range r.parts {
				if pt.committed {
					kept[ri] = append(kept[ri], pt.next...)
				} else {
					kept[ri] = append(kept[ri], pt.old...)
					failed++
				}
			}
			switch {
			case failed == 0:
			case failed == len(r.parts):
				// Nothing of the region changed: forget its changes.
				allDone = false
				for _, p := range r.changed {
					f.setNet(p, undo[p])
					reverted = append(reverted, p)
				}
			default:
				// Part of the region changed: keep the changes and let
				// the next Apply finish the job.
				allDone = false
				f.repairAll = true
			}
		}
		if len(regions) <= 4 {
			for ri := len(regions) - 1; ri >= 0; ri-- {
				f.frags = slices.Replace(f.frags, regions[ri].oldLo, regions[ri].oldHi, kept[ri]...)
			}
		} else {
			next := make([]frag, 0, len(f.frags)+2*len(changed))
			at := 0
			for ri, r := range regions {
				next = append(next, f.frags[at:r.oldLo]...)
				next = append(next, kept[ri]...)
				at = r.oldHi
			}
			f.frags = append(next, f.frags[at:]...)
		}
		f.syncIndex(reverted)
		if repairing && allDone {
			f.repairAll = false
		}
	}
}

// cutParts splits the old and new intervals of a region (both sorted) into
// parts of about maxPartBytes, cutting only where no interval straddles.
func cutParts(old, want []frag) []*part {
	var (
		out   []*part
		cur   = &part{}
		bytes int
		end   netip.Addr // last address of what cur holds
		i, j  int
	)
	for i < len(old) || j < len(want) {
		var fr frag
		if j >= len(want) || i < len(old) && old[i].lo.Less(want[j].lo) {
			fr = old[i]
			cur.old = append(cur.old, fr)
			i++
		} else {
			fr = want[j]
			cur.next = append(cur.next, fr)
			j++
		}
		bytes += 128 + len(fr.comment)
		if !end.IsValid() || end.Less(fr.hi) {
			end = fr.hi
		}
		if bytes >= maxPartBytes && (i == len(old) || end.Less(old[i].lo)) && (j == len(want) || end.Less(want[j].lo)) {
			out = append(out, cur)
			cur, bytes, end = &part{}, 0, netip.Addr{}
		}
	}
	if len(cur.old)+len(cur.next) > 0 || len(out) == 0 {
		out = append(out, cur)
	}
	return out
}

// partGroup returns the group that turns the part's old intervals into
// its new ones, nil when they are the same. An interval that stays keeps
// its kernel expiry in next.
func (f *family) partGroup(pt *part) *group {
	g := &group{f: f, kind: groupRanges, pt: pt}
	next := make([]frag, 0, len(pt.next))
	i := 0
	for _, nf := range pt.next {
		for i < len(pt.old) && pt.old[i].lo.Less(nf.lo) {
			pt.del = append(pt.del, pt.old[i])
			i++
		}
		if i < len(pt.old) && sameFrag(pt.old[i], nf, f.slack) {
			next = append(next, pt.old[i])
			i++
			continue
		}
		next = append(next, nf)
		pt.add = append(pt.add, nf)
		g.bytes += f.intervalBytes(false, nf.comment)
	}
	pt.del = append(pt.del, pt.old[i:]...)
	g.bytes += len(pt.del) * f.intervalBytes(true, "")
	pt.next = next
	if len(pt.del)+len(pt.add) == 0 {
		return nil
	}
	return g
}

func (pt *part) bounds() (lo, hi netip.Addr) {
	for _, s := range [][]frag{pt.old, pt.next} {
		for _, fr := range s {
			if !lo.IsValid() || fr.lo.Less(lo) {
				lo = fr.lo
			}
			if !hi.IsValid() || hi.Less(fr.hi) {
				hi = fr.hi
			}
		}
	}
	return lo, hi
}

// planAllow returns the group that turns the allowlist set into want, or
// nil if it holds it already.
func (f *family) planAllow(want []span) *group {
	old := make(map[span]bool, len(f.allowState))
	for _, s := range f.allowState {
		old[s] = true
	}
	g := &group{f: f, kind: groupAllow, prev: f.allowState}
	for _, s := range want {
		if old[s] {
			delete(old, s)
			continue
		}
		g.add = append(g.add, s)
		g.bytes += f.intervalBytes(false, "")
	}
	for s := range old {
		g.del = append(g.del, s)
		g.bytes += f.intervalBytes(true, "")
	}
	if len(g.add)+len(g.del) == 0 {
		return nil
	}
	f.allowState = want
	return g
}
