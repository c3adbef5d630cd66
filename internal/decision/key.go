package decision

import (
	"encoding/binary"
	"math"
	"net/netip"
	"time"
)

// pkey is a prefix as plain data, for map keys, the store's slots and
// sorting. netip.Prefix holds a pointer (the zone handle of its Addr),
// which makes maps keyed by it slower to hash and gives the garbage
// collector 100k more pointers to scan.
type pkey struct {
	hi, lo uint64 // the address as 16 bytes; IPv4 in its ::ffff:0:0/96 form
	bits   int16  // the prefix length, plus v6Flag for IPv6
}

const v6Flag = 256

func keyOf(p netip.Prefix) pkey {
	a := p.Addr()
	b := a.As16()
	bits := int16(p.Bits())
	if a.Is6() {
		bits += v6Flag
	}
	return pkey{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]), bits: bits}
}

func (k pkey) prefix() netip.Prefix {
	if k.bits < v6Flag {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(k.lo >> 24), byte(k.lo >> 16), byte(k.lo >> 8), byte(k.lo)}), int(k.bits))
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(k.bits-v6Flag))
}

// compare orders keys as ComparePrefix orders valid prefixes: IPv4 first,
// then by address, then by length. It is exactly the order radixSort
// sorts in (family, then the 16 address bytes, then the length), for any
// key, so that Diff's merge never sees the two disagree.
func (k pkey) compare(o pkey) int {
	kb, ob := uint16(k.bits), uint16(o.bits)
	switch {
	case kb>>8 != ob>>8:
		return cmpU64(uint64(kb>>8), uint64(ob>>8))
	case k.hi != o.hi:
		return cmpU64(k.hi, o.hi)
	case k.lo != o.lo:
		return cmpU64(k.lo, o.lo)
	case uint8(kb) != uint8(ob):
		return cmpU64(uint64(uint8(kb)), uint64(uint8(ob)))
	}
	return 0
}

func cmpU64(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}

// Expiries are kept as Unix nanoseconds, 0 for never; times past the year
// 2262 are clamped.
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

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
