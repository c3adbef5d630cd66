package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// memBackend is a backend in memory that counts its writes.
type memBackend struct {
	name    string
	entries map[netip.Prefix]decision.Entry
	allow   []netip.Prefix
	upserts int
	deletes int
	fail    error
}

func newMem(name string) *memBackend {
	return &memBackend{name: name, entries: map[netip.Prefix]decision.Entry{}}
}

func (m *memBackend) Name() string { return m.name }
func (m *memBackend) Apply(_ context.Context, up []decision.Entry, del []netip.Prefix) error {
	if m.fail != nil {
		// Half lands, as a real backend might.
		for _, e := range up[:len(up)/2] {
			m.entries[e.Prefix] = e
		}
		return m.fail
	}
	for _, e := range up {
		m.entries[e.Prefix] = e
	}
	for _, p := range del {
		delete(m.entries, p)
	}
	m.upserts += len(up)
	m.deletes += len(del)
	return nil
}
func (m *memBackend) List(context.Context) ([]decision.Entry, error) {
	var out []decision.Entry
	for _, e := range m.entries {
		out = append(out, e)
	}
	return out, nil
}
func (m *memBackend) SetAllowlist(_ context.Context, a []netip.Prefix) error {
	m.allow = a
	return nil
}

func (m *memBackend) prefixes() []string {
	var out []string
	for p := range m.entries {
		out = append(out, p.String())
	}
	sort.Strings(out)
	return out
}

type counter struct {
	skipped     map[decision.SkipReason]int
	allowlisted int
}

func (c *counter) Skipped(r decision.SkipReason) { c.skipped[r]++ }
func (c *counter) Allowlisted()                  { c.allowlisted++ }
func (c *counter) Applied(string, int, int)      {}

func str(s string) *string { return &s }

func dec(id int64, scope, value, dur, origin, typ string) *models.Decision {
	return &models.Decision{ID: id, Scope: str(scope), Value: str(value), Duration: str(dur), Origin: str(origin), Type: str(typ), Scenario: str("test")}
}

var opts = decision.ParseOptions{Types: map[string]bool{"ban": true}, MinPrefixV4: 8, MinPrefixV6: 16}

func newEngine(t *testing.T, bes ...decision.Backend) (*Engine, *counter) {
	t.Helper()
	c := &counter{skipped: map[decision.SkipReason]int{}}
	e := New(Options{Parse: opts, Observer: c, Allowlist: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, bes...)
	if err := e.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e, c
}

func TestStartupAndDeltas(t *testing.T) {
	ctx := context.Background()
	mem := newMem("mem")
	e, c := newEngine(t, mem)
	st, err := e.Startup(ctx, []*models.Decision{
		dec(1, "Ip", "192.0.2.1", "4h", "crowdsec", "ban"),
		dec(2, "Range", "198.51.100.0/24", "1h", "CAPI", "ban"),
		dec(3, "ip", "2001:db8::1", "4h", "cscli", "ban"),
		dec(4, "Ip", "not-an-ip", "4h", "cscli", "ban"),
		dec(5, "Ip", "192.0.2.9", "4h", "cscli", "captcha"),
		dec(6, "Range", "0.0.0.0/1", "4h", "cscli", "ban"),
		dec(7, "Ip", "10.1.2.3", "4h", "cscli", "ban"),
		dec(8, "Country", "FR", "4h", "cscli", "ban"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 4 || st.Upserts != 4 {
		t.Errorf("startup stats %+v, want 4 skipped and 4 upserts", st)
	}
	for _, r := range []decision.SkipReason{decision.ReasonBadValue, decision.ReasonUnsupportedType, decision.ReasonTooBroad, decision.ReasonUnsupportedScope} {
		if c.skipped[r] != 1 {
			t.Errorf("skip reason %s counted %d times, want 1", r, c.skipped[r])
		}
	}
	if c.allowlisted != 1 {
		t.Errorf("allowlisted = %d, want 1", c.allowlisted)
	}
	if len(mem.allow) != 1 {
		t.Errorf("allowlist not passed to the backend")
	}

	// A second decision on 192.0.2.1; deleting the first keeps it banned.
	if _, err := e.Delta(ctx, []*models.Decision{dec(10, "Ip", "192.0.2.1", "8h", "cscli", "ban")}, nil); err != nil {
		t.Fatal(err)
	}
	if got := mem.entries[netip.MustParsePrefix("192.0.2.1/32")]; got.Origin != "cscli" {
		t.Errorf("longest decision should win: %+v", got)
	}
	if _, err := e.Delta(ctx, nil, []*models.Decision{dec(1, "Ip", "192.0.2.1", "-1s", "crowdsec", "ban")}); err != nil {
		t.Fatal(err)
	}
	if _, ok := mem.entries[netip.MustParsePrefix("192.0.2.1/32")]; !ok {
		t.Fatal("deleting one of two decisions unbanned the value")
	}
	if _, err := e.Delta(ctx, nil, []*models.Decision{dec(10, "Ip", "192.0.2.1", "-1s", "cscli", "ban")}); err != nil {
		t.Fatal(err)
	}
	if _, ok := mem.entries[netip.MustParsePrefix("192.0.2.1/32")]; ok {
		t.Fatal("value still banned after its last decision was deleted")
	}
	// A delete for an unknown decision is harmless.
	if _, err := e.Delta(ctx, nil, []*models.Decision{dec(999, "Ip", "203.0.113.1", "-1s", "cscli", "ban")}); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.1.2.3/32", "198.51.100.0/24", "2001:db8::1/128"}
	if got := mem.prefixes(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("enforced %v, want %v", got, want)
	}
}

// TestRestartWritesNothing starts a second engine over a backend that
// already holds the same set (pinned maps after a restart): the startup set
// must not write anything, and a stale entry must go.
func TestRestartWritesNothing(t *testing.T) {
	ctx := context.Background()
	mem := newMem("mem")
	set := []*models.Decision{
		dec(1, "Ip", "192.0.2.1", "4h", "crowdsec", "ban"),
		dec(2, "Range", "198.51.100.0/24", "1h", "CAPI", "ban"),
	}
	e1, _ := newEngine(t, mem)
	if _, err := e1.Startup(ctx, set); err != nil {
		t.Fatal(err)
	}
	mem.entries[netip.MustParsePrefix("203.0.113.0/24")] = decision.Entry{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Origin: "old"}
	mem.upserts, mem.deletes = 0, 0

	e2, _ := newEngine(t, mem)
	time.Sleep(10 * time.Millisecond) // durations now end later: within tolerance
	st, err := e2.Startup(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	if mem.upserts != 0 || mem.deletes != 1 || st.Deletes != 1 {
		t.Errorf("restart wrote %d upserts and %d deletes, want 0 and 1 (the stale entry)", mem.upserts, mem.deletes)
	}
	// The same set again: a resync that finds nothing writes nothing.
	st, err = e2.Startup(ctx, set)
	if err != nil || st.Upserts+st.Deletes != 0 {
		t.Errorf("no-op resync: %+v, %v", st, err)
	}
}

// TestFailedWriteIsRepaired makes a backend fail half way: the next
// reconcile reads it back and completes the work.
func TestFailedWriteIsRepaired(t *testing.T) {
	ctx := context.Background()
	mem := newMem("mem")
	e, _ := newEngine(t, mem)
	mem.fail = errors.New("injected")
	var set []*models.Decision
	for i := 0; i < 10; i++ {
		set = append(set, dec(int64(i+1), "Ip", fmt.Sprintf("192.0.2.%d", i+1), "4h", "crowdsec", "ban"))
	}
	if _, err := e.Startup(ctx, set); err == nil {
		t.Fatal("failure not reported")
	}
	mem.fail = nil
	if _, err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if len(mem.entries) != 10 {
		t.Errorf("%d entries after repair, want 10", len(mem.entries))
	}
}

// TestExpiredArePruned lets a decision expire and checks a reconcile
// removes it from the backend.
func TestExpiredArePruned(t *testing.T) {
	ctx := context.Background()
	mem := newMem("mem")
	now := time.Now()
	e := New(Options{Parse: opts, Now: func() time.Time { return now }}, mem)
	if err := e.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Startup(ctx, []*models.Decision{dec(1, "Ip", "192.0.2.1", "1m", "crowdsec", "ban"), dec(2, "Ip", "192.0.2.2", "1h", "crowdsec", "ban")}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mem.prefixes(); fmt.Sprint(got) != "[192.0.2.2/32]" {
		t.Errorf("after expiry: %v", got)
	}
}

func TestTwoBackends(t *testing.T) {
	ctx := context.Background()
	a, b := newMem("xdp"), newMem("nftables")
	e, _ := newEngine(t, a)
	if _, err := e.Startup(ctx, []*models.Decision{dec(1, "Ip", "192.0.2.1", "4h", "crowdsec", "ban")}); err != nil {
		t.Fatal(err)
	}
	if err := e.AddBackend(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Delta(ctx, []*models.Decision{dec(2, "Ip", "192.0.2.2", "4h", "crowdsec", "ban")}, nil); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(a.prefixes()) != fmt.Sprint(b.prefixes()) || len(b.entries) != 2 {
		t.Errorf("backends differ: %v vs %v", a.prefixes(), b.prefixes())
	}
}

// TestNothingRemovedBeforeFirstSet restarts over a backend that enforces
// bans while LAPI has not answered yet: reconciles and a backend added
// meanwhile must not remove anything until a complete set arrives.
func TestNothingRemovedBeforeFirstSet(t *testing.T) {
	ctx := context.Background()
	xdp, nft := newMem("xdp"), newMem("nftables")
	p := netip.MustParsePrefix("192.0.2.1/32")
	xdp.entries[p] = decision.Entry{Prefix: p, Origin: "crowdsec", Expiry: time.Now().Add(time.Hour)}
	e, _ := newEngine(t, xdp)
	if e.Synced() {
		t.Fatal("synced before any set")
	}
	if st, err := e.Reconcile(ctx); err != nil || st.Deletes != 0 {
		t.Fatalf("reconcile before the first set: %+v, %v", st, err)
	}
	if err := e.AddBackend(ctx, nft); err != nil {
		t.Fatal(err)
	}
	if len(xdp.entries) != 1 || xdp.deletes != 0 {
		t.Fatalf("entries removed before the first set: %v", xdp.prefixes())
	}
	// The first set says the ban is gone: now it goes.
	st, err := e.Startup(ctx, nil)
	if err != nil || st.Deletes != 1 || len(xdp.entries) != 0 || !e.Synced() {
		t.Fatalf("first set: %+v, %v, left %v", st, err, xdp.prefixes())
	}
}

// TestLenAndEach counts the effective entries without building a list: a
// value held by two decisions is one entry, an expired one none.
func TestLenAndEach(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	mem := newMem("mem")
	e := New(Options{Parse: opts, Now: func() time.Time { return now }}, mem)
	if err := e.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Startup(ctx, []*models.Decision{
		dec(1, "Ip", "192.0.2.1", "1h", "crowdsec", "ban"),
		dec(2, "Ip", "192.0.2.1", "4h", "cscli", "ban"),
		dec(3, "Range", "2001:db8::/48", "1m", "crowdsec", "ban"),
	}); err != nil {
		t.Fatal(err)
	}
	if n := e.Len(); n != 2 {
		t.Fatalf("Len %d, want 2", n)
	}
	now = now.Add(2 * time.Minute)
	var got []string
	e.Each(func(en decision.Entry) { got = append(got, en.Prefix.String()+" "+en.Origin) })
	if fmt.Sprint(got) != "[192.0.2.1/32 cscli]" || e.Len() != 1 {
		t.Fatalf("after the range expired: Each %v, Len %d", got, e.Len())
	}
}
