package decision

import (
	"encoding/binary"
	"iter"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// Set holds the complete decision set of a LAPI startup pull packed into
// a few large buffers, as the answer is decoded: about 35 bytes a
// decision, in place of the ~500 bytes and nine allocations of a
// *models.Decision, and nothing for the garbage collector to scan. A
// startup set of 100k decisions is 3-4 MB instead of 50.
//
// A Set keeps what Parse reads (the ID, value, scope, type, origin and
// duration, and which of them LAPI sent), not the scenario nor the UUID.
// Nothing is validated when a decision is added: Decisions parses them,
// with the options and the clock of the consumer, exactly as Parse would.
//
// The zero Set is empty and ready to use. A Set is not safe for
// concurrent use.
type Set struct {
	chunks  [][]byte
	n       int
	strs    Names // scopes, types and origins
	scratch []byte
}

// setChunk is the size of a buffer of a Set: large enough that the
// buffers of 100k decisions are a few dozen allocations, small enough
// that the last one wastes little.
const setChunk = 64 << 10

// Flags of a packed decision: which fields LAPI sent.
const (
	setNil = 1 << iota // the decision itself was null
	setValue
	setScope
	setType
	setOrigin
	setDuration
)

// Len returns the number of decisions added.
func (s *Set) Len() int { return s.n }

// Add appends a decision as LAPI sent it; nil is kept too (Decisions
// reports it as Parse does). d is not retained.
func (s *Set) Add(d *models.Decision) {
	b := s.scratch[:0]
	if d == nil {
		b = append(b, setNil)
	} else {
		var flags byte
		if d.Value != nil {
			flags |= setValue
		}
		if d.Scope != nil {
			flags |= setScope
		}
		if d.Type != nil {
			flags |= setType
		}
		if d.Origin != nil {
			flags |= setOrigin
		}
		if d.Duration != nil {
			flags |= setDuration
		}
		b = append(b, flags)
		b = binary.AppendVarint(b, d.ID)
		for _, p := range [...]*string{d.Scope, d.Type, d.Origin} {
			if p != nil {
				b = binary.AppendUvarint(b, uint64(s.strs.ID(*p)))
			}
		}
		for _, p := range [...]*string{d.Value, d.Duration} {
			if p != nil {
				b = binary.AppendUvarint(b, uint64(len(*p)))
				b = append(b, *p...)
			}
		}
	}
	s.scratch = b

	last := len(s.chunks) - 1
	if last < 0 || len(s.chunks[last])+len(b) > cap(s.chunks[last]) {
		s.chunks = append(s.chunks, make([]byte, 0, max(setChunk, len(b))))
		last++
	}
	s.chunks[last] = append(s.chunks[last], b...)
	s.n++
}

// Decisions parses the decisions of the set in the order they were added,
// as Parse does with now and opt: it yields each decision with a nil
// error, or a zero Decision and the *SkipError of a decision Parse
// rejects.
func (s *Set) Decisions(now time.Time, opt ParseOptions) iter.Seq2[Decision, error] {
	return func(yield func(Decision, error) bool) {
		// One decision and its two strings are reused for every element:
		// Parse keeps neither the decision nor its pointers.
		var d models.Decision
		var value, duration string
		for _, c := range s.chunks {
			for len(c) > 0 {
				var isNil bool
				isNil, c = s.unpack(c, &d, &value, &duration)
				var p Decision
				var err error
				if isNil {
					p, err = Parse(nil, now, opt)
				} else {
					p, err = Parse(&d, now, opt)
				}
				if !yield(p, err) {
					return
				}
			}
		}
	}
}

// unpack reads the decision at the start of b into d, its value and
// duration into the strings given, reports whether it was null, and
// returns the rest of b. b was written by Add, so it is well formed.
func (s *Set) unpack(b []byte, d *models.Decision, value, duration *string) (isNil bool, rest []byte) {
	*d = models.Decision{}
	flags := b[0]
	b = b[1:]
	if flags&setNil != 0 {
		return true, b
	}
	id, n := binary.Varint(b)
	b = b[n:]
	d.ID = id
	interned := func() *string {
		i, n := binary.Uvarint(b)
		b = b[n:]
		return &s.strs.list[i]
	}
	str := func(v *string) *string {
		l, n := binary.Uvarint(b)
		*v = string(b[n : n+int(l)])
		b = b[n+int(l):]
		return v
	}
	if flags&setScope != 0 {
		d.Scope = interned()
	}
	if flags&setType != 0 {
		d.Type = interned()
	}
	if flags&setOrigin != 0 {
		d.Origin = interned()
	}
	if flags&setValue != 0 {
		d.Value = str(value)
	}
	if flags&setDuration != 0 {
		d.Duration = str(duration)
	}
	return false, b
}
