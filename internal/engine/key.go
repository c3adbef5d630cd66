package engine

import (
	"encoding/binary"
	"net/netip"
)

// pkey is a prefix as plain data, for the table's rows: netip.Prefix holds
// a pointer (the zone handle of its Addr), which would give the garbage
// collector a pointer a row to scan.
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
