// Package engine is the reconcile core between the LAPI decision stream
// and the enforcement backends. It folds decisions into a refcounting
// store, and writes to every backend only the difference between what the
// store says and what the backend already enforces: a startup set, a resync
// or a restart over pinned maps that changes nothing writes nothing, and
// nothing is ever flushed.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// Tolerance is how far apart two expiries of one prefix may be and still
// count as equal. LAPI sends durations, not deadlines, so each pull
// recomputes expiries that drift by the pull's latency.
const Tolerance = 5 * time.Second

// Observer receives what the engine counts. Metrics implement it; nil
// methods are not called on a nil Observer.
type Observer interface {
	// Skipped counts a decision that was not applied, by reason.
	Skipped(reason decision.SkipReason)
	// Allowlisted counts a decision that falls inside the allowlist: it
	// is held, but the allowlist keeps its source passing.
	Allowlisted()
	// Applied counts entries written to and deleted from a backend.
	Applied(backend string, upserts, deletes int)
}

type nopObserver struct{}

func (nopObserver) Skipped(decision.SkipReason) {}
func (nopObserver) Allowlisted()                {}
func (nopObserver) Applied(string, int, int)    {}

// Options configure an Engine.
type Options struct {
	Parse     decision.ParseOptions
	Allowlist []netip.Prefix
	Logger    *slog.Logger
	Observer  Observer
	// Now is the clock; time.Now by default.
	Now func() time.Time
}

// Engine holds the decision store and the backends it feeds. It is safe
// for concurrent use; batches are applied one at a time.
type Engine struct {
	opts  Options
	log   *slog.Logger
	obs   Observer
	now   func() time.Time
	mu    sync.Mutex
	store *decision.Store
	bes   []*tracked
	// skippedIDs remembers which bad decisions were logged, so each is
	// logged once however often LAPI sends it.
	skippedIDs map[int64]struct{}
}

// tracked is a backend with what it is known to enforce.
type tracked struct {
	be      decision.Backend
	applied map[netip.Prefix]decision.Entry
	// stale is set when a write failed part way: the next reconcile
	// reads the backend back before diffing.
	stale bool
}

// New returns an engine feeding backends. Call Init before the first batch.
func New(opts Options, backends ...decision.Backend) *Engine {
	e := &Engine{opts: opts, log: opts.Logger, obs: opts.Observer, now: opts.Now, store: decision.NewStore(), skippedIDs: map[int64]struct{}{}}
	if e.log == nil {
		e.log = slog.Default()
	}
	if e.obs == nil {
		e.obs = nopObserver{}
	}
	if e.now == nil {
		e.now = time.Now
	}
	for _, b := range backends {
		e.bes = append(e.bes, &tracked{be: b, stale: true})
	}
	return e
}

// SetObserver replaces the observer (metrics are built after the engine).
func (e *Engine) SetObserver(o Observer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o == nil {
		o = nopObserver{}
	}
	e.obs = o
}

// AddBackend adds a backend (the nftables fallback, when an interface
// cannot take XDP); it is brought up to date at once.
func (e *Engine) AddBackend(ctx context.Context, b decision.Backend) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := &tracked{be: b, stale: true}
	e.bes = append(e.bes, t)
	if err := b.SetAllowlist(ctx, e.opts.Allowlist); err != nil {
		return fmt.Errorf("%s: set allowlist: %w", b.Name(), err)
	}
	return e.reconcileLocked(ctx, t, e.store.Entries(e.now()))
}

// Backends returns the names of the backends in use.
func (e *Engine) Backends() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, t := range e.bes {
		out = append(out, t.be.Name())
	}
	return out
}

// Init reads what every backend already enforces (pinned maps, nftables
// tables left by an earlier run) and sets the allowlist. It does not remove
// anything: until the first startup set arrives, what was enforced stays.
func (e *Engine) Init(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for _, t := range e.bes {
		if err := t.be.SetAllowlist(ctx, e.opts.Allowlist); err != nil {
			errs = append(errs, fmt.Errorf("%s: set allowlist: %w", t.be.Name(), err))
		}
		if err := e.readBack(ctx, t); err != nil {
			errs = append(errs, err)
			continue
		}
		e.log.Info("backend state read", "backend", t.be.Name(), "entries", len(t.applied))
	}
	return errors.Join(errs...)
}

func (e *Engine) readBack(ctx context.Context, t *tracked) error {
	list, err := t.be.List(ctx)
	if err != nil {
		return fmt.Errorf("%s: read enforced entries: %w", t.be.Name(), err)
	}
	t.applied = make(map[netip.Prefix]decision.Entry, len(list))
	for _, en := range list {
		t.applied[en.Prefix] = en
	}
	t.stale = false
	return nil
}

// Stats summarises one batch.
type Stats struct {
	New, Deleted int // decisions in the batch
	Skipped      int // decisions not applied (bad, unsupported, too broad)
	Upserts      int // entries written, summed over backends
	Deletes      int // entries removed, summed over backends
}

// Startup applies a complete set of active decisions (a LAPI startup pull
// or a resync): the store is replaced and every backend reconciled by
// difference. Entries no decision holds any more are removed; nothing that
// is still banned leaves a backend, even for a moment.
func (e *Engine) Startup(ctx context.Context, decisions []*models.Decision) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Stats{New: len(decisions)}
	ds := make([]decision.Decision, 0, len(decisions))
	for _, raw := range decisions {
		d, err := decision.Parse(raw, now, e.opts.Parse)
		if err != nil {
			e.skip(err)
			st.Skipped++
			continue
		}
		e.countAllowlisted(d.Prefix)
		ds = append(ds, d)
	}
	e.store.Replace(ds)
	desired := e.store.Entries(now)
	var errs []error
	for _, t := range e.bes {
		u, d, err := e.reconcileCounted(ctx, t, desired)
		st.Upserts += u
		st.Deletes += d
		if err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// Delta applies a stream delta: only the prefixes it touches are
// recomputed and written.
func (e *Engine) Delta(ctx context.Context, added, deleted []*models.Decision) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Stats{New: len(added), Deleted: len(deleted)}
	touched := map[netip.Prefix]struct{}{}
	for _, raw := range deleted {
		d, err := decision.ParseDeleted(raw, e.opts.Parse)
		if err != nil {
			// A delete for a decision we never took: nothing to undo.
			continue
		}
		if e.store.Delete(d) {
			touched[d.Prefix] = struct{}{}
		}
	}
	for _, raw := range added {
		d, err := decision.Parse(raw, now, e.opts.Parse)
		if err != nil {
			e.skip(err)
			st.Skipped++
			continue
		}
		e.countAllowlisted(d.Prefix)
		e.store.Add(d)
		touched[d.Prefix] = struct{}{}
	}
	var errs []error
	for _, t := range e.bes {
		var up []decision.Entry
		var del []netip.Prefix
		for p := range touched {
			want, ok := e.store.Lookup(p, now)
			have, had := t.applied[p]
			switch {
			case ok && (!had || !decision.Same(want, have, Tolerance)):
				up = append(up, want)
			case !ok && had:
				del = append(del, p)
			}
		}
		u, d, err := e.write(ctx, t, up, del)
		st.Upserts += u
		st.Deletes += d
		if err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// Reconcile diffs every backend against the store again: it removes what
// has expired and repairs a backend whose last write failed. It is cheap
// when nothing changed.
func (e *Engine) Reconcile(ctx context.Context) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if n := e.store.Prune(now); n > 0 {
		e.log.Debug("expired decisions pruned", "count", n)
	}
	desired := e.store.Entries(now)
	var st Stats
	var errs []error
	for _, t := range e.bes {
		u, d, err := e.reconcileCounted(ctx, t, desired)
		st.Upserts += u
		st.Deletes += d
		if err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

func (e *Engine) reconcileLocked(ctx context.Context, t *tracked, desired []decision.Entry) error {
	_, _, err := e.reconcileCounted(ctx, t, desired)
	return err
}

func (e *Engine) reconcileCounted(ctx context.Context, t *tracked, desired []decision.Entry) (int, int, error) {
	if t.stale {
		if err := e.readBack(ctx, t); err != nil {
			return 0, 0, err
		}
	}
	current := make([]decision.Entry, 0, len(t.applied))
	for _, en := range t.applied {
		current = append(current, en)
	}
	up, del := decision.Diff(desired, current, Tolerance)
	return e.write(ctx, t, up, del)
}

// write applies a difference to one backend and records it.
func (e *Engine) write(ctx context.Context, t *tracked, up []decision.Entry, del []netip.Prefix) (int, int, error) {
	if len(up) == 0 && len(del) == 0 {
		return 0, 0, nil
	}
	err := t.be.Apply(ctx, up, del)
	if err != nil {
		// Part of it may have landed: read the backend back next time.
		t.stale = true
		e.log.Error("backend write failed", "backend", t.be.Name(), "upserts", len(up), "deletes", len(del), "error", err)
		return len(up), len(del), fmt.Errorf("%s: %w", t.be.Name(), err)
	}
	if t.applied == nil {
		t.applied = map[netip.Prefix]decision.Entry{}
	}
	for _, en := range up {
		t.applied[en.Prefix] = en
	}
	for _, p := range del {
		delete(t.applied, p)
	}
	e.obs.Applied(t.be.Name(), len(up), len(del))
	return len(up), len(del), nil
}

func (e *Engine) skip(err error) {
	var se *decision.SkipError
	if !errors.As(err, &se) {
		e.obs.Skipped("unknown")
		e.log.Warn("decision skipped", "error", err)
		return
	}
	e.obs.Skipped(se.Reason)
	if _, seen := e.skippedIDs[se.ID]; seen {
		return
	}
	if len(e.skippedIDs) > 100_000 {
		e.skippedIDs = map[int64]struct{}{} // bound the memory, at worst log again
	}
	e.skippedIDs[se.ID] = struct{}{}
	e.log.Warn("decision skipped", "id", se.ID, "reason", se.Reason, "error", err)
}

func (e *Engine) countAllowlisted(p netip.Prefix) {
	for _, a := range e.opts.Allowlist {
		if a.Overlaps(p) {
			e.obs.Allowlisted()
			return
		}
	}
}

// Entries returns the effective entries the store holds now.
func (e *Engine) Entries() []decision.Entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.store.Entries(e.now())
}

// Enforced returns, per backend name, the entries the engine knows the
// backend enforces.
func (e *Engine) Enforced() map[string][]decision.Entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string][]decision.Entry{}
	for _, t := range e.bes {
		l := make([]decision.Entry, 0, len(t.applied))
		for _, en := range t.applied {
			l = append(l, en)
		}
		out[t.be.Name()] = l
	}
	return out
}
