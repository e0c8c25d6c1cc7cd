package limiter

import (
	"math"
	"time"
)

// epoch anchors Now on the monotonic clock, so wall-clock jumps never
// refill or drain a bucket.
var epoch = time.Now()

// Now returns the monotonic time in nanoseconds that Bucket.Allow expects.
// Call it once per batch of checks (one read of the socket), not per event.
func Now() int64 { return int64(time.Since(epoch)) }

// Rate is the parameters of a token bucket: a refill rate and a burst. The
// zero Rate is unlimited.
type Rate struct {
	interval float64 // nanoseconds per token; 0 = unlimited
	limit    int64   // burst × interval, nanoseconds
}

// NewRate returns a rate of perSecond tokens per second with a bucket of
// burst tokens (at least 1). perSecond <= 0 means unlimited.
func NewRate(perSecond float64, burst int) Rate {
	if perSecond <= 0 || math.IsNaN(perSecond) || math.IsInf(perSecond, 0) {
		return Rate{}
	}
	burst = max(burst, 1)
	iv := float64(time.Second) / perSecond
	lim := float64(burst) * iv
	if lim > math.MaxInt64/4 {
		lim = math.MaxInt64 / 4
	}
	return Rate{interval: iv, limit: int64(lim)}
}

// Unlimited reports whether r never refuses.
func (r Rate) Unlimited() bool { return r.interval == 0 }

// Bucket is a token bucket in one word, in the GCRA form: it stores the
// theoretical arrival time of the next token instead of a token count, so
// refilling needs no timer and no division. The zero Bucket is full. It is
// not safe for concurrent use; the owner passes the Rate at each call, so a
// reload changes every bucket at once.
type Bucket struct{ tat int64 }

// Allow takes n tokens at time now (from Now) if the bucket holds them. On
// refusal it takes nothing and returns how long until n tokens are there
// (n larger than the burst never fits; the wait returned is then the time to
// refill the whole bucket).
func (b *Bucket) Allow(r Rate, now int64, n int) (ok bool, retryAfter time.Duration) {
	if r.interval == 0 {
		return true, 0
	}
	tat := max(b.tat, now)
	next := tat + int64(float64(n)*r.interval)
	if over := next - now - r.limit; over > 0 {
		return false, time.Duration(min(over, r.limit))
	}
	b.tat = next
	return true, 0
}

// full reports whether the bucket has refilled completely: such a bucket
// carries no state and its key can be forgotten.
func (b Bucket) full(now int64) bool { return b.tat <= now }
