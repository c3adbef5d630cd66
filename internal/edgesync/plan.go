package edgesync

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
)

// ErrDeleteGuard stops a sync that would remove too much of the list.
var ErrDeleteGuard = errors.New("delete guard")

// Desired is one prefix edgesync wants in the list, with the decision that
// explains it.
type Desired struct {
	// Prefix is masked; IPv6 is already widened.
	Prefix netip.Prefix
	// Origin and Scenario come from the decision ranked first on the prefix.
	Origin   string
	Scenario string
	// Expiry is the last expiry of all decisions on the prefix (zero:
	// none).
	Expiry time.Time
}

// maxComment is the length comments are cut to.
const maxComment = 120

// Comment is the item comment: why the prefix is listed and until when.
// The expiry lets a later run tell an expired item from one that vanished
// from the LAPI's answer.
func (d Desired) Comment() string {
	why := d.Origin
	if d.Scenario != "" {
		why += ": " + d.Scenario
	}
	why = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, why)
	suffix := ""
	if !d.Expiry.IsZero() {
		suffix = " (until " + d.Expiry.UTC().Format(commentTime) + ")"
	}
	if room := maxComment - len(suffix); len(why) > room {
		why = truncate(why, room-3) + "..."
	}
	return why + suffix
}

const commentTime = "2006-01-02T15:04Z"

var untilRE = regexp.MustCompile(`\(until (\d{4}-\d\d-\d\dT\d\d:\d\dZ)\)$`)

// commentExpiry reads the expiry a comment written by Comment carries.
func commentExpiry(comment string) (time.Time, bool) {
	m := untilRE.FindStringSubmatch(comment)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.Parse(commentTime, m[1])
	if err != nil {
		return time.Time{}, false
	}
	// The comment rounds down to the minute; the decision ends within it.
	return t.Add(time.Minute), true
}

func truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	// Do not cut a UTF-8 sequence in half.
	for n > 0 && s[n]&0xc0 == 0x80 {
		n--
	}
	return s[:n]
}

// ItemIP is the form edgesync sends a prefix in: an IPv4 /32 as a plain
// address, everything else as a CIDR.
func ItemIP(p netip.Prefix) string {
	if p.Addr().Is4() && p.Bits() == 32 {
		return p.Addr().String()
	}
	return p.String()
}

// ParseItemIP reads an item's ip as Cloudflare returns it.
func ParseItemIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Plan is what a sync changes in the list.
type Plan struct {
	// Add are the items to append, ordered by prefix.
	Add []cloudflare.NewItem
	// Delete are the items to remove, in list order.
	Delete []cloudflare.Item
	// Current is the number of items the list holds.
	Current int
	// Keep is the number of items left as they are.
	Keep int
	// Stale, Duplicate and Invalid break Delete down: items no longer
	// wanted, second items for a prefix already listed, and items whose ip
	// does not parse.
	Stale, Duplicate, Invalid int
	// Expired is the part of Stale whose comment says its decision has run
	// out; the delete guard does not count them.
	Expired int
}

// Changes reports whether the plan writes anything.
func (p Plan) Changes() bool { return len(p.Add) > 0 || len(p.Delete) > 0 }

// MakePlan compares the desired prefixes with the list's items. It is a
// pure function: the same input gives the same plan. An item is kept when
// its ip is a desired prefix, whatever its comment says, so an unchanged
// ban is never sent again.
func MakePlan(desired []Desired, current []cloudflare.Item, now time.Time) Plan {
	want := make(map[netip.Prefix]Desired, len(desired))
	for _, d := range desired {
		want[d.Prefix] = d
	}
	p := Plan{Current: len(current)}
	have := make(map[netip.Prefix]bool, len(current))
	for _, it := range current {
		pfx, err := ParseItemIP(it.IP)
		switch {
		case err != nil:
			p.Invalid++
			p.Delete = append(p.Delete, it)
		case have[pfx]:
			p.Duplicate++
			p.Delete = append(p.Delete, it)
		case func() bool { _, ok := want[pfx]; return ok }():
			have[pfx] = true
			p.Keep++
		default:
			have[pfx] = true
			p.Stale++
			if exp, ok := commentExpiry(it.Comment); ok && !exp.After(now) {
				p.Expired++
			}
			p.Delete = append(p.Delete, it)
		}
	}
	for _, d := range desired {
		if !have[d.Prefix] {
			have[d.Prefix] = true
			p.Add = append(p.Add, cloudflare.NewItem{IP: ItemIP(d.Prefix), Comment: d.Comment()})
		}
	}
	slices.SortFunc(p.Add, func(a, b cloudflare.NewItem) int { return cmp.Compare(a.IP, b.IP) })
	return p
}

// Guard returns an error wrapping ErrDeleteGuard when the plan would
// remove more than ratio of the list's items, or all of them. Items whose
// comment says their decision expired, duplicates and unparsable items do
// not count: their removal is expected. What is left is the signature of a
// LAPI answering less than it holds.
func (p Plan) Guard(ratio float64) error {
	unexplained := p.Stale - p.Expired
	if unexplained <= 0 {
		return nil
	}
	valid := p.Current - p.Invalid - p.Duplicate
	if unexplained >= valid {
		return fmt.Errorf("%w: the sync would remove all %d items of the list; run with --force if that is intended",
			ErrDeleteGuard, valid)
	}
	if float64(unexplained) > ratio*float64(valid) {
		return fmt.Errorf("%w: the sync would remove %d of %d items (more than max_delete_ratio %.2f); run with --force if that is intended",
			ErrDeleteGuard, unexplained, valid, ratio)
	}
	return nil
}
