package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// Figure names one main figure of a report: a label and its path in the
// JSON report (dot-separated keys).
type figure struct {
	label string
	path  string
	// lowerBetter: a ratio below 1 is an improvement (latencies, memory).
	lowerBetter bool
}

// latencyFigures are the percentiles of a Latency at prefix.
func latencyFigures(label, prefix string) []figure {
	var out []figure
	for _, p := range []struct{ l, k string }{{"p50", "p50_ms"}, {"p90", "p90_ms"}, {"p99", "p99_ms"}, {"p99.9", "p99_9_ms"}, {"max", "max_ms"}} {
		out = append(out, figure{label + " " + p.l + " (ms)", prefix + "." + p.k, true})
	}
	return out
}

// figures lists the main figures of each scenario.
func figures(scenario string) []figure {
	var fs []figure
	switch scenario {
	case "idle":
		fs = []figure{
			{"server RSS slope (bytes/conn)", "rss_slope.slope", true},
			{"kernel slab slope (bytes/conn)", "slab_slope.slope", true},
			{"connect rate (/s)", "connect_rate", false},
			{"connections reached", "reached", false},
		}
		fs = append(fs, latencyFigures("connect+hello", "connect_latency")...)
	case "chat":
		fs = []figure{
			{"offered (msg/s)", "offered_msgs_per_s", false},
			{"delivered (msg/s)", "delivered_msgs_per_s", false},
			{"delivered v→a (msg/s)", "v2a_delivered_per_s", false},
			{"delivered a→v (msg/s)", "a2v_delivered_per_s", false},
		}
		fs = append(fs, latencyFigures("v→a", "v2a_latency")...)
		fs = append(fs, latencyFigures("a→v", "a2v_latency")...)
		fs = append(fs, latencyFigures("ack", "ack_latency")...)
		fs = append(fs,
			figure{"server CPU (cores)", "server_cpu_cores", true},
			figure{"server RSS at end (bytes)", "server_rss_end_bytes", true})
	case "storm":
		fs = []figure{
			{"clients resumed", "resumed", false},
			{"time to all welcomed (s)", "recover_welcome_s", true},
			{"time to all replayed (s)", "recover_replay_s", true},
			{"resume rate (/s)", "resume_rate", false},
			{"replayed messages", "replayed", false},
			{"duplicates", "duplicates", true},
			{"gaps", "gaps", true},
		}
		fs = append(fs, latencyFigures("reconnect→welcome", "welcome_latency")...)
		fs = append(fs, latencyFigures("reconnect→replayed", "replay_latency")...)
	case "fanout":
		fs = []figure{
			{"offered updates (/s)", "offered_deliveries_per_s", false},
			{"delivered updates (/s)", "delivered_per_s", false},
			{"recipients per trigger", "recipients_per_trigger", false},
			{"gaps", "gaps", true},
		}
		fs = append(fs, latencyFigures("trigger→update", "latency")...)
		fs = append(fs, latencyFigures("trigger→last update", "complete_latency")...)
		fs = append(fs,
			figure{"server CPU (cores)", "server_cpu_cores", true},
			figure{"server RSS at end (bytes)", "server_rss_end_bytes", true})
	case "sweep":
		fs = []figure{
			{"saturation rate (msg/s)", "saturation_rate", false},
			{"highest rate under the p99 bound (msg/s)", "best_rate", false},
			{"highest delivered rate (msg/s)", "max_delivered_rate", false},
		}
	}
	return fs
}

// Ratio is one line of a comparison: figure B/A.
type Ratio struct {
	Figure string  `json:"figure"`
	A      float64 `json:"a"`
	B      float64 `json:"b"`
	// Ratio is B/A; NaN when either is missing or A is 0 (and B is not).
	Ratio float64 `json:"ratio"`
	// Missing is true when the figure is absent from A or B.
	Missing     bool `json:"missing,omitempty"`
	LowerBetter bool `json:"lower_better,omitempty"`
}

// Compare computes the ratios B/A of the main figures of two JSON reports
// of the same scenario.
func Compare(a, b []byte) (scenario string, out []Ratio, err error) {
	var ma, mb map[string]any
	if err := json.Unmarshal(a, &ma); err != nil {
		return "", nil, fmt.Errorf("%w: first report: %v", ErrConfig, err)
	}
	if err := json.Unmarshal(b, &mb); err != nil {
		return "", nil, fmt.Errorf("%w: second report: %v", ErrConfig, err)
	}
	sa, _ := ma["scenario"].(string)
	sb, _ := mb["scenario"].(string)
	if sa != sb {
		return "", nil, fmt.Errorf("%w: reports of different scenarios (%q, %q)", ErrConfig, sa, sb)
	}
	fs := figures(sa)
	if len(fs) == 0 {
		return "", nil, fmt.Errorf("%w: unknown scenario %q", ErrConfig, sa)
	}
	for _, f := range fs {
		va, oka := lookup(ma, f.path)
		vb, okb := lookup(mb, f.path)
		r := Ratio{Figure: f.label, A: va, B: vb, Missing: !oka || !okb, LowerBetter: f.lowerBetter}
		switch {
		case r.Missing:
			r.Ratio = math.NaN()
		case va == 0 && vb == 0:
			r.Ratio = 1
		case va == 0:
			r.Ratio = math.NaN()
		default:
			r.Ratio = vb / va
		}
		out = append(out, r)
	}
	return sa, out, nil
}

// lookup returns the number at a dot-separated path of a decoded JSON
// object.
func lookup(m map[string]any, path string) (float64, bool) {
	var cur any = m
	for key := range strings.SplitSeq(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return 0, false
		}
		if cur, ok = obj[key]; !ok {
			return 0, false
		}
	}
	v, ok := cur.(float64)
	return v, ok
}

// CompareFiles compares two JSON report files and writes one line per
// figure to w.
func CompareFiles(w io.Writer, pathA, pathB string) error {
	a, err := os.ReadFile(pathA)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(pathB)
	if err != nil {
		return err
	}
	scenario, rs, err := Compare(a, b)
	if err != nil {
		return err
	}
	WriteRatios(w, scenario, pathA, pathB, rs)
	return nil
}

// WriteRatios prints a comparison: one line per figure, with A, B and B/A.
func WriteRatios(w io.Writer, scenario, nameA, nameB string, rs []Ratio) {
	fmt.Fprintf(w, "unigate-bench compare (%s): A = %s, B = %s\n", scenario, nameA, nameB)
	fmt.Fprintf(w, "%-44s %14s %14s %9s\n", "figure", "A", "B", "B/A")
	for _, r := range rs {
		ratio := "-"
		switch {
		case r.Missing:
			ratio = "missing"
		case !math.IsNaN(r.Ratio):
			ratio = strconv.FormatFloat(r.Ratio, 'f', 3, 64) + "×"
			if r.Ratio != 1 {
				if (r.Ratio < 1) == r.LowerBetter {
					ratio += " better"
				} else {
					ratio += " worse"
				}
			}
		}
		fmt.Fprintf(w, "%-44s %14s %14s %9s\n", r.Figure, fmtFigure(r.A, r.Missing), fmtFigure(r.B, r.Missing), ratio)
	}
}

func fmtFigure(v float64, missing bool) string {
	if missing && v == 0 {
		return "-"
	}
	if math.Abs(v) >= 1000 || v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}
