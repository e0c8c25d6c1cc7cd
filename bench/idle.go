package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// idleJob is one worker's part of an idle run.
type idleJob struct {
	Common
	Index       int     `json:"index"`
	Rate        float64 `json:"rate"` // this worker's connections per second
	MaxInflight int     `json:"max_inflight"`
	MaxFailures int     `json:"max_failures"`
	Deadline    int64   `json:"deadline"` // Unix nanoseconds: give up after this
}

// idleProgress is a worker's counters; the coordinator sums them.
type idleProgress struct {
	Attempts    int64 `json:"attempts"`
	Established int64 `json:"established"`
	Live        int64 `json:"live"`
	Inflight    int64 `json:"inflight"`
	Failed      int64 `json:"failed"`
	Dropped     int64 `json:"dropped"`
	Pings       int64 `json:"pings"`
	PongErrors  int64 `json:"pong_errors"`
}

func (p *idleProgress) add(o idleProgress) {
	p.Attempts += o.Attempts
	p.Established += o.Established
	p.Live += o.Live
	p.Inflight += o.Inflight
	p.Failed += o.Failed
	p.Dropped += o.Dropped
	p.Pings += o.Pings
	p.PongErrors += o.PongErrors
}

// idleResult is a worker's final report.
type idleResult struct {
	idleProgress
	Failures    Reasons      `json:"failures"`
	Drops       Reasons      `json:"drops"`
	Connect     histSnapshot `json:"connect"`
	ClosedClean int64        `json:"closed_clean"`
}

// idleWorker holds one worker's idle connections.
type idleWorker struct {
	job  *idleJob
	dial *dialer
	link *workerLink

	attempts, established, live, inflight, dropped, closedClean atomic.Int64
	failures, drops                                             *reasonCounter
	connect                                                     *latencyHist

	mu      sync.Mutex
	conns   []*wsConn
	closing atomic.Bool
	readers sync.WaitGroup
	n       int // connection attempts so far, for source-address round robin
}

func (w *idleWorker) progress() idleProgress {
	return idleProgress{
		Attempts:    w.attempts.Load(),
		Established: w.established.Load(),
		Live:        w.live.Load(),
		Inflight:    w.inflight.Load(),
		Failed:      w.failures.total(),
		Dropped:     w.dropped.Load(),
		Pings:       w.dial.pings.Load(),
		PongErrors:  w.dial.pongErrors.Load(),
	}
}

func runIdleWorker(ctx context.Context, job *idleJob, cmds <-chan wire, link *workerLink) error {
	if err := job.Common.setDefaults(); err != nil {
		return err
	}
	d, err := newDialer(&job.Common, 1024, &writePool{})
	if err != nil {
		return err
	}
	w := &idleWorker{
		job:      job,
		dial:     d,
		link:     link,
		failures: newReasonCounter(),
		drops:    newReasonCounter(),
		connect:  newLatencyHist(),
	}
	// Progress comes from its own goroutine: ramp blocks the loop below.
	defer everySecond(func() {
		p := w.progress()
		link.emit(wire{Ev: evProgress, IdleProgress: &p})
	})()
	defer w.closeAll(5 * time.Second)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("idle worker %d: %w", job.Index, context.Cause(ctx))
		case c, ok := <-cmds:
			if !ok {
				return fmt.Errorf("idle worker %d: coordinator went away", job.Index)
			}
			switch c.Cmd {
			case cmdTarget:
				w.ramp(ctx, c.Target)
				p := w.progress()
				link.emit(wire{Ev: evReached, IdleProgress: &p})
			case cmdClose:
				w.closeAll(5 * time.Second)
				r := idleResult{
					idleProgress: w.progress(),
					Failures:     w.failures.export(),
					Drops:        w.drops.export(),
					Connect:      w.connect.snapshot(),
					ClosedClean:  w.closedClean.Load(),
				}
				link.emit(wire{Ev: evResult, IdleResult: &r})
				return nil
			}
		}
	}
}

// ramp opens connections at the worker's rate until target are live, the
// failure budget is spent, or the ramp's own deadline passes.
func (w *idleWorker) ramp(ctx context.Context, target int) {
	need := target - int(w.live.Load())
	if need <= 0 {
		return
	}
	interval := time.Duration(float64(time.Second) / w.job.Rate)
	// Twice the planned time, plus a full attempt timeout, plus slack.
	budget := 2*time.Duration(need)*interval + w.job.Timeout + 10*time.Second
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	sem := make(chan struct{}, w.job.MaxInflight)
	var attempts sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i := 0; int(w.live.Load()+w.inflight.Load()) < target; i++ {
		if w.failures.total() >= int64(w.job.MaxFailures) {
			break
		}
		// Open loop on the start times; a slow server shows as inflight
		// attempts piling up to MaxInflight, then as a lower rate.
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		w.inflight.Add(1)
		w.attempts.Add(1)
		n := w.job.Index + w.n*w.job.Procs
		w.n++
		attempts.Go(func() {
			defer func() { <-sem }()
			w.attempt(ctx, n)
		})
	}
	attempts.Wait()
}

// attempt opens connection n; on success its goroutine stays as the
// connection's reader.
func (w *idleWorker) attempt(ctx context.Context, n int) {
	t0 := time.Now()
	c, err := w.dial.dial(ctx, n)
	if err == nil {
		_, err = c.hello("", t0.Add(w.job.Timeout))
		if err != nil {
			_ = c.c.Close()
		}
	}
	if err != nil {
		w.inflight.Add(-1)
		w.failures.addErr(err)
		return
	}
	w.connect.record(time.Since(t0))
	w.mu.Lock()
	if w.closing.Load() {
		w.mu.Unlock()
		w.inflight.Add(-1)
		_ = c.c.Close()
		return
	}
	w.conns = append(w.conns, c)
	w.readers.Add(1)
	w.mu.Unlock()
	w.live.Add(1)
	w.established.Add(1)
	w.inflight.Add(-1)
	go w.read(c)
}

// read consumes the connection until it ends; gorilla answers pings from
// inside NextReader.
func (w *idleWorker) read(c *wsConn) {
	defer w.readers.Done()
	defer w.live.Add(-1)
	for {
		_, _, err := c.c.NextReader()
		if err == nil {
			continue
		}
		if w.closing.Load() {
			if websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				w.closedClean.Add(1)
			}
			return
		}
		w.dropped.Add(1)
		w.drops.addErr(err)
		_ = c.c.Close()
		return
	}
}

// closeAll sends a close frame on every connection, waits up to grace for
// the server's answers, then closes the sockets. Idempotent.
func (w *idleWorker) closeAll(grace time.Duration) {
	w.mu.Lock()
	if w.closing.Swap(true) {
		w.mu.Unlock()
		return
	}
	conns := w.conns
	w.mu.Unlock()
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bench done")
	for _, c := range conns {
		_ = c.c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	}
	done := make(chan struct{})
	go func() { w.readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
	}
	for _, c := range conns {
		_ = c.c.Close()
	}
	<-done
}

// Sample is the state of the server and the kernel at one moment.
type Sample struct {
	// At is the time since the start of the run, in seconds.
	At float64 `json:"at_s"`
	// ClientConns is the number of open connections the workers hold.
	ClientConns int64 `json:"client_conns"`
	// ServerConns is unigate_netpoll_connections from the metrics
	// endpoint; -1 when not scraped.
	ServerConns float64 `json:"server_conns"`
	// ServerRSSBytes is VmRSS of the server process; 0 when unknown.
	ServerRSSBytes int64 `json:"server_rss_bytes"`
	// ServerRSSPerProc is the RSS of each server process when the server
	// is several (Common.ServerPIDs), in that order; ServerRSSBytes is
	// their sum.
	ServerRSSPerProc []int64  `json:"server_rss_per_proc_bytes,omitempty"`
	SockStat         SockStat `json:"sockstat_tcp"`
	// SlabBytes is the kernel's slab memory (/proc/meminfo Slab), all of
	// it: its change over a run is dominated by the sockets, files and
	// epoll entries of both ends of every connection.
	SlabBytes int64 `json:"slab_bytes"`
	// TCP holds the kernel's TCP counters since boot.
	TCP TCPCounters `json:"tcp"`
}

// IdleStep is the state at one step of the ramp.
type IdleStep struct {
	Target      int     `json:"target"`
	Established int64   `json:"established"`
	RampSeconds float64 `json:"ramp_s"`
	// ConnectRate is the new connections of this step per second of ramp.
	ConnectRate float64 `json:"connect_rate"`
	Sample      Sample  `json:"sample"`
	// RSSPerConn is (RSS − baseline RSS) / connections.
	RSSPerConn float64 `json:"rss_per_conn_bytes"`
	// KernelPerConn is (TCP mem − baseline) / connections: the socket
	// buffers of both ends, since client and server share the kernel.
	KernelPerConn float64 `json:"kernel_tcp_mem_per_conn_bytes"`
	// SlabPerConn is (slab − baseline) / connections, both ends.
	SlabPerConn float64 `json:"slab_per_conn_bytes"`
}

// IdleReport is the result of RunIdle.
type IdleReport struct {
	Scenario   string     `json:"scenario"`
	Started    time.Time  `json:"started"`
	Machine    Machine    `json:"machine"`
	Config     IdleConfig `json:"config"`
	Baseline   Sample     `json:"baseline"`
	Steps      []IdleStep `json:"steps"`
	AfterClose *Sample    `json:"after_close,omitempty"`

	// RSSSlope fits server RSS (bytes) against connections over the steps:
	// Slope is the server's memory per additional connection.
	RSSSlope Fit `json:"rss_slope"`
	// KernelSlope fits the kernel's TCP memory (bytes) the same way.
	KernelSlope Fit `json:"kernel_tcp_mem_slope"`
	// SlabSlope fits the kernel's slab memory (bytes) the same way: the
	// kernel's cost of a client+server socket pair.
	SlabSlope Fit `json:"slab_slope"`
	// ConnectRate is all connections established / all ramp time.
	ConnectRate float64 `json:"connect_rate"`
	Attempts    int64   `json:"attempts"`
	Established int64   `json:"established"`
	Reached     int64   `json:"reached"` // open at the last step
	Failures    Reasons `json:"failures"`
	Drops       Reasons `json:"drops"`
	ClosedClean int64   `json:"closed_clean"`
	// Pings counts the server's WebSocket pings the clients answered
	// (the server pings quiet connections every ping interval, 30s by
	// default); PongErrors the pongs that could not be written.
	Pings          int64   `json:"pings"`
	PongErrors     int64   `json:"pong_errors"`
	ConnectLatency Latency `json:"connect_latency"`
	// TCP is the change of the kernel's TCP counters from the baseline to
	// the last step: accept queue overflows and SYN retransmissions show
	// as connect latencies of 1s, 3s, ...
	TCP TCPCounters `json:"tcp_delta"`
	// ServerMetrics is the change of every unigate_* series from the
	// baseline to the last step; ServerMetricsAfterClose from the last
	// step to after the close.
	ServerMetrics           map[string]float64 `json:"server_metrics_delta,omitempty"`
	ServerMetricsAfterClose map[string]float64 `json:"server_metrics_after_close_delta,omitempty"`
	// Timeline has one point per second of the run.
	Timeline []IdlePoint `json:"timeline"`
	Notes    []string    `json:"notes,omitempty"`
}

// IdlePoint is the clients' state at one second of an idle run.
type IdlePoint struct {
	At          float64 `json:"at_s"`
	Phase       string  `json:"phase"`
	Live        int64   `json:"live"`
	Established int64   `json:"established"`
	Inflight    int64   `json:"inflight"`
	Failed      int64   `json:"failed"`
	Dropped     int64   `json:"dropped"`
}

// coordinator is the shared event pump of every scenario.
type coordinator struct {
	pool     *workerPool
	progress func(workerEvent) // called for every progress event
	phase    atomic.Value      // string, for the progress line
	finished map[int]bool      // workers that sent their result; their exit is expected
	// held keeps, in arrival order, the events that arrived while nobody
	// was waiting for them (during wait): a worker may legitimately
	// finish its part before the coordinator's own timeline says so (a
	// chat worker sends its last message before the measured window
	// ends, drains and reports), and the next pump must still see it.
	held []workerEvent
}

// pump handles events until done returns true for one, the timeout
// passes or ctx ends. A worker's fatal error or early exit fails the run.
// With a nil done (see wait) no event is consumed: every event other than
// progress is held for the next pump, which sees held events first. A
// chat worker's evDrained that done does not take is held too: the
// admission scenario's chat workers may drain while it waits for its
// storm workers (teardownWhenDrained takes them).
func (co *coordinator) pump(ctx context.Context, timeout time.Duration, done func(workerEvent) bool) error {
	if done != nil && len(co.held) > 0 {
		held := co.held
		co.held = nil
		for i, ev := range held {
			if done(ev) {
				co.held = append(co.held, held[i+1:]...)
				return nil
			}
			if ev.w.Ev == evDrained {
				co.held = append(co.held, ev)
			}
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
			return errTimeout
		case ev := <-co.pool.events:
			switch ev.w.Ev {
			case evProgress:
				co.progress(ev)
			case evFatal:
				return fmt.Errorf("%w: worker %d: %s", ErrWorker, ev.idx, ev.w.Err)
			case evExit:
				if co.finished[ev.idx] {
					continue
				}
				return fmt.Errorf("%w: worker %d exited early %s", ErrWorker, ev.idx, ev.w.Err)
			case evResult:
				if co.finished == nil {
					co.finished = make(map[int]bool)
				}
				co.finished[ev.idx] = true
			}
			switch {
			case done != nil:
				if done(ev) {
					return nil
				}
				if ev.w.Ev == evDrained {
					co.held = append(co.held, ev)
				}
			case ev.w.Ev != evProgress:
				co.held = append(co.held, ev)
			}
		}
	}
}

// errTimeout is returned by pump when its timeout passes.
var errTimeout = errors.New("timeout")

// wait handles events for d; it holds every event but progress for the
// next pump (see pump).
func (co *coordinator) wait(ctx context.Context, d time.Duration) error {
	if err := co.pump(ctx, d, nil); !errors.Is(err, errTimeout) {
		return err
	}
	return nil
}

// RunIdle runs the idle scenario and returns its report. A report is
// returned, as complete as it got, with most errors too.
func RunIdle(ctx context.Context, c IdleConfig) (*IdleReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &IdleReport{Scenario: "idle", Started: start, Machine: DescribeMachine(c.ServerPID), Config: c}
	if c.ServerPID == 0 {
		rep.Notes = append(rep.Notes, "no -server-pid: server RSS not measured")
	}
	if c.MetricsURL == "" {
		rep.Notes = append(rep.Notes, "no -metrics: the server's connection gauge is not read; slopes use client-side counts")
	}

	live := newLiveProgress[idleProgress](c.Procs)
	sum := live.sum
	sampler := &sampler{c: &c.Common, start: start}
	rep.Baseline, _ = sampler.take(ctx, 0)
	baseMetrics := sampler.metrics

	pool, err := startWorkers(&c.Common, c.Procs)
	if err != nil {
		return rep, err
	}
	defer pool.stop(10 * time.Second)
	co := &coordinator{pool: pool}
	co.phase.Store("start")
	co.progress = func(ev workerEvent) {
		if p := ev.w.IdleProgress; p != nil {
			live.set(ev.idx, *p, nil)
		}
	}
	stopLine := startProgressLine(c.Progress, start, func() string {
		s := sum()
		phase, _ := co.phase.Load().(string)
		rep.Timeline = append(rep.Timeline, IdlePoint{At: time.Since(start).Seconds(), Phase: phase,
			Live: s.Live, Established: s.Established, Inflight: s.Inflight, Failed: s.Failed, Dropped: s.Dropped})
		return fmt.Sprintf("%-8s live %6d  established %6d  inflight %4d  failed %d  dropped %d",
			co.phase.Load(), s.Live, s.Established, s.Inflight, s.Failed, s.Dropped)
	})
	defer stopLine()

	rampTime := time.Duration(float64(c.Conns)/c.Rate*float64(time.Second)) * 2
	deadline := start.Add(rampTime + time.Duration(len(c.Steps))*(c.Settle+c.Timeout+30*time.Second) + c.Hold + 2*time.Minute)
	for i, p := range pool.procs {
		job := &idleJob{
			Common:      c.Common,
			Index:       i,
			Rate:        c.Rate / float64(c.Procs),
			MaxInflight: c.MaxInflight,
			MaxFailures: c.MaxFailures,
			Deadline:    deadline.UnixNano(),
		}
		job.Progress = nil
		if err := p.send(wire{Cmd: cmdIdle, Idle: job}); err != nil {
			return rep, err
		}
	}

	var lastMetrics map[string]float64
	var rampTotal time.Duration
	prev := 0
	for _, step := range c.Steps {
		co.phase.Store(fmt.Sprintf("ramp→%d", step))
		stepStart := time.Now()
		before := sum().Established
		for i, p := range pool.procs {
			if err := p.send(wire{Cmd: cmdTarget, Target: share(step, c.Procs, i)}); err != nil {
				return rep, err
			}
		}
		reached := 0
		stepTimeout := 3*time.Duration(float64(step-prev)/c.Rate*float64(time.Second)) + c.Timeout + time.Minute
		err := co.pump(ctx, stepTimeout, func(ev workerEvent) bool {
			if ev.w.Ev == evReached {
				co.progress(workerEvent{idx: ev.idx, w: wire{IdleProgress: ev.w.IdleProgress}})
				reached++
			}
			return reached == c.Procs
		})
		if err != nil {
			return rep, fmt.Errorf("step %d: %w", step, err)
		}
		ramp := time.Since(stepStart)
		rampTotal += ramp
		s := sum()
		co.phase.Store(fmt.Sprintf("settle@%d", step))
		if err := co.wait(ctx, c.Settle); err != nil {
			return rep, err
		}
		smp, err := sampler.take(ctx, sum().Live)
		if err != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("step %d: %v", step, err))
		}
		lastMetrics = sampler.metrics
		st := IdleStep{
			Target:      step,
			Established: s.Established,
			RampSeconds: ramp.Seconds(),
			ConnectRate: float64(s.Established-before) / ramp.Seconds(),
			Sample:      smp,
		}
		if n := conns(smp); n > 0 {
			if smp.ServerRSSBytes > 0 && rep.Baseline.ServerRSSBytes > 0 {
				st.RSSPerConn = float64(smp.ServerRSSBytes-rep.Baseline.ServerRSSBytes) / n
			}
			st.KernelPerConn = float64(smp.SockStat.MemBytes-rep.Baseline.SockStat.MemBytes) / n
			st.SlabPerConn = float64(smp.SlabBytes-rep.Baseline.SlabBytes) / n
		}
		rep.Steps = append(rep.Steps, st)
		if c.Progress != nil {
			fmt.Fprintf(c.Progress, "step %d: %d connections (server %s), ramp %.1fs at %.0f/s, server RSS %s (%s/conn), kernel TCP mem %s\n",
				step, smp.ClientConns, fmtServerConns(smp.ServerConns), st.RampSeconds, st.ConnectRate,
				fmtBytes(float64(smp.ServerRSSBytes)), fmtBytes(st.RSSPerConn), fmtBytes(float64(smp.SockStat.MemBytes)))
		}
		prev = step
	}
	rep.Reached = sum().Live
	if rampTotal > 0 {
		rep.ConnectRate = float64(sum().Established) / rampTotal.Seconds()
	}
	rep.ServerMetrics = metricsDelta(baseMetrics, lastMetrics)
	if n := len(rep.Steps); n > 0 {
		rep.TCP = rep.Steps[n-1].Sample.TCP.sub(rep.Baseline.TCP)
	}
	fitSlopes(rep)

	if c.Hold > 0 {
		co.phase.Store("hold")
		if err := co.wait(ctx, c.Hold); err != nil {
			return rep, err
		}
	}
	co.phase.Store("close")
	if err := pool.broadcast(wire{Cmd: cmdClose}); err != nil {
		return rep, err
	}
	results := 0
	var snaps []histSnapshot
	err = co.pump(ctx, 30*time.Second, func(ev workerEvent) bool {
		if ev.w.Ev == evResult && ev.w.IdleResult != nil {
			r := ev.w.IdleResult
			rep.Attempts += r.Attempts
			rep.Established += r.Established
			rep.Failures.merge(r.Failures)
			rep.Drops.merge(r.Drops)
			rep.ClosedClean += r.ClosedClean
			rep.Pings += r.Pings
			rep.PongErrors += r.PongErrors
			co.progress(workerEvent{idx: ev.idx, w: wire{IdleProgress: &r.idleProgress}})
			snaps = append(snaps, r.Connect)
			results++
		}
		return results == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("collecting results: %w", err)
	}
	h, sat := mergeHists(snaps)
	rep.ConnectLatency = summarize(h, sat)

	co.phase.Store("after")
	if err := co.wait(ctx, c.Settle); err != nil {
		return rep, err
	}
	if smp, err := sampler.take(ctx, sum().Live); err == nil {
		rep.AfterClose = &smp
		rep.ServerMetricsAfterClose = metricsDelta(lastMetrics, sampler.metrics)
	}
	if rep.Reached < int64(c.Conns) {
		return rep, fmt.Errorf("%w: %d of %d connections open at the last step (failures: %v)",
			ErrShortfall, rep.Reached, c.Conns, rep.Failures.Counts)
	}
	return rep, nil
}
