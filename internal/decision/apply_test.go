package decision

import (
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

func TestApply(t *testing.T) {
	h := time.Hour
	var s Store
	var skips []SkipReason
	onSkip := func(e *SkipError) { skips = append(skips, e.Reason) }

	// A startup set, with decisions to skip among it.
	s.Apply(true, []*models.Decision{
		md(1, "Ip", "192.0.2.1", "ban", "4h", "crowdsec"),
		md(2, "Ip", "192.0.2.1", "ban", "1h", "CAPI"),
		md(3, "Range", "198.51.100.0/24", "captcha", "2h", "lists"),
		md(4, "Country", "FR", "ban", "1h", "cscli"),
		md(5, "Ip", "nonsense", "ban", "1h", "cscli"),
		nil,
	}, nil, t0, defaultOpts, onSkip)
	want := []Entry{ent("192.0.2.1/32", "crowdsec", 4*h), ent("198.51.100.0/24", "lists", 2*h)}
	if got := sorted(s.Entries(t0)); !equalEntries(got, want) {
		t.Fatalf("after startup: %v, want %v", got, want)
	}
	wantSkips := []SkipReason{ReasonUnsupportedScope, ReasonBadValue, ReasonMissingField}
	if len(skips) != len(wantSkips) {
		t.Fatalf("skips %v, want %v", skips, wantSkips)
	}
	for i := range skips {
		if skips[i] != wantSkips[i] {
			t.Fatalf("skips %v, want %v", skips, wantSkips)
		}
	}

	// A delta: deletes by ID, malformed ones included, then adds.
	s.Apply(false, []*models.Decision{
		md(6, "Ip", "203.0.113.1", "ban", "1h", "cscli"),
	}, []*models.Decision{
		md(1, "Ip", "192.0.2.1", "ban", "-1s", "crowdsec"),
		{ID: 3}, // no fields at all: still deleted by ID
		md(99, "Ip", "192.0.2.99", "ban", "-1s", "cscli"),
		nil,
	}, t0, defaultOpts, nil)
	want = []Entry{ent("192.0.2.1/32", "CAPI", 1*h), ent("203.0.113.1/32", "cscli", 1*h)}
	if got := sorted(s.Entries(t0)); !equalEntries(got, want) {
		t.Fatalf("after delta: %v, want %v", got, want)
	}

	// A later startup set replaces everything, deletes ignored.
	s.Apply(true, []*models.Decision{md(7, "Ip", "192.0.2.7", "ban", "1h", "cscli")},
		[]*models.Decision{md(7, "Ip", "192.0.2.7", "ban", "-1s", "cscli")}, t0, defaultOpts, nil)
	want = []Entry{ent("192.0.2.7/32", "cscli", 1*h)}
	if got := s.Entries(t0); !equalEntries(got, want) || s.Len() != 1 {
		t.Fatalf("after second startup: %v, want %v", got, want)
	}
}
