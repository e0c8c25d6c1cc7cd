package bench

import (
	"math"
	"strings"
	"testing"
)

func TestRelayStages(t *testing.T) {
	before, err := parseMetrics(strings.NewReader(`unigate_relay_stage_seconds_bucket{stage="inbox",le="0.001"} 10
unigate_relay_stage_seconds_bucket{stage="inbox",le="0.002"} 10
unigate_relay_stage_seconds_bucket{stage="inbox",le="+Inf"} 10
unigate_relay_stage_seconds_sum{stage="inbox"} 0.005
unigate_relay_stage_seconds_count{stage="inbox"} 10
`), "unigate_")
	if err != nil {
		t.Fatal(err)
	}
	// 100 more: 50 up to 1 ms, 49 in (1 ms, 2 ms], 1 over 2 ms.
	after, err := parseMetrics(strings.NewReader(`unigate_relay_stage_seconds_bucket{stage="inbox",le="0.001"} 60
unigate_relay_stage_seconds_bucket{stage="inbox",le="0.002"} 109
unigate_relay_stage_seconds_bucket{stage="inbox",le="+Inf"} 110
unigate_relay_stage_seconds_sum{stage="inbox"} 0.155
unigate_relay_stage_seconds_count{stage="inbox"} 110
unigate_other_total 3
`), "unigate_")
	if err != nil {
		t.Fatal(err)
	}
	st := relayStages(before, after)
	if len(st) != 1 || st[0].Stage != "inbox" {
		t.Fatalf("stages %+v, want inbox only", st)
	}
	s := st[0]
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if s.Count != 100 || !near(s.MeanMs, 1.5) || !near(s.P50Ms, 1) || !near(s.P90Ms, 1+40.0/49) || !near(s.P99Ms, 2) {
		t.Fatalf("got %+v", s)
	}
	if relayStages(before, before)[0].Count != 0 {
		t.Fatal("no change must count 0")
	}
	if relayStages(nil, map[string]float64{"unigate_x": 1}) != nil {
		t.Fatal("no relay metric must give nil")
	}
}
