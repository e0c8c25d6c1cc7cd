package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// AdmissionConfig configures RunAdmission: a calm open-loop chat, then, while
// it goes on, a connection storm beyond the node's cap from separate worker
// processes. The live conversations' latency in the calm part of the window
// and during the storm is the figure (issue 7's target: p99 during a storm
// at most twice the calm one).
type AdmissionConfig struct {
	// Chat is the live load: its schedule covers the whole run (warmup,
	// then Duration, of which the first Calm is before the storm). Defaults
	// differ from the chat scenario's: 100 conversations, 10 agents of
	// capacity 10, 1,000 msg/s, 5 s warmup, 30 s measured.
	Chat ChatConfig `json:"chat"`
	// Calm is the part of the measured window before the storm starts.
	// Default 10s; it must leave room for the storm in Chat.Duration.
	Calm time.Duration `json:"calm_ns"`
	// Attempts is the number of connection attempts of the storm, all
	// storm workers together, each as soon as the previous one of its
	// slot is answered. Default 15,000.
	Attempts int `json:"attempts"`
	// StormProcs is the number of storm worker processes. Default 3.
	StormProcs int `json:"storm_procs"`
	// StormSrc are the source addresses of the storm's connections (each
	// storm worker uses all of them, round robin). Default: the kernel's
	// choice; bench/run.sh passes 127.0.0.2-127.0.0.9.
	StormSrc []netip.Addr `json:"storm_src,omitempty"`
	// Inflight is the attempts in progress per storm worker. Default 256.
	Inflight int `json:"inflight"`
	// Hello makes every admitted storm connection say an anonymous Hello
	// and wait for the Welcome, as a reconnecting visitor would; without
	// it the admitted connections stay silent (the node closes them after
	// its handshake timeout). Default false at this level; the command
	// line's -hello defaults to true.
	Hello bool `json:"hello"`
	// StormTimeout bounds one storm attempt (dial, request, answer,
	// Welcome). Default 20s.
	StormTimeout time.Duration `json:"storm_timeout_ns"`
	// Nice runs the storm workers under nice(1) with this niceness (1..19;
	// 0: not): clients that, on a real network, would run on other
	// machines do not take the node's CPU here.
	Nice int `json:"nice"`
	// Cap is the node's connection cap, for the check that exactly the
	// excess is refused. 0: unigate_limiter_max_connections from
	// Chat.MetricsURL, when given.
	Cap int `json:"cap,omitempty"`
	// PprofURL is the server's CPU profile endpoint
	// (http://ADMIN/debug/pprof/profile); with CPUProfile, a profile of
	// ProfileSeconds is taken from the start of the storm and written to
	// that file.
	PprofURL       string `json:"pprof_url,omitempty"`
	CPUProfile     string `json:"cpu_profile,omitempty"`
	ProfileSeconds int    `json:"profile_seconds,omitempty"`
}

func (c *AdmissionConfig) setDefaults() error {
	ch := &c.Chat
	if ch.Conversations <= 0 {
		ch.Conversations = 100
	}
	if ch.Agents <= 0 {
		ch.Agents = 10
	}
	if ch.Rate <= 0 {
		ch.Rate = 1000
	}
	if err := ch.setDefaults(); err != nil {
		return err
	}
	if c.Calm <= 0 {
		c.Calm = 10 * time.Second
	}
	if c.Calm >= ch.Duration {
		return fmt.Errorf("%w: -calm %v leaves no room for the storm in -duration %v", ErrConfig, c.Calm, ch.Duration)
	}
	if c.Attempts <= 0 {
		c.Attempts = 15000
	}
	if c.StormProcs <= 0 {
		c.StormProcs = 3
	}
	if c.StormProcs+ch.Procs > 64 {
		return fmt.Errorf("%w: %d storm workers: at most 64 workers in all", ErrConfig, c.StormProcs)
	}
	if c.Inflight <= 0 {
		c.Inflight = 256
	}
	if c.StormTimeout <= 0 {
		c.StormTimeout = 20 * time.Second
	}
	if c.Nice < 0 || c.Nice > 19 {
		return fmt.Errorf("%w: -nice %d: want 0..19", ErrConfig, c.Nice)
	}
	if c.CPUProfile != "" && c.PprofURL == "" {
		return fmt.Errorf("%w: -cpuprofile needs -pprof URL", ErrConfig)
	}
	if c.ProfileSeconds <= 0 {
		c.ProfileSeconds = 5
	}
	return nil
}

// dueSamples are latencies with their due times, in a chat worker's
// measured window: the coordinator splits them by phase.
type dueSamples struct {
	mu  sync.Mutex
	Due []int64 `json:"due_ns"` // due time − T0, nanoseconds
	Lat []int64 `json:"lat_us"` // due time → arrival, microseconds
}

// add records one latency; a nil receiver records nothing.
func (s *dueSamples) add(due, lat time.Duration) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.Due = append(s.Due, int64(due))
	s.Lat = append(s.Lat, int64(lat/time.Microsecond))
	s.mu.Unlock()
}

// take returns a copy for the wire (nil for a nil receiver).
func (s *dueSamples) take() *dueSamples {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &dueSamples{Due: slices.Clone(s.Due), Lat: slices.Clone(s.Lat)}
}

// between summarizes the latencies due in [from, to).
func between(sets []*dueSamples, from, to time.Duration) Latency {
	h := hdrhistogram.New(histMin, histMax, histSigFigs)
	var sat int64
	for _, s := range sets {
		if s == nil {
			continue
		}
		for i, d := range s.Due {
			if d < int64(from) || d >= int64(to) {
				continue
			}
			us := max(s.Lat[i], histMin)
			if us > histMax {
				us = histMax
				sat++
			}
			_ = h.RecordValue(us)
		}
	}
	return summarize(h, sat)
}

// AdmissionPhase is the live conversations' latency (from the due time)
// of the messages due in one part of the measured window.
type AdmissionPhase struct {
	Name string `json:"name"`
	// From and To are seconds from the start of the measured window.
	From float64 `json:"from_s"`
	To   float64 `json:"to_s"`
	V2A  Latency `json:"v2a_latency"`
	A2V  Latency `json:"a2v_latency"`
	// V2AFromWrite is the visitor→agent latency from the moment the
	// visitor wrote the message, SendLag how late the visitor wrote it
	// (write − due): a starved client shows here, not in the server.
	V2AFromWrite Latency `json:"v2a_latency_from_write"`
	SendLag      Latency `json:"send_lag"`
	// Server, chat client and storm client CPU in this phase, in cores;
	// the server's split in user and system time.
	ServerCores     float64 `json:"server_cpu_cores"`
	ServerUserCores float64 `json:"server_user_cores"`
	ServerSysCores  float64 `json:"server_sys_cores"`
	ChatCores       float64 `json:"chat_client_cpu_cores"`
	StormCores      float64 `json:"storm_client_cpu_cores"`
	// RelayStages is the gateway's own timing of the relayed messages
	// (both directions) written in this phase, by stage
	// (unigate_relay_stage_seconds, from -metrics).
	RelayStages []RelayStage `json:"relay_stages,omitempty"`
}

// AdmissionStorm is what the storm's clients saw.
type AdmissionStorm struct {
	Attempts int64 `json:"attempts"`
	Admitted int64 `json:"admitted"`
	Welcomed int64 `json:"welcomed"`
	Refused  int64 `json:"refused"`
	// RefusedByStatus counts the refusals (503 or 429, each with a valid
	// Retry-After) by status; RetryAfter by their Retry-After value.
	RefusedByStatus map[string]int64 `json:"refused_by_status"`
	RetryAfter      map[string]int64 `json:"retry_after"`
	// Failures: neither admitted nor properly refused. Must be empty.
	Failures Reasons `json:"failures"`
	// Seconds is from the first dial to the last answer of any worker.
	Seconds        float64 `json:"seconds"`
	AttemptsPerSec float64 `json:"attempts_per_s"`
	RefusalsPerSec float64 `json:"refusals_per_s"`
	RefusalLatency Latency `json:"refusal_latency"`
	AdmitLatency   Latency `json:"admit_latency"`
	Cap            int64   `json:"cap"`               // 0: unknown
	OpenBefore     int64   `json:"open_before"`       // admitted connections at the start; -1: unknown
	ExpectedAdmit  int64   `json:"expected_admitted"` // cap − open before; -1: unknown
	ServerRefused  float64 `json:"server_refused"`    // unigate_limiter_refused_total over the storm; -1: unknown
	// ServerCPUPerAttempt is the server's CPU time during the storm above
	// its calm rate, per attempt, in microseconds: what one attempt costs
	// the node (admitted ones include their upgrade and hello).
	ServerCPUPerAttempt float64 `json:"server_cpu_us_per_attempt"`
	ServerRSSBefore     int64   `json:"server_rss_before_bytes"`
	ServerRSSAfter      int64   `json:"server_rss_after_bytes"`
	ServerRSSEnd        int64   `json:"server_rss_end_bytes"`
}

// AdmissionReport is the result of RunAdmission.
type AdmissionReport struct {
	Scenario string          `json:"scenario"`
	Started  time.Time       `json:"started"`
	Machine  Machine         `json:"machine"`
	LoadEnd  string          `json:"loadavg_end"`
	Config   AdmissionConfig `json:"config"`
	// Live is the chat over the whole measured window (integrity included).
	Live   ChatReport     `json:"live"`
	Storm  AdmissionStorm `json:"storm"`
	Calm   AdmissionPhase `json:"calm"`
	During AdmissionPhase `json:"during_storm"`
	After  AdmissionPhase `json:"after_storm"`
	// P99Ratio and P50Ratio are the visitor→agent p99 and p50 during the
	// storm over the calm ones.
	P99Ratio float64 `json:"p99_ratio"`
	P50Ratio float64 `json:"p50_ratio"`
	// ServerMetrics is the change of every unigate_* series over the storm.
	ServerMetrics map[string]float64 `json:"server_metrics_storm_delta,omitempty"`
	Timeline      []AdmissionPoint   `json:"timeline"`
	Integrity     []string           `json:"integrity_violations"`
	Notes         []string           `json:"notes,omitempty"`
}

// AdmissionPoint is one second of an admission run.
type AdmissionPoint struct {
	At float64 `json:"at_s"`
	// V2A latencies (from the due time) of the deliveries reported during
	// this second.
	Count int64   `json:"v2a_count"`
	P50   float64 `json:"v2a_p50_ms"`
	P99   float64 `json:"v2a_p99_ms"`
	// Storm attempts and refusals answered during this second, and the
	// admitted storm connections so far.
	Attempts float64 `json:"attempts_per_s"`
	Refused  float64 `json:"refused_per_s"`
	Admitted int64   `json:"admitted"`
}

// cpuSample is the CPU time used so far by the server and the clients.
type cpuSample struct {
	at                time.Time
	srvUser, srvSys   time.Duration
	chatCPU, stormCPU time.Duration
}

// phaseCPU fills the CPU fields of p from two samples.
func phaseCPU(p *AdmissionPhase, a, b cpuSample) {
	d := b.at.Sub(a.at).Seconds()
	if d <= 0 {
		return
	}
	p.ServerUserCores = (b.srvUser - a.srvUser).Seconds() / d
	p.ServerSysCores = (b.srvSys - a.srvSys).Seconds() / d
	p.ServerCores = p.ServerUserCores + p.ServerSysCores
	p.ChatCores = (b.chatCPU - a.chatCPU).Seconds() / d
	p.StormCores = (b.stormCPU - a.stormCPU).Seconds() / d
}

// RunAdmission runs the admission scenario and returns its report, as
// complete as it got, with most errors too. ErrIntegrity comes with a
// complete report: a lost or duplicated live message, a storm attempt
// neither admitted nor refused with 503/429 and Retry-After, or (when the
// cap is known) a count of admitted connections other than the excess.
func RunAdmission(ctx context.Context, c AdmissionConfig) (*AdmissionReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	ch := &c.Chat
	start := time.Now()
	rep := &AdmissionReport{Scenario: "admission", Started: start, Machine: DescribeMachine(ch.ServerPID), Config: c}
	rep.Live = ChatReport{Scenario: "chat", Started: start, Machine: rep.Machine, Config: *ch}
	tokens := ch.Tokens
	if len(tokens) == 0 {
		if ch.Progress != nil {
			fmt.Fprintf(ch.Progress, "minting %d agent tokens with %s\n", ch.Agents, strings.Join(ch.TokenCmd, " "))
		}
		var err error
		if tokens, err = mintTokens(ctx, ch); err != nil {
			return rep, err
		}
	}
	deadline := time.Now().Add(ch.SetupTimeout + ch.Warmup + ch.Duration + ch.Drain + 2*time.Minute)
	nChat := ch.Procs
	pool, err := startWorkersWith(&ch.Common, nChat+c.StormProcs, func(i int) []string {
		if i < nChat || c.Nice == 0 {
			return ch.Worker
		}
		return append([]string{"nice", "-n", strconv.Itoa(c.Nice)}, ch.Worker...)
	})
	if err != nil {
		return rep, err
	}
	defer pool.stop(15 * time.Second)
	for i := range nChat {
		job := ch.job(i, tokens, deadline)
		job.Samples = true
		if err := pool.procs[i].send(wire{Cmd: cmdChat, Chat: job}); err != nil {
			return rep, err
		}
	}
	for j := range c.StormProcs {
		job := &admitJob{
			Index: j, URL: ch.URL, Subprotocol: ch.Subprotocol, Src: c.StormSrc,
			Attempts: share(c.Attempts, c.StormProcs, j), Inflight: c.Inflight, Hello: c.Hello,
			Timeout: c.StormTimeout, Deadline: deadline.UnixNano(),
		}
		if err := pool.procs[nChat+j].send(wire{Cmd: cmdAdmit, Admit: job}); err != nil {
			return rep, err
		}
	}

	chatLive := newLiveProgress[chatProgress](nChat)
	var smu sync.Mutex
	stormLast := make([]admitProgress, c.StormProcs)
	stormSum := func() admitProgress {
		smu.Lock()
		defer smu.Unlock()
		var s admitProgress
		for _, p := range stormLast {
			s.add(p)
		}
		return s
	}
	co := &coordinator{pool: pool}
	co.progress = func(ev workerEvent) {
		if p := ev.w.ChatProgress; p != nil && ev.idx < nChat {
			q := *p
			q.Interval = nil
			chatLive.set(ev.idx, q, p.Interval)
		}
		if p := ev.w.AdmitProgress; p != nil && ev.idx >= nChat {
			smu.Lock()
			stormLast[ev.idx-nChat] = *p
			smu.Unlock()
		}
	}
	var prevChat chatProgress
	var prevStorm admitProgress
	prevAt := time.Now()
	stopLine := startProgressLine(ch.Progress, start, func() string {
		s, st := chatLive.sum(), stormSum()
		dt := time.Since(prevAt).Seconds()
		prevAt = time.Now()
		n, p50, p99 := chatLive.takeInterval()
		pt := AdmissionPoint{At: time.Since(start).Seconds(), Count: n, P50: p50, P99: p99,
			Attempts: float64(st.Attempts-prevStorm.Attempts) / dt, Refused: float64(st.Refused-prevStorm.Refused) / dt,
			Admitted: st.Admitted}
		rep.Timeline = append(rep.Timeline, pt)
		line := fmt.Sprintf("%-8s", s.Phase)
		switch s.Phase {
		case "setup", "visitors", "assign", "ready", "":
			line += fmt.Sprintf(" agents online %d/%d  visitors %d/%d  assigned %d/%d",
				s.AgentsOnline, ch.Agents, s.Visitors, ch.Conversations, s.Assigned, ch.Conversations)
		default:
			line += fmt.Sprintf(" live: sent %5.0f/s v→a %5.0f/s p50 %7.2f ms p99 %7.2f ms  storm: %5.0f attempts/s, %5.0f refused/s, admitted %d, failed %d, in flight %d",
				float64(s.Sent-prevChat.Sent)/dt, float64(s.Delivered-prevChat.Delivered)/dt, p50, p99,
				pt.Attempts, pt.Refused, st.Admitted, st.Failed, st.Inflight)
		}
		prevChat, prevStorm = s, st
		return line
	})
	defer stopLine()

	ready := 0
	if err := co.pump(ctx, ch.SetupTimeout+30*time.Second, func(ev workerEvent) bool {
		if ev.w.Ev == evReady {
			ready++
		}
		return ready == len(pool.procs)
	}); err != nil {
		return rep, fmt.Errorf("%w: %v", ErrSetup, err)
	}

	smp := &sampler{c: &ch.Common, start: start}
	cpu := func() cpuSample {
		s := cpuSample{at: time.Now()}
		for _, pid := range ch.serverPIDs() {
			u, sy, _ := ProcessCPUSplit(pid)
			s.srvUser += u
			s.srvSys += sy
		}
		for i, p := range pool.procs {
			d, _ := ProcessCPU(p.cmd.Process.Pid)
			if i < nChat {
				s.chatCPU += d
			} else {
				s.stormCPU += d
			}
		}
		return s
	}
	openNow := func() int64 {
		if v, ok := smp.metrics["unigate_limiter_connections"]; ok {
			return int64(v)
		}
		return -1
	}

	t0 := time.Now().Add(500 * time.Millisecond)
	stormAt := t0.Add(ch.Warmup + c.Calm)
	for i, p := range pool.procs {
		at := t0
		if i >= nChat {
			at = stormAt
		}
		if err := p.send(wire{Cmd: cmdStart, T0: at.UnixNano()}); err != nil {
			return rep, err
		}
	}
	if err := co.wait(ctx, time.Until(t0.Add(ch.Warmup))); err != nil {
		return rep, err
	}
	s0, _ := smp.take(ctx, 0)
	m0 := smp.metrics
	c0 := cpu()
	// Sample just before the storm (its first dial is at stormAt).
	if err := co.wait(ctx, time.Until(stormAt.Add(-100*time.Millisecond))); err != nil {
		return rep, err
	}
	s1, _ := smp.take(ctx, 0)
	m1 := smp.metrics
	c1 := cpu()
	rep.Storm.OpenBefore = openNow()
	rep.Storm.Cap = int64(c.Cap)
	if v, ok := m1["unigate_limiter_max_connections"]; ok && c.Cap == 0 {
		rep.Storm.Cap = int64(v)
	}
	var prof sync.WaitGroup
	var profErr error
	if c.CPUProfile != "" {
		prof.Go(func() { profErr = fetchProfile(ctx, c.PprofURL, c.ProfileSeconds, c.CPUProfile, time.Until(stormAt)) })
	}

	// The storm: wait for every storm worker's result.
	var results []*admitResult
	windowEnd := t0.Add(ch.Warmup + ch.Duration)
	if err := co.pump(ctx, time.Until(windowEnd)+c.StormTimeout+time.Minute, func(ev workerEvent) bool {
		if r := ev.w.AdmitResult; ev.w.Ev == evResult && r != nil {
			results = append(results, r)
		}
		return len(results) == c.StormProcs
	}); err != nil {
		return rep, fmt.Errorf("the storm: %w", err)
	}
	s2, _ := smp.take(ctx, 0)
	m2 := smp.metrics
	c2 := cpu()
	if err := co.wait(ctx, time.Until(windowEnd)); err != nil {
		return rep, err
	}
	s3, _ := smp.take(ctx, 0)
	m3 := smp.metrics
	c3 := cpu()

	if err := co.teardownWhenDrained(ctx, pool.procs[:nChat], ch.Drain+time.Minute); err != nil {
		return rep, err
	}
	var col chatCollector
	var v2aS, a2vS, svcS, lagS []*dueSamples
	got := 0
	if err := co.pump(ctx, ch.Drain+time.Minute, func(ev workerEvent) bool {
		r := ev.w.ChatResult
		if ev.w.Ev != evResult || r == nil {
			return false
		}
		got++
		col.add(&rep.Live, r)
		v2aS, a2vS = append(v2aS, r.V2ASamples), append(a2vS, r.A2VSamples)
		svcS, lagS = append(svcS, r.SvcSamples), append(lagS, r.LagSamples)
		return got == nChat
	}); err != nil {
		return rep, fmt.Errorf("collecting results: %w", err)
	}
	col.finish(&rep.Live, ch.Duration)
	rep.Live.ServerRSSStart, rep.Live.ServerRSSEnd = s0.ServerRSSBytes, s3.ServerRSSBytes
	if w := c3.at.Sub(c0.at).Seconds(); w > 0 {
		rep.Live.ServerCPUCores = ((c3.srvUser + c3.srvSys) - (c0.srvUser + c0.srvSys)).Seconds() / w
		rep.Live.ClientCPUCores = (c3.chatCPU - c0.chatCPU).Seconds() / w
	}
	rep.Live.ServerMetrics = metricsDelta(m0, smp.metrics)
	rep.Live.Integrity = integrity(&rep.Live)

	// Close the storm's connections.
	closed := 0
	for _, p := range pool.procs[nChat:] {
		_ = p.send(wire{Cmd: cmdClose})
	}
	_ = co.pump(ctx, 30*time.Second, func(ev workerEvent) bool {
		if ev.w.Ev == evClosed && ev.idx >= nChat {
			closed++
		}
		return closed == c.StormProcs
	})
	prof.Wait()
	if profErr != nil {
		rep.Notes = append(rep.Notes, "cpu profile: "+profErr.Error())
	}

	// The storm's figures.
	st := &rep.Storm
	st.RefusedByStatus, st.RetryAfter = map[string]int64{}, map[string]int64{}
	var first, last int64
	var refLat, admLat []histSnapshot
	for _, r := range results {
		if first == 0 || r.Start < first {
			first = r.Start
		}
		last = max(last, r.End)
		st.Attempts += r.Attempts
		st.Admitted += r.Admitted
		st.Welcomed += r.Welcomed
		for k, v := range r.Refused {
			st.RefusedByStatus[k] += v
			st.Refused += v
		}
		for k, v := range r.RetryAfter {
			st.RetryAfter[k] += v
		}
		st.Failures.merge(r.Failures)
		refLat, admLat = append(refLat, r.RefusalLatency), append(admLat, r.AdmitLatency)
	}
	st.RefusalLatency = summarize(mergeHists(refLat))
	st.AdmitLatency = summarize(mergeHists(admLat))
	st.Seconds = time.Duration(last - first).Seconds()
	if st.Seconds > 0 {
		st.AttemptsPerSec = float64(st.Attempts) / st.Seconds
		st.RefusalsPerSec = float64(st.Refused) / st.Seconds
	}
	st.ServerRSSBefore, st.ServerRSSAfter, st.ServerRSSEnd = s1.ServerRSSBytes, s2.ServerRSSBytes, s3.ServerRSSBytes
	st.ExpectedAdmit, st.ServerRefused = -1, -1
	if st.Cap > 0 && st.OpenBefore >= 0 {
		st.ExpectedAdmit = max(st.Cap-st.OpenBefore, 0)
	}
	if m1 != nil && m2 != nil {
		rep.ServerMetrics = metricsDelta(m1, m2)
		st.ServerRefused = 0
		for k, v := range rep.ServerMetrics {
			if strings.HasPrefix(k, "unigate_limiter_refused_total{") {
				st.ServerRefused += v
			}
		}
	}

	// The phases, in the chat's clock: offsets from t0.
	stormFrom, stormTo := time.Unix(0, first).Sub(t0), time.Unix(0, last).Sub(t0)
	wStart, wEnd := ch.Warmup, ch.Warmup+ch.Duration
	phase := func(name string, from, to time.Duration) AdmissionPhase {
		return AdmissionPhase{Name: name, From: (from - wStart).Seconds(), To: (to - wStart).Seconds(),
			V2A: between(v2aS, from, to), A2V: between(a2vS, from, to),
			V2AFromWrite: between(svcS, from, to), SendLag: between(lagS, from, to)}
	}
	rep.Calm = phase("calm", wStart, stormFrom)
	rep.During = phase("storm", stormFrom, stormTo+time.Nanosecond)
	rep.After = phase("after", stormTo+time.Nanosecond, wEnd)
	phaseCPU(&rep.Calm, c0, c1)
	phaseCPU(&rep.During, c1, c2)
	phaseCPU(&rep.After, c2, c3)
	if m0 != nil && m1 != nil && m2 != nil && m3 != nil {
		rep.Calm.RelayStages = relayStages(m0, m1)
		rep.During.RelayStages = relayStages(m1, m2)
		rep.After.RelayStages = relayStages(m2, m3)
	}
	if st.Attempts > 0 && c.Chat.ServerPID > 0 {
		extra := rep.During.ServerCores - rep.Calm.ServerCores
		st.ServerCPUPerAttempt = extra * c2.at.Sub(c1.at).Seconds() / float64(st.Attempts) * 1e6
	}
	if rep.Calm.V2A.P99 > 0 {
		rep.P99Ratio = rep.During.V2A.P99 / rep.Calm.V2A.P99
	}
	if rep.Calm.V2A.P50 > 0 {
		rep.P50Ratio = rep.During.V2A.P50 / rep.Calm.V2A.P50
	}
	if stormTo > wEnd {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the storm lasted past the end of the chat schedule (%.1fs after it): raise -duration", (stormTo-wEnd).Seconds()))
	}
	rep.LoadEnd = readTrim("/proc/loadavg")

	rep.Integrity = append(rep.Integrity, rep.Live.Integrity...)
	if n := st.Failures.total(); n > 0 {
		rep.Integrity = append(rep.Integrity, fmt.Sprintf("storm: %d attempts neither admitted nor refused with 503/429 and Retry-After", n))
	}
	if st.Admitted+st.Refused+st.Failures.total() != int64(c.Attempts) {
		rep.Integrity = append(rep.Integrity, fmt.Sprintf("storm: %d admitted + %d refused + %d failed for %d attempts", st.Admitted, st.Refused, st.Failures.total(), c.Attempts))
	}
	if st.ExpectedAdmit >= 0 && st.Admitted != min(st.ExpectedAdmit, int64(c.Attempts)) {
		rep.Integrity = append(rep.Integrity, fmt.Sprintf("storm: %d admitted, want exactly %d (cap %d − %d open)", st.Admitted, st.ExpectedAdmit, st.Cap, st.OpenBefore))
	}
	if c.Hello && st.Welcomed != st.Admitted {
		rep.Integrity = append(rep.Integrity, fmt.Sprintf("storm: %d admitted, %d welcomed", st.Admitted, st.Welcomed))
	}
	if st.ServerRefused >= 0 && int64(st.ServerRefused) != st.Refused {
		rep.Integrity = append(rep.Integrity, fmt.Sprintf("storm: the server counted %.0f refusals, the clients saw %d", st.ServerRefused, st.Refused))
	}
	if len(rep.Integrity) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(rep.Integrity, "; "))
	}
	return rep, nil
}

// fetchProfile waits for delay, then fetches a CPU profile of seconds
// from url and writes it to path.
func fetchProfile(ctx context.Context, url string, seconds int, path string, delay time.Duration) error {
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"?seconds="+strconv.Itoa(seconds), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteSummary writes a readable summary of the report.
func (r *AdmissionReport) WriteSummary(w io.Writer) {
	c, ch := r.Config, r.Config.Chat
	nice := "not niced"
	if c.Nice > 0 {
		nice = "nice " + strconv.Itoa(c.Nice)
	}
	fmt.Fprintf(w, "unigate-bench admission: %d conversations at %.0f msg/s (%v calm, %v measured, +%v warmup); storm of %d attempts from %d workers × %d in flight (%s), hello %v; %s\n",
		ch.Conversations, ch.Rate, c.Calm, ch.Duration, ch.Warmup, c.Attempts, c.StormProcs, c.Inflight, nice, c.Hello, ch.URL)
	writeMachine(w, r.Machine)
	if f := strings.Fields(r.LoadEnd); len(f) >= 3 {
		fmt.Fprintf(w, "load average at the end: %s %s %s\n", f[0], f[1], f[2])
	}
	st := r.Storm
	fmt.Fprintf(w, "storm: %d attempts in %.2fs (%.0f/s): admitted %d (welcomed %d), refused %d (%.0f refusals/s) by status %v, Retry-After %v, failures %d\n",
		st.Attempts, st.Seconds, st.AttemptsPerSec, st.Admitted, st.Welcomed, st.Refused, st.RefusalsPerSec, st.RefusedByStatus, st.RetryAfter, st.Failures.total())
	if st.ExpectedAdmit >= 0 {
		fmt.Fprintf(w, "  cap %d, %d open before the storm: exactly %d to admit; server counted %.0f refusals\n", st.Cap, st.OpenBefore, st.ExpectedAdmit, st.ServerRefused)
	}
	if st.ServerCPUPerAttempt != 0 {
		fmt.Fprintf(w, "  server CPU per attempt above its calm rate: %.1f µs\n", st.ServerCPUPerAttempt)
	}
	writeLatency(w, "  refusal latency (dial → status)", st.RefusalLatency)
	writeLatency(w, "  admit latency (dial → 101/welcome)", st.AdmitLatency)
	fmt.Fprintf(w, "  server RSS %s before, %s after the storm, %s at the end\n",
		fmtBytes(float64(st.ServerRSSBefore)), fmtBytes(float64(st.ServerRSSAfter)), fmtBytes(float64(st.ServerRSSEnd)))
	for _, p := range []AdmissionPhase{r.Calm, r.During, r.After} {
		fmt.Fprintf(w, "%-5s [%5.1fs, %5.1fs): cpu server %.2f cores (user %.2f, sys %.2f), chat clients %.2f, storm clients %.2f\n",
			p.Name, p.From, p.To, p.ServerCores, p.ServerUserCores, p.ServerSysCores, p.ChatCores, p.StormCores)
		writeLatency(w, "  visitor→agent", p.V2A)
		writeLatency(w, "  agent→visitor", p.A2V)
		writeLatency(w, "  visitor→agent from the write", p.V2AFromWrite)
		writeLatency(w, "  send lag (visitor late)", p.SendLag)
		writeRelayStages(w, "  ", p.RelayStages)
	}
	fmt.Fprintf(w, "live p99 during the storm / calm: %.2f× (p50 %.2f×)\n", r.P99Ratio, r.P50Ratio)
	l := r.Live
	fmt.Fprintf(w, "live over the window: offered %.0f msg/s, delivered %.0f msg/s; visitor→agent sent %d acked %d delivered %d lost %d dup %d; agent→visitor sent %d delivered %d lost %d dup %d; max behind %d\n",
		l.OfferedRate, l.DeliveredRate, l.V2A.Sent, l.V2A.Acked, l.V2A.Delivered, l.V2A.Lost, l.V2A.Duplicates,
		l.A2V.Sent, l.A2V.Delivered, l.A2V.Lost, l.A2V.Duplicates, l.MaxBehind)
	if len(st.Failures.Counts) > 0 {
		writeReasons(w, "storm failures", st.Failures)
	}
	if len(l.Errors.Counts) > 0 {
		writeReasons(w, "live errors by code", l.Errors)
	}
	if len(l.Drops.Counts) > 0 {
		writeReasons(w, "live connections dropped", l.Drops)
	}
	writeMetrics(w, "server metrics over the storm", r.ServerMetrics)
	if len(r.Integrity) == 0 {
		fmt.Fprintln(w, "integrity: ok (live: no loss, duplicates, reordering; storm: every attempt admitted or refused with Retry-After)")
	}
	for _, v := range r.Integrity {
		fmt.Fprintf(w, "INTEGRITY VIOLATION: %s\n", v)
	}
	for _, n := range append(slices.Clone(l.Notes), r.Notes...) {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func (r *AdmissionReport) title() string {
	return fmt.Sprintf("unigate-bench admission: %d attempts against the cap, %d live conversations, %s",
		r.Config.Attempts, r.Config.Chat.Conversations, r.Started.UTC().Format(time.RFC3339))
}

// charts of the admission report: live latency and storm rates over time,
// percentile curves of the phases.
func (r *AdmissionReport) charts() []chart {
	lat := chart{title: "Live visitor→agent latency over time (per second, from the due time)", xLabel: "time (s)", yLabel: "latency (ms)"}
	rates := chart{title: "Storm over time", xLabel: "time (s)", yLabel: "per second / connections"}
	var p50, p99, att, ref, adm series
	p50.name, p99.name, att.name, ref.name, adm.name = "p50", "p99", "attempts/s", "refusals/s", "admitted"
	for _, p := range r.Timeline {
		if p.Count > 0 {
			p50.x, p50.y = append(p50.x, p.At), append(p50.y, p.P50)
			p99.x, p99.y = append(p99.x, p.At), append(p99.y, p.P99)
		}
		att.x, att.y = append(att.x, p.At), append(att.y, p.Attempts)
		ref.x, ref.y = append(ref.x, p.At), append(ref.y, p.Refused)
		adm.x, adm.y = append(adm.x, p.At), append(adm.y, float64(p.Admitted))
	}
	lat.series = []series{p50, p99}
	rates.series = []series{att, ref, adm}
	return []chart{lat, curveChart("Live visitor→agent latency by phase, percentile curve",
		namedLatency{"calm", r.Calm.V2A}, namedLatency{"during the storm", r.During.V2A}, namedLatency{"after", r.After.V2A}),
		rates, curveChart("Storm answer latency, percentile curve",
			namedLatency{"refusal", r.Storm.RefusalLatency}, namedLatency{"admission", r.Storm.AdmitLatency})}
}
