package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// relayStageOrder is the order of the gateway's relay stages
// (unigate_relay_stage_seconds, netpoll.RelayStages).
var relayStageOrder = []string{"inbox", "store", "appended", "handoff", "write", "total"}

// RelayStage is the gateway's unigate_relay_stage_seconds histogram of
// one stage over a phase (the change of its buckets between two scrapes):
// the relayed chat messages it counted, their mean and percentiles
// estimated from the buckets (linear within a bucket; a percentile in the
// +Inf bucket is reported as the largest finite bound).
type RelayStage struct {
	Stage  string  `json:"stage"`
	Count  float64 `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
}

// relayStages returns the stages of unigate_relay_stage_seconds in the
// change from before to after (scrapes of the gateway's metrics), in
// stage order; nil when the gateway has no such metric.
func relayStages(before, after map[string]float64) []RelayStage {
	const bucket = `unigate_relay_stage_seconds_bucket{stage="`
	type bound struct{ le, cum float64 }
	buckets := map[string][]bound{}
	for k, v := range after {
		if !strings.HasPrefix(k, bucket) {
			continue
		}
		rest := k[len(bucket):]
		q := strings.IndexByte(rest, '"')
		if q < 0 {
			continue
		}
		stage := rest[:q]
		i := strings.Index(rest, `le="`)
		if i < 0 {
			continue
		}
		leStr := strings.TrimSuffix(strings.TrimSuffix(rest[i+4:], "}"), `"`)
		le := math.Inf(1)
		if leStr != "+Inf" {
			f, err := strconv.ParseFloat(leStr, 64)
			if err != nil {
				continue
			}
			le = f
		}
		buckets[stage] = append(buckets[stage], bound{le, v - before[k]})
	}
	var out []RelayStage
	for _, stage := range relayStageOrder {
		bs := buckets[stage]
		if len(bs) == 0 {
			continue
		}
		slices.SortFunc(bs, func(a, b bound) int {
			switch {
			case a.le < b.le:
				return -1
			case a.le > b.le:
				return 1
			}
			return 0
		})
		name := `{stage="` + stage + `"}`
		rs := RelayStage{Stage: stage, Count: after["unigate_relay_stage_seconds_count"+name] - before["unigate_relay_stage_seconds_count"+name]}
		if rs.Count > 0 {
			rs.MeanMs = (after["unigate_relay_stage_seconds_sum"+name] - before["unigate_relay_stage_seconds_sum"+name]) / rs.Count * 1e3
		}
		quantile := func(q float64) float64 {
			if rs.Count <= 0 {
				return 0
			}
			want := q * rs.Count
			prevLe, prevCum, lastFinite := 0.0, 0.0, 0.0
			for _, b := range bs {
				if math.IsInf(b.le, 1) {
					break
				}
				lastFinite = b.le
				if b.cum >= want {
					if b.cum == prevCum {
						return b.le * 1e3
					}
					return (prevLe + (b.le-prevLe)*(want-prevCum)/(b.cum-prevCum)) * 1e3
				}
				prevLe, prevCum = b.le, b.cum
			}
			return lastFinite * 1e3
		}
		rs.P50Ms, rs.P90Ms, rs.P99Ms = quantile(0.50), quantile(0.90), quantile(0.99)
		out = append(out, rs)
	}
	return out
}

// writeRelayStages prints the stages of a phase, one line.
func writeRelayStages(w io.Writer, indent string, st []RelayStage) {
	if len(st) == 0 {
		return
	}
	fmt.Fprintf(w, "%sgateway relay stages (mean / p50 / p99 ms, from its histograms; %0.f messages):", indent, st[len(st)-1].Count)
	for _, s := range st {
		fmt.Fprintf(w, " %s %.3g/%.3g/%.3g", s.Stage, s.MeanMs, s.P50Ms, s.P99Ms)
	}
	fmt.Fprintln(w)
}
