package cloudflare

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// RetryPolicy decides how a failed call is tried again. The SDK's own
// retries are switched off (option.WithMaxRetries(0)): they would wait on a
// Retry-After of any length without telling anyone, retry writes behind the
// caller's back and hide how many requests a sync really costs. This policy
// replaces them, one level up, where every retry is logged.
//
//   - 429: wait as Retry-After says (seconds or an HTTP date); without the
//     header, back off as for 5xx. A Retry-After longer than MaxRetryAfter
//     ends the call with an error wrapping ErrRateLimited: a CronJob run is
//     better failed and retried by the next run than parked for an hour.
//   - 5xx and network errors: exponential backoff from MinBackoff doubling
//     up to MaxBackoff, with jitter of up to a quarter.
//   - anything else (4xx): not retried.
//
// Writes are retried too. Adding an item already in the list and deleting
// an item already gone leave the list as intended, and Cloudflare answers a
// write made while the first attempt's bulk operation still runs with 429,
// which is waited out like any other.
type RetryPolicy struct {
	// MaxAttempts is the number of tries per call, the first included.
	MaxAttempts int
	// MinBackoff is the first backoff delay.
	MinBackoff time.Duration
	// MaxBackoff caps the backoff delay.
	MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After the client waits out.
	MaxRetryAfter time.Duration
	// Sleep waits d or until ctx ends; nil means a timer. Tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultRetryPolicy is used for the zero RetryPolicy fields.
var DefaultRetryPolicy = RetryPolicy{
	MaxAttempts:   6,
	MinBackoff:    500 * time.Millisecond,
	MaxBackoff:    30 * time.Second,
	MaxRetryAfter: 2 * time.Minute,
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy
	if p.MaxAttempts > 0 {
		d.MaxAttempts = p.MaxAttempts
	}
	if p.MinBackoff > 0 {
		d.MinBackoff = p.MinBackoff
	}
	if p.MaxBackoff > 0 {
		d.MaxBackoff = p.MaxBackoff
	}
	if p.MaxRetryAfter > 0 {
		d.MaxRetryAfter = p.MaxRetryAfter
	}
	d.Sleep = p.Sleep
	if d.Sleep == nil {
		d.Sleep = sleepCtx
	}
	return d
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// backoff is the delay before try attempt+1 after a 5xx or network error.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.MinBackoff << min(attempt-1, 20)
	if d > p.MaxBackoff || d <= 0 {
		d = p.MaxBackoff
	}
	if q := int64(d / 4); q > 0 {
		d -= time.Duration(rand.Int64N(q))
	}
	return d
}

// decide returns whether to try again after err on the attempt-th try, and
// how long to wait first.
func (p RetryPolicy) decide(err error, attempt int) (time.Duration, bool) {
	if attempt >= p.MaxAttempts {
		return 0, false
	}
	var apiErr *APIError
	switch {
	case errors.As(err, &apiErr):
		switch {
		case apiErr.StatusCode == http.StatusTooManyRequests:
			if apiErr.RetryAfter > p.MaxRetryAfter {
				return 0, false // APIError.Is matches ErrRateLimited
			}
			if apiErr.RetryAfter > 0 {
				return apiErr.RetryAfter, true
			}
			return p.backoff(attempt), true
		case apiErr.StatusCode >= 500:
			return p.backoff(attempt), true
		}
		return 0, false
	case isNetworkError(err):
		return p.backoff(attempt), true
	}
	return 0, false
}

func isNetworkError(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ue *url.Error
	return errors.As(err, &ue)
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}
