package cffake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/cloudflare-go/v7/option"
	"github.com/cloudflare/cloudflare-go/v7/rules"
	"github.com/cloudflare/cloudflare-go/v7/rulesets"
)

// set fills an SDK request field (its type is internal to the SDK).
func set[T any](value *T, present *bool, v T) { *value, *present = v, true }

func sdkOpts(s *Server) []option.RequestOption {
	return []option.RequestOption{
		option.WithBaseURL(s.URL()),
		option.WithAPIToken(s.Token()),
		option.WithMaxRetries(0),
	}
}

// checkDecoded walks a value the SDK decoded and fails the test for a
// required field the fake left out, a field the SDK could not decode, or a
// field the fake sent that the SDK's type does not have. ignoreExtra names
// top-level keys a page wrapper does not model (the envelope's).
func checkDecoded(t *testing.T, name string, v any, ignoreExtra ...string) {
	t.Helper()
	var walk func(path string, rv reflect.Value, top bool)
	walk = func(path string, rv reflect.Value, top bool) {
		switch rv.Kind() {
		case reflect.Pointer, reflect.Interface:
			if !rv.IsNil() {
				walk(path, rv.Elem(), top)
			}
			return
		case reflect.Slice:
			for i := 0; i < rv.Len(); i++ {
				walk(fmt.Sprintf("%s[%d]", path, i), rv.Index(i), false)
			}
			return
		case reflect.Struct:
		default:
			return
		}
		meta := rv.FieldByName("JSON")
		if !meta.IsValid() || meta.Kind() != reflect.Struct {
			return
		}
		rt := rv.Type()
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			if !f.IsExported() || f.Name == "JSON" {
				continue
			}
			m := meta.FieldByName(f.Name)
			if !m.IsValid() {
				continue
			}
			missing := m.MethodByName("IsMissing").Call(nil)[0].Bool()
			invalid := m.MethodByName("IsInvalid").Call(nil)[0].Bool()
			if f.Tag.Get("api") == "required" && missing {
				t.Errorf("%s: %s.%s (%s) is required but missing", name, path, f.Name, f.Tag.Get("json"))
			}
			if invalid {
				t.Errorf("%s: %s.%s (%s) did not decode: %s", name, path, f.Name, f.Tag.Get("json"),
					m.MethodByName("Raw").Call(nil)[0].String())
			}
			if !missing && !m.MethodByName("IsNull").Call(nil)[0].Bool() {
				walk(path+"."+f.Name, rv.Field(i), false)
			}
		}
		if extra := meta.FieldByName("ExtraFields"); extra.IsValid() {
			for _, k := range extra.MapKeys() {
				if top && containsStr(ignoreExtra, k.String()) {
					continue
				}
				t.Errorf("%s: %s has field %q the SDK type does not know", name, path, k.String())
			}
		}
	}
	walk(name, reflect.ValueOf(v), true)
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func waitOp(t *testing.T, svc *rules.ListService, account, id string) *rules.ListBulkOperationGetResponse {
	t.Helper()
	var q rules.ListBulkOperationGetParams
	set(&q.AccountID.Value, &q.AccountID.Present, account)
	for i := 0; i < 200; i++ {
		op, err := svc.BulkOperations.Get(context.Background(), id, q)
		if err != nil {
			t.Fatalf("get bulk operation: %v", err)
		}
		checkDecoded(t, "bulk operation", op)
		if op.Status == "completed" || op.Status == "failed" {
			return op
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("operation %s never finished", id)
	return nil
}

// TestSDKDecodesEveryAnswer drives every endpoint through the SDK and checks
// that the SDK's types decode the fake's answers completely.
func TestSDKDecodesEveryAnswer(t *testing.T) {
	s := New(t, Options{Zones: []string{"zone1"}})
	ctx := context.Background()
	acct := s.AccountID()
	lists := rules.NewListService(sdkOpts(s)...)
	rs := rulesets.NewRulesetService(sdkOpts(s)...)

	var np rules.ListNewParams
	set(&np.AccountID.Value, &np.AccountID.Present, acct)
	set(&np.Kind.Value, &np.Kind.Present, rules.ListNewParamsKindIP)
	set(&np.Name.Value, &np.Name.Present, "crowdsec_ban")
	set(&np.Description.Value, &np.Description.Present, "test")
	l, err := lists.New(ctx, np)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "create list", l)

	var lp rules.ListListParams
	set(&lp.AccountID.Value, &lp.AccountID.Present, acct)
	all, err := lists.List(ctx, lp)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "get lists", all, "success", "errors", "messages")
	if len(all.Result) != 1 || all.Result[0].Name != "crowdsec_ban" || all.Result[0].Kind != "ip" {
		t.Fatalf("lists: %+v", all.Result)
	}

	var ap rules.ListItemNewParams
	set(&ap.AccountID.Value, &ap.AccountID.Present, acct)
	for i := range 7 {
		var b rules.ListItemNewParamsBodyListsListItemIPComment
		set(&b.IP.Value, &b.IP.Present, fmt.Sprintf("192.0.2.%d", i+1))
		set(&b.Comment.Value, &b.Comment.Present, "crowdsec ssh-bf")
		ap.Body = append(ap.Body, b)
	}
	var b6 rules.ListItemNewParamsBodyListsListItemIPComment
	set(&b6.IP.Value, &b6.IP.Present, "2001:db8:1::/64")
	ap.Body = append(ap.Body, b6)
	added, err := lists.Items.New(ctx, l.ID, ap)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "add items", added)
	done := waitOp(t, lists, acct, added.OperationID)
	if _, ok := done.AsUnion().(rules.ListBulkOperationGetResponseListsBulkOperationCompleted); !ok || done.Completed == "" {
		t.Fatalf("completed operation decoded as %T: %+v", done.AsUnion(), done)
	}

	// Page through with 3 per page.
	var ip rules.ListItemListParams
	set(&ip.AccountID.Value, &ip.AccountID.Present, acct)
	set(&ip.PerPage.Value, &ip.PerPage.Present, int64(3))
	pager := lists.Items.ListAutoPaging(ctx, l.ID, ip)
	var got []rules.ListItemListResponse
	for pager.Next() {
		got = append(got, pager.Current())
	}
	if err := pager.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 8 {
		t.Fatalf("paged %d items, want 8", len(got))
	}
	for i, it := range got {
		checkDecoded(t, fmt.Sprintf("item %d", i), &it)
		full, ok := it.AsUnion().(rules.ListItemListResponseListsListItemIPFull)
		if !ok || full.IP != it.IP || it.ID == "" {
			t.Errorf("item %d decoded as %T %+v", i, it.AsUnion(), it)
		}
	}
	if got[7].IP != "2001:db8:1::/64" || got[0].Comment != "crowdsec ssh-bf" {
		t.Errorf("items: first %+v last %+v", got[0], got[7])
	}
	page, err := lists.Items.List(ctx, l.ID, ip)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "items page", page, "success", "errors", "messages")
	if page.ResultInfo.Cursors.After == "" {
		t.Error("first page carries no next cursor")
	}

	var dp rules.ListItemDeleteParams
	set(&dp.AccountID.Value, &dp.AccountID.Present, acct)
	var del rules.ListItemDeleteParamsItem
	set(&del.ID.Value, &del.ID.Present, got[0].ID)
	set(&dp.Items.Value, &dp.Items.Present, []rules.ListItemDeleteParamsItem{del})
	deleted, err := lists.Items.Delete(ctx, l.ID, dp)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "delete items", deleted)
	waitOp(t, lists, acct, deleted.OperationID)
	if n := len(s.Items("crowdsec_ban")); n != 7 {
		t.Fatalf("%d items after delete, want 7", n)
	}

	s.FailNextOperation("boom")
	failing, err := lists.Items.New(ctx, l.ID, ap)
	if err != nil {
		t.Fatal(err)
	}
	failed := waitOp(t, lists, acct, failing.OperationID)
	if f, ok := failed.AsUnion().(rules.ListBulkOperationGetResponseListsBulkOperationFailed); !ok || f.Error != "boom" {
		t.Fatalf("failed operation decoded as %T %+v", failed.AsUnion(), failed)
	}

	// Rulesets.
	var pg rulesets.PhaseGetParams
	set(&pg.ZoneID.Value, &pg.ZoneID.Present, "zone1")
	_, err = rs.Phases.Get(ctx, rulesets.PhaseHTTPRequestFirewallCustom, pg)
	var apiErr *rules.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || len(apiErr.Errors) != 1 || apiErr.Errors[0].Code != CodeNoEntrypoint {
		t.Fatalf("missing entrypoint: %v", err)
	}

	rule := func(expr, ref string) rulesets.BlockRuleParam {
		var b rulesets.BlockRuleParam
		set(&b.Action.Value, &b.Action.Present, rulesets.BlockRuleActionBlock)
		set(&b.Expression.Value, &b.Expression.Present, expr)
		set(&b.Description.Value, &b.Description.Present, "d "+ref)
		set(&b.Enabled.Value, &b.Enabled.Present, true)
		set(&b.Ref.Value, &b.Ref.Present, ref)
		return b
	}
	var rn rulesets.RulesetNewParams
	set(&rn.ZoneID.Value, &rn.ZoneID.Present, "zone1")
	set(&rn.Kind.Value, &rn.Kind.Present, rulesets.KindZone)
	set(&rn.Name.Value, &rn.Name.Present, "default")
	set(&rn.Phase.Value, &rn.Phase.Present, rulesets.PhaseHTTPRequestFirewallCustom)
	set(&rn.Rules.Value, &rn.Rules.Present, []rulesets.RulesetNewParamsRuleUnion{rule("(ip.src in $crowdsec_ban)", "one")})
	created, err := rs.New(ctx, rn)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "create ruleset", created)

	var nr rulesets.RuleNewParams
	set(&nr.ZoneID.Value, &nr.ZoneID.Present, "zone1")
	nr.Body = rulesets.RuleNewParamsBodyBlockRule{BlockRuleParam: rule(`(http.host eq "x.example")`, "two")}
	withRule, err := rs.Rules.New(ctx, created.ID, nr)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "create rule", withRule)
	if len(withRule.Rules) != 2 || withRule.Rules[1].Ref != "two" {
		t.Fatalf("rules after create: %+v", withRule.Rules)
	}

	var er rulesets.RuleEditParams
	set(&er.ZoneID.Value, &er.ZoneID.Present, "zone1")
	er.Body = rulesets.RuleEditParamsBodyBlockRule{BlockRuleParam: rule("(ip.src in $crowdsec_ban) and not (http.host in {\"auth.example\"})", "one")}
	edited, err := rs.Rules.Edit(ctx, created.ID, created.Rules[0].ID, er)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "edit rule", edited)

	got2, err := rs.Phases.Get(ctx, rulesets.PhaseHTTPRequestFirewallCustom, pg)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, "get entrypoint", got2)
	if _, ok := got2.Rules[0].AsUnion().(rulesets.BlockRule); !ok {
		t.Errorf("rule decoded as %T", got2.Rules[0].AsUnion())
	}
	if got2.Rules[0].Version != "2" || got2.Rules[1].Version != "1" || got2.Version != "3" {
		t.Errorf("versions: ruleset %s rules %s %s", got2.Version, got2.Rules[0].Version, got2.Rules[1].Version)
	}
	if !strings.Contains(got2.Rules[0].Expression, "auth.example") || got2.Rules[1].Expression != `(http.host eq "x.example")` {
		t.Errorf("rules: %+v", got2.Rules)
	}
}

func rawRequest(t *testing.T, s *Server, method, path, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.Token())
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %s", method, path, raw)
	}
	for _, k := range []string{"success", "errors", "messages", "result"} {
		if _, ok := out[k]; !ok {
			t.Errorf("%s %s: envelope lacks %q: %s", method, path, k, raw)
		}
	}
	return res.StatusCode, res.Header, out
}

func errCode(out map[string]any) int {
	errs, _ := out["errors"].([]any)
	if len(errs) == 0 {
		return 0
	}
	m, _ := errs[0].(map[string]any)
	c, _ := m["code"].(float64)
	return int(c)
}

func TestCursorPaging(t *testing.T) {
	s := New(t, Options{})
	id := s.CreateList("big", "ip")
	var items []Item
	for i := range 1234 {
		items = append(items, Item{IP: fmt.Sprintf("10.%d.%d.1", i/256, i%256)})
	}
	s.SeedItems(id, items)
	base := "accounts/" + s.AccountID() + "/rules/lists/" + id + "/items?per_page=500"
	seen := map[string]bool{}
	cursor := ""
	pages := 0
	for {
		p := base
		if cursor != "" {
			p += "&cursor=" + cursor
		}
		status, _, out := rawRequest(t, s, "GET", p, "")
		if status != 200 {
			t.Fatalf("page %d: %d %v", pages, status, out)
		}
		pages++
		for _, r := range out["result"].([]any) {
			ip := r.(map[string]any)["ip"].(string)
			if seen[ip] {
				t.Fatalf("%s returned twice", ip)
			}
			seen[ip] = true
		}
		info := out["result_info"].(map[string]any)["cursors"].(map[string]any)
		after, _ := info["after"].(string)
		if after == "" {
			break
		}
		cursor = after
	}
	if pages != 3 || len(seen) != 1234 {
		t.Fatalf("%d pages, %d items; want 3, 1234", pages, len(seen))
	}
	for _, bad := range []string{"per_page=0", "per_page=501", "cursor=%21%21"} {
		status, _, out := rawRequest(t, s, "GET", "accounts/"+s.AccountID()+"/rules/lists/"+id+"/items?"+bad, "")
		if status != 400 || out["success"] != false {
			t.Errorf("%s: %d %v", bad, status, out)
		}
	}
	if c := s.Counts()[EPListItems]; c != 6 {
		t.Errorf("counted %d item reads, want 6", c)
	}
}

func TestOperationLifecycleAndBusy(t *testing.T) {
	s := New(t, Options{OpPending: 60 * time.Millisecond, OpRunning: 60 * time.Millisecond, BusyRetryAfter: "2"})
	id := s.CreateList("l", "ip")
	items := "accounts/" + s.AccountID() + "/rules/lists/" + id + "/items"
	status, _, out := rawRequest(t, s, "POST", items, `[{"ip":"192.0.2.1","comment":"a"}]`)
	if status != 200 {
		t.Fatalf("add: %d %v", status, out)
	}
	op := out["result"].(map[string]any)["operation_id"].(string)
	opPath := "accounts/" + s.AccountID() + "/rules/lists/bulk_operations/" + op

	status, hdr, out := rawRequest(t, s, "POST", items, `[{"ip":"192.0.2.2"}]`)
	if status != 429 || hdr.Get("Retry-After") != "2" || errCode(out) != CodeBusy {
		t.Fatalf("second write while the first runs: %d %q %v", status, hdr.Get("Retry-After"), out)
	}
	status, _, out = rawRequest(t, s, "DELETE", items, `{"items":[{"id":"x"}]}`)
	if status != 429 {
		t.Fatalf("delete while busy: %d %v", status, out)
	}

	seen := []string{}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_, _, out := rawRequest(t, s, "GET", opPath, "")
		st := out["result"].(map[string]any)["status"].(string)
		if len(seen) == 0 || seen[len(seen)-1] != st {
			seen = append(seen, st)
		}
		if st == "completed" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Join(seen, ">") != "pending>running>completed" {
		t.Fatalf("states %v, want pending>running>completed", seen)
	}
	if got := s.Items("l"); len(got) != 1 || got[0].IP != "192.0.2.1" || got[0].Comment != "a" {
		t.Fatalf("items %+v", got)
	}
	// Free again.
	if status, _, out := rawRequest(t, s, "POST", items, `[{"ip":"192.0.2.1","comment":"b"}]`); status != 200 {
		t.Fatalf("add after completion: %d %v", status, out)
	}
	time.Sleep(150 * time.Millisecond)
	if got := s.Items("l"); len(got) != 1 || got[0].Comment != "b" {
		t.Fatalf("re-adding an ip replaces its comment and keeps one item: %+v", got)
	}
}

func TestItemCapFailsTheOperation(t *testing.T) {
	s := New(t, Options{ItemCap: 5})
	other := s.CreateList("other", "ip")
	s.SeedItems(other, []Item{{IP: "198.51.100.1"}, {IP: "198.51.100.2"}})
	id := s.CreateList("l", "ip")
	items := "accounts/" + s.AccountID() + "/rules/lists/" + id + "/items"
	_, _, out := rawRequest(t, s, "POST", items, `[{"ip":"192.0.2.1"},{"ip":"192.0.2.2"},{"ip":"192.0.2.3"},{"ip":"192.0.2.4"}]`)
	op := out["result"].(map[string]any)["operation_id"].(string)
	_, _, out = rawRequest(t, s, "GET", "accounts/"+s.AccountID()+"/rules/lists/bulk_operations/"+op, "")
	res := out["result"].(map[string]any)
	if res["status"] != "failed" || !strings.Contains(res["error"].(string), "limit of 5") {
		t.Fatalf("over the cap: %v", res)
	}
	if n := len(s.Items("l")); n != 0 {
		t.Fatalf("a failed operation changed the list: %d items", n)
	}
}

func TestItemValidation(t *testing.T) {
	s := New(t, Options{})
	id := s.CreateList("l", "ip")
	items := "accounts/" + s.AccountID() + "/rules/lists/" + id + "/items"
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{`[{"ip":"192.0.2.1"}]`, true},
		{`[{"ip":"10.0.0.0/8"}]`, true},
		{`[{"ip":"2001:DB8::/48"}]`, true},
		{`[{"ip":"10.0.0.0/7"}]`, false},
		{`[{"ip":"10.0.0.1/24"}]`, false},
		{`[{"ip":"2001:db8::1"}]`, false},
		{`[{"ip":"2001:db8::/96"}]`, false},
		{`[{"ip":"not-an-ip"}]`, false},
		{`[{"asn":13335}]`, false},
		{`[{"ip":"192.0.2.1","bogus":1}]`, false},
		{`[]`, false},
		{`{"ip":"192.0.2.1"}`, false},
	} {
		status, _, out := rawRequest(t, s, "POST", items, tc.body)
		if (status == 200) != tc.ok {
			t.Errorf("%s: %d %v", tc.body, status, out)
		}
		time.Sleep(time.Millisecond)
		s.mu.Lock()
		s.advance(time.Now())
		s.mu.Unlock()
	}
	got := s.Items("l")
	if len(got) != 3 || got[2].IP != "2001:db8::/48" {
		t.Errorf("items %+v (IPv6 is stored lower-case)", got)
	}
}

func TestAuthZoneAndFaults(t *testing.T) {
	s := New(t, Options{Zones: []string{"z"}})
	req, _ := http.NewRequest("GET", s.URL()+"accounts/"+s.AccountID()+"/rules/lists", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 {
		t.Errorf("wrong token: %d", res.StatusCode)
	}
	if status, _, out := rawRequest(t, s, "GET", "zones/nope/rulesets/phases/http_request_firewall_custom/entrypoint", ""); status != 404 || errCode(out) != CodeUnknownZone {
		t.Errorf("unknown zone: %d %v", status, out)
	}

	s.InjectFault(Fault{Endpoint: EPGetLists, Status: 429, RetryAfter: "3"})
	s.InjectFault(Fault{Endpoint: EPGetLists, Status: 502, HTML: true})
	s.InjectFault(Fault{Endpoint: EPGetLists, Status: 503, Times: 2})
	lists := rules.NewListService(sdkOpts(s)...)
	var lp rules.ListListParams
	set(&lp.AccountID.Value, &lp.AccountID.Present, s.AccountID())
	_, err = lists.List(context.Background(), lp)
	var apiErr *rules.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 429 || apiErr.Response.Header.Get("Retry-After") != "3" || apiErr.Errors[0].Code != CodeRateLimit {
		t.Fatalf("injected 429: %v", err)
	}
	// The SDK keeps the status of a non-JSON error page; its errors are empty.
	if _, err = lists.List(context.Background(), lp); !errors.As(err, &apiErr) || apiErr.StatusCode != 502 || len(apiErr.Errors) != 0 {
		t.Fatalf("HTML 502: %v", err)
	}
	for range 2 {
		if _, err = lists.List(context.Background(), lp); !errors.As(err, &apiErr) || apiErr.StatusCode != 503 {
			t.Fatalf("injected 503: %v", err)
		}
	}
	if _, err = lists.List(context.Background(), lp); err != nil {
		t.Fatalf("after the faults: %v", err)
	}
	// Go's transport silently retries an idempotent request once when a
	// reused connection drops, so drop two.
	s.InjectFault(Fault{Drop: true, Times: 2})
	if _, err = lists.List(context.Background(), lp); err == nil {
		t.Fatal("a dropped connection gave no error")
	}
	if c := s.Counts()[EPGetLists]; c != 8 { // 1 wrong token + 4 faults + 1 ok + 2 drops
		t.Errorf("counted %d list reads, want 8", c)
	}
}

func TestRulesetRules(t *testing.T) {
	s := New(t, Options{Zones: []string{"z"}})
	s.CreateList("crowdsec_ban", "ip")
	base := "zones/z/rulesets"
	status, _, out := rawRequest(t, s, "POST", base, `{"kind":"zone","name":"default","phase":"http_request_firewall_custom","rules":[{"action":"skip","action_parameters":{"ruleset":"current"},"expression":"(cf.client.bot)","ref":"foreign"}]}`)
	if status != 200 {
		t.Fatalf("create ruleset: %d %v", status, out)
	}
	rsID := out["result"].(map[string]any)["id"].(string)
	if status, _, out := rawRequest(t, s, "POST", base, `{"kind":"zone","name":"again","phase":"http_request_firewall_custom"}`); status != 400 {
		t.Errorf("second entrypoint: %d %v", status, out)
	}
	rulesPath := base + "/" + rsID + "/rules"
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{`{"action":"block","expression":"(ip.src in $crowdsec_ban)","ref":"mine"}`, true},
		{`{"action":"block","expression":"(ip.src in $crowdsec_ban)","ref":"mine"}`, false},   // duplicate ref
		{`{"action":"block","expression":"(ip.src in $nosuchlist)","ref":"x"}`, false},        // unknown list
		{`{"action":"block","expression":"(ip.src in $crowdsec_ban","ref":"y"}`, false},       // unbalanced
		{`{"action":"explode","expression":"(ip.src in $crowdsec_ban)","ref":"z"}`, false},    // unknown action
		{`{"action":"block","expression":"(` + strings.Repeat("a", 4095) + `)"}`, false},      // too long
		{`{"action":"block","expression":"(ip.src in $crowdsec_ban)","colour":"red"}`, false}, // unknown field
	} {
		if status, _, out := rawRequest(t, s, "POST", rulesPath, tc.body); (status == 200) != tc.ok {
			t.Errorf("%.60s: %d %v", tc.body, status, out)
		}
	}
	rs, _ := s.Entrypoint("z", "http_request_firewall_custom")
	if len(rs.Rules) != 2 || string(rs.Rules[0].ActionParameters) != `{"ruleset":"current"}` || !rs.Rules[1].Enabled {
		t.Fatalf("rules %+v", rs.Rules)
	}
	if status, _, out := rawRequest(t, s, "PATCH", rulesPath+"/"+rs.Rules[1].ID, `{"ref":"foreign"}`); status != 400 {
		t.Errorf("edit to a taken ref: %d %v", status, out)
	}
	if status, _, out := rawRequest(t, s, "PATCH", rulesPath+"/"+rs.Rules[1].ID, `{"enabled":false}`); status != 200 {
		t.Errorf("edit: %d %v", status, out)
	}
	after, _ := s.Entrypoint("z", "http_request_firewall_custom")
	if after.Rules[1].Enabled || after.Rules[1].Version != "2" || !reflect.DeepEqual(after.Rules[0], rs.Rules[0]) {
		t.Errorf("edit changed the wrong things: %+v", after.Rules)
	}
}
