// Package agent is the xdpgate node agent: it loads and attaches the XDP
// program (or the nftables fallback), feeds both from the CrowdSec LAPI
// decision stream through the reconcile engine, follows interfaces as they
// come and go, and serves metrics and health.
//
// The agent never removes enforcement on its own way out: on SIGTERM it
// closes its handles and leaves the pinned program, maps and links (and
// the nftables tables) in place, so bans hold while it restarts or is
// upgraded. `xdpgate uninstall` is the only way enforcement is taken down.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/crowdsecurity/crowdsec/pkg/models"
	"github.com/google/nftables"

	"github.com/xdpgate/xdpgate/internal/config"
	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/engine"
	"github.com/xdpgate/xdpgate/internal/fleet"
	"github.com/xdpgate/xdpgate/internal/lapi"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/nftfallback"
)

// Source is where decisions come from: the LAPI stream in production.
type Source interface {
	// Run delivers batches until ctx is done, retrying on its own.
	Run(ctx context.Context, out chan<- lapi.Batch) error
	// FullPull fetches the complete set of active decisions.
	FullPull(ctx context.Context) ([]*models.Decision, error)
}

// InterfaceState is how one interface is enforced.
type InterfaceState struct {
	Interface string `json:"interface"`
	// Mode is "native", "generic" or "nftables".
	Mode  string `json:"mode"`
	Error string `json:"error,omitempty"`
}

// Agent is a running node agent.
type Agent struct {
	cfg    *config.Config
	log    *slog.Logger
	src    Source
	engine *engine.Engine
	m      *metrics
	// guard holds a complete set that would remove much of what is
	// enforced, whether it comes from a resync or from the stream's own
	// startup pull after a reconnect (fleet.ShrinkGuard). Used by the Run
	// goroutine only.
	guard fleet.ShrinkGuard

	usageMu sync.Mutex
	usage   usageState

	dp  *loader.Dataplane
	xdp *maps.Maps

	mu      sync.Mutex
	nft     *nftfallback.Backend
	ifaces  map[string]InterfaceState
	health  health
	started time.Time
}

type health struct {
	synced     bool // a startup set has been applied
	lastPull   time.Time
	lastError  string
	lastResync time.Time
	corrected  int
}

// New prepares an agent: it checks the kernel, loads (or reuses) the
// pinned program and maps, and reads what they already enforce. Nothing is
// attached or removed yet.
func New(ctx context.Context, cfg *config.Config, src Source, log *slog.Logger) (*Agent, error) {
	a := &Agent{cfg: cfg, log: log, src: src, ifaces: map[string]InterfaceState{}, started: time.Now()}
	var backends []decision.Backend
	if cfg.Mode != config.ModeNFTables {
		if err := loader.CheckKernel(); err != nil {
			return nil, err
		}
		dp, err := loader.Load(loader.Options{
			PinPath:   cfg.PinPath,
			CountOnly: cfg.CountOnly,
			Logger:    log,
			Sizes: loader.Sizes{
				V4Exact: cfg.Maps.IPv4Exact, V6Exact: cfg.Maps.IPv6Exact,
				V4Ranges: cfg.Maps.IPv4Ranges, V6Ranges: cfg.Maps.IPv6Ranges, Allow: cfg.Maps.Allowlist,
			},
		})
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				// The whole verifier log, for a bug report.
				log.Error("the kernel's verifier rejected the XDP program", "log", fmt.Sprintf("%+v", ve))
			}
			return nil, fmt.Errorf("load xdp: %w", err)
		}
		a.dp = dp
		if a.xdp, err = maps.New(&dp.Maps); err != nil {
			dp.Close()
			return nil, err
		}
		// An agent killed in the middle of a write may have left an
		// exact ban in bans_v4 that the cache in front of it does not
		// point to yet.
		if err := a.xdp.RebuildExact(); err != nil {
			log.Warn("rebuilding the exact IPv4 ban cache from the pinned map failed; some exact bans may not drop until the next rebuild", "error", err)
		}
		backends = append(backends, a.xdp)
	}
	a.engine = engine.New(engine.Options{
		Parse: decision.ParseOptions{
			Types:       typeSet(cfg.SupportedDecisionsTypes),
			MinPrefixV4: cfg.MinPrefixV4,
			MinPrefixV6: cfg.MinPrefixV6,
			DisableIPv6: cfg.DisableIPv6,
		},
		Allowlist: cfg.Allowlist,
		Logger:    log,
	}, backends...)
	a.m = newMetrics(a)
	a.engine.SetObserver(a.m)
	if err := a.engine.Init(ctx); err != nil {
		a.Close()
		return nil, err
	}
	// nftables: always in nftables/both mode; in xdp mode when an earlier
	// run left its tables (an interface fell back then): they are kept in
	// step rather than left to go stale.
	if cfg.Mode != config.ModeXDP || nftTablesExist(cfg) {
		if err := a.enableNFT(ctx); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

func typeSet(types []string) map[string]bool {
	out := map[string]bool{}
	for _, t := range types {
		out[t] = true
	}
	return out
}

func (a *Agent) nftConfig() nftfallback.Config {
	return nftfallback.Config{
		Table4:      a.cfg.NFTables.IPv4Table,
		Table6:      a.cfg.NFTables.IPv6Table,
		Hooks:       a.cfg.NFTables.Hooks,
		Priority:    int(a.cfg.NFTables.Priority),
		DisableIPv6: a.cfg.DisableIPv6,
	}
}

// enableNFT starts the nftables backend and brings it up to date.
func (a *Agent) enableNFT(ctx context.Context) error {
	a.mu.Lock()
	if a.nft != nil {
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	nft, err := nftfallback.New(a.nftConfig(), a.log)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := nft.Ensure(ctx); err != nil {
		nft.Close()
		return fmt.Errorf("nftables: %w", err)
	}
	if err := a.engine.AddBackend(ctx, nft); err != nil {
		// Added but not complete: the next reconcile finishes it.
		a.log.Error("nftables backend not fully up to date", "error", err)
	}
	a.mu.Lock()
	a.nft = nft
	a.mu.Unlock()
	a.log.Info("nftables enforcement enabled", "hooks", a.cfg.NFTables.Hooks)
	return nil
}

func nftTablesExist(cfg *config.Config) bool {
	c, err := nftables.New()
	if err != nil {
		return false
	}
	defer c.CloseLasting()
	ts, err := c.ListTables()
	if err != nil {
		return false
	}
	for _, t := range ts {
		if t.Family == nftables.TableFamilyIPv4 && t.Name == cfg.NFTables.IPv4Table ||
			t.Family == nftables.TableFamilyIPv6 && t.Name == cfg.NFTables.IPv6Table {
			return true
		}
	}
	return false
}

func (a *Agent) xdpMaps() *maps.Maps { return a.xdp }

func (a *Agent) nftBackend() *nftfallback.Backend {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nft
}

func (a *Agent) interfaceStates() []InterfaceState {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]InterfaceState, 0, len(a.ifaces))
	for _, s := range a.ifaces {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Interface < out[j].Interface })
	return out
}

// Close releases the agent's handles. Enforcement stays in the kernel.
func (a *Agent) Close() {
	if a.dp != nil {
		a.dp.Close()
	}
	if n := a.nftBackend(); n != nil {
		n.Close()
	}
}

// Run attaches, serves metrics and health, and applies the decision stream
// until ctx is done. It returns nil on a clean stop.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	links, routes := a.subscribeInterfaces(ctx)
	if err := a.syncInterfaces(ctx); err != nil {
		return err
	}
	go a.watchInterfaces(ctx, links, routes)

	srvErr := make(chan error, 1)
	if a.cfg.Prometheus.Enabled {
		srv, err := a.serve()
		if err != nil {
			return err
		}
		go func() { srvErr <- srv.wait() }()
		defer srv.close()
	}

	batches := make(chan lapi.Batch, 4)
	go func() {
		if err := a.src.Run(ctx, batches); err != nil && ctx.Err() == nil {
			a.log.Error("decision stream stopped", "error", err)
		}
	}()

	reconcile := time.NewTicker(time.Minute)
	defer reconcile.Stop()
	var resync <-chan time.Time // nil: resync disabled
	if a.cfg.ResyncInterval > 0 {
		resync = time.After(jitter(a.cfg.ResyncInterval))
	}
	a.writeState()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping: program, maps and rules stay in place")
			a.writeState()
			return nil
		case err := <-srvErr:
			return fmt.Errorf("metrics server: %w", err)
		case b := <-batches:
			a.apply(ctx, b)
		case <-reconcile.C:
			if st, err := a.engine.Reconcile(ctx); err != nil {
				a.log.Error("reconcile", "error", err)
			} else if st.Upserts+st.Deletes > 0 {
				a.log.Info("reconciled", "upserts", st.Upserts, "deletes", st.Deletes)
			}
		case <-resync:
			resync = time.After(a.resync(ctx, batches))
		}
	}
}

// jitter spreads d by ±10% so a fleet of agents does not pull in step.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

func (a *Agent) apply(ctx context.Context, b lapi.Batch) {
	start := time.Now()
	if b.Startup && a.engine.Synced() {
		// The stream pulled a complete set again (after LAPI came back,
		// maybe through another replica): the same guard as a resync.
		incoming := fleet.Candidates(b.New, a.cfg.SupportedDecisionsTypes)
		if b.Set != nil {
			incoming = b.Set.Len()
		}
		enforced := a.engine.Len()
		if check := a.guard.Check(enforced, incoming); check.Hold {
			a.m.resyncs.WithLabelValues("held").Inc()
			a.log.Warn("complete decision set from the stream would remove a large share of the enforced entries: held until the next full resync confirms it (a LAPI replica with an older view?)",
				"would_remove_at_least", check.Shrink, "enforced", enforced, "decisions", incoming)
			return
		}
	}
	var st engine.Stats
	var err error
	switch {
	case b.Startup && b.Set != nil:
		st, err = a.engine.StartupSet(ctx, b.Set)
	case b.Startup:
		st, err = a.engine.Startup(ctx, b.New)
	default:
		st, err = a.engine.Delta(ctx, b.New, b.Deleted)
	}
	if b.Startup && err == nil {
		a.mu.Lock()
		a.health.synced = true
		a.mu.Unlock()
	}
	lvl := slog.LevelDebug
	if b.Startup || st.Upserts+st.Deletes > 0 {
		lvl = slog.LevelInfo
	}
	a.log.Log(ctx, lvl, "decisions applied", "startup", b.Startup, "new", st.New, "deleted", st.Deleted,
		"skipped", st.Skipped, "upserts", st.Upserts, "deletes", st.Deletes, "took", time.Since(start).Round(time.Microsecond),
		"since_received", time.Since(b.Received).Round(time.Microsecond))
	if err != nil {
		a.log.Error("applying decisions", "error", err)
	}
	a.writeState()
}

// resync pulls the complete decision set and reconciles by difference: it
// repairs whatever deltas were lost (LAPI tracks the stream position per
// key, so agents sharing a key steal each other's deltas, and LAPI 1.4.6
// can hide a decision from a pull that runs while it is inserted). It
// returns when the next resync is due.
//
// The set comes from the stream itself (Resync): a FullPull beside it would
// move LAPI's cursor under the stream, which must then pull the startup set
// a second time to miss nothing. Deltas that arrive first are applied as
// usual. Nothing is removed before the set arrives, and a set that would
// remove a large share of what is enforced (a LAPI replica with an older
// view) is held, applied only when the next one says the same
// (fleet.ShrinkGuard).
func (a *Agent) resync(ctx context.Context, batches <-chan lapi.Batch) time.Duration {
	next := jitter(a.cfg.ResyncInterval)
	fail := func(msg string, err error) time.Duration {
		a.m.resyncs.WithLabelValues("error").Inc()
		a.log.Warn(msg+"; keeping what is enforced", "error", err)
		return next
	}
	a.log.Debug("full resync: asking LAPI for the complete decision set")
	// The set, as decisions or packed (lapi.WithDecisionSets).
	var ds []*models.Decision
	var set *decision.Set
	if s, ok := a.src.(interface{ Resync() }); ok {
		// The wait is bounded by the LAPI client's request timeout (2
		// min) and a retry. When it runs out (LAPI is down), the stream
		// still delivers the set later, as a startup batch.
		const resyncWait = 2*time.Minute + 10*time.Second
		s.Resync()
		timeout := time.NewTimer(resyncWait)
		defer timeout.Stop()
	wait:
		for {
			select {
			case <-ctx.Done():
				return next
			case <-timeout.C:
				return fail("full resync: no complete decision set from LAPI", fmt.Errorf("none within %v", resyncWait))
			case b := <-batches:
				if !b.Startup {
					a.apply(ctx, b)
					continue
				}
				ds, set = b.New, b.Set
				break wait
			}
		}
	} else {
		var err error
		if ds, err = a.src.FullPull(ctx); err != nil {
			return fail("full resync failed", err)
		}
	}
	// A packed set is counted whole, types unsupported included: a
	// looser bound, still never above the truth.
	n, incoming := len(ds), fleet.Candidates(ds, a.cfg.SupportedDecisionsTypes)
	if set != nil {
		n, incoming = set.Len(), set.Len()
	}

	start := time.Now()
	enforced := a.engine.Len()
	check := a.guard.Check(enforced, incoming)
	if check.Hold {
		// Nothing is applied: what it adds is most likely known
		// already, and the next set, soon, decides.
		a.m.resyncs.WithLabelValues("held").Inc()
		next = min(next, max(30*time.Second, 3*a.cfg.UpdateFrequency))
		a.log.Warn("full resync would remove a large share of the enforced entries: held until the next complete set confirms it (a LAPI replica with an older view?)",
			"would_remove_at_least", check.Shrink, "enforced", enforced, "decisions", n, "confirm_in", next.Round(time.Second))
		return next
	}
	var st engine.Stats
	var err error
	if set != nil {
		st, err = a.engine.StartupSet(ctx, set)
	} else {
		st, err = a.engine.Startup(ctx, ds)
	}
	if err != nil {
		a.m.resyncs.WithLabelValues("error").Inc()
		a.log.Error("full resync", "error", err)
		return next
	}
	a.m.resyncs.WithLabelValues("ok").Inc()
	a.m.lastResync.SetToCurrentTime()
	corrected := st.Upserts + st.Deletes
	a.m.corrected.Add(float64(corrected))
	a.mu.Lock()
	a.health.synced = true
	a.health.lastResync = time.Now()
	a.health.corrected = corrected
	a.mu.Unlock()
	took := time.Since(start).Round(time.Microsecond)
	if corrected > 0 {
		a.log.Warn("full resync corrected entries: deltas were lost (several agents sharing one LAPI key?)",
			"upserts", st.Upserts, "deletes", st.Deletes, "confirmed_removal", check.Confirmed, "decisions", n, "took", took)
	} else {
		a.log.Info("full resync: nothing to correct", "decisions", n, "took", took)
	}
	a.writeState()
	return next
}

// ObservePull records the outcome of one LAPI pull, successful or not,
// for readiness, status and metrics. It is the lapi client's observer.
func (a *Agent) ObservePull(ev lapi.PullEvent) {
	now := time.Now()
	ok := ev.Result == lapi.ResultOK
	a.m.PullResult(ok, now)
	a.mu.Lock()
	if ok {
		a.health.lastPull = now
		a.health.lastError = ""
	} else if ev.Err != nil {
		a.health.lastError = ev.Err.Error()
	}
	a.mu.Unlock()
	if !ok {
		a.writeState()
	}
}

// Ready says whether the agent enforces an up-to-date decision set.
func (a *Agent) Ready() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.health.synced {
		return false, "no decision set from LAPI yet (existing bans are still enforced)"
	}
	stale := max(3*a.cfg.UpdateFrequency, 5*time.Second)
	if since := time.Since(a.health.lastPull); since > stale {
		return false, fmt.Sprintf("no successful LAPI pull for %s (existing bans are still enforced)", since.Round(time.Second))
	}
	return true, "ok"
}
