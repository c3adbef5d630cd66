package nftfallback

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Element writes are grouped: a group is the set of element operations
// that must be committed together (the intervals of one region of the
// ranges set, one address of the hosts set, one family of the allowlist).
// Groups are packed into netlink batches, each one nftables transaction:
// the kernel applies a batch whole or not at all. A batch that fails is
// split in halves and retried, down to the group that fails, which is
// reverted in memory, logged and reported; the others are applied.

// Operation phases inside a batch: every delete runs before every add, so
// that an interval can be replaced by an overlapping one in one
// transaction; before a delete, the element is added again ("ensured"),
// which turns the delete of an element the kernel has already timed out
// from an error (ENOENT, aborting the batch) into a no-op.
const (
	phaseEnsure = iota
	phaseDelete
	phaseAdd
)

// ensureTimeout is the timeout of an ensured element, which is deleted in
// the same transaction anyway.
const ensureTimeout = time.Minute

// maxTimeout bounds the kernel timeout of an element; the exact expiry of
// an entry that lives longer stays in its comment.
const maxTimeout = 10 * 365 * 24 * time.Hour

// Limits of one netlink message and one batch. A message carries its
// elements in one netlink attribute, whose length is 16 bits (and which
// nftables.Conn would silently truncate past that); a batch is sent in one
// sendmsg, bounded by the socket send buffer.
const (
	maxMsgBytes   = 60 << 10
	maxBatchBytes = 4 << 20
	msgOverhead   = 128
)

// group is a change to apply whole: the element operations it queues all
// go in one transaction.
type group struct {
	f     *family
	kind  groupKind
	bytes int // estimated netlink bytes of its operations

	// groupHost: one address of the hosts set.
	addr           netip.Addr
	old, cur       meta
	hadOld, hasCur bool
	fix            bool // was marked for rewriting
	// groupRanges: a part of a region of the ranges set.
	pt *part
	// groupAllow: the allowlist set of the family.
	del, add []span
	prev     []span
}

type groupKind uint8

const (
	groupHost groupKind = iota
	groupRanges
	groupAllow
)

// elemBytes estimates the netlink bytes of an element.
func elemBytes(keyLen, comment int) int { return 48 + keyLen + comment }

// emit queues the group's element operations.
func (g *group) emit(bt *batch) {
	f := g.f
	switch g.kind {
	case groupHost:
		if g.hadOld {
			bt.put(phaseEnsure, f.hosts, nftables.SetElement{Key: bt.key(g.addr)}, 0)
			bt.put(phaseDelete, f.hosts, nftables.SetElement{Key: bt.key(g.addr)}, 0)
		}
		if g.hasCur {
			var c string
			if !bt.counting {
				c = encodeHost(g.cur)
			}
			bt.put(phaseAdd, f.hosts, nftables.SetElement{Key: bt.key(g.addr), Comment: c}, g.cur.exp)
		}
	case groupRanges:
		for _, fr := range g.pt.del {
			f.putInterval(bt, f.ranges, fr.lo, fr.hi, true, 0, "")
		}
		for _, fr := range g.pt.add {
			f.putInterval(bt, f.ranges, fr.lo, fr.hi, false, fr.exp, fr.comment)
		}
	case groupAllow:
		for _, s := range g.del {
			f.putInterval(bt, f.allow, s.lo, s.hi, true, 0, "")
		}
		for _, s := range g.add {
			f.putInterval(bt, f.allow, s.lo, s.hi, false, 0, "")
		}
	}
}

// revert undoes the group's change of the in-memory state: it was not
// applied.
func (g *group) revert() {
	f := g.f
	switch g.kind {
	case groupHost:
		if g.hadOld {
			f.hostState[g.addr] = g.old
		} else {
			delete(f.hostState, g.addr)
		}
		if g.fix {
			f.hostFix[g.addr] = true
		}
	case groupRanges:
		g.pt.committed = false
	case groupAllow:
		f.allowState = g.prev
	}
}

// String describes the group for logs and errors.
func (g *group) String() string {
	switch g.kind {
	case groupHost:
		return fmt.Sprintf("%s address %s", g.f.name(), g.addr)
	case groupRanges:
		lo, hi := g.pt.bounds()
		return fmt.Sprintf("%s ranges %s-%s", g.f.name(), lo, hi)
	}
	return g.f.name() + " allowlist"
}

// batch collects the element operations of one transaction by phase and
// set, so that each message carries many elements of one set. It is filled
// twice: a first pass counts the elements of each bucket, the second
// stores them without growing slices.
type batch struct {
	now      time.Time
	counting bool
	phases   [phaseAdd + 1][]*bucket
	n        int
	keys     []byte // backing store of the element keys
}

// key returns the set key of a, carved from a shared buffer.
func (bt *batch) key(a netip.Addr) []byte {
	if bt.counting {
		return nil
	}
	if cap(bt.keys)-len(bt.keys) < 16 {
		bt.keys = make([]byte, 0, 64<<10)
	}
	n := len(bt.keys)
	bt.keys = appendKey(bt.keys, a)
	return bt.keys[n:len(bt.keys):len(bt.keys)]
}

type bucket struct {
	set   *nftables.Set
	n     int
	elems []nftables.SetElement
}

// put queues an element; exp is the expiry of an added element.
func (bt *batch) put(phase int, set *nftables.Set, e nftables.SetElement, exp int64) {
	var bk *bucket
	for _, x := range bt.phases[phase] {
		if x.set == set {
			bk = x
			break
		}
	}
	if bk == nil {
		bk = &bucket{set: set}
		bt.phases[phase] = append(bt.phases[phase], bk)
	}
	if bt.counting {
		bk.n++
		return
	}
	if bk.elems == nil {
		bk.elems = make([]nftables.SetElement, 0, bk.n)
	}
	if phase != phaseDelete && !e.IntervalEnd && set.HasTimeout {
		e.Timeout = elemTimeout(phase == phaseEnsure, exp, bt.now)
	}
	bk.elems = append(bk.elems, e)
	bt.n++
}

func elemTimeout(ensure bool, exp int64, now time.Time) time.Duration {
	switch {
	case ensure:
		return ensureTimeout
	case exp == 0:
		return 0
	}
	d := time.UnixMilli(exp).Sub(now).Truncate(time.Millisecond)
	return min(max(d, time.Millisecond), maxTimeout)
}

// errTablesGone marks a batch refused because a table or set of the
// backend no longer exists.
var errTablesGone = errors.New("nftables table or set missing")

// send writes groups in batches. It returns the errors of the groups it
// could not apply, after reverting them.
func (b *Backend) send(ctx context.Context, groups []*group) error {
	var errs []error
	limit := b.batchLimit
	for start := 0; start < len(groups); {
		if err := ctx.Err(); err != nil {
			revertAll(groups[start:])
			return errors.Join(append(errs, err)...)
		}
		end, size := start, 0
		for end < len(groups) && (end == start || size+groups[end].bytes <= limit) {
			size += groups[end].bytes
			end++
		}
		refused, fatal := b.sendSplit(groups[start:end])
		errs = append(errs, refused...)
		if fatal != nil {
			revertAll(groups[end:])
			return errors.Join(append(errs, fatal)...)
		}
		start = end
	}
	return errors.Join(errs...)
}

func revertAll(groups []*group) {
	for _, g := range groups {
		g.revert()
	}
}

// sendSplit sends groups as one transaction; when the kernel refuses one
// of its elements, it retries in halves to apply all the others. It
// returns the errors of the refused groups, and a fatal error, after which
// nothing more is sent, when the refusal is not about an element.
func (b *Backend) sendSplit(groups []*group) (refused []error, fatal error) {
	err := b.flushGroups(groups)
	if err == nil {
		return nil, nil
	}
	if !elementError(err) {
		revertAll(groups)
		if errors.Is(err, unix.ENOENT) {
			// Our table or set is gone: recreate it before anything else.
			b.ready, b.lost = false, true
			b.log.Warn("nftables: tables or sets missing", "error", err)
			return nil, fmt.Errorf("%w: %w", errTablesGone, err)
		}
		b.log.Error("nftables: batch refused", "groups", len(groups), "error", err)
		return nil, err
	}
	if len(groups) == 1 {
		g := groups[0]
		g.revert()
		b.log.Error("nftables: change not applied", "what", g.String(), "error", err)
		return []error{fmt.Errorf("nftables: %s: %w", g, err)}, nil
	}
	b.log.Debug("nftables: batch refused, retrying in halves", "groups", len(groups), "error", err)
	half := len(groups) / 2
	refused, fatal = b.sendSplit(groups[:half])
	if fatal != nil {
		revertAll(groups[half:])
		return refused, fatal
	}
	more, fatal := b.sendSplit(groups[half:])
	return append(refused, more...), fatal
}

// elementError reports whether a refused batch may hold elements the
// kernel accepts: it refused one element (a clash with an interval it
// holds, a full set, a value out of range) or the batch was too large.
// Anything else (a table gone, no permission, a broken socket) refuses
// every batch alike.
func elementError(err error) bool {
	for _, e := range []error{unix.EEXIST, unix.EINVAL, unix.ENFILE, unix.ERANGE, unix.E2BIG, unix.EMSGSIZE, unix.EOVERFLOW, unix.ENOSPC} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// flushGroups sends the groups as one transaction.
func (b *Backend) flushGroups(groups []*group) error {
	bt := &batch{now: time.Now(), counting: true}
	for _, g := range groups {
		g.emit(bt)
	}
	bt.counting = false
	for _, g := range groups {
		g.emit(bt)
	}
	if bt.n == 0 {
		return nil
	}
	var err error
	for phase, buckets := range bt.phases {
		for _, bk := range buckets {
			for start := 0; start < len(bk.elems) && err == nil; {
				end, size := start, msgOverhead
				for end < len(bk.elems) && (end == start || size+elemBytes(len(bk.elems[end].Key), len(bk.elems[end].Comment)) <= maxMsgBytes) {
					size += elemBytes(len(bk.elems[end].Key), len(bk.elems[end].Comment))
					end++
				}
				if phase == phaseDelete {
					err = b.conn.SetDeleteElements(bk.set, bk.elems[start:end])
				} else {
					err = b.conn.SetAddElements(bk.set, bk.elems[start:end])
				}
				start = end
			}
		}
	}
	if err == nil {
		err = b.conn.Flush()
	}
	if err != nil {
		// A failed batch may leave replies unread on the socket: start over
		// with a new one.
		b.redial()
		return err
	}
	b.stats.transactions.Add(1)
	b.stats.elements.Add(uint64(bt.n))
	return nil
}
