// Package frame builds and parses the Ethernet frames xdpgate's tests,
// benchmarks and traffic generator send through the XDP program. Parse is
// the reference model of the program's header walk: written separately from
// the C, in plain Go, so the two can be checked against each other.
package frame

import (
	"encoding/binary"
	"net/netip"
)

// EtherTypes the program knows.
const (
	EtherTypeIPv4   = 0x0800
	EtherTypeARP    = 0x0806
	EtherTypeVLAN   = 0x8100 // 802.1Q
	EtherTypeQinQ   = 0x88A8 // 802.1ad service tag
	EtherTypeIPv6   = 0x86DD
	EtherTypeLLDP   = 0x88CC
	ProtoUDP        = 17
	minEthernetSize = 60 // without FCS
)

// Spec describes a frame.
type Spec struct {
	Src, Dst netip.Addr
	// Tags are the VLAN tags, outermost first, as TPID/TCI pairs; use
	// Tag8021Q and Tag8021AD.
	Tags []Tag
	// EtherType overrides the type after the tags (e.g. ARP); zero means
	// the one of Src's family.
	EtherType uint16
	// OptionWords is the number of 32-bit IPv4 option words (IHL - 5).
	OptionWords int
	// Fragment makes an IPv4 non-first fragment (offset 185*8, MF set).
	Fragment bool
	// Payload bytes after the IP header (a UDP header and zeros).
	Payload int
	// Pad pads the frame to the 60-byte Ethernet minimum.
	Pad bool
}

// Tag is one VLAN tag.
type Tag struct{ TPID, TCI uint16 }

// Tag8021Q returns an 802.1Q tag for vid.
func Tag8021Q(vid uint16) Tag { return Tag{TPID: EtherTypeVLAN, TCI: vid & 0xfff} }

// Tag8021AD returns an 802.1ad (QinQ outer) tag for vid.
func Tag8021AD(vid uint16) Tag { return Tag{TPID: EtherTypeQinQ, TCI: vid & 0xfff} }

var (
	srcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	dstMAC = [6]byte{0x02, 0, 0, 0, 0, 0x02}
)

// Build returns the frame's bytes.
func Build(s Spec) []byte {
	b := make([]byte, 0, 128)
	b = append(b, dstMAC[:]...)
	b = append(b, srcMAC[:]...)
	for _, t := range s.Tags {
		b = binary.BigEndian.AppendUint16(b, t.TPID)
		b = binary.BigEndian.AppendUint16(b, t.TCI)
	}
	et := s.EtherType
	v4 := s.Src.Unmap().Is4() && !s.Src.Is4In6()
	if et == 0 {
		et = EtherTypeIPv6
		if v4 {
			et = EtherTypeIPv4
		}
	}
	b = binary.BigEndian.AppendUint16(b, et)
	switch et {
	case EtherTypeIPv4:
		b = appendIPv4(b, s)
	case EtherTypeIPv6:
		b = appendIPv6(b, s)
	default:
		b = append(b, make([]byte, 28)...) // an ARP-sized body
	}
	if s.Pad && len(b) < minEthernetSize {
		b = append(b, make([]byte, minEthernetSize-len(b))...)
	}
	return b
}

func appendIPv4(b []byte, s Spec) []byte {
	ihl := 5 + s.OptionWords
	total := ihl*4 + 8 + s.Payload
	src, dst := s.Src.As4(), s.Dst.As4()
	h := make([]byte, ihl*4)
	h[0] = 4<<4 | byte(ihl)
	binary.BigEndian.PutUint16(h[2:], uint16(total))
	binary.BigEndian.PutUint16(h[4:], 0x1234)
	if s.Fragment {
		binary.BigEndian.PutUint16(h[6:], 0x2000|185) // MF, offset 1480
	}
	h[8] = 64
	h[9] = ProtoUDP
	copy(h[12:], src[:])
	copy(h[16:], dst[:])
	for i := 20; i < len(h); i++ {
		h[i] = 1 // NOP options
	}
	binary.BigEndian.PutUint16(h[10:], Checksum(h))
	b = append(b, h...)
	return appendUDP(b, s.Payload)
}

func appendIPv6(b []byte, s Spec) []byte {
	src, dst := s.Src.As16(), s.Dst.As16()
	h := make([]byte, 40)
	h[0] = 6 << 4
	binary.BigEndian.PutUint16(h[4:], uint16(8+s.Payload))
	h[6] = ProtoUDP
	h[7] = 64
	copy(h[8:], src[:])
	copy(h[24:], dst[:])
	b = append(b, h...)
	return appendUDP(b, s.Payload)
}

func appendUDP(b []byte, payload int) []byte {
	u := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], 9)
	binary.BigEndian.PutUint16(u[4:], uint16(8+payload))
	return append(b, u...)
}

// Checksum is the Internet checksum (RFC 1071) of an IPv4 header whose
// checksum field is zero; over a header with its checksum set, it is 0.
func Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Kind is what Parse found.
type Kind int

const (
	KindMalformed Kind = iota // cut short or a bad IP header: fail open
	KindNotIP                 // another EtherType: not judged
	KindIP                    // Source is valid
)

// Parse is the reference model of the program's header walk: it returns
// the source address the program judges a frame by. An IPv4-mapped IPv6
// source is returned unmapped, as the program checks it as IPv4.
func Parse(b []byte) (netip.Addr, Kind) {
	if len(b) < 14 {
		return netip.Addr{}, KindMalformed
	}
	et := binary.BigEndian.Uint16(b[12:])
	off := 14
	for i := 0; i < 2 && (et == EtherTypeVLAN || et == EtherTypeQinQ); i++ {
		if len(b) < off+4 {
			return netip.Addr{}, KindMalformed
		}
		et = binary.BigEndian.Uint16(b[off+2:])
		off += 4
	}
	switch et {
	case EtherTypeIPv4:
		if len(b) < off+20 {
			return netip.Addr{}, KindMalformed
		}
		ihl := int(b[off] & 0xf)
		if b[off]>>4 != 4 || ihl < 5 || len(b) < off+ihl*4 {
			return netip.Addr{}, KindMalformed
		}
		return netip.AddrFrom4([4]byte(b[off+12 : off+16])), KindIP
	case EtherTypeIPv6:
		if len(b) < off+40 || b[off]>>4 != 6 {
			return netip.Addr{}, KindMalformed
		}
		return netip.AddrFrom16([16]byte(b[off+8 : off+24])).Unmap(), KindIP
	default:
		return netip.Addr{}, KindNotIP
	}
}
