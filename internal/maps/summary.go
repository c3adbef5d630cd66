package maps

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// The hashes below mirror bpf/xdpgate.c exactly; TestSummaryMatchesProgram
// and the property test hold the two together.

const hashMul = 0x9E3779B97F4A7C15

func hash64(x uint64, nbits uint32) uint32 {
	return uint32((x * hashMul) >> (64 - nbits))
}

// v4Key is an IPv4 address as the program holds it: the wire bytes read as
// a native-endian integer (bpfel: little-endian).
func v4Key(a netip.Addr) uint32 {
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}

func v6ExactBit(a [16]byte, nbits uint32) uint32 {
	lo := binary.LittleEndian.Uint64(a[0:8])
	hi := binary.LittleEndian.Uint64(a[8:16])
	return hash64(lo*hashMul+hi, nbits)
}

func v6Bucket32(lo uint64) uint64 { return lo&0xffffffff | 32<<56 }
func v6Bucket48(lo uint64) uint64 { return lo&0xffffffffffff | 48<<56 }

// summary is a bitmap in an mmapable array map: word i holds bits
// 64i..64i+63. It is written only by this process (under Maps.mu) and read
// by the program; a 64-bit aligned store is atomic, so the program sees
// every word either before or after a change.
type summary struct {
	name  string
	mem   *ebpf.Memory
	words uint32
	nbits uint32 // log2 of the bit count
}

func newSummary(name string, m *ebpf.Map) (*summary, error) {
	mem, err := m.Memory()
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", name, err)
	}
	words := m.MaxEntries()
	if words == 0 || words&(words-1) != 0 {
		return nil, fmt.Errorf("map %s: %d words is not a power of two", name, words)
	}
	return &summary{name: name, mem: mem, words: words, nbits: uint32(bits.TrailingZeros32(words)) + 6}, nil
}

func (s *summary) word(i uint32) uint64 {
	var b [8]byte
	_, _ = s.mem.ReadAt(b[:], int64(i)*8)
	return binary.NativeEndian.Uint64(b[:])
}

func (s *summary) setWord(i uint32, w uint64) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], w)
	_, _ = s.mem.WriteAt(b[:], int64(i)*8)
}

func (s *summary) set(bit uint32) {
	bit &= s.words*64 - 1
	i, m := bit>>6, uint64(1)<<(bit&63)
	if w := s.word(i); w&m == 0 {
		s.setWord(i, w|m)
	}
}

// setManyWindow is the span of the bitmap setMany changes at a time.
const setManyWindow = 64 << 10

// setMany sets many bits at once. A large batch is grouped by window of
// the bitmap (a counting sort, one pass), and each window that holds some
// of its bits is read once, changed in a copy and written back in one
// copy: much faster than a read and a write per bit, with buffers that
// grow with the batch, not with the bitmap (a 1M-entry map has an 8 MiB
// bitmap). It is safe even though a copy is not atomic per word, because
// every byte written holds all the bits it held before.
func (s *summary) setMany(bitsToSet []uint32) {
	if len(bitsToSet) < int(s.words/64) {
		for _, b := range bitsToSet {
			s.set(b)
		}
		return
	}
	mask := s.words*64 - 1
	size := min(s.words*8, setManyWindow) // bytes, a power of two
	shift := uint(bits.TrailingZeros32(size * 8))
	windows := s.words * 8 / size
	start := make([]int, windows+1)
	for _, b := range bitsToSet {
		start[(b&mask)>>shift+1]++
	}
	for w := range windows {
		start[w+1] += start[w]
	}
	grouped := make([]uint32, len(bitsToSet))
	next := slices.Clone(start[:windows])
	for _, b := range bitsToSet {
		b &= mask
		w := b >> shift
		grouped[next[w]] = b
		next[w]++
	}
	buf := make([]byte, size)
	for w := range windows {
		in := grouped[start[w]:start[w+1]]
		if len(in) == 0 {
			continue
		}
		base := w << shift
		_, _ = s.mem.ReadAt(buf, int64(base/8))
		for _, b := range in {
			b -= base
			buf[b>>3] |= 1 << (b & 7) // little-endian words: bit i is in byte i/8
		}
		_, _ = s.mem.WriteAt(buf, int64(base/8))
	}
}

// setRange sets bits [first, first+n).
func (s *summary) setRange(first, n uint32) {
	for n > 0 {
		i, off := first>>6, first&63
		span := min(64-off, n)
		mask := ^uint64(0)
		if span < 64 {
			mask = (uint64(1)<<span - 1) << off
		}
		if w := s.word(i); w&mask != mask {
			s.setWord(i, w|mask)
		}
		first += span
		n -= span
	}
}

// bitmap is an off-line copy of a summary, filled by a rebuild.
type bitmap []uint64

func (s *summary) fresh() bitmap { return make(bitmap, s.words) }

func (b bitmap) set(bit uint32) {
	bit &= uint32(len(b))*64 - 1
	b[bit>>6] |= 1 << (bit & 63)
}

func (b bitmap) setRange(first, n uint32) {
	for i := uint32(0); i < n; i++ {
		b.set(first + i)
	}
}

// store writes the words that differ. b is computed from every entry the
// maps hold, so each word it writes keeps every bit an entry needs: the
// program never misses a ban, even between two stores.
func (s *summary) store(b bitmap) (changed int) {
	for i, w := range b {
		if s.word(uint32(i)) != w {
			s.setWord(uint32(i), w)
			changed++
		}
	}
	return changed
}

// bitSetter is what a summary and an off-line bitmap share.
type bitSetter interface {
	set(bit uint32)
	setRange(first, n uint32)
}

// markV4Range marks the /24s a v4 range covers (summary_v4_range).
func markV4Range(s bitSetter, p netip.Prefix) {
	start := binary.BigEndian.Uint32(p.Addr().AsSlice()) >> 8
	if p.Bits() >= 24 {
		s.set(start)
		return
	}
	s.setRange(start, 1<<(24-p.Bits()))
}

// markV6Range marks a v6 range in summary_v6_range: its /48 when it is /48
// or longer, its /32 when /32 to /47, and every /32 it covers when shorter.
// A range shorter than /12 would mark over a million buckets: it marks all.
func markV6Range(s bitSetter, p netip.Prefix, nbits uint32) {
	a := p.Addr().As16()
	lo := binary.LittleEndian.Uint64(a[0:8])
	switch {
	case p.Bits() >= 48:
		s.set(hash64(v6Bucket48(lo), nbits))
	case p.Bits() >= 32:
		s.set(hash64(v6Bucket32(lo), nbits))
	case p.Bits() < 12:
		s.setRange(0, 1<<nbits)
	default:
		first := binary.BigEndian.Uint32(a[0:4])
		for i := uint32(0); i < 1<<(32-p.Bits()); i++ {
			le := uint64(bits.ReverseBytes32(first + i))
			s.set(hash64(v6Bucket32(le), nbits))
		}
	}
}

// markAllow marks the /16s an allowlist prefix covers.
func markAllow(s bitSetter, p netip.Prefix) {
	var first uint32
	if p.Addr().Is4() {
		first = binary.BigEndian.Uint32(p.Addr().AsSlice()) >> 16
	} else {
		a := p.Addr().As16()
		first = uint32(a[0])<<8 | uint32(a[1])
	}
	if p.Bits() >= 16 {
		s.set(first)
		return
	}
	s.setRange(first, 1<<(16-p.Bits()))
}
