package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/unigate/unigate/protocol"
)

// setup connects the agents and the visitors, puts the agents online and
// waits until every conversation is assigned on both sides.
func (w *chatWorker) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.job.SetupTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	pace := newPacer(w.job.ConnectRate)

	w.agents = make([]*agent, len(w.job.Agents))
	var g sync.WaitGroup
	var firstErr error
	var errMu sync.Mutex
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		errMu.Unlock()
	}
	sem := make(chan struct{}, 64)
	for i, spec := range w.job.Agents {
		if !pace.wait(ctx) {
			break
		}
		sem <- struct{}{}
		g.Go(func() {
			defer func() { <-sem }()
			if err := w.startAgent(ctx, i, spec, deadline); err != nil {
				w.setupErrs.addErr(err)
				fail(fmt.Errorf("agent %s: %w", spec.ID, err))
			}
		})
	}
	g.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("agents: %w", err)
	}
	w.phase.Store("visitors")
	for j, c := range w.convs {
		if !pace.wait(ctx) {
			break
		}
		sem <- struct{}{}
		g.Go(func() {
			defer func() { <-sem }()
			if err := w.startVisitor(ctx, len(w.job.Agents)+j, c, deadline); err != nil {
				w.setupErrs.addErr(err)
				fail(fmt.Errorf("visitor %d: %w", j, err))
			}
		})
	}
	g.Wait()
	if firstErr != nil {
		return firstErr
	}
	w.phase.Store("assign")
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	// Both sides must have seen the assignment: the agent's copy links the
	// conversation, the visitor's Assigned event names the agent, and the
	// two arrive in either order.
	n := int64(len(w.convs))
	for w.linked.Load() < n || w.assignedV.Load() < n {
		if n := w.setupErrs.total(); n > 0 {
			return fmt.Errorf("%w: %d requests refused during setup: %v", ErrSetup, n, w.setupErrs.export().Samples)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %d of %d conversations assigned on both sides after %v (visitors saw %d assignments; setup errors %v)",
				ErrSetup, w.linked.Load(), len(w.convs), w.job.SetupTimeout, w.assignedV.Load(), w.setupErrs.export().Counts)
		case <-t.C:
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.convs {
		if c.a.userID != c.agentID {
			return fmt.Errorf("%w: conversation %s: the visitor was told agent %q, agent %q got it", ErrSetup, c.id, c.agentID, c.a.userID)
		}
	}
	w.setupDone.Store(true)
	return nil
}

// startAgent connects agent i, says hello and goes online.
func (w *chatWorker) startAgent(ctx context.Context, i int, spec agentSpec, deadline time.Time) error {
	conn, err := w.dial.dial(ctx, i)
	if err != nil {
		return err
	}
	welcome, err := conn.helloAgent(spec.Token, deadline)
	if err != nil {
		return err
	}
	a := &agent{
		idx:      i,
		conn:     conn,
		userID:   welcome.UserID,
		stale:    make(map[string]bool),
		local:    make(map[string]*chatConv),
		replies:  make(chan reply, 4096),
		presence: make(chan error, 1),
	}
	for _, id := range welcome.Conversations {
		a.stale[id] = true
	}
	w.mu.Lock()
	w.agents[i] = a
	w.mu.Unlock()
	w.readers.Add(1)
	go w.agentReader(a)
	w.writers.Add(1)
	go w.agentWriter(a)

	if err := conn.goOnline(ctx, w.job.AgentCapacity, w.job.Skill, a.presence); err != nil {
		return err
	}
	w.agentsOnline.Add(1)
	return nil
}

// startVisitor connects the visitor of c, says hello and opens the
// conversation; the reader follows it to the assignment.
func (w *chatWorker) startVisitor(ctx context.Context, n int, c *chatConv, deadline time.Time) error {
	conn, err := w.dial.dial(ctx, n)
	if err != nil {
		return err
	}
	welcome, err := conn.hello("", deadline)
	if err != nil {
		_ = conn.c.Close()
		return err
	}
	v := &visitor{conn: conn, conv: c, userID: welcome.UserID}
	w.mu.Lock()
	c.v = v
	c.visitorID = welcome.UserID
	w.mu.Unlock()
	w.visitorsUp.Add(1)
	w.readers.Add(1)
	go w.visitorReader(v)
	env := protocol.Envelope{Kind: protocol.KindOpen, ID: openID}
	env.Open = protocol.Open{Skill: w.job.Skill}
	return conn.send(&env)
}

// link records that conversation id is known to its visitor (c != nil) or
// to agent a (a != nil), and pairs them once both are known.
func (w *chatWorker) link(id string, c *chatConv, a *agent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c != nil {
		w.byID[id] = c
		if pa := w.pendingAgent[id]; pa != nil {
			delete(w.pendingAgent, id)
			a = pa
		}
	} else {
		c = w.byID[id]
		if c == nil {
			w.pendingAgent[id] = a
			return
		}
	}
	if a == nil {
		return
	}
	if c.a != nil {
		if c.a != a {
			w.events.add("assigned_to_two_agents", fmt.Errorf("conversation %s: agents %s and %s", id, c.a.userID, a.userID))
		}
		return
	}
	c.a = a
	w.linked.Add(1)
}

// conversationOf returns the conversation id of this worker, as seen by
// agent a (reader goroutine of a only).
func (w *chatWorker) conversationOf(a *agent, id string) *chatConv {
	if c := a.local[id]; c != nil {
		return c
	}
	w.mu.Lock()
	c := w.byID[id]
	if c != nil && c.a != a {
		c = nil
	}
	w.mu.Unlock()
	if c != nil {
		a.local[c.id] = c
	}
	return c
}

// pacer spaces out starts at a fixed rate.
type pacer struct {
	start    time.Time
	interval time.Duration
	n        int
}

func newPacer(rate float64) *pacer {
	return &pacer{start: time.Now(), interval: time.Duration(float64(time.Second) / rate)}
}

// wait blocks until the next start is due; false if ctx ended.
func (p *pacer) wait(ctx context.Context) bool {
	due := p.start.Add(time.Duration(p.n) * p.interval)
	p.n++
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
	return ctx.Err() == nil
}
