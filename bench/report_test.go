package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

func TestCompare(t *testing.T) {
	a := `{"scenario":"chat","offered_msgs_per_s":1000,"delivered_msgs_per_s":1100,"v2a_delivered_per_s":1000,
		"v2a_latency":{"p50_ms":2,"p90_ms":4,"p99_ms":10,"p99_9_ms":20,"max_ms":40},"server_cpu_cores":0}`
	b := `{"scenario":"chat","offered_msgs_per_s":2000,"delivered_msgs_per_s":2200,"v2a_delivered_per_s":2000,
		"v2a_latency":{"p50_ms":1,"p90_ms":4,"p99_ms":30,"p99_9_ms":20,"max_ms":40},"server_cpu_cores":0}`
	scenario, rs, err := Compare([]byte(a), []byte(b))
	if err != nil || scenario != "chat" {
		t.Fatalf("Compare: %q, %v", scenario, err)
	}
	got := map[string]Ratio{}
	for _, r := range rs {
		got[r.Figure] = r
	}
	for fig, want := range map[string]float64{
		"offered (msg/s)": 2, "delivered (msg/s)": 2, "v→a p50 (ms)": 0.5, "v→a p99 (ms)": 3, "v→a max (ms)": 1,
		"server CPU (cores)": 1, // 0/0
	} {
		if r, ok := got[fig]; !ok || r.Missing || math.Abs(r.Ratio-want) > 1e-12 {
			t.Errorf("%s: %+v, want ratio %v", fig, r, want)
		}
	}
	if r := got["a→v p50 (ms)"]; !r.Missing || !math.IsNaN(r.Ratio) {
		t.Errorf("a figure absent from both reports: %+v", r)
	}
	var sb strings.Builder
	WriteRatios(&sb, scenario, "a.json", "b.json", rs)
	out := sb.String()
	for _, want := range []string{"offered (msg/s)", "2.000× better", "0.500× better", "3.000× worse", "missing"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != len(rs)+2 {
		t.Errorf("%d lines for %d figures:\n%s", n, len(rs), out)
	}

	if _, _, err := Compare([]byte(a), []byte(`{"scenario":"idle"}`)); !errors.Is(err, ErrConfig) {
		t.Errorf("different scenarios: %v", err)
	}
	if _, _, err := Compare([]byte(`{"scenario":"x"}`), []byte(`{"scenario":"x"}`)); !errors.Is(err, ErrConfig) {
		t.Errorf("unknown scenario: %v", err)
	}
	if _, _, err := Compare([]byte(`{`), []byte(b)); !errors.Is(err, ErrConfig) {
		t.Errorf("bad JSON: %v", err)
	}
}

// TestCompareReports compares real report types: every figure of each
// scenario must exist in its report's JSON.
func TestCompareReports(t *testing.T) {
	for _, rep := range []any{sampleIdle(), sampleChat(), &StormReport{Scenario: "storm"}, &SweepReport{Scenario: "sweep"}, sampleFanout()} {
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		scenario, rs, err := Compare(b, b)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Missing || r.Ratio != 1 {
				t.Errorf("%s: figure %q: %+v", scenario, r.Figure, r)
			}
		}
	}
}

func latencyOf(vals ...time.Duration) Latency {
	h := hdrhistogram.New(histMin, histMax, histSigFigs)
	for _, v := range vals {
		_ = h.RecordValue(int64(v / time.Microsecond))
	}
	return summarize(h, 0)
}

func sampleIdle() *IdleReport {
	r := &IdleReport{Scenario: "idle", Started: time.Now(), Config: IdleConfig{Common: Common{URL: "ws://127.0.0.1:8080/ws",
		MetricsURL: "http://127.0.0.1:9090/metrics"}, Conns: 200}}
	r.Baseline = Sample{ServerRSSBytes: 10 << 20, ServerConns: -1, SlabBytes: 100 << 20}
	for i, n := range []int{100, 200} {
		r.Steps = append(r.Steps, IdleStep{Target: n, Sample: Sample{ClientConns: int64(n), ServerConns: -1,
			ServerRSSBytes: 10<<20 + int64(n)*2048 + int64(i)*100, SlabBytes: 100<<20 + int64(n)*10240}})
	}
	fitSlopes(r)
	r.ConnectLatency = latencyOf(time.Millisecond, 2*time.Millisecond, 30*time.Millisecond)
	r.Timeline = []IdlePoint{{At: 1, Live: 100}, {At: 2, Live: 200}}
	r.Notes = []string{"see https://example.com/notes <script src=x>"}
	return r
}

func sampleChat() *ChatReport {
	r := &ChatReport{Scenario: "chat", Started: time.Now(), Config: ChatConfig{Common: Common{URL: "ws://127.0.0.1:8080/ws"}, Rate: 1000}}
	r.V2A.Sent = 10
	r.Setup.Agents = 1
	r.V2ALatency = latencyOf(time.Millisecond, 2*time.Millisecond, 3*time.Millisecond, 90*time.Millisecond)
	r.A2VLatency = latencyOf(time.Millisecond)
	r.AckLatency = latencyOf(500 * time.Microsecond)
	for i := range 5 {
		r.Timeline = append(r.Timeline, ChatPoint{At: float64(i), Phase: "measure", Sent: 1000, V2A: 999, Count: 1000, P50: 1, P99: float64(i + 2)})
	}
	return r
}

// external finds what would make a browser fetch something: URLs inside
// tags (attributes), script and style-sheet references, CSS imports and
// url() values.
var externalRef = regexp.MustCompile(`(?i)<script[^>]*\ssrc|<link[\s>]|@import|url\(|<(img|iframe|object|embed|audio|video)[\s>]|<[^>]*\s(href|src|xlink:href)\s*=`)

// selfContainedProblems lists what in page references anything outside
// itself. http:// and https:// may appear only in visible text (outside
// tags).
func selfContainedProblems(page string) []string {
	var out []string
	if m := externalRef.FindString(page); m != "" {
		out = append(out, "external resource: "+m)
	}
	for _, scheme := range []string{"http://", "https://", "//"} {
		for i := 0; ; {
			j := strings.Index(page[i:], scheme)
			if j < 0 {
				break
			}
			pos := i + j
			// Inside a tag when the last '<' before it is after the last '>'.
			if lt, gt := strings.LastIndex(page[:pos], "<"), strings.LastIndex(page[:pos], ">"); lt > gt {
				out = append(out, scheme+" inside a tag: "+page[max(0, pos-60):min(len(page), pos+40)])
			}
			i = pos + len(scheme)
		}
	}
	return out
}

func TestHTMLSelfContained(t *testing.T) {
	for _, rep := range []Reporter{sampleIdle(), sampleChat(), sampleStorm(), sampleSweep(), sampleFanout()} {
		var b bytes.Buffer
		if err := RenderHTML(&b, rep); err != nil {
			t.Fatal(err)
		}
		page := b.String()
		for _, p := range selfContainedProblems(page) {
			t.Errorf("%s: %s", rep.title(), p)
		}
		if !strings.HasPrefix(page, "<!DOCTYPE html>") || !strings.Contains(page, "</html>") {
			t.Errorf("not a complete page")
		}
		if n := strings.Count(page, "<svg "); n < 1 {
			t.Errorf("%s: %d plots", rep.title(), n)
		}
		if strings.Count(page, "<polyline") < 1 {
			t.Errorf("%s: no line drawn", rep.title())
		}
		// The summary is escaped text.
		if strings.Contains(page, "<script src=x>") {
			t.Errorf("summary not escaped")
		}
	}
	// The checker itself catches references.
	for _, bad := range []string{`<img src="http://x/a.png">`, `<script src="a.js"></script>`, `<link rel=stylesheet href=x.css>`,
		`<a href="https://x">x</a>`, `<svg xmlns="http://www.w3.org/2000/svg">`} {
		if len(selfContainedProblems(bad)) == 0 {
			t.Errorf("checker accepted %q", bad)
		}
	}
	if p := selfContainedProblems(`<pre>see https://example.com</pre>`); len(p) != 0 {
		t.Errorf("checker refused a URL in text: %v", p)
	}
}

func TestHTMLCharts(t *testing.T) {
	page := string(sampleIdle().charts()[0].svg())
	if !strings.Contains(page, "Server RSS vs connections") || strings.Count(page, "<circle") < 3 {
		t.Errorf("RSS chart: %s", page)
	}
	c := curveChart("curve", namedLatency{"x", latencyOf(time.Millisecond, 100*time.Millisecond)})
	if len(c.series[0].x) == 0 || c.series[0].y[len(c.series[0].y)-1] < 99 {
		t.Errorf("curve: %+v", c.series)
	}
	if len(c.xTicks) == 0 || c.xTicks[len(c.xTicks)-1].label == "99.999%" {
		t.Errorf("curve ticks beyond the data: %+v", c.xTicks)
	}
	// An empty chart is skipped, a chart with NaN values renders.
	empty := chart{title: "e", series: []series{{name: "n"}}}
	if !empty.empty() {
		t.Error("empty chart not empty")
	}
	nan := chart{title: "n", series: []series{{name: "n", x: []float64{0, 1}, y: []float64{math.NaN(), 1}}}}
	if s := string(nan.svg()); strings.Contains(s, "NaN") {
		t.Errorf("NaN in the SVG: %s", s)
	}
	for _, tc := range []struct{ lo, hi float64 }{{0, 1}, {0, 7}, {0, 19900}, {3.2, 3.3}, {0, 1e9}} {
		ts := niceTicks(tc.lo, tc.hi, 5)
		if len(ts) < 2 || ts[0].at > tc.lo+1e-9 || ts[len(ts)-1].at < tc.hi-1e-9 || len(ts) > 12 {
			t.Errorf("niceTicks(%v, %v) = %+v", tc.lo, tc.hi, ts)
		}
	}
}

func TestCurveAndSparse(t *testing.T) {
	h := hdrhistogram.New(histMin, histMax, histSigFigs)
	for i := range 1000 {
		_ = h.RecordValue(int64(i + 1))
	}
	l := summarize(h, 0)
	last := l.Curve[len(l.Curve)-1]
	if l.Curve[0].Percentile != 0 || last.Ms != l.Max {
		t.Errorf("curve %+v", l.Curve)
	}
	for i := 1; i < len(l.Curve); i++ {
		if l.Curve[i].Ms < l.Curve[i-1].Ms || l.Curve[i].Percentile <= l.Curve[i-1].Percentile {
			t.Errorf("curve not increasing at %d: %+v", i, l.Curve)
		}
	}
	h2 := hdrhistogram.New(histMin, histMax, histSigFigs)
	sparse(h).addTo(h2)
	if h2.TotalCount() != h.TotalCount() || h2.ValueAtQuantile(99) != h.ValueAtQuantile(99) || h2.Max() != h.Max() {
		t.Errorf("sparse round trip: %d %d %d", h2.TotalCount(), h2.ValueAtQuantile(99), h2.Max())
	}
	lh := newLatencyHist()
	lh.record(time.Millisecond)
	if s := lh.takeSparse(); len(s) != 1 || s[0][1] != 1 {
		t.Errorf("takeSparse = %v", s)
	}
	if s := lh.takeSparse(); s != nil {
		t.Errorf("takeSparse after reset = %v", s)
	}
}

func sampleStorm() *StormReport {
	r := &StormReport{Scenario: "storm", Started: time.Now(), Config: StormConfig{Common: Common{URL: "ws://127.0.0.1:8080/ws"}, Clients: 20}}
	r.Resumed, r.Clients, r.Expected, r.Replayed = 20, 20, 40, 40
	r.WelcomeLatency = latencyOf(time.Millisecond, 5*time.Millisecond)
	r.ReplayLatency = latencyOf(2*time.Millisecond, 6*time.Millisecond)
	r.Timeline = []StormPoint{{At: 1, Welcomed: 0}, {At: 2, Welcomed: 20, Replayed: 20}}
	return r
}

func sampleSweep() *SweepReport {
	r := &SweepReport{Scenario: "sweep", Started: time.Now(), Config: SweepConfig{P99Bound: 5 * time.Millisecond}}
	for i, rate := range []float64{1000, 2000} {
		r.Steps = append(r.Steps, SweepStep{Rate: rate, Offered: rate, Delivered: rate * 0.99, P50: 1, P99: float64(3 + 4*i),
			Latency: latencyOf(time.Millisecond, time.Duration(3+4*i)*time.Millisecond)})
	}
	return r
}

func sampleFanout() *FanoutReport {
	r := &FanoutReport{Scenario: "fanout", Started: time.Now(), Config: FanoutConfig{Common: Common{URL: "ws://127.0.0.1:8080/ws"}, Visitors: 300, Rate: 50}}
	r.Visitors, r.Triggers, r.Expected, r.Delivered = 300, 125, 14155, 14155
	r.RecipientsPerTrigger, r.OfferedRate, r.DeliveredRate = 112, 5600, 5600
	r.Latency = latencyOf(time.Millisecond, 2*time.Millisecond, 4*time.Millisecond)
	r.Complete = latencyOf(3*time.Millisecond, 5*time.Millisecond)
	r.SendLag = latencyOf(100 * time.Microsecond)
	r.Timeline = []FanoutPoint{{At: 1, Phase: "measure", Triggers: 50, Deliveries: 5600, Count: 5600, P50: 2, P99: 4},
		{At: 2, Phase: "measure", Triggers: 50, Deliveries: 5600, Count: 5600, P50: 2, P99: 5}}
	return r
}
