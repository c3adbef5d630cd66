package edgesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
)

// Zone is a zone whose custom rules get edgesync's block rule.
type Zone struct {
	ID string
	// ExcludeHosts are never blocked (login hosts), normalized.
	ExcludeHosts []string
}

// DefaultChunkSize is the number of items one bulk operation carries.
const DefaultChunkSize = 1000

// Syncer applies plans to Cloudflare through a Client.
type Syncer struct {
	Client   cloudflare.Client
	ListName string
	Zones    []Zone
	// MaxDeleteRatio feeds Plan.Guard.
	MaxDeleteRatio float64
	// ChunkSize is the number of items per bulk operation.
	ChunkSize int
	// Poll paces the polling of bulk operations.
	Poll cloudflare.PollPolicy
	Log  *slog.Logger
}

// RunOptions are the per-run switches of the command line.
type RunOptions struct {
	// DryRun reads and plans but writes nothing.
	DryRun bool
	// Force overrides the delete guard.
	Force bool
}

// Report tells what a sync found and did.
type Report struct {
	DryRun      bool
	ListID      string
	ListCreated bool
	Plan        Plan
	// Added and Deleted count items of completed operations.
	Added, Deleted int
	Operations     int
	Polls          int
	Rules          []RuleChange
}

// Sync makes the list hold exactly desired and each zone hold edgesync's
// rule. It writes one bulk operation at a time and waits for each. It
// deletes before it adds, so a full list makes room first, and it never
// replaces the whole list. A run that fails leaves what it applied; the
// next run converges from there.
func (s *Syncer) Sync(ctx context.Context, desired []Desired, now time.Time, opt RunOptions) (Report, error) {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rep := Report{DryRun: opt.DryRun}

	// Refuse a rule Cloudflare would refuse before anything is written.
	wants := make([]cloudflare.Rule, len(s.Zones))
	for i, z := range s.Zones {
		r, err := WantRule(s.ListName, z.ExcludeHosts)
		if err != nil {
			return rep, fmt.Errorf("zone %s: %w", z.ID, err)
		}
		wants[i] = r
	}

	list, err := s.Client.FindList(ctx, s.ListName)
	var current []cloudflare.Item
	switch {
	case errors.Is(err, cloudflare.ErrListNotFound):
		rep.ListCreated = true
		if !opt.DryRun {
			list, err = s.Client.CreateList(ctx, s.ListName, "CrowdSec decisions, kept by edgesync")
			if err != nil {
				return rep, fmt.Errorf("create list %s: %w", s.ListName, err)
			}
			log.Info("created list", "list", s.ListName, "id", list.ID)
		}
	case err != nil:
		return rep, fmt.Errorf("find list %s: %w", s.ListName, err)
	default:
		if list.Kind != "ip" {
			return rep, fmt.Errorf("list %s is of kind %q, not ip", s.ListName, list.Kind)
		}
		current, err = s.Client.ListItems(ctx, list.ID)
		if err != nil {
			return rep, fmt.Errorf("read list %s: %w", s.ListName, err)
		}
	}
	rep.ListID = list.ID

	rep.Plan = MakePlan(desired, current, now)
	var errs []error
	if !opt.Force {
		if err := rep.Plan.Guard(s.MaxDeleteRatio); err != nil {
			if !opt.DryRun {
				return rep, err
			}
			// A dry run goes on to show the rules, and fails as the
			// real run would.
			errs = append(errs, err)
		}
	}

	if !opt.DryRun && rep.Plan.Changes() {
		if err := s.apply(ctx, list.ID, &rep, log); err != nil {
			errs = append(errs, err)
		}
	}
	for i, z := range s.Zones {
		ch, err := s.syncRule(ctx, z, wants[i], opt.DryRun)
		rep.Rules = append(rep.Rules, ch)
		if err != nil {
			errs = append(errs, fmt.Errorf("zone %s: %w", z.ID, err))
		} else if ch.Action != RuleUnchanged && !opt.DryRun {
			log.Info("rule changed", "zone", z.ID, "action", ch.Action, "expression", ch.To)
		}
	}
	return rep, errors.Join(errs...)
}

func (s *Syncer) apply(ctx context.Context, listID string, rep *Report, log *slog.Logger) error {
	chunk := s.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	wait := func(kind string, n int, opID string) error {
		rep.Operations++
		_, polls, err := cloudflare.WaitOperation(ctx, s.Client, opID, s.Poll)
		rep.Polls += polls
		if err != nil {
			return fmt.Errorf("%s %d items: %w", kind, n, err)
		}
		log.Debug("bulk operation completed", "kind", kind, "items", n, "operation", opID, "polls", polls)
		return nil
	}
	del := rep.Plan.Delete
	for start := 0; start < len(del); start += chunk {
		part := del[start:min(start+chunk, len(del))]
		ids := make([]string, len(part))
		for i, it := range part {
			ids[i] = it.ID
		}
		op, err := s.Client.DeleteItems(ctx, listID, ids)
		if err != nil {
			return fmt.Errorf("delete %d items: %w", len(ids), err)
		}
		if err := wait("delete", len(ids), op); err != nil {
			return err
		}
		rep.Deleted += len(ids)
	}
	add := rep.Plan.Add
	for start := 0; start < len(add); start += chunk {
		part := add[start:min(start+chunk, len(add))]
		op, err := s.Client.AddItems(ctx, listID, part)
		if err != nil {
			return fmt.Errorf("add %d items: %w", len(part), err)
		}
		if err := wait("add", len(part), op); err != nil {
			return err
		}
		rep.Added += len(part)
	}
	return nil
}

func (s *Syncer) syncRule(ctx context.Context, z Zone, want cloudflare.Rule, dryRun bool) (RuleChange, error) {
	rs, err := s.Client.Entrypoint(ctx, z.ID, cloudflare.PhaseCustomRules)
	exists := true
	if errors.Is(err, cloudflare.ErrNoEntrypoint) {
		exists, err = false, nil
	}
	if err != nil {
		return RuleChange{Zone: z.ID, To: want.Expression}, fmt.Errorf("read custom rules: %w", err)
	}
	ch, rule := PlanRule(z.ID, rs, exists, want)
	if dryRun {
		return ch, nil
	}
	switch ch.Action {
	case RuleCreateRuleset:
		_, err = s.Client.CreateEntrypoint(ctx, z.ID, cloudflare.PhaseCustomRules, []cloudflare.Rule{rule})
	case RuleCreate:
		_, err = s.Client.CreateRule(ctx, z.ID, rs.ID, rule)
	case RuleUpdate:
		_, err = s.Client.EditRule(ctx, z.ID, rs.ID, rule)
	}
	if err != nil {
		return ch, fmt.Errorf("%s rule: %w", ch.Action, err)
	}
	return ch, nil
}
