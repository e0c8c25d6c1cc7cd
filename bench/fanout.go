package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// FanoutConfig configures RunFanout: Visitors anonymous visitors of a
// tenant without agents wait in its queue; on an open-loop schedule the
// visitor at the head leaves (closes its conversation), and the broker
// tells the visitors behind their new positions. One event, many
// deliveries: the scenario measures how many per second reach the
// visitors, and how long after the event.
type FanoutConfig struct {
	Common
	// Visitors is the number of visitors waiting, one conversation each,
	// spread over the workers. Default 1000. The broker's waiting queue
	// holds 10,000 conversations in total (all tenants) unless the
	// gateway's broker.max_queue says otherwise.
	Visitors int `json:"visitors"`
	// Rate is the triggers per second: visitors leaving the head of the
	// queue, open loop. Default 10. Each trigger makes the broker send
	// about min(L, 100) + (L − 100)/10 position updates for a queue of L
	// under the default rule, L − 1 with PositionStep 1.
	Rate float64 `json:"rate"`
	// Duration is the measured part of the schedule, after Warmup.
	// Default 10s.
	Duration time.Duration `json:"duration_ns"`
	// Warmup is the first part of the schedule, not measured. Default 2s;
	// negative means none.
	Warmup time.Duration `json:"warmup_ns"`
	// Tenant the visitors name in their hello. Default: a fresh
	// "bench-fanout-<random>" per run, hence an empty queue.
	Tenant string `json:"tenant"`
	// ConnectRate paces the setup connections, per second over all
	// workers. Default 1000.
	ConnectRate float64 `json:"connect_rate"`
	// SetupTimeout bounds connecting and queueing everybody. Default 60s
	// plus twice the planned connect time.
	SetupTimeout time.Duration `json:"setup_timeout_ns"`
	// Drain is how long to wait after the last trigger for its updates.
	// Default 10s.
	Drain time.Duration `json:"drain_ns"`
	// PositionExact and PositionStep are the gateway's rule for position
	// updates (broker.position_exact, broker.position_step): every change
	// of the first PositionExact places, beyond only multiples of
	// PositionStep. They must match the gateway's configuration: the
	// scenario predicts every update from them. Defaults 100 and 10 (the
	// gateway's defaults).
	PositionExact int `json:"position_exact"`
	PositionStep  int `json:"position_step"`
}

func (c *FanoutConfig) setDefaults() error {
	if err := c.Common.setDefaults(); err != nil {
		return err
	}
	if c.Visitors <= 0 {
		c.Visitors = 1000
	}
	if c.Rate <= 0 {
		c.Rate = 10
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	switch {
	case c.Warmup == 0:
		c.Warmup = 2 * time.Second
	case c.Warmup < 0:
		c.Warmup = 0
	}
	if c.Tenant == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		c.Tenant = "bench-fanout-" + hex.EncodeToString(b[:])
	}
	if len(c.Tenant) > 128 {
		return fmt.Errorf("%w: -tenant longer than 128 bytes", ErrConfig)
	}
	if c.ConnectRate <= 0 {
		c.ConnectRate = 1000
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = time.Minute + 2*time.Duration(float64(c.Visitors)/c.ConnectRate*float64(time.Second))
	}
	if c.Drain <= 0 {
		c.Drain = 10 * time.Second
	}
	if c.PositionExact <= 0 {
		c.PositionExact = 100
	}
	if c.PositionStep <= 0 {
		c.PositionStep = 10
	}
	if c.Procs > c.Visitors {
		return fmt.Errorf("%w: -procs %d exceeds -visitors %d", ErrConfig, c.Procs, c.Visitors)
	}
	if t := c.schedule().Triggers; t > c.Visitors-1 {
		return fmt.Errorf("%w: the schedule has %d triggers (-rate × (-warmup + -duration)) but at most %d of %d visitors can leave: lower -rate or -duration, or raise -visitors",
			ErrConfig, t, c.Visitors-1, c.Visitors)
	}
	return nil
}

// schedule returns the triggers' schedule: every trigger due in
// [0, Warmup+Duration) at Rate.
func (c *FanoutConfig) schedule() fanoutSchedule {
	span := (c.Warmup + c.Duration).Seconds()
	return fanoutSchedule{Rate: c.Rate, Triggers: int(math.Ceil(span*c.Rate - 1e-9)), Warmup: c.Warmup, Duration: c.Duration}
}

// rule is the gateway's position update rule as configured.
func (c *FanoutConfig) rule() positionRule {
	return positionRule{Exact: c.PositionExact, Step: c.PositionStep}
}

// FanoutReport is the result of RunFanout.
type FanoutReport struct {
	Scenario string       `json:"scenario"`
	Started  time.Time    `json:"started"`
	Machine  Machine      `json:"machine"`
	Config   FanoutConfig `json:"config"`
	// SetupSeconds is the time to connect and queue every visitor.
	SetupSeconds float64 `json:"setup_s"`
	FanoutCounts
	// MeasuredTriggers are the triggers due in the measured window;
	// RecipientsPerTrigger the mean number of visitors each of them
	// should reach (from the broker's position rule).
	MeasuredTriggers     int64   `json:"measured_triggers"`
	RecipientsPerTrigger float64 `json:"recipients_per_trigger"`
	// OfferedRate is the updates the measured triggers should cause, per
	// second of the window; DeliveredRate the updates received inside
	// the window per second.
	OfferedRate   float64 `json:"offered_deliveries_per_s"`
	DeliveredRate float64 `json:"delivered_per_s"`
	// Latency is from a trigger's due time to each update it caused
	// (measured triggers). Complete is, per measured trigger, from its due
	// time to the last of its updates, over all workers: the time to
	// reach every visitor. SendLag is how late the leaving visitors sent
	// their Close.
	Latency  Latency `json:"latency"`
	Complete Latency `json:"complete_latency"`
	SendLag  Latency `json:"send_lag"`
	// TriggersWithout counts measured triggers of which no update arrived.
	TriggersWithout int64   `json:"measured_triggers_without_update"`
	DrainTime       float64 `json:"drain_s"`

	Errors      Reasons `json:"errors"`
	SetupErrors Reasons `json:"setup_errors"`
	Drops       Reasons `json:"drops"`
	Events      Reasons `json:"unexpected_events"`

	ServerCPUCores float64            `json:"server_cpu_cores"`
	ClientCPUCores float64            `json:"client_cpu_cores"`
	ServerRSSStart int64              `json:"server_rss_start_bytes"`
	ServerRSSEnd   int64              `json:"server_rss_end_bytes"`
	ServerMetrics  map[string]float64 `json:"server_metrics_window_delta,omitempty"`
	Timeline       []FanoutPoint      `json:"timeline"`
	Integrity      []string           `json:"integrity_violations"`
	Notes          []string           `json:"notes,omitempty"`
}

// FanoutPoint is one second of a fan-out run.
type FanoutPoint struct {
	At         float64 `json:"at_s"`
	Phase      string  `json:"phase"`
	Triggers   float64 `json:"triggers_per_s"`
	Deliveries float64 `json:"deliveries_per_s"`
	Count      int64   `json:"count"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
}

// Commands of the fan-out scenario (start and close are shared).
const cmdFanout = "fanout"

// RunFanout runs the fan-out scenario and returns its report (with most
// errors too); ErrIntegrity comes with a complete report.
func RunFanout(ctx context.Context, c FanoutConfig) (*FanoutReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &FanoutReport{Scenario: "fanout", Started: start, Machine: DescribeMachine(c.ServerPID), Config: c}
	sch := c.schedule()
	deadline := start.Add(c.SetupTimeout + c.Warmup + c.Duration + c.Drain +
		time.Duration(c.Visitors)*closeGap + 3*time.Minute)
	pool, err := startWorkers(&c.Common, c.Procs)
	if err != nil {
		return rep, err
	}
	defer pool.stop(20 * time.Second)
	for i, p := range pool.procs {
		job := &fanoutJob{
			Common: c.Common, fanoutSchedule: sch, Index: i,
			Visitors: share(c.Visitors, c.Procs, i), TotalVisitors: c.Visitors, Tenant: c.Tenant,
			ConnectRate: c.ConnectRate / float64(c.Procs), SetupTimeout: c.SetupTimeout, Drain: c.Drain,
			Deadline: deadline.UnixNano(), Rule: c.rule(),
		}
		job.Progress = nil
		if err := p.send(wire{Cmd: cmdFanout, Fanout: job}); err != nil {
			return rep, err
		}
	}

	live := newLiveProgress[fanoutProgress](c.Procs)
	sum := live.sum
	co := &coordinator{pool: pool}
	co.progress = func(ev workerEvent) {
		if p := ev.w.FanoutProgress; p != nil {
			q := *p
			q.Interval = nil
			live.set(ev.idx, q, p.Interval)
		}
	}
	var prev fanoutProgress
	prevAt := time.Now()
	stopLine := startProgressLine(c.Progress, start, func() string {
		s := sum()
		dt := time.Since(prevAt).Seconds()
		prevAt = time.Now()
		n, p50, p99 := live.takeInterval()
		trig, del := float64(s.Triggers-prev.Triggers)/dt, float64(s.Deliveries-prev.Deliveries)/dt
		rep.Timeline = append(rep.Timeline, FanoutPoint{At: time.Since(start).Seconds(), Phase: s.Phase,
			Triggers: trig, Deliveries: del, Count: n, P50: p50, P99: p99})
		prev = s
		line := fmt.Sprintf("%-8s", s.Phase)
		switch s.Phase {
		case "setup", "queue", "ready", "":
			line += fmt.Sprintf(" connected %d/%d  queued %d/%d", s.Connected, c.Visitors, s.Positioned, c.Visitors)
		default:
			line += fmt.Sprintf(" triggers %4.0f/s (%d/%d)  deliveries %7.0f/s  p50 %.2f ms  p99 %.2f ms  errors %d  dropped %d",
				trig, s.Triggers, sch.Triggers, del, p50, p99, s.Errors, s.Dropped)
		}
		return line
	})
	defer stopLine()

	// Setup: every visitor queued; the positions must be 1..Visitors.
	var positions []uint32
	ready := 0
	err = co.pump(ctx, c.SetupTimeout+30*time.Second, func(ev workerEvent) bool {
		if r := ev.w.FanoutReady; ev.w.Ev == evReady && r != nil {
			co.progress(workerEvent{idx: ev.idx, w: wire{FanoutProgress: &r.Progress}})
			positions = append(positions, r.Positions...)
			rep.SetupSeconds = max(rep.SetupSeconds, r.Seconds)
			ready++
		}
		return ready == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("%w: %v", ErrSetup, err)
	}
	slices.Sort(positions)
	for i, p := range positions {
		if int(p) != i+1 || len(positions) != c.Visitors {
			return rep, fmt.Errorf("%w: the visitors' queue positions are not 1..%d (position %d at rank %d of %d): is the tenant %q shared with another run?",
				ErrSetup, c.Visitors, p, i+1, len(positions), c.Tenant)
		}
	}

	ws, err := runWindow(ctx, &c.Common, start, pool, co, c.Warmup, c.Duration)
	if err != nil {
		return rep, err
	}
	rep.ServerRSSStart, rep.ServerRSSEnd = ws.ServerRSSStart, ws.ServerRSSEnd
	rep.ServerCPUCores, rep.ClientCPUCores = ws.ServerCPUCores, ws.ClientCPUCores
	rep.ServerMetrics = ws.ServerMetrics
	if ws.Note != "" {
		rep.Notes = append(rep.Notes, ws.Note)
	}

	var lat, lag []histSnapshot
	last := make([]int64, sch.Triggers)
	for i := range last {
		last[i] = -1
	}
	results := 0
	err = co.pump(ctx, c.Drain+time.Minute, func(ev workerEvent) bool {
		r := ev.w.FanoutResult
		if ev.w.Ev != evResult || r == nil {
			return false
		}
		results++
		rep.FanoutCounts.add(r.Counts)
		lat, lag = append(lat, r.Latency), append(lag, r.SendLag)
		for i, v := range r.Last {
			if i < len(last) {
				last[i] = max(last[i], v)
			}
		}
		rep.Errors.merge(r.Errors)
		rep.SetupErrors.merge(r.SetupErrors)
		rep.Drops.merge(r.Drops)
		rep.Events.merge(r.Events)
		rep.DrainTime = max(rep.DrainTime, r.DrainTime)
		return results == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("collecting results: %w", err)
	}
	rep.Latency = summarize(mergeHists(lat))
	rep.SendLag = summarize(mergeHists(lag))
	complete := newLatencyHist()
	var offered int64
	for s := 1; s <= sch.Triggers; s++ {
		if !sch.measured(s) {
			continue
		}
		rep.MeasuredTriggers++
		offered += int64(c.rule().updatesAfter(c.Visitors - s + 1))
		if last[s-1] < 0 {
			rep.TriggersWithout++
			continue
		}
		complete.record(time.Duration(last[s-1]) * time.Microsecond)
	}
	rep.Complete = summarize(complete.h, complete.saturated)
	d := c.Duration.Seconds()
	rep.OfferedRate = float64(offered) / d
	rep.DeliveredRate = float64(rep.DeliveredInWindow) / d
	if rep.MeasuredTriggers > 0 {
		rep.RecipientsPerTrigger = float64(offered) / float64(rep.MeasuredTriggers)
	}

	// Teardown: the queue is emptied from its tail on one schedule.
	closeAt := time.Now().Add(200 * time.Millisecond)
	if err := pool.broadcast(wire{Cmd: cmdClose, T0: closeAt.UnixNano()}); err != nil {
		return rep, err
	}
	closed := 0
	err = co.pump(ctx, time.Duration(c.Visitors)*closeGap+time.Minute, func(ev workerEvent) bool {
		if ev.w.Ev == evClosed {
			rep.Closed += ev.w.FanoutClosed
			closed++
		}
		return closed == c.Procs
	})
	if err != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("closing the waiting conversations: %v", err))
	}

	if rep.LeaverMissed > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d updates were still on their way to visitors who left meanwhile: the broker drops a closed conversation's updates (a sign of lag, not an error)", rep.LeaverMissed))
	}
	rep.Integrity = rep.violations(sch)
	if len(rep.Integrity) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(rep.Integrity, "; "))
	}
	return rep, nil
}

// violations lists what must not happen in a fan-out run.
func (r *FanoutReport) violations(sch fanoutSchedule) []string {
	var out []string
	for _, v := range []struct {
		what string
		n    int64
	}{
		{"gaps (updates a waiting visitor never got)", r.Gaps},
		{"duplicate positions", r.Duplicates},
		{"positions going back up", r.Regressions},
		{"unexpected positions", r.Unexpected},
		{"triggers refused", r.TriggersRefused},
		{"triggers not written", int64(sch.Triggers) - r.TriggersSent},
		{"triggers not confirmed", r.TriggersSent - r.TriggersConfirmed - r.TriggersRefused},
	} {
		if v.n > 0 {
			out = append(out, fmt.Sprintf("%d %s", v.n, v.what))
		}
	}
	// Every update the broker sends is expected, received or missed.
	if r.Delivered+r.Gaps+r.LeaverMissed != r.Expected {
		out = append(out, fmt.Sprintf("updates: %d delivered + %d gaps + %d missed by leavers ≠ %d expected", r.Delivered, r.Gaps, r.LeaverMissed, r.Expected))
	}
	var want int64
	for s := 1; s <= sch.Triggers; s++ {
		want += int64(r.Config.rule().updatesAfter(r.Config.Visitors - s + 1))
	}
	if r.Expected != want {
		out = append(out, fmt.Sprintf("the visitors expected %d updates, the schedule causes %d", r.Expected, want))
	}
	if r.Latency.Count != r.DeliveredMeasured {
		out = append(out, fmt.Sprintf("the histogram holds %d values for %d measured deliveries", r.Latency.Count, r.DeliveredMeasured))
	}
	return out
}

// WriteSummary writes a readable summary of the report.
func (r *FanoutReport) WriteSummary(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "unigate-bench fanout: %d visitors waiting in tenant %s, the head leaves %.0f times/s open loop, %v (+%v warmup), %d workers, %s, %s\n",
		c.Visitors, c.Tenant, c.Rate, c.Duration, c.Warmup, c.Procs, c.channelLabel(), c.URL)
	writeMachine(w, r.Machine)
	if r.Visitors == 0 {
		fmt.Fprintln(w, "no result: the run stopped during the setup (see the error)")
		return
	}
	fmt.Fprintf(w, "setup: %d visitors queued in %.1fs; triggers %d scheduled, %d sent, %d confirmed, %d refused; %d measured, %.0f recipients each on average\n",
		r.Visitors, r.SetupSeconds, r.Triggers, r.TriggersSent, r.TriggersConfirmed, r.TriggersRefused, r.MeasuredTriggers, r.RecipientsPerTrigger)
	fmt.Fprintf(w, "position updates: offered %.0f/s, delivered %.0f/s in the window; expected %d, delivered %d (measured %d), gaps %d, missed by leavers %d; duplicates %d, regressions %d, unexpected %d\n",
		r.OfferedRate, r.DeliveredRate, r.Expected, r.Delivered, r.DeliveredMeasured, r.Gaps, r.LeaverMissed, r.Duplicates, r.Regressions, r.Unexpected)
	writeLatency(w, "trigger → each update", r.Latency)
	writeLatency(w, "trigger → last update (per trigger)", r.Complete)
	writeLatency(w, "trigger send lag (client lateness)", r.SendLag)
	if r.TriggersWithout > 0 {
		fmt.Fprintf(w, "measured triggers of which no update arrived: %d\n", r.TriggersWithout)
	}
	fmt.Fprintf(w, "cpu during the window: server %.2f cores, clients %.2f cores; server RSS %s → %s; drain %.2fs; closed at the end %d\n",
		r.ServerCPUCores, r.ClientCPUCores, fmtBytes(float64(r.ServerRSSStart)), fmtBytes(float64(r.ServerRSSEnd)), r.DrainTime, r.Closed)
	writeReasons(w, "errors by code", r.Errors)
	if len(r.SetupErrors.Counts) > 0 {
		writeReasons(w, "setup errors", r.SetupErrors)
	}
	writeReasons(w, "connections dropped", r.Drops)
	if len(r.Events.Counts) > 0 {
		writeReasons(w, "unexpected events", r.Events)
	}
	writeMetrics(w, "server metrics over the window", r.ServerMetrics)
	if len(r.Integrity) == 0 {
		fmt.Fprintln(w, "integrity: ok (every update expected by a waiting visitor arrived once, in order)")
	}
	for _, v := range r.Integrity {
		fmt.Fprintf(w, "INTEGRITY VIOLATION: %s\n", v)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func (r *FanoutReport) title() string {
	return fmt.Sprintf("unigate-bench fanout: %d waiting visitors (%s), %s", r.Config.Visitors, r.Config.channelLabel(), r.Started.UTC().Format(time.RFC3339))
}

func (r *FanoutReport) charts() []chart {
	lat := chart{title: "Trigger → update latency over time (per second)", xLabel: "time (s)", yLabel: "latency (ms)"}
	thr := chart{title: "Position updates and triggers over time", xLabel: "time (s)", yLabel: "per second"}
	var p50, p99, del, trig series
	p50.name, p99.name, del.name, trig.name = "p50", "p99", "updates delivered/s", "triggers/s × recipients"
	for _, p := range r.Timeline {
		if p.Count > 0 {
			p50.x, p50.y = append(p50.x, p.At), append(p50.y, p.P50)
			p99.x, p99.y = append(p99.x, p.At), append(p99.y, p.P99)
		}
		del.x, del.y = append(del.x, p.At), append(del.y, p.Deliveries)
		trig.x, trig.y = append(trig.x, p.At), append(trig.y, p.Triggers*r.RecipientsPerTrigger)
	}
	lat.series = []series{p50, p99}
	thr.series = []series{del, trig}
	return []chart{lat, thr, curveChart("Latency, percentile curve",
		namedLatency{"trigger → each update", r.Latency}, namedLatency{"trigger → last update", r.Complete},
		namedLatency{"trigger send lag", r.SendLag})}
}
