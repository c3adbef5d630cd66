// Package nftfallback is the nftables enforcement backend of xdpgate: drop
// rules in tables of its own (family ip and ip6), programmed through
// netlink, for traffic the XDP program does not see or in place of it.
//
// Each table holds three sets and one base chain per configured hook:
//
//	allowlist      interval set: sources that are never dropped
//	banned_hosts   hash set with timeouts: single addresses (/32, /128)
//	banned_ranges  interval set with timeouts: every other prefix
//
// and each chain accepts the allowlist, then drops both ban sets through a
// named counter per hook ("drop_input", ...). Nested prefixes are flattened
// into non-overlapping intervals, each expiring with the last prefix that
// covers it; the exact prefixes, their origin and expiry travel in element
// comments so that a restarted agent lists what is enforced and reconciles
// by difference. docs/nftables.md describes the layout and its reasons.
package nftfallback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// Errors callers may branch on.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("nftables backend closed")
	// ErrInvalidPrefix wraps the error of Apply or SetAllowlist for the
	// prefixes it skipped because they are not valid.
	ErrInvalidPrefix = errors.New("invalid prefix")
)

// Names inside the tables.
const (
	setAllow  = "allowlist"
	setHosts  = "banned_hosts"
	setRanges = "banned_ranges"
	// ruleTag prefixes the comment of every rule the backend writes; the
	// version changes when the rules do, so that Ensure rewrites them.
	ruleTag = "xdpgate/1 "
)

func counterName(hook string) string { return "drop_" + hook }

// Backend enforces bans with nftables. It is safe for concurrent use; calls
// are serialised.
type Backend struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	conn       *nftables.Conn
	dump       *dumper
	batchLimit int
	closed     bool
	ready      bool // Ensure succeeded
	loaded     bool // the state below mirrors the kernel
	lost       bool // the tables vanished; the state is what they held
	fams       []*family

	stats struct {
		transactions, elements                  atomic.Uint64
		invalid, ipv6Disabled, expired, foreign atomic.Uint64
		overflow                                atomic.Uint64
	}
}

var _ decision.Backend = (*Backend)(nil)

// Stats counts what the backend did and skipped since New.
type Stats struct {
	// Transactions and Elements count the committed nftables transactions
	// and the set element operations they carried.
	Transactions, Elements uint64
	// SkippedInvalid counts prefixes refused as invalid.
	SkippedInvalid uint64
	// SkippedIPv6 counts IPv6 prefixes skipped because IPv6 is disabled.
	SkippedIPv6 uint64
	// SkippedExpired counts upserts whose expiry had passed: not written
	// (and removed if they were).
	SkippedExpired uint64
	// Foreign counts elements found in the sets without the metadata this
	// backend writes (added by hand): they are listed as entries of origin
	// "" so that a reconcile removes them or takes them over.
	Foreign uint64
	// MetadataOverflow counts ranges whose metadata did not fit in an
	// element comment (many nested ranges starting at the same address):
	// enforced, but after a restart their addresses are listed as foreign
	// pieces until the next reconcile writes them back.
	MetadataOverflow uint64
}

// New returns a backend for cfg. It opens a netlink socket and changes
// nothing in the ruleset: Ensure creates the tables.
func New(cfg Config, logger *slog.Logger) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	b := &Backend{cfg: cfg, log: logger}
	b.fams = append(b.fams, newFamily(false, cfg.Table4))
	if !cfg.DisableIPv6 {
		b.fams = append(b.fams, newFamily(true, cfg.Table6))
	}
	if err := b.dial(); err != nil {
		return nil, err
	}
	return b, nil
}

// Name implements decision.Backend.
func (b *Backend) Name() string { return "nftables" }

// Stats returns the counts of what the backend did and skipped.
func (b *Backend) Stats() Stats {
	return Stats{
		Transactions:     b.stats.transactions.Load(),
		Elements:         b.stats.elements.Load(),
		SkippedInvalid:   b.stats.invalid.Load(),
		SkippedIPv6:      b.stats.ipv6Disabled.Load(),
		SkippedExpired:   b.stats.expired.Load(),
		Foreign:          b.stats.foreign.Load(),
		MetadataOverflow: b.stats.overflow.Load(),
	}
}

// sndBuf is the send buffer asked for; the kernel doubles it.
const sndBuf = maxBatchBytes

func (b *Backend) dial() error {
	var limit int
	opts := []nftables.ConnOption{
		nftables.AsLasting(),
		nftables.WithSockOptions(func(c *netlink.Conn) error {
			var err error
			limit, err = tuneSocket(c)
			return err
		}),
	}
	if b.cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(b.cfg.NetNS))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("open nftables netlink socket: %w", err)
	}
	d, err := dialDumper(b.cfg.NetNS)
	if err != nil {
		_ = conn.CloseLasting()
		return err
	}
	b.conn, b.dump, b.batchLimit = conn, d, limit
	return nil
}

// tuneSocket sizes the send buffer for large batches (as nft does, forcing
// it past net.core.wmem_max, which needs CAP_NET_ADMIN like the rest of
// the backend), asks for short error acknowledgements, and returns the
// batch size the buffer allows.
func tuneSocket(c *netlink.Conn) (int, error) {
	// Error acknowledgements carry the header of the refused message, not
	// the whole message: a batch with many refused messages must not
	// overflow the receive buffer. (Extended acknowledgements are left off:
	// the netlink package cannot parse them combined with capped ones.)
	if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
		return 0, fmt.Errorf("netlink cap_ack: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		have    int
		sockErr error
	)
	if err := rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndBuf) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sndBuf)
		}
		have, sockErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	}); err != nil {
		return 0, err
	}
	if sockErr != nil {
		return 0, fmt.Errorf("netlink send buffer: %w", sockErr)
	}
	// Estimates of element sizes are rough: keep a quarter in reserve.
	return max(min(maxBatchBytes, have*3/4), maxMsgBytes), nil
}

// redial replaces the sockets after a failed batch or read.
func (b *Backend) redial() {
	_ = b.conn.CloseLasting()
	_ = b.dump.close()
	if err := b.dial(); err != nil {
		b.log.Error("nftables: reopen netlink socket", "error", err)
	}
}

// Close closes the netlink socket. The tables, rules and sets stay: the
// bans keep being enforced, and expire by themselves, while no agent runs.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	return errors.Join(b.conn.CloseLasting(), b.dump.close())
}

func (b *Backend) lock() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// prepare makes sure the tables exist and the in-memory state mirrors the
// kernel.
func (b *Backend) prepare(ctx context.Context) error {
	if err := b.prepareTables(ctx); err != nil {
		return err
	}
	if !b.loaded {
		return b.load()
	}
	return nil
}

// prepareTables makes sure the tables exist. When they vanished under the
// backend (another tool flushed the ruleset), it recreates them and writes
// back everything it held.
func (b *Backend) prepareTables(ctx context.Context) error {
	if !b.ready {
		created, err := b.ensure()
		if err != nil {
			return err
		}
		if b.lost {
			b.lost = false
			if len(created) > 0 {
				b.log.Warn("nftables: tables vanished; recreated them, writing back every ban", "tables", len(created))
				if err := b.restore(ctx, created); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// change is an entry to write (m) or remove (m nil), normalised.
type change struct {
	p netip.Prefix
	m *meta
}

// Apply implements decision.Backend. Deletes are applied before upserts, so
// a prefix in both ends up enforced. An upsert whose expiry has passed is
// not written, and removes the prefix if it was. Invalid prefixes are
// skipped and reported in the error (wrapping ErrInvalidPrefix) after the
// rest is applied; IPv6 prefixes are skipped silently when IPv6 is
// disabled. Applying what is already enforced writes nothing.
func (b *Backend) Apply(ctx context.Context, upserts []decision.Entry, deletes []netip.Prefix) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	start := time.Now()
	nowMs := start.UnixMilli()
	var (
		bad     []error
		changes = make([]change, 0, len(deletes)+len(upserts))
	)
	for _, p := range deletes {
		q, err := b.normalize(p)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		changes = append(changes, change{p: q})
	}
	for _, e := range upserts {
		q, err := b.normalize(e.Prefix)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		m := newMeta(e.Origin, e.Expiry)
		if expired(m.exp, nowMs) {
			b.stats.expired.Add(1)
			b.log.Debug("nftables: skip expired entry", "prefix", q, "expiry", e.Expiry)
			changes = append(changes, change{p: q})
			continue
		}
		changes = append(changes, change{p: q, m: &m})
	}
	var err error
	for attempt := 0; ; attempt++ {
		if err = b.prepare(ctx); err == nil {
			err = b.apply(ctx, changes, nowMs)
		}
		if !errors.Is(err, errTablesGone) || attempt > 0 {
			break
		}
		// Recreate the tables and try once more.
	}
	b.log.Debug("nftables: applied", "upserts", len(upserts), "deletes", len(deletes), "took", time.Since(start), "error", err)
	if len(bad) > 0 {
		err = errors.Join(err, fmt.Errorf("%w: skipped %d: %w", ErrInvalidPrefix, len(bad), errors.Join(bad...)))
	}
	return err
}

func (b *Backend) apply(ctx context.Context, changes []change, nowMs int64) error {
	type staged struct {
		hosts map[netip.Addr]*meta
		nets  map[netip.Prefix]*meta
	}
	st := make([]staged, len(b.fams))
	for i := range st {
		st[i] = staged{hosts: map[netip.Addr]*meta{}, nets: map[netip.Prefix]*meta{}}
	}
	for _, c := range changes {
		f, i := b.family(c.p)
		if f == nil {
			continue
		}
		if c.p.IsSingleIP() {
			st[i].hosts[c.p.Addr()] = c.m
			if _, ok := f.nets[c.p]; ok {
				st[i].nets[c.p] = nil // an element found without metadata
			}
			continue
		}
		st[i].nets[c.p] = c.m
	}
	var (
		groups []*group
		finish []func()
	)
	for i, f := range b.fams {
		groups = append(groups, f.planHosts(st[i].hosts, nowMs)...)
		g, done := f.planRanges(st[i].nets, nowMs, b)
		groups = append(groups, g...)
		finish = append(finish, done)
	}
	err := b.send(ctx, groups)
	for _, done := range finish {
		done()
	}
	return err
}

// restore writes the whole state of families whose tables were just
// recreated.
func (b *Backend) restore(ctx context.Context, fams []*family) error {
	nowMs := time.Now().UnixMilli()
	var (
		groups []*group
		finish []func()
	)
	for _, f := range fams {
		for a, m := range f.hostState {
			if expired(m.exp, nowMs) {
				delete(f.hostState, a)
				continue
			}
			groups = append(groups, &group{f: f, kind: groupHost, addr: a, cur: m, hasCur: true,
				bytes: elemBytes(f.bits/8, 16+3*len(m.origin))})
		}
		clear(f.hostFix)
		f.frags, f.repairAll = nil, true
		g, done := f.planRanges(nil, nowMs, b)
		groups = append(groups, g...)
		finish = append(finish, done)
		want := f.allowState
		f.allowState = nil
		if g := f.planAllow(want); g != nil {
			groups = append(groups, g)
		}
	}
	err := b.send(ctx, groups)
	for _, done := range finish {
		done()
	}
	return err
}

// normalize checks a prefix and returns it masked, IPv4-mapped IPv6
// turned into IPv4; an invalid prefix is counted, logged and returned as an
// error.
func (b *Backend) normalize(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() || p.Addr().Zone() != "" {
		b.stats.invalid.Add(1)
		b.log.Warn("nftables: skip invalid prefix", "prefix", p)
		return netip.Prefix{}, fmt.Errorf("%q", p)
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// family returns the state of the prefix's family and its index, or nil
// for IPv6 when it is disabled (counted).
func (b *Backend) family(p netip.Prefix) (*family, int) {
	if p.Addr().Is4() {
		return b.fams[0], 0
	}
	if len(b.fams) < 2 {
		b.stats.ipv6Disabled.Add(1)
		return nil, -1
	}
	return b.fams[1], 1
}

// SetAllowlist implements decision.Backend. Overlapping and adjacent
// prefixes are merged; the change is one transaction per family.
func (b *Backend) SetAllowlist(ctx context.Context, allow []netip.Prefix) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	var bad []error
	var valid []netip.Prefix
	for _, p := range allow {
		q, err := b.normalize(p)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		valid = append(valid, q)
	}
	var err error
	for attempt := 0; ; attempt++ {
		if err = b.prepare(ctx); err != nil {
			if errors.Is(err, errTablesGone) && attempt == 0 {
				continue
			}
			break
		}
		spans := make([][]span, len(b.fams))
		for _, p := range valid {
			if _, i := b.family(p); i >= 0 {
				spans[i] = append(spans[i], prefixSpan(p))
			}
		}
		var groups []*group
		for i, f := range b.fams {
			if g := f.planAllow(mergeSpans(spans[i], true)); g != nil {
				groups = append(groups, g)
			}
		}
		err = b.send(ctx, groups)
		if !errors.Is(err, errTablesGone) || attempt > 0 {
			break
		}
	}
	if len(bad) > 0 {
		err = errors.Join(err, fmt.Errorf("%w: skipped %d: %w", ErrInvalidPrefix, len(bad), errors.Join(bad...)))
	}
	return err
}

// List implements decision.Backend: it reads the sets back, refreshes the
// in-memory state from them and returns the entries not yet expired.
func (b *Backend) List(ctx context.Context) ([]decision.Entry, error) {
	if err := b.lock(); err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if err := b.prepareTables(ctx); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		err := b.load()
		if err == nil {
			break
		}
		if !errors.Is(err, errTablesGone) || attempt > 0 {
			return nil, err
		}
	}
	nowMs := time.Now().UnixMilli()
	var out []decision.Entry
	for _, f := range b.fams {
		out = f.entries(out, nowMs)
	}
	slices.SortFunc(out, func(x, y decision.Entry) int { return decision.ComparePrefix(x.Prefix, y.Prefix) })
	return out, nil
}
