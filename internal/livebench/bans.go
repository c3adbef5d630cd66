package livebench

import (
	"math/rand/v2"
	"net/netip"
)

// reserved are the IPv4 blocks a ban set leaves out: special-purpose
// addresses, the allowlist of Allowlist, and the benchmarking block
// 198.18.0.0/15 that legitimate sources come from.
var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// BanSet returns n distinct public IPv4 addresses drawn at random (the same
// ones for the same seed), the shape of a community blocklist: single
// addresses spread over the whole address space.
func BanSet(n int, seed uint64) []netip.Addr {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	seen := make(map[netip.Addr]struct{}, n)
	out := make([]netip.Addr, 0, n)
	for len(out) < n {
		v := r.Uint32()
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if isReserved(a) {
			continue
		}
		if _, dup := seen[a]; dup {
			continue
		}
		seen[a] = struct{}{}
		out = append(out, a)
	}
	return out
}

func isReserved(a netip.Addr) bool {
	for _, p := range reserved {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Allowlist is the allowlist both backends get, as in the reference
// deployment: RFC 1918 and the carrier-grade NAT block a tailnet uses.
func Allowlist() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
	}
}

// LegitSources returns n addresses of 198.18.0.0/15 (RFC 2544's
// benchmarking block): neither banned nor allowlisted, they take the miss
// path of every lookup, as an ordinary client does.
func LegitSources(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{198, 18, byte((i + 1) >> 8), byte(i + 1)})
	}
	return out
}

// Mix returns the slots of a flood to dst: every legitEvery-th slot (the
// last of each group) is a legitimate source sending to legitPort, the
// others cycle through the banned sources, sending to floodPort.
func Mix(size int, banned, legit []netip.Addr, legitEvery int, dst netip.Addr, floodPort, legitPort uint16) []Slot {
	out := make([]Slot, size)
	var b, l int
	for i := range out {
		if legitEvery > 0 && i%legitEvery == legitEvery-1 {
			out[i] = Slot{Src: legit[l%len(legit)], Dst: dst, DstPort: legitPort}
			l++
			continue
		}
		out[i] = Slot{Src: banned[b%len(banned)], Dst: dst, DstPort: floodPort}
		b++
	}
	return out
}

// LegitEmitted returns how many of the first n frames of a Mix with
// legitEvery came from legitimate sources, given a slot table whose size
// is a multiple of legitEvery.
func LegitEmitted(n uint64, legitEvery int) uint64 {
	if legitEvery <= 0 {
		return 0
	}
	return n / uint64(legitEvery)
}
