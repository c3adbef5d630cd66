package cloudflare

import (
	"context"
	"fmt"
	"time"
)

// PollPolicy paces the polling of a bulk operation.
type PollPolicy struct {
	// First is the wait before the first poll: an operation is never done
	// the moment it is accepted, and every poll costs a request.
	First time.Duration
	// Max caps the wait between polls, which doubles from First.
	Max time.Duration
	// Timeout gives up on an operation that does not finish.
	Timeout time.Duration
	// Sleep waits d or until ctx ends; nil means a timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultPollPolicy is used for the zero PollPolicy fields.
var DefaultPollPolicy = PollPolicy{
	First:   250 * time.Millisecond,
	Max:     5 * time.Second,
	Timeout: 5 * time.Minute,
}

func (p PollPolicy) withDefaults() PollPolicy {
	d := DefaultPollPolicy
	if p.First > 0 {
		d.First = p.First
	}
	if p.Max > 0 {
		d.Max = p.Max
	}
	if p.Timeout > 0 {
		d.Timeout = p.Timeout
	}
	d.Sleep = p.Sleep
	if d.Sleep == nil {
		d.Sleep = sleepCtx
	}
	return d
}

// WaitOperation polls a bulk operation until it completes or fails. A
// failed operation is returned as *OperationError carrying Cloudflare's
// message; polls is the number of status reads it took.
func WaitOperation(ctx context.Context, c BulkOperations, id string, p PollPolicy) (op Operation, polls int, err error) {
	p = p.withDefaults()
	deadline := time.Now().Add(p.Timeout)
	wait := p.First
	for {
		if err := p.Sleep(ctx, wait); err != nil {
			return op, polls, fmt.Errorf("wait for bulk operation %s: %w", id, err)
		}
		op, err = c.BulkOperation(ctx, id)
		polls++
		if err != nil {
			return op, polls, fmt.Errorf("wait for bulk operation %s: %w", id, err)
		}
		switch op.Status {
		case OperationCompleted:
			return op, polls, nil
		case OperationFailed:
			msg := op.Error
			if msg == "" {
				msg = "no reason given"
			}
			return op, polls, &OperationError{OperationID: id, Message: msg}
		case OperationPending, OperationRunning:
		default:
			return op, polls, fmt.Errorf("bulk operation %s: unknown status %q", id, op.Status)
		}
		if time.Now().After(deadline) {
			return op, polls, fmt.Errorf("bulk operation %s still %s after %s", id, op.Status, p.Timeout)
		}
		wait = min(wait*2, p.Max)
	}
}
