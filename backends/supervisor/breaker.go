package supervisor

import (
	"sync"
	"time"
)

// Breaker states, as exported in unigate_backend_breaker_state.
const (
	stateClosed   = 0
	stateOpen     = 1
	stateHalfOpen = 2
)

// breaker is a consecutive-failure circuit breaker with an injected clock.
type breaker struct {
	threshold int
	coolDown  time.Duration
	now       func() time.Time

	mu       sync.Mutex
	state    int
	failures int
	openedAt time.Time
	trial    bool // a half-open trial call is in flight
}

// allow reports whether a call may go ahead; a true result must be
// followed by exactly one done.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateClosed:
		return true
	case stateOpen:
		if b.now().Sub(b.openedAt) < b.coolDown {
			return false
		}
		b.state = stateHalfOpen
		b.trial = true
		return true
	default: // half-open: one trial at a time
		if b.trial {
			return false
		}
		b.trial = true
		return true
	}
}

// done records a call's outcome. Calls that did not count (the caller's own
// cancellation) pass ok=true, counted=false.
func (b *breaker) done(ok, counted bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateHalfOpen {
		b.trial = false
	}
	if !counted {
		return
	}
	if ok {
		b.failures = 0
		b.state = stateClosed
		return
	}
	b.failures++
	if b.state == stateHalfOpen || b.failures >= b.threshold {
		b.state = stateOpen
		b.openedAt = b.now()
	}
}

func (b *breaker) current() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateOpen && b.now().Sub(b.openedAt) >= b.coolDown {
		return stateHalfOpen
	}
	return b.state
}
