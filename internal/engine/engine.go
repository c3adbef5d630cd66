// Package engine is the reconcile core between the LAPI decision stream
// and the enforcement backends. It folds decisions per prefix, counting
// every decision on a value so that deleting one never unbans a value
// another decision still holds, and writes to every backend only the
// difference between what the decisions ask for and what the backend
// already enforces: a startup set, a resync or a restart over pinned maps
// that changes nothing writes nothing, and nothing is ever flushed.
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

// Engine holds the decisions and the backends they feed. It is safe for
// concurrent use; batches are applied one at a time.
type Engine struct {
	opts Options
	log  *slog.Logger
	obs  Observer
	now  func() time.Time
	mu   sync.Mutex
	tab  table
	bes  []*tracked
	// skippedIDs remembers which bad decisions were logged, so each is
	// logged once however often LAPI sends it.
	skippedIDs map[int64]struct{}
	// synced is set by the first complete set. Until then the engine
	// knows no decision, so a reconcile would delete everything a
	// backend enforces from before a restart: it only reads back.
	synced bool
}

// tracked is a backend and its column in the table: what it is known to
// enforce.
type tracked struct {
	be  decision.Backend
	col int
	// stale is set when a write failed part way: the next reconcile
	// reads the backend back before diffing.
	stale bool
}

// New returns an engine feeding backends. Call Init before the first batch.
func New(opts Options, backends ...decision.Backend) *Engine {
	e := &Engine{opts: opts, log: opts.Logger, obs: opts.Observer, now: opts.Now, skippedIDs: map[int64]struct{}{}}
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
		e.bes = append(e.bes, &tracked{be: b, col: e.tab.addBackend(), stale: true})
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
	t := &tracked{be: b, col: e.tab.addBackend(), stale: true}
	e.bes = append(e.bes, t)
	if err := b.SetAllowlist(ctx, e.opts.Allowlist); err != nil {
		return fmt.Errorf("%s: set allowlist: %w", b.Name(), err)
	}
	_, _, err := e.reconcile(ctx, t, nanos(e.now()))
	return err
}

// Synced reports whether a complete decision set has been applied.
func (e *Engine) Synced() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.synced
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
		n, err := e.readBack(ctx, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		e.log.Info("backend state read", "backend", t.be.Name(), "entries", n)
	}
	return errors.Join(errs...)
}

func (e *Engine) readBack(ctx context.Context, t *tracked) (int, error) {
	list, err := t.be.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s: read enforced entries: %w", t.be.Name(), err)
	}
	e.tab.forget(t.col)
	for _, en := range list {
		e.tab.setHeld(t.col, e.tab.rowOf(keyOf(en.Prefix)), e.tab.hold(en))
	}
	t.stale = false
	return len(list), nil
}

// Stats summarises one batch.
type Stats struct {
	New, Deleted int // decisions in the batch
	Skipped      int // decisions not applied (bad, unsupported, too broad)
	Upserts      int // entries written, summed over backends
	Deletes      int // entries removed, summed over backends
}

// Startup applies a complete set of active decisions (a LAPI startup pull
// or a resync): it replaces the decisions held and reconciles every
// backend by difference. Entries no decision holds any more are removed;
// nothing that is still banned leaves a backend, even for a moment.
func (e *Engine) Startup(ctx context.Context, decisions []*models.Decision) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Stats{New: len(decisions)}
	e.tab.reset(len(decisions))
	for _, raw := range decisions {
		d, err := decision.Parse(raw, now, e.opts.Parse)
		e.take(&st, d, err)
	}
	e.synced = true
	return e.reconcileAll(ctx, nanos(now), st)
}

// StartupSet is Startup for a set packed as it was decoded (lapi's
// WithDecisionSets): the decisions go into the table one at a time, and no
// step holds the set as *models.Decision values or as a list of entries.
func (e *Engine) StartupSet(ctx context.Context, set *decision.Set) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Stats{New: set.Len()}
	e.tab.reset(set.Len())
	for d, err := range set.Decisions(now, e.opts.Parse) {
		e.take(&st, d, err)
	}
	e.synced = true
	return e.reconcileAll(ctx, nanos(now), st)
}

// take adds a parsed decision, or counts and logs its skip.
func (e *Engine) take(st *Stats, d decision.Decision, err error) {
	if err != nil {
		e.skip(err)
		st.Skipped++
		return
	}
	e.countAllowlisted(d.Prefix)
	e.tab.add(d)
}

// Delta applies a stream delta: only the prefixes it touches are
// recomputed and written.
func (e *Engine) Delta(ctx context.Context, added, deleted []*models.Decision) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Stats{New: len(added), Deleted: len(deleted)}
	touched := map[int32]struct{}{}
	for _, raw := range deleted {
		d, err := decision.ParseDeleted(raw, e.opts.Parse)
		if err != nil {
			// A delete for a decision we never took: nothing to undo.
			continue
		}
		if r, ok := e.tab.deleteID(d.ID); ok {
			touched[r] = struct{}{}
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
		touched[e.tab.add(d)] = struct{}{}
	}
	t0 := nanos(now)
	var errs []error
	for _, t := range e.bes {
		w := e.newWriter(ctx, t)
		for r := range touched {
			// A row freed by a delete is not used any more, or holds
			// another prefix the delta touched too.
			if e.tab.rows[r].used {
				w.diff(r, t0)
			}
		}
		u, d, err := w.close()
		st.Upserts += u
		st.Deletes += d
		if err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// Reconcile diffs every backend against the decisions again: it removes
// what has expired and repairs a backend whose last write failed. It is
// cheap when nothing changed.
func (e *Engine) Reconcile(ctx context.Context) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := nanos(e.now())
	if n := e.tab.prune(now); n > 0 {
		e.log.Debug("expired decisions pruned", "count", n)
	}
	return e.reconcileAll(ctx, now, Stats{})
}

func (e *Engine) reconcileAll(ctx context.Context, now int64, st Stats) (Stats, error) {
	var errs []error
	for _, t := range e.bes {
		u, d, err := e.reconcile(ctx, t, now)
		st.Upserts += u
		st.Deletes += d
		if err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// reconcile writes to one backend the difference between what the
// decisions ask for and what it holds: the entries it lacks or holds with
// another origin or expiry, and the deletes of the prefixes no running
// decision holds. It is one pass over the rows; only a chunk of writes is
// ever built.
//
// Two expiries within Tolerance of each other are equal: LAPI sends
// relative durations and every pull recomputes the expiries from them, so
// a resync that changes nothing writes nothing.
func (e *Engine) reconcile(ctx context.Context, t *tracked, now int64) (int, int, error) {
	if t.stale {
		if _, err := e.readBack(ctx, t); err != nil {
			return 0, 0, err
		}
	}
	if !e.synced {
		// No complete set yet (LAPI unreachable since the start): what
		// the backend enforces stays, expired entries included, which
		// the kernel stops enforcing by itself.
		return 0, 0, nil
	}
	w := e.newWriter(ctx, t)
	for r := range e.tab.rows {
		// A flush may free rows already passed, never one ahead.
		if e.tab.rows[r].used {
			w.diff(int32(r), now)
		}
	}
	return w.close()
}

// writeChunk bounds one Apply call: a startup set is written in pieces,
// so that no list of 100k entries is ever built.
const writeChunk = 1 << 14

// writer gathers the writes to one backend and applies them a chunk at a
// time, recording what landed.
type writer struct {
	e       *Engine
	t       *tracked
	ctx     context.Context
	up      []decision.Entry
	upRows  []int32
	upHeld  []held
	del     []netip.Prefix
	delRows []int32
	nu, nd  int
	errs    []error
}

func (e *Engine) newWriter(ctx context.Context, t *tracked) *writer {
	return &writer{e: e, t: t, ctx: ctx}
}

// diff queues what row r needs in the writer's backend at now.
func (w *writer) diff(r int32, now int64) {
	tab := &w.e.tab
	want, ok := tab.want(r, now)
	have := tab.held[w.t.col][r]
	switch {
	case ok && !same(have, want):
		w.up = append(w.up, tab.entry(r, want))
		w.upRows = append(w.upRows, r)
		w.upHeld = append(w.upHeld, want)
	case !ok && have.has:
		w.del = append(w.del, tab.rows[r].key().prefix())
		w.delRows = append(w.delRows, r)
	default:
		return
	}
	if len(w.up)+len(w.del) >= writeChunk {
		w.flush()
	}
}

// flush applies what is pending. The backend must not keep the slices,
// which are reused.
func (w *writer) flush() {
	if len(w.up) == 0 && len(w.del) == 0 {
		return
	}
	w.nu += len(w.up)
	w.nd += len(w.del)
	if err := w.t.be.Apply(w.ctx, w.up, w.del); err != nil {
		// Part of it may have landed: read the backend back next time.
		w.t.stale = true
		w.errs = append(w.errs, err)
	} else {
		tab := &w.e.tab
		for i, r := range w.upRows {
			tab.setHeld(w.t.col, r, w.upHeld[i])
		}
		for _, r := range w.delRows {
			tab.setHeld(w.t.col, r, held{})
		}
		w.e.obs.Applied(w.t.be.Name(), len(w.up), len(w.del))
	}
	w.up, w.upRows, w.upHeld = w.up[:0], w.upRows[:0], w.upHeld[:0]
	w.del, w.delRows = w.del[:0], w.delRows[:0]
}

// close flushes and returns the entries written and removed, and the
// errors of the backend, logged once.
func (w *writer) close() (int, int, error) {
	w.flush()
	if len(w.errs) == 0 {
		return w.nu, w.nd, nil
	}
	err := errors.Join(w.errs...)
	w.e.log.Error("backend write failed", "backend", w.t.be.Name(), "upserts", w.nu, "deletes", w.nd, "error", err)
	return w.nu, w.nd, fmt.Errorf("%s: %w", w.t.be.Name(), err)
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

// Entries returns the effective entries the decisions ask for now, in no
// particular order.
func (e *Engine) Entries() []decision.Entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []decision.Entry
	e.eachWanted(func(en decision.Entry) { out = append(out, en) })
	return out
}

// Each calls fn with every effective entry the decisions ask for now, in
// no particular order, without building a list: for metrics scraped
// every few seconds over 100k entries. fn must not call the engine.
func (e *Engine) Each(fn func(decision.Entry)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.eachWanted(fn)
}

// Len returns the number of effective entries the decisions ask for now.
func (e *Engine) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now, n := nanos(e.now()), 0
	for r := range e.tab.rows {
		if e.tab.rows[r].used {
			if _, ok := e.tab.want(int32(r), now); ok {
				n++
			}
		}
	}
	return n
}

func (e *Engine) eachWanted(fn func(decision.Entry)) {
	now := nanos(e.now())
	for r := range e.tab.rows {
		if !e.tab.rows[r].used {
			continue
		}
		if want, ok := e.tab.want(int32(r), now); ok {
			fn(e.tab.entry(int32(r), want))
		}
	}
}

// Enforced returns, per backend name, the entries the engine knows the
// backend enforces.
func (e *Engine) Enforced() map[string][]decision.Entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string][]decision.Entry{}
	for _, t := range e.bes {
		var l []decision.Entry
		for r, h := range e.tab.held[t.col] {
			if h.has {
				l = append(l, e.tab.entry(int32(r), h))
			}
		}
		out[t.be.Name()] = l
	}
	return out
}
