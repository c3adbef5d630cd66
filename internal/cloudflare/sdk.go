package cloudflare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cloudflare/cloudflare-go/v7/option"
	"github.com/cloudflare/cloudflare-go/v7/rules"
	"github.com/cloudflare/cloudflare-go/v7/rulesets"

	"github.com/xdpgate/xdpgate/internal/configfile"
)

// DefaultBaseURL is Cloudflare's API v4 endpoint.
const DefaultBaseURL = "https://api.cloudflare.com/client/v4/"

// Config configures the SDK-backed client.
type Config struct {
	// AccountID owns the list.
	AccountID string
	// Token is an API token with Account Filter Lists Edit and Zone WAF
	// Edit permissions.
	Token configfile.Secret
	// BaseURL is DefaultBaseURL unless tests point it at a fake.
	BaseURL string
	// HTTPClient is the transport; nil means a client of its own.
	HTTPClient *http.Client
	// RequestTimeout bounds one HTTP attempt (default 60 s).
	RequestTimeout time.Duration
	// UserAgent is sent instead of the SDK's.
	UserAgent string
	// Retry is the retry policy; zero fields take DefaultRetryPolicy's.
	Retry RetryPolicy
	// Logger receives retries (warn) and every request (debug).
	Logger *slog.Logger
}

// SDK implements Client over github.com/cloudflare/cloudflare-go/v7.
//
// It uses the rules and rulesets service packages directly rather than the
// SDK's root client, which would read credentials and a base URL from
// CLOUDFLARE_* environment variables behind the configuration's back (and
// link every Cloudflare product into the binary).
type SDK struct {
	account  string
	lists    *rules.ListService
	rulesets *rulesets.RulesetService
	retry    RetryPolicy
	log      *slog.Logger
	requests atomic.Int64
}

var _ Client = (*SDK)(nil)

// New returns a client for one account.
func New(cfg Config) (*SDK, error) {
	if cfg.AccountID == "" {
		return nil, errors.New("cloudflare account id is empty")
	}
	if cfg.Token == "" {
		return nil, errors.New("cloudflare api token is empty")
	}
	base := cfg.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	if !strings.HasSuffix(base, "/") {
		base += "/" // the SDK resolves relative paths against it
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &SDK{account: cfg.AccountID, retry: cfg.Retry.withDefaults(), log: log}
	opts := []option.RequestOption{
		option.WithHTTPClient(hc),
		option.WithBaseURL(base),
		option.WithAPIToken(cfg.Token.Reveal()),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(timeout),
		option.WithMiddleware(c.observe),
	}
	if cfg.UserAgent != "" {
		opts = append(opts, option.WithHeader("User-Agent", cfg.UserAgent))
	}
	c.lists = rules.NewListService(opts...)
	c.rulesets = rulesets.NewRulesetService(opts...)
	return c, nil
}

// Requests returns the number of HTTP requests sent so far.
func (c *SDK) Requests() int64 { return c.requests.Load() }

// observe counts and logs every HTTP request. It never logs headers: the
// token travels in one.
func (c *SDK) observe(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	c.requests.Add(1)
	start := time.Now()
	res, err := next(req)
	status := 0
	if res != nil {
		status = res.StatusCode
	}
	c.log.Debug("cloudflare request", "method", req.Method, "path", req.URL.Path,
		"status", status, "duration", time.Since(start), "error", err)
	return res, err
}

// call runs one SDK call under the retry policy and turns its errors into
// *APIError.
func (c *SDK) call(ctx context.Context, op string, fn func(opts ...option.RequestOption) error) error {
	for attempt := 1; ; attempt++ {
		var res *http.Response
		err := fn(option.WithResponseInto(&res))
		if err == nil {
			return nil
		}
		err = convertError(op, err, res)
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", op, ctx.Err())
		}
		wait, again := c.retry.decide(err, attempt)
		if !again {
			return err
		}
		c.log.Warn("cloudflare call failed, retrying", "op", op, "attempt", attempt, "wait", wait, "error", err)
		if serr := c.retry.Sleep(ctx, wait); serr != nil {
			return fmt.Errorf("%s: %w (last error: %v)", op, serr, err)
		}
	}
}

func convertError(op string, err error, res *http.Response) error {
	var sdkErr *rules.Error
	if errors.As(err, &sdkErr) {
		e := &APIError{Op: op, StatusCode: sdkErr.StatusCode}
		for _, d := range sdkErr.Errors {
			e.Errors = append(e.Errors, ErrorDetail{Code: d.Code, Message: d.Message})
		}
		if sdkErr.Response != nil {
			e.RetryAfter = parseRetryAfter(sdkErr.Response.Header, time.Now())
		}
		return e
	}
	// An error status whose body is not Cloudflare's JSON (a proxy's HTML
	// page) comes back from the SDK as a decoding error; the status is still
	// what matters.
	if res != nil && res.StatusCode >= 400 {
		return &APIError{Op: op, StatusCode: res.StatusCode,
			Errors:     []ErrorDetail{{Message: "unexpected response body: " + err.Error()}},
			RetryAfter: parseRetryAfter(res.Header, time.Now())}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// set fills an SDK request field. The field type lives in an internal
// package of the SDK, so its two parts are reached through pointers.
func set[T any](value *T, present *bool, v T) { *value, *present = v, true }

// FindList implements Lists.
func (c *SDK) FindList(ctx context.Context, name string) (List, error) {
	var q rules.ListListParams
	set(&q.AccountID.Value, &q.AccountID.Present, c.account)
	var found []List
	err := c.call(ctx, "get lists", func(opts ...option.RequestOption) error {
		page, err := c.lists.List(ctx, q, opts...)
		if err != nil {
			return err
		}
		found = found[:0]
		for _, l := range page.Result {
			found = append(found, List{ID: l.ID, Name: l.Name, Kind: string(l.Kind),
				Description: l.Description, NumItems: int(l.NumItems)})
		}
		return nil
	})
	if err != nil {
		return List{}, err
	}
	for _, l := range found {
		if l.Name == name {
			return l, nil
		}
	}
	return List{}, fmt.Errorf("%w: %q", ErrListNotFound, name)
}

// CreateList implements Lists.
func (c *SDK) CreateList(ctx context.Context, name, description string) (List, error) {
	if err := ValidateListName(name); err != nil {
		return List{}, err
	}
	var p rules.ListNewParams
	set(&p.AccountID.Value, &p.AccountID.Present, c.account)
	set(&p.Kind.Value, &p.Kind.Present, rules.ListNewParamsKindIP)
	set(&p.Name.Value, &p.Name.Present, name)
	if description != "" {
		set(&p.Description.Value, &p.Description.Present, description)
	}
	var out List
	err := c.call(ctx, "create list", func(opts ...option.RequestOption) error {
		l, err := c.lists.New(ctx, p, opts...)
		if err != nil {
			return err
		}
		out = List{ID: l.ID, Name: l.Name, Kind: string(l.Kind), Description: l.Description, NumItems: int(l.NumItems)}
		return nil
	})
	return out, err
}

// ListItems implements Items. It pages with the cursor Cloudflare returns
// in result_info.cursors.after, MaxPerPage items a page, and retries each
// page on its own.
func (c *SDK) ListItems(ctx context.Context, listID string) ([]Item, error) {
	var out []Item
	cursor := ""
	for pageNo := 1; ; pageNo++ {
		var p rules.ListItemListParams
		set(&p.AccountID.Value, &p.AccountID.Present, c.account)
		set(&p.PerPage.Value, &p.PerPage.Present, int64(MaxPerPage))
		if cursor != "" {
			set(&p.Cursor.Value, &p.Cursor.Present, cursor)
		}
		var next string
		var n int
		err := c.call(ctx, "list items", func(opts ...option.RequestOption) error {
			page, err := c.lists.Items.List(ctx, listID, p, opts...)
			if err != nil {
				return err
			}
			n = len(page.Result)
			for _, it := range page.Result {
				out = append(out, Item{ID: it.ID, IP: it.IP, Comment: it.Comment})
			}
			next = page.ResultInfo.Cursors.After
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("page %d: %w", pageNo, err)
		}
		if next == "" || n == 0 {
			return out, nil
		}
		if next == cursor {
			return nil, fmt.Errorf("list items: page %d returned its own cursor again", pageNo)
		}
		cursor = next
	}
}

// AddItems implements Items.
func (c *SDK) AddItems(ctx context.Context, listID string, items []NewItem) (string, error) {
	var p rules.ListItemNewParams
	set(&p.AccountID.Value, &p.AccountID.Present, c.account)
	p.Body = make([]rules.ListItemNewParamsBodyUnion, 0, len(items))
	for _, it := range items {
		var b rules.ListItemNewParamsBodyListsListItemIPComment
		set(&b.IP.Value, &b.IP.Present, it.IP)
		if it.Comment != "" {
			set(&b.Comment.Value, &b.Comment.Present, it.Comment)
		}
		p.Body = append(p.Body, b)
	}
	var op string
	err := c.call(ctx, "add list items", func(opts ...option.RequestOption) error {
		r, err := c.lists.Items.New(ctx, listID, p, opts...)
		if err != nil {
			return err
		}
		op = r.OperationID
		return nil
	})
	if err == nil && op == "" {
		err = errors.New("add list items: answer carries no operation_id")
	}
	return op, err
}

// DeleteItems implements Items.
func (c *SDK) DeleteItems(ctx context.Context, listID string, itemIDs []string) (string, error) {
	var p rules.ListItemDeleteParams
	set(&p.AccountID.Value, &p.AccountID.Present, c.account)
	ids := make([]rules.ListItemDeleteParamsItem, len(itemIDs))
	for i, id := range itemIDs {
		set(&ids[i].ID.Value, &ids[i].ID.Present, id)
	}
	set(&p.Items.Value, &p.Items.Present, ids)
	var op string
	err := c.call(ctx, "delete list items", func(opts ...option.RequestOption) error {
		r, err := c.lists.Items.Delete(ctx, listID, p, opts...)
		if err != nil {
			return err
		}
		op = r.OperationID
		return nil
	})
	if err == nil && op == "" {
		err = errors.New("delete list items: answer carries no operation_id")
	}
	return op, err
}

// BulkOperation implements BulkOperations.
func (c *SDK) BulkOperation(ctx context.Context, operationID string) (Operation, error) {
	var q rules.ListBulkOperationGetParams
	set(&q.AccountID.Value, &q.AccountID.Present, c.account)
	var out Operation
	err := c.call(ctx, "get bulk operation", func(opts ...option.RequestOption) error {
		r, err := c.lists.BulkOperations.Get(ctx, operationID, q, opts...)
		if err != nil {
			return err
		}
		out = Operation{ID: r.ID, Status: OperationStatus(r.Status), Error: r.Error}
		return nil
	})
	return out, err
}

// Entrypoint implements Rulesets.
func (c *SDK) Entrypoint(ctx context.Context, zoneID, phase string) (Ruleset, error) {
	var q rulesets.PhaseGetParams
	set(&q.ZoneID.Value, &q.ZoneID.Present, zoneID)
	var out Ruleset
	err := c.call(ctx, "get entrypoint ruleset", func(opts ...option.RequestOption) error {
		r, err := c.rulesets.Phases.Get(ctx, rulesets.Phase(phase), q, opts...)
		if err != nil {
			return err
		}
		out = Ruleset{ID: r.ID, Name: r.Name, Kind: string(r.Kind), Phase: string(r.Phase), Version: r.Version}
		for _, x := range r.Rules {
			out.Rules = append(out.Rules, Rule{ID: x.ID, Ref: x.Ref, Action: string(x.Action),
				Expression: x.Expression, Description: x.Description, Enabled: x.Enabled})
		}
		return nil
	})
	return out, err
}

func blockRule(r Rule) rulesets.BlockRuleParam {
	var b rulesets.BlockRuleParam
	set(&b.Action.Value, &b.Action.Present, rulesets.BlockRuleActionBlock)
	set(&b.Expression.Value, &b.Expression.Present, r.Expression)
	set(&b.Description.Value, &b.Description.Present, r.Description)
	set(&b.Enabled.Value, &b.Enabled.Present, r.Enabled)
	if r.Ref != "" {
		set(&b.Ref.Value, &b.Ref.Present, r.Ref)
	}
	return b
}

func checkBlock(r Rule) error {
	if r.Action != "block" {
		return fmt.Errorf("rule %q: action %q is not supported, only block", r.Ref, r.Action)
	}
	return nil
}

// CreateEntrypoint implements Rulesets.
func (c *SDK) CreateEntrypoint(ctx context.Context, zoneID, phase string, rs []Rule) (Ruleset, error) {
	var p rulesets.RulesetNewParams
	set(&p.ZoneID.Value, &p.ZoneID.Present, zoneID)
	set(&p.Kind.Value, &p.Kind.Present, rulesets.KindZone)
	set(&p.Name.Value, &p.Name.Present, "default")
	set(&p.Phase.Value, &p.Phase.Present, rulesets.Phase(phase))
	body := make([]rulesets.RulesetNewParamsRuleUnion, 0, len(rs))
	for _, r := range rs {
		if err := checkBlock(r); err != nil {
			return Ruleset{}, err
		}
		body = append(body, blockRule(r))
	}
	set(&p.Rules.Value, &p.Rules.Present, body)
	var out Ruleset
	err := c.call(ctx, "create entrypoint ruleset", func(opts ...option.RequestOption) error {
		r, err := c.rulesets.New(ctx, p, opts...)
		if err != nil {
			return err
		}
		out = Ruleset{ID: r.ID, Name: r.Name, Kind: string(r.Kind), Phase: string(r.Phase), Version: r.Version}
		for _, x := range r.Rules {
			out.Rules = append(out.Rules, Rule{ID: x.ID, Ref: x.Ref, Action: string(x.Action),
				Expression: x.Expression, Description: x.Description, Enabled: x.Enabled})
		}
		return nil
	})
	return out, err
}

// CreateRule implements Rulesets.
func (c *SDK) CreateRule(ctx context.Context, zoneID, rulesetID string, rule Rule) (Ruleset, error) {
	if err := checkBlock(rule); err != nil {
		return Ruleset{}, err
	}
	var p rulesets.RuleNewParams
	set(&p.ZoneID.Value, &p.ZoneID.Present, zoneID)
	p.Body = rulesets.RuleNewParamsBodyBlockRule{BlockRuleParam: blockRule(rule)}
	var out Ruleset
	err := c.call(ctx, "create rule", func(opts ...option.RequestOption) error {
		r, err := c.rulesets.Rules.New(ctx, rulesetID, p, opts...)
		if err != nil {
			return err
		}
		out = Ruleset{ID: r.ID, Name: r.Name, Kind: string(r.Kind), Phase: string(r.Phase), Version: r.Version}
		for _, x := range r.Rules {
			out.Rules = append(out.Rules, Rule{ID: x.ID, Ref: x.Ref, Action: string(x.Action),
				Expression: x.Expression, Description: x.Description, Enabled: x.Enabled})
		}
		return nil
	})
	return out, err
}

// EditRule implements Rulesets.
func (c *SDK) EditRule(ctx context.Context, zoneID, rulesetID string, rule Rule) (Ruleset, error) {
	if err := checkBlock(rule); err != nil {
		return Ruleset{}, err
	}
	if rule.ID == "" {
		return Ruleset{}, errors.New("edit rule: rule id is empty")
	}
	var p rulesets.RuleEditParams
	set(&p.ZoneID.Value, &p.ZoneID.Present, zoneID)
	p.Body = rulesets.RuleEditParamsBodyBlockRule{BlockRuleParam: blockRule(rule)}
	var out Ruleset
	err := c.call(ctx, "edit rule", func(opts ...option.RequestOption) error {
		r, err := c.rulesets.Rules.Edit(ctx, rulesetID, rule.ID, p, opts...)
		if err != nil {
			return err
		}
		out = Ruleset{ID: r.ID, Name: r.Name, Kind: string(r.Kind), Phase: string(r.Phase), Version: r.Version}
		for _, x := range r.Rules {
			out.Rules = append(out.Rules, Rule{ID: x.ID, Ref: x.Ref, Action: string(x.Action),
				Expression: x.Expression, Description: x.Description, Enabled: x.Enabled})
		}
		return nil
	})
	return out, err
}
