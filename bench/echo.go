package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// EchoConfig configures RunEcho: any WebSocket echo server (Unigate's
// netpoll echo example, the baselines in bench/baselines) driven the same
// way, so that reports of different servers compare figure by figure.
type EchoConfig struct {
	Common
	// Label names the server under test in the report ("netpoll",
	// "gorilla", "nbio" ...). Optional.
	Label string `json:"label,omitempty"`
	// Conns is the number of connections. Default 100.
	Conns int `json:"conns"`
	// Size is the message size in bytes, at least 24 (binary) or 48
	// (text): the message carries its sequence number, due time and write
	// time. Default 256.
	Size int `json:"size"`
	// Text sends text messages (the server checks UTF-8) instead of
	// binary ones.
	Text bool `json:"text"`
	// Rates are the open-loop steps, messages per second over all
	// connections, increasing: connection g of C sends its k-th message of
	// a step at T0 + g/rate + k·C/rate, whatever happened before.
	// Default: one step at 10,000/s. Empty with ClosedDuration set: the
	// closed loop only.
	Rates []float64 `json:"rates"`
	// Warmup and Duration are the unmeasured start and the measured part
	// of each open-loop step. Defaults 2s and 10s; negative Warmup means
	// none.
	Warmup   time.Duration `json:"warmup_ns"`
	Duration time.Duration `json:"duration_ns"`
	// Saturation is the echoed/offered fraction under which a step is
	// saturated (as is a step that loses messages). Default 0.98.
	Saturation float64 `json:"saturation"`
	// Continue runs the remaining steps after a saturated one.
	Continue bool `json:"continue"`
	// Window and ClosedDuration configure the closed-loop step run after
	// the open-loop ones: every connection keeps Window messages in
	// flight (one sent for each echo) for ClosedDuration after a warmup of
	// ClosedWarmup: the server's maximum throughput with this many
	// connections. ClosedDuration 0 (default): no closed loop. Window
	// default 4; ClosedWarmup default 1s.
	Window         int           `json:"window"`
	ClosedWarmup   time.Duration `json:"closed_warmup_ns"`
	ClosedDuration time.Duration `json:"closed_duration_ns"`
	// Drain bounds the wait for the echoes after each step. Default 5s.
	Drain time.Duration `json:"drain_ns"`
	// Pause is the wait between two steps. Default 1s.
	Pause time.Duration `json:"pause_ns"`
	// ConnectRate paces the connections, per second over all workers.
	// Default 1000. MaxInflight bounds the attempts in progress per
	// worker. Default 256.
	ConnectRate float64 `json:"connect_rate"`
	MaxInflight int     `json:"max_inflight"`
}

func (c *EchoConfig) setDefaults() error {
	if err := c.Common.setTransportDefaults(); err != nil {
		return err
	}
	if c.Conns <= 0 {
		c.Conns = 100
	}
	if c.Procs > c.Conns {
		return fmt.Errorf("%w: -procs %d exceeds -conns %d", ErrConfig, c.Procs, c.Conns)
	}
	if c.Size <= 0 {
		c.Size = 256
	}
	if n := echoHeaderSize(c.Text); c.Size < n || c.Size > echoMaxSize {
		return fmt.Errorf("%w: -size %d: want %d..%d bytes", ErrConfig, c.Size, n, echoMaxSize)
	}
	if len(c.Rates) == 0 && c.ClosedDuration <= 0 {
		c.Rates = []float64{10000}
	}
	for i, r := range c.Rates {
		if r <= 0 || (i > 0 && r <= c.Rates[i-1]) {
			return fmt.Errorf("%w: rates %v: want positive, increasing", ErrConfig, c.Rates)
		}
		if r/float64(c.Conns) > 10000 {
			return fmt.Errorf("%w: %.0f msg/s over %d connections: more than one message per 100µs per connection", ErrConfig, r, c.Conns)
		}
	}
	switch {
	case c.Warmup == 0:
		c.Warmup = 2 * time.Second
	case c.Warmup < 0:
		c.Warmup = 0
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Saturation <= 0 || c.Saturation > 1 {
		c.Saturation = 0.98
	}
	if c.Window <= 0 {
		c.Window = 4
	}
	if c.Window > 1024 {
		return fmt.Errorf("%w: -window %d: at most 1024", ErrConfig, c.Window)
	}
	if c.ClosedWarmup <= 0 {
		c.ClosedWarmup = time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.Pause <= 0 {
		c.Pause = time.Second
	}
	if c.ConnectRate <= 0 {
		c.ConnectRate = 1000
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 256
	}
	return nil
}

// EchoStep is the result of one step of an echo run.
type EchoStep struct {
	// Rate is the offered rate of an open-loop step; 0 for the closed
	// loop.
	Rate float64 `json:"rate"`
	// Offered is the messages due in the measured window per second
	// (open loop). Echoed is the echoes received inside the measured
	// window per second: the throughput.
	Offered    float64 `json:"offered_msgs_per_s"`
	Echoed     float64 `json:"echoed_msgs_per_s"`
	EchoedFrac float64 `json:"echoed_fraction,omitempty"`
	// Sent, EchoedTotal: every message of the step and the distinct
	// echoes of them; Measured the ones the latency histogram holds.
	Sent        int64 `json:"sent"`
	EchoedTotal int64 `json:"echoed"`
	Measured    int64 `json:"measured"`
	InWindow    int64 `json:"in_window"`
	// Lost, Duplicates, OutOfOrder, Corrupt, Unexpected must be 0.
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`
	OutOfOrder int64 `json:"out_of_order"`
	Corrupt    int64 `json:"corrupt"`
	Unexpected int64 `json:"unexpected"`
	Late       int64 `json:"late"`
	// Latency is from the due time to the echo (open loop; no
	// coordinated omission) or from the write to the echo (closed loop).
	Latency   Latency `json:"latency"`
	FromWrite Latency `json:"latency_from_write"`
	SendLag   Latency `json:"send_lag"`
	MaxBehind int64   `json:"max_behind"`
	DrainTime float64 `json:"drain_s"`
	// Server and client CPU during the measured window (cores), and the
	// server's CPU time per echoed message.
	ServerCPUCores  float64 `json:"server_cpu_cores"`
	ClientCPUCores  float64 `json:"client_cpu_cores"`
	ServerCPUPerMsg float64 `json:"server_cpu_us_per_msg"`
	ServerRSSEnd    int64   `json:"server_rss_end_bytes"`
	Saturated       bool    `json:"saturated"`
	WriteErrors     Reasons `json:"write_errors"`
}

// EchoPoint is one second of an echo run.
type EchoPoint struct {
	At     float64 `json:"at_s"`
	Phase  string  `json:"phase"`
	Sent   float64 `json:"sent_per_s"`
	Echoed float64 `json:"echoed_per_s"`
	Behind int64   `json:"behind"`
	Count  int64   `json:"count"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
}

// EchoReport is the result of RunEcho.
type EchoReport struct {
	Scenario string     `json:"scenario"`
	Label    string     `json:"label,omitempty"`
	Started  time.Time  `json:"started"`
	Machine  Machine    `json:"machine"`
	Config   EchoConfig `json:"config"`

	Connected      int64   `json:"connected"`
	ConnectSeconds float64 `json:"connect_s"`
	ConnectLatency Latency `json:"connect_latency"`
	// Steps are the open-loop steps run, in order.
	Steps []EchoStep `json:"steps"`
	// SaturationRate is the first saturated step's rate (0: none was);
	// MaxSustained the highest echoed rate of a step that was not
	// saturated.
	SaturationRate float64 `json:"saturation_rate"`
	MaxSustained   float64 `json:"max_sustained_msgs_per_s"`
	// ClosedLoop is the closed-loop step, when run.
	ClosedLoop  *EchoStep   `json:"closed_loop,omitempty"`
	Drops       Reasons     `json:"drops"`
	Failures    Reasons     `json:"connect_failures"`
	ClosedClean int64       `json:"closed_clean"`
	Pings       int64       `json:"pings"`
	Integrity   []string    `json:"integrity_violations"`
	Notes       []string    `json:"notes,omitempty"`
	Timeline    []EchoPoint `json:"timeline"`
}

// RunEcho runs the echo scenario and returns its report (with most errors
// too, as complete as it got; ErrIntegrity with a complete report).
func RunEcho(ctx context.Context, c EchoConfig) (*EchoReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &EchoReport{Scenario: "echo", Label: c.Label, Started: start, Machine: DescribeMachine(c.ServerPID), Config: c}
	stepTime := c.Warmup + c.Duration + c.Drain + c.Pause + time.Second
	total := time.Duration(len(c.Rates))*stepTime + c.ClosedWarmup + c.ClosedDuration + c.Drain
	connectTime := time.Duration(float64(c.Conns)/c.ConnectRate*float64(time.Second)) + c.Timeout
	deadline := time.Now().Add(2*connectTime + total + 2*time.Minute)
	pool, err := startWorkers(&c.Common, c.Procs)
	if err != nil {
		return rep, err
	}
	defer pool.stop(10 * time.Second)
	for i, p := range pool.procs {
		job := &echoJob{
			Common:         c.Common,
			Index:          i,
			Conns:          share(c.Conns, c.Procs, i),
			ConnOffset:     offset(c.Conns, c.Procs, i),
			TotalConns:     c.Conns,
			Size:           c.Size,
			Text:           c.Text,
			Rates:          c.Rates,
			Warmup:         c.Warmup,
			Duration:       c.Duration,
			Drain:          c.Drain,
			Window:         c.Window,
			ClosedWarmup:   c.ClosedWarmup,
			ClosedDuration: c.ClosedDuration,
			ConnectRate:    c.ConnectRate / float64(c.Procs),
			MaxInflight:    c.MaxInflight,
			Deadline:       deadline.UnixNano(),
		}
		job.Progress = nil
		if err := p.send(wire{Cmd: cmdEcho, Echo: job}); err != nil {
			return rep, err
		}
	}

	live := newLiveProgress[echoProgress](c.Procs)
	sum := live.sum
	co := &coordinator{pool: pool}
	co.progress = func(ev workerEvent) {
		if p := ev.w.EchoProgress; p != nil {
			q := *p
			q.Interval = nil
			live.set(ev.idx, q, p.Interval)
		}
	}
	var timelineMu sync.Mutex
	var prev echoProgress
	prevAt := time.Now()
	stopLine := startProgressLine(c.Progress, start, func() string {
		s := sum()
		dt := time.Since(prevAt).Seconds()
		prevAt = time.Now()
		n, p50, p99 := live.takeInterval()
		pt := EchoPoint{At: time.Since(start).Seconds(), Phase: s.Phase, Sent: float64(s.Sent-prev.Sent) / dt,
			Echoed: float64(s.Echoed-prev.Echoed) / dt, Behind: s.Behind, Count: n, P50: p50, P99: p99}
		timelineMu.Lock()
		rep.Timeline = append(rep.Timeline, pt)
		timelineMu.Unlock()
		prev = s
		if s.Phase == "connect" {
			return fmt.Sprintf("%-16s connected %d/%d  failed %d", s.Phase, s.Connected, c.Conns, s.Failed)
		}
		return fmt.Sprintf("%-16s sent %7.0f/s  echoed %7.0f/s  p50 %.3f ms  p99 %.3f ms  behind %d  dropped %d",
			s.Phase, pt.Sent, pt.Echoed, p50, p99, s.Behind, s.Dropped)
	})
	defer stopLine()

	ready := 0
	err = co.pump(ctx, 2*connectTime+30*time.Second, func(ev workerEvent) bool {
		if ev.w.Ev == evReady {
			co.progress(workerEvent{idx: ev.idx, w: wire{EchoProgress: ev.w.EchoProgress}})
			ready++
		}
		return ready == c.Procs
	})
	rep.ConnectSeconds = time.Since(start).Seconds()
	if err != nil {
		return rep, fmt.Errorf("%w: connecting: %v", ErrSetup, err)
	}
	rep.Connected = sum().Connected

	// runStep runs step i and merges the workers' accounts of it.
	runStep := func(i int, rate float64, warmup, duration time.Duration) (EchoStep, error) {
		st := EchoStep{Rate: rate}
		ws, err := runWindowCmd(ctx, &c.Common, start, pool, co, warmup, duration, wire{Cmd: cmdStart, Step: i})
		if err != nil {
			return st, err
		}
		var lat, fromW, lag []histSnapshot
		results := 0
		err = co.pump(ctx, c.Drain+time.Minute, func(ev workerEvent) bool {
			r := ev.w.EchoStep
			if ev.w.Ev != evStep || r == nil || r.Step != i {
				return false
			}
			results++
			st.Sent += r.Sent
			st.EchoedTotal += r.Echoed
			st.InWindow += r.InWindow
			st.Lost += r.Lost
			st.Duplicates += r.Duplicates
			st.OutOfOrder += r.OutOfOrder
			st.Corrupt += r.Corrupt
			st.Unexpected += r.Unexpected
			st.Late += r.Late
			st.Offered += float64(r.Offered)
			st.MaxBehind = max(st.MaxBehind, r.MaxBehind)
			st.DrainTime = max(st.DrainTime, r.Drain)
			st.WriteErrors.merge(r.WriteErrors)
			lat, fromW, lag = append(lat, r.Latency), append(fromW, r.FromWrite), append(lag, r.SendLag)
			st.Measured += r.Latency.Recorded
			return results == c.Procs
		})
		if err != nil {
			return st, fmt.Errorf("collecting step %d: %w", i, err)
		}
		d := duration.Seconds()
		st.Offered /= d
		st.Echoed = float64(st.InWindow) / d
		if st.Offered > 0 {
			st.EchoedFrac = st.Echoed / st.Offered
		}
		st.Latency = summarize(mergeHists(lat))
		st.FromWrite = summarize(mergeHists(fromW))
		st.SendLag = summarize(mergeHists(lag))
		st.ServerCPUCores, st.ClientCPUCores, st.ServerRSSEnd = ws.ServerCPUCores, ws.ClientCPUCores, ws.ServerRSSEnd
		if st.Echoed > 0 && c.ServerPID > 0 {
			st.ServerCPUPerMsg = st.ServerCPUCores / st.Echoed * 1e6
		}
		if ws.Note != "" && len(rep.Notes) == 0 {
			rep.Notes = append(rep.Notes, ws.Note)
		}
		return st, nil
	}

	for i, rate := range c.Rates {
		if i > 0 {
			if err := co.wait(ctx, c.Pause); err != nil {
				return rep, err
			}
		}
		st, err := runStep(i, rate, c.Warmup, c.Duration)
		if err != nil {
			return rep, err
		}
		st.Saturated = st.EchoedFrac < c.Saturation || st.Lost > 0 || st.WriteErrors.total() > 0
		rep.Steps = append(rep.Steps, st)
		if c.Progress != nil {
			fmt.Fprintf(c.Progress, "step %.0f msg/s: echoed %.0f/s, p50 %.3f ms, p99 %.3f ms, server %.2f cores%s\n",
				rate, st.Echoed, st.Latency.P50, st.Latency.P99, st.ServerCPUCores, map[bool]string{true: " (saturated)"}[st.Saturated])
		}
		if st.Saturated {
			if rep.SaturationRate == 0 {
				rep.SaturationRate = rate
			}
			if !c.Continue {
				break
			}
		} else {
			rep.MaxSustained = max(rep.MaxSustained, st.Echoed)
		}
	}
	if c.ClosedDuration > 0 {
		if len(c.Rates) > 0 {
			if err := co.wait(ctx, c.Pause); err != nil {
				return rep, err
			}
		}
		st, err := runStep(len(c.Rates), 0, c.ClosedWarmup, c.ClosedDuration)
		if err != nil {
			return rep, err
		}
		rep.ClosedLoop = &st
		if c.Progress != nil {
			fmt.Fprintf(c.Progress, "closed loop, window %d: echoed %.0f/s, p50 %.3f ms, p99 %.3f ms, server %.2f cores\n",
				c.Window, st.Echoed, st.Latency.P50, st.Latency.P99, st.ServerCPUCores)
		}
	}

	if err := pool.broadcast(wire{Cmd: cmdClose}); err != nil {
		return rep, err
	}
	var conn []histSnapshot
	results := 0
	err = co.pump(ctx, 30*time.Second, func(ev workerEvent) bool {
		r := ev.w.EchoResult
		if ev.w.Ev != evResult || r == nil {
			return false
		}
		results++
		conn = append(conn, r.Connect)
		rep.Drops.merge(r.Drops)
		rep.Failures.merge(r.Failures)
		rep.ClosedClean += r.ClosedClean
		rep.Pings += r.Pings
		return results == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("collecting results: %w", err)
	}
	rep.ConnectLatency = summarize(mergeHists(conn))
	rep.Integrity = echoIntegrity(rep)
	for _, st := range rep.Steps {
		if st.MaxBehind > int64(st.Rate/10) {
			rep.Notes = append(rep.Notes, fmt.Sprintf("at %.0f msg/s the clients fell behind the schedule by up to %d messages: the load generator, not only the server, limited the step", st.Rate, st.MaxBehind))
		}
	}
	if len(rep.Integrity) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(rep.Integrity, "; "))
	}
	return rep, nil
}

// echoIntegrity lists the integrity violations of a report.
func echoIntegrity(r *EchoReport) []string {
	var out []string
	steps := append([]EchoStep(nil), r.Steps...)
	if r.ClosedLoop != nil {
		steps = append(steps, *r.ClosedLoop)
	}
	for _, s := range steps {
		name := fmt.Sprintf("%.0f msg/s", s.Rate)
		if s.Rate == 0 {
			name = "closed loop"
		}
		for _, v := range []struct {
			what string
			n    int64
		}{{"lost", s.Lost}, {"duplicates", s.Duplicates}, {"out of order", s.OutOfOrder}, {"corrupt", s.Corrupt}, {"unexpected", s.Unexpected}} {
			if v.n > 0 {
				out = append(out, fmt.Sprintf("%s: %d %s", name, v.n, v.what))
			}
		}
		if s.Latency.Count != s.Measured {
			out = append(out, fmt.Sprintf("%s: histogram holds %d values for %d measured echoes", name, s.Latency.Count, s.Measured))
		}
	}
	if r.Drops.total() > 0 {
		out = append(out, fmt.Sprintf("%d connections dropped by the server: %v", r.Drops.total(), r.Drops.Counts))
	}
	return out
}

// WriteSummary writes a readable summary of the report.
func (r *EchoReport) WriteSummary(w io.Writer) {
	c := r.Config
	label := r.Label
	if label == "" {
		label = "server"
	}
	kind := "binary"
	if c.Text {
		kind = "text"
	}
	fmt.Fprintf(w, "unigate-bench echo (%s): %d connections, %d-byte %s messages, rates %v msg/s open loop, %v (+%v warmup) each, %d workers, %s\n",
		label, c.Conns, c.Size, kind, c.Rates, c.Duration, c.Warmup, c.Procs, c.URL)
	writeMachine(w, r.Machine)
	fmt.Fprintf(w, "connected %d in %.1fs; connect latency p50 %.2f ms, p99 %.2f ms\n", r.Connected, r.ConnectSeconds, r.ConnectLatency.P50, r.ConnectLatency.P99)
	fmt.Fprintf(w, "%10s %10s %10s %9s %9s %9s %9s %9s %9s %10s %8s\n",
		"rate", "offered/s", "echoed/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "srv cores", "srv µs/msg", "lost")
	steps := append([]EchoStep(nil), r.Steps...)
	if r.ClosedLoop != nil {
		steps = append(steps, *r.ClosedLoop)
	}
	for _, s := range steps {
		rate := fmt.Sprintf("%.0f", s.Rate)
		if s.Rate == 0 {
			rate = fmt.Sprintf("closed/%d", c.Window)
		}
		l := s.Latency
		sat := ""
		if s.Saturated {
			sat = "  saturated"
		}
		fmt.Fprintf(w, "%10s %10.0f %10.0f %9.3f %9.3f %9.3f %9.3f %9.3f %9.2f %10.2f %8d%s\n",
			rate, s.Offered, s.Echoed, l.P50, l.P90, l.P99, l.P999, l.Max, s.ServerCPUCores, s.ServerCPUPerMsg, s.Lost, sat)
	}
	fmt.Fprintln(w, "latency from the due time (open loop) or from the write (closed loop) to the echo")
	if r.SaturationRate > 0 {
		fmt.Fprintf(w, "saturation at %.0f msg/s; ", r.SaturationRate)
	}
	fmt.Fprintf(w, "highest sustained rate %.0f msg/s", r.MaxSustained)
	if r.ClosedLoop != nil {
		fmt.Fprintf(w, "; closed loop (window %d per connection) %.0f msg/s", c.Window, r.ClosedLoop.Echoed)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "closed cleanly %d of %d; server pings answered %d\n", r.ClosedClean, r.Connected, r.Pings)
	writeReasons(w, "connections dropped", r.Drops)
	if len(r.Integrity) == 0 {
		fmt.Fprintln(w, "integrity: ok (every message echoed once, in order, intact)")
	}
	for _, v := range r.Integrity {
		fmt.Fprintf(w, "INTEGRITY VIOLATION: %s\n", v)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func (r *EchoReport) title() string {
	label := r.Label
	if label == "" {
		label = r.Config.URL
	}
	return fmt.Sprintf("unigate-bench echo: %s, %d connections, %s", label, r.Config.Conns, r.Started.UTC().Format(time.RFC3339))
}

// charts of the echo report: latency and rates over time, one percentile
// curve per step.
func (r *EchoReport) charts() []chart {
	lat := chart{title: "Echo latency over time (per second: from the due time; closed loop: from the write)", xLabel: "time (s)", yLabel: "latency (ms)"}
	rates := chart{title: "Rates over time", xLabel: "time (s)", yLabel: "messages/s"}
	var p50, p99, sent, echoed series
	p50.name, p99.name, sent.name, echoed.name = "p50", "p99", "sent", "echoed"
	for _, p := range r.Timeline {
		if p.Count > 0 {
			p50.x, p50.y = append(p50.x, p.At), append(p50.y, p.P50)
			p99.x, p99.y = append(p99.x, p.At), append(p99.y, p.P99)
		}
		sent.x, sent.y = append(sent.x, p.At), append(sent.y, p.Sent)
		echoed.x, echoed.y = append(echoed.x, p.At), append(echoed.y, p.Echoed)
	}
	lat.series = []series{p50, p99}
	rates.series = []series{sent, echoed}
	var curves []namedLatency
	for _, s := range r.Steps {
		curves = append(curves, namedLatency{fmt.Sprintf("%.0f msg/s", s.Rate), s.Latency})
	}
	if r.ClosedLoop != nil {
		curves = append(curves, namedLatency{"closed loop", r.ClosedLoop.Latency})
	}
	return []chart{lat, curveChart("Echo latency percentile curves", curves...), rates}
}
