package fleet

import (
	"testing"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

func TestResyncGuard(t *testing.T) {
	type step struct {
		enforced, incoming int
		want               Decision
	}
	for _, tc := range []struct {
		name  string
		guard ShrinkGuard
		steps []step
	}{
		{"nothing changed", ShrinkGuard{}, []step{
			{100_000, 100_000, Decision{}},
			{100_000, 100_000, Decision{}},
		}},
		{"growth", ShrinkGuard{}, []step{{10, 100_000, Decision{}}}},
		{"nothing enforced", ShrinkGuard{}, []step{{0, 0, Decision{}}}},
		{"lost deltas are repaired at once", ShrinkGuard{}, []step{
			{100_000, 99_990, Decision{Shrink: 10}},
			{100_000, 91_000, Decision{Shrink: 9_000}}, // 9%: within MaxShrink
		}},
		{"a small fleet may lose everything at once", ShrinkGuard{}, []step{
			{99, 0, Decision{Shrink: 99}}, // below MinShrink
		}},
		{"an empty replica is held, then confirmed", ShrinkGuard{}, []step{
			{100_000, 0, Decision{Hold: true, Shrink: 100_000}},
			{100_000, 0, Decision{Shrink: 100_000, Confirmed: true}},
			{0, 0, Decision{}},
		}},
		{"a lagging replica is held, the next set is whole", ShrinkGuard{}, []step{
			{100_000, 80_000, Decision{Hold: true, Shrink: 20_000}},
			{100_000, 100_001, Decision{}},
			// The hold starts over: one held set does not confirm a
			// later one.
			{100_000, 80_000, Decision{Hold: true, Shrink: 20_000}},
		}},
		{"a confirmed removal does not confirm the next", ShrinkGuard{}, []step{
			{1000, 0, Decision{Hold: true, Shrink: 1000}},
			{1000, 0, Decision{Shrink: 1000, Confirmed: true}},
			{1000, 500, Decision{Hold: true, Shrink: 500}},
		}},
		{"custom thresholds", ShrinkGuard{MaxShrink: 0.5, MinShrink: 2}, []step{
			{10, 6, Decision{Shrink: 4}},
			{10, 4, Decision{Hold: true, Shrink: 6}},
			{4, 0, Decision{Shrink: 4, Confirmed: true}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.guard
			for i, s := range tc.steps {
				if got := g.Check(s.enforced, s.incoming); got != s.want {
					t.Errorf("step %d: Check(%d, %d) = %+v, want %+v", i, s.enforced, s.incoming, got, s.want)
				}
			}
		})
	}
}

func TestResyncCandidates(t *testing.T) {
	str := func(s string) *string { return &s }
	d := func(typ, value *string) *models.Decision { return &models.Decision{Type: typ, Value: value} }
	ds := []*models.Decision{
		d(str("ban"), str("192.0.2.1")),
		d(str("Ban"), str("192.0.2.2")),
		d(str("captcha"), str("192.0.2.3")),
		d(str("ban"), nil),
		d(nil, str("192.0.2.4")),
		nil,
	}
	for _, tc := range []struct {
		types []string
		want  int
	}{
		{nil, 3},
		{[]string{"ban"}, 2},
		{[]string{"ban", "CAPTCHA"}, 3},
		{[]string{"throttle"}, 0},
	} {
		if got := Candidates(ds, tc.types); got != tc.want {
			t.Errorf("Candidates(types %v) = %d, want %d", tc.types, got, tc.want)
		}
	}
}
