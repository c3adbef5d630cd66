package engine

import (
	"math"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// table is the engine's state: every decision, folded per prefix, and for
// every prefix what each backend holds. One row per prefix serves both:
// reconciling a backend is a pass over the rows that compares what the
// decisions want with what the backend holds, with no lookup and no list
// of entries built.
//
// Everything lives in pointer-free slices, chained and indexed by number,
// so that the garbage collector has nothing to scan and a large LAPI
// costs little: 100k decisions on 100k prefixes, with one backend, take
// about 9 MB (maps of decisions and of what each backend holds took 20).
// The memory of a set is reused by the next one.
//
// A row lives while a decision holds its prefix or a backend holds it.
type table struct {
	decs  []drec
	freeD []int32
	byID  index // decisions by ID
	rows  []row
	freeR []int32
	byKey index          // rows by prefix
	held  [][]held       // per backend, what it holds for each row
	names decision.Names // origins
}

// drec is one decision.
type drec struct {
	id     int64
	expiry int64 // Unix nanoseconds, 0 for never
	row    int32
	next   int32 // the next decision on the same prefix; -1 ends the chain
	origin uint32
	used   bool
}

// row is one prefix.
type row struct {
	hi, lo uint64 // pkey
	head   int32  // the first decision on the prefix, -1 for none
	bits   int16
	used   bool
}

func (r *row) key() pkey { return pkey{hi: r.hi, lo: r.lo, bits: r.bits} }

// held is what a backend holds for a prefix.
type held struct {
	expiry int64 // Unix nanoseconds, 0 for never
	origin uint32
	has    bool
}

// reset drops every decision and makes room for n: the first step of
// taking a new complete set. Rows that backends hold stay, without
// decisions, until the next reconcile removes them.
func (t *table) reset(n int) {
	clear(t.decs)
	t.decs = t.decs[:0]
	t.freeD = t.freeD[:0]
	t.byID.clear()
	t.byID.reserve(n)
	if cap(t.decs) < n {
		// Room for the deltas that follow too: growing the slice later
		// would copy all of it.
		t.decs = make([]drec, 0, n+n/16)
	}
	for i := range t.rows {
		if t.rows[i].used {
			t.rows[i].head = -1
			t.release(int32(i))
		}
	}
	t.byKey.reserve(n)
	// The rows too, and each backend's column beside them: grown by
	// append from empty, 100k rows would leave as much garbage again.
	if want := n + n/16; cap(t.rows) < want {
		t.rows = append(make([]row, 0, want), t.rows...)
		for b := range t.held {
			t.held[b] = append(make([]held, 0, want), t.held[b]...)
		}
	}
}

// add adds a decision, replacing the one with the same ID, and returns
// its row.
func (t *table) add(d decision.Decision) int32 {
	k := keyOf(d.Prefix)
	origin := t.origin(d.Origin)
	expiry := nanos(d.Expiry)
	h := hashID(d.ID)
	at, i := t.byID.find(h, func(i int32) bool { return t.decs[i].id == d.ID })
	if i >= 0 {
		if r := t.decs[i].row; t.rows[r].key() == k {
			t.decs[i].expiry, t.decs[i].origin = expiry, origin
			return r
		}
		t.removeDec(at, i)
	}
	r := t.rowOf(k)
	rec := drec{id: d.ID, expiry: expiry, row: r, next: t.rows[r].head, origin: origin, used: true}
	if n := len(t.freeD); n > 0 {
		i = t.freeD[n-1]
		t.freeD = t.freeD[:n-1]
		t.decs[i] = rec
	} else {
		i = int32(len(t.decs))
		t.decs = append(t.decs, rec)
	}
	t.rows[r].head = i
	t.byID.reserve(t.byID.n + 1)
	at, _ = t.byID.find(h, func(int32) bool { return false })
	t.byID.insert(at, h, i)
	return r
}

// deleteID removes the decision with the given ID and returns its row.
func (t *table) deleteID(id int64) (int32, bool) {
	at, i := t.byID.find(hashID(id), func(i int32) bool { return t.decs[i].id == id })
	if i < 0 {
		return -1, false
	}
	r := t.decs[i].row
	t.removeDec(at, i)
	return r, true
}

// removeDec unlinks decision i, found at slot at of byID, and frees it;
// its row goes too when nothing else holds it.
func (t *table) removeDec(at int, i int32) {
	d := &t.decs[i]
	r := d.row
	if t.rows[r].head == i {
		t.rows[r].head = d.next
	} else {
		for j := t.rows[r].head; j >= 0; j = t.decs[j].next {
			if t.decs[j].next == i {
				t.decs[j].next = d.next
				break
			}
		}
	}
	t.byID.remove(at)
	*d = drec{}
	t.freeD = append(t.freeD, i)
	t.release(r)
}

// prune removes the decisions that ran out at or before now and returns
// how many it removed.
func (t *table) prune(now int64) int {
	n := 0
	for i := range t.decs {
		if d := &t.decs[i]; d.used && d.expiry != 0 && d.expiry <= now {
			id := d.id
			at, _ := t.byID.find(hashID(id), func(j int32) bool { return j == int32(i) })
			t.removeDec(at, int32(i))
			n++
		}
	}
	return n
}

// rowOf returns the row of a prefix, added when missing.
func (t *table) rowOf(k pkey) int32 {
	h := hashKey(k)
	t.byKey.reserve(t.byKey.n + 1)
	at, r := t.byKey.find(h, func(r int32) bool { return t.rows[r].key() == k })
	if r >= 0 {
		return r
	}
	nr := row{hi: k.hi, lo: k.lo, bits: k.bits, head: -1, used: true}
	if n := len(t.freeR); n > 0 {
		r = t.freeR[n-1]
		t.freeR = t.freeR[:n-1]
		t.rows[r] = nr
	} else {
		r = int32(len(t.rows))
		t.rows = append(t.rows, nr)
		for b := range t.held {
			t.held[b] = append(t.held[b], held{})
		}
	}
	t.byKey.insert(at, h, r)
	return r
}

// release frees row r when no decision and no backend holds it.
func (t *table) release(r int32) {
	if t.rows[r].head >= 0 || !t.rows[r].used {
		return
	}
	for b := range t.held {
		if t.held[b][r].has {
			return
		}
	}
	k := t.rows[r].key()
	at, _ := t.byKey.find(hashKey(k), func(x int32) bool { return x == r })
	t.byKey.remove(at)
	t.rows[r] = row{head: -1}
	t.freeR = append(t.freeR, r)
}

// want returns what the decisions on row r ask for at now: the decision
// that runs out last wins (zero, never, beats everything), and among equal
// expiries the smaller origin, so that the result does not depend on the
// order of the decisions. It reports false when none runs at now.
func (t *table) want(r int32, now int64) (held, bool) {
	best := int32(-1)
	for i := t.rows[r].head; i >= 0; i = t.decs[i].next {
		if best < 0 || t.later(&t.decs[i], &t.decs[best]) {
			best = i
		}
	}
	if best < 0 {
		return held{}, false
	}
	d := &t.decs[best]
	if d.expiry != 0 && d.expiry <= now {
		return held{}, false
	}
	return held{expiry: d.expiry, origin: d.origin, has: true}, true
}

func (t *table) later(a, b *drec) bool {
	switch {
	case (a.expiry == 0) != (b.expiry == 0):
		return a.expiry == 0
	case a.expiry != b.expiry:
		return a.expiry > b.expiry
	default:
		return t.names.Name(a.origin) < t.names.Name(b.origin)
	}
}

// addBackend adds a column of held entries and returns its number.
func (t *table) addBackend() int {
	t.held = append(t.held, make([]held, len(t.rows), cap(t.rows)))
	return len(t.held) - 1
}

// setHeld records what backend b holds for row r; a row neither a
// decision nor a backend holds any more is freed.
func (t *table) setHeld(b int, r int32, h held) {
	t.held[b][r] = h
	if !h.has {
		t.release(r)
	}
}

// forget clears what backend b is known to hold, before it is read back.
func (t *table) forget(b int) {
	col := t.held[b]
	for r := range col {
		if col[r].has {
			col[r] = held{}
			t.release(int32(r))
		}
	}
}

// entry is the entry of row r with h's expiry and origin.
func (t *table) entry(r int32, h held) decision.Entry {
	en := decision.Entry{Prefix: t.rows[r].key().prefix(), Origin: t.names.Name(h.origin)}
	if h.expiry != 0 {
		en.Expiry = time.Unix(0, h.expiry).UTC()
	}
	return en
}

// hold is what a backend holding en holds.
func (t *table) hold(en decision.Entry) held {
	return held{expiry: nanos(en.Expiry), origin: t.origin(en.Origin), has: true}
}

func (t *table) origin(name string) uint32 { return t.names.ID(name) }

// same reports whether a backend holding h holds what w asks for: the same
// origin, and expiries within Tolerance of each other (a zero expiry only
// equals another zero expiry).
func same(h, w held) bool {
	if !h.has || h.origin != w.origin {
		return false
	}
	if h.expiry == 0 || w.expiry == 0 {
		return h.expiry == 0 && w.expiry == 0
	}
	d := h.expiry - w.expiry
	return d <= int64(Tolerance) && d >= -int64(Tolerance)
}

// nanos turns an expiry into Unix nanoseconds, 0 for never; times past
// the year 2262 are clamped, and times before 1970 (long expired) are 1.
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Year() >= 2262:
		return math.MaxInt64
	case t.Year() < 1970:
		return 1
	}
	return t.UnixNano()
}
