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
	// pathB, when set, is the figure's path in report B (the echo steps
	// are matched by rate, not by position).
	pathB string
}

// latencyFigures are the percentiles of a Latency at prefix.
func latencyFigures(label, prefix string) []figure {
	var out []figure
	for _, p := range []struct{ l, k string }{{"p50", "p50_ms"}, {"p90", "p90_ms"}, {"p99", "p99_ms"}, {"p99.9", "p99_9_ms"}, {"max", "max_ms"}} {
		out = append(out, figure{label: label + " " + p.l + " (ms)", path: prefix + "." + p.k, lowerBetter: true})
	}
	return out
}

// echoFigures lists the main figures of two echo reports: per open-loop
// step of A, the step of B at the same rate (missing when B has none),
// then the closed loop.
func echoFigures(ma, mb map[string]any) []figure {
	fs := []figure{
		{label: "connections", path: "connected"},
		{label: "highest sustained rate (msg/s)", path: "max_sustained_msgs_per_s"},
	}
	stepsB, _ := mb["steps"].([]any)
	stepsA, _ := ma["steps"].([]any)
	for i, s := range stepsA {
		rate, _ := lookup(map[string]any{"s": s}, "s.rate")
		j := -1
		for k, t := range stepsB {
			if r, ok := lookup(map[string]any{"s": t}, "s.rate"); ok && r == rate {
				j = k
				break
			}
		}
		pa := "steps." + strconv.Itoa(i)
		pb := "steps." + strconv.Itoa(j) // "steps.-1" is missing
		at := "at " + strconv.FormatFloat(rate, 'f', 0, 64) + "/s: "
		fs = append(fs, figure{label: at + "echoed (msg/s)", path: pa + ".echoed_msgs_per_s", pathB: pb + ".echoed_msgs_per_s"})
		for _, f := range latencyFigures(at+"latency", "latency") {
			f.path, f.pathB = pa+"."+f.path, pb+"."+f.path
			fs = append(fs, f)
		}
		fs = append(fs,
			figure{label: at + "server CPU (µs/msg)", path: pa + ".server_cpu_us_per_msg", pathB: pb + ".server_cpu_us_per_msg", lowerBetter: true},
			figure{label: at + "server CPU (cores)", path: pa + ".server_cpu_cores", pathB: pb + ".server_cpu_cores", lowerBetter: true})
	}
	fs = append(fs, figure{label: "closed loop: echoed (msg/s)", path: "closed_loop.echoed_msgs_per_s"})
	for _, f := range latencyFigures("closed loop: latency", "closed_loop.latency") {
		fs = append(fs, f)
	}
	fs = append(fs,
		figure{label: "closed loop: server CPU (µs/msg)", path: "closed_loop.server_cpu_us_per_msg", lowerBetter: true},
		figure{label: "closed loop: server RSS (bytes)", path: "closed_loop.server_rss_end_bytes", lowerBetter: true})
	return fs
}

// figures lists the main figures of each scenario.
func figures(scenario string) []figure {
	var fs []figure
	switch scenario {
	case "idle":
		fs = []figure{
			{label: "server RSS slope (bytes/conn)", path: "rss_slope.slope", lowerBetter: true},
			{label: "kernel slab slope (bytes/conn)", path: "slab_slope.slope", lowerBetter: true},
			{label: "connect rate (/s)", path: "connect_rate", lowerBetter: false},
			{label: "connections reached", path: "reached", lowerBetter: false},
		}
		fs = append(fs, latencyFigures("connect+hello", "connect_latency")...)
	case "chat":
		fs = []figure{
			{label: "offered (msg/s)", path: "offered_msgs_per_s", lowerBetter: false},
			{label: "delivered (msg/s)", path: "delivered_msgs_per_s", lowerBetter: false},
			{label: "delivered v→a (msg/s)", path: "v2a_delivered_per_s", lowerBetter: false},
			{label: "delivered a→v (msg/s)", path: "a2v_delivered_per_s", lowerBetter: false},
		}
		fs = append(fs, latencyFigures("v→a", "v2a_latency")...)
		fs = append(fs, latencyFigures("a→v", "a2v_latency")...)
		fs = append(fs, latencyFigures("ack", "ack_latency")...)
		fs = append(fs,
			figure{label: "server CPU (cores)", path: "server_cpu_cores", lowerBetter: true},
			figure{label: "server RSS at end (bytes)", path: "server_rss_end_bytes", lowerBetter: true})
	case "storm":
		fs = []figure{
			{label: "clients resumed", path: "resumed", lowerBetter: false},
			{label: "time to all welcomed (s)", path: "recover_welcome_s", lowerBetter: true},
			{label: "time to all replayed (s)", path: "recover_replay_s", lowerBetter: true},
			{label: "resume rate (/s)", path: "resume_rate", lowerBetter: false},
			{label: "replayed messages", path: "replayed", lowerBetter: false},
			{label: "duplicates", path: "duplicates", lowerBetter: true},
			{label: "gaps", path: "gaps", lowerBetter: true},
		}
		fs = append(fs, latencyFigures("reconnect→welcome", "welcome_latency")...)
		fs = append(fs, latencyFigures("reconnect→replayed", "replay_latency")...)
	case "fanout":
		fs = []figure{
			{label: "offered updates (/s)", path: "offered_deliveries_per_s", lowerBetter: false},
			{label: "delivered updates (/s)", path: "delivered_per_s", lowerBetter: false},
			{label: "recipients per trigger", path: "recipients_per_trigger", lowerBetter: false},
			{label: "gaps", path: "gaps", lowerBetter: true},
		}
		fs = append(fs, latencyFigures("trigger→update", "latency")...)
		fs = append(fs, latencyFigures("trigger→last update", "complete_latency")...)
		fs = append(fs,
			figure{label: "server CPU (cores)", path: "server_cpu_cores", lowerBetter: true},
			figure{label: "server RSS at end (bytes)", path: "server_rss_end_bytes", lowerBetter: true})
	case "sweep":
		fs = []figure{
			{label: "saturation rate (msg/s)", path: "saturation_rate", lowerBetter: false},
			{label: "highest rate under the p99 bound (msg/s)", path: "best_rate", lowerBetter: false},
			{label: "highest delivered rate (msg/s)", path: "max_delivered_rate", lowerBetter: false},
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
	if sa == "echo" {
		fs = echoFigures(ma, mb)
	}
	if len(fs) == 0 {
		return "", nil, fmt.Errorf("%w: unknown scenario %q", ErrConfig, sa)
	}
	for _, f := range fs {
		va, oka := lookup(ma, f.path)
		pb := f.path
		if f.pathB != "" {
			pb = f.pathB
		}
		vb, okb := lookup(mb, pb)
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
		switch obj := cur.(type) {
		case map[string]any:
			var ok bool
			if cur, ok = obj[key]; !ok {
				return 0, false
			}
		case []any: // a numeric key indexes an array
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(obj) {
				return 0, false
			}
			cur = obj[i]
		default:
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
