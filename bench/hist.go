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
	recorded  int64 // calls of record, counted with the value so a snapshot sees both
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
	l.recorded++
	l.mu.Unlock()
}

// snapshot exports the histogram for the coordinator.
func (l *latencyHist) snapshot() histSnapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return histSnapshot{Snapshot: l.h.Export(), Saturated: l.saturated, Recorded: l.recorded}
}

// histSnapshot is a histogram on the wire between worker and coordinator.
type histSnapshot struct {
	Snapshot  *hdrhistogram.Snapshot `json:"hdr"`
	Saturated int64                  `json:"saturated"`
	// Recorded is the number of record calls the snapshot holds: the
	// histogram's count must equal it.
	Recorded int64 `json:"recorded"`
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
	// Curve is the percentile curve of the histogram (for plots).
	Curve []PercentilePoint `json:"curve,omitempty"`
}

// PercentilePoint is one point of a percentile curve: Percentile % of the
// values are at most Ms milliseconds.
type PercentilePoint struct {
	Percentile float64 `json:"p"`
	Ms         float64 `json:"ms"`
}

// curvePercentiles are the points of a percentile curve, denser towards
// the tail.
var curvePercentiles = []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 98, 99,
	99.25, 99.5, 99.75, 99.9, 99.925, 99.95, 99.975, 99.99, 99.995, 99.999, 99.9999, 100}

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
		Curve:     curve(h),
	}
}

// curve returns the percentile curve of h, up to the first percentile
// that reaches the maximum.
func curve(h *hdrhistogram.Histogram) []PercentilePoint {
	var out []PercentilePoint
	top := h.Max()
	for _, p := range curvePercentiles {
		v := h.ValueAtQuantile(p)
		if p == 0 {
			v = h.Min()
		}
		if p == 100 || h.ValuesAreEquivalent(v, top) {
			v = top
		}
		out = append(out, PercentilePoint{Percentile: p, Ms: float64(v) / 1000})
		if v == top {
			break
		}
	}
	return out
}

// sparseHist is a histogram on the wire as (value, count) pairs of its
// non-empty buckets: small when few values were recorded.
type sparseHist [][2]int64

// sparse returns the non-empty buckets of h.
func sparse(h *hdrhistogram.Histogram) sparseHist {
	var out sparseHist
	if h.TotalCount() == 0 {
		return nil
	}
	for _, b := range h.Distribution() {
		if b.Count > 0 {
			out = append(out, [2]int64{b.From, b.Count})
		}
	}
	return out
}

// addTo records the values of s into h.
func (s sparseHist) addTo(h *hdrhistogram.Histogram) {
	for _, b := range s {
		_ = h.RecordValues(b[0], b[1])
	}
}

// takeSparse returns the values recorded since the last call and resets
// the histogram.
func (l *latencyHist) takeSparse() sparseHist {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := sparse(l.h)
	l.h.Reset()
	return s
}
