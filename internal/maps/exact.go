package maps

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/xdpgate/xdpgate/bpf"
)

// exactCache keeps exact_v4, the cache in front of bans_v4 (see
// bpf/xdpgate.c): an array of buckets of four slots, each an address with
// its ban's expiry and origin, found by hash64 of the address. bans_v4 stays
// the complete table; the cache holds what fits and marks a bucket that
// could not hold every ban hashed to it (overflow), so that the program
// looks in bans_v4 only for those.
//
// Invariants, kept by Maps.Apply's order of writes: a slot only holds a
// ban that bans_v4 holds, with the same expiry and origin once Apply
// returns; and a ban of bans_v4 that is in no slot of its bucket has the
// bucket's overflow set. Overflow can be stale (set, with nothing left to
// find): a lookup for nothing, never a wrong verdict; Rebuild clears it.
//
// The cache is written with map updates, not through a mapping: at the
// default capacity it is 32 MiB, which would count in the agent's memory.
// A bucket update is a copy of 64 bytes, not atomic: the program may see a
// slot half written, which only moves the moment a ban starts or stops by
// one packet.
type exactCache struct {
	m       *ebpf.Map
	buckets uint32
	nbits   uint32
	// used marks the buckets that hold a slot or an overflow mark, when
	// known is set: a bucket not marked is written without being read
	// first. Known from the start over an empty bans_v4, and after a
	// rebuild. 1 bit a bucket: 64 KiB at the default capacity.
	used  []uint64
	known bool
}

type bucket = bpf.XdpgateExactV4Bucket

const slots = len(bucket{}.Addr)

// newExactCache wraps the cache. With empty, bans_v4 holds nothing, so no
// slot of the cache matters: every bucket may be written unread.
func newExactCache(m *ebpf.Map, empty bool) (*exactCache, error) {
	n := m.MaxEntries()
	if n == 0 || n&(n-1) != 0 {
		return nil, fmt.Errorf("map %s: %d buckets is not a power of two", bpf.XdpgateMapExactV4, n)
	}
	return &exactCache{m: m, buckets: n, nbits: uint32(bits.TrailingZeros32(n)), used: make([]uint64, (n+63)/64), known: empty}, nil
}

// forgetOnError drops what is known of the buckets when a write failed
// part way: from then on they are read before being written, until the
// next rebuild.
func (c *exactCache) forgetOnError(err *error) {
	if *err != nil {
		c.known = false
	}
}

func (c *exactCache) isUsed(idx uint32) bool { return c.used[idx/64]&(1<<(idx%64)) != 0 }

// mark records whether bucket idx, as just written, holds anything.
func (c *exactCache) mark(idx uint32, b *bucket) {
	if b.Overflow != 0 || b.Addr != [slots][4]byte{} {
		c.used[idx/64] |= 1 << (idx % 64)
	} else {
		c.used[idx/64] &^= 1 << (idx % 64)
	}
}

// index is the bucket of an address, given as v4Key gives it.
func (c *exactCache) index(key uint32) uint32 { return hash64(uint64(key), c.nbits) }

// exactOp is one change: an upsert of key with val, or a delete of key.
type exactOp struct {
	idx uint32
	seq int32 // the op's place in its batch: ops on one key apply in order
	key uint32
	val bpf.XdpgateBan
	del bool
}

func byBucket(a, b exactOp) int {
	if c := cmp.Compare(a.idx, b.idx); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// slotKey is the address of slot i as v4Key gives it.
func slotKey(b *bucket, i int) uint32 { return binary.LittleEndian.Uint32(b.Addr[i][:]) }

// apply changes one bucket.
func (op *exactOp) apply(b *bucket) {
	for i := range slots {
		if slotKey(b, i) == op.key && op.key != 0 {
			if op.del {
				b.Addr[i], b.ExpiresNs[i], b.Origin[i] = [4]byte{}, 0, 0
			} else {
				b.ExpiresNs[i], b.Origin[i] = op.val.ExpiresNs, op.val.Origin
			}
			return
		}
	}
	if op.del {
		return // in no slot: in bans_v4 alone, behind the overflow mark
	}
	if op.key != 0 {
		for i := range slots {
			if slotKey(b, i) == 0 {
				binary.LittleEndian.PutUint32(b.Addr[i][:], op.key)
				b.ExpiresNs[i], b.Origin[i] = op.val.ExpiresNs, op.val.Origin
				return
			}
		}
	}
	// No room, or 0.0.0.0, which no slot can tell from an empty one.
	b.Overflow = 1
}

// scanChunk is how many buckets the scan path reads and writes at a time:
// 512 KiB of buckets.
const scanChunk = 8192

// apply applies ops, in order for each bucket. A few buckets are read and
// written one at a time; when ops touch more than a small share of the
// cache, it is read in chunks and the changed buckets written back in
// batches.
func (c *exactCache) apply(ops []exactOp) (err error) {
	if len(ops) == 0 {
		return nil
	}
	defer c.forgetOnError(&err)
	for i := range ops {
		ops[i].idx, ops[i].seq = c.index(ops[i].key), int32(i)
	}
	slices.SortFunc(ops, byBucket)

	// The buckets the ops touch, and which of them must be read first.
	var touched, unread []uint32
	for i, op := range ops {
		if i > 0 && ops[i-1].idx == op.idx {
			continue
		}
		touched = append(touched, op.idx)
		if !c.known || c.isUsed(op.idx) {
			unread = append(unread, op.idx)
		}
	}
	if len(unread) > int(c.buckets/16) {
		// Reading most of the cache: in chunks, in order.
		return c.applyScan(ops)
	}
	vals := make([]bucket, len(touched))
	for i, j := 0, 0; i < len(touched) && j < len(unread); i++ {
		if touched[i] != unread[j] {
			continue
		}
		if err := c.m.Lookup(touched[i], &vals[i]); err != nil {
			return fmt.Errorf("read %s: %w", bpf.XdpgateMapExactV4, err)
		}
		j++
	}
	for i, k := 0, 0; i < len(ops); i++ {
		for touched[k] != ops[i].idx {
			k++
		}
		ops[i].apply(&vals[k])
	}
	for len(touched) > 0 {
		n := min(len(touched), scanChunk)
		if len(touched) == 1 {
			// One bucket, as a delta usually has: no batch.
			if err := c.m.Update(touched[0], &vals[0], ebpf.UpdateAny); err != nil {
				return fmt.Errorf("update %s: %w", bpf.XdpgateMapExactV4, err)
			}
		} else if _, err := c.m.BatchUpdate(touched[:n], vals[:n], nil); err != nil {
			return fmt.Errorf("update %s: %w", bpf.XdpgateMapExactV4, err)
		}
		for i := range n {
			c.mark(touched[i], &vals[i])
		}
		touched, vals = touched[n:], vals[n:]
	}
	return nil
}

// applyScan applies sorted ops by reading the whole cache in chunks and
// writing back the buckets they change.
func (c *exactCache) applyScan(ops []exactOp) error {
	var wk []uint32
	var wv []bucket
	return c.scan(func(first uint32, chunk []bucket) ([]uint32, []bucket) {
		wk, wv = wk[:0], wv[:0]
		for len(ops) > 0 && ops[0].idx < first+uint32(len(chunk)) {
			idx := ops[0].idx
			for len(ops) > 0 && ops[0].idx == idx {
				ops[0].apply(&chunk[idx-first])
				ops = ops[1:]
			}
			wk, wv = append(wk, idx), append(wv, chunk[idx-first])
		}
		return wk, wv
	})
}

// scan passes the cache to fn a chunk at a time, and writes back the
// buckets fn returns.
func (c *exactCache) scan(fn func(first uint32, chunk []bucket) ([]uint32, []bucket)) error {
	size := min(c.buckets, scanChunk)
	keys := make([]uint32, size)
	vals := make([]bucket, size)
	var cursor ebpf.MapBatchCursor
	for first := uint32(0); first < c.buckets; first += size {
		n, err := c.m.BatchLookup(&cursor, keys, vals, nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("read %s: %w", bpf.XdpgateMapExactV4, err)
		}
		if n != int(size) || keys[0] != first {
			return fmt.Errorf("read %s: buckets %d.. came back as %d from %d", bpf.XdpgateMapExactV4, first, n, keys[0])
		}
		if wk, wv := fn(first, vals); len(wk) > 0 {
			if _, err := c.m.BatchUpdate(wk, wv, nil); err != nil {
				return fmt.Errorf("update %s: %w", bpf.XdpgateMapExactV4, err)
			}
			for i := range wk {
				c.mark(wk[i], &wv[i])
			}
		}
	}
	return nil
}

// rebuild makes the cache hold exactly the given bans of bans_v4 (keys as
// v4Key gives them): every slot of every bucket is rewritten, and the
// overflow marks are set where they are needed only.
func (c *exactCache) rebuild(keys []uint32, vals []bpf.XdpgateBan) (err error) {
	ops := make([]exactOp, len(keys))
	for i := range keys {
		ops[i] = exactOp{key: keys[i], val: vals[i], idx: c.index(keys[i]), seq: int32(i)}
	}
	slices.SortFunc(ops, byBucket)
	keys2 := make([]uint32, min(c.buckets, scanChunk))
	defer func() {
		// Every bucket was written: what is marked is all there is.
		c.known = err == nil
	}()
	return c.scan(func(first uint32, chunk []bucket) ([]uint32, []bucket) {
		clear(chunk)
		for len(ops) > 0 && ops[0].idx < first+uint32(len(chunk)) {
			ops[0].apply(&chunk[ops[0].idx-first])
			ops = ops[1:]
		}
		for i := range keys2 {
			keys2[i] = first + uint32(i)
		}
		return keys2, chunk
	})
}
