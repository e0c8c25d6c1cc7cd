package bench

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1µs to histMax, with three
// significant digits. Larger values are clamped to histMax and counted as
// saturated.
const (
	histMin     = 1
	histMax     = int64(60 * time.Second / time.Microsecond)
	histSigFigs = 3
)

// latencyHist is an HDR histogram safe for concurrent use.
type latencyHist struct {
	mu        sync.Mutex
	h         *hdrhistogram.Histogram
	saturated int64
}

func newLatencyHist() *latencyHist {
	return &latencyHist{h: hdrhistogram.New(histMin, histMax, histSigFigs)}
}

// record adds one latency; negative values (a clock that cannot go
// backwards, so a bug) are recorded as 0.
func (l *latencyHist) record(d time.Duration) {
	us := max(int64(d/time.Microsecond), histMin)
	l.mu.Lock()
	if us > histMax {
		us = histMax
		l.saturated++
	}
	_ = l.h.RecordValue(us)
	l.mu.Unlock()
}

// snapshot exports the histogram for the coordinator.
func (l *latencyHist) snapshot() histSnapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return histSnapshot{Snapshot: l.h.Export(), Saturated: l.saturated}
}

// histSnapshot is a histogram on the wire between worker and coordinator.
type histSnapshot struct {
	Snapshot  *hdrhistogram.Snapshot `json:"hdr"`
	Saturated int64                  `json:"saturated"`
}

// mergeHists merges worker snapshots into one histogram.
func mergeHists(snaps []histSnapshot) (*hdrhistogram.Histogram, int64) {
	h := hdrhistogram.New(histMin, histMax, histSigFigs)
	var sat int64
	for _, s := range snaps {
		if s.Snapshot == nil {
			continue
		}
		h.Merge(hdrhistogram.Import(s.Snapshot))
		sat += s.Saturated
	}
	return h, sat
}

// Latency summarizes a latency distribution, in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
	// Saturated counts values above 60s, recorded as 60s.
	Saturated int64 `json:"saturated,omitempty"`
}

func summarize(h *hdrhistogram.Histogram, saturated int64) Latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	if h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Count:     h.TotalCount(),
		Mean:      h.Mean() / 1000,
		P50:       ms(h.ValueAtQuantile(50)),
		P90:       ms(h.ValueAtQuantile(90)),
		P99:       ms(h.ValueAtQuantile(99)),
		P999:      ms(h.ValueAtQuantile(99.9)),
		Max:       ms(h.Max()),
		Saturated: saturated,
	}
}
