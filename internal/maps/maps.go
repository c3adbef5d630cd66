// Package maps gives typed access to xdpgate's BPF maps in terms of
// netip.Prefix: it routes each ban to the map that holds it (exact /32 and
// /128 bans to hashes, ranges to LPM tries), keeps the summaries in front of
// them a superset of their contents, and converts expiries between wall
// time and the CLOCK_BOOTTIME nanoseconds the program compares against.
//
// *Maps is the XDP enforcement backend: it implements decision.Backend.
package maps

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdpgate/xdpgate/bpf"
	"github.com/xdpgate/xdpgate/internal/decision"
)

// ErrMapFull is wrapped by the error Apply returns when a map has no room.
var ErrMapFull = errors.New("map is full")

// FullError names the map that ran out of room and its capacity.
type FullError struct {
	Map  string
	Size uint32
}

func (e *FullError) Error() string {
	return fmt.Sprintf("map %s is full (%d entries): raise its size in the config", e.Map, e.Size)
}

// Unwrap makes errors.Is(err, ErrMapFull) hold.
func (e *FullError) Unwrap() error { return ErrMapFull }

// MaxOrigins is how many distinct origin names the program can count apart.
// Origin 0 is "unknown"; when the table is full, new origins count as it.
const MaxOrigins = 256

// batchSize bounds one batch syscall, to keep the kernel's copies small.
const batchSize = 1 << 14

// Maps wraps the program's maps. It is safe for concurrent use; writes are
// serialised.
type Maps struct {
	m *bpf.XdpgateMaps

	exact                                *exactCache
	v4Range, v6, v6Range, allow4, allow6 *summary

	mu      sync.Mutex
	origins map[string]uint16
	names   [MaxOrigins]string
	// deletes since the summaries were last rebuilt: their bits may still
	// be set, costing a lookup but never a wrong verdict.
	staleDeletes int
	lastRebuild  int
}

// New wraps loaded (or pinned) maps. The Maps does not own them: closing
// them stays the caller's job.
func New(m *bpf.XdpgateMaps) (*Maps, error) {
	x := &Maps{m: m, origins: map[string]uint16{}}
	var err error
	for _, s := range []struct {
		dst  **summary
		name string
		m    *ebpf.Map
	}{
		{&x.v4Range, bpf.XdpgateMapSummaryV4Range, m.SummaryV4Range},
		{&x.v6, bpf.XdpgateMapSummaryV6, m.SummaryV6},
		{&x.v6Range, bpf.XdpgateMapSummaryV6Range, m.SummaryV6Range},
		{&x.allow4, bpf.XdpgateMapSummaryAllowV4, m.SummaryAllowV4},
		{&x.allow6, bpf.XdpgateMapSummaryAllowV6, m.SummaryAllowV6},
	} {
		if *s.dst, err = newSummary(s.name, s.m); err != nil {
			return nil, err
		}
	}
	var k bpf.XdpgateV4Addr
	empty := errors.Is(m.BansV4.NextKey(nil, &k), ebpf.ErrKeyNotExist)
	if x.exact, err = newExactCache(m.ExactV4, empty); err != nil {
		return nil, err
	}
	if err := x.loadOrigins(); err != nil {
		return nil, err
	}
	return x, nil
}

// Name implements decision.Backend.
func (x *Maps) Name() string { return "xdp" }

func (x *Maps) loadOrigins() error {
	x.names[0] = "unknown"
	var name bpf.XdpgateOriginName
	for id := uint32(1); id < MaxOrigins; id++ {
		if err := x.m.Origins.Lookup(id, &name); err != nil {
			return fmt.Errorf("read origins: %w", err)
		}
		s := cString(name.Name[:])
		if s == "" {
			continue
		}
		x.names[id] = s
		x.origins[s] = uint16(id)
	}
	return nil
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// originID returns the id of an origin name, assigning one if needed.
// Must hold x.mu.
func (x *Maps) originID(name string) (uint16, error) {
	if name == "" {
		return 0, nil
	}
	if id, ok := x.origins[name]; ok {
		return id, nil
	}
	for id := 1; id < MaxOrigins; id++ {
		if x.names[id] != "" {
			continue
		}
		var v bpf.XdpgateOriginName
		b := []byte(name)
		if len(b) > len(v.Name)-1 {
			b = b[:len(v.Name)-1]
		}
		for i, c := range b {
			v.Name[i] = int8(c)
		}
		if err := x.m.Origins.Put(uint32(id), &v); err != nil {
			return 0, fmt.Errorf("record origin %q: %w", name, err)
		}
		x.names[id] = name
		x.origins[name] = uint16(id)
		return uint16(id), nil
	}
	return 0, nil // table full: counted as "unknown"
}

// OriginName returns the name behind an origin id.
func (x *Maps) OriginName(id uint16) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if int(id) < len(x.names) && x.names[id] != "" {
		return x.names[id]
	}
	return "unknown"
}

// ---- Time.

// clock converts between wall time and CLOCK_BOOTTIME, which the program
// reads with bpf_ktime_get_boot_ns. One reading per batch keeps the
// conversions of a batch consistent with each other.
type clock struct {
	wall time.Time
	boot int64
}

func now() clock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return clock{wall: time.Now(), boot: ts.Nano()}
}

// toBoot returns the program's expiry for a wall-clock expiry: 0 for none,
// and at least 1 (already expired) for a time in the past.
func (c clock) toBoot(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	ns := c.boot + int64(t.Sub(c.wall))
	if ns < 1 {
		ns = 1
	}
	return uint64(ns)
}

func (c clock) fromBoot(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return c.wall.Add(time.Duration(int64(ns) - c.boot)).Round(time.Millisecond)
}

// ---- Keys.

// kind says which map holds a prefix.
type kind int

const (
	kindV4Exact kind = iota
	kindV4Range
	kindV6Exact
	kindV6Range
)

func classify(p netip.Prefix) (kind, netip.Prefix, error) {
	if !p.IsValid() {
		return 0, p, fmt.Errorf("invalid prefix %v", p)
	}
	a := p.Addr()
	if a.Zone() != "" {
		return 0, p, fmt.Errorf("prefix %v has a zone", p)
	}
	if a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		a = p.Addr()
	}
	p = p.Masked()
	switch {
	case a.Is4() && p.Bits() == 32:
		return kindV4Exact, p, nil
	case a.Is4():
		return kindV4Range, p, nil
	case p.Bits() == 128:
		return kindV6Exact, p, nil
	default:
		return kindV6Range, p, nil
	}
}

func lpmV4(p netip.Prefix) bpf.XdpgateLpmV4Key {
	return bpf.XdpgateLpmV4Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
}

func lpmV6(p netip.Prefix) bpf.XdpgateLpmV6Key {
	return bpf.XdpgateLpmV6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
}

func v4Addr(a netip.Addr) bpf.XdpgateV4Addr { return bpf.XdpgateV4Addr{Addr: a.As4()} }

// ---- Writes.

// Apply implements decision.Backend: it inserts or updates upserts and
// removes deletes, with batch syscalls for the exact hashes. It applies what
// it can; the error lists what it could not (a full map is a *FullError
// naming the map), and everything applied before the error stays.
//
// Summary bits are set before an entry is inserted, so the program never
// sees an entry its summary hides.
func (x *Maps) Apply(_ context.Context, upserts []decision.Entry, deletes []netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	c := now()
	var errs []error

	var (
		k4   []bpf.XdpgateV4Addr
		v4   []bpf.XdpgateBan
		k6   []bpf.XdpgateV6Addr
		v6   []bpf.XdpgateBan
		r4   []bpf.XdpgateLpmV4Key
		rv4  []bpf.XdpgateBan
		r6   []bpf.XdpgateLpmV6Key
		rv6  []bpf.XdpgateBan
		bad  int
		last error
		b6   []uint32
	)
	for _, e := range upserts {
		k, p, err := classify(e.Prefix)
		if err != nil {
			bad++
			last = err
			continue
		}
		id, err := x.originID(e.Origin)
		if err != nil {
			errs = append(errs, err)
		}
		val := bpf.XdpgateBan{ExpiresNs: c.toBoot(e.Expiry), Origin: id, Prefixlen: uint8(p.Bits())}
		switch k {
		case kindV4Exact:
			k4, v4 = append(k4, v4Addr(p.Addr())), append(v4, val)
		case kindV4Range:
			markV4Range(x.v4Range, p)
			r4, rv4 = append(r4, lpmV4(p)), append(rv4, val)
		case kindV6Exact:
			a := p.Addr().As16()
			b6 = append(b6, v6ExactBit(a, x.v6.nbits))
			k6, v6 = append(k6, bpf.XdpgateV6Addr{Addr: a}), append(v6, val)
		case kindV6Range:
			markV6Range(x.v6Range, p, x.v6Range.nbits)
			r6, rv6 = append(r6, lpmV6(p)), append(rv6, val)
		}
	}
	if bad > 0 {
		errs = append(errs, fmt.Errorf("%d invalid prefixes skipped, last: %w", bad, last))
	}
	x.v6.setMany(b6)
	// The cache gets the exact IPv4 bans once bans_v4 holds them: a slot
	// never holds a ban the table lacks.
	err4 := batchPut(x.m.BansV4, bpf.XdpgateMapBansV4, k4, v4)
	errs = append(errs, err4,
		x.cacheAfterPut(k4, v4, err4),
		batchPut(x.m.BansV6, bpf.XdpgateMapBansV6, k6, v6),
		eachPut(x.m.RangesV4, bpf.XdpgateMapRangesV4, r4, rv4),
		eachPut(x.m.RangesV6, bpf.XdpgateMapRangesV6, r6, rv6),
	)

	var d4 []bpf.XdpgateV4Addr
	var d6 []bpf.XdpgateV6Addr
	var dr4 []bpf.XdpgateLpmV4Key
	var dr6 []bpf.XdpgateLpmV6Key
	for _, p := range deletes {
		k, p, err := classify(p)
		if err != nil {
			continue // nothing so malformed was ever inserted
		}
		switch k {
		case kindV4Exact:
			d4 = append(d4, v4Addr(p.Addr()))
		case kindV4Range:
			dr4 = append(dr4, lpmV4(p))
		case kindV6Exact:
			d6 = append(d6, bpf.XdpgateV6Addr{Addr: p.Addr().As16()})
		case kindV6Range:
			dr6 = append(dr6, lpmV6(p))
		}
	}
	// Out of the cache first, so that the program stops matching before
	// the table entry goes.
	ops := make([]exactOp, len(d4))
	for i, k := range d4 {
		ops[i] = exactOp{key: v4Key(netip.AddrFrom4(k.Addr)), del: true}
	}
	if err := x.exact.apply(ops); err != nil {
		errs = append(errs, err)
	}
	n1, err1 := batchDelete(x.m.BansV4, bpf.XdpgateMapBansV4, d4)
	n2, err2 := batchDelete(x.m.BansV6, bpf.XdpgateMapBansV6, d6)
	n3, err3 := eachDelete(x.m.RangesV4, bpf.XdpgateMapRangesV4, dr4)
	n4, err4 := eachDelete(x.m.RangesV6, bpf.XdpgateMapRangesV6, dr6)
	errs = append(errs, err1, err2, err3, err4)
	x.staleDeletes += n1 + n2 + n3 + n4

	// Rebuild the summaries once stale bits are a quarter of what they
	// describe: misses that hit stale bits pay a lookup for nothing.
	if x.staleDeletes > 4096 && x.staleDeletes > x.lastRebuild/4 {
		if err := x.rebuildLocked(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cacheAfterPut puts into the cache the exact IPv4 bans batchPut wrote to
// bans_v4. When the put failed part way (a full map), only those bans_v4
// holds now go in.
func (x *Maps) cacheAfterPut(keys []bpf.XdpgateV4Addr, vals []bpf.XdpgateBan, putErr error) error {
	ops := make([]exactOp, 0, len(keys))
	for i := range keys {
		if putErr != nil {
			var have bpf.XdpgateBan
			if x.m.BansV4.Lookup(&keys[i], &have) != nil || have != vals[i] {
				continue
			}
		}
		ops = append(ops, exactOp{key: v4Key(netip.AddrFrom4(keys[i].Addr)), val: vals[i]})
	}
	return x.exact.apply(ops)
}

// batchPut writes keys and values with batch updates. A large batch is
// split over the CPUs: the kernel takes a lock per hash bucket, so
// concurrent batches into one map scale.
func batchPut[K any](m *ebpf.Map, name string, keys []K, vals []bpf.XdpgateBan) error {
	workers := min(runtime.NumCPU(), 4, len(keys)/(4*batchSize)+1)
	if workers <= 1 {
		return batchPutSerial(m, name, keys, vals)
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	per := (len(keys) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*per, min((w+1)*per, len(keys))
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = batchPutSerial(m, name, keys[lo:hi], vals[lo:hi])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func batchPutSerial[K any](m *ebpf.Map, name string, keys []K, vals []bpf.XdpgateBan) error {
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		done, err := m.BatchUpdate(keys[:n], vals[:n], nil)
		if err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
				return fmt.Errorf("%d of %d entries not written: %w", len(keys)-done, len(keys), &FullError{Map: name, Size: m.MaxEntries()})
			}
			return fmt.Errorf("update %s: %w", name, err)
		}
		keys, vals = keys[n:], vals[n:]
	}
	return nil
}

func eachPut[K any](m *ebpf.Map, name string, keys []K, vals []bpf.XdpgateBan) error {
	for i := range keys {
		if err := m.Put(&keys[i], &vals[i]); err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
				return fmt.Errorf("%d of %d entries not written: %w", len(keys)-i, len(keys), &FullError{Map: name, Size: m.MaxEntries()})
			}
			return fmt.Errorf("update %s: %w", name, err)
		}
	}
	return nil
}

// batchDelete deletes keys; a key that is already gone is not an error. The
// kernel stops a batch at the first missing key, so the batch resumes after
// it.
func batchDelete[K any](m *ebpf.Map, name string, keys []K) (int, error) {
	deleted := 0
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		done, err := m.BatchDelete(keys[:n], nil)
		deleted += done
		switch {
		case err == nil:
			keys = keys[n:]
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[done+1:]
		default:
			return deleted, fmt.Errorf("delete from %s: %w", name, err)
		}
	}
	return deleted, nil
}

func eachDelete[K any](m *ebpf.Map, name string, keys []K) (int, error) {
	deleted := 0
	for i := range keys {
		err := m.Delete(&keys[i])
		switch {
		case err == nil:
			deleted++
		case errors.Is(err, ebpf.ErrKeyNotExist):
		default:
			return deleted, fmt.Errorf("delete from %s: %w", name, err)
		}
	}
	return deleted, nil
}

// SetAllowlist implements decision.Backend: it makes the allowlist tries
// hold exactly allow. New entries go in before old ones leave, so a source
// allowed both before and after is never dropped in between.
func (x *Maps) SetAllowlist(_ context.Context, allow []netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	want4 := map[bpf.XdpgateLpmV4Key]bool{}
	want6 := map[bpf.XdpgateLpmV6Key]bool{}
	for _, p := range allow {
		k, p, err := classify(p)
		if err != nil {
			return fmt.Errorf("allowlist: %w", err)
		}
		if k == kindV4Exact || k == kindV4Range {
			markAllow(x.allow4, p)
			want4[lpmV4(p)] = true
		} else {
			markAllow(x.allow6, p)
			want6[lpmV6(p)] = true
		}
	}
	var errs []error
	one := bpf.XdpgateAllow{Id: 1}
	for k := range want4 {
		if err := x.m.AllowV4.Put(k, one); err != nil {
			errs = append(errs, fmt.Errorf("allowlist %s: %w", prefixV4(k), err))
		}
	}
	for k := range want6 {
		if err := x.m.AllowV6.Put(k, one); err != nil {
			errs = append(errs, fmt.Errorf("allowlist %s: %w", prefixV6(k), err))
		}
	}
	var k4 bpf.XdpgateLpmV4Key
	var stale4 []bpf.XdpgateLpmV4Key
	for it := x.m.AllowV4.Iterate(); it.Next(&k4, new(bpf.XdpgateAllow)); {
		if !want4[k4] {
			stale4 = append(stale4, k4)
		}
	}
	var k6 bpf.XdpgateLpmV6Key
	var stale6 []bpf.XdpgateLpmV6Key
	for it := x.m.AllowV6.Iterate(); it.Next(&k6, new(bpf.XdpgateAllow)); {
		if !want6[k6] {
			stale6 = append(stale6, k6)
		}
	}
	_, err1 := eachDelete(x.m.AllowV4, bpf.XdpgateMapAllowV4, stale4)
	_, err2 := eachDelete(x.m.AllowV6, bpf.XdpgateMapAllowV6, stale6)
	errs = append(errs, err1, err2)
	// The allowlist is small: recompute its summaries exactly.
	b4, b6 := x.allow4.fresh(), x.allow6.fresh()
	for k := range want4 {
		markAllow(b4, prefixV4(k))
	}
	for k := range want6 {
		markAllow(b6, prefixV6(k))
	}
	x.allow4.store(b4)
	x.allow6.store(b6)
	return errors.Join(errs...)
}

func prefixV4(k bpf.XdpgateLpmV4Key) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Prefixlen))
}

func prefixV6(k bpf.XdpgateLpmV6Key) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen))
}

// Allowlist returns the allowlist the tries hold.
func (x *Maps) Allowlist() ([]netip.Prefix, error) {
	var out []netip.Prefix
	var k4 bpf.XdpgateLpmV4Key
	it4 := x.m.AllowV4.Iterate()
	for it4.Next(&k4, new(bpf.XdpgateAllow)) {
		out = append(out, prefixV4(k4))
	}
	var k6 bpf.XdpgateLpmV6Key
	it6 := x.m.AllowV6.Iterate()
	for it6.Next(&k6, new(bpf.XdpgateAllow)) {
		out = append(out, prefixV6(k6))
	}
	sortPrefixes(out)
	return out, errors.Join(it4.Err(), it6.Err())
}

func sortPrefixes(ps []netip.Prefix) {
	sort.Slice(ps, func(i, j int) bool { return comparePrefix(ps[i], ps[j]) < 0 })
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// ---- Reads.

// List implements decision.Backend: every ban in the maps, expired or not,
// sorted by prefix.
func (x *Maps) List(_ context.Context) ([]decision.Entry, error) {
	var out []decision.Entry
	err := x.walk(func(p netip.Prefix, b bpf.XdpgateBan, c clock) {
		out = append(out, decision.Entry{Prefix: p, Origin: x.OriginName(b.Origin), Expiry: c.fromBoot(b.ExpiresNs)})
	})
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i].Prefix, out[j].Prefix) < 0 })
	return out, err
}

// walk calls fn for every ban in the four ban maps.
func (x *Maps) walk(fn func(netip.Prefix, bpf.XdpgateBan, clock)) error {
	c := now()
	var errs []error
	var cursor ebpf.MapBatchCursor
	keys := make([]bpf.XdpgateV4Addr, 4096)
	vals := make([]bpf.XdpgateBan, 4096)
	for {
		n, err := x.m.BansV4.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(netip.PrefixFrom(netip.AddrFrom4(keys[i].Addr), 32), vals[i], c)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", bpf.XdpgateMapBansV4, err))
			break
		}
	}
	var cursor6 ebpf.MapBatchCursor
	keys6 := make([]bpf.XdpgateV6Addr, 4096)
	for {
		n, err := x.m.BansV6.BatchLookup(&cursor6, keys6, vals, nil)
		for i := 0; i < n; i++ {
			fn(netip.PrefixFrom(netip.AddrFrom16(keys6[i].Addr), 128), vals[i], c)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", bpf.XdpgateMapBansV6, err))
			break
		}
	}
	var k4 bpf.XdpgateLpmV4Key
	var v bpf.XdpgateBan
	it4 := x.m.RangesV4.Iterate()
	for it4.Next(&k4, &v) {
		fn(prefixV4(k4), v, c)
	}
	var k6 bpf.XdpgateLpmV6Key
	it6 := x.m.RangesV6.Iterate()
	for it6.Next(&k6, &v) {
		fn(prefixV6(k6), v, c)
	}
	errs = append(errs, it4.Err(), it6.Err())
	return errors.Join(errs...)
}

// Counts is the number of entries per ban map.
type Counts struct {
	V4Exact, V6Exact, V4Ranges, V6Ranges, Allow int
}

// Fill is one map's use against its capacity.
type Fill struct {
	Map      string `json:"map"`
	Entries  int    `json:"entries"`
	Capacity uint32 `json:"capacity"`
}

// Fill reports how full each ban and allowlist map is.
func (x *Maps) Fill() ([]Fill, error) {
	var c Counts
	err := x.walk(func(p netip.Prefix, _ bpf.XdpgateBan, _ clock) {
		switch k, _, _ := classify(p); k {
		case kindV4Exact:
			c.V4Exact++
		case kindV4Range:
			c.V4Ranges++
		case kindV6Exact:
			c.V6Exact++
		case kindV6Range:
			c.V6Ranges++
		}
	})
	allow, aerr := x.Allowlist()
	var a4, a6 int
	for _, p := range allow {
		if p.Addr().Is4() {
			a4++
		} else {
			a6++
		}
	}
	return []Fill{
		{bpf.XdpgateMapBansV4, c.V4Exact, x.m.BansV4.MaxEntries()},
		{bpf.XdpgateMapRangesV4, c.V4Ranges, x.m.RangesV4.MaxEntries()},
		{bpf.XdpgateMapBansV6, c.V6Exact, x.m.BansV6.MaxEntries()},
		{bpf.XdpgateMapRangesV6, c.V6Ranges, x.m.RangesV6.MaxEntries()},
		{bpf.XdpgateMapAllowV4, a4, x.m.AllowV4.MaxEntries()},
		{bpf.XdpgateMapAllowV6, a6, x.m.AllowV6.MaxEntries()},
	}, errors.Join(err, aerr)
}

// RebuildExact recomputes the exact IPv4 ban cache from bans_v4. The cache
// follows bans_v4 write by write, but a process killed between the two
// leaves a ban the cache does not point to: an agent starting over pinned
// maps calls this first. The summaries need no such repair (their bits are
// set before the entries they describe go in).
func (x *Maps) RebuildExact() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var e4 []uint32
	var ev4 []bpf.XdpgateBan
	var cursor ebpf.MapBatchCursor
	keys := make([]bpf.XdpgateV4Addr, 4096)
	vals := make([]bpf.XdpgateBan, 4096)
	for {
		n, err := x.m.BansV4.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			e4, ev4 = append(e4, v4Key(netip.AddrFrom4(keys[i].Addr))), append(ev4, vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			// A partial read would drop what it did not see.
			return fmt.Errorf("read %s: %w", bpf.XdpgateMapBansV4, err)
		}
	}
	return x.exact.rebuild(e4, ev4)
}

// Rebuild recomputes the ban summaries from the maps' contents, clearing the
// bits that deleted entries left behind.
func (x *Maps) Rebuild() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.rebuildLocked()
}

func (x *Maps) rebuildLocked() error {
	b4r, b6, b6r := x.v4Range.fresh(), x.v6.fresh(), x.v6Range.fresh()
	var e4 []uint32
	var ev4 []bpf.XdpgateBan
	n := 0
	err := x.walk(func(p netip.Prefix, v bpf.XdpgateBan, _ clock) {
		n++
		switch k, p, _ := classify(p); k {
		case kindV4Exact:
			e4, ev4 = append(e4, v4Key(p.Addr())), append(ev4, v)
		case kindV4Range:
			markV4Range(b4r, p)
		case kindV6Exact:
			b6.set(v6ExactBit(p.Addr().As16(), x.v6.nbits))
		case kindV6Range:
			markV6Range(b6r, p, x.v6Range.nbits)
		}
	})
	if err != nil {
		// A partial walk would clear bits of entries it did not see.
		return fmt.Errorf("rebuild summaries: %w", err)
	}
	if err := x.exact.rebuild(e4, ev4); err != nil {
		return fmt.Errorf("rebuild the exact IPv4 cache: %w", err)
	}
	x.v4Range.store(b4r)
	x.v6.store(b6)
	x.v6Range.store(b6r)
	x.staleDeletes, x.lastRebuild = 0, n
	return nil
}

// ---- Check.

// Verdict is what the program would do with a packet from an address.
type Verdict string

const (
	VerdictDrop    Verdict = "drop"    // banned
	VerdictPass    Verdict = "pass"    // no unexpired ban
	VerdictAllowed Verdict = "allowed" // banned, but the allowlist wins
)

// Match is the ban that decides a verdict.
type Match struct {
	Prefix netip.Prefix `json:"prefix"`
	Origin string       `json:"origin"`
	Expiry time.Time    `json:"expiry,omitzero"`
}

// CheckResult explains a verdict.
type CheckResult struct {
	Addr    netip.Addr    `json:"address"`
	Verdict Verdict       `json:"verdict"`
	Ban     *Match        `json:"ban,omitempty"`
	Allow   *netip.Prefix `json:"allowlist,omitempty"`
}

// Check says what the program would do with a packet from addr, and which
// entries decide it: the same lookups in the same order as the program.
func (x *Maps) Check(addr netip.Addr) (CheckResult, error) {
	addr = addr.Unmap().WithZone("")
	res := CheckResult{Addr: addr, Verdict: VerdictPass}
	c := now()
	live := func(b *bpf.XdpgateBan) bool {
		return b.ExpiresNs == 0 || int64(b.ExpiresNs) > c.boot
	}
	var v bpf.XdpgateBan
	if addr.Is4() {
		key := v4Addr(addr)
		err := x.m.BansV4.Lookup(key, &v)
		switch {
		case err == nil && live(&v):
			res.Ban = &Match{Prefix: netip.PrefixFrom(addr, 32)}
		case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
			return res, fmt.Errorf("look up %s: %w", bpf.XdpgateMapBansV4, err)
		default:
			k := bpf.XdpgateLpmV4Key{Prefixlen: 32, Addr: key.Addr}
			for range 8 {
				if err := x.m.RangesV4.Lookup(&k, &v); err != nil {
					break
				}
				if live(&v) {
					res.Ban = &Match{Prefix: netip.PrefixFrom(addr, int(v.Prefixlen)).Masked()}
					break
				}
				if v.Prefixlen == 0 {
					break
				}
				k.Prefixlen = uint32(v.Prefixlen) - 1
			}
		}
	} else {
		a := addr.As16()
		err := x.m.BansV6.Lookup(bpf.XdpgateV6Addr{Addr: a}, &v)
		switch {
		case err == nil && live(&v):
			res.Ban = &Match{Prefix: netip.PrefixFrom(addr, 128)}
		case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
			return res, fmt.Errorf("look up %s: %w", bpf.XdpgateMapBansV6, err)
		default:
			k := bpf.XdpgateLpmV6Key{Prefixlen: 128, Addr: a}
			for range 8 {
				if err := x.m.RangesV6.Lookup(&k, &v); err != nil {
					break
				}
				if live(&v) {
					res.Ban = &Match{Prefix: netip.PrefixFrom(addr, int(v.Prefixlen)).Masked()}
					break
				}
				if v.Prefixlen == 0 {
					break
				}
				k.Prefixlen = uint32(v.Prefixlen) - 1
			}
		}
	}
	if res.Ban == nil {
		return res, nil
	}
	res.Ban.Origin = x.OriginName(v.Origin)
	res.Ban.Expiry = c.fromBoot(v.ExpiresNs)
	res.Verdict = VerdictDrop
	var a bpf.XdpgateAllow
	if addr.Is4() {
		k := bpf.XdpgateLpmV4Key{Prefixlen: 32, Addr: addr.As4()}
		if err := x.m.AllowV4.Lookup(&k, &a); err == nil {
			// The kernel does not say which entry matched: find it.
			res.Allow = x.allowMatch(addr)
		}
	} else {
		k := bpf.XdpgateLpmV6Key{Prefixlen: 128, Addr: addr.As16()}
		if err := x.m.AllowV6.Lookup(&k, &a); err == nil {
			res.Allow = x.allowMatch(addr)
		}
	}
	if res.Allow != nil {
		res.Verdict = VerdictAllowed
	}
	return res, nil
}

func (x *Maps) allowMatch(addr netip.Addr) *netip.Prefix {
	all, _ := x.Allowlist()
	var best *netip.Prefix
	for i := range all {
		if all[i].Contains(addr) && (best == nil || all[i].Bits() > best.Bits()) {
			best = &all[i]
		}
	}
	if best == nil {
		// Matched in the kernel but not found by the walk: still allowed.
		p := netip.PrefixFrom(addr, addr.BitLen())
		return &p
	}
	return best
}

// ---- Counters.

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Stats are the program's counters summed over CPUs.
type Stats struct {
	PassV4, PassV6           Counter
	DropV4, DropV6           Counter
	AllowedV4, AllowedV6     Counter
	WouldDropV4, WouldDropV6 Counter
	PassNotIP, PassMalformed Counter
	// DropsByOrigin is keyed by origin name, then "ipv4" or "ipv6". In
	// count-only mode it counts what would have been dropped.
	DropsByOrigin map[string]map[string]Counter
}

// Stats reads the per-CPU counters.
func (x *Maps) Stats() (Stats, error) {
	var s Stats
	for idx, dst := range map[bpf.XdpgateStat]*Counter{
		bpf.XdpgateStatSTAT_PASS_V4: &s.PassV4, bpf.XdpgateStatSTAT_PASS_V6: &s.PassV6,
		bpf.XdpgateStatSTAT_DROP_V4: &s.DropV4, bpf.XdpgateStatSTAT_DROP_V6: &s.DropV6,
		bpf.XdpgateStatSTAT_ALLOWED_V4: &s.AllowedV4, bpf.XdpgateStatSTAT_ALLOWED_V6: &s.AllowedV6,
		bpf.XdpgateStatSTAT_WOULD_DROP_V4: &s.WouldDropV4, bpf.XdpgateStatSTAT_WOULD_DROP_V6: &s.WouldDropV6,
		bpf.XdpgateStatSTAT_PASS_NOT_IP: &s.PassNotIP, bpf.XdpgateStatSTAT_PASS_MALFORMED: &s.PassMalformed,
	} {
		c, err := sumPerCPU(x.m.Stats, uint32(idx))
		if err != nil {
			return s, fmt.Errorf("read stats: %w", err)
		}
		*dst = c
	}
	s.DropsByOrigin = map[string]map[string]Counter{}
	var key uint32
	var vals []bpf.XdpgateCounter
	for it := x.m.OriginDrops.Iterate(); it.Next(&key, &vals); {
		var c Counter
		for _, v := range vals {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		if c.Packets == 0 {
			continue
		}
		name := x.OriginName(uint16(key / 2))
		fam := "ipv4"
		if key%2 == uint32(bpf.XdpgateFamilyFAMILY_V6) {
			fam = "ipv6"
		}
		if s.DropsByOrigin[name] == nil {
			s.DropsByOrigin[name] = map[string]Counter{}
		}
		s.DropsByOrigin[name][fam] = c
	}
	return s, nil
}

func sumPerCPU(m *ebpf.Map, idx uint32) (Counter, error) {
	var vals []bpf.XdpgateCounter
	if err := m.Lookup(idx, &vals); err != nil {
		return Counter{}, err
	}
	var c Counter
	for _, v := range vals {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	return c, nil
}
