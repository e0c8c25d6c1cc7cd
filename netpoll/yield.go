package netpoll

import (
	"context"
	"runtime"
	"time"
)

// An event loop that never runs out of events never returns to gnet's
// epoll_wait with nothing to do, which is where it lets other goroutines
// have its P (runtime.Gosched) and where it writes the frames queued by
// the handler's workers (its task queue runs after each batch of up to
// 1024 events). During a connection storm each event is a handshake
// (upgrade, hello) or a refusal, a batch lasts tens of milliseconds, and
// the established connections' messages wait for it twice: the worker
// that relays a message needs a P (with one P, the Go scheduler's 10 ms
// preemption is all it gets), and its delivery is written after the
// batch. So the loop takes a break of its own: once it has run callbacks
// back to back for loopSlice, it yields its P (the workers run and queue
// their frames) and then writes every queued frame of the loop at once.
const (
	// loopSlice is how long a loop runs callbacks back to back before it
	// yields.
	loopSlice = 500 * time.Microsecond
	// loopIdleGap: a callback that starts this long after the previous
	// one ended starts a new stretch (the loop was idle or in epoll_wait).
	loopIdleGap = 20 * time.Microsecond
)

// enter is called on the loop at the start of a callback, at now
// (Nanotime): it yields and writes the queued frames when the loop has
// been busy for loopSlice.
func (l *loopFlusher) enter(s *Server, now int64) {
	if now-l.lastExit > int64(loopIdleGap) {
		l.busyFrom = now
		return
	}
	if now-l.busyFrom < int64(loopSlice) {
		return
	}
	runtime.Gosched()
	_ = l.Run(context.Background())
	s.metrics.loopYields.Inc()
	l.busyFrom = Nanotime()
}

// exit is called on the loop at the end of a callback.
func (l *loopFlusher) exit() { l.lastExit = Nanotime() }
