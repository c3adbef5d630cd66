package edgesync

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/lapi"
)

// Source is the decision source of a one-shot run: the LAPI's startup
// answer, every active decision (lapi.Client).
type Source interface {
	FullPull(ctx context.Context) ([]*models.Decision, error)
}

// DefaultResync is how often the daemon syncs even when the decisions did
// not change, to repair changes made to the list or the rules by hand.
const DefaultResync = 30 * time.Minute

// Runner reads decisions and syncs them.
type Runner struct {
	Select SelectOptions
	Syncer *Syncer
	// Interval is the daemon's sync_interval.
	Interval time.Duration
	// Resync is the daemon's full sync period (DefaultResync when zero).
	Resync time.Duration
	// Out receives the printed plan of a dry run.
	Out io.Writer
	Log *slog.Logger
	// Now is time.Now unless a test sets it.
	Now func() time.Time
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Once pulls every active decision and syncs once.
func (r *Runner) Once(ctx context.Context, src Source, opt RunOptions) (Report, error) {
	raw, err := src.FullPull(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("read decisions from the LAPI: %w", err)
	}
	now := r.now()
	skipped := map[string]int{}
	ds := ParseDecisions(raw, now, r.Select, skipped)
	return r.sync(ctx, ds, now, skipped, opt)
}

func (r *Runner) sync(ctx context.Context, ds []decision.Decision, now time.Time, skipped map[string]int, opt RunOptions) (Report, error) {
	log := r.log()
	sel := Select(ds, now, r.Select, skipped)
	attrs := []any{"decisions", sel.Decisions, "prefixes", len(sel.Items), "widened", sel.Widened, "merged", sel.Merged}
	for _, reason := range slices.Sorted(maps.Keys(sel.Skipped)) {
		attrs = append(attrs, "skipped_"+reason, sel.Skipped[reason])
	}
	log.Info("decisions selected", attrs...)
	if sel.OverCap > 0 {
		log.Warn("more prefixes than max_items: the lowest ranked are left out",
			"left_out", sel.OverCap, "max_items", r.Select.MaxItems)
	}
	start := time.Now()
	rep, err := r.Syncer.Sync(ctx, sel.Items, now, opt)
	if opt.DryRun && r.Out != nil {
		PrintReport(r.Out, rep, r.Syncer.ListName)
	}
	attrs = []any{"list", r.Syncer.ListName, "items", rep.Plan.Current, "to_add", len(rep.Plan.Add),
		"to_delete", len(rep.Plan.Delete), "added", rep.Added, "deleted", rep.Deleted,
		"operations", rep.Operations, "duration", time.Since(start).Round(time.Millisecond), "dry_run", opt.DryRun}
	for _, ch := range rep.Rules {
		attrs = append(attrs, "rule_"+ch.Zone, string(ch.Action))
	}
	if err != nil {
		log.Error("sync failed", append(attrs, "error", err)...)
		return rep, err
	}
	log.Info("sync done", attrs...)
	return rep, nil
}

// Daemon follows the decision stream and syncs every Interval when the
// wanted prefixes changed, and every Resync regardless. A failed sync is
// tried again at the next interval. opt.Force applies to the first sync
// only. It returns nil when ctx ends, or the stream's error. stream is
// lapi.Client in production.
func (r *Runner) Daemon(ctx context.Context, stream lapi.Source, opt RunOptions) error {
	log := r.log()
	if r.Interval <= 0 {
		return errors.New("daemon: sync interval is not set")
	}
	resync := r.Resync
	if resync <= 0 {
		resync = DefaultResync
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan lapi.Batch, 8)
	errc := make(chan error, 1)
	go func() { errc <- stream.Run(sctx, batches) }()

	po := r.Select.ParseOptions()
	state := map[int64]decision.Decision{}
	skipped := map[string]int{}
	var (
		ready    bool
		lastKey  uint64
		lastFull time.Time
		pending  = true // the last sync failed, or none ran yet
	)
	run := func(always bool) {
		now := r.now()
		for id, d := range state {
			if !d.Expiry.IsZero() && !d.Expiry.After(now) {
				delete(state, id)
			}
		}
		ds := slices.Collect(maps.Values(state))
		sel := Select(ds, now, r.Select, maps.Clone(skipped))
		key := fingerprint(sel.Items)
		if !always && !pending && key == lastKey && now.Sub(lastFull) < resync {
			return
		}
		_, err := r.sync(ctx, ds, now, maps.Clone(skipped), opt)
		if err != nil {
			pending = true
			return
		}
		pending, lastKey, lastFull = false, key, now
		opt.Force = false
	}

	ticker := time.NewTicker(r.Interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("stream ended")
			}
			return fmt.Errorf("decision stream: %w", err)
		case b := <-batches:
			// Durations count from when the answer arrived.
			now := b.Received
			if now.IsZero() {
				now = r.now()
			}
			if b.Startup {
				clear(state)
				clear(skipped)
			} else {
				for _, d := range b.Deleted {
					if d != nil {
						delete(state, d.ID)
					}
				}
			}
			for _, raw := range b.New {
				d, err := decision.Parse(raw, now, po)
				if err != nil {
					var se *decision.SkipError
					if errors.As(err, &se) {
						skipped[string(se.Reason)]++
						log.Debug("decision skipped", "error", err)
					}
					continue
				}
				state[d.ID] = d
			}
			log.Debug("decision batch", "startup", b.Startup, "new", len(b.New), "deleted", len(b.Deleted), "active", len(state))
			if !ready {
				ready = true
				run(true)
			}
		case <-ticker.C:
			if ready {
				run(false)
			}
		}
	}
}

// fingerprint identifies a set of prefixes.
func fingerprint(ds []Desired) uint64 {
	keys := make([]string, len(ds))
	for i, d := range ds {
		keys[i] = d.Prefix.String()
	}
	slices.Sort(keys)
	h := fnv.New64a()
	for _, k := range keys {
		_, _ = io.WriteString(h, k)
		_, _ = h.Write([]byte{0})
	}
	return h.Sum64()
}
