// Package cloudflare is the small slice of the Cloudflare API that edgesync
// needs: one account-level IP list (its items, read with cursor paging and
// changed by asynchronous bulk operations) and the custom-rules entrypoint
// ruleset of each zone.
//
// Client is the seam: edgesync is written against it, SDK implements it over
// github.com/cloudflare/cloudflare-go/v7, and the tests drive SDK against the
// fake API of internal/cffake.
package cloudflare

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// PhaseCustomRules is the phase of the zone's WAF custom rules.
const PhaseCustomRules = "http_request_firewall_custom"

// MaxExpressionLen is the longest rule expression Cloudflare accepts.
const MaxExpressionLen = 4096

// MaxPerPage is the largest page of list items Cloudflare returns.
const MaxPerPage = 500

// Error codes Cloudflare documents and edgesync branches on.
const (
	// CodeNoEntrypoint answers a read of a phase entrypoint ruleset that
	// was never created.
	CodeNoEntrypoint = 10003
)

var (
	// ErrNoEntrypoint is returned when the zone has no entrypoint ruleset
	// for the phase yet.
	ErrNoEntrypoint = errors.New("no entrypoint ruleset for the phase")
	// ErrListNotFound is returned when the account holds no list of the name.
	ErrListNotFound = errors.New("list not found")
	// ErrRateLimited is returned when Cloudflare keeps answering 429 longer
	// than the client is willing to wait.
	ErrRateLimited = errors.New("rate limited by cloudflare")
	// ErrOperationFailed is returned when a bulk operation ends as failed.
	ErrOperationFailed = errors.New("bulk operation failed")
	// ErrInvalidListName is returned for a list name Cloudflare would refuse.
	ErrInvalidListName = errors.New("invalid list name")
)

// List is an account-level list.
type List struct {
	ID          string
	Name        string
	Kind        string
	Description string
	NumItems    int
}

// Item is one item of an IP list as Cloudflare holds it.
type Item struct {
	ID      string
	IP      string
	Comment string
}

// NewItem is an item to add to an IP list.
type NewItem struct {
	IP      string
	Comment string
}

// OperationStatus is the state of an asynchronous bulk operation.
type OperationStatus string

// The states of a bulk operation.
const (
	OperationPending   OperationStatus = "pending"
	OperationRunning   OperationStatus = "running"
	OperationCompleted OperationStatus = "completed"
	OperationFailed    OperationStatus = "failed"
)

// Done reports whether the operation reached a final state.
func (s OperationStatus) Done() bool { return s == OperationCompleted || s == OperationFailed }

// Operation is a bulk operation on list items.
type Operation struct {
	ID     string
	Status OperationStatus
	// Error is Cloudflare's message when Status is failed.
	Error string
}

// Rule is a rule of a ruleset, reduced to the fields edgesync manages.
type Rule struct {
	ID          string
	Ref         string
	Action      string
	Expression  string
	Description string
	Enabled     bool
}

// Ruleset is a zone's entrypoint ruleset of one phase.
type Ruleset struct {
	ID      string
	Name    string
	Kind    string
	Phase   string
	Version string
	Rules   []Rule
}

// RuleByRef returns the rule carrying ref.
func (r Ruleset) RuleByRef(ref string) (Rule, bool) {
	for _, x := range r.Rules {
		if x.Ref == ref {
			return x, true
		}
	}
	return Rule{}, false
}

// Lists finds and creates account-level lists.
type Lists interface {
	// FindList returns the list called name, or ErrListNotFound.
	FindList(ctx context.Context, name string) (List, error)
	// CreateList creates an empty IP list.
	CreateList(ctx context.Context, name, description string) (List, error)
}

// Items reads and changes the items of a list. The writes are
// asynchronous: they return the id of a bulk operation.
type Items interface {
	// ListItems returns every item, reading page after page.
	ListItems(ctx context.Context, listID string) ([]Item, error)
	// AddItems appends items to the list.
	AddItems(ctx context.Context, listID string, items []NewItem) (operationID string, err error)
	// DeleteItems removes items by item id.
	DeleteItems(ctx context.Context, listID string, itemIDs []string) (operationID string, err error)
}

// BulkOperations reads the state of an asynchronous operation.
type BulkOperations interface {
	BulkOperation(ctx context.Context, operationID string) (Operation, error)
}

// Rulesets reads and changes a zone's phase entrypoint ruleset.
type Rulesets interface {
	// Entrypoint returns the zone's entrypoint ruleset of the phase, or an
	// error wrapping ErrNoEntrypoint.
	Entrypoint(ctx context.Context, zoneID, phase string) (Ruleset, error)
	// CreateEntrypoint creates the zone's entrypoint ruleset of the phase
	// holding rules.
	CreateEntrypoint(ctx context.Context, zoneID, phase string, rules []Rule) (Ruleset, error)
	// CreateRule appends a rule to a ruleset.
	CreateRule(ctx context.Context, zoneID, rulesetID string, rule Rule) (Ruleset, error)
	// EditRule changes the rule rule.ID of a ruleset.
	EditRule(ctx context.Context, zoneID, rulesetID string, rule Rule) (Ruleset, error)
}

// Client is everything edgesync asks of Cloudflare.
type Client interface {
	Lists
	Items
	BulkOperations
	Rulesets
}

// APIError is an error answer of the Cloudflare API.
type APIError struct {
	// Op names the call ("add list items").
	Op string
	// StatusCode is the HTTP status.
	StatusCode int
	// Errors are the entries of the response's errors array.
	Errors []ErrorDetail
	// RetryAfter is the wait the Retry-After header asked for, if any.
	RetryAfter time.Duration
}

// ErrorDetail is one entry of a response's errors array.
type ErrorDetail struct {
	Code    int64
	Message string
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: HTTP %d %s", e.Op, e.StatusCode, http.StatusText(e.StatusCode))
	for i, d := range e.Errors {
		if i == 0 {
			b.WriteString(":")
		} else {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " %s (code %d)", d.Message, d.Code)
	}
	return b.String()
}

// HasCode reports whether the answer carries the Cloudflare error code.
func (e *APIError) HasCode(code int64) bool {
	for _, d := range e.Errors {
		if d.Code == code {
			return true
		}
	}
	return false
}

// Is makes errors.Is(err, ErrNoEntrypoint) and errors.Is(err,
// ErrRateLimited) work on the raw answer.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNoEntrypoint:
		return e.HasCode(CodeNoEntrypoint)
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	}
	return false
}

// OperationError is a bulk operation that ended as failed.
type OperationError struct {
	OperationID string
	// Message is Cloudflare's explanation.
	Message string
}

func (e *OperationError) Error() string {
	return fmt.Sprintf("bulk operation %s failed: %s", e.OperationID, e.Message)
}

// Unwrap makes errors.Is(err, ErrOperationFailed) true.
func (e *OperationError) Unwrap() error { return ErrOperationFailed }

var listNameRE = regexp.MustCompile(`^[a-z0-9_]+$`)

// ValidateListName checks a list name against Cloudflare's rules: lower-case
// letters, digits and underscores, at most 50 characters.
func ValidateListName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidListName)
	case len(name) > 50:
		return fmt.Errorf("%w: %q is longer than 50 characters", ErrInvalidListName, name)
	case !listNameRE.MatchString(name):
		return fmt.Errorf("%w: %q may hold only a-z, 0-9 and _", ErrInvalidListName, name)
	}
	return nil
}
