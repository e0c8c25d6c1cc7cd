package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/unigate/unigate/protocol"
)

// agentSpec names one agent of a chat worker.
type agentSpec struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// chatJob is one worker's part of a chat run.
type chatJob struct {
	Common
	Index         int           `json:"index"`
	Convs         int           `json:"convs"`       // this worker's conversations
	ConvOffset    int           `json:"conv_offset"` // global index of the first
	TotalConvs    int           `json:"total_convs"`
	Rate          float64       `json:"rate"` // total visitor messages per second, all workers
	Agents        []agentSpec   `json:"agents"`
	AgentCapacity int           `json:"agent_capacity"`
	Skill         string        `json:"skill"`
	Size          int           `json:"size"`
	Reply         float64       `json:"reply"`
	Warmup        time.Duration `json:"warmup"`
	Duration      time.Duration `json:"duration"`
	Drain         time.Duration `json:"drain"`
	SetupTimeout  time.Duration `json:"setup_timeout"`
	ConnectRate   float64       `json:"connect_rate"` // this worker's
	Deadline      int64         `json:"deadline"`     // Unix nanoseconds
	// Samples asks for every measured latency with its due time (the
	// admission scenario splits them by phase after the run).
	Samples bool `json:"samples,omitempty"`
}

// chatProgress is a worker's cumulative counters.
type chatProgress struct {
	Phase         string `json:"phase"`
	AgentsOnline  int64  `json:"agents_online"`
	Visitors      int64  `json:"visitors"`
	Assigned      int64  `json:"assigned"`
	Sent          int64  `json:"sent"`
	Acked         int64  `json:"acked"`
	Delivered     int64  `json:"delivered"`
	RepliesSent   int64  `json:"replies_sent"`
	RepliesDeliv  int64  `json:"replies_delivered"`
	Errors        int64  `json:"errors"`
	Behind        int64  `json:"behind"` // due but not yet written
	Dropped       int64  `json:"dropped"`
	Unanswered    int64  `json:"unanswered"`
	Undelivered   int64  `json:"undelivered"`
	ScheduleTotal int64  `json:"schedule_total"`
	// Interval holds the visitor→agent latencies (from the due time) of
	// the deliveries since the previous progress event.
	Interval sparseHist `json:"ivl,omitempty"`
}

func (p *chatProgress) add(o chatProgress) {
	p.AgentsOnline += o.AgentsOnline
	p.Visitors += o.Visitors
	p.Assigned += o.Assigned
	p.Sent += o.Sent
	p.Acked += o.Acked
	p.Delivered += o.Delivered
	p.RepliesSent += o.RepliesSent
	p.RepliesDeliv += o.RepliesDeliv
	p.Errors += o.Errors
	p.Behind += o.Behind
	p.Dropped += o.Dropped
	p.Unanswered += o.Unanswered
	p.Undelivered += o.Undelivered
	p.ScheduleTotal += o.ScheduleTotal
}

// FlowResult accounts for the messages of one direction.
type FlowResult struct {
	// Offered is the number of messages due in the measured window
	// (visitor direction only: agent replies follow deliveries).
	Offered int64 `json:"offered,omitempty"`
	// Sent messages were written to the socket; Acked got an Ack;
	// Refused got an Error envelope instead (a definitive one: not
	// stored, never delivered); Unconfirmed got 5003 unconfirmed (the
	// outcome unknown), UnconfirmedStored of those were delivered after
	// all (to the other side, or to the sender as its own message);
	// Unanswered got neither an Ack nor an Error.
	Sent              int64 `json:"sent"`
	Acked             int64 `json:"acked"`
	Refused           int64 `json:"refused"`
	Unconfirmed       int64 `json:"unconfirmed"`
	UnconfirmedStored int64 `json:"unconfirmed_stored"`
	Unanswered        int64 `json:"unanswered"`
	// Delivered is unique messages received by the other side;
	// DeliveredMeasured those due after the warmup (the latency histogram
	// holds exactly these); DeliveredInWindow those received inside the
	// measured window, whatever their due time (the throughput).
	Delivered         int64 `json:"delivered"`
	DeliveredMeasured int64 `json:"delivered_measured"`
	DeliveredInWindow int64 `json:"delivered_in_window"`
	// Integrity: every one of these must be zero.
	Lost             int64 `json:"lost"`              // acked, never delivered
	Duplicates       int64 `json:"duplicates"`        // delivered more than once
	OutOfOrder       int64 `json:"out_of_order"`      // delivered after a later message
	DeliveredUnacked int64 `json:"delivered_unacked"` // delivered, never acked (unconfirmed ones aside)
	RefusedDelivered int64 `json:"refused_delivered"` // refused with an error, delivered anyway
	DuplicateAcks    int64 `json:"duplicate_acks"`
	SeqRegressions   int64 `json:"seq_regressions"` // a Deliver or Ack seq not above the previous one
	Misrouted        int64 `json:"misrouted"`       // wrong conversation, sender or role
	Corrupt          int64 `json:"corrupt"`         // text not as sent
}

func (f *FlowResult) add(o FlowResult) {
	f.Offered += o.Offered
	f.Sent += o.Sent
	f.Acked += o.Acked
	f.Refused += o.Refused
	f.Unconfirmed += o.Unconfirmed
	f.UnconfirmedStored += o.UnconfirmedStored
	f.Unanswered += o.Unanswered
	f.Delivered += o.Delivered
	f.DeliveredMeasured += o.DeliveredMeasured
	f.DeliveredInWindow += o.DeliveredInWindow
	f.Lost += o.Lost
	f.Duplicates += o.Duplicates
	f.OutOfOrder += o.OutOfOrder
	f.DeliveredUnacked += o.DeliveredUnacked
	f.RefusedDelivered += o.RefusedDelivered
	f.DuplicateAcks += o.DuplicateAcks
	f.SeqRegressions += o.SeqRegressions
	f.Misrouted += o.Misrouted
	f.Corrupt += o.Corrupt
}

// violations is the sum of the integrity counters.
func (f FlowResult) violations() int64 {
	return f.Lost + f.Duplicates + f.OutOfOrder + f.DeliveredUnacked + f.RefusedDelivered +
		f.DuplicateAcks + f.SeqRegressions + f.Misrouted + f.Corrupt + f.Unanswered
}

// ChatSetup describes the setup phase.
type ChatSetup struct {
	Agents   int     `json:"agents"`
	Visitors int     `json:"visitors"`
	Assigned int     `json:"assigned"`
	Seconds  float64 `json:"seconds"`
	// CapacityGranted is the smallest capacity the server granted in its
	// Presence answers (it caps what agents ask for).
	CapacityGranted int `json:"capacity_granted"`
	// StaleConversations were listed in agents' Welcome: left over from an
	// earlier run with the same agent ids; StaleClosed of them were still
	// open and were closed; StaleReplayed messages of theirs were
	// replayed to the agents.
	StaleConversations int   `json:"stale_conversations"`
	StaleClosed        int64 `json:"stale_closed"`
	StaleReplayed      int64 `json:"stale_replayed"`
	// Foreign counts conversations assigned to these agents that no
	// visitor of the run opened.
	Foreign int `json:"foreign"`
	// Closed counts conversations the visitors closed at the end, with
	// the server's confirmation.
	Closed int64 `json:"closed"`
}

// chatResult is a worker's final report.
type chatResult struct {
	Setup       ChatSetup    `json:"setup"`
	V2A         FlowResult   `json:"v2a"`
	A2V         FlowResult   `json:"a2v"`
	V2AHist     histSnapshot `json:"v2a_hist"`
	A2VHist     histSnapshot `json:"a2v_hist"`
	AckHist     histSnapshot `json:"ack_hist"`
	SendLag     histSnapshot `json:"send_lag"`
	V2ASvc      histSnapshot `json:"v2a_svc"`
	A2VSvc      histSnapshot `json:"a2v_svc"`
	Errors      Reasons      `json:"errors"`
	SetupErrors Reasons      `json:"setup_errors"`
	Drops       Reasons      `json:"drops"`
	Events      Reasons      `json:"events"`
	WriteErrors Reasons      `json:"write_errors"`
	MaxBehind   int64        `json:"max_behind"`
	DrainTime   float64      `json:"drain_s"`
	Pings       int64        `json:"pings"`
	PongErrors  int64        `json:"pong_errors"`
	// V2ASamples and A2VSamples hold every measured latency with its due
	// time, when the job asked for Samples.
	V2ASamples *dueSamples `json:"v2a_samples,omitempty"`
	A2VSamples *dueSamples `json:"a2v_samples,omitempty"`
	// SvcSamples are the visitor→agent latencies from the write and
	// LagSamples the visitor's send lags (write − due), by due time.
	SvcSamples *dueSamples `json:"svc_samples,omitempty"`
	LagSamples *dueSamples `json:"lag_samples,omitempty"`
}

// flow is the bookkeeping of one direction of one conversation.
type flow struct {
	mu                                     sync.Mutex
	sent, acked, refused, delivered        bitset
	unconfirmed, echoed                    bitset // answered 5003; delivered back to their sender
	maxDelivered                           int
	lastAckSeq, lastDeliverSeq             uint64
	dups, ooo, dupAcks, seqRegr, misrouted int64
}

func newFlow(n int) flow {
	return flow{sent: newBitset(n), acked: newBitset(n), refused: newBitset(n), delivered: newBitset(n),
		unconfirmed: newBitset(n), echoed: newBitset(n), maxDelivered: -1}
}

// chatConv is one conversation: its visitor, its agent and both flows.
type chatConv struct {
	idx, gidx int
	phase     time.Duration
	n         int // messages scheduled
	v         *visitor
	a         *agent // set when both sides saw the assignment; guarded by chatWorker.mu until setup ends

	// Set by the visitor's reader during setup, read-only afterwards.
	id        string
	visitorID string
	agentID   string // from the visitor's Assigned event

	v2a, a2v flow
	closed   chan struct{} // closed when the visitor saw its Close confirmed
	closedMu sync.Once
}

type visitor struct {
	conn   *wsConn
	conv   *chatConv
	userID string
}

type reply struct {
	c       *chatConv
	k       int
	decided time.Duration
}

type agent struct {
	idx      int
	conn     *wsConn
	userID   string
	stale    map[string]bool // conversations listed in the Welcome; reader only
	local    map[string]*chatConv
	replies  chan reply
	presence chan error // the Presence answer
	granted  int
}

// chatWorker runs one worker's visitors and agents.
type chatWorker struct {
	job      *chatJob
	dial     *dialer
	base     time.Time
	interval float64 // nanoseconds between two messages of a conversation

	convs  []*chatConv
	agents []*agent

	mu           sync.Mutex
	byID         map[string]*chatConv
	pendingAgent map[string]*agent // assigned to an agent before its visitor learned the id
	setupDone    atomic.Bool
	closing      atomic.Bool // connections are being closed: reader ends are expected
	tearing      atomic.Bool // conversations are being closed
	readers      sync.WaitGroup
	writers      sync.WaitGroup

	// tl is the schedule's timeline; nil until the start command.
	tl atomic.Pointer[timeline]

	agentsOnline, visitorsUp, assignedV, linked atomic.Int64
	sent, acked, delivered                      atomic.Int64
	repliesSent, repliesDeliv, repliesQueued    atomic.Int64
	refusedV2A, refusedA2V                      atomic.Int64
	inWindowV2A, inWindowA2V                    atomic.Int64
	corruptV2A, corruptA2V                      atomic.Int64
	staleClosed, staleReplayed, closedConvs     atomic.Int64
	dropped, maxBehind                          atomic.Int64
	phase                                       atomic.Value

	v2aHist, a2vHist, ackHist, sendLag *latencyHist
	v2aSvc, a2vSvc                     *latencyHist // from the actual write, not the due time
	ivl                                *latencyHist // v2a latencies since the last progress event
	v2aSamples, a2vSamples             *dueSamples  // nil unless the job asks for Samples
	svcSamples, lagSamples             *dueSamples
	errs, setupErrs, drops, events     *reasonCounter
	writeErrs                          *reasonCounter
}

func (w *chatWorker) now() time.Duration { return time.Since(w.base) }

// timeline is the schedule in nanoseconds since the worker's clock base:
// messages are due from t0; those due in [wStart, wEnd) are measured.
type timeline struct{ t0, wStart, wEnd time.Duration }

// measured reports whether a message due at sched is measured, and
// whether an event at now falls in the measured window.
func (w *chatWorker) measured(sched, now time.Duration) (bool, bool) {
	tl := w.tl.Load()
	if tl == nil {
		return false, false
	}
	return sched >= tl.wStart, now >= tl.wStart && now < tl.wEnd
}

func newChatWorker(job *chatJob) (*chatWorker, error) {
	d, err := newDialer(&job.Common, 4096, nil)
	if err != nil {
		return nil, err
	}
	w := &chatWorker{
		job:          job,
		dial:         d,
		base:         time.Now(),
		interval:     float64(job.TotalConvs) / job.Rate * 1e9,
		byID:         make(map[string]*chatConv),
		pendingAgent: make(map[string]*agent),
		v2aHist:      newLatencyHist(),
		a2vHist:      newLatencyHist(),
		ackHist:      newLatencyHist(),
		sendLag:      newLatencyHist(),
		v2aSvc:       newLatencyHist(),
		a2vSvc:       newLatencyHist(),
		ivl:          newLatencyHist(),
		errs:         newReasonCounter(),
		setupErrs:    newReasonCounter(),
		drops:        newReasonCounter(),
		events:       newReasonCounter(),
		writeErrs:    newReasonCounter(),
	}
	if job.Samples {
		w.v2aSamples, w.a2vSamples = &dueSamples{}, &dueSamples{}
		w.svcSamples, w.lagSamples = &dueSamples{}, &dueSamples{}
	}
	w.phase.Store("setup")
	span := job.Warmup + job.Duration
	for j := range job.Convs {
		g := job.ConvOffset + j
		c := &chatConv{idx: j, gidx: g, phase: time.Duration(float64(g) / job.Rate * 1e9), closed: make(chan struct{})}
		if c.phase < span {
			c.n = int(math.Ceil(float64(span-c.phase) / w.interval))
		}
		c.v2a, c.a2v = newFlow(c.n), newFlow(c.n)
		w.convs = append(w.convs, c)
	}
	return w, nil
}

// sched is the due time of message k of c, relative to t0.
func (w *chatWorker) sched(c *chatConv, k int) time.Duration {
	return c.phase + time.Duration(float64(k)*w.interval)
}

func (w *chatWorker) progress() chatProgress {
	p := chatProgress{
		Phase:        w.phase.Load().(string),
		AgentsOnline: w.agentsOnline.Load(),
		Visitors:     w.visitorsUp.Load(),
		Assigned:     w.linked.Load(),
		Sent:         w.sent.Load(),
		Acked:        w.acked.Load(),
		Delivered:    w.delivered.Load(),
		RepliesSent:  w.repliesSent.Load(),
		RepliesDeliv: w.repliesDeliv.Load(),
		Errors:       w.errs.total(),
		Dropped:      w.dropped.Load(),
	}
	if tl := w.tl.Load(); tl != nil {
		now := w.now() - tl.t0
		var due int64
		for _, c := range w.convs {
			p.ScheduleTotal += int64(c.n)
			if now >= c.phase {
				due += min(int64(c.n), int64(float64(now-c.phase)/w.interval)+1)
			}
		}
		p.Behind = max(due-p.Sent, 0)
		if p.Behind > w.maxBehind.Load() {
			w.maxBehind.Store(p.Behind)
		}
	}
	p.Unanswered = p.Sent - p.Acked - w.refusedV2A.Load()
	p.Undelivered = p.Acked - p.Delivered
	return p
}

func runChatWorker(ctx context.Context, job *chatJob, cmds <-chan wire, link *workerLink) error {
	if err := job.Common.setDefaults(); err != nil {
		return err
	}
	w, err := newChatWorker(job)
	if err != nil {
		return err
	}
	defer everySecond(func() {
		p := w.progress()
		p.Interval = w.ivl.takeSparse()
		link.emit(wire{Ev: evProgress, ChatProgress: &p})
	})()
	defer w.closeAll()

	setupStart := time.Now()
	if err := w.setup(ctx); err != nil {
		return fmt.Errorf("chat worker %d: %w", job.Index, err)
	}
	setupTime := time.Since(setupStart)
	w.phase.Store("ready")
	p := w.progress()
	link.emit(wire{Ev: evReady, ChatProgress: &p})

	var t0 int64
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case c, ok := <-cmds:
		if !ok {
			return errors.New("coordinator went away")
		}
		if c.Cmd != cmdStart {
			return fmt.Errorf("want %q, got %q", cmdStart, c.Cmd)
		}
		t0 = c.T0
	}
	start := w.now() + time.Until(time.Unix(0, t0))
	w.tl.Store(&timeline{t0: start, wStart: start + job.Warmup, wEnd: start + job.Warmup + job.Duration})
	drain := w.run(ctx)
	res := w.result(setupTime, drain)
	// Tear down only when every worker has drained: a worker that closed
	// its conversations while another's last messages were in flight
	// used to put its close storm (thousands of closes and disconnects
	// on the same gateway) into the other's measured tail.
	w.phase.Store("drained")
	link.emit(wire{Ev: evDrained})
	select {
	case <-ctx.Done():
	case c, ok := <-cmds:
		if ok && c.Cmd != cmdTeardown {
			return fmt.Errorf("want %q, got %q", cmdTeardown, c.Cmd)
		}
	}
	w.phase.Store("close")
	w.teardown()
	res.Setup.Closed = w.closedConvs.Load()
	link.emit(wire{Ev: evResult, ChatResult: res})
	return nil
}

// run sends the schedule and waits for the drain; it returns the drain
// time.
func (w *chatWorker) run(ctx context.Context) time.Duration {
	w.phase.Store("warmup")
	var senders sync.WaitGroup
	for _, c := range w.convs {
		senders.Go(func() { w.sendSchedule(ctx, c) })
	}
	// Phase changes, for the progress line.
	go func() {
		for _, p := range []struct {
			at   time.Duration
			name string
		}{{w.tl.Load().wStart, "measure"}, {w.tl.Load().wEnd, "tail"}} {
			select {
			case <-time.After(p.at - w.now()):
				w.phase.Store(p.name)
			case <-ctx.Done():
				return
			}
		}
	}()
	senders.Wait()
	w.phase.Store("drain")
	start := time.Now()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(w.job.Drain)
	for !w.drained() {
		select {
		case <-t.C:
		case <-deadline:
			return time.Since(start)
		case <-ctx.Done():
			return time.Since(start)
		}
	}
	return time.Since(start)
}

// drained reports whether every message sent was answered and every
// acknowledged one delivered.
func (w *chatWorker) drained() bool {
	v2aDone := w.sent.Load() == w.acked.Load()+w.refusedV2A.Load() && w.delivered.Load() >= w.acked.Load()
	var a2vAcked int64
	for _, c := range w.convs {
		c.a2v.mu.Lock()
		a2vAcked += int64(c.a2v.acked.count())
		c.a2v.mu.Unlock()
	}
	a2vDone := w.repliesQueued.Load() == 0 && w.repliesSent.Load() == a2vAcked+w.refusedA2V.Load() &&
		w.repliesDeliv.Load() >= a2vAcked
	return v2aDone && a2vDone
}

// sendSchedule sends the messages of c at their due times.
func (w *chatWorker) sendSchedule(ctx context.Context, c *chatConv) {
	if c.n == 0 {
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var buf []byte
	env := protocol.Envelope{Kind: protocol.KindSend}
	tl := w.tl.Load()
	for k := range c.n {
		due := tl.t0 + w.sched(c, k)
		if d := due - w.now(); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		sent := w.now()
		buf = appendPayload(buf[:0], payload{k: k, due: due, sent: sent}, w.job.Size)
		env.ID = msgID(c.idx, k)
		env.Send = protocol.Send{ConversationID: c.id, ClientMsgID: "v" + strconv.Itoa(k), Text: string(buf)}
		c.v2a.mu.Lock()
		c.v2a.sent.set(k)
		c.v2a.mu.Unlock()
		w.sent.Add(1)
		if due >= tl.wStart {
			w.sendLag.record(sent - due)
			w.lagSamples.add(due-tl.t0, sent-due)
		}
		if err := c.v.conn.send(&env); err != nil {
			w.writeErrs.addErr(err)
			return
		}
	}
}

// result accounts for every message.
func (w *chatWorker) result(setup, drain time.Duration) *chatResult {
	r := &chatResult{
		Setup: ChatSetup{
			Agents:        len(w.agents),
			Visitors:      int(w.visitorsUp.Load()),
			Assigned:      int(w.linked.Load()),
			Seconds:       setup.Seconds(),
			StaleClosed:   w.staleClosed.Load(),
			StaleReplayed: w.staleReplayed.Load(),
		},
		V2AHist:    w.v2aHist.snapshot(),
		A2VHist:    w.a2vHist.snapshot(),
		AckHist:    w.ackHist.snapshot(),
		SendLag:    w.sendLag.snapshot(),
		V2ASvc:     w.v2aSvc.snapshot(),
		A2VSvc:     w.a2vSvc.snapshot(),
		MaxBehind:  w.maxBehind.Load(),
		DrainTime:  drain.Seconds(),
		Pings:      w.dial.pings.Load(),
		PongErrors: w.dial.pongErrors.Load(),
		V2ASamples: w.v2aSamples.take(),
		A2VSamples: w.a2vSamples.take(),
		SvcSamples: w.svcSamples.take(),
		LagSamples: w.lagSamples.take(),
	}
	for _, a := range w.agents {
		if a == nil {
			continue
		}
		r.Setup.StaleConversations += len(a.stale)
		if r.Setup.CapacityGranted == 0 || a.granted < r.Setup.CapacityGranted {
			r.Setup.CapacityGranted = a.granted
		}
	}
	w.mu.Lock()
	r.Setup.Foreign = len(w.pendingAgent)
	w.mu.Unlock()
	for _, c := range w.convs {
		for k := range c.n {
			if s := w.sched(c, k); s >= w.job.Warmup && s < w.job.Warmup+w.job.Duration {
				r.V2A.Offered++
			}
		}
		r.V2A.add(flowResultOf(&c.v2a))
		r.A2V.add(flowResultOf(&c.a2v))
	}
	// From the histograms' own snapshots: a delivery recorded after the
	// snapshot is in neither.
	r.V2A.DeliveredMeasured = r.V2AHist.Recorded
	r.A2V.DeliveredMeasured = r.A2VHist.Recorded
	r.V2A.DeliveredInWindow = w.inWindowV2A.Load()
	r.A2V.DeliveredInWindow = w.inWindowA2V.Load()
	r.V2A.Corrupt += w.corruptV2A.Load()
	r.A2V.Corrupt += w.corruptA2V.Load()
	r.Errors = w.errs.export()
	r.SetupErrors = w.setupErrs.export()
	r.Drops = w.drops.export()
	r.Events = w.events.export()
	r.WriteErrors = w.writeErrs.export()
	return r
}

func flowResultOf(f *flow) FlowResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	answered := f.acked.or(f.refused).or(f.unconfirmed)
	return FlowResult{
		Sent:              int64(f.sent.count()),
		Acked:             int64(f.acked.count()),
		Refused:           int64(f.refused.count()),
		Unconfirmed:       int64(f.unconfirmed.count()),
		UnconfirmedStored: int64(f.unconfirmed.andCount(f.delivered.or(f.echoed))),
		Unanswered:        int64(f.sent.andNotCount(answered)),
		Delivered:         int64(f.delivered.count()),
		Lost:              int64(f.acked.andNotCount(f.delivered)),
		Duplicates:        f.dups,
		OutOfOrder:        f.ooo,
		DeliveredUnacked:  int64(f.delivered.andNotCount(f.acked.or(f.unconfirmed))),
		RefusedDelivered:  int64(f.refused.andCount(f.delivered)),
		DuplicateAcks:     f.dupAcks,
		SeqRegressions:    f.seqRegr,
		Misrouted:         f.misrouted,
	}
}

// teardown closes the conversations (the server frees the agents'
// capacity), takes the agents offline and closes every connection.
func (w *chatWorker) teardown() {
	w.tearing.Store(true)
	deadline := time.After(5 * time.Second)
	for _, c := range w.convs {
		if c.v == nil || c.id == "" {
			continue
		}
		env := protocol.Envelope{Kind: protocol.KindClose, ID: closeID}
		env.Close = protocol.Close{ConversationID: c.id, Reason: "bench done"}
		if err := c.v.conn.send(&env); err != nil {
			c.closedMu.Do(func() { close(c.closed) })
		}
	}
	w.closing.Store(true)
	for _, c := range w.convs {
		if c.v == nil || c.id == "" {
			continue
		}
		select {
		case <-c.closed:
		case <-deadline:
		}
	}
	for _, a := range w.agents {
		if a == nil {
			continue
		}
		env := protocol.Envelope{Kind: protocol.KindPresence, ID: presenceID}
		env.Presence.Status = protocol.StatusOffline
		_ = a.conn.send(&env)
	}
	w.closeAll()
}

// closeAll closes every connection and waits for the readers and writers.
// Idempotent.
func (w *chatWorker) closeAll() {
	w.closing.Store(true)
	w.mu.Lock()
	var conns []*wsConn
	for _, a := range w.agents {
		if a != nil {
			conns = append(conns, a.conn)
		}
	}
	for _, c := range w.convs {
		if c.v != nil {
			conns = append(conns, c.v.conn)
		}
	}
	w.mu.Unlock()
	for _, c := range conns {
		c.closeNow()
	}
	w.readers.Wait()
	w.writers.Wait()
}
