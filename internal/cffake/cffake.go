// Package cffake is a fake of the parts of the Cloudflare API v4 that
// edgesync uses, served by net/http/httptest, faithful enough that the
// official Go SDK decodes every answer into its own types:
//
//   - account lists: GET/POST /accounts/{a}/rules/lists, GET .../lists/{id};
//   - list items: GET .../items with cursor paging (per_page 1..500, next
//     cursor in result_info.cursors.after), and the asynchronous writes
//     POST (append), DELETE (by item id) and PUT (replace all), each
//     answering an operation_id;
//   - GET /accounts/{a}/rules/lists/bulk_operations/{id}: pending, then
//     running, then completed or failed, on a clock the test sets; a second
//     write while one is in flight is refused with 429, and the account's
//     item cap fails an operation that would exceed it;
//   - zone rulesets: GET .../rulesets/phases/{phase}/entrypoint (404 with
//     error 10003 when there is none), POST .../rulesets, POST
//     .../rulesets/{id}/rules, PATCH and DELETE .../rules/{rule_id}, with
//     ref uniqueness, the 4,096-character expression limit, and list names
//     in expressions checked against the account's lists.
//
// Every answer uses Cloudflare's envelope: success, errors, messages,
// result, and result_info where the endpoint pages. Error codes 10000
// (authentication), 10003 (no entrypoint), 7003 (unknown zone) and 971
// (request rate) are Cloudflare's; the others are this fake's own and only
// identify the condition.
//
// Tests count requests per endpoint, add latency per endpoint, inject 429,
// 5xx, dropped connections and failed operations, and read the state back.
package cffake

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Endpoint names, the keys of Counts and the targets of faults and latency.
const (
	EPGetLists      = "GET lists"
	EPCreateList    = "POST lists"
	EPGetList       = "GET list"
	EPListItems     = "GET items"
	EPAddItems      = "POST items"
	EPDeleteItems   = "DELETE items"
	EPReplaceItems  = "PUT items"
	EPBulkOperation = "GET bulk_operation"
	EPGetEntrypoint = "GET entrypoint"
	EPCreateRuleset = "POST rulesets"
	EPCreateRule    = "POST rules"
	EPEditRule      = "PATCH rule"
	EPDeleteRule    = "DELETE rule"
)

// Cloudflare error codes the fake answers with.
const (
	CodeAuth         = 10000
	CodeNoEntrypoint = 10003
	CodeUnknownZone  = 7003
	CodeRateLimit    = 971
	// The fake's own codes.
	CodeBadRequest   = 10001
	CodeNotFound     = 10006
	CodeBusy         = 10029
	CodeInternal     = 10500
	CodeDuplicateRef = 10031
	CodeExists       = 10032
)

// Options configures a Server. Zero fields take the defaults shown.
type Options struct {
	// AccountID is the one account served ("acct0123456789").
	AccountID string
	// Token is the accepted API token ("test-token").
	Token string
	// ItemCap is the account-wide number of list items (10,000, the cap
	// on the Free, Pro and Business plans).
	ItemCap int
	// Zones are the zone ids served; requests for others get 404.
	Zones []string
	// OpPending is how long a bulk operation stays pending.
	OpPending time.Duration
	// OpRunning is how long it then stays running, plus OpPerItem for each
	// item it carries. With all three zero an operation is completed at
	// the first request after it was accepted.
	OpRunning time.Duration
	OpPerItem time.Duration
	// BusyRetryAfter is the Retry-After (seconds) of the 429 answering a
	// write made while another operation is in flight ("1").
	BusyRetryAfter string
	// Latency is added to every request.
	Latency time.Duration
	// Listener, when set, is where the fake serves (for instance a socket
	// made inside a test's network namespace); by default a loopback port.
	Listener net.Listener
}

// Item is a list item as the fake holds it.
type Item struct {
	ID      string
	IP      string
	Comment string
}

// Rule is a rule as the fake holds it; ActionParameters is kept verbatim.
type Rule struct {
	ID               string
	Version          string
	Action           string
	ActionParameters json.RawMessage
	Expression       string
	Description      string
	Ref              string
	Enabled          bool
	LastUpdated      time.Time
}

// Ruleset is a zone's entrypoint ruleset as the fake holds it.
type Ruleset struct {
	ID          string
	Name        string
	Description string
	Kind        string
	Phase       string
	Version     int
	LastUpdated time.Time
	Rules       []Rule
}

// Fault is an injected failure.
type Fault struct {
	// Endpoint is one of the EP constants; "" matches every request.
	Endpoint string
	// Status is the HTTP status answered (429, 500, 502, 503, ...).
	Status int
	// RetryAfter is the Retry-After header sent with it, if any.
	RetryAfter string
	// Times is how many matching requests fail (default 1).
	Times int
	// Drop closes the connection without an answer: a network error.
	// Go's transport retries an idempotent request once by itself when a
	// reused connection drops, so a GET needs Times: 2 to fail.
	Drop bool
	// HTML answers with a proxy's HTML page instead of JSON.
	HTML bool
	// AfterApply lets the request take effect before the failure is
	// answered, as when an answer is lost on the way back.
	AfterApply bool
}

type list struct {
	id, name, kind, description string
	created, modified           time.Time
	items                       []*item // ordered by seq
	byIP                        map[string]*item
	sizes                       []int // item count after each applied operation
}

type item struct {
	id, ip, comment   string
	seq               int64
	created, modified time.Time
}

type operation struct {
	id       string
	listID   string
	kind     string // add, delete, replace
	adds     []Item // ip + comment
	deletes  []string
	accepted time.Time
	doneAt   time.Time
	status   string
	errMsg   string
	failWith string
	finished time.Time
}

// Server is a running fake.
type Server struct {
	srv  *httptest.Server
	opts Options

	mu         sync.Mutex
	seq        int64
	lists      map[string]*list
	ops        map[string]*operation
	active     *operation
	rulesets   map[string]*Ruleset // by id
	entrypoint map[string]string   // zone/phase -> ruleset id
	rulesetZ   map[string]string   // ruleset id -> zone
	zones      map[string]bool
	counts     map[string]int
	faults     []*Fault
	latency    map[string]time.Duration
	failNext   []string
	opLog      []OperationRecord
}

// OperationRecord describes an accepted bulk operation, for assertions.
type OperationRecord struct {
	ID     string
	Kind   string // add, delete, replace
	Items  int
	Status string
	Error  string
}

// New starts a fake; it stops when the test ends.
func New(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s := NewServer(opts)
	tb.Cleanup(s.Close)
	return s
}

// NewServer starts a fake the caller must Close.
func NewServer(opts Options) *Server {
	if opts.AccountID == "" {
		opts.AccountID = "acct0123456789"
	}
	if opts.Token == "" {
		opts.Token = "test-token"
	}
	if opts.ItemCap == 0 {
		opts.ItemCap = 10000
	}
	if opts.BusyRetryAfter == "" {
		opts.BusyRetryAfter = "1"
	}
	s := &Server{
		opts:       opts,
		lists:      map[string]*list{},
		ops:        map[string]*operation{},
		rulesets:   map[string]*Ruleset{},
		entrypoint: map[string]string{},
		rulesetZ:   map[string]string{},
		zones:      map[string]bool{},
		counts:     map[string]int{},
		latency:    map[string]time.Duration{},
	}
	for _, z := range opts.Zones {
		s.zones[z] = true
	}
	if opts.Listener != nil {
		s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
		s.srv.Listener.Close()
		s.srv.Listener = opts.Listener
		s.srv.Start()
		return s
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// URL is the API base URL to give the client (ends in /client/v4/).
func (s *Server) URL() string { return s.srv.URL + "/client/v4/" }

// AccountID is the account served.
func (s *Server) AccountID() string { return s.opts.AccountID }

// Token is the accepted API token.
func (s *Server) Token() string { return s.opts.Token }

// AddZone serves one more zone.
func (s *Server) AddZone(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones[id] = true
}

// SetLatency adds d to every request of endpoint ("" for all).
func (s *Server) SetLatency(endpoint string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency[endpoint] = d
}

// InjectFault queues a failure; faults match in the order injected.
func (s *Server) InjectFault(f Fault) {
	if f.Times == 0 {
		f.Times = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// FailNextOperation makes the next accepted bulk operation end as failed
// with msg.
func (s *Server) FailNextOperation(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, msg)
}

// Counts returns the number of requests per endpoint.
func (s *Server) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.counts)
}

// Requests returns the number of requests of all endpoints.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.counts {
		n += c
	}
	return n
}

// Writes returns the number of requests that change state.
func (s *Server) Writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for ep, c := range s.counts {
		if !strings.HasPrefix(ep, "GET ") {
			n += c
		}
	}
	return n
}

// ResetCounts zeroes the request counts.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.counts)
}

// Operations returns every bulk operation accepted so far, oldest first.
func (s *Server) Operations() []OperationRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(time.Now())
	out := make([]OperationRecord, 0, len(s.opLog))
	for _, r := range s.opLog {
		op := s.ops[r.ID]
		r.Status, r.Error = op.status, op.errMsg
		out = append(out, r)
	}
	return out
}

// CreateList creates a list directly, as another tool would have.
func (s *Server) CreateList(name, kind string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	l := &list{id: s.newID(), name: name, kind: kind, created: now, modified: now, byIP: map[string]*item{}}
	s.lists[l.id] = l
	return l.id
}

// SeedItems puts items into a list directly, without an operation.
func (s *Server) SeedItems(listID string, items []Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lists[listID]
	now := time.Now()
	for _, it := range items {
		s.upsert(l, it.IP, it.Comment, now)
	}
}

// ListID returns the id of the list called name.
func (s *Server) ListID(name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.listByName(name)
	if l == nil {
		return "", false
	}
	return l.id, true
}

// Items returns the items of the list called name, in list order.
func (s *Server) Items(name string) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(time.Now())
	l := s.listByName(name)
	if l == nil {
		return nil
	}
	out := make([]Item, 0, len(l.items))
	for _, it := range l.items {
		out = append(out, Item{ID: it.id, IP: it.ip, Comment: it.comment})
	}
	return out
}

// SizeHistory returns the item count of the list after each operation
// applied to it.
func (s *Server) SizeHistory(name string) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(time.Now())
	if l := s.listByName(name); l != nil {
		return slices.Clone(l.sizes)
	}
	return nil
}

// SetEntrypoint creates or replaces a zone's entrypoint ruleset directly.
// Rules without an id or ref get them.
func (s *Server) SetEntrypoint(zone, phase string, rules []Rule) Ruleset {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones[zone] = true
	now := time.Now()
	rs := &Ruleset{ID: s.newID(), Name: "default", Kind: "zone", Phase: phase, Version: 1, LastUpdated: now}
	if id, ok := s.entrypoint[zone+"/"+phase]; ok {
		rs = s.rulesets[id]
		rs.Version++
		rs.LastUpdated = now
		rs.Rules = nil
	}
	for _, r := range rules {
		if r.ID == "" {
			r.ID = s.newID()
		}
		if r.Ref == "" {
			r.Ref = r.ID
		}
		if r.Version == "" {
			r.Version = "1"
		}
		r.LastUpdated = now
		rs.Rules = append(rs.Rules, r)
	}
	s.rulesets[rs.ID] = rs
	s.entrypoint[zone+"/"+phase] = rs.ID
	s.rulesetZ[rs.ID] = zone
	return cloneRuleset(rs)
}

// Entrypoint returns a copy of a zone's entrypoint ruleset.
func (s *Server) Entrypoint(zone, phase string) (Ruleset, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.entrypoint[zone+"/"+phase]
	if !ok {
		return Ruleset{}, false
	}
	return cloneRuleset(s.rulesets[id]), true
}

func cloneRuleset(rs *Ruleset) Ruleset {
	c := *rs
	c.Rules = slices.Clone(rs.Rules)
	return c
}

func (s *Server) newID() string {
	s.seq++
	n := uint64(s.seq)
	return fmt.Sprintf("%016x%016x", n*0x9e3779b97f4a7c15, n*0xc2b2ae3d27d4eb4f)
}

func (s *Server) listByName(name string) *list {
	for _, l := range s.lists {
		if l.name == name {
			return l
		}
	}
	return nil
}

func (s *Server) totalItems() int {
	n := 0
	for _, l := range s.lists {
		n += len(l.items)
	}
	return n
}

func (s *Server) upsert(l *list, ip, comment string, now time.Time) {
	if it, ok := l.byIP[ip]; ok {
		it.comment, it.modified = comment, now
		return
	}
	s.seq++
	it := &item{id: s.newID(), ip: ip, comment: comment, seq: s.seq, created: now, modified: now}
	l.items = append(l.items, it)
	l.byIP[ip] = it
}

// advance applies the operation in flight once its time has come.
func (s *Server) advance(now time.Time) {
	op := s.active
	if op == nil || now.Before(op.doneAt) {
		return
	}
	s.active = nil
	op.finished = now
	l := s.lists[op.listID]
	if op.failWith != "" {
		op.status, op.errMsg = "failed", op.failWith
		return
	}
	if l == nil {
		op.status, op.errMsg = "failed", "the list was deleted"
		return
	}
	switch op.kind {
	case "add", "replace":
		others := s.totalItems() - len(l.items)
		newIPs := map[string]bool{}
		if op.kind == "add" {
			for ip := range l.byIP {
				newIPs[ip] = true
			}
		}
		for _, a := range op.adds {
			newIPs[a.IP] = true
		}
		if others+len(newIPs) > s.opts.ItemCap {
			op.status = "failed"
			op.errMsg = fmt.Sprintf("the operation would bring the account to %d list items, over its limit of %d",
				others+len(newIPs), s.opts.ItemCap)
			return
		}
		if op.kind == "replace" {
			l.items, l.byIP = nil, map[string]*item{}
		}
		for _, a := range op.adds {
			s.upsert(l, a.IP, a.Comment, now)
		}
	case "delete":
		drop := map[string]bool{}
		for _, id := range op.deletes {
			drop[id] = true
		}
		kept := l.items[:0]
		for _, it := range l.items {
			if drop[it.id] {
				delete(l.byIP, it.ip)
				continue
			}
			kept = append(kept, it)
		}
		clear(l.items[len(kept):])
		l.items = kept
	}
	l.modified = now
	l.sizes = append(l.sizes, len(l.items))
	op.status = "completed"
}

func (op *operation) statusAt(now time.Time, pending time.Duration) string {
	if op.status == "completed" || op.status == "failed" {
		return op.status
	}
	if now.Before(op.accepted.Add(pending)) {
		return "pending"
	}
	return "running"
}

// ---- HTTP ----

type envelope struct {
	Success    bool            `json:"success"`
	Errors     []apiMessage    `json:"errors"`
	Messages   []apiMessage    `json:"messages"`
	Result     any             `json:"result"`
	ResultInfo json.RawMessage `json:"result_info,omitempty"`
}

type apiMessage struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type httpError struct {
	status     int
	code       int
	msg        string
	retryAfter string
}

func errf(status, code int, format string, args ...any) *httpError {
	return &httpError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

type route struct {
	endpoint string
	vars     map[string]string
}

var (
	reListsRoot = regexp.MustCompile(`^accounts/([^/]+)/rules/lists$`)
	reBulkOp    = regexp.MustCompile(`^accounts/([^/]+)/rules/lists/bulk_operations/([^/]+)$`)
	reList      = regexp.MustCompile(`^accounts/([^/]+)/rules/lists/([^/]+)$`)
	reItems     = regexp.MustCompile(`^accounts/([^/]+)/rules/lists/([^/]+)/items$`)
	reEntry     = regexp.MustCompile(`^zones/([^/]+)/rulesets/phases/([^/]+)/entrypoint$`)
	reRulesets  = regexp.MustCompile(`^zones/([^/]+)/rulesets$`)
	reRules     = regexp.MustCompile(`^zones/([^/]+)/rulesets/([^/]+)/rules$`)
	reRule      = regexp.MustCompile(`^zones/([^/]+)/rulesets/([^/]+)/rules/([^/]+)$`)
)

func match(method, path string) (route, bool) {
	m := func(re *regexp.Regexp, names ...string) map[string]string {
		sub := re.FindStringSubmatch(path)
		if sub == nil {
			return nil
		}
		v := map[string]string{}
		for i, n := range names {
			v[n] = sub[i+1]
		}
		return v
	}
	type cand struct {
		method, ep string
		re         *regexp.Regexp
		names      []string
	}
	for _, c := range []cand{
		{"GET", EPBulkOperation, reBulkOp, []string{"account", "op"}},
		{"GET", EPGetLists, reListsRoot, []string{"account"}},
		{"POST", EPCreateList, reListsRoot, []string{"account"}},
		{"GET", EPGetList, reList, []string{"account", "list"}},
		{"GET", EPListItems, reItems, []string{"account", "list"}},
		{"POST", EPAddItems, reItems, []string{"account", "list"}},
		{"DELETE", EPDeleteItems, reItems, []string{"account", "list"}},
		{"PUT", EPReplaceItems, reItems, []string{"account", "list"}},
		{"GET", EPGetEntrypoint, reEntry, []string{"zone", "phase"}},
		{"POST", EPCreateRuleset, reRulesets, []string{"zone"}},
		{"POST", EPCreateRule, reRules, []string{"zone", "ruleset"}},
		{"PATCH", EPEditRule, reRule, []string{"zone", "ruleset", "rule"}},
		{"DELETE", EPDeleteRule, reRule, []string{"zone", "ruleset", "rule"}},
	} {
		if c.method != method {
			continue
		}
		if v := m(c.re, c.names...); v != nil {
			return route{endpoint: c.ep, vars: v}, true
		}
	}
	return route{}, false
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.Path, "/client/v4/")
	if !ok {
		writeErr(w, errf(http.StatusNotFound, CodeNotFound, "unknown path %s", r.URL.Path))
		return
	}
	rt, ok := match(r.Method, path)
	if !ok {
		writeErr(w, errf(http.StatusNotFound, CodeNotFound, "no route for %s %s", r.Method, path))
		return
	}

	s.mu.Lock()
	s.counts[rt.endpoint]++
	delay := s.opts.Latency + s.latency[""] + s.latency[rt.endpoint]
	var fault *Fault
	for i, f := range s.faults {
		if f.Endpoint == "" || f.Endpoint == rt.endpoint {
			fault = f
			f.Times--
			if f.Times <= 0 {
				s.faults = slices.Delete(s.faults, i, i+1)
			}
			break
		}
	}
	s.mu.Unlock()

	if delay > 0 {
		time.Sleep(delay)
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeErr(w, errf(http.StatusBadRequest, CodeBadRequest, "read body: %v", err))
		return
	}
	if fault != nil && !fault.AfterApply {
		s.writeFault(w, fault)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+s.opts.Token {
		writeErr(w, errf(http.StatusForbidden, CodeAuth, "Authentication error"))
		return
	}

	s.mu.Lock()
	s.advance(time.Now())
	status, result, info, herr := s.handle(rt, r, body)
	s.mu.Unlock()

	if fault != nil {
		s.writeFault(w, fault)
		return
	}
	if herr != nil {
		writeErr(w, herr)
		return
	}
	writeJSON(w, status, envelope{Success: true, Errors: []apiMessage{}, Messages: []apiMessage{}, Result: result, ResultInfo: info})
}

func (s *Server) writeFault(w http.ResponseWriter, f *Fault) {
	if f.Drop {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				_ = conn.Close()
				return
			}
		}
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if f.HTML {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.Status)
		fmt.Fprintf(w, "<html><body><h1>%d %s</h1></body></html>", f.Status, http.StatusText(f.Status))
		return
	}
	code := CodeInternal
	if f.Status == http.StatusTooManyRequests {
		code = CodeRateLimit
	}
	msg := "Please wait and consider throttling your request speed"
	if f.Status != http.StatusTooManyRequests {
		msg = "Internal server error (injected)"
	}
	writeErr(w, &httpError{status: f.Status, code: code, msg: msg})
}

func writeErr(w http.ResponseWriter, e *httpError) {
	if e.retryAfter != "" {
		w.Header().Set("Retry-After", e.retryAfter)
	}
	writeJSON(w, e.status, envelope{Success: false, Errors: []apiMessage{{Code: e.code, Message: e.msg}}, Messages: []apiMessage{}, Result: nil})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func decodeStrict(body []byte, v any) *httpError {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errf(http.StatusBadRequest, CodeBadRequest, "malformed request body: %v", err)
	}
	return nil
}

func (s *Server) handle(rt route, r *http.Request, body []byte) (int, any, json.RawMessage, *httpError) {
	if a, ok := rt.vars["account"]; ok && a != s.opts.AccountID {
		return 0, nil, nil, errf(http.StatusForbidden, CodeAuth, "Authentication error")
	}
	if z, ok := rt.vars["zone"]; ok && !s.zones[z] {
		return 0, nil, nil, errf(http.StatusNotFound, CodeUnknownZone,
			"Could not route to /zones/%s, perhaps your object identifier is invalid?", z)
	}
	now := time.Now()
	switch rt.endpoint {
	case EPGetLists:
		out := []listJSON{}
		for _, l := range s.sortedLists() {
			out = append(out, l.json())
		}
		return 200, out, nil, nil
	case EPCreateList:
		return s.createList(body, now)
	case EPGetList:
		l := s.lists[rt.vars["list"]]
		if l == nil {
			return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "list not found")
		}
		return 200, l.json(), nil, nil
	case EPListItems:
		return s.listItems(rt.vars["list"], r)
	case EPAddItems, EPReplaceItems:
		return s.writeItems(rt, body, now)
	case EPDeleteItems:
		return s.deleteItems(rt, body, now)
	case EPBulkOperation:
		op := s.ops[rt.vars["op"]]
		if op == nil {
			return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "bulk operation not found")
		}
		res := map[string]any{"id": op.id, "status": op.statusAt(now, s.opts.OpPending)}
		if !op.finished.IsZero() {
			res["completed"] = op.finished.UTC().Format(time.RFC3339Nano)
		}
		if op.status == "failed" {
			res["error"] = op.errMsg
		}
		return 200, res, nil, nil
	case EPGetEntrypoint:
		id, ok := s.entrypoint[rt.vars["zone"]+"/"+rt.vars["phase"]]
		if !ok {
			return 0, nil, nil, errf(http.StatusNotFound, CodeNoEntrypoint,
				"could not find entrypoint ruleset in the '%s' phase", rt.vars["phase"])
		}
		return 200, rulesetJSON(s.rulesets[id]), nil, nil
	case EPCreateRuleset:
		return s.createRuleset(rt.vars["zone"], body, now)
	case EPCreateRule, EPEditRule, EPDeleteRule:
		return s.changeRule(rt, body, now)
	}
	return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "unhandled endpoint")
}

type listJSON struct {
	ID                    string `json:"id"`
	Name                  string `json:"name"`
	Description           string `json:"description,omitempty"`
	Kind                  string `json:"kind"`
	NumItems              int    `json:"num_items"`
	NumReferencingFilters int    `json:"num_referencing_filters"`
	CreatedOn             string `json:"created_on"`
	ModifiedOn            string `json:"modified_on"`
}

func (l *list) json() listJSON {
	return listJSON{ID: l.id, Name: l.name, Description: l.description, Kind: l.kind,
		NumItems: len(l.items), CreatedOn: ts(l.created), ModifiedOn: ts(l.modified)}
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func (s *Server) sortedLists() []*list {
	out := slices.Collect(maps.Values(s.lists))
	slices.SortFunc(out, func(a, b *list) int { return strings.Compare(a.id, b.id) })
	return out
}

var listNameRE = regexp.MustCompile(`^[a-z0-9_]+$`)

func (s *Server) createList(body []byte, now time.Time) (int, any, json.RawMessage, *httpError) {
	var req struct {
		Name        string `json:"name"`
		Kind        string `json:"kind"`
		Description string `json:"description"`
	}
	if e := decodeStrict(body, &req); e != nil {
		return 0, nil, nil, e
	}
	switch {
	case req.Name == "" || len(req.Name) > 50 || !listNameRE.MatchString(req.Name):
		return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest,
			"invalid list name %q: use up to 50 characters a-z, 0-9 and _", req.Name)
	case !slices.Contains([]string{"ip", "redirect", "hostname", "asn"}, req.Kind):
		return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "invalid list kind %q", req.Kind)
	case s.listByName(req.Name) != nil:
		return 0, nil, nil, errf(http.StatusBadRequest, CodeExists, "a list named %q already exists", req.Name)
	}
	l := &list{id: s.newID(), name: req.Name, kind: req.Kind, description: req.Description,
		created: now, modified: now, byIP: map[string]*item{}}
	s.lists[l.id] = l
	return 200, l.json(), nil, nil
}

type itemJSON struct {
	ID         string `json:"id"`
	IP         string `json:"ip"`
	Comment    string `json:"comment,omitempty"`
	CreatedOn  string `json:"created_on"`
	ModifiedOn string `json:"modified_on"`
}

func encodeCursor(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("seq:" + strconv.FormatInt(seq, 10)))
}

func decodeCursor(c string) (int64, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, false
	}
	v, ok := strings.CutPrefix(string(b), "seq:")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

func (s *Server) listItems(listID string, r *http.Request) (int, any, json.RawMessage, *httpError) {
	l := s.lists[listID]
	if l == nil {
		return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "list not found")
	}
	q := r.URL.Query()
	perPage := 25
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "per_page must be an integer from 1 to 500")
		}
		perPage = n
	}
	var after int64
	if c := q.Get("cursor"); c != "" {
		n, ok := decodeCursor(c)
		if !ok {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "invalid cursor")
		}
		after = n
	}
	search := strings.ToLower(q.Get("search"))
	start, _ := slices.BinarySearchFunc(l.items, after+1, func(it *item, seq int64) int {
		switch {
		case it.seq < seq:
			return -1
		case it.seq > seq:
			return 1
		}
		return 0
	})
	out := []itemJSON{}
	var last *item
	more := false
	for _, it := range l.items[start:] {
		if search != "" && !strings.Contains(it.ip, search) && !strings.Contains(strings.ToLower(it.comment), search) {
			continue
		}
		if len(out) == perPage {
			more = true
			break
		}
		out = append(out, itemJSON{ID: it.id, IP: it.ip, Comment: it.comment, CreatedOn: ts(it.created), ModifiedOn: ts(it.modified)})
		last = it
	}
	cursors := map[string]string{}
	if after > 0 {
		cursors["before"] = encodeCursor(after)
	}
	if more {
		cursors["after"] = encodeCursor(last.seq)
	}
	info, _ := json.Marshal(map[string]any{"cursors": cursors})
	return 200, out, info, nil
}

// validIP reports whether Cloudflare accepts v in an IP list: an IPv4
// address, an IPv4 CIDR /8 to /32, or an IPv6 CIDR /4 to /64, without
// host bits set. It returns the form stored (IPv6 lower-cased).
func validIP(v string) (string, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return "", fmt.Errorf("%q is not an IP address or CIDR", v)
		}
		if p.Masked() != p {
			return "", fmt.Errorf("%q has host bits set", v)
		}
		if p.Addr().Is4() && (p.Bits() < 8 || p.Bits() > 32) {
			return "", fmt.Errorf("%q: IPv4 CIDR prefixes must be /8 to /32", v)
		}
		if p.Addr().Is6() && (p.Bits() < 4 || p.Bits() > 64) {
			return "", fmt.Errorf("%q: IPv6 CIDR prefixes must be /4 to /64", v)
		}
		if p.Addr().Is4In6() {
			return "", fmt.Errorf("%q: IPv4-mapped IPv6 is not accepted", v)
		}
		return strings.ToLower(v), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("%q is not an IP address or CIDR", v)
	}
	if a.Is6() {
		return "", fmt.Errorf("%q: IPv6 entries must be CIDR ranges /4 to /64", v)
	}
	return v, nil
}

func (s *Server) startOperation(l *list, kind string, adds []Item, deletes []string, now time.Time) (map[string]string, *httpError) {
	if s.active != nil {
		e := errf(http.StatusTooManyRequests, CodeBusy,
			"a bulk operation is already in progress for this account; retry when it has finished")
		e.retryAfter = s.opts.BusyRetryAfter
		return nil, e
	}
	n := len(adds) + len(deletes)
	op := &operation{id: s.newID(), listID: l.id, kind: kind, adds: adds, deletes: deletes,
		accepted: now, status: "pending"}
	op.doneAt = now.Add(s.opts.OpPending + s.opts.OpRunning + time.Duration(n)*s.opts.OpPerItem)
	if len(s.failNext) > 0 {
		op.failWith, s.failNext = s.failNext[0], s.failNext[1:]
	}
	s.ops[op.id] = op
	s.active = op
	s.opLog = append(s.opLog, OperationRecord{ID: op.id, Kind: kind, Items: n})
	return map[string]string{"operation_id": op.id}, nil
}

func (s *Server) writeItems(rt route, body []byte, now time.Time) (int, any, json.RawMessage, *httpError) {
	l := s.lists[rt.vars["list"]]
	if l == nil {
		return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "list not found")
	}
	var req []struct {
		IP       *string         `json:"ip"`
		Comment  string          `json:"comment"`
		ASN      json.RawMessage `json:"asn"`
		Hostname json.RawMessage `json:"hostname"`
		Redirect json.RawMessage `json:"redirect"`
	}
	if e := decodeStrict(body, &req); e != nil {
		return 0, nil, nil, e
	}
	if len(req) == 0 && rt.endpoint == EPAddItems {
		return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "no items to add")
	}
	adds := make([]Item, 0, len(req))
	for i, it := range req {
		if l.kind != "ip" || it.IP == nil || it.ASN != nil || it.Hostname != nil || it.Redirect != nil {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "item %d: an ip list takes items with an ip only", i)
		}
		ip, err := validIP(*it.IP)
		if err != nil {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "item %d: %v", i, err)
		}
		if len(it.Comment) > 500 {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "item %d: comment longer than 500 characters", i)
		}
		adds = append(adds, Item{IP: ip, Comment: it.Comment})
	}
	kind := "add"
	if rt.endpoint == EPReplaceItems {
		kind = "replace"
	}
	res, e := s.startOperation(l, kind, adds, nil, now)
	if e != nil {
		return 0, nil, nil, e
	}
	return 200, res, nil, nil
}

func (s *Server) deleteItems(rt route, body []byte, now time.Time) (int, any, json.RawMessage, *httpError) {
	l := s.lists[rt.vars["list"]]
	if l == nil {
		return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "list not found")
	}
	var req struct {
		Items []struct {
			ID string `json:"id"`
		} `json:"items"`
	}
	if e := decodeStrict(body, &req); e != nil {
		return 0, nil, nil, e
	}
	if len(req.Items) == 0 {
		return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "no items to delete")
	}
	ids := make([]string, 0, len(req.Items))
	for i, it := range req.Items {
		if it.ID == "" {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "item %d: items are deleted by id", i)
		}
		ids = append(ids, it.ID)
	}
	res, e := s.startOperation(l, "delete", nil, ids, now)
	if e != nil {
		return 0, nil, nil, e
	}
	return 200, res, nil, nil
}

// ---- rulesets ----

type ruleJSON struct {
	ID               string          `json:"id"`
	Version          string          `json:"version"`
	Action           string          `json:"action"`
	ActionParameters json.RawMessage `json:"action_parameters,omitempty"`
	Expression       string          `json:"expression"`
	Description      string          `json:"description,omitempty"`
	LastUpdated      string          `json:"last_updated"`
	Ref              string          `json:"ref"`
	Enabled          bool            `json:"enabled"`
}

type rulesetOut struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	Kind        string     `json:"kind"`
	Version     string     `json:"version"`
	Rules       []ruleJSON `json:"rules"`
	LastUpdated string     `json:"last_updated"`
	Phase       string     `json:"phase"`
}

func rulesetJSON(rs *Ruleset) rulesetOut {
	out := rulesetOut{ID: rs.ID, Name: rs.Name, Description: rs.Description, Kind: rs.Kind,
		Version: strconv.Itoa(rs.Version), Rules: []ruleJSON{}, LastUpdated: rs.LastUpdated.UTC().Format(time.RFC3339Nano), Phase: rs.Phase}
	for _, r := range rs.Rules {
		out.Rules = append(out.Rules, ruleJSON{ID: r.ID, Version: r.Version, Action: r.Action,
			ActionParameters: r.ActionParameters, Expression: r.Expression, Description: r.Description,
			LastUpdated: r.LastUpdated.UTC().Format(time.RFC3339Nano), Ref: r.Ref, Enabled: r.Enabled})
	}
	return out
}

// ruleIn is a rule as a request carries it; pointers tell absent fields.
type ruleIn struct {
	ID                     *string         `json:"id"`
	Action                 *string         `json:"action"`
	ActionParameters       json.RawMessage `json:"action_parameters"`
	Categories             json.RawMessage `json:"categories"`
	Description            *string         `json:"description"`
	Enabled                *bool           `json:"enabled"`
	ExposedCredentialCheck json.RawMessage `json:"exposed_credential_check"`
	Expression             *string         `json:"expression"`
	Logging                json.RawMessage `json:"logging"`
	Position               json.RawMessage `json:"position"`
	Ratelimit              json.RawMessage `json:"ratelimit"`
	Ref                    *string         `json:"ref"`
}

var actions = []string{"block", "challenge", "js_challenge", "managed_challenge", "log", "skip", "execute"}

var listRefRE = regexp.MustCompile(`\$([A-Za-z0-9_]+)`)

func (s *Server) checkExpression(expr string) *httpError {
	if strings.TrimSpace(expr) == "" {
		return errf(http.StatusBadRequest, CodeBadRequest, "the rule's expression is empty")
	}
	if len(expr) > 4096 {
		return errf(http.StatusBadRequest, CodeBadRequest,
			"the expression is %d characters long, more than the limit of 4096", len(expr))
	}
	depth := 0
	for _, c := range expr {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		}
		if depth < 0 {
			break
		}
	}
	if depth != 0 {
		return errf(http.StatusBadRequest, CodeBadRequest, "filter parsing error: unbalanced parentheses")
	}
	for _, m := range listRefRE.FindAllStringSubmatch(expr, -1) {
		if s.listByName(m[1]) == nil {
			return errf(http.StatusBadRequest, CodeBadRequest,
				"filter parsing error: could not find list '%s'", m[1])
		}
	}
	return nil
}

// apply fills r from in; create tells a new rule, which needs an action
// and an expression.
func (s *Server) apply(r *Rule, in ruleIn, create bool) *httpError {
	if create && (in.Action == nil || in.Expression == nil) {
		return errf(http.StatusBadRequest, CodeBadRequest, "a rule needs an action and an expression")
	}
	if in.Action != nil {
		if !slices.Contains(actions, *in.Action) {
			return errf(http.StatusBadRequest, CodeBadRequest, "unknown action %q", *in.Action)
		}
		r.Action = *in.Action
	}
	if in.Expression != nil {
		if e := s.checkExpression(*in.Expression); e != nil {
			return e
		}
		r.Expression = *in.Expression
	}
	if in.Description != nil {
		r.Description = *in.Description
	}
	if in.ActionParameters != nil {
		r.ActionParameters = in.ActionParameters
	}
	if in.Enabled != nil {
		r.Enabled = *in.Enabled
	} else if create {
		r.Enabled = true
	}
	if in.Ref != nil {
		r.Ref = *in.Ref
	}
	return nil
}

func (s *Server) createRuleset(zone string, body []byte, now time.Time) (int, any, json.RawMessage, *httpError) {
	var req struct {
		Name        string   `json:"name"`
		Description string   `json:"description"`
		Kind        string   `json:"kind"`
		Phase       string   `json:"phase"`
		Rules       []ruleIn `json:"rules"`
	}
	if e := decodeStrict(body, &req); e != nil {
		return 0, nil, nil, e
	}
	if req.Name == "" || req.Phase == "" {
		return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest, "a ruleset needs a name and a phase")
	}
	if req.Kind != "zone" {
		return 0, nil, nil, errf(http.StatusBadRequest, CodeBadRequest,
			"only rulesets of kind zone are served here, not %q", req.Kind)
	}
	key := zone + "/" + req.Phase
	if _, ok := s.entrypoint[key]; ok {
		return 0, nil, nil, errf(http.StatusBadRequest, CodeExists,
			"an entrypoint ruleset already exists for the '%s' phase", req.Phase)
	}
	rs := &Ruleset{ID: s.newID(), Name: req.Name, Description: req.Description, Kind: req.Kind,
		Phase: req.Phase, Version: 1, LastUpdated: now}
	refs := map[string]bool{}
	for i, in := range req.Rules {
		r := Rule{ID: s.newID(), Version: "1", LastUpdated: now}
		if e := s.apply(&r, in, true); e != nil {
			e.msg = fmt.Sprintf("rule %d: %s", i, e.msg)
			return 0, nil, nil, e
		}
		if r.Ref == "" {
			r.Ref = r.ID
		}
		if refs[r.Ref] {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeDuplicateRef, "duplicate rule ref %q", r.Ref)
		}
		refs[r.Ref] = true
		rs.Rules = append(rs.Rules, r)
	}
	s.rulesets[rs.ID] = rs
	s.entrypoint[key] = rs.ID
	s.rulesetZ[rs.ID] = zone
	return 200, rulesetJSON(rs), nil, nil
}

func (s *Server) changeRule(rt route, body []byte, now time.Time) (int, any, json.RawMessage, *httpError) {
	rs := s.rulesets[rt.vars["ruleset"]]
	if rs == nil || s.rulesetZ[rs.ID] != rt.vars["zone"] {
		return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "ruleset not found")
	}
	idx := -1
	if id, ok := rt.vars["rule"]; ok {
		idx = slices.IndexFunc(rs.Rules, func(r Rule) bool { return r.ID == id })
		if idx < 0 {
			return 0, nil, nil, errf(http.StatusNotFound, CodeNotFound, "rule not found")
		}
	}
	var in ruleIn
	if rt.endpoint != EPDeleteRule {
		if e := decodeStrict(body, &in); e != nil {
			return 0, nil, nil, e
		}
	}
	refTaken := func(ref string, except int) bool {
		for i, r := range rs.Rules {
			if i != except && r.Ref == ref {
				return true
			}
		}
		return false
	}
	switch rt.endpoint {
	case EPCreateRule:
		r := Rule{ID: s.newID(), Version: "1", LastUpdated: now}
		if e := s.apply(&r, in, true); e != nil {
			return 0, nil, nil, e
		}
		if r.Ref == "" {
			r.Ref = r.ID
		}
		if refTaken(r.Ref, -1) {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeDuplicateRef, "duplicate rule ref %q", r.Ref)
		}
		rs.Rules = append(rs.Rules, r)
	case EPEditRule:
		r := rs.Rules[idx]
		if e := s.apply(&r, in, false); e != nil {
			return 0, nil, nil, e
		}
		if r.Ref == "" {
			r.Ref = r.ID
		}
		if refTaken(r.Ref, idx) {
			return 0, nil, nil, errf(http.StatusBadRequest, CodeDuplicateRef, "duplicate rule ref %q", r.Ref)
		}
		v, _ := strconv.Atoi(r.Version)
		r.Version = strconv.Itoa(v + 1)
		r.LastUpdated = now
		rs.Rules[idx] = r
	case EPDeleteRule:
		rs.Rules = slices.Delete(rs.Rules, idx, idx+1)
	}
	rs.Version++
	rs.LastUpdated = now
	return 200, rulesetJSON(rs), nil, nil
}
