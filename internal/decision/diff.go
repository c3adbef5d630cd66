package decision

import (
	"cmp"
	"net/netip"
	"sync"
	"time"
)

// Diff computes the writes that turn current (what a backend enforces)
// into desired (what the store says): upserts for the prefixes missing from
// current or held there with another origin or expiry, deletes for the
// prefixes current holds and desired does not.
//
// Two expiries within tolerance of each other are equal: LAPI sends
// relative durations and every pull recomputes the expiries from them, so
// they drift by milliseconds, and a resync that changes nothing must write
// nothing. A zero (never) expiry only equals another zero expiry.
//
// Neither input is modified and neither needs to be sorted. Both outputs
// are sorted by prefix (ComparePrefix). A prefix held twice in desired is
// upserted at most once, with its last entry; a prefix held twice in
// current is compared by its last entry and deleted at most once.
//
// Diff sorts compact keys of both inputs with a radix sort and merges them:
// no map, and memory read mostly in order, which is what keeps 100k
// entries in a few milliseconds.
func Diff(desired, current []Entry, tolerance time.Duration) (upserts []Entry, deletes []netip.Prefix) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	dk := sc.sorted(&sc.desired, desired)
	ck := sc.sorted(&sc.current, current)

	i, j := 0, 0
	for i < len(dk) || j < len(ck) {
		// Skip to the last entry of a run of equal keys.
		for i+1 < len(dk) && dk[i+1].pkey() == dk[i].pkey() {
			i++
		}
		for j+1 < len(ck) && ck[j+1].pkey() == ck[j].pkey() {
			j++
		}
		var c int
		switch {
		case i == len(dk):
			c = 1
		case j == len(ck):
			c = -1
		default:
			c = dk[i].pkey().compare(ck[j].pkey())
		}
		switch {
		case c < 0:
			upserts = append(upserts, desired[dk[i].idx])
			i++
		case c > 0:
			deletes = append(deletes, current[ck[j].idx].Prefix)
			j++
		default:
			if d := &desired[dk[i].idx]; !Same(*d, current[ck[j].idx], tolerance) {
				upserts = append(upserts, *d)
			}
			i++
			j++
		}
	}
	return upserts, deletes
}

// Same reports whether a and b are the same entry: same prefix, same
// origin, and expiries within tolerance of each other.
func Same(a, b Entry, tolerance time.Duration) bool {
	if a.Prefix != b.Prefix || a.Origin != b.Origin {
		return false
	}
	if a.Expiry.IsZero() || b.Expiry.IsZero() {
		return a.Expiry.IsZero() && b.Expiry.IsZero()
	}
	d := a.Expiry.Sub(b.Expiry)
	return d <= tolerance && d >= -tolerance
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

// skey is an entry's key, flattened to 24 bytes, and its index in the
// caller's slice.
type skey struct {
	hi, lo uint64
	bits   int16
	idx    int32
}

func (k *skey) pkey() pkey { return pkey{hi: k.hi, lo: k.lo, bits: k.bits} }

type scratch struct {
	desired, current, tmp []skey
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// sorted fills *buf with the keys of es, sorted stably. The result may
// end up in either buffer; the other one becomes sc.tmp.
func (sc *scratch) sorted(buf *[]skey, es []Entry) []skey {
	ks := grow(*buf, len(es))
	for i := range es {
		k := keyOf(es[i].Prefix)
		ks[i] = skey{hi: k.hi, lo: k.lo, bits: k.bits, idx: int32(i)}
	}
	out, spare := radixSort(ks, grow(sc.tmp, len(es)))
	*buf, sc.tmp = out, spare
	return out
}

func grow(s []skey, n int) []skey {
	if cap(s) < n {
		return make([]skey, n, n+n/8)
	}
	return s[:n]
}

// radixSort sorts a stably by key with an LSD radix sort over bytes, using
// tmp (as long as a) as the other buffer. It returns the buffer that holds
// the result and the other one.
//
// The digits, least significant first, are the prefix length, the 16
// address bytes (lo then hi) and the family. A digit equal in every key
// costs no pass, so a set of IPv4 addresses takes four.
func radixSort(a, tmp []skey) (sorted, spare []skey) {
	if len(a) < 2 {
		return a, tmp
	}
	const digits = 1 + 16 + 1
	var count [digits][256]int32
	for i := range a {
		k := &a[i]
		count[0][uint8(k.bits)]++
		lo, hi := k.lo, k.hi
		for b := range 8 {
			count[1+b][uint8(lo>>(8*b))]++
			count[9+b][uint8(hi>>(8*b))]++
		}
		count[17][uint8(uint16(k.bits)>>8)]++
	}
	src, dst := a, tmp
	for d := range digits {
		c := &count[d]
		var word int // 0: bits, 1: lo, 2: hi
		var shift uint
		switch {
		case d == 0:
		case d <= 8:
			word, shift = 1, uint(8*(d-1))
		case d <= 16:
			word, shift = 2, uint(8*(d-9))
		default:
			shift = 8
		}
		if c[digitOf(&src[0], word, shift)] == int32(len(src)) {
			continue // every key has this digit
		}
		var sum int32
		for b := range c {
			sum, c[b] = sum+c[b], sum
		}
		switch word {
		case 0:
			for i := range src {
				b := uint8(uint16(src[i].bits) >> shift)
				dst[c[b]] = src[i]
				c[b]++
			}
		case 1:
			for i := range src {
				b := uint8(src[i].lo >> shift)
				dst[c[b]] = src[i]
				c[b]++
			}
		default:
			for i := range src {
				b := uint8(src[i].hi >> shift)
				dst[c[b]] = src[i]
				c[b]++
			}
		}
		src, dst = dst, src
	}
	return src, dst
}

func digitOf(k *skey, word int, shift uint) uint8 {
	switch word {
	case 0:
		return uint8(uint16(k.bits) >> shift)
	case 1:
		return uint8(k.lo >> shift)
	}
	return uint8(k.hi >> shift)
}
