package engine

// index finds rows of a slice by key: an open-addressing hash table with
// linear probing whose slots hold a row number and the key's hash, 8 bytes
// a slot. A map[pkey]int32 of 100k keys takes 5 MB; this index takes 1 MB,
// holds no key (the rows do), and probes compare hashes, so a row is read
// only when its hash matches.
type index struct {
	slots []slot
	n     int
}

type slot struct {
	row  uint32 // the row plus one; 0 is an empty slot
	hash uint32
}

// maxLoad is the share of slots in use at most, in eighths.
const maxLoad = 7

// find returns the slot that holds the row with hash h for which eq is
// true, or the empty slot where such a row would go, and the row, -1 when
// none. Call reserve first when the row may be inserted.
func (x *index) find(h uint32, eq func(row int32) bool) (at int, row int32) {
	if len(x.slots) == 0 {
		return -1, -1
	}
	mask := uint32(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s.row == 0 {
			return int(i), -1
		}
		if s.hash == h && eq(int32(s.row-1)) {
			return int(i), int32(s.row - 1)
		}
	}
}

// reserve makes room for n rows, so that the slot find returns stays
// valid for an insert.
func (x *index) reserve(n int) {
	size := len(x.slots)
	if n*8 <= size*maxLoad {
		return
	}
	size = max(size, 16)
	for n*8 > size*maxLoad {
		size *= 2
	}
	old := x.slots
	x.slots = make([]slot, size)
	mask := uint32(size - 1)
	for _, s := range old {
		if s.row == 0 {
			continue
		}
		i := s.hash & mask
		for x.slots[i].row != 0 {
			i = (i + 1) & mask
		}
		x.slots[i] = s
	}
}

// insert puts row into the empty slot at, which find returned.
func (x *index) insert(at int, h uint32, row int32) {
	x.slots[at] = slot{row: uint32(row) + 1, hash: h}
	x.n++
}

// remove empties the slot at and moves back the slots after it that
// would otherwise not be found any more (no tombstones).
func (x *index) remove(at int) {
	mask := uint32(len(x.slots) - 1)
	i := uint32(at)
	x.slots[i] = slot{}
	x.n--
	for j := (i + 1) & mask; x.slots[j].row != 0; j = (j + 1) & mask {
		home := x.slots[j].hash & mask
		// The slot stays when its home is in (i, j], cyclically.
		if i <= j && i < home && home <= j || i > j && (i < home || home <= j) {
			continue
		}
		x.slots[i] = x.slots[j]
		x.slots[j] = slot{}
		i = j
	}
}

// clear empties the index and keeps its size.
func (x *index) clear() {
	clear(x.slots)
	x.n = 0
}

func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func hashID(id int64) uint32 { return uint32(mix64(uint64(id))) }

func hashKey(k pkey) uint32 {
	return uint32(mix64(k.hi ^ mix64(k.lo^uint64(uint16(k.bits))<<48)))
}
