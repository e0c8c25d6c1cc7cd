package bench

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// summable is a scenario's progress (chatProgress, echoProgress, ...): a
// struct of counters that add sums field by field.
type summable[P any] interface {
	*P
	add(P)
}

// liveProgress keeps the latest progress each worker process reported,
// sums it on demand, and collects the latencies of the processes' interval
// histograms until takeInterval. Its methods are safe for concurrent use
// (the coordinator's worker events, the progress line, the scenario).
type liveProgress[P any, PP summable[P]] struct {
	mu   sync.Mutex
	last []P
	ivl  *hdrhistogram.Histogram // created by the first interval
}

func newLiveProgress[P any, PP summable[P]](procs int) *liveProgress[P, PP] {
	return &liveProgress[P, PP]{last: make([]P, procs)}
}

// set records process idx's progress p, and the latencies of its
// interval (taken out of p, so that p holds counters only).
func (l *liveProgress[P, PP]) set(idx int, p P, interval sparseHist) {
	l.mu.Lock()
	if len(interval) > 0 {
		if l.ivl == nil {
			l.ivl = hdrhistogram.New(histMin, histMax, histSigFigs)
		}
		interval.addTo(l.ivl)
	}
	l.last[idx] = p
	l.mu.Unlock()
}

// sum returns the processes' progress summed; fields that are not
// counters (a phase) are process 0's.
func (l *liveProgress[P, PP]) sum() P {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.last[0]
	for _, p := range l.last[1:] {
		PP(&s).add(p)
	}
	return s
}

// takeInterval returns the number and the p50 and p99 (milliseconds) of
// the latencies collected since the last call, and starts afresh.
func (l *liveProgress[P, PP]) takeInterval() (n int64, p50, p99 float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ivl == nil {
		return 0, 0, 0
	}
	n = l.ivl.TotalCount()
	if n > 0 {
		p50, p99 = float64(l.ivl.ValueAtQuantile(50))/1000, float64(l.ivl.ValueAtQuantile(99))/1000
	}
	l.ivl.Reset()
	return n, p50, p99
}

// everySecond calls report once a second on a goroutine of its own (a
// worker's progress reports; the worker's own loop may block) until the
// returned stop, which waits for a report in progress.
func everySecond(report func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}
