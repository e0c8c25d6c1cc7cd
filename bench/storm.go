package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/unigate/unigate/protocol"
)

// StormConfig configures RunStorm: Clients visitors, each with an open
// conversation and a few messages both ways, drop their connections at
// once; while they are away their agents send Missed more messages; then
// every visitor reconnects at the same moment with Hello{ResumeToken,
// Cursors} and must get exactly the messages after its cursor, once each.
type StormConfig struct {
	Common
	// Clients is the number of visitors, one conversation each. Default
	// 1000.
	Clients int `json:"clients"`
	// Agents serve the conversations and stay connected. Default 10.
	Agents int `json:"agents"`
	// AgentCapacity is the capacity each agent announces; it must cover
	// the worker's clients (the server caps it, 100 by default). Default:
	// clients per agent, rounded up.
	AgentCapacity int `json:"agent_capacity"`
	// Messages is the number of messages each side sends before the drop.
	// Default 3.
	Messages int `json:"messages"`
	// Missed is the number of agent messages per conversation stored while
	// the visitors are away: the replay each resume must deliver. Default
	// 2.
	Missed int `json:"missed"`
	// Size is the message text length in bytes. Default 64.
	Size int `json:"size"`
	// Down is the pause between the missed messages and the reconnect
	// (the server notices the disconnects meanwhile). Default 1s.
	Down time.Duration `json:"down_ns"`
	// MaxInflight bounds the reconnects in progress per worker; 0: all at
	// once.
	MaxInflight int `json:"max_inflight"`
	// Tokens, TokenCmd, AgentPrefix, Skill, ConnectRate and SetupTimeout
	// are as in ChatConfig. AgentPrefix defaults to "storm-agent-".
	Tokens       []string      `json:"-"`
	TokenCmd     []string      `json:"token_cmd,omitempty"`
	AgentPrefix  string        `json:"agent_prefix"`
	Skill        string        `json:"skill"`
	ConnectRate  float64       `json:"connect_rate"`
	SetupTimeout time.Duration `json:"setup_timeout_ns"`
	// RecoverTimeout bounds the reconnect and the replay. Default 60s.
	RecoverTimeout time.Duration `json:"recover_timeout_ns"`
}

func (c *StormConfig) setDefaults() error {
	if err := c.Common.setDefaults(); err != nil {
		return err
	}
	if c.Clients <= 0 {
		c.Clients = 1000
	}
	if c.Agents <= 0 {
		c.Agents = 10
	}
	if c.Procs > c.Clients || c.Procs > c.Agents {
		return fmt.Errorf("%w: -procs %d exceeds clients or agents", ErrConfig, c.Procs)
	}
	if c.AgentCapacity <= 0 {
		for i := range c.Procs {
			a := share(c.Agents, c.Procs, i)
			c.AgentCapacity = max(c.AgentCapacity, (share(c.Clients, c.Procs, i)+a-1)/a)
		}
	}
	for i := range c.Procs {
		if share(c.Agents, c.Procs, i)*c.AgentCapacity < share(c.Clients, c.Procs, i) {
			return fmt.Errorf("%w: worker %d: %d agents × capacity %d for %d clients", ErrConfig, i,
				share(c.Agents, c.Procs, i), c.AgentCapacity, share(c.Clients, c.Procs, i))
		}
	}
	if c.Messages <= 0 {
		c.Messages = 3
	}
	if c.Missed < 0 {
		c.Missed = 0
	} else if c.Missed == 0 {
		c.Missed = 2
	}
	if c.Messages+c.Missed > 500 {
		return fmt.Errorf("%w: -messages + -missed above 500 (the server keeps 1000 per conversation)", ErrConfig)
	}
	if c.Size <= 0 {
		c.Size = 64
	}
	if c.Down <= 0 {
		c.Down = time.Second
	}
	if c.MaxInflight < 0 {
		c.MaxInflight = 0
	}
	if c.AgentPrefix == "" {
		c.AgentPrefix = "storm-agent-"
	}
	if c.ConnectRate <= 0 {
		c.ConnectRate = 1000
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = 60 * time.Second
	}
	if c.RecoverTimeout <= 0 {
		c.RecoverTimeout = 60 * time.Second
	}
	if len(c.Tokens) == 0 && len(c.TokenCmd) == 0 {
		return fmt.Errorf("%w: agent tokens are required: -token-cmd or -tokens", ErrConfig)
	}
	if len(c.Tokens) > 0 && len(c.Tokens) < c.Agents {
		return fmt.Errorf("%w: %d tokens for %d agents", ErrConfig, len(c.Tokens), c.Agents)
	}
	return nil
}

// skillFor returns the skill group of worker i (see ChatConfig.Skill).
func (c *StormConfig) skillFor(i int) string {
	cc := ChatConfig{Common: Common{Procs: c.Procs}, Skill: c.Skill}
	if cc.Skill == "" && c.Procs > 1 {
		cc.Skill = "storm"
	}
	return cc.skillFor(i)
}

// stormJob is one worker's part of a storm.
type stormJob struct {
	Common
	Index          int           `json:"index"`
	Clients        int           `json:"clients"`
	Agents         []agentSpec   `json:"agents"`
	AgentCapacity  int           `json:"agent_capacity"`
	Skill          string        `json:"skill"`
	Messages       int           `json:"messages"`
	Missed         int           `json:"missed"`
	Size           int           `json:"size"`
	MaxInflight    int           `json:"max_inflight"`
	ConnectRate    float64       `json:"connect_rate"`
	SetupTimeout   time.Duration `json:"setup_timeout"`
	RecoverTimeout time.Duration `json:"recover_timeout"`
	Deadline       int64         `json:"deadline"`
}

// stormProgress is a worker's cumulative counters.
type stormProgress struct {
	Phase        string `json:"phase"`
	AgentsOnline int64  `json:"agents_online"`
	Visitors     int64  `json:"visitors"`
	Linked       int64  `json:"linked"`
	Dropped      int64  `json:"dropped"`
	Welcomed     int64  `json:"welcomed"`
	Replayed     int64  `json:"replayed"` // clients whose replay is complete
	Failed       int64  `json:"failed"`
}

func (p *stormProgress) add(o stormProgress) {
	p.AgentsOnline += o.AgentsOnline
	p.Visitors += o.Visitors
	p.Linked += o.Linked
	p.Dropped += o.Dropped
	p.Welcomed += o.Welcomed
	p.Replayed += o.Replayed
	p.Failed += o.Failed
}

// stormResult is a worker's final report.
type stormResult struct {
	Counts      StormCounts  `json:"counts"`
	Welcome     histSnapshot `json:"welcome"`
	Replay      histSnapshot `json:"replay"`
	LastWelcome int64        `json:"last_welcome"` // Unix ns, 0: none
	LastReplay  int64        `json:"last_replay"`
	Refusals    Reasons      `json:"refusals"`
	Errors      Reasons      `json:"errors"`
	Drops       Reasons      `json:"drops"`
	Events      Reasons      `json:"events"`
}

// StormCounts accounts for the clients and the replayed messages.
type StormCounts struct {
	Clients int64 `json:"clients"`
	// Resumed clients were welcomed with Resumed true, their user id and
	// their conversation; NotResumed were welcomed otherwise; Failed got
	// no welcome (refused: see refusals by code, or a connection error).
	Resumed    int64 `json:"resumed"`
	NotResumed int64 `json:"not_resumed"`
	Failed     int64 `json:"failed"`
	// Expected is the messages stored after the clients' cursors (the
	// missed messages); Replayed the distinct ones delivered after the
	// resume; Gaps the expected ones never delivered (resumed clients
	// only); Duplicates deliveries of a message already delivered or at
	// or below the cursor; Unexpected deliveries above the last stored
	// message.
	Expected   int64 `json:"expected"`
	Replayed   int64 `json:"replayed"`
	Gaps       int64 `json:"gaps"`
	Duplicates int64 `json:"duplicates"`
	// BelowCursor counts the duplicates at or below the cursor (history
	// replayed although the client had it).
	BelowCursor int64 `json:"below_cursor"`
	Unexpected  int64 `json:"unexpected"`
	// PostAcked counts the clients whose first message after the resume
	// was acknowledged; PostDelivered those whose agent received it.
	PostAcked     int64 `json:"post_acked"`
	PostDelivered int64 `json:"post_delivered"`
	// StateSeen counts the resumed clients that got their conversation's
	// state (a conversation event) before its replay.
	StateSeen int64 `json:"state_seen"`
}

func (s *StormCounts) add(o StormCounts) {
	s.Clients += o.Clients
	s.Resumed += o.Resumed
	s.NotResumed += o.NotResumed
	s.Failed += o.Failed
	s.Expected += o.Expected
	s.Replayed += o.Replayed
	s.Gaps += o.Gaps
	s.Duplicates += o.Duplicates
	s.BelowCursor += o.BelowCursor
	s.Unexpected += o.Unexpected
	s.PostAcked += o.PostAcked
	s.PostDelivered += o.PostDelivered
	s.StateSeen += o.StateSeen
}

// StormReport is the result of RunStorm.
type StormReport struct {
	Scenario string      `json:"scenario"`
	Started  time.Time   `json:"started"`
	Machine  Machine     `json:"machine"`
	Config   StormConfig `json:"config"`
	StormCounts
	// RecoverWelcome is the time from the reconnect signal to the last
	// client's welcome; RecoverReplay to the last client's complete
	// replay. ResumeRate is resumed clients / RecoverWelcome.
	RecoverWelcome float64 `json:"recover_welcome_s"`
	RecoverReplay  float64 `json:"recover_replay_s"`
	ResumeRate     float64 `json:"resume_rate"`
	// WelcomeLatency is per client from its reconnect attempt to its
	// welcome, ReplayLatency to its last missed message.
	WelcomeLatency Latency `json:"welcome_latency"`
	ReplayLatency  Latency `json:"replay_latency"`
	// Refusals counts the reconnects answered with an error, by code (or
	// failed otherwise, by reason).
	Refusals  Reasons      `json:"refusals"`
	Errors    Reasons      `json:"errors"`
	Drops     Reasons      `json:"drops"`
	Events    Reasons      `json:"unexpected_events"`
	Timeline  []StormPoint `json:"timeline"`
	Integrity []string     `json:"integrity_violations"`
	Notes     []string     `json:"notes,omitempty"`
}

// StormPoint is one second of a storm.
type StormPoint struct {
	At       float64 `json:"at_s"`
	Phase    string  `json:"phase"`
	Welcomed int64   `json:"welcomed"`
	Replayed int64   `json:"replayed"`
	Failed   int64   `json:"failed"`
}

// Commands and events of the storm.
const (
	cmdStorm  = "storm"
	cmdDrop   = "drop"
	evDropped = "dropped"
)

// RunStorm runs the reconnect storm and returns its report (with most
// errors too); ErrIntegrity comes with a complete report.
func RunStorm(ctx context.Context, c StormConfig) (*StormReport, error) {
	if err := c.setDefaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &StormReport{Scenario: "storm", Started: start, Machine: DescribeMachine(c.ServerPID), Config: c}
	tokens := c.Tokens
	if len(tokens) == 0 {
		var err error
		if tokens, err = mintTokensWith(ctx, c.TokenCmd, c.AgentPrefix, c.Agents); err != nil {
			return rep, err
		}
	}
	deadline := time.Now().Add(2*c.SetupTimeout + c.Down + c.RecoverTimeout + 2*time.Minute)
	pool, err := startWorkers(&c.Common, c.Procs)
	if err != nil {
		return rep, err
	}
	defer pool.stop(15 * time.Second)
	for i, p := range pool.procs {
		job := &stormJob{
			Common: c.Common, Index: i, Clients: share(c.Clients, c.Procs, i),
			AgentCapacity: c.AgentCapacity, Skill: c.skillFor(i), Messages: c.Messages, Missed: c.Missed,
			Size: c.Size, MaxInflight: c.MaxInflight, ConnectRate: c.ConnectRate / float64(c.Procs),
			SetupTimeout: c.SetupTimeout, RecoverTimeout: c.RecoverTimeout, Deadline: deadline.UnixNano(),
		}
		job.Progress = nil
		ao := offset(c.Agents, c.Procs, i)
		for n := ao; n < ao+share(c.Agents, c.Procs, i); n++ {
			job.Agents = append(job.Agents, agentSpec{ID: c.AgentPrefix + strconv.Itoa(n), Token: tokens[n]})
		}
		if err := p.send(wire{Cmd: cmdStorm, Storm: job}); err != nil {
			return rep, err
		}
	}
	live := newLiveProgress[stormProgress](c.Procs)
	sum := live.sum
	co := &coordinator{pool: pool}
	co.progress = func(ev workerEvent) {
		if p := ev.w.StormProgress; p != nil {
			live.set(ev.idx, *p, nil)
		}
	}
	stopLine := startProgressLine(c.Progress, start, func() string {
		s := sum()
		rep.Timeline = append(rep.Timeline, StormPoint{At: time.Since(start).Seconds(), Phase: s.Phase,
			Welcomed: s.Welcomed, Replayed: s.Replayed, Failed: s.Failed})
		return fmt.Sprintf("%-8s agents %d/%d  visitors %d/%d  assigned %d  dropped %d  welcomed %d  replayed %d  failed %d",
			s.Phase, s.AgentsOnline, c.Agents, s.Visitors, c.Clients, s.Linked, s.Dropped, s.Welcomed, s.Replayed, s.Failed)
	})
	defer stopLine()

	// Each phase waits for one event from every worker.
	await := func(ev string, timeout time.Duration) error {
		n := 0
		return co.pump(ctx, timeout, func(e workerEvent) bool {
			if e.w.Ev == ev {
				co.progress(workerEvent{idx: e.idx, w: wire{StormProgress: e.w.StormProgress}})
				n++
			}
			return n == c.Procs
		})
	}
	if err := await(evReady, 2*c.SetupTimeout+30*time.Second); err != nil {
		return rep, fmt.Errorf("%w: %v", ErrSetup, err)
	}
	if err := pool.broadcast(wire{Cmd: cmdDrop}); err != nil {
		return rep, err
	}
	if err := await(evDropped, c.SetupTimeout+30*time.Second); err != nil {
		return rep, fmt.Errorf("dropping: %w", err)
	}
	if err := co.wait(ctx, c.Down); err != nil {
		return rep, err
	}
	t0 := time.Now().Add(200 * time.Millisecond)
	if err := pool.broadcast(wire{Cmd: cmdStart, T0: t0.UnixNano()}); err != nil {
		return rep, err
	}
	var welcome, replay []histSnapshot
	var lastWelcome, lastReplay int64
	results := 0
	err = co.pump(ctx, c.RecoverTimeout+time.Minute, func(ev workerEvent) bool {
		r := ev.w.StormResult
		if ev.w.Ev != evResult || r == nil {
			return false
		}
		results++
		rep.StormCounts.add(r.Counts)
		welcome, replay = append(welcome, r.Welcome), append(replay, r.Replay)
		lastWelcome, lastReplay = max(lastWelcome, r.LastWelcome), max(lastReplay, r.LastReplay)
		rep.Refusals.merge(r.Refusals)
		rep.Errors.merge(r.Errors)
		rep.Drops.merge(r.Drops)
		rep.Events.merge(r.Events)
		return results == c.Procs
	})
	if err != nil {
		return rep, fmt.Errorf("collecting results: %w", err)
	}
	rep.WelcomeLatency = summarize(mergeHists(welcome))
	rep.ReplayLatency = summarize(mergeHists(replay))
	if lastWelcome > 0 {
		rep.RecoverWelcome = float64(lastWelcome-t0.UnixNano()) / 1e9
		if rep.RecoverWelcome > 0 {
			rep.ResumeRate = float64(rep.Resumed) / rep.RecoverWelcome
		}
	}
	if lastReplay > 0 {
		rep.RecoverReplay = float64(lastReplay-t0.UnixNano()) / 1e9
	}
	rep.Integrity = rep.violations()
	if len(rep.Integrity) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(rep.Integrity, "; "))
	}
	return rep, nil
}

// violations lists what must not happen in a storm.
func (r *StormReport) violations() []string {
	var out []string
	for _, v := range []struct {
		what string
		n    int64
	}{
		{"clients not resumed (no welcome)", r.Failed},
		{"clients welcomed without their session", r.NotResumed},
		{"gaps (missed messages never replayed)", r.Gaps},
		{"duplicates", r.Duplicates},
		{"unexpected deliveries", r.Unexpected},
		{"clients whose message after the resume was not acknowledged", r.Resumed - r.PostAcked},
		{"clients whose message after the resume did not reach the agent", r.Resumed - r.PostDelivered},
	} {
		if v.n > 0 {
			out = append(out, fmt.Sprintf("%d %s", v.n, v.what))
		}
	}
	if r.Clients != int64(r.Config.Clients) {
		out = append(out, fmt.Sprintf("%d of %d clients took part", r.Clients, r.Config.Clients))
	}
	return out
}

// WriteSummary writes a readable summary of the report.
func (r *StormReport) WriteSummary(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "unigate-bench storm: %d clients, %d agents × %d, %d messages each way before the drop, %d missed, %d workers, %s, %s\n",
		c.Clients, c.Agents, c.AgentCapacity, c.Messages, c.Missed, c.Procs, c.channelLabel(), c.URL)
	writeMachine(w, r.Machine)
	fmt.Fprintf(w, "resumed %d of %d (not resumed %d, failed %d); all welcomed in %.3fs (%.0f resumes/s), all replayed in %.3fs\n",
		r.Resumed, r.Clients, r.NotResumed, r.Failed, r.RecoverWelcome, r.ResumeRate, r.RecoverReplay)
	fmt.Fprintf(w, "replay: expected %d, replayed %d, gaps %d, duplicates %d (%d at or below the cursor), unexpected %d; state before replay %d; message after resume acked %d, delivered %d\n",
		r.Expected, r.Replayed, r.Gaps, r.Duplicates, r.BelowCursor, r.Unexpected, r.StateSeen, r.PostAcked, r.PostDelivered)
	writeLatency(w, "reconnect → welcome", r.WelcomeLatency)
	writeLatency(w, "reconnect → replay complete", r.ReplayLatency)
	writeReasons(w, "refusals by code", r.Refusals)
	if len(r.Errors.Counts) > 0 {
		writeReasons(w, "errors", r.Errors)
	}
	writeReasons(w, "connections dropped (not by the storm)", r.Drops)
	if len(r.Events.Counts) > 0 {
		writeReasons(w, "unexpected events", r.Events)
	}
	if len(r.Integrity) == 0 {
		fmt.Fprintln(w, "integrity: ok (every client resumed, no gap, no duplicate)")
	}
	for _, v := range r.Integrity {
		fmt.Fprintf(w, "INTEGRITY VIOLATION: %s\n", v)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func (r *StormReport) title() string {
	return fmt.Sprintf("unigate-bench storm: %d clients (%s), %s", r.Config.Clients, r.Config.channelLabel(), r.Started.UTC().Format(time.RFC3339))
}

func (r *StormReport) charts() []chart {
	tl := chart{title: "Clients welcomed and replayed over time", xLabel: "time (s)", yLabel: "clients"}
	var wl, rp series
	wl.name, rp.name = "welcomed again", "replay complete"
	for _, p := range r.Timeline {
		wl.x, wl.y = append(wl.x, p.At), append(wl.y, float64(p.Welcomed))
		rp.x, rp.y = append(rp.x, p.At), append(rp.y, float64(p.Replayed))
	}
	tl.series = []series{wl, rp}
	return []chart{curveChart("Reconnect latency, percentile curve",
		namedLatency{"reconnect → welcome", r.WelcomeLatency}, namedLatency{"reconnect → replay complete", r.ReplayLatency}), tl}
}

// ---- worker ----

// stormConv is one client: its visitor, its conversation and what it saw.
type stormConv struct {
	idx    int
	linked chan struct{} // closed when both sides saw the assignment
	vAcks  chan ackEv    // answers to the visitor's sends
	aAcks  chan ackEv    // answers to the agent's sends

	mu          sync.Mutex
	id          string
	agentID     string
	agent       *stormAgent
	userID      string
	resumeToken string
	conn        *wsConn
	gen         int    // connection generation: 0 before the drop
	cursor      uint64 // highest seq processed (ack or deliver)
	agentGot    int    // visitor messages the agent received
	dropCursor  uint64 // cursor at the drop
	lastSeq     uint64 // last missed message stored
	got         map[uint64]bool
	stateSeen   bool
	postAcked   bool
	replayDone  chan struct{}
	dups, below int64
	unexpected  int64
}

type ackEv struct {
	seq uint64
	err error
}

type stormAgent struct {
	conn     *wsConn
	userID   string
	presence chan error
	granted  int
}

type stormWorker struct {
	job    *stormJob
	dial   *dialer
	agents []*stormAgent
	convs  []*stormConv
	base   time.Time

	mu           sync.Mutex
	byID         map[string]*stormConv
	pendingAgent map[string]*stormAgent

	readers sync.WaitGroup
	closing atomic.Bool
	phase   atomic.Value

	agentsOnline, visitors, linked, dropped, welcomed, replayed, failed atomic.Int64
	lastWelcome, lastReplay                                             atomic.Int64

	welcomeHist, replayHist               *latencyHist
	refusals, errs, setupErrs, drops, evs *reasonCounter
}

func runStormWorker(ctx context.Context, job *stormJob, cmds <-chan wire, link *workerLink) error {
	if err := job.Common.setDefaults(); err != nil {
		return err
	}
	d, err := newDialer(&job.Common, 4096, nil)
	if err != nil {
		return err
	}
	w := &stormWorker{
		job: job, dial: d, base: time.Now(),
		byID: make(map[string]*stormConv), pendingAgent: make(map[string]*stormAgent),
		welcomeHist: newLatencyHist(), replayHist: newLatencyHist(),
		refusals: newReasonCounter(), errs: newReasonCounter(), setupErrs: newReasonCounter(),
		drops: newReasonCounter(), evs: newReasonCounter(),
	}
	w.phase.Store("setup")
	for i := range job.Clients {
		w.convs = append(w.convs, &stormConv{idx: i, linked: make(chan struct{}),
			vAcks: make(chan ackEv, 4), aAcks: make(chan ackEv, 4), replayDone: make(chan struct{})})
	}
	defer everySecond(func() {
		p := w.progress()
		link.emit(wire{Ev: evProgress, StormProgress: &p})
	})()
	defer w.closeAll()

	next := func(want string) (wire, error) {
		select {
		case <-ctx.Done():
			return wire{}, context.Cause(ctx)
		case c, ok := <-cmds:
			if !ok {
				return c, errors.New("coordinator went away")
			}
			if c.Cmd != want {
				return c, fmt.Errorf("want %q, got %q", want, c.Cmd)
			}
			return c, nil
		}
	}
	if err := w.setup(ctx); err != nil {
		return fmt.Errorf("storm worker %d: %w", job.Index, err)
	}
	w.phase.Store("ready")
	p := w.progress()
	link.emit(wire{Ev: evReady, StormProgress: &p})
	if _, err := next(cmdDrop); err != nil {
		return err
	}
	if err := w.drop(ctx); err != nil {
		return fmt.Errorf("storm worker %d: %w", job.Index, err)
	}
	p = w.progress()
	link.emit(wire{Ev: evDropped, StormProgress: &p})
	c, err := next(cmdStart)
	if err != nil {
		return err
	}
	w.resume(ctx, time.Unix(0, c.T0))
	res := w.result()
	w.phase.Store("close")
	link.emit(wire{Ev: evResult, StormResult: res})
	return nil
}

func (w *stormWorker) progress() stormProgress {
	return stormProgress{
		Phase: w.phase.Load().(string), AgentsOnline: w.agentsOnline.Load(), Visitors: w.visitors.Load(),
		Linked: w.linked.Load(), Dropped: w.dropped.Load(), Welcomed: w.welcomed.Load(),
		Replayed: w.replayed.Load(), Failed: w.failed.Load(),
	}
}

// parallel runs f for every conversation, at most n at once, and returns
// the first error.
func (w *stormWorker) parallel(ctx context.Context, n int, f func(ctx context.Context, c *stormConv) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var g sync.WaitGroup
	var once sync.Once
	var first error
	sem := make(chan struct{}, n)
	for _, c := range w.convs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		g.Go(func() {
			defer func() { <-sem }()
			if err := f(ctx, c); err != nil {
				once.Do(func() { first = fmt.Errorf("client %d: %w", c.idx, err); cancel() })
			}
		})
	}
	g.Wait()
	if first == nil && ctx.Err() != nil {
		first = context.Cause(ctx)
	}
	return first
}

// setup connects the agents and the visitors, waits for every assignment
// and exchanges the first messages.
func (w *stormWorker) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.job.SetupTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	pace := newPacer(w.job.ConnectRate)
	w.agents = make([]*stormAgent, len(w.job.Agents))
	for i, spec := range w.job.Agents {
		if !pace.wait(ctx) {
			return fmt.Errorf("agents: %w", ctx.Err())
		}
		if err := w.startAgent(ctx, i, spec, deadline); err != nil {
			w.setupErrs.addErr(err)
			return fmt.Errorf("agent %s: %w", spec.ID, err)
		}
	}
	w.phase.Store("visitors")
	var g sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 64)
	for _, c := range w.convs {
		if !pace.wait(ctx) {
			break
		}
		sem <- struct{}{}
		g.Go(func() {
			defer func() { <-sem }()
			if err := w.startVisitor(ctx, c, deadline); err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("visitor %d: %w", c.idx, err)
					cancel()
				}
				errMu.Unlock()
			}
		})
	}
	g.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("visitors: %w", err)
	}
	w.phase.Store("assign")
	for _, c := range w.convs {
		select {
		case <-c.linked:
		case <-ctx.Done():
			return fmt.Errorf("%w: %d of %d conversations assigned after %v (setup errors %v)",
				ErrSetup, w.linked.Load(), len(w.convs), w.job.SetupTimeout, w.setupErrs.export().Counts)
		}
	}
	w.phase.Store("messages")
	// The first messages, both ways; each side waits for its acks.
	return w.parallel(ctx, 64, func(ctx context.Context, c *stormConv) error {
		c.mu.Lock()
		vconn, a := c.conn, c.agent
		c.mu.Unlock()
		for k := range w.job.Messages {
			if _, err := w.sendWait(ctx, vconn, c, c.vAcks, msgID(c.idx, k), "v"+strconv.Itoa(k), true); err != nil {
				return fmt.Errorf("visitor message %d: %w", k, err)
			}
			if _, err := w.sendWait(ctx, a.conn, c, c.aAcks, msgID(c.idx, 1000+k), "a"+strconv.Itoa(k), true); err != nil {
				return fmt.Errorf("agent message %d: %w", k, err)
			}
		}
		// Wait until the visitor saw every agent message and the agent
		// every visitor message.
		for {
			c.mu.Lock()
			done := c.agentGot >= w.job.Messages && c.cursor >= c.lastSeq
			c.mu.Unlock()
			if done {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("first messages not delivered: %w", ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
}

// sendWait sends a message of c on conn and waits for its answer on acks;
// the seq of the ack is recorded as c.lastSeq.
func (w *stormWorker) sendWait(ctx context.Context, conn *wsConn, c *stormConv, acks chan ackEv, id uint64, cmid string, record bool) (uint64, error) {
	env := protocol.Envelope{Kind: protocol.KindSend, ID: id}
	c.mu.Lock()
	convID := c.id
	c.mu.Unlock()
	_, k, _ := splitMsgID(id)
	env.Send = protocol.Send{ConversationID: convID, ClientMsgID: cmid, Text: string(appendPayload(nil, payload{k: k}, w.job.Size))}
	if err := conn.send(&env); err != nil {
		return 0, err
	}
	select {
	case a := <-acks:
		if a.err != nil {
			return 0, a.err
		}
		if record {
			c.mu.Lock()
			c.lastSeq = max(c.lastSeq, a.seq)
			c.mu.Unlock()
		}
		return a.seq, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("no ack: %w", ctx.Err())
	}
}

func (w *stormWorker) startAgent(ctx context.Context, i int, spec agentSpec, deadline time.Time) error {
	conn, err := w.dial.dial(ctx, i)
	if err != nil {
		return err
	}
	welcome, err := conn.helloAgent(spec.Token, deadline)
	if err != nil {
		return err
	}
	a := &stormAgent{conn: conn, userID: welcome.UserID, presence: make(chan error, 1)}
	w.mu.Lock()
	w.agents[i] = a
	w.mu.Unlock()
	w.readers.Add(1)
	go w.agentReader(a)
	if err := conn.goOnline(ctx, w.job.AgentCapacity, w.job.Skill, a.presence); err != nil {
		return err
	}
	if a.granted < w.job.AgentCapacity {
		return fmt.Errorf("%w: the server granted capacity %d of %d: use more agents", ErrSetup, a.granted, w.job.AgentCapacity)
	}
	w.agentsOnline.Add(1)
	return nil
}

func (w *stormWorker) startVisitor(ctx context.Context, c *stormConv, deadline time.Time) error {
	conn, err := w.dial.dial(ctx, len(w.job.Agents)+c.idx)
	if err != nil {
		w.setupErrs.addErr(err)
		return err
	}
	welcome, err := conn.hello("", deadline)
	if err != nil {
		w.setupErrs.addErr(err)
		_ = conn.c.Close()
		return err
	}
	c.mu.Lock()
	c.conn, c.userID, c.resumeToken = conn, welcome.UserID, welcome.ResumeToken
	c.mu.Unlock()
	if c.resumeToken == "" {
		_ = conn.c.Close()
		return errors.New("the welcome carries no resume token")
	}
	w.visitors.Add(1)
	w.readers.Add(1)
	go w.visitorReader(c, conn, 0)
	env := protocol.Envelope{Kind: protocol.KindOpen, ID: openID}
	env.Open = protocol.Open{Skill: w.job.Skill}
	return conn.send(&env)
}

// link pairs conversation id with its visitor (c) or its agent (a).
func (w *stormWorker) link(id string, c *stormConv, a *stormAgent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c != nil {
		w.byID[id] = c
		if pa := w.pendingAgent[id]; pa != nil {
			delete(w.pendingAgent, id)
			a = pa
		}
	} else if c = w.byID[id]; c == nil {
		w.pendingAgent[id] = a
		return
	}
	if a == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.agent == nil {
		c.agent = a
		w.linked.Add(1)
		close(c.linked)
	}
}

// ackTarget returns the conversation a message id names.
func (w *stormWorker) ackTarget(id uint64) (*stormConv, bool) {
	j, _, ok := splitMsgID(id)
	if !ok || j >= len(w.convs) {
		return nil, false
	}
	return w.convs[j], true
}

func (w *stormWorker) agentReader(a *stormAgent) {
	defer w.readers.Done()
	for {
		e, err := a.conn.read()
		var pe *protocol.Error
		if errors.As(err, &pe) {
			w.evs.add("agent_undecodable", err)
			continue
		}
		if err != nil {
			if !w.closing.Load() {
				w.drops.addErr(err)
			}
			select {
			case a.presence <- err:
			default:
			}
			return
		}
		switch e.Kind {
		case protocol.KindConversation:
			cv := &e.Conversation
			if cv.State == protocol.StateAssigned && cv.AgentID == a.userID {
				w.link(strings.Clone(cv.ConversationID), nil, a)
			}
		case protocol.KindDeliver:
			w.mu.Lock()
			c := w.byID[e.Deliver.ConversationID]
			w.mu.Unlock()
			if c != nil && e.Deliver.SenderRole == protocol.RoleVisitor {
				c.mu.Lock()
				c.agentGot++
				c.mu.Unlock()
			}
		case protocol.KindAck:
			if c, ok := w.ackTarget(e.ID); ok {
				c.aAcks <- ackEv{seq: e.Ack.Seq}
			} else {
				w.evs.add("agent_ack_unknown", nil)
			}
		case protocol.KindPresence:
			if e.ID == presenceID {
				a.granted = int(e.Presence.Capacity)
				var err error
				if e.Presence.Status != protocol.StatusOnline {
					err = fmt.Errorf("presence answered with status %s", e.Presence.Status)
				}
				select {
				case a.presence <- err:
				default:
				}
			}
		case protocol.KindError:
			err := &serverError{code: e.Error.Code, msg: strings.Clone(e.Error.Message)}
			if e.ID == presenceID {
				select {
				case a.presence <- err:
				default:
				}
			} else if c, ok := w.ackTarget(e.ID); ok {
				w.errs.addErr(err)
				c.aAcks <- ackEv{err: err}
			} else {
				w.errs.addErr(err)
			}
		default:
			// Typing, read receipts, presence of others: not part of the storm.
		}
	}
}

// visitorReader reads connection gen of c's visitor.
func (w *stormWorker) visitorReader(c *stormConv, conn *wsConn, gen int) {
	defer w.readers.Done()
	for {
		e, err := conn.read()
		var pe *protocol.Error
		if errors.As(err, &pe) {
			w.evs.add("visitor_undecodable", err)
			continue
		}
		if err != nil {
			c.mu.Lock()
			expected := c.gen != gen || w.closing.Load()
			c.mu.Unlock()
			if !expected {
				w.drops.addErr(err)
			}
			return
		}
		switch e.Kind {
		case protocol.KindAck:
			c.mu.Lock()
			c.cursor = max(c.cursor, e.Ack.Seq)
			c.mu.Unlock()
			if tc, ok := w.ackTarget(e.ID); ok && tc == c {
				c.vAcks <- ackEv{seq: e.Ack.Seq}
			} else {
				w.evs.add("visitor_ack_unknown", nil)
			}
		case protocol.KindDeliver:
			w.visitorDeliver(c, gen, e.Deliver.Seq)
		case protocol.KindConversation:
			cv := &e.Conversation
			if gen > 0 {
				c.mu.Lock()
				if cv.ConversationID == c.id {
					c.stateSeen = true
				}
				c.mu.Unlock()
				continue
			}
			c.mu.Lock()
			first := c.id == ""
			if first {
				c.id = strings.Clone(cv.ConversationID)
			}
			if cv.State == protocol.StateAssigned && c.agentID == "" {
				c.agentID = strings.Clone(cv.AgentID)
			}
			id := c.id
			c.mu.Unlock()
			if first {
				w.link(id, c, nil)
			}
		case protocol.KindQueue:
		case protocol.KindError:
			err := &serverError{code: e.Error.Code, msg: strings.Clone(e.Error.Message)}
			if tc, ok := w.ackTarget(e.ID); ok && tc == c {
				w.errs.addErr(err)
				c.vAcks <- ackEv{err: err}
			} else {
				w.setupErrs.addErr(err)
				w.errs.addErr(err)
			}
		default:
			w.evs.add("visitor_"+e.Kind.String(), nil)
		}
	}
}

// visitorDeliver records a delivery to c's visitor on connection gen.
func (w *stormWorker) visitorDeliver(c *stormConv, gen int, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == 0 {
		c.cursor = max(c.cursor, seq)
		return
	}
	switch {
	case seq <= c.dropCursor:
		c.dups++
		c.below++
	case seq > c.lastSeq:
		// A message stored after the resume (none is sent) or unknown.
		c.unexpected++
	case c.got[seq]:
		c.dups++
	default:
		c.got[seq] = true
		if uint64(len(c.got)) == c.lastSeq-c.dropCursor {
			w.replayFinished(c)
		}
	}
}

// replayFinished marks c's replay complete (c.mu held).
func (w *stormWorker) replayFinished(c *stormConv) {
	select {
	case <-c.replayDone:
		return
	default:
	}
	close(c.replayDone)
	w.replayed.Add(1)
	now := time.Now().UnixNano()
	for {
		old := w.lastReplay.Load()
		if now <= old || w.lastReplay.CompareAndSwap(old, now) {
			break
		}
	}
}

// drop closes every visitor connection without a close handshake and
// stores the missed messages from the agents.
func (w *stormWorker) drop(ctx context.Context) error {
	w.phase.Store("drop")
	for _, c := range w.convs {
		c.mu.Lock()
		c.dropCursor = c.cursor
		c.gen = 1
		conn := c.conn
		c.mu.Unlock()
		_ = conn.c.Close() // no close frame: the connection just ends
		w.dropped.Add(1)
	}
	w.phase.Store("missed")
	ctx, cancel := context.WithTimeout(ctx, w.job.SetupTimeout)
	defer cancel()
	return w.parallel(ctx, 64, func(ctx context.Context, c *stormConv) error {
		c.mu.Lock()
		a := c.agent
		c.mu.Unlock()
		for k := range w.job.Missed {
			if _, err := w.sendWait(ctx, a.conn, c, c.aAcks, msgID(c.idx, 2000+k), "m"+strconv.Itoa(k), true); err != nil {
				return fmt.Errorf("missed message %d: %w", k, err)
			}
		}
		return nil
	})
}

// resume reconnects every client at t0 with its resume token and cursor,
// waits for the replays, then sends one message per client.
func (w *stormWorker) resume(ctx context.Context, t0 time.Time) {
	ctx, cancel := context.WithTimeout(ctx, w.job.RecoverTimeout)
	defer cancel()
	if d := time.Until(t0); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	w.phase.Store("resume")
	inflight := w.job.MaxInflight
	if inflight <= 0 {
		inflight = len(w.convs)
	}
	deadline, _ := ctx.Deadline()
	_ = w.parallel(ctx, inflight, func(ctx context.Context, c *stormConv) error {
		w.resumeOne(ctx, c, deadline)
		return nil
	})
	w.phase.Store("replay")
	for _, c := range w.convs {
		select {
		case <-c.replayDone:
		case <-ctx.Done():
		}
	}
	// Late duplicates would arrive right after the replay.
	select {
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
	}
	w.phase.Store("post")
	_ = w.parallel(ctx, 64, func(ctx context.Context, c *stormConv) error {
		c.mu.Lock()
		conn, resumed := c.conn, c.gen == 2
		c.mu.Unlock()
		if !resumed {
			return nil
		}
		if _, err := w.sendWait(ctx, conn, c, c.vAcks, msgID(c.idx, 3000), "post", false); err == nil {
			c.mu.Lock()
			c.postAcked = true
			c.mu.Unlock()
		}
		return nil // a missing ack is counted by the result
	})
	// The agents' deliveries of the post messages.
	for range 100 {
		if w.postDelivered() == w.postAcked() {
			break
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// resumeOne reconnects client c and records its welcome.
func (w *stormWorker) resumeOne(ctx context.Context, c *stormConv, deadline time.Time) {
	start := time.Now()
	c.mu.Lock()
	h := protocol.Hello{ResumeToken: c.resumeToken, Cursors: []protocol.Cursor{{ConversationID: c.id, LastSeq: c.dropCursor}}}
	c.got = make(map[uint64]bool)
	if c.lastSeq == c.dropCursor {
		w.replayFinished(c)
	}
	c.mu.Unlock()
	conn, err := w.dial.dial(ctx, len(w.job.Agents)+c.idx)
	if err != nil {
		w.failed.Add(1)
		w.refusals.addErr(err)
		return
	}
	// Readers of this connection count replays: it must be generation 2
	// before the welcome, as the replay follows the welcome at once.
	c.mu.Lock()
	c.gen = 2
	c.mu.Unlock()
	welcome, err := conn.helloWith(h, deadline)
	if err != nil {
		c.mu.Lock()
		c.gen = 3 // this connection's reader never starts
		c.mu.Unlock()
		_ = conn.c.Close()
		w.failed.Add(1)
		w.refusals.addErr(err)
		return
	}
	now := time.Now()
	w.welcomeHist.record(now.Sub(start))
	w.welcomed.Add(1)
	for {
		old := w.lastWelcome.Load()
		if now.UnixNano() <= old || w.lastWelcome.CompareAndSwap(old, now.UnixNano()) {
			break
		}
	}
	c.mu.Lock()
	ok := welcome.Resumed && welcome.UserID == c.userID && slices.Contains(welcome.Conversations, c.id)
	if !ok {
		c.gen = 4 // not resumed: neither replay nor post message is counted
	}
	c.conn = conn
	c.mu.Unlock()
	if !ok {
		w.evs.add("not_resumed", fmt.Errorf("resumed %v, user %q (was %q), conversations %v", welcome.Resumed, welcome.UserID, c.userID, welcome.Conversations))
	}
	w.readers.Add(1)
	go w.visitorReader(c, conn, 2)
	select {
	case <-c.replayDone:
		w.replayHist.record(time.Since(start))
	case <-ctx.Done():
	}
}

func (w *stormWorker) postAcked() int64 {
	var n int64
	for _, c := range w.convs {
		c.mu.Lock()
		if c.gen == 2 && c.postAcked {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

func (w *stormWorker) postDelivered() int64 {
	var n int64
	for _, c := range w.convs {
		c.mu.Lock()
		if c.gen == 2 && c.agentGot > w.job.Messages {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

func (w *stormWorker) result() *stormResult {
	r := &stormResult{
		Welcome: w.welcomeHist.snapshot(), Replay: w.replayHist.snapshot(),
		LastWelcome: w.lastWelcome.Load(), LastReplay: w.lastReplay.Load(),
		Refusals: w.refusals.export(), Errors: w.errs.export(), Drops: w.drops.export(), Events: w.evs.export(),
	}
	n := &r.Counts
	n.Clients = int64(len(w.convs))
	n.Failed = w.failed.Load()
	n.PostAcked = w.postAcked()
	n.PostDelivered = w.postDelivered()
	for _, c := range w.convs {
		c.mu.Lock()
		exp := int64(c.lastSeq - c.dropCursor)
		n.Expected += exp
		switch c.gen {
		case 2:
			n.Resumed++
			n.Replayed += int64(len(c.got))
			n.Gaps += exp - int64(len(c.got))
			n.Duplicates += c.dups
			n.BelowCursor += c.below
			n.Unexpected += c.unexpected
			if c.stateSeen {
				n.StateSeen++
			}
		case 4:
			n.NotResumed++
		}
		c.mu.Unlock()
	}
	return r
}

// closeAll closes every connection and waits for the readers.
func (w *stormWorker) closeAll() {
	w.closing.Store(true)
	w.mu.Lock()
	var conns []*wsConn
	for _, a := range w.agents {
		if a != nil {
			conns = append(conns, a.conn)
		}
	}
	w.mu.Unlock()
	for _, c := range w.convs {
		c.mu.Lock()
		if c.conn != nil {
			conns = append(conns, c.conn)
		}
		c.mu.Unlock()
	}
	for _, c := range conns {
		c.closeNow()
	}
	w.readers.Wait()
}
