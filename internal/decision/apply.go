package decision

import (
	"errors"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// Apply folds one pull of the LAPI decision stream into the store. With
// startup, added is the complete set of active decisions and replaces the
// store's content (deleted is ignored). Otherwise the deleted decisions are
// removed first, by ID alone so that even a malformed delete removes what
// it names, and the added ones are added.
//
// now is when the answer arrived: the durations LAPI sends are relative to
// it. Every added decision that Parse skips is passed to onSkip (which may
// be nil), for logs and counters; nothing else is done with it.
func (s *Store) Apply(startup bool, added, deleted []*models.Decision, now time.Time, opt ParseOptions, onSkip func(*SkipError)) {
	parse := func(d *models.Decision) (Decision, bool) {
		p, err := Parse(d, now, opt)
		if err != nil {
			var se *SkipError
			if onSkip != nil && errors.As(err, &se) {
				onSkip(se)
			}
			return Decision{}, false
		}
		return p, true
	}
	if startup {
		buf := s.parsed[:0]
		for _, d := range added {
			if p, ok := parse(d); ok {
				buf = append(buf, p)
			}
		}
		s.Replace(buf)
		clear(buf) // drop the strings the parsed decisions hold
		s.parsed = buf[:0]
		return
	}
	for _, d := range deleted {
		if d != nil {
			s.DeleteID(d.ID)
		}
	}
	for _, d := range added {
		if p, ok := parse(d); ok {
			s.Add(p)
		}
	}
}
