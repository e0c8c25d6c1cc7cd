package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ChatReport is the result of RunChat.
type ChatReport struct {
	Scenario string     `json:"scenario"`
	Started  time.Time  `json:"started"`
	Machine  Machine    `json:"machine"`
	Config   ChatConfig `json:"config"`
	Setup    ChatSetup  `json:"setup"`

	// OfferedRate is the visitor messages due in the measured window per
	// second: the schedule, whatever the server did.
	OfferedRate float64 `json:"offered_msgs_per_s"`
	// DeliveredRate is the messages (both directions) received inside the
	// measured window per second; V2ARate and A2VRate split it.
	DeliveredRate float64 `json:"delivered_msgs_per_s"`
	V2ARate       float64 `json:"v2a_delivered_per_s"`
	A2VRate       float64 `json:"a2v_delivered_per_s"`

	V2A FlowResult `json:"v2a"`
	A2V FlowResult `json:"a2v"`
	// Latencies from the due time to the delivery at the other side
	// (visitor→agent, agent→visitor), to the Ack at the sender (Ack), and
	// from the due time to the write (SendLag: how late the client was).
	V2ALatency Latency `json:"v2a_latency"`
	A2VLatency Latency `json:"a2v_latency"`
	AckLatency Latency `json:"ack_latency"`
	SendLag    Latency `json:"send_lag"`
	// The same two latencies measured from the moment the client wrote
	// the message ("uncorrected"): they leave out the client's lateness
	// and coordinated omission, so they only bound the server's share.
	V2AFromWrite Latency `json:"v2a_latency_from_write"`
	A2VFromWrite Latency `json:"a2v_latency_from_write"`
	// MaxBehind is the largest number of messages due but not yet written
	// seen in one worker's progress: a client that cannot keep up.
	MaxBehind int64   `json:"max_behind"`
	DrainTime float64 `json:"drain_s"`
	// Pings counts the server's WebSocket pings the clients answered;
	// PongErrors the pongs that could not be written.
	Pings      int64 `json:"pings"`
	PongErrors int64 `json:"pong_errors"`

	Errors      Reasons `json:"errors"`
	SetupErrors Reasons `json:"setup_errors"`
	Drops       Reasons `json:"drops"`
	Events      Reasons `json:"unexpected_events"`
	WriteErrors Reasons `json:"write_errors"`

	// Server and client CPU use during the measured window, in cores
	// (CPU seconds per second), and the server's RSS.
	ServerCPUCores float64 `json:"server_cpu_cores"`
	ClientCPUCores float64 `json:"client_cpu_cores"`
	ServerRSSStart int64   `json:"server_rss_start_bytes"`
	ServerRSSEnd   int64   `json:"server_rss_end_bytes"`
	// ServerMetrics is the change of every unigate_* series over the
	// measured window.
	ServerMetrics map[string]float64 `json:"server_metrics_window_delta,omitempty"`
	// Timeline has one point per second of the run, from the workers'
	// progress reports.
	Timeline []ChatPoint `json:"timeline"`
	// Integrity lists the integrity violations; empty means none.
	Integrity []string `json:"integrity_violations"`
	Notes     []string `json:"notes,omitempty"`
}

// ChatPoint is one second of a chat run: rates over the last second and
// the backlog at its end.
type ChatPoint struct {
	At        float64 `json:"at_s"`
	Phase     string  `json:"phase"`
	Sent      float64 `json:"sent_per_s"`
	Acked     float64 `json:"acked_per_s"`
	V2A       float64 `json:"v2a_delivered_per_s"`
	A2V       float64 `json:"a2v_delivered_per_s"`
	Behind    int64   `json:"behind"`  // due, not yet written
	Unacked   int64   `json:"unacked"` // written, not yet acked
	Errors    int64   `json:"errors"`  // cumulative
	Dropped   int64   `json:"dropped"` // cumulative
	Connected int64   `json:"connected"`
	// Count, P50 and P99 describe the visitor→agent latencies (from the
	// due time) of the deliveries reported during this second, warmup
	// included.
	Count int64   `json:"v2a_count"`
	P50   float64 `json:"v2a_p50_ms"`
	P99   float64 `json:"v2a_p99_ms"`
}

// ReadTokens reads agent tokens, one per line, from path; blank lines and
// lines starting with '#' are skipped.
func ReadTokens(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// mintTokens runs the token command once per agent, 8 at a time.
func mintTokens(ctx context.Context, c *ChatConfig) ([]string, error) {
	return mintTokensWith(ctx, c.TokenCmd, c.AgentPrefix, c.Agents)
}

// mintTokensWith runs tokenCmd with "-id <prefix>N" appended for N in
// 0..agents-1, 8 at a time.
func mintTokensWith(ctx context.Context, tokenCmd []string, prefix string, agents int) ([]string, error) {
	tokens := make([]string, agents)
	errs := make([]error, agents)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range agents {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			args := append(append([]string(nil), tokenCmd[1:]...), "-id", prefix+strconv.Itoa(i))
			cmd := exec.CommandContext(tctx, tokenCmd[0], args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			tok := strings.TrimSpace(string(out))
			if err == nil && (tok == "" || strings.ContainsAny(tok, " \n")) {
				err = fmt.Errorf("printed %q, want one token", tok)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%w: token for agent %d: %s: %v %s", ErrConfig, i, strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
				return
			}
			tokens[i] = tok
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return tokens, nil
}

// job returns worker i's part of the run.
func (c *ChatConfig) job(i int, tokens []string, deadline time.Time) *chatJob {
	job := &chatJob{
		Common:        c.Common,
		Index:         i,
		Convs:         share(c.Conversations, c.Procs, i),
		ConvOffset:    offset(c.Conversations, c.Procs, i),
		TotalConvs:    c.Conversations,
		Rate:          c.Rate,
		AgentCapacity: c.AgentCapacity,
		Skill:         c.skillFor(i),
		Size:          c.Size,
		Reply:         c.Reply,
		Warmup:        c.Warmup,
		Duration:      c.Duration,
		Drain:         c.Drain,
		SetupTimeout:  c.SetupTimeout,
		ConnectRate:   c.ConnectRate / float64(c.Procs),
		Deadline:      deadline.UnixNano(),
	}
	job.Progress = nil
	ao := offset(c.Agents, c.Procs, i)
	for n := ao; n < ao+share(c.Agents, c.Procs, i); n++ {
		job.Agents = append(job.Agents, agentSpec{ID: c.AgentPrefix + strconv.Itoa(n), Token: tokens[n]})
	}
	return job
}

// RunChat runs the chat scenario and returns its report. The report is
// returned with most errors too, as complete as it got; ErrIntegrity comes
// with a complete report.
func RunChat(ctx context.Context, c ChatConfig) (*ChatReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &ChatReport{Scenario: "chat", Started: start, Machine: DescribeMachine(c.ServerPID), Config: c}
	tokens := c.Tokens
	if len(tokens) == 0 {
		if c.Progress != nil {
			fmt.Fprintf(c.Progress, "minting %d agent tokens with %s\n", c.Agents, strings.Join(c.TokenCmd, " "))
		}
		var err error
		if tokens, err = mintTokens(ctx, &c); err != nil {
			return rep, err
		}
	}

	deadline := time.Now().Add(c.SetupTimeout + c.Warmup + c.Duration + c.Drain + 2*time.Minute)
	pool, err := startWorkers(&c.Common, c.Procs)
	if err != nil {
		return rep, err
	}
	defer pool.stop(15 * time.Second)
	for i, p := range pool.procs {
		if err := p.send(wire{Cmd: cmdChat, Chat: c.job(i, tokens, deadline)}); err != nil {
			return rep, err
		}
	}

	live := newLiveProgress[chatProgress](c.Procs)
	sum, takeInterval := live.sum, live.takeInterval
	co := &coordinator{pool: pool}
	co.progress = func(ev workerEvent) {
		if p := ev.w.ChatProgress; p != nil {
			q := *p
			q.Interval = nil
			live.set(ev.idx, q, p.Interval)
		}
	}
	var prev chatProgress
	prevAt := time.Now()
	stopLine := startProgressLine(c.Progress, start, func() string {
		s := sum()
		dt := time.Since(prevAt).Seconds()
		prevAt = time.Now()
		rate := func(a, b int64) float64 { return float64(a-b) / dt }
		n, p50, p99 := takeInterval()
		rep.Timeline = append(rep.Timeline, ChatPoint{
			Count: n, P50: p50, P99: p99,
			At: time.Since(start).Seconds(), Phase: s.Phase,
			Sent: rate(s.Sent, prev.Sent), Acked: rate(s.Acked, prev.Acked),
			V2A: rate(s.Delivered, prev.Delivered), A2V: rate(s.RepliesDeliv, prev.RepliesDeliv),
			Behind: s.Behind, Unacked: max(s.Unanswered, 0), Errors: s.Errors, Dropped: s.Dropped,
			Connected: s.AgentsOnline + s.Visitors,
		})
		line := fmt.Sprintf("%-8s", s.Phase)
		switch s.Phase {
		case "setup", "visitors", "assign", "ready", "":
			line += fmt.Sprintf(" agents online %d/%d  visitors %d/%d  assigned %d/%d",
				s.AgentsOnline, c.Agents, s.Visitors, c.Conversations, s.Assigned, c.Conversations)
		default:
			line += fmt.Sprintf(" sent %6.0f/s  acked %6.0f/s  v→a %6.0f/s  a→v %5.0f/s  behind %d  unacked %d  undelivered %d  errors %d  dropped %d",
				rate(s.Sent, prev.Sent), rate(s.Acked, prev.Acked), rate(s.Delivered, prev.Delivered),
				rate(s.RepliesDeliv, prev.RepliesDeliv), s.Behind, max(s.Unanswered, 0), max(s.Undelivered, 0), s.Errors, s.Dropped)
		}
		prev = s
		return line
	})
	defer stopLine()

	ready := 0
	err = co.pump(ctx, c.SetupTimeout+30*time.Second, func(ev workerEvent) bool {
		if ev.w.Ev == evReady {
			co.progress(workerEvent{idx: ev.idx, w: wire{ChatProgress: ev.w.ChatProgress}})
			ready++
		}
		return ready == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("%w: %v", ErrSetup, err)
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

	if err := co.teardownWhenDrained(ctx, pool.procs, c.Drain+time.Minute); err != nil {
		return rep, err
	}

	var col chatCollector
	results := 0
	err = co.pump(ctx, c.Drain+time.Minute, func(ev workerEvent) bool {
		r := ev.w.ChatResult
		if ev.w.Ev != evResult || r == nil {
			return false
		}
		results++
		col.add(rep, r)
		return results == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("collecting results: %w", err)
	}
	col.finish(rep, c.Duration)
	rep.Integrity = integrity(rep)
	if rep.MaxBehind > int64(c.Rate/10) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the clients fell behind the schedule by up to %d messages: the load generator, not only the server, limited the run", rep.MaxBehind))
	}
	if len(rep.Integrity) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(rep.Integrity, "; "))
	}
	return rep, nil
}

// teardownWhenDrained waits until each chat worker in procs has drained
// (its schedule sent and answered) and then tells them all to tear down:
// no worker closes its conversations while another's last messages are
// still in flight (chatworker.go).
func (co *coordinator) teardownWhenDrained(ctx context.Context, procs []*workerProc, timeout time.Duration) error {
	drained := 0
	if err := co.pump(ctx, timeout, func(ev workerEvent) bool {
		if ev.w.Ev == evDrained {
			drained++
		}
		return drained == len(procs)
	}); err != nil {
		return fmt.Errorf("waiting for the drain: %w", err)
	}
	var errs []error
	for _, p := range procs {
		errs = append(errs, p.send(wire{Cmd: cmdTeardown}))
	}
	return errors.Join(errs...)
}

// chatCollector merges the chat workers' results into a ChatReport.
type chatCollector struct {
	v2a, a2v, ack, lag, v2aSvc, a2vSvc []histSnapshot
}

// add merges one worker's result into rep.
func (col *chatCollector) add(rep *ChatReport, r *chatResult) {
	rep.Setup.Agents += r.Setup.Agents
	rep.Setup.Visitors += r.Setup.Visitors
	rep.Setup.Assigned += r.Setup.Assigned
	rep.Setup.Seconds = max(rep.Setup.Seconds, r.Setup.Seconds)
	if rep.Setup.CapacityGranted == 0 || r.Setup.CapacityGranted < rep.Setup.CapacityGranted {
		rep.Setup.CapacityGranted = r.Setup.CapacityGranted
	}
	rep.Setup.StaleConversations += r.Setup.StaleConversations
	rep.Setup.StaleClosed += r.Setup.StaleClosed
	rep.Setup.StaleReplayed += r.Setup.StaleReplayed
	rep.Setup.Foreign += r.Setup.Foreign
	rep.Setup.Closed += r.Setup.Closed
	rep.V2A.add(r.V2A)
	rep.A2V.add(r.A2V)
	col.v2a, col.a2v = append(col.v2a, r.V2AHist), append(col.a2v, r.A2VHist)
	col.ack, col.lag = append(col.ack, r.AckHist), append(col.lag, r.SendLag)
	col.v2aSvc, col.a2vSvc = append(col.v2aSvc, r.V2ASvc), append(col.a2vSvc, r.A2VSvc)
	rep.Errors.merge(r.Errors)
	rep.SetupErrors.merge(r.SetupErrors)
	rep.Drops.merge(r.Drops)
	rep.Events.merge(r.Events)
	rep.WriteErrors.merge(r.WriteErrors)
	rep.MaxBehind = max(rep.MaxBehind, r.MaxBehind)
	rep.DrainTime = max(rep.DrainTime, r.DrainTime)
	rep.Pings += r.Pings
	rep.PongErrors += r.PongErrors
}

// finish computes the latencies and rates of rep over a measured window
// of duration.
func (col *chatCollector) finish(rep *ChatReport, duration time.Duration) {
	rep.V2ALatency = summarize(mergeHists(col.v2a))
	rep.A2VLatency = summarize(mergeHists(col.a2v))
	rep.AckLatency = summarize(mergeHists(col.ack))
	rep.SendLag = summarize(mergeHists(col.lag))
	rep.V2AFromWrite = summarize(mergeHists(col.v2aSvc))
	rep.A2VFromWrite = summarize(mergeHists(col.a2vSvc))
	d := duration.Seconds()
	rep.OfferedRate = float64(rep.V2A.Offered) / d
	rep.V2ARate = float64(rep.V2A.DeliveredInWindow) / d
	rep.A2VRate = float64(rep.A2V.DeliveredInWindow) / d
	rep.DeliveredRate = rep.V2ARate + rep.A2VRate
}

// integrity lists the integrity violations of a report.
func integrity(r *ChatReport) []string {
	var out []string
	for _, d := range []struct {
		name string
		f    FlowResult
	}{{"visitor→agent", r.V2A}, {"agent→visitor", r.A2V}} {
		for _, v := range []struct {
			what string
			n    int64
		}{
			{"lost (acked, never delivered)", d.f.Lost},
			{"duplicates", d.f.Duplicates},
			{"out of order", d.f.OutOfOrder},
			{"delivered but never acked", d.f.DeliveredUnacked},
			{"refused with an error but delivered", d.f.RefusedDelivered},
			{"unanswered (no ack, no error)", d.f.Unanswered},
			{"duplicate acks", d.f.DuplicateAcks},
			{"sequence regressions", d.f.SeqRegressions},
			{"misrouted", d.f.Misrouted},
			{"corrupt", d.f.Corrupt},
		} {
			if v.n > 0 {
				out = append(out, fmt.Sprintf("%s: %d %s", d.name, v.n, v.what))
			}
		}
	}
	if r.V2ALatency.Count != r.V2A.DeliveredMeasured {
		out = append(out, fmt.Sprintf("visitor→agent histogram holds %d values for %d measured deliveries", r.V2ALatency.Count, r.V2A.DeliveredMeasured))
	}
	if r.A2VLatency.Count != r.A2V.DeliveredMeasured {
		out = append(out, fmt.Sprintf("agent→visitor histogram holds %d values for %d measured deliveries", r.A2VLatency.Count, r.A2V.DeliveredMeasured))
	}
	return out
}

// WriteSummary writes a readable summary of the report.
func (r *ChatReport) WriteSummary(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "unigate-bench chat: %d conversations, %d agents × %d, %.0f msg/s open loop, %v (+%v warmup), %d-byte texts, reply %.2f, %d workers, %s, %s\n",
		c.Conversations, c.Agents, c.AgentCapacity, c.Rate, c.Duration, c.Warmup, c.Size, c.Reply, c.Procs, c.channelLabel(), c.URL)
	writeMachine(w, r.Machine)
	if r.V2A.Sent == 0 && r.Setup.Agents == 0 {
		fmt.Fprintln(w, "no message was sent: the run stopped during the setup (see the error)")
		return
	}
	s := r.Setup
	fmt.Fprintf(w, "setup: %d agents (capacity granted %d), %d visitors, %d assigned in %.1fs; stale conversations %d (closed %d, %d messages replayed), foreign %d; closed at the end %d\n",
		s.Agents, s.CapacityGranted, s.Visitors, s.Assigned, s.Seconds, s.StaleConversations, s.StaleClosed, s.StaleReplayed, s.Foreign, s.Closed)
	fmt.Fprintf(w, "offered %.0f msg/s; delivered %.0f msg/s (visitor→agent %.0f/s, agent→visitor %.0f/s)\n",
		r.OfferedRate, r.DeliveredRate, r.V2ARate, r.A2VRate)
	for _, d := range []struct {
		name    string
		f       FlowResult
		l, svcl Latency
	}{{"visitor→agent", r.V2A, r.V2ALatency, r.V2AFromWrite}, {"agent→visitor", r.A2V, r.A2VLatency, r.A2VFromWrite}} {
		fmt.Fprintf(w, "%s: sent %d, acked %d, refused %d, unconfirmed %d (stored %d), unanswered %d, delivered %d (measured %d); lost %d, duplicates %d, out of order %d\n",
			d.name, d.f.Sent, d.f.Acked, d.f.Refused, d.f.Unconfirmed, d.f.UnconfirmedStored, d.f.Unanswered, d.f.Delivered, d.f.DeliveredMeasured, d.f.Lost, d.f.Duplicates, d.f.OutOfOrder)
		writeLatency(w, "  latency from due time", d.l)
		writeLatency(w, "  latency from write   ", d.svcl)
	}
	writeLatency(w, "ack latency (visitor)", r.AckLatency)
	writeLatency(w, "send lag (client lateness)", r.SendLag)
	fmt.Fprintf(w, "cpu during the window: server %.2f cores, clients %.2f cores; server RSS %s → %s; drain %.2fs; max behind %d\n",
		r.ServerCPUCores, r.ClientCPUCores, fmtBytes(float64(r.ServerRSSStart)), fmtBytes(float64(r.ServerRSSEnd)), r.DrainTime, r.MaxBehind)
	writeReasons(w, "errors by code", r.Errors)
	if len(r.SetupErrors.Counts) > 0 {
		writeReasons(w, "setup errors", r.SetupErrors)
	}
	writeReasons(w, "connections dropped", r.Drops)
	if len(r.Events.Counts) > 0 {
		writeReasons(w, "unexpected events", r.Events)
	}
	if len(r.WriteErrors.Counts) > 0 {
		writeReasons(w, "write errors", r.WriteErrors)
	}
	writeMetrics(w, "server metrics over the window", r.ServerMetrics)
	if len(r.Integrity) == 0 {
		fmt.Fprintln(w, "integrity: ok (no loss, duplicates, reordering, misrouting)")
	}
	for _, v := range r.Integrity {
		fmt.Fprintf(w, "INTEGRITY VIOLATION: %s\n", v)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func writeLatency(w io.Writer, title string, l Latency) {
	fmt.Fprintf(w, "%s: n=%d p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms",
		title, l.Count, l.P50, l.P90, l.P99, l.P999, l.Max)
	if l.Saturated > 0 {
		fmt.Fprintf(w, " (%d above 60s)", l.Saturated)
	}
	fmt.Fprintln(w)
}
