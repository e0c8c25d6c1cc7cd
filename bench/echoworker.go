package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// echoJob is one worker's part of an echo run.
type echoJob struct {
	Common
	Index      int  `json:"index"`
	Conns      int  `json:"conns"`       // this worker's connections
	ConnOffset int  `json:"conn_offset"` // global index of the first
	TotalConns int  `json:"total_conns"`
	Size       int  `json:"size"`
	Text       bool `json:"text"`
	// Rates are the open-loop steps, messages per second over all
	// connections of all workers.
	Rates    []float64     `json:"rates"`
	Warmup   time.Duration `json:"warmup"`
	Duration time.Duration `json:"duration"`
	Drain    time.Duration `json:"drain"`
	// Window and ClosedDuration describe the closed-loop step that follows
	// the open-loop ones (ClosedDuration 0: none).
	Window         int           `json:"window"`
	ClosedWarmup   time.Duration `json:"closed_warmup"`
	ClosedDuration time.Duration `json:"closed_duration"`
	ConnectRate    float64       `json:"connect_rate"` // this worker's
	MaxInflight    int           `json:"max_inflight"`
	Deadline       int64         `json:"deadline"` // Unix nanoseconds
}

// echoProgress is a worker's cumulative counters.
type echoProgress struct {
	Phase     string `json:"phase"`
	Connected int64  `json:"connected"`
	Failed    int64  `json:"failed"`
	Sent      int64  `json:"sent"`
	Echoed    int64  `json:"echoed"`
	Behind    int64  `json:"behind"`
	Dropped   int64  `json:"dropped"`
	// Interval holds the latencies (from the due time, or from the write
	// in the closed loop) of the echoes since the previous progress event.
	Interval sparseHist `json:"ivl,omitempty"`
}

func (p *echoProgress) add(o echoProgress) {
	p.Connected += o.Connected
	p.Failed += o.Failed
	p.Sent += o.Sent
	p.Echoed += o.Echoed
	p.Behind += o.Behind
	p.Dropped += o.Dropped
}

// echoStepResult is a worker's account of one step.
type echoStepResult struct {
	Step int `json:"step"`
	// Offered counts the messages due in the measured window (open loop).
	Offered int64 `json:"offered"`
	Sent    int64 `json:"sent"`
	// Echoed counts distinct messages of this step echoed back, whenever;
	// InWindow the echoes received inside the measured window (the
	// throughput); the latency histogram holds the measured ones (due in
	// the window; closed loop: received in it).
	Echoed   int64 `json:"echoed"`
	InWindow int64 `json:"in_window"`
	// Integrity: all must be zero.
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`
	OutOfOrder int64 `json:"out_of_order"`
	Corrupt    int64 `json:"corrupt"`
	Unexpected int64 `json:"unexpected"`
	// Late counts echoes of an earlier step that arrived during this one.
	Late        int64        `json:"late"`
	Latency     histSnapshot `json:"latency"`
	FromWrite   histSnapshot `json:"from_write"`
	SendLag     histSnapshot `json:"send_lag"`
	MaxBehind   int64        `json:"max_behind"`
	Drain       float64      `json:"drain_s"`
	WriteErrors Reasons      `json:"write_errors"`
}

// echoResult is a worker's final report.
type echoResult struct {
	Connected   int64        `json:"connected"`
	Connect     histSnapshot `json:"connect"`
	Failures    Reasons      `json:"failures"`
	Drops       Reasons      `json:"drops"`
	ClosedClean int64        `json:"closed_clean"`
	Pings       int64        `json:"pings"`
}

// echoConn is one client connection. The reader goroutine owns br and
// the frame scratch; writes (messages, pongs, close) hold wmu.
type echoConn struct {
	gidx int
	nc   net.Conn
	br   *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte
	key  uint32 // xorshift state of the mask keys
	seq  uint64 // next sequence number

	mu sync.Mutex
	st *echoConnStep
}

// echoConnStep is one connection's bookkeeping of one step, guarded by
// echoConn.mu.
type echoConnStep struct {
	base                                 uint64 // first sequence number of the step
	n                                    int    // messages scheduled (open loop)
	echoed                               bitset
	maxSeen                              int
	sent                                 int64
	got                                  int64 // distinct echoes
	dups, ooo, corrupt, unexpected, late int64
	// Closed loop.
	closed     bool
	nextExpect uint64
	stopAt     time.Duration
}

// nextKey returns a mask key; called with wmu held.
func (c *echoConn) nextKey() uint32 {
	x := c.key
	x ^= x << 13
	x ^= x >> 17
	x ^= x << 5
	c.key = x
	return x
}

// writeControl writes a control frame (pong, close) with payload p.
func (c *echoConn) writeControl(op ws.OpCode, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b, at := appendClientFrame(c.wbuf[:0], op, len(p))
	copy(b[at:], p)
	maskFrame(b, at, c.nextKey())
	c.wbuf = b
	_ = c.nc.SetWriteDeadline(time.Now().Add(pongWait))
	_, err := c.nc.Write(b)
	_ = c.nc.SetWriteDeadline(time.Time{})
	return err
}

// echoStepState is the worker's state of the step in progress.
type echoStepState struct {
	idx    int
	closed bool
	tl     timeline
	lat    *latencyHist // from the due time (closed loop: from the write)
	fromW  *latencyHist
	lag    *latencyHist
	inWin  atomic.Int64
	sent   atomic.Int64
	echoed atomic.Int64
	// Open-loop schedule, for the "behind" count.
	interval float64
	rate     float64
}

// echoWorker runs one worker's connections.
type echoWorker struct {
	job  *echoJob
	base time.Time
	op   ws.OpCode

	conns []*echoConn
	cur   atomic.Pointer[echoStepState]

	connected, sent, echoed, dropped, closedClean, pings atomic.Int64
	maxBehind                                            atomic.Int64
	closing                                              atomic.Bool
	phase                                                atomic.Value
	readers                                              sync.WaitGroup
	failures, drops, writeErrs                           *reasonCounter
	connect                                              *latencyHist
	ivl                                                  *latencyHist
	dialers                                              []ws.Dialer
}

func (w *echoWorker) now() time.Duration { return time.Since(w.base) }

func newEchoWorker(job *echoJob) *echoWorker {
	w := &echoWorker{
		job:       job,
		base:      time.Now(),
		op:        ws.OpBinary,
		failures:  newReasonCounter(),
		drops:     newReasonCounter(),
		writeErrs: newReasonCounter(),
		connect:   newLatencyHist(),
		ivl:       newLatencyHist(),
	}
	if job.Text {
		w.op = ws.OpText
	}
	w.phase.Store("connect")
	var protos []string
	if job.Subprotocol != "" {
		protos = []string{job.Subprotocol}
	}
	srcs := job.Src
	if len(srcs) == 0 {
		srcs = []netip.Addr{{}}
	}
	for _, src := range srcs {
		nd := netDialer(job.Timeout, src)
		w.dialers = append(w.dialers, ws.Dialer{Protocols: protos, Timeout: job.Timeout, NetDial: nd.DialContext})
	}
	return w
}

func (w *echoWorker) progress() echoProgress {
	p := echoProgress{
		Phase:     w.phase.Load().(string),
		Connected: w.connected.Load(),
		Failed:    w.failures.total(),
		Sent:      w.sent.Load(),
		Echoed:    w.echoed.Load(),
		Dropped:   w.dropped.Load(),
	}
	if st := w.cur.Load(); st != nil && !st.closed {
		now := w.now() - st.tl.t0
		span := st.tl.wEnd - st.tl.t0
		var due int64
		for _, c := range w.conns {
			phase := time.Duration(float64(c.gidx) / st.rate * 1e9)
			if now >= phase && phase < span {
				n := int64(math.Ceil(float64(span-phase) / st.interval))
				due += min(n, int64(float64(now-phase)/st.interval)+1)
			}
		}
		p.Behind = max(due-st.sent.Load(), 0)
		if p.Behind > w.maxBehind.Load() {
			w.maxBehind.Store(p.Behind)
		}
	}
	return p
}

func runEchoWorker(ctx context.Context, job *echoJob, cmds <-chan wire, link *workerLink) error {
	if err := job.Common.setTransportDefaults(); err != nil {
		return err
	}
	w := newEchoWorker(job)
	defer everySecond(func() {
		p := w.progress()
		p.Interval = w.ivl.takeSparse()
		link.emit(wire{Ev: evProgress, EchoProgress: &p})
	})()
	defer w.closeAll(5 * time.Second)

	if err := w.connectAll(ctx); err != nil {
		return fmt.Errorf("echo worker %d: %w", job.Index, err)
	}
	w.phase.Store("ready")
	p := w.progress()
	link.emit(wire{Ev: evReady, EchoProgress: &p})
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("echo worker %d: %w", job.Index, context.Cause(ctx))
		case c, ok := <-cmds:
			if !ok {
				return fmt.Errorf("echo worker %d: coordinator went away", job.Index)
			}
			switch c.Cmd {
			case cmdStart:
				res, err := w.runStep(ctx, c.Step, c.T0)
				if err != nil {
					return fmt.Errorf("echo worker %d: step %d: %w", job.Index, c.Step, err)
				}
				link.emit(wire{Ev: evStep, EchoStep: res})
			case cmdClose:
				w.phase.Store("close")
				w.closeAll(5 * time.Second)
				r := echoResult{
					Connected:   w.connected.Load(),
					Connect:     w.connect.snapshot(),
					Failures:    w.failures.export(),
					Drops:       w.drops.export(),
					ClosedClean: w.closedClean.Load(),
					Pings:       w.pings.Load(),
				}
				link.emit(wire{Ev: evResult, EchoResult: &r})
				return nil
			}
		}
	}
}

// connectAll opens the worker's connections at its connect rate, at most
// MaxInflight attempts at a time. Every one must succeed.
func (w *echoWorker) connectAll(ctx context.Context) error {
	interval := time.Duration(float64(time.Second) / w.job.ConnectRate)
	w.conns = make([]*echoConn, w.job.Conns)
	sem := make(chan struct{}, w.job.MaxInflight)
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i := range w.job.Conns {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				wg.Wait()
				return context.Cause(ctx)
			}
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			g := w.job.ConnOffset + i
			t0 := time.Now()
			d := w.dialers[g%len(w.dialers)]
			nc, br, _, err := d.Dial(ctx, w.job.URL)
			if err != nil {
				w.failures.add(echoReason(err), err)
				return
			}
			w.connect.record(time.Since(t0))
			if br == nil {
				br = bufio.NewReaderSize(nc, 16<<10)
			}
			c := &echoConn{gidx: g, nc: nc, br: br, key: uint32(g)*2654435761 | 1}
			w.conns[i] = c
			w.connected.Add(1)
			w.readers.Add(1)
			go w.read(c)
		})
	}
	wg.Wait()
	if n := w.failures.total(); n > 0 {
		r := w.failures.export()
		return fmt.Errorf("%w: %d of %d connections failed: %v (e.g. %v)", ErrSetup, n, w.job.Conns, r.Counts, r.Samples)
	}
	return nil
}

// echoReason is reasonOf, plus the HTTP status of a refused upgrade.
func echoReason(err error) string {
	var se ws.StatusError
	if errors.As(err, &se) {
		return "http_" + strconv.Itoa(int(se))
	}
	return reasonOf(err)
}

// read handles the server's frames until the connection ends.
func (w *echoWorker) read(c *echoConn) {
	defer w.readers.Done()
	hdr := make([]byte, ws.MaxHeaderSize)
	var buf, msg []byte
	var fragmented bool
	max := w.job.Size + 1024
	for {
		h, p, err := readServerFrame(c.br, hdr, buf, max)
		buf = p
		if err != nil {
			if w.closing.Load() {
				return
			}
			w.dropped.Add(1)
			w.drops.addErr(err)
			_ = c.nc.Close()
			return
		}
		switch h.OpCode {
		case ws.OpPing:
			w.pings.Add(1)
			if err := c.writeControl(ws.OpPong, p); err != nil && !w.closing.Load() {
				w.writeErrs.addErr(err)
			}
		case ws.OpPong:
		case ws.OpClose:
			code := 1005
			if len(p) >= 2 {
				code = int(binary.BigEndian.Uint16(p))
			}
			if w.closing.Load() {
				if code == 1000 {
					w.closedClean.Add(1)
				}
			} else {
				w.dropped.Add(1)
				w.drops.add("close_"+strconv.Itoa(code), fmt.Errorf("server closed with %d %q", code, p[min(2, len(p)):]))
				_ = c.writeControl(ws.OpClose, p[:min(2, len(p))])
			}
			_ = c.nc.Close()
			return
		case ws.OpText, ws.OpBinary:
			if !h.Fin {
				msg, fragmented = append(msg[:0], p...), true
				continue
			}
			w.onEcho(c, p)
		case ws.OpContinuation:
			if !fragmented {
				continue
			}
			msg = append(msg, p...)
			if h.Fin {
				fragmented = false
				w.onEcho(c, msg)
			}
		}
	}
}

// onEcho accounts for one echoed message.
func (w *echoWorker) onEcho(c *echoConn, p []byte) {
	now := w.now()
	st := w.cur.Load()
	m, ok := parseEchoPayload(p, w.job.Size, w.job.Text)
	w.echoed.Add(1)
	c.mu.Lock()
	cs := c.st
	if cs == nil || st == nil {
		c.mu.Unlock()
		return
	}
	if !ok {
		cs.corrupt++
		c.mu.Unlock()
		return
	}
	inWindow := now >= st.tl.wStart && now < st.tl.wEnd
	if m.seq < cs.base {
		cs.late++
		c.mu.Unlock()
		return
	}
	if cs.closed {
		switch {
		case m.seq < cs.nextExpect:
			cs.dups++
		case m.seq > cs.nextExpect:
			cs.ooo++
		}
		if m.seq >= cs.nextExpect {
			cs.nextExpect = m.seq + 1
			cs.got++
		}
		more := now < cs.stopAt
		c.mu.Unlock()
		if inWindow {
			st.inWin.Add(1)
			st.lat.record(now - m.sent)
			st.fromW.record(now - m.sent)
			w.ivl.record(now - m.sent)
		}
		st.echoed.Add(1)
		if more {
			w.sendClosed(c, st, 1)
		}
		return
	}
	i := int(m.seq - cs.base)
	switch {
	case i >= cs.n:
		cs.unexpected++
		c.mu.Unlock()
		return
	case cs.echoed.has(i):
		cs.dups++
		c.mu.Unlock()
		return
	}
	cs.echoed.set(i)
	cs.got++
	if i < cs.maxSeen {
		cs.ooo++
	}
	cs.maxSeen = max(cs.maxSeen, i)
	c.mu.Unlock()
	st.echoed.Add(1)
	if inWindow {
		st.inWin.Add(1)
	}
	if m.due >= st.tl.wStart {
		st.lat.record(now - m.due)
		st.fromW.record(now - m.sent)
	}
	w.ivl.record(now - m.due)
}

// runStep runs step i (the open-loop rate i, or the closed loop when i
// is len(Rates)) from t0 and waits for its echoes.
func (w *echoWorker) runStep(ctx context.Context, i int, t0 int64) (*echoStepResult, error) {
	job := w.job
	closed := i == len(job.Rates)
	if i < 0 || i > len(job.Rates) || (closed && job.ClosedDuration <= 0) {
		return nil, fmt.Errorf("no step %d", i)
	}
	warmup, duration := job.Warmup, job.Duration
	if closed {
		warmup, duration = job.ClosedWarmup, job.ClosedDuration
	}
	start := w.now() + time.Until(time.Unix(0, t0))
	st := &echoStepState{
		idx: i, closed: closed,
		tl:    timeline{t0: start, wStart: start + warmup, wEnd: start + warmup + duration},
		lat:   newLatencyHist(),
		fromW: newLatencyHist(),
		lag:   newLatencyHist(),
	}
	span := warmup + duration
	var offered int64
	if !closed {
		st.rate = job.Rates[i]
		st.interval = float64(job.TotalConns) / st.rate * 1e9
	}
	steps := make([]*echoConnStep, len(w.conns))
	for j, c := range w.conns {
		c.wmu.Lock()
		cs := &echoConnStep{base: c.seq, maxSeen: -1, closed: closed, nextExpect: c.seq, stopAt: st.tl.wEnd}
		if !closed {
			phase := time.Duration(float64(c.gidx) / st.rate * 1e9)
			if phase < span {
				cs.n = int(math.Ceil(float64(span-phase) / st.interval))
			}
			for k := range cs.n {
				if phase+time.Duration(float64(k)*st.interval) >= warmup {
					offered++
				}
			}
			cs.echoed = newBitset(cs.n)
			c.seq += uint64(cs.n)
		}
		c.wmu.Unlock()
		c.mu.Lock()
		c.st = cs
		c.mu.Unlock()
		steps[j] = cs
	}
	w.maxBehind.Store(0)
	w.cur.Store(st)
	name := "rate " + strconv.FormatFloat(st.rate, 'f', 0, 64)
	if closed {
		name = "closed loop"
	}
	w.phase.Store(name)

	var senders sync.WaitGroup
	for j, c := range w.conns {
		senders.Go(func() {
			if d := st.tl.t0 - w.now(); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return
				}
			}
			if closed {
				w.sendClosed(c, st, job.Window)
				return
			}
			w.sendOpen(ctx, c, st, steps[j])
		})
	}
	senders.Wait()
	if closed {
		// The readers keep sending until the window ends.
		select {
		case <-time.After(st.tl.wEnd - w.now()):
		case <-ctx.Done():
		}
	}
	w.phase.Store(name + " drain")
	drainStart := time.Now()
	deadline := time.After(job.Drain)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
wait:
	for st.echoed.Load() < st.sent.Load() {
		select {
		case <-tick.C:
		case <-deadline:
			break wait
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	res := &echoStepResult{
		Step:        i,
		Offered:     offered,
		InWindow:    st.inWin.Load(),
		Latency:     st.lat.snapshot(),
		FromWrite:   st.fromW.snapshot(),
		SendLag:     st.lag.snapshot(),
		MaxBehind:   w.maxBehind.Load(),
		Drain:       time.Since(drainStart).Seconds(),
		WriteErrors: w.writeErrs.export(),
	}
	for j, c := range w.conns {
		c.mu.Lock()
		cs := steps[j]
		res.Sent += cs.sent
		res.Echoed += cs.got
		res.Duplicates += cs.dups
		res.OutOfOrder += cs.ooo
		res.Corrupt += cs.corrupt
		res.Unexpected += cs.unexpected
		res.Late += cs.late
		c.mu.Unlock()
	}
	res.Lost = res.Sent - res.Echoed
	w.phase.Store("ready")
	return res, nil
}

// sendOpen sends connection c's messages of an open-loop step at their
// due times; messages already due when it wakes go out in one write.
func (w *echoWorker) sendOpen(ctx context.Context, c *echoConn, st *echoStepState, cs *echoConnStep) {
	if cs.n == 0 {
		return
	}
	phase := time.Duration(float64(c.gidx) / st.rate * 1e9)
	due := func(k int) time.Duration { return st.tl.t0 + phase + time.Duration(float64(k)*st.interval) }
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	size := w.job.Size
	for k := 0; k < cs.n; {
		if d := due(k) - w.now(); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		now := w.now()
		c.wmu.Lock()
		b := c.wbuf[:0]
		first := k
		for ; k < cs.n && (k == first || due(k) <= now); k++ {
			var at int
			b, at = appendClientFrame(b, w.op, size)
			d := due(k)
			putEchoPayload(b[at:at+size], echoMsg{seq: cs.base + uint64(k), due: d, sent: now}, w.job.Text)
			maskFrame(b, at, c.nextKey())
			if d >= st.tl.wStart {
				st.lag.record(now - d)
			}
		}
		c.wbuf = b
		n := int64(k - first)
		c.mu.Lock()
		cs.sent += n
		c.mu.Unlock()
		st.sent.Add(n)
		w.sent.Add(n)
		_, err := c.nc.Write(b)
		c.wmu.Unlock()
		if err != nil {
			if !w.closing.Load() {
				w.writeErrs.addErr(err)
			}
			return
		}
	}
}

// sendClosed sends n messages on c in the closed loop.
func (w *echoWorker) sendClosed(c *echoConn, st *echoStepState, n int) {
	size := w.job.Size
	c.wmu.Lock()
	now := w.now()
	b := c.wbuf[:0]
	for range n {
		var at int
		b, at = appendClientFrame(b, w.op, size)
		putEchoPayload(b[at:at+size], echoMsg{seq: c.seq, due: now, sent: now}, w.job.Text)
		maskFrame(b, at, c.nextKey())
		c.seq++
	}
	c.wbuf = b
	c.mu.Lock()
	if c.st != nil {
		c.st.sent += int64(n)
	}
	c.mu.Unlock()
	st.sent.Add(int64(n))
	w.sent.Add(int64(n))
	_, err := c.nc.Write(b)
	c.wmu.Unlock()
	if err != nil && !w.closing.Load() {
		w.writeErrs.addErr(err)
	}
}

// closeAll sends a close frame (1000) on every connection, waits up to
// grace for the server's answers, then closes the sockets. Idempotent.
func (w *echoWorker) closeAll(grace time.Duration) {
	if w.closing.Swap(true) {
		return
	}
	for _, c := range w.conns {
		if c != nil {
			_ = c.writeControl(ws.OpClose, []byte{0x03, 0xe8})
		}
	}
	done := make(chan struct{})
	go func() { w.readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
	}
	for _, c := range w.conns {
		if c != nil {
			_ = c.nc.Close()
		}
	}
	<-done
}
