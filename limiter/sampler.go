package limiter

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// LogEvery is the least time between two log lines of one Sampler.
const LogEvery = 10 * time.Second

// Sampler turns a stream of events into at most one log line per LogEvery,
// carrying the number of events since the previous line. The zero Sampler
// is ready; it is safe for concurrent use and never blocks the caller: the
// line is written by a short-lived goroutine. An event that is not logged
// costs two atomic operations and no allocation.
type Sampler struct {
	last    atomic.Int64 // Now() of the last line; 0 = never
	pending atomic.Int64
}

// Note records one event; when the previous line is older than LogEvery
// (or there was none) it logs msg at warn level with args and the count.
func (s *Sampler) Note(l *slog.Logger, msg string, args ...any) {
	s.pending.Add(1)
	now := Now()
	last := s.last.Load()
	if last != 0 && now-last < int64(LogEvery) {
		return
	}
	if !s.last.CompareAndSwap(last, max(now, 1)) {
		return
	}
	n := s.pending.Swap(0)
	if l == nil {
		return
	}
	// A copy, so that args itself does not escape: the callers' argument
	// slices (and the strings boxed in them) stay on their stacks, and the
	// events that are not logged, nearly all of them, allocate nothing.
	line := make([]any, 0, len(args)+4)
	line = append(line, args...)
	line = append(line, "count", n, "since_last_line", LogEvery.String())
	go l.Warn(msg, line...)
}
