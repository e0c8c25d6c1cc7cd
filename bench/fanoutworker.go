package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/unigate/unigate/protocol"
)

// positionRule is the broker's rule for queue position updates
// (broker.position_exact and broker.position_step, broker/dispatcher.go):
// a waiting visitor hears of every new position up to Exact, and beyond
// only of multiples of Step (defaults 100 and 10). The fan-out scenario
// predicts every update from it; a broker that sends others is reported
// as unexpected positions, one that sends fewer as gaps.
type positionRule struct {
	Exact int `json:"exact"`
	Step  int `json:"step"`
}

// sent reports whether the broker sends position q to a visitor whose
// position changed to q.
func (r positionRule) sent(q int) bool { return q >= 1 && (q <= r.Exact || q%r.Step == 0) }

// count counts the positions in [lo, hi] that sent accepts.
func (r positionRule) count(lo, hi int) int {
	lo = max(lo, 1)
	if hi < lo {
		return 0
	}
	n := 0
	if lo <= r.Exact {
		n += min(hi, r.Exact) - lo + 1
		lo = r.Exact + 1
	}
	if hi >= lo {
		n += hi/r.Step - (lo-1)/r.Step
	}
	return n
}

// updatesAfter is the number of position updates the broker sends when a
// queue of n visitors loses its head: the n−1 left all move up by one.
func (r positionRule) updatesAfter(n int) int { return r.count(1, n-1) }

// first is the first position at or after lo that sent accepts, or 0 if
// there is none below hi+1.
func (r positionRule) first(lo, hi int) int {
	lo = max(lo, 1)
	if hi < lo {
		return 0
	}
	if lo <= r.Exact {
		return lo
	}
	if q := (lo + r.Step - 1) / r.Step * r.Step; q <= hi {
		return q
	}
	return 0
}

// fanoutSchedule is the open-loop schedule of the triggers: trigger s
// (1-based: the s-th visitor to leave the head of the queue, the one that
// joined at position s) is due at due(s) after t0, whatever happened to
// the earlier ones.
type fanoutSchedule struct {
	Rate     float64       `json:"rate"`
	Triggers int           `json:"triggers"`
	Warmup   time.Duration `json:"warmup"`
	Duration time.Duration `json:"duration"`
}

// due is the time of trigger s after t0.
func (f fanoutSchedule) due(s int) time.Duration {
	return time.Duration(float64(s-1) * float64(time.Second) / f.Rate)
}

// measured reports whether trigger s is due inside the measured window.
func (f fanoutSchedule) measured(s int) bool {
	d := f.due(s)
	return d >= f.Warmup && d < f.Warmup+f.Duration
}

// fanoutJob is one worker's part of a fan-out run.
type fanoutJob struct {
	Common
	fanoutSchedule
	Index         int           `json:"index"`
	Visitors      int           `json:"visitors"`       // this worker's
	TotalVisitors int           `json:"total_visitors"` // all workers'
	Tenant        string        `json:"tenant"`
	ConnectRate   float64       `json:"connect_rate"` // this worker's
	SetupTimeout  time.Duration `json:"setup_timeout"`
	Drain         time.Duration `json:"drain"`
	Deadline      int64         `json:"deadline"` // Unix nanoseconds
	Rule          positionRule  `json:"rule"`
}

// fanoutProgress is a worker's cumulative counters.
type fanoutProgress struct {
	Phase      string `json:"phase"`
	Connected  int64  `json:"connected"`
	Positioned int64  `json:"positioned"`
	Triggers   int64  `json:"triggers"`   // leave requests written
	Deliveries int64  `json:"deliveries"` // position updates received after the start
	Errors     int64  `json:"errors"`
	Dropped    int64  `json:"dropped"`
	// Interval holds the latencies of the deliveries since the previous
	// progress event.
	Interval sparseHist `json:"ivl,omitempty"`
}

func (p *fanoutProgress) add(o fanoutProgress) {
	p.Connected += o.Connected
	p.Positioned += o.Positioned
	p.Triggers += o.Triggers
	p.Deliveries += o.Deliveries
	p.Errors += o.Errors
	p.Dropped += o.Dropped
}

// FanoutCounts accounts for the triggers and the position updates.
type FanoutCounts struct {
	Visitors int64 `json:"visitors"`
	// Triggers is the visitors scheduled to leave; TriggersSent wrote
	// their Close, TriggersConfirmed got it confirmed (their conversation
	// closed), TriggersRefused got an error instead.
	Triggers          int64 `json:"triggers"`
	TriggersSent      int64 `json:"triggers_sent"`
	TriggersConfirmed int64 `json:"triggers_confirmed"`
	TriggersRefused   int64 `json:"triggers_refused"`
	// Expected is the position updates the schedule makes the broker
	// send (the rule over every shift of every visitor); Delivered the
	// ones received; DeliveredMeasured those caused by a measured trigger
	// (the latency histogram holds exactly these); DeliveredInWindow those
	// received inside the measured window (the throughput).
	Expected          int64 `json:"expected"`
	Delivered         int64 `json:"delivered"`
	DeliveredMeasured int64 `json:"delivered_measured"`
	DeliveredInWindow int64 `json:"delivered_in_window"`
	// Gaps: updates a visitor still waiting at the end never received.
	// LeaverMissed: updates a leaving visitor had not received when its
	// own Close overtook them (late triggers or slow deliveries; not an
	// error: the broker drops a closed conversation's pending updates).
	Gaps         int64 `json:"gaps"`
	LeaverMissed int64 `json:"leaver_missed"`
	// Integrity: each must be 0. Duplicates repeat a position, Regressions
	// go back up, Unexpected are positions the broker's rule does not
	// send, beyond what the triggers explain, or after the visitor left.
	Duplicates  int64 `json:"duplicates"`
	Regressions int64 `json:"regressions"`
	Unexpected  int64 `json:"unexpected"`
	// Closed counts the conversations closed at the end (tail first).
	Closed int64 `json:"closed"`
}

func (c *FanoutCounts) add(o FanoutCounts) {
	c.Visitors += o.Visitors
	c.Triggers += o.Triggers
	c.TriggersSent += o.TriggersSent
	c.TriggersConfirmed += o.TriggersConfirmed
	c.TriggersRefused += o.TriggersRefused
	c.Expected += o.Expected
	c.Delivered += o.Delivered
	c.DeliveredMeasured += o.DeliveredMeasured
	c.DeliveredInWindow += o.DeliveredInWindow
	c.Gaps += o.Gaps
	c.LeaverMissed += o.LeaverMissed
	c.Duplicates += o.Duplicates
	c.Regressions += o.Regressions
	c.Unexpected += o.Unexpected
	c.Closed += o.Closed
}

// fanoutReady is a worker's answer to its job: the queue positions its
// visitors got.
type fanoutReady struct {
	Progress  fanoutProgress `json:"progress"`
	Positions []uint32       `json:"positions"`
	Seconds   float64        `json:"setup_s"`
}

// fanoutResult is a worker's report after the schedule and the drain.
type fanoutResult struct {
	Counts  FanoutCounts `json:"counts"`
	Latency histSnapshot `json:"latency"`
	SendLag histSnapshot `json:"send_lag"`
	// Last[s-1] is the latest delivery of trigger s to this worker's
	// visitors, in µs after its due time; -1: none here.
	Last        []int64 `json:"last_us"`
	Errors      Reasons `json:"errors"`
	SetupErrors Reasons `json:"setup_errors"`
	Drops       Reasons `json:"drops"`
	Events      Reasons `json:"events"`
	DrainTime   float64 `json:"drain_s"`
}

// Envelope id of a visitor's leave (the trigger); teardown closes use
// closeID.
const leaveID = setupID | 6

// fanVisitor is one waiting visitor.
type fanVisitor struct {
	idx  int
	conn *wsConn
	// Set by the reader during the setup, under fanoutWorker.mu; read-only
	// after the ready event.
	convID string
	p0     int // position at the start; 0 until known

	// Reader only, after the start.
	last   int // last position received (p0 at the start)
	leaver bool
	final  int // the last position a staying visitor should get; 0: none

	got    atomic.Int64  // valid positions received after the start
	left   atomic.Bool   // its own Close (trigger or teardown) answered
	closed chan struct{} // closed when left becomes true
}

// fanTimeline is the schedule in the worker's monotonic clock.
type fanTimeline struct{ t0, wStart, wEnd time.Duration }

// fanoutWorker runs one worker's waiting visitors.
type fanoutWorker struct {
	job  *fanoutJob
	dial *dialer
	base time.Time

	visitors []*fanVisitor
	mu       sync.Mutex
	tl       atomic.Pointer[fanTimeline]
	readers  sync.WaitGroup
	closing  atomic.Bool
	torn     atomic.Bool // conversations closed (teardown ran)
	phase    atomic.Value

	connected, positioned, triggers, confirmed, refused atomic.Int64
	delivered, inWindow, reached, dropped               atomic.Int64
	dups, regressions, unexpected, closedN              atomic.Int64
	last                                                []atomic.Int64 // per trigger, µs; -1 none

	latency, sendLag, ivl          *latencyHist
	errs, setupErrs, drops, events *reasonCounter
}

func (w *fanoutWorker) now() time.Duration { return time.Since(w.base) }

func (w *fanoutWorker) progress() fanoutProgress {
	return fanoutProgress{
		Phase: w.phase.Load().(string), Connected: w.connected.Load(), Positioned: w.positioned.Load(),
		Triggers: w.triggers.Load(), Deliveries: w.delivered.Load(), Errors: w.errs.total(), Dropped: w.dropped.Load(),
	}
}

func runFanoutWorker(ctx context.Context, job *fanoutJob, cmds <-chan wire, link *workerLink) error {
	if err := job.Common.setDefaults(); err != nil {
		return err
	}
	d, err := newDialer(&job.Common, 1024, &writePool{})
	if err != nil {
		return err
	}
	w := &fanoutWorker{
		job: job, dial: d, base: time.Now(),
		last:    make([]atomic.Int64, job.Triggers),
		latency: newLatencyHist(), sendLag: newLatencyHist(), ivl: newLatencyHist(),
		errs: newReasonCounter(), setupErrs: newReasonCounter(), drops: newReasonCounter(), events: newReasonCounter(),
	}
	for i := range w.last {
		w.last[i].Store(-1)
	}
	w.phase.Store("setup")
	for i := range job.Visitors {
		w.visitors = append(w.visitors, &fanVisitor{idx: i, closed: make(chan struct{})})
	}
	defer everySecond(func() {
		p := w.progress()
		p.Interval = w.ivl.takeSparse()
		link.emit(wire{Ev: evProgress, FanoutProgress: &p})
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

	setupStart := time.Now()
	if err := w.setup(ctx); err != nil {
		return fmt.Errorf("fanout worker %d: %w", job.Index, err)
	}
	w.phase.Store("ready")
	ready := &fanoutReady{Progress: w.progress(), Seconds: time.Since(setupStart).Seconds()}
	w.mu.Lock()
	for _, v := range w.visitors {
		ready.Positions = append(ready.Positions, uint32(v.p0))
	}
	w.mu.Unlock()
	link.emit(wire{Ev: evReady, FanoutReady: ready})

	c, err := next(cmdStart)
	if err != nil {
		return err
	}
	start := w.now() + time.Until(time.Unix(0, c.T0))
	w.prepare()
	w.tl.Store(&fanTimeline{t0: start, wStart: start + job.Warmup, wEnd: start + job.Warmup + job.Duration})
	drain := w.run(ctx)
	link.emit(wire{Ev: evResult, FanoutResult: w.result(drain)})

	c, err = next(cmdClose)
	if err != nil {
		return err
	}
	w.phase.Store("close")
	w.teardown(ctx, time.Until(time.Unix(0, c.T0)))
	link.emit(wire{Ev: evClosed, FanoutClosed: w.closedN.Load()})
	return nil
}

// setup connects the visitors of this worker, each saying hello in the
// run's tenant and opening a conversation, and waits until each knows its
// place in the queue.
func (w *fanoutWorker) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.job.SetupTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	pace := newPacer(w.job.ConnectRate)
	var g sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 64)
	for _, v := range w.visitors {
		if !pace.wait(ctx) {
			break
		}
		sem <- struct{}{}
		g.Go(func() {
			defer func() { <-sem }()
			if err := w.startVisitor(ctx, v, deadline); err != nil {
				w.setupErrs.addErr(err)
				errMu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("visitor %d: %w", v.idx, err)
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
	w.phase.Store("queue")
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for n := int64(len(w.visitors)); w.positioned.Load() < n; {
		if e := w.setupErrs.total(); e > 0 {
			return fmt.Errorf("%w: %d requests refused during setup: %v", ErrSetup, e, w.setupErrs.export().Samples)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %d of %d visitors got a queue position after %v", ErrSetup, w.positioned.Load(), n, w.job.SetupTimeout)
		case <-t.C:
		}
	}
	return nil
}

func (w *fanoutWorker) startVisitor(ctx context.Context, v *fanVisitor, deadline time.Time) error {
	conn, err := w.dial.dial(ctx, v.idx)
	if err != nil {
		return err
	}
	welcome, err := conn.helloWith(protocol.Hello{Tenant: w.job.Tenant}, deadline)
	if err != nil {
		_ = conn.c.Close()
		return err
	}
	if welcome.Role != protocol.RoleVisitor {
		_ = conn.c.Close()
		return fmt.Errorf("welcome gives role %s, want visitor", welcome.Role)
	}
	w.mu.Lock()
	v.conn = conn
	w.mu.Unlock()
	w.connected.Add(1)
	w.readers.Add(1)
	go w.reader(v)
	env := protocol.Envelope{Kind: protocol.KindOpen, ID: openID}
	return conn.send(&env)
}

// prepare computes what each visitor expects, from its position and the
// schedule: a visitor that joined at p0 leaves at trigger p0 if that is
// scheduled; until then (or until the last trigger) it moves up by one
// per trigger and hears of the positions the rule sends.
func (w *fanoutWorker) prepare() {
	T := w.job.Triggers
	for _, v := range w.visitors {
		v.last = v.p0
		if v.p0 <= T {
			v.leaver = true
			continue
		}
		v.final = w.job.Rule.first(v.p0-T, v.p0-1)
	}
}

// expected is the number of updates v should get.
func (w *fanoutWorker) expected(v *fanVisitor) int {
	if v.leaver {
		return w.job.Rule.count(1, v.p0-1)
	}
	return w.job.Rule.count(v.p0-w.job.Triggers, v.p0-1)
}

// run sends this worker's triggers on schedule and waits for the drain:
// every staying visitor at its final position and every trigger answered.
// It returns the drain time.
func (w *fanoutWorker) run(ctx context.Context) time.Duration {
	w.phase.Store("warmup")
	tl := w.tl.Load()
	var leavers []*fanVisitor
	stayers := int64(0)
	for _, v := range w.visitors {
		if v.leaver {
			leavers = append(leavers, v)
		} else if v.final > 0 {
			stayers++
		}
	}
	slices.SortFunc(leavers, func(a, b *fanVisitor) int { return a.p0 - b.p0 })
	go func() {
		for _, p := range []struct {
			at   time.Duration
			name string
		}{{tl.wStart, "measure"}, {tl.wEnd, "tail"}} {
			select {
			case <-time.After(p.at - w.now()):
				w.phase.Store(p.name)
			case <-ctx.Done():
				return
			}
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	env := protocol.Envelope{Kind: protocol.KindClose, ID: leaveID}
	for _, v := range leavers {
		due := tl.t0 + w.job.due(v.p0)
		if d := due - w.now(); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return 0
			}
		}
		env.Close = protocol.Close{ConversationID: v.convID, Reason: "bench fanout: leaving the queue"}
		sent := w.now()
		if err := v.conn.send(&env); err != nil {
			w.errs.addErr(err)
			continue
		}
		w.triggers.Add(1)
		if due >= tl.wStart {
			w.sendLag.record(sent - due)
		}
	}
	// The drain starts when the whole schedule has run, not when this
	// worker's own triggers have: a worker whose visitors all joined
	// behind the leavers (or whose last leaver left early) still hears of
	// every later trigger.
	if d := tl.t0 + w.job.due(w.job.Triggers) - w.now(); d > 0 {
		timer.Reset(d)
		select {
		case <-timer.C:
		case <-ctx.Done():
			return 0
		}
	}
	w.phase.Store("drain")
	start := time.Now()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(w.job.Drain)
	for w.reached.Load() < stayers || w.confirmed.Load()+w.refused.Load() < w.triggers.Load() {
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

func (w *fanoutWorker) reader(v *fanVisitor) {
	defer w.readers.Done()
	for {
		e, err := v.conn.read()
		var pe *protocol.Error
		if errors.As(err, &pe) {
			w.events.add("undecodable", err)
			continue
		}
		if err != nil {
			if !w.closing.Load() {
				w.dropped.Add(1)
				w.drops.addErr(err)
			}
			return
		}
		switch e.Kind {
		case protocol.KindQueue:
			w.queueEvent(v, int(e.Queue.Position), e.Queue.ConversationID)
		case protocol.KindConversation:
			w.conversationEvent(v, e)
		case protocol.KindError:
			err := &serverError{code: e.Error.Code, msg: strings.Clone(e.Error.Message)}
			switch e.ID {
			case leaveID:
				w.refused.Add(1)
				w.errs.addErr(err)
			case closeID:
				w.errs.addErr(err)
				v.markLeft()
			default:
				w.setupErrs.addErr(err)
			}
		default:
			w.events.add("visitor_"+e.Kind.String(), nil)
		}
	}
}

func (v *fanVisitor) markLeft() {
	if !v.left.Swap(true) {
		close(v.closed)
	}
}

func (w *fanoutWorker) conversationEvent(v *fanVisitor, e *protocol.Envelope) {
	cv := &e.Conversation
	w.mu.Lock()
	if v.convID == "" {
		v.convID = strings.Clone(cv.ConversationID)
	}
	same := cv.ConversationID == v.convID
	w.mu.Unlock()
	switch {
	case !same:
		w.events.add("conversation_other", fmt.Errorf("conversation %s", cv.ConversationID))
	case cv.State == protocol.StateQueued && w.tl.Load() == nil:
	case cv.State == protocol.StateClosed && e.ID == leaveID:
		w.confirmed.Add(1)
		v.markLeft()
	case cv.State == protocol.StateClosed && e.ID == closeID:
		w.closedN.Add(1)
		v.markLeft()
	default:
		// An agent in the run's tenant, or a close nobody asked for.
		w.events.add("conversation_"+cv.State.String(), fmt.Errorf("conversation %s state %s reason %q", cv.ConversationID, cv.State, cv.Reason))
	}
}

// queueEvent handles a position update q for v.
func (w *fanoutWorker) queueEvent(v *fanVisitor, q int, convID string) {
	now := w.now()
	tl := w.tl.Load()
	if tl == nil {
		// The setup: the first position is v's place; any other is
		// unexpected (new visitors join behind).
		w.mu.Lock()
		first := v.p0 == 0
		if first {
			v.p0 = q
			if v.convID == "" {
				v.convID = strings.Clone(convID)
			}
		}
		w.mu.Unlock()
		if first {
			w.positioned.Add(1)
		} else {
			w.unexpected.Add(1)
			w.events.add("position_during_setup", fmt.Errorf("position %d after %d", q, v.p0))
		}
		return
	}
	switch {
	case v.left.Load():
		w.unexpected.Add(1)
		w.events.add("position_after_leaving", fmt.Errorf("position %d", q))
		return
	case q == v.last:
		w.dups.Add(1)
		return
	case q > v.last:
		w.regressions.Add(1)
		v.last = q
		return
	}
	v.last = q
	s := v.p0 - q // the shifts so far: the s-th trigger made this update possible
	if !w.job.Rule.sent(q) || s > w.job.Triggers {
		w.unexpected.Add(1)
		w.events.add("position_unexpected", fmt.Errorf("position %d (joined at %d, %d triggers)", q, v.p0, w.job.Triggers))
		return
	}
	v.got.Add(1)
	due := tl.t0 + w.job.due(s)
	lat := now - due
	w.delivered.Add(1)
	w.ivl.record(lat)
	if w.job.measured(s) {
		w.latency.record(lat)
	}
	if now >= tl.wStart && now < tl.wEnd {
		w.inWindow.Add(1)
	}
	us := int64(lat / time.Microsecond)
	for l := &w.last[s-1]; ; {
		old := l.Load()
		if us <= old || l.CompareAndSwap(old, us) {
			break
		}
	}
	if q == v.final {
		w.reached.Add(1)
	}
}

func (w *fanoutWorker) result(drain time.Duration) *fanoutResult {
	r := &fanoutResult{
		Latency: w.latency.snapshot(), SendLag: w.sendLag.snapshot(), DrainTime: drain.Seconds(),
		Errors: w.errs.export(), SetupErrors: w.setupErrs.export(), Drops: w.drops.export(), Events: w.events.export(),
	}
	n := &r.Counts
	n.Visitors = int64(len(w.visitors))
	for _, v := range w.visitors {
		exp := int64(w.expected(v))
		n.Expected += exp
		missing := max(exp-v.got.Load(), 0)
		if v.leaver {
			n.Triggers++
			n.LeaverMissed += missing
		} else {
			n.Gaps += missing
		}
	}
	n.TriggersSent = w.triggers.Load()
	n.TriggersConfirmed = w.confirmed.Load()
	n.TriggersRefused = w.refused.Load()
	n.Delivered = w.delivered.Load()
	n.DeliveredMeasured = r.Latency.Recorded // with the histogram, in one snapshot
	n.DeliveredInWindow = w.inWindow.Load()
	n.Duplicates = w.dups.Load()
	n.Regressions = w.regressions.Load()
	n.Unexpected = w.unexpected.Load()
	for i := range w.last {
		r.Last = append(r.Last, w.last[i].Load())
	}
	return r
}

// closeGap spaces the closes of the teardown: the queue is emptied from
// its tail, position p at start + (visitors − p)·closeGap over all
// workers, so that (almost) no close moves anybody still waiting. Closing
// from the head instead would send every remaining visitor a position
// update per close: ~visitors²/20 updates.
const closeGap = 100 * time.Microsecond

// teardown closes the conversations still waiting, tail first on the
// shared schedule starting after wait, and waits up to 10s for the
// confirmations.
func (w *fanoutWorker) teardown(ctx context.Context, wait time.Duration) {
	w.torn.Store(true)
	type waiter struct {
		v      *fanVisitor
		conn   *wsConn
		convID string
		p0     int
	}
	var rest []waiter
	w.mu.Lock()
	for _, v := range w.visitors {
		if v.conn != nil && v.convID != "" && !v.left.Load() {
			rest = append(rest, waiter{v, v.conn, v.convID, v.p0})
		}
	}
	w.mu.Unlock()
	slices.SortFunc(rest, func(a, b waiter) int { return b.p0 - a.p0 })
	start := w.now() + max(wait, 0)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	env := protocol.Envelope{Kind: protocol.KindClose, ID: closeID}
	for _, r := range rest {
		at := start + time.Duration(w.job.TotalVisitors-r.p0)*closeGap
		if d := at - w.now(); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		env.Close = protocol.Close{ConversationID: r.convID, Reason: "bench done"}
		if err := r.conn.send(&env); err != nil {
			r.v.markLeft()
		}
	}
	deadline := time.After(10 * time.Second)
	for _, r := range rest {
		v := r.v
		select {
		case <-v.closed:
		case <-deadline:
			return
		case <-ctx.Done():
			return
		}
	}
}

// closeAll closes every connection and waits for the readers. A run that
// failed before its teardown first closes the conversations (tail first,
// unpaced, without the other workers): waiting conversations would hold
// places in the broker's queue, whose size is bounded for all tenants,
// for the resume TTL. Idempotent.
func (w *fanoutWorker) closeAll() {
	if !w.torn.Load() && !w.closing.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		w.teardown(ctx, 0)
		cancel()
	}
	w.closing.Store(true)
	w.mu.Lock()
	var conns []*wsConn
	for _, v := range w.visitors {
		if v.conn != nil {
			conns = append(conns, v.conn)
		}
	}
	w.mu.Unlock()
	for _, c := range conns {
		c.closeNow()
	}
	w.readers.Wait()
}
