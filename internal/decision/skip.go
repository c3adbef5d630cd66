package decision

import (
	"fmt"
	"strconv"
)

// SkipReason says why a decision was not enforced. Its string is stable: it
// is the "reason" label of the skip counters.
type SkipReason string

// The reasons a decision is skipped.
const (
	// ReasonBadValue: the value is not an IP address or a CIDR.
	ReasonBadValue SkipReason = "bad_value"
	// ReasonIPv6Zone: the value is an IPv6 address with a zone
	// (fe80::1%eth0), which has no meaning for remote sources.
	ReasonIPv6Zone SkipReason = "ipv6_zone"
	// ReasonTooBroad: the prefix is broader than ParseOptions allows.
	ReasonTooBroad SkipReason = "too_broad"
	// ReasonBadDuration: the duration does not parse, or a new decision
	// has already run out.
	ReasonBadDuration SkipReason = "bad_duration"
	// ReasonUnsupportedType: the type is not one of ParseOptions.Types.
	ReasonUnsupportedType SkipReason = "unsupported_type"
	// ReasonUnsupportedScope: the scope is neither Ip nor Range
	// (Country, AS, Username, ...).
	ReasonUnsupportedScope SkipReason = "unsupported_scope"
	// ReasonIPv6Disabled: an IPv6 value while ParseOptions.DisableIPv6 is
	// set.
	ReasonIPv6Disabled SkipReason = "ipv6_disabled"
	// ReasonMissingField: a required field of the decision is absent.
	ReasonMissingField SkipReason = "missing_field"
)

var skipReasons = [...]SkipReason{
	ReasonBadValue,
	ReasonIPv6Zone,
	ReasonTooBroad,
	ReasonBadDuration,
	ReasonUnsupportedType,
	ReasonUnsupportedScope,
	ReasonIPv6Disabled,
	ReasonMissingField,
}

// SkipReasons returns every reason, so that counters can be created with
// all their labels at zero.
func SkipReasons() []SkipReason {
	out := make([]SkipReason, len(skipReasons))
	copy(out, skipReasons[:])
	return out
}

// SkipError is the error of Parse and ParseDeleted: the decision cannot be
// enforced and is skipped. Use errors.As to read the reason.
type SkipError struct {
	Reason SkipReason
	// ID is the LAPI decision id (0 when LAPI did not send one).
	ID int64
	// Value is the decision's value as LAPI sent it ("" when absent).
	Value string
	// Err is the cause.
	Err error
}

func (e *SkipError) Error() string {
	var b []byte
	b = append(b, "skip decision "...)
	b = strconv.AppendInt(b, e.ID, 10)
	if e.Value != "" {
		b = append(b, ' ')
		b = strconv.AppendQuote(b, e.Value)
	}
	b = append(b, ": "...)
	b = append(b, e.Reason...)
	if e.Err != nil {
		b = append(b, ": "...)
		b = append(b, e.Err.Error()...)
	}
	return string(b)
}

func (e *SkipError) Unwrap() error { return e.Err }

func skip(reason SkipReason, id int64, value string, format string, args ...any) *SkipError {
	return &SkipError{Reason: reason, ID: id, Value: value, Err: fmt.Errorf(format, args...)}
}
