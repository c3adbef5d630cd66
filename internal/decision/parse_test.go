package decision

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// md builds a LAPI decision as the stream sends it.
func md(id int64, scope, value, typ, dur, origin string) *models.Decision {
	return &models.Decision{
		ID:       id,
		UUID:     "uuid-x",
		Origin:   ptr(origin),
		Scenario: ptr("crowdsecurity/ssh-bf"),
		Scope:    ptr(scope),
		Type:     ptr(typ),
		Value:    ptr(value),
		Duration: ptr(dur),
	}
}

func edit(d *models.Decision, f func(*models.Decision)) *models.Decision {
	f(d)
	return d
}

var defaultOpts = ParseOptions{
	Types:       map[string]bool{"ban": true, "captcha": true},
	MinPrefixV4: 8,
	MinPrefixV6: 32,
}

func TestParse(t *testing.T) {
	tests := []struct {
		name   string
		d      *models.Decision
		opt    *ParseOptions // defaultOpts when nil
		prefix string
		scope  string
		typ    string
		expiry time.Duration
	}{
		{name: "ip v4", d: md(1, "Ip", "192.0.2.1", "ban", "4h", "crowdsec"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: 4 * time.Hour},
		{name: "ip v6", d: md(2, "Ip", "2001:db8::1", "ban", "1h", "cscli"), prefix: "2001:db8::1/128", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "ip v6 not canonical", d: md(2, "Ip", "2001:DB8:0:0::1", "ban", "1h", "cscli"), prefix: "2001:db8::1/128", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "scope lower case", d: md(3, "ip", "192.0.2.1", "ban", "1h", "cscli"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "scope upper case", d: md(3, "RANGE", "192.0.2.0/24", "ban", "1h", "cscli"), prefix: "192.0.2.0/24", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "type upper case", d: md(4, "Ip", "192.0.2.1", "Captcha", "1h", "cscli"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "captcha", expiry: time.Hour},
		{name: "fractional duration", d: md(5, "Ip", "192.0.2.1", "ban", "3h59m59.600574037s", "CAPI"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: 4*time.Hour - 399425963*time.Nanosecond},
		{name: "range", d: md(6, "Range", "10.0.0.0/8", "ban", "1h", "lists"), prefix: "10.0.0.0/8", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "range host bits masked", d: md(7, "Range", "10.1.2.3/8", "ban", "1h", "lists"), prefix: "10.0.0.0/8", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "range v6 host bits masked", d: md(7, "Range", "2001:db8:1:2::5/48", "ban", "1h", "lists"), prefix: "2001:db8:1::/48", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "range bare address v4", d: md(8, "Range", "198.51.100.7", "ban", "1h", "lists"), prefix: "198.51.100.7/32", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "range bare address v6", d: md(8, "Range", "2001:db8::7", "ban", "1h", "lists"), prefix: "2001:db8::7/128", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "ip as single-address cidr", d: md(9, "Ip", "192.0.2.9/32", "ban", "1h", "lists"), prefix: "192.0.2.9/32", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "ip scope holding a range (1.4 import)", d: md(9, "Ip", "192.0.2.0/24", "ban", "1h", "cscli-import"), prefix: "192.0.2.0/24", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "mapped ip", d: md(10, "Ip", "::ffff:192.0.2.1", "ban", "1h", "cscli"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "mapped ip hex", d: md(10, "Ip", "::ffff:c000:201", "ban", "1h", "cscli"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "mapped single-address cidr", d: md(11, "Ip", "::ffff:192.0.2.1/128", "ban", "1h", "cscli"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: time.Hour},
		{name: "mapped range", d: md(12, "Range", "::ffff:10.0.0.0/104", "ban", "1h", "cscli"), prefix: "10.0.0.0/8", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "mapped range host bits", d: md(13, "Range", "::ffff:10.9.8.7/120", "ban", "1h", "cscli"), prefix: "10.9.8.0/24", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "range around mapped block stays v6", d: md(14, "Range", "::ffff:0:0/95", "ban", "1h", "cscli"), prefix: "::fffe:0:0/95", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "long duration", d: md(15, "Ip", "192.0.2.1", "ban", "8760h", "CAPI"), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: 8760 * time.Hour},
		{name: "any type when Types empty", d: md(16, "Ip", "192.0.2.1", "throttle", "1h", "cscli"), opt: &ParseOptions{}, prefix: "192.0.2.1/32", scope: ScopeIP, typ: "throttle", expiry: time.Hour},
		{name: "no minimum: /0 accepted", d: md(17, "Range", "0.0.0.0/0", "ban", "1h", "cscli"), opt: &ParseOptions{}, prefix: "0.0.0.0/0", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "at the minimum", d: md(18, "Range", "10.0.0.0/8", "ban", "1h", "cscli"), prefix: "10.0.0.0/8", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "v6 at the minimum", d: md(19, "Range", "2001:db8::/32", "ban", "1h", "cscli"), prefix: "2001:db8::/32", scope: ScopeRange, typ: "ban", expiry: time.Hour},
		{name: "nil scenario", d: edit(md(20, "Ip", "192.0.2.1", "ban", "1h", "cscli"), func(d *models.Decision) { d.Scenario = nil }), prefix: "192.0.2.1/32", scope: ScopeIP, typ: "ban", expiry: time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt := defaultOpts
			if tt.opt != nil {
				opt = *tt.opt
			}
			got, err := Parse(tt.d, t0, opt)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if want := netip.MustParsePrefix(tt.prefix); got.Prefix != want {
				t.Errorf("Prefix = %v, want %v", got.Prefix, want)
			}
			if got.Scope != tt.scope || got.Type != tt.typ {
				t.Errorf("Scope, Type = %q, %q, want %q, %q", got.Scope, got.Type, tt.scope, tt.typ)
			}
			if want := t0.Add(tt.expiry); !got.Expiry.Equal(want) {
				t.Errorf("Expiry = %v, want %v", got.Expiry, want)
			}
			if got.ID != tt.d.ID || got.Value != *tt.d.Value || got.Origin != *tt.d.Origin || got.UUID != tt.d.UUID {
				t.Errorf("ID, Value, Origin, UUID = %d, %q, %q, %q, not copied from %+v", got.ID, got.Value, got.Origin, got.UUID, tt.d)
			}
		})
	}
}

func TestParseSkip(t *testing.T) {
	ok := func() *models.Decision { return md(42, "Ip", "192.0.2.1", "ban", "1h", "cscli") }
	tests := []struct {
		name   string
		d      *models.Decision
		opt    *ParseOptions
		reason SkipReason
	}{
		{name: "nil decision", d: nil, reason: ReasonMissingField},
		{name: "all fields nil", d: &models.Decision{ID: 9}, reason: ReasonMissingField},
		{name: "nil value", d: edit(ok(), func(d *models.Decision) { d.Value = nil }), reason: ReasonMissingField},
		{name: "nil scope", d: edit(ok(), func(d *models.Decision) { d.Scope = nil }), reason: ReasonMissingField},
		{name: "nil type", d: edit(ok(), func(d *models.Decision) { d.Type = nil }), reason: ReasonMissingField},
		{name: "nil origin", d: edit(ok(), func(d *models.Decision) { d.Origin = nil }), reason: ReasonMissingField},
		{name: "nil duration", d: edit(ok(), func(d *models.Decision) { d.Duration = nil }), reason: ReasonMissingField},

		{name: "empty value", d: md(1, "Ip", "", "ban", "1h", "cscli"), reason: ReasonBadValue},
		{name: "hostname", d: md(1, "Ip", "example.com", "ban", "1h", "cscli"), reason: ReasonBadValue},
		{name: "leading zero octet", d: md(1, "Ip", "192.0.2.01", "ban", "1h", "cscli"), reason: ReasonBadValue},
		{name: "space around", d: md(1, "Ip", " 192.0.2.1", "ban", "1h", "cscli"), reason: ReasonBadValue},
		{name: "prefix too long", d: md(1, "Range", "192.0.2.0/33", "ban", "1h", "cscli"), reason: ReasonBadValue},
		{name: "prefix without bits", d: md(1, "Range", "192.0.2.0/", "ban", "1h", "cscli"), reason: ReasonBadValue},
		{name: "garbage range", d: md(1, "Range", "a/b", "ban", "1h", "cscli"), reason: ReasonBadValue},

		{name: "zone", d: md(1, "Ip", "fe80::1%eth0", "ban", "1h", "cscli"), reason: ReasonIPv6Zone},
		{name: "zone in range", d: md(1, "Range", "fe80::%eth0/64", "ban", "1h", "cscli"), reason: ReasonIPv6Zone},

		{name: "v4 too broad", d: md(1, "Range", "10.0.0.0/7", "ban", "1h", "cscli"), reason: ReasonTooBroad},
		{name: "v4 /0", d: md(1, "Range", "0.0.0.0/0", "ban", "1h", "cscli"), reason: ReasonTooBroad},
		{name: "v6 too broad", d: md(1, "Range", "2001:db8::/31", "ban", "1h", "cscli"), reason: ReasonTooBroad},
		{name: "mapped block is v4 /0", d: md(1, "Range", "::ffff:0:0/96", "ban", "1h", "cscli"), reason: ReasonTooBroad},

		{name: "duration garbage", d: md(1, "Ip", "192.0.2.1", "ban", "four hours", "cscli"), reason: ReasonBadDuration},
		{name: "duration empty", d: md(1, "Ip", "192.0.2.1", "ban", "", "cscli"), reason: ReasonBadDuration},
		{name: "duration negative", d: md(1, "Ip", "192.0.2.1", "ban", "-3.5s", "cscli"), reason: ReasonBadDuration},
		{name: "duration zero", d: md(1, "Ip", "192.0.2.1", "ban", "0s", "cscli"), reason: ReasonBadDuration},
		{name: "duration overflow", d: md(1, "Ip", "192.0.2.1", "ban", "9999999999h", "cscli"), reason: ReasonBadDuration},
		{name: "duration in days", d: md(1, "Ip", "192.0.2.1", "ban", "1d", "cscli"), reason: ReasonBadDuration},

		{name: "type not enforced", d: md(1, "Ip", "192.0.2.1", "throttle", "1h", "cscli"), reason: ReasonUnsupportedType},
		{name: "type empty", d: md(1, "Ip", "192.0.2.1", "", "1h", "cscli"), opt: &ParseOptions{}, reason: ReasonUnsupportedType},

		{name: "country", d: md(1, "Country", "FR", "ban", "1h", "cscli"), reason: ReasonUnsupportedScope},
		{name: "as", d: md(1, "AS", "64496", "ban", "1h", "cscli"), reason: ReasonUnsupportedScope},
		{name: "username", d: md(1, "Username", "root", "ban", "1h", "cscli"), reason: ReasonUnsupportedScope},
		{name: "empty scope", d: md(1, "", "192.0.2.1", "ban", "1h", "cscli"), reason: ReasonUnsupportedScope},

		{name: "v6 disabled", d: md(1, "Ip", "2001:db8::1", "ban", "1h", "cscli"), opt: &ParseOptions{DisableIPv6: true}, reason: ReasonIPv6Disabled},
		{name: "v6 range disabled", d: md(1, "Range", "2001:db8::/48", "ban", "1h", "cscli"), opt: &ParseOptions{DisableIPv6: true}, reason: ReasonIPv6Disabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt := defaultOpts
			if tt.opt != nil {
				opt = *tt.opt
			}
			_, err := Parse(tt.d, t0, opt)
			var se *SkipError
			if !errors.As(err, &se) {
				t.Fatalf("Parse error = %v, want a *SkipError", err)
			}
			if se.Reason != tt.reason {
				t.Fatalf("Reason = %q, want %q (%v)", se.Reason, tt.reason, err)
			}
			if tt.d != nil && se.ID != tt.d.ID {
				t.Errorf("ID = %d, want %d", se.ID, tt.d.ID)
			}
			if tt.d != nil && tt.d.Value != nil && se.Value != *tt.d.Value {
				t.Errorf("Value = %q, want %q", se.Value, *tt.d.Value)
			}
			if se.Err == nil || errors.Unwrap(err) != se.Err {
				t.Errorf("no cause wrapped: %v", err)
			}
			if msg := err.Error(); !strings.Contains(msg, string(tt.reason)) || msg != strings.ToLower(msg[:1])+msg[1:] {
				t.Errorf("message %q does not name the reason or is not lower-case", msg)
			}
		})
	}
}

func TestSkipReasonsCovered(t *testing.T) {
	want := map[SkipReason]string{
		ReasonBadValue: "bad_value", ReasonIPv6Zone: "ipv6_zone", ReasonTooBroad: "too_broad",
		ReasonBadDuration: "bad_duration", ReasonUnsupportedType: "unsupported_type",
		ReasonUnsupportedScope: "unsupported_scope", ReasonIPv6Disabled: "ipv6_disabled",
		ReasonMissingField: "missing_field",
	}
	got := SkipReasons()
	if len(got) != len(want) {
		t.Fatalf("SkipReasons() = %v, want %d reasons", got, len(want))
	}
	for _, r := range got {
		if want[r] != string(r) {
			t.Errorf("reason %q has no stable label", r)
		}
	}
	got[0] = "mutated"
	if SkipReasons()[0] == "mutated" {
		t.Error("SkipReasons returns the package's own slice")
	}
}

func TestSkipErrorWrapsCause(t *testing.T) {
	_, err := Parse(md(1, "Ip", "192.0.2.1", "ban", "soon", "cscli"), t0, defaultOpts)
	var se *SkipError
	if !errors.As(err, &se) || se.Reason != ReasonBadDuration {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), `time: invalid duration "soon"`) {
		t.Errorf("cause missing from %q", err)
	}
	if want := `skip decision 1 "192.0.2.1": bad_duration: time: invalid duration "soon"`; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
}

func TestParseDeleted(t *testing.T) {
	tests := []struct {
		name   string
		d      *models.Decision
		prefix string
		reason SkipReason
	}{
		{name: "negative duration", d: md(1, "Ip", "192.0.2.1", "ban", "-1.234s", "cscli"), prefix: "192.0.2.1/32"},
		{name: "expired long ago", d: md(2, "Range", "10.0.0.0/8", "ban", "-2562047h", "lists"), prefix: "10.0.0.0/8"},
		{name: "garbage duration", d: md(3, "Ip", "192.0.2.3", "ban", "deleted", "CAPI"), prefix: "192.0.2.3/32"},
		{name: "nil duration", d: edit(md(4, "Ip", "192.0.2.4", "ban", "", "cscli"), func(d *models.Decision) { d.Duration = nil }), prefix: "192.0.2.4/32"},
		{name: "nil origin", d: edit(md(5, "Ip", "192.0.2.5", "ban", "1h", ""), func(d *models.Decision) { d.Origin = nil }), prefix: "192.0.2.5/32"},
		{name: "mapped", d: md(6, "Ip", "::ffff:192.0.2.6", "ban", "-1s", "cscli"), prefix: "192.0.2.6/32"},
		{name: "nil value", d: edit(md(7, "Ip", "", "ban", "1h", ""), func(d *models.Decision) { d.Value = nil }), reason: ReasonMissingField},
		{name: "unsupported type", d: md(8, "Ip", "192.0.2.8", "throttle", "-1s", "cscli"), reason: ReasonUnsupportedType},
		{name: "bad value", d: md(9, "Ip", "nope", "ban", "-1s", "cscli"), reason: ReasonBadValue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDeleted(tt.d, defaultOpts)
			if tt.reason != "" {
				var se *SkipError
				if !errors.As(err, &se) || se.Reason != tt.reason {
					t.Fatalf("err = %v, want reason %q", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseDeleted: %v", err)
			}
			if want := netip.MustParsePrefix(tt.prefix); got.Prefix != want || got.ID != tt.d.ID || !got.Expiry.IsZero() {
				t.Errorf("got %+v, want prefix %v, id %d, zero expiry", got, want, tt.d.ID)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	seeds := []struct{ scope, value, typ, dur string }{
		{"Ip", "192.0.2.1", "ban", "4h"},
		{"Range", "10.1.2.3/8", "ban", "1h"},
		{"Range", "::ffff:10.0.0.0/104", "captcha", "3h59m59.6s"},
		{"Ip", "fe80::1%eth0", "ban", "1h"},
		{"Range", "2001:db8::/31", "ban", "-1s"},
		{"ip", "::ffff:1.2.3.4/128", "BAN", "1m"},
		{"Country", "FR", "ban", "1h"},
		{"Range", "0.0.0.0/0", "ban", "1h"},
	}
	for _, s := range seeds {
		f.Add(s.scope, s.value, s.typ, s.dur, uint8(8), uint8(32), false)
	}
	f.Fuzz(func(t *testing.T, scope, value, typ, dur string, min4, min6 uint8, no6 bool) {
		opt := ParseOptions{MinPrefixV4: int(min4 % 40), MinPrefixV6: int(min6 % 140), DisableIPv6: no6}
		d := md(1, scope, value, typ, dur, "fuzz")
		got, err := Parse(d, t0, opt)
		check := func(got Decision, err error) {
			if err != nil {
				var se *SkipError
				if !errors.As(err, &se) {
					t.Fatalf("error %v is not a *SkipError", err)
				}
				return
			}
			p := got.Prefix
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("Prefix %v of %q is not valid, masked and unmapped", p, value)
			}
			if p.Addr().Is6() && no6 {
				t.Fatalf("IPv6 prefix %v accepted with IPv6 disabled", p)
			}
			min := opt.MinPrefixV4
			if p.Addr().Is6() {
				min = opt.MinPrefixV6
			}
			if p.Bits() < min {
				t.Fatalf("prefix %v broader than /%d accepted", p, min)
			}
			if got.Scope != ScopeIP && got.Scope != ScopeRange {
				t.Fatalf("scope %q", got.Scope)
			}
		}
		check(got, err)
		if err == nil && !got.Expiry.After(t0) {
			t.Fatalf("expiry %v not after now", got.Expiry)
		}
		check(ParseDeleted(d, opt))
	})
}
