// Package lapi is the decision source: it follows the decision stream of a
// CrowdSec Local API (GET /v1/decisions/stream) as a bouncer, and never
// gives up on it.
//
// It talks to LAPI with the API client of CrowdSec
// (github.com/crowdsecurity/crowdsec/pkg/apiclient), the one
// go-cs-bouncer's StreamBouncer wraps, rather than with StreamBouncer
// itself. StreamBouncer (v0.0.21) closes its stream and returns on the
// first failed startup pull unless told to retry every 10 s without
// backoff, retries later failures on its fixed ticker, never pulls the
// startup set again after an outage (so deltas lost with a failed request
// stay lost), cannot be asked for a fresh startup pull, reports health only
// through global Prometheus counters, and logs through the global logrus
// logger on every failed request. Client does all of that as a remediation
// component that must not lose a ban needs: backoff with jitter, a startup
// pull after any failure, Resync, health, and slog.
package lapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/configfile"
	"github.com/xdpgate/xdpgate/internal/decision"
)

// Config says which LAPI to follow and which decisions to ask for.
type Config struct {
	// URL is the LAPI base URL, http:// or https://.
	URL string
	// APIKey authenticates the bouncer (`cscli bouncers add`). Either
	// APIKey or CertPath and KeyPath (mutual TLS) is needed, not both.
	APIKey configfile.Secret
	// CertPath and KeyPath are a client certificate and its key, for
	// LAPI's TLS authentication of bouncers.
	CertPath, KeyPath string
	// CACertPath is a PEM file of CAs trusted for LAPI's certificate,
	// added to the system's.
	CACertPath string
	// InsecureSkipVerify accepts any server certificate.
	InsecureSkipVerify bool
	// UpdateFrequency is the time between two pulls; 10 s when zero.
	UpdateFrequency time.Duration
	// The stream filters of LAPI: decisions of these origins ("crowdsec",
	// "cscli", "CAPI", "lists", ...), of these scopes ("ip", "range"; LAPI
	// sends both when empty), with scenarios containing, or not
	// containing, these strings.
	Origins, Scopes, ScenariosContaining, ScenariosNotContaining []string
	// UserAgent is sent with every request, as "name/version": LAPI
	// records the two parts as the bouncer's type and version (cscli
	// bouncers list) and warns about any other form. "xdpgate/dev" when
	// empty; a value without a version gets "/dev".
	UserAgent string
}

// DefaultUpdateFrequency is the pull period when Config leaves it zero.
const DefaultUpdateFrequency = 10 * time.Second

// Batch is what one successful pull brought.
type Batch struct {
	// Startup is set when New is the complete set of active decisions
	// (the first pull, and the first after a failure or a Resync): the
	// consumer reconciles by difference and ignores Deleted.
	Startup bool
	// New and Deleted are the decisions as LAPI sent them. Durations are
	// relative to Received.
	New, Deleted []*models.Decision
	// Set holds the decisions of a startup batch instead of New when the
	// client was made WithDecisionSets; New is nil then.
	Set *decision.Set
	// Received is when the answer arrived.
	Received time.Time
}

// Source delivers decision batches. Run blocks until ctx is done and then
// returns ctx.Err(); it does not return on LAPI errors.
type Source interface {
	Run(ctx context.Context, out chan<- Batch) error
}

// The results of a pull, as counter labels.
const (
	ResultOK    = "ok"
	ResultError = "error"
)

// PullEvent describes one finished pull, for metrics.
type PullEvent struct {
	Result   string // ResultOK or ResultError
	Startup  bool
	Duration time.Duration
	New      int // decisions received
	Deleted  int
	Err      error // nil when Result is ResultOK
}

// PullCounts are the pulls done since the client was made.
type PullCounts struct{ OK, Error uint64 }

var (
	// ErrUnauthorized is wrapped by pull errors when LAPI refuses the API
	// key or the client certificate.
	ErrUnauthorized = errors.New("LAPI refused the bouncer's credentials")
	// ErrAlreadyRunning is returned by Run when the client runs already.
	ErrAlreadyRunning = errors.New("lapi: client is already running")
)

// Client follows a LAPI decision stream. Make it with New.
type Client struct {
	cfg     Config
	baseURL string // for logs and errors; holds no secret
	api     *apiclient.ApiClient
	hc      *http.Client
	filters apiclient.DecisionsStreamOpts
	log     *slog.Logger
	sets    bool // startup pulls are delivered as decision sets

	backoffMin, backoffMax time.Duration
	timeout                time.Duration
	observe                func(PullEvent)

	running atomic.Bool
	resync  chan struct{}
	// cursorMoves counts the pulls made outside Run (FullPull). LAPI
	// keeps one delta cursor per bouncer and every stream request moves
	// it, so Run must not trust its next delta after one of those.
	cursorMoves atomic.Uint64

	okPulls, errPulls atomic.Uint64
	mu                sync.Mutex
	lastSuccess       time.Time
	lastErr           error

	usageOnce sync.Once // logs "no usage metrics endpoint" once
}

var _ Source = (*Client)(nil)

// Option changes a Client made by New.
type Option func(*Client)

// WithLogger sets the logger; slog.Default() otherwise.
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// WithBackoff sets the delay before the first retry after a failed pull
// and the cap of the delay, which doubles after every failure (1 s and
// 1 min by default). Each delay is drawn at random between half and all of
// its value, so that many nodes do not retry in step.
func WithBackoff(initial, max time.Duration) Option {
	return func(c *Client) { c.backoffMin, c.backoffMax = initial, max }
}

// WithRequestTimeout bounds one pull, answer included (2 min by default:
// the startup set of 100k decisions is 15 MB of JSON).
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithPullObserver calls fn after every pull, for metrics. fn must not
// block.
func WithPullObserver(fn func(PullEvent)) Option { return func(c *Client) { c.observe = fn } }

// WithDecisionSets makes Run deliver the decisions of a startup pull in
// Batch.Set, packed as the answer is decoded, rather than in Batch.New.
// The startup set of a large LAPI (100k decisions, 15 MB of JSON) then
// costs a few MB rather than tens of MB of *models.Decision values. The
// consumer must read Batch.Set (engine.StartupSet does).
func WithDecisionSets() Option { return func(c *Client) { c.sets = true } }

// New checks cfg and makes a client. It does not contact LAPI.
func New(cfg Config, opts ...Option) (*Client, error) {
	if cfg.UpdateFrequency == 0 {
		cfg.UpdateFrequency = DefaultUpdateFrequency
	}
	if cfg.UpdateFrequency < 0 {
		return nil, fmt.Errorf("lapi: update frequency %v is negative", cfg.UpdateFrequency)
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "xdpgate"
	}
	if !strings.Contains(cfg.UserAgent, "/") {
		cfg.UserAgent += "/dev"
	}
	u, err := url.Parse(cfg.URL)
	switch {
	case cfg.URL == "":
		return nil, errors.New("lapi: no URL")
	case err != nil:
		return nil, fmt.Errorf("lapi: URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("lapi: URL %q: scheme must be http or https", cfg.URL)
	case u.Host == "":
		return nil, fmt.Errorf("lapi: URL %q has no host", cfg.URL)
	case u.User != nil:
		return nil, errors.New("lapi: URL must not hold credentials")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	hc, err := httpClient(cfg, u)
	if err != nil {
		return nil, err
	}
	api, err := apiclient.NewDefaultClient(u, "v1", cfg.UserAgent, hc)
	if err != nil {
		return nil, fmt.Errorf("lapi: %w", err)
	}
	c := &Client{
		cfg:     cfg,
		baseURL: u.String(),
		api:     api,
		hc:      hc,
		filters: apiclient.DecisionsStreamOpts{
			Scopes:                 strings.Join(cfg.Scopes, ","),
			Origins:                strings.Join(cfg.Origins, ","),
			ScenariosContaining:    strings.Join(cfg.ScenariosContaining, ","),
			ScenariosNotContaining: strings.Join(cfg.ScenariosNotContaining, ","),
			// Both default to true on LAPI's side and are only sent
			// when false; they concern LAPI's own CAPI pulls.
			CommunityPull:  true,
			AdditionalPull: true,
		},
		log:        slog.Default(),
		backoffMin: time.Second,
		backoffMax: time.Minute,
		timeout:    2 * time.Minute,
		resync:     make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(c)
	}
	if c.backoffMin <= 0 || c.backoffMax < c.backoffMin {
		return nil, fmt.Errorf("lapi: backoff %v..%v is not a range", c.backoffMin, c.backoffMax)
	}
	c.log = c.log.With("lapi", c.baseURL)
	return c, nil
}

// Run pulls the startup set, then deltas every UpdateFrequency, and sends
// every pull that brought something to out. It never gives up: when a
// pull fails it retries with backoff, and the first pull after a failure
// is a startup pull, so that nothing lost with the failed request is
// missed. A failure never produces a batch. Run returns ctx.Err() when ctx
// is done.
func (c *Client) Run(ctx context.Context, out chan<- Batch) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer c.running.Store(false)

	startup := true
	failures := 0
	moves := c.cursorMoves.Load()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-c.resync:
			startup = true
		}
		if m := c.cursorMoves.Load(); m != moves {
			c.log.Debug("another pull moved the stream cursor: pulling the startup set")
			startup, moves = true, m
		}

		res, err := c.pull(ctx, startup, c.sets)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			delay := c.backoff(failures)
			level := slog.LevelWarn
			if errors.Is(err, ErrUnauthorized) {
				level = slog.LevelError
			}
			c.log.Log(ctx, level, "decision pull failed", "err", err, "failures", failures, "retry_in", delay.Round(time.Millisecond))
			// The request may have reached LAPI and moved the
			// cursor while the answer was lost: only a startup pull
			// is sure to miss nothing.
			startup = true
			timer.Reset(delay)
			continue
		}
		if failures > 0 {
			c.log.Info("LAPI answers again", "failed_pulls", failures)
			failures = 0
		}
		c.log.Debug("decisions pulled", "startup", startup, "new", res.count(), "deleted", len(res.deleted))
		if startup || res.count() > 0 || len(res.deleted) > 0 {
			b := Batch{Startup: startup, New: res.new, Deleted: res.deleted, Set: res.set, Received: res.received}
			select {
			case out <- b:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		startup = false
		timer.Reset(c.cfg.UpdateFrequency)
	}
}

// Resync makes Run's next pull a startup pull, at once: Run then sends a
// Startup batch with the complete set. This is the way to resynchronise a
// running stream.
func (c *Client) Resync() {
	select {
	case c.resync <- struct{}{}:
	default: // one is pending already
	}
}

// FullPull fetches the complete set of active decisions (the stream's
// startup set, with the client's filters), independently of Run.
//
// LAPI keeps a single delta cursor per bouncer and a startup pull moves it
// too, so a FullPull while Run streams with the same credentials would
// make Run miss the changes between its last pull and this one. Run
// notices and makes its next pull a startup pull; Resync gets the same
// result with one pull less.
func (c *Client) FullPull(ctx context.Context) ([]*models.Decision, error) {
	c.cursorMoves.Add(1)
	res, err := c.pull(ctx, true, false)
	if err != nil {
		return nil, err
	}
	return res.new, nil
}

// FullPullSet is FullPull with the decisions packed into a set as they are
// decoded (see WithDecisionSets): the way to resynchronise a large
// decision set without holding it as *models.Decision values.
func (c *Client) FullPullSet(ctx context.Context) (*decision.Set, error) {
	c.cursorMoves.Add(1)
	res, err := c.pull(ctx, true, true)
	if err != nil {
		return nil, err
	}
	return res.set, nil
}

// pulled is what one successful pull brought.
type pulled struct {
	new, deleted []*models.Decision
	set          *decision.Set // startup pulls as sets
	received     time.Time
}

func (p *pulled) count() int {
	if p.set != nil {
		return p.set.Len()
	}
	return len(p.new)
}

// pull makes one stream request and records its outcome. A startup pull
// is decoded one decision at a time (pullStartup); a delta, small, goes
// through CrowdSec's client.
func (c *Client) pull(ctx context.Context, startup, asSet bool) (pulled, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	begin := time.Now()
	var res pulled
	var err error
	if startup {
		res, err = c.pullStartup(ctx, asSet)
	} else {
		var data *models.DecisionsStreamResponse
		var resp *apiclient.Response
		data, resp, err = c.api.Decisions.GetStream(ctx, c.filters)
		if err != nil {
			status := 0
			if resp != nil && resp.Response != nil {
				status = resp.Response.StatusCode
			}
			err = c.pullError(status, err)
		} else if data != nil {
			res.new, res.deleted = data.New, data.Deleted
		}
	}
	res.received = time.Now()
	c.record(PullEvent{Startup: startup, Duration: res.received.Sub(begin), Err: err}, &res)
	if err != nil {
		return pulled{}, err
	}
	return res, nil
}

func (c *Client) pullError(status int, err error) error {
	switch status {
	case 0:
		return fmt.Errorf("pull decisions from %s: %w", c.baseURL, err)
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("pull decisions from %s: %w (HTTP %d, check the API key or certificate): %w",
			c.baseURL, ErrUnauthorized, status, err)
	default:
		return fmt.Errorf("pull decisions from %s: HTTP %d: %w", c.baseURL, status, err)
	}
}

func (c *Client) record(ev PullEvent, res *pulled) {
	if ev.Err != nil {
		ev.Result = ResultError
		c.errPulls.Add(1)
	} else {
		ev.Result = ResultOK
		ev.New, ev.Deleted = res.count(), len(res.deleted)
		c.okPulls.Add(1)
	}
	c.mu.Lock()
	if ev.Err == nil {
		c.lastSuccess = time.Now()
	}
	c.lastErr = ev.Err
	c.mu.Unlock()
	if c.observe != nil {
		c.observe(ev)
	}
}

// backoff returns the delay before retry number n (from 1).
func (c *Client) backoff(n int) time.Duration {
	d := c.backoffMin
	for i := 1; i < n && d < c.backoffMax; i++ {
		d *= 2
	}
	d = min(d, c.backoffMax)
	return d/2 + rand.N(d/2+1)
}

// LastSuccess returns when a pull last succeeded; the zero time if none
// has.
func (c *Client) LastSuccess() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastSuccess
}

// LastError returns the error of the last pull, nil if it succeeded.
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Pulls returns how many pulls succeeded and failed.
func (c *Client) Pulls() PullCounts {
	return PullCounts{OK: c.okPulls.Load(), Error: c.errPulls.Load()}
}
