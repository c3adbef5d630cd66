package decision

import (
	"net/netip"
	"time"
)

// Store holds the active decisions by ID and folds the decisions on one
// prefix into a single Entry. Deleting one of several decisions on a prefix
// keeps the prefix; only the last one removes it.
//
// The store is built for the startup set of a large LAPI (100k decisions
// and more): decisions live in one pointer-free slice, chained per prefix
// by index, so adding and deleting allocate nothing once the store has
// grown, Replace reuses the memory of the previous set, Entries reads the
// slice in order, and the garbage collector has nothing to scan in it.
//
// Expiries are kept to the nanosecond as Unix times: the entries carry no
// monotonic clock reading and are in UTC.
//
// The zero Store is empty and ready to use. A Store is not safe for
// concurrent use.
type Store struct {
	recs     []rec
	free     []int32 // free slots of recs
	byID     map[int64]int32
	byPrefix map[pkey]int32 // head of the prefix's chain
	origins  []string       // interned origins: a handful of strings
	originIx map[string]uint32
	sized    int        // the most decisions the maps were sized for
	parsed   []Decision // Apply's buffer, kept from one startup set to the next
}

type rec struct {
	key    pkey
	id     int64
	expiry int64  // Unix nanoseconds, 0 for never
	next   int32  // next decision on the same prefix; -1 ends the chain
	origin uint32 // index in Store.origins
	state  uint8
}

// rec.state
const (
	recFree uint8 = iota
	recHead       // first decision of its prefix's chain
	recLink       // another decision of the chain
)

// NewStore returns an empty store.
func NewStore() *Store { return &Store{} }

func (s *Store) init(n int) {
	s.byID = make(map[int64]int32, n)
	s.byPrefix = make(map[pkey]int32, n)
	if s.originIx == nil {
		s.originIx = make(map[string]uint32)
	}
	s.sized = n
}

// Len returns the number of decisions held.
func (s *Store) Len() int { return len(s.byID) }

// PrefixCount returns the number of distinct prefixes held, expired or not.
func (s *Store) PrefixCount() int { return len(s.byPrefix) }

// Add adds a decision. A decision with an ID already held replaces it.
func (s *Store) Add(d Decision) {
	if s.byID == nil {
		s.init(0)
	}
	k := keyOf(d.Prefix)
	if i, ok := s.byID[d.ID]; ok {
		r := &s.recs[i]
		if r.key == k {
			r.origin = s.intern(d.Origin)
			r.expiry = nanos(d.Expiry)
			return
		}
		s.remove(i)
	}
	i := s.alloc()
	r := &s.recs[i]
	*r = rec{key: k, id: d.ID, expiry: nanos(d.Expiry), next: -1, origin: s.intern(d.Origin), state: recHead}
	if head, ok := s.byPrefix[k]; ok {
		r.next = head
		s.recs[head].state = recLink
	}
	s.byPrefix[k] = i
	s.byID[d.ID] = i
}

// Delete removes the decision with d's ID. Deleting an ID the store does
// not hold does nothing. It reports whether a decision was removed.
func (s *Store) Delete(d Decision) bool { return s.DeleteID(d.ID) }

// DeleteID removes the decision with the given ID, as Delete.
func (s *Store) DeleteID(id int64) bool {
	i, ok := s.byID[id]
	if !ok {
		return false
	}
	s.remove(i)
	return true
}

// Replace drops every decision and holds ds instead: the complete set of a
// startup pull. The memory of the previous set is reused.
func (s *Store) Replace(ds []Decision) {
	s.sized = max(s.sized, len(s.byID))
	if s.byID == nil || len(ds) > s.sized {
		// A map sized once beats growing it step by step; a cleared
		// map keeps its size, so the next Replace needs nothing.
		s.init(len(ds))
	} else {
		clear(s.byID)
		clear(s.byPrefix)
	}
	s.recs = s.recs[:0]
	s.free = s.free[:0]
	if cap(s.recs) < len(ds) {
		s.recs = make([]rec, 0, len(ds))
	}
	for i := range ds {
		s.Add(ds[i])
	}
}

// Prune removes the decisions that ran out at or before now and returns how
// many it removed.
func (s *Store) Prune(now time.Time) int {
	t := nanos(now)
	n := 0
	for i := range s.recs {
		if r := &s.recs[i]; r.state != recFree && r.expiry != 0 && r.expiry <= t {
			s.remove(int32(i))
			n++
		}
	}
	return n
}

// Entries returns the effective entry of every prefix that has a decision
// still running at now, in no particular order.
func (s *Store) Entries(now time.Time) []Entry {
	return s.AppendEntries(make([]Entry, 0, len(s.byPrefix)), now)
}

// AppendEntries appends the entries Entries would return to dst, so that a
// caller can reuse one slice from one reconcile to the next.
func (s *Store) AppendEntries(dst []Entry, now time.Time) []Entry {
	t := nanos(now)
	for i := range s.recs {
		if s.recs[i].state != recHead {
			continue
		}
		if e, ok := s.effective(int32(i), t); ok {
			dst = append(dst, e)
		}
	}
	return dst
}

// Lookup returns the effective entry of one prefix.
func (s *Store) Lookup(p netip.Prefix, now time.Time) (Entry, bool) {
	head, ok := s.byPrefix[keyOf(p)]
	if !ok {
		return Entry{}, false
	}
	return s.effective(head, nanos(now))
}

// effective folds the chain of a prefix: the decision expiring last wins
// (zero, never, beats everything); among equal expiries the smaller origin
// wins, so that the result does not depend on the order of the decisions.
func (s *Store) effective(head int32, now int64) (Entry, bool) {
	best := &s.recs[head]
	for i := best.next; i >= 0; i = s.recs[i].next {
		if r := &s.recs[i]; s.laterThan(r, best) {
			best = r
		}
	}
	if best.expiry != 0 && best.expiry <= now {
		return Entry{}, false
	}
	return Entry{Prefix: best.key.prefix(), Origin: s.origins[best.origin], Expiry: fromNanos(best.expiry)}, true
}

func (s *Store) laterThan(a, b *rec) bool {
	switch {
	case (a.expiry == 0) != (b.expiry == 0):
		return a.expiry == 0
	case a.expiry != b.expiry:
		return a.expiry > b.expiry
	default:
		return s.origins[a.origin] < s.origins[b.origin]
	}
}

func (s *Store) alloc() int32 {
	if n := len(s.free); n > 0 {
		i := s.free[n-1]
		s.free = s.free[:n-1]
		return i
	}
	s.recs = append(s.recs, rec{})
	return int32(len(s.recs) - 1)
}

// remove unlinks slot i from its prefix chain and from byID and frees it.
func (s *Store) remove(i int32) {
	r := &s.recs[i]
	if r.state == recHead {
		if r.next < 0 {
			delete(s.byPrefix, r.key)
		} else {
			s.byPrefix[r.key] = r.next
			s.recs[r.next].state = recHead
		}
	} else {
		for j := s.byPrefix[r.key]; j >= 0; j = s.recs[j].next {
			if s.recs[j].next == i {
				s.recs[j].next = r.next
				break
			}
		}
	}
	delete(s.byID, r.id)
	*r = rec{next: -1}
	s.free = append(s.free, i)
}

func (s *Store) intern(origin string) uint32 {
	if i, ok := s.originIx[origin]; ok {
		return i
	}
	i := uint32(len(s.origins))
	s.origins = append(s.origins, origin)
	s.originIx[origin] = i
	return i
}
