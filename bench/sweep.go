package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// SweepConfig configures RunSweep: the chat scenario at rising rates.
type SweepConfig struct {
	// Chat is the chat run of every step; its Rate is replaced by each of
	// Rates.
	Chat ChatConfig `json:"chat"`
	// Rates are the offered rates, increasing. Required.
	Rates []float64 `json:"rates"`
	// P99Bound is the latency bound: BestRate is the highest rate whose
	// visitor→agent p99 (from the due time) stays at or under it.
	// Default 5ms.
	P99Bound time.Duration `json:"p99_bound_ns"`
	// Saturation is the delivered/offered fraction under which a step is
	// saturated. Default 0.98.
	Saturation float64 `json:"saturation"`
	// Continue keeps going after the first saturated step.
	Continue bool `json:"continue"`
	// Pause is the wait between two steps (the server settles). Default
	// 2s.
	Pause time.Duration `json:"pause_ns"`
}

func (c *SweepConfig) setDefaults() error {
	if len(c.Rates) == 0 {
		return fmt.Errorf("%w: a sweep needs rates (-rates or -from/-to/-step)", ErrConfig)
	}
	for i, r := range c.Rates {
		if r <= 0 || (i > 0 && r <= c.Rates[i-1]) {
			return fmt.Errorf("%w: rates %v: want positive, increasing", ErrConfig, c.Rates)
		}
	}
	if c.P99Bound <= 0 {
		c.P99Bound = 5 * time.Millisecond
	}
	if c.Saturation <= 0 || c.Saturation > 1 {
		c.Saturation = 0.98
	}
	if c.Pause <= 0 {
		c.Pause = 2 * time.Second
	}
	// Validate the chat configuration once, at the highest rate.
	cc := c.Chat
	cc.Rate = c.Rates[len(c.Rates)-1]
	return cc.setDefaults()
}

// SweepRates returns from, from+step, ... up to to (inclusive).
func SweepRates(from, to, step float64) ([]float64, error) {
	if from <= 0 || to < from || step <= 0 {
		return nil, fmt.Errorf("%w: -from %v -to %v -step %v: want 0 < from ≤ to, step > 0", ErrConfig, from, to, step)
	}
	if (to-from)/step > 1000 {
		return nil, fmt.Errorf("%w: more than 1000 steps", ErrConfig)
	}
	var out []float64
	for i := 0; ; i++ {
		r := from + float64(i)*step
		if r > to*(1+1e-9) {
			break
		}
		out = append(out, r)
	}
	return out, nil
}

// ParseRates parses "1000,2000,5000".
func ParseRates(s string) ([]float64, error) {
	var out []float64
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		v, err := strconv.ParseFloat(part, 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%w: rate %q: want a positive number", ErrConfig, part)
		}
		out = append(out, v)
	}
	return out, nil
}

// SweepStep is one chat run of a sweep.
type SweepStep struct {
	Rate          float64 `json:"rate"`
	Offered       float64 `json:"offered_msgs_per_s"`
	Delivered     float64 `json:"v2a_delivered_per_s"`
	DeliveredFrac float64 `json:"delivered_fraction"`
	P50           float64 `json:"v2a_p50_ms"`
	P99           float64 `json:"v2a_p99_ms"`
	P999          float64 `json:"v2a_p99_9_ms"`
	Max           float64 `json:"v2a_max_ms"`
	// Errors counts refusals, dropped connections and write errors.
	Errors     int64   `json:"errors"`
	ServerCPU  float64 `json:"server_cpu_cores"`
	MaxBehind  int64   `json:"max_behind"`
	Saturated  bool    `json:"saturated"`
	UnderBound bool    `json:"under_p99_bound"`
	// Err is the chat run's error, if any (integrity, setup ...).
	Err string `json:"error,omitempty"`
	// Latency is the full visitor→agent distribution (with its curve).
	Latency Latency `json:"v2a_latency"`
}

// SweepReport is the result of RunSweep.
type SweepReport struct {
	Scenario string      `json:"scenario"`
	Started  time.Time   `json:"started"`
	Machine  Machine     `json:"machine"`
	Config   SweepConfig `json:"config"`
	Steps    []SweepStep `json:"steps"`
	// SaturationRate is the first offered rate at which delivered <
	// Saturation × offered or errors appeared; 0: none saturated.
	SaturationRate float64 `json:"saturation_rate"`
	// BestRate is the highest unsaturated rate whose p99 stayed under
	// the bound; 0: none.
	BestRate float64 `json:"best_rate"`
	// MaxDeliveredRate is the highest visitor→agent delivered rate seen.
	MaxDeliveredRate float64  `json:"max_delivered_rate"`
	Notes            []string `json:"notes,omitempty"`
}

// RunSweep runs the chat scenario at each rate in turn and finds the
// saturation point and the highest rate under the p99 bound. Integrity
// violations of any step make it return ErrIntegrity with the report.
func RunSweep(ctx context.Context, c SweepConfig) (*SweepReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	rep := &SweepReport{Scenario: "sweep", Started: time.Now(), Machine: DescribeMachine(c.Chat.ServerPID), Config: c}
	var integrity []string
	for i, rate := range c.Rates {
		if i > 0 {
			select {
			case <-time.After(c.Pause):
			case <-ctx.Done():
				return rep, ctx.Err()
			}
		}
		cc := c.Chat
		cc.Rate = rate
		if len(cc.Tokens) == 0 {
			// Fresh agent ids per step: an agent id that served earlier
			// conversations gets their history replayed at hello.
			cc.AgentPrefix = c.Chat.AgentPrefix + "s" + strconv.Itoa(i) + "-"
		}
		if cc.Progress != nil {
			fmt.Fprintf(cc.Progress, "sweep step %d/%d: %.0f msg/s\n", i+1, len(c.Rates), rate)
		}
		cr, err := RunChat(ctx, cc)
		st := SweepStep{Rate: rate}
		if cr != nil {
			st.Offered, st.Delivered = cr.OfferedRate, cr.V2ARate
			if st.Offered > 0 {
				st.DeliveredFrac = st.Delivered / st.Offered
			}
			l := cr.V2ALatency
			st.P50, st.P99, st.P999, st.Max, st.Latency = l.P50, l.P99, l.P999, l.Max, l
			st.Errors = cr.Errors.total() + cr.Drops.total() + cr.WriteErrors.total()
			st.ServerCPU, st.MaxBehind = cr.ServerCPUCores, cr.MaxBehind
			if len(cr.Integrity) > 0 {
				integrity = append(integrity, fmt.Sprintf("%.0f msg/s: %s", rate, strings.Join(cr.Integrity, "; ")))
			}
		}
		if err != nil {
			st.Err = err.Error()
		}
		st.Saturated = err != nil || st.Errors > 0 || st.DeliveredFrac < c.Saturation
		st.UnderBound = !st.Saturated && st.Latency.Count > 0 && st.P99 <= float64(c.P99Bound)/1e6
		rep.Steps = append(rep.Steps, st)
		rep.MaxDeliveredRate = max(rep.MaxDeliveredRate, st.Delivered)
		if st.UnderBound {
			rep.BestRate = rate
		}
		if cc.Progress != nil {
			fmt.Fprintf(cc.Progress, "sweep step %.0f msg/s: delivered %.0f/s (%.1f%%), p99 %.2f ms, errors %d, saturated %v\n",
				rate, st.Delivered, 100*st.DeliveredFrac, st.P99, st.Errors, st.Saturated)
		}
		if st.Saturated && rep.SaturationRate == 0 {
			rep.SaturationRate = rate
			if !c.Continue {
				break
			}
		}
		if err != nil && (errors.Is(err, ErrConfig) || ctx.Err() != nil) {
			return rep, err
		}
	}
	if rep.SaturationRate == 0 {
		rep.Notes = append(rep.Notes, "no step saturated: raise -to to find the saturation point")
	}
	if len(integrity) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(integrity, " | "))
	}
	return rep, nil
}

// WriteSummary writes a readable summary of the report.
func (r *SweepReport) WriteSummary(w io.Writer) {
	c := r.Config.Chat
	fmt.Fprintf(w, "unigate-bench sweep: chat with %d conversations, %d agents × %d, %v per step (+%v warmup), p99 bound %v, saturation below %.0f%% delivered, %s, %s\n",
		c.Conversations, c.Agents, c.AgentCapacity, c.Duration, c.Warmup, r.Config.P99Bound, 100*r.Config.Saturation, c.channelLabel(), c.URL)
	writeMachine(w, r.Machine)
	fmt.Fprintf(w, "%10s %10s %10s %8s %9s %9s %9s %9s %7s %6s %s\n",
		"rate/s", "offered/s", "deliv/s", "deliv%", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "cpu", "")
	for _, s := range r.Steps {
		mark := ""
		if s.Saturated {
			mark = "SATURATED"
		} else if s.UnderBound {
			mark = "under bound"
		}
		if s.Err != "" {
			mark += " (" + s.Err + ")"
		}
		fmt.Fprintf(w, "%10.0f %10.0f %10.0f %7.1f%% %9.3f %9.3f %9.3f %9.3f %7d %6.2f %s\n",
			s.Rate, s.Offered, s.Delivered, 100*s.DeliveredFrac, s.P50, s.P99, s.P999, s.Max, s.Errors, s.ServerCPU, mark)
	}
	if r.SaturationRate > 0 {
		fmt.Fprintf(w, "saturation point: %.0f msg/s offered\n", r.SaturationRate)
	} else {
		fmt.Fprintln(w, "saturation point: not reached")
	}
	if r.BestRate > 0 {
		fmt.Fprintf(w, "highest rate with p99 ≤ %v: %.0f msg/s\n", r.Config.P99Bound, r.BestRate)
	} else {
		fmt.Fprintf(w, "highest rate with p99 ≤ %v: none\n", r.Config.P99Bound)
	}
	fmt.Fprintf(w, "highest delivered rate: %.0f msg/s\n", r.MaxDeliveredRate)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func (r *SweepReport) title() string {
	return fmt.Sprintf("unigate-bench sweep: %d steps, %s", len(r.Steps), r.Started.UTC().Format(time.RFC3339))
}

func (r *SweepReport) charts() []chart {
	lat := chart{title: "Visitor→agent latency vs offered rate", xLabel: "offered (msg/s)", yLabel: "latency (ms)", points: true}
	thr := chart{title: "Delivered vs offered", xLabel: "offered (msg/s)", yLabel: "msg/s", points: true}
	var p50, p99, bound, off, del series
	p50.name, p99.name, bound.name = "p50", "p99", "p99 bound"
	off.name, del.name = "offered", "delivered visitor→agent"
	var curves []namedLatency
	for _, s := range r.Steps {
		p50.x, p50.y = append(p50.x, s.Rate), append(p50.y, s.P50)
		p99.x, p99.y = append(p99.x, s.Rate), append(p99.y, s.P99)
		bound.x, bound.y = append(bound.x, s.Rate), append(bound.y, float64(r.Config.P99Bound)/1e6)
		off.x, off.y = append(off.x, s.Rate), append(off.y, s.Offered)
		del.x, del.y = append(del.x, s.Rate), append(del.y, s.Delivered)
		curves = append(curves, namedLatency{fmt.Sprintf("%.0f msg/s", s.Rate), s.Latency})
	}
	lat.series = []series{p50, p99, bound}
	thr.series = []series{off, del}
	return []chart{lat, thr, curveChart("Visitor→agent percentile curve per step", curves...)}
}
