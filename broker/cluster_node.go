package broker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/protocol"
)

// This file is the broker's side of cluster mode: the goroutines that
// watch the conversation bucket and heartbeat agent presence, and the
// shard handlers for what other nodes did (message notices, record
// changes). See "Cluster" in the package documentation.

// noticeQueue bounds each shard's channel of message notices; a notice
// that finds it full is dropped by NATS (slow consumer) and the gap is
// repaired from History by the next notice, an append conflict or an
// attach of that conversation.
const noticeQueue = 8192

// follow subscribes the shard to c's message notices (cluster mode).
func (s *shard) follow(c *conversation) {
	cl := s.b.o.Cluster
	if cl == nil || c.sub != nil {
		return
	}
	sub, err := cl.nc.ChanSubscribe(cl.convSubject(c.id), s.notices)
	if err != nil {
		s.b.log.Warn("broker: cannot follow conversation", "conversation", c.id, "err", err)
		return
	}
	c.sub = sub
}

func (s *shard) unfollow(c *conversation) {
	if c.sub != nil {
		_ = c.sub.Unsubscribe()
		c.sub = nil
	}
}

// notice applies a message another node stored: the next seq is
// delivered to the local connections, an old one ignored, a gap repaired
// from History.
func (s *shard) notice(msg *nats.Msg) {
	cl := s.b.o.Cluster
	conv := strings.TrimPrefix(msg.Subject, cl.prefix+"conv.")
	c := s.convs[conv]
	if c == nil || c.state == protocol.StateUnspecified {
		return
	}
	var n notice
	if json.Unmarshal(msg.Data, &n) != nil || n.Node == cl.node {
		return
	}
	// The node that writes to c lately: where to forward c's sends if
	// this node's appends keep losing to it (cluster_write.go).
	c.cw.peer, c.cw.peerAt = n.Node, time.Now()
	if n.Seq <= c.lastSeq {
		return
	}
	if n.Seq > c.lastSeq+1 {
		s.b.m.clusterGaps.Inc()
		if c.inflight {
			// Probably our own append is the gap: resynchronise once it
			// is answered (a resync now would deliver it before its ack).
			c.resyncAfter = true
			return
		}
		if err := s.resync(c); err != nil {
			s.b.log.Warn("broker: resync after a gap failed", "conversation", c.id, "err", err)
		}
		s.pump(c)
		return
	}
	s.learn(c, message{seq: n.Seq, senderID: n.Sender, senderRole: n.Role, cmid: n.CMID, text: n.Text, ts: n.TS}, n.Stream)
	s.b.m.clusterNotices.Inc()
	s.learnAnswered(c)
	s.pump(c)
}

// commit writes m, the next metadata of c, with a revision check. Single
// node: a failure is logged and the change goes ahead (the in-memory
// state is authoritative). Cluster: a failure means another node changed
// the conversation first; its record is read and applied, and commit
// returns false: the caller must change nothing.
func (s *shard) commit(c *conversation, m *ConvMeta) bool {
	cs := s.b.o.Conversations
	if cs == nil {
		return true
	}
	ctx, cancel := s.ioCtx()
	defer cancel()
	rev, err := cs.Update(ctx, m, c.rev)
	if err == nil {
		c.rev = rev
		c.notes = m.Hooks
		return true
	}
	if s.b.o.Cluster == nil {
		s.b.log.Error("broker: conversation metadata not saved", "conversation", c.id, "err", err)
		if _, r, gerr := cs.Get(ctx, c.id); gerr == nil {
			c.rev = r // next update replaces it
		}
		return true
	}
	s.b.m.clusterConflicts.Inc()
	if cur, r, gerr := cs.Get(ctx, c.id); gerr == nil {
		s.applyMeta(c, cur, r)
	}
	return false
}

// applyMeta brings c (held by this node) to a newer record written by
// another node, telling the local connections what changed.
func (s *shard) applyMeta(c *conversation, m *ConvMeta, rev uint64) {
	if rev <= c.rev || c.state == protocol.StateClosed {
		if rev > c.rev {
			c.rev = rev
		}
		return
	}
	c.rev = rev
	// Its changes' events are stored before they are announced here too
	// (the node that wrote it may have died before it stored them); the
	// same ids, so a duplicate within the stream's window is dropped.
	s.repairNotes(c, m.Hooks)
	ev := m.Event
	if ev == protocol.StateUnspecified {
		ev = m.State
	}
	c.intent, c.summary = m.Intent, m.Summary
	switch m.State {
	case protocol.StateClosed:
		s.setState(c, protocol.StateClosed)
		c.reason = strings.Clone(m.Reason)
		c.closedAt = s.b.now()
		c.closedMilli = m.ClosedMilli
		c.visitor.mu.Lock()
		c.visitor.open--
		c.visitor.mu.Unlock()
		s.announce(c, protocol.StateClosed, c.reason, nil, 0)
		s.closed = append(s.closed, c)
	case protocol.StateQueued:
		old := c.agent
		c.agent = nil
		c.skill = m.Skill
		c.position = 0
		s.setState(c, protocol.StateQueued)
		s.announce(c, ev, m.Reason, nil, 0)
		if old != nil {
			s.drop(c, old)
		}
	case protocol.StateAssigned, protocol.StateTransferred:
		if c.agent != nil && c.agent.id == m.AgentID && c.state == m.State {
			return
		}
		to := s.b.reg.userByID(m.AgentID, protocol.RoleAgent, c.tenant, s.b.now())
		if to == nil {
			return
		}
		old := c.agent
		c.agent = to
		c.position = 0
		s.setState(c, m.State)
		fresh := s.adopt(c, to)
		s.announce(c, ev, m.Reason, nil, 0)
		s.replay(c, fresh, 0) // before drop: fresh is a view of c.attached
		if old != nil && old != to {
			s.drop(c, old)
		}
	}
}

// remoteMeta handles a record change seen by the watcher: applied to the
// conversation if this node holds it, or the conversation is loaded when
// one of its participants is connected here (an agent it was just given).
func (s *shard) remoteMeta(r *ctrl) {
	m := r.meta
	if c := s.convs[m.ID]; c != nil {
		s.applyMeta(c, m, r.seq)
		return
	}
	if m.State == protocol.StateClosed || (!s.b.reg.hasLocal(m.VisitorID) && !s.b.reg.hasLocal(m.AgentID)) {
		return
	}
	c := s.load(m.ID)
	if c == nil {
		return
	}
	ev := m.Event
	if ev == protocol.StateUnspecified || c.rev != r.seq {
		ev = c.state
	}
	s.attachLocal(c, ev)
}

// attachLocal attaches the local connections of c's participants to c,
// just loaded for another reason than their own hello: the state (as
// event ev), then the history.
func (s *shard) attachLocal(c *conversation, ev protocol.State) {
	s.adopt(c, c.visitor)
	if c.agent != nil {
		s.adopt(c, c.agent)
	}
	if len(c.attached) == 0 {
		return
	}
	s.announce(c, ev, c.reason, nil, 0)
	s.replay(c, c.attached, 0)
}

// clusterTake gives c to agent toAgent (online somewhere in the cluster,
// same tenant, with a free slot) in state st, committing the record; it
// returns the agent's user. Nothing changed on error.
func (s *shard) clusterTake(c *conversation, toAgent string, st protocol.State, note string, ev backends.EventType, hookFrom string) (*user, *protocol.Error) {
	b, cl := s.b, s.b.o.Cluster
	ctx, cancel := s.ioCtx()
	defer cancel()
	p, err := cl.getPresence(ctx, toAgent)
	if err != nil {
		return nil, protocol.NewError(protocol.CodeUnavailable, "presence unavailable, retry later")
	}
	if p == nil || p.Status != protocol.StatusOnline || p.Tenant != c.tenant {
		return nil, protocol.NewError(protocol.CodeNoAgent, "the agent is not available")
	}
	to := b.reg.userByID(toAgent, protocol.RoleAgent, c.tenant, b.now())
	if to == nil {
		return nil, protocol.NewError(protocol.CodeNoAgent, "the agent is not available")
	}
	from := c.agent
	added, sl, err := cl.reserve(ctx, toAgent, c.id, p.Capacity, b.now())
	if err != nil {
		if errors.Is(err, errAgentFull) {
			return nil, protocol.NewError(protocol.CodeNoAgent, "the agent is not available")
		}
		return nil, protocol.NewError(protocol.CodeUnavailable, "storage unavailable, retry later")
	}
	m := c.meta()
	m.State, m.Event, m.AgentID, m.Reason, m.Boost = st, st, toAgent, note, false
	if ev != backends.EventUnspecified {
		s.noteConv(c, m, ev, hookFrom)
	}
	if !s.commit(c, m) {
		s.giveBack(c, toAgent, added, sl)
		return nil, protocol.NewError(protocol.CodeBadTransition, "the conversation changed meanwhile, retry")
	}
	if from != nil {
		b.unreserve(from.id, c.id, slot{})
	}
	return to, nil
}

// clusterQueue commits c back into the queue (transfer to a skill, a
// departed agent): boosted, with event ev and reason. Nothing changed if
// it returns false.
func (s *shard) clusterQueue(c *conversation, skill string, ev protocol.State, reason string, hev backends.EventType, from string) bool {
	m := c.meta()
	m.State, m.Event, m.AgentID, m.Skill, m.Reason, m.Boost = protocol.StateQueued, ev, "", skill, reason, true
	if hev != backends.EventUnspecified {
		s.noteConv(c, m, hev, from)
	}
	if !s.commit(c, m) {
		return false
	}
	if c.agent != nil {
		s.b.unreserve(c.agent.id, c.id, slot{})
	}
	return true
}

// hasLocal reports whether user id has a connection to this node.
func (r *registry) hasLocal(id string) bool {
	if id == "" {
		return false
	}
	r.mu.Lock()
	u := r.users[id]
	r.mu.Unlock()
	return u != nil && u.connected()
}

// watchCheck is how often the conversation watch is compared with the
// bucket; a watch behind it at two checks in a row, without progress, is
// restarted.
const watchCheck = 5 * time.Second

// watchConversations feeds every change of the conversation bucket to the
// dispatcher's queue mirror and to the shard of the conversation. It
// restarts the watch, from the revision after the last one it saw, if
// NATS ends it, or if it stalls: the watch is an ordered consumer that
// nats.go recreates after a missed heartbeat, and when that fails with an
// error nats.go does not retry (js.go resetOrderedConsumer) it drops the
// subscription and the watch stops delivering without a word. A stalled watch would leave this node's agents
// without assignments and its replicas without state changes.
func (b *Broker) watchConversations() {
	defer b.wg.Done()
	kv := b.o.Cluster.conv.kv
	check := time.NewTicker(watchCheck)
	defer check.Stop()
	var last uint64   // revision of the last entry seen
	var target uint64 // the bucket's last revision when the watch was restarted
	ready := false    // the initial records were all seen (once)
	for {
		var opts []jetstream.WatchOpt
		if last > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(last+1))
		}
		w, err := kv.WatchAll(b.ctx, opts...)
		if err != nil {
			b.log.Warn("broker: conversation watch failed, retrying", "err", err)
			select {
			case <-b.done:
				return
			case <-time.After(time.Second):
				continue
			}
		}
		behind, at := false, last
	loop:
		for {
			select {
			case <-b.done:
				_ = w.Stop()
				return
			case <-check.C:
				if head := b.bucketHead(kv); head > last {
					if behind && last == at {
						b.log.Warn("broker: conversation watch stalled, restarting it", "revision", last, "bucket", head)
						target = head
						_ = w.Stop()
						break loop
					}
					behind, at = true, last
				} else {
					behind = false
				}
			case e, ok := <-w.Updates():
				if !ok {
					break loop
				}
				if e == nil {
					// Everything up to now is delivered: a revision of
					// the bucket not seen is gone (expired), not late.
					last = max(last, target)
					ready = true
					b.clusterReady.Store(true)
					continue
				}
				last = max(last, e.Revision())
				b.observeEntry(e, ready)
			}
		}
	}
}

// bucketHead returns the bucket's last revision (0 on an error: the next
// check asks again).
func (b *Broker) bucketHead(kv jetstream.KeyValue) uint64 {
	ctx, cancel := b.ioCtx()
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return 0
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		return bs.StreamInfo().State.LastSeq
	}
	return 0
}

func (b *Broker) observeEntry(e jetstream.KeyValueEntry, ready bool) {
	if e.Operation() != jetstream.KeyValuePut {
		b.disp.forget(e.Key())
		b.o.Cluster.open.forget(e.Key())
		return
	}
	var m ConvMeta
	if json.Unmarshal(e.Value(), &m) != nil || m.ID != e.Key() || m.VisitorID == "" {
		return
	}
	b.disp.observe(&m, e.Revision())
	b.o.Cluster.open.observe(&m, e.Revision())
	if ready {
		b.shardFor(m.ID).mbox.post(ctrl{kind: ctrlMeta, meta: &m, seq: e.Revision()})
	}
}

// heartbeat is this node's cluster duty: it takes the sends other nodes
// forward to it (cluster_write.go), refreshes its own record and the
// presence of its agents that are not offline, so that both expire
// PresenceTTL after this node died, and, on the reaper node, departs the
// users of dead nodes (cluster_reap.go).
func (b *Broker) heartbeat() {
	defer b.wg.Done()
	cl := b.o.Cluster
	subs, err := b.subscribeForwards()
	if err != nil {
		b.log.Error("broker: cannot take forwarded sends", "err", err)
	}
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		// A graceful stop: the others see this node gone at once.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		cl.dropBeat(ctx)
		cancel()
	}()
	var r reaper
	fullRead := make(map[string]time.Time) // recheckFull's memory
	beat := func() {
		ctx, cancel := b.ioCtx()
		if err := cl.putBeat(ctx, time.Now()); err != nil {
			b.log.Warn("broker: node heartbeat failed", "err", err)
		}
		cancel()
	}
	beat()
	t := time.NewTicker(cl.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
			beat()
			if b.clusterReady.Load() {
				b.reap(&r, b.now())
			}
			b.payOwed(b.now())
			b.recheckFull(fullRead, b.now())
			b.refreshSeen(b.now())
			for id, p := range b.disp.localPresence() {
				p.Node = cl.node
				ctx, cancel := b.ioCtx()
				if err := cl.putPresence(ctx, id, &p); err != nil {
					b.log.Warn("broker: presence heartbeat failed", "err", err)
				}
				cancel()
			}
		}
	}
}

// refreshSeen writes again the seen records (markSeen) of the users
// connected to this node whose record is older than seenRefresh, so that a
// record expires (Cluster.seenTTL) only once its user is gone: a live
// user's record is never lost, and the bucket does not keep a record for
// every user that ever came.
func (b *Broker) refreshSeen(now time.Time) {
	cl, every := b.o.Cluster, seenRefresh(b.o.ResumeTTL)
	var due []*user
	r := &b.reg
	r.mu.Lock()
	for _, u := range r.users {
		u.mu.Lock()
		if len(u.conns) > 0 && !u.seenAt.IsZero() && now.Sub(u.seenAt) >= every {
			due = append(due, u)
		}
		u.mu.Unlock()
	}
	r.mu.Unlock()
	for _, u := range due {
		cl.markSeen(u, now)
	}
}

// clusterAssign commits the dispatcher's decision to give c to agent a:
// a slot of a's cluster-wide load, then the record (queued → assigned).
// If either fails nothing changed: the slot is given back and c, if still
// queued, returns to the queue.
func (s *shard) clusterAssign(c *conversation, a *user) bool {
	b, cl := s.b, s.b.o.Cluster
	_, capacity, ok := b.disp.agentLoad(a.id)
	if !ok {
		return false
	}
	ctx, cancel := s.ioCtx()
	added, sl, err := cl.reserve(ctx, a.id, c.id, capacity, b.now())
	cancel()
	if err != nil {
		b.disp.release(a.id, c.id)
		if errors.Is(err, errAgentFull) {
			// Busy on another node: learn its real load. (If one of its
			// slots is stale, too fresh to prune yet, the heartbeat prunes
			// it later: Broker.recheckFull.)
			ctx, cancel := s.ioCtx()
			if convs, err := cl.agentConvs(ctx, a.id, b.now()); err == nil {
				b.disp.setLoad(a.id, convs)
			}
			cancel()
		} else {
			b.log.Warn("broker: agent load not reserved", "agent", a.id, "err", err)
		}
		b.disp.requeueMirror(c.meta(), c.rev)
		return false
	}
	m := c.meta()
	m.State, m.Event, m.AgentID, m.Reason, m.Boost = protocol.StateAssigned, protocol.StateAssigned, a.id, "", false
	s.noteConv(c, m, backends.EventConversationAssigned, "")
	if !s.commit(c, m) {
		s.giveBack(c, a.id, added, sl)
		b.disp.release(a.id, c.id)
		if c.state == protocol.StateQueued {
			b.disp.requeueMirror(c.meta(), c.rev)
		}
		return false
	}
	return true
}

// recheck is a conversation this shard started following a moment ago:
// its subscription's interest may still have been travelling through the
// routes when another node published a notice, so the shard compares it
// with History on its next sweeps (rechecks of them).
type recheck struct {
	c    *conversation
	left int
}

const rechecks = 2

func (s *shard) recheckLater(c *conversation) {
	if s.b.o.Cluster != nil {
		s.rechecks = append(s.rechecks, recheck{c: c, left: rechecks})
	}
}

// runRechecks resynchronises the conversations due (on ctrlSweep).
func (s *shard) runRechecks() {
	kept := s.rechecks[:0]
	for _, r := range s.rechecks {
		if s.convs[r.c.id] != r.c || r.c.state == protocol.StateClosed {
			continue
		}
		if !r.c.inflight {
			if err := s.resync(r.c); err != nil {
				s.b.log.Warn("broker: recheck failed", "conversation", r.c.id, "err", err)
			}
		}
		if r.left--; r.left > 0 {
			kept = append(kept, r)
		}
	}
	clear(s.rechecks[len(kept):])
	s.rechecks = kept
}

// giveBack returns the slot sl of agent that a failed commit had reserved
// for c, unless it was not this attempt's (added false) or c, as re-read
// by the failed commit, is held by that very agent after all (another
// node's attempt for the same agent won).
func (s *shard) giveBack(c *conversation, agent string, added bool, sl slot) {
	if !added || (c.agent != nil && c.agent.id == agent && c.state != protocol.StateClosed) {
		return
	}
	s.b.unreserve(agent, c.id, sl)
}

// unreserve gives agent's slot for conv back (sl, or any when sl is
// zero), with a context of its own: the caller's may have been spent by
// the reservation and the commit before it. A failure is logged and the
// slot owed: the heartbeat prunes the agent's load once the slot is older
// than the reservation grace (payOwed), so a slot nobody gives back
// cannot keep an agent full.
func (b *Broker) unreserve(agent, conv string, sl slot) {
	cl := b.o.Cluster
	ctx, cancel := b.ioCtx()
	err := cl.unreserve(ctx, agent, conv, sl)
	cancel()
	if err != nil {
		b.log.Warn("broker: agent slot not given back, pruning it later", "agent", agent, "conversation", conv, "err", err)
		b.m.clusterSlotsOwed.Inc()
		cl.owe(agent, b.now().Add(cl.grace))
	}
}

// payOwed prunes the loads of the agents whose slots this node could not
// give back (see unreserve), and updates their local load.
func (b *Broker) payOwed(now time.Time) {
	cl := b.o.Cluster
	for _, agent := range cl.owedDue(now) {
		ctx, cancel := b.ioCtx()
		convs, dropped, err := cl.pruneLoad(ctx, agent, now)
		cancel()
		if err != nil {
			b.log.Warn("broker: agent load not pruned, retrying", "agent", agent, "err", err)
			continue
		}
		cl.paid(agent, now)
		if dropped > 0 {
			b.log.Info("broker: owed agent slots given back", "agent", agent, "slots", dropped)
			b.m.clusterStaleSlots.Add(dropped)
		}
		b.disp.setLoad(agent, convs)
	}
}

// recheckFull re-reads (and prunes) the cluster-wide load of every agent
// of this node that looks full while conversations of its tenant wait, at
// once and then once per reservation grace while that lasts. Nothing else
// would: the dispatcher offers nothing to an agent it believes full, so a
// stale slot (a reservation another node's assignment made pointless,
// never given back) would keep the agent full and the queue waiting for
// good. read is the heartbeat's memory of each full agent's last re-read.
func (b *Broker) recheckFull(read map[string]time.Time, now time.Time) {
	cl := b.o.Cluster
	full := b.disp.fullAgents()
	for id := range read {
		if !slices.Contains(full, id) {
			delete(read, id)
		}
	}
	for _, id := range full {
		if t, ok := read[id]; ok && now.Sub(t) < cl.grace {
			continue
		}
		read[id] = now
		ctx, cancel := b.ioCtx()
		convs, dropped, err := cl.pruneLoad(ctx, id, now)
		cancel()
		if err != nil {
			b.log.Warn("broker: agent load not read", "agent", id, "err", err)
			continue
		}
		if dropped > 0 {
			b.log.Warn("broker: stale agent slots dropped (reserved, never given back)", "agent", id, "slots", dropped)
			b.m.clusterStaleSlots.Add(dropped)
		}
		b.disp.setLoad(id, convs) // a freed slot takes the head of the queue
	}
}

// fullAgents returns this node's online agents that are at capacity while
// conversations of their tenant wait (cluster mode, for recheckFull).
func (d *dispatcher) fullAgents() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for id, a := range d.agents {
		if a.status == protocol.StatusOnline && a.load >= a.capacity {
			if p := d.pools[a.tenant]; p != nil && len(p.queue) > 0 {
				out = append(out, id)
			}
		}
	}
	return out
}

// requeueUnloaded puts conversation id back in the dispatcher's queue
// mirror, a second later, when an assignment could not load it (the
// stores failed for a moment) and the watch says it is still waiting: the
// watch would not announce it again until its record changes. (At once,
// a store that fails fast would make assign and load a busy loop.)
func (s *shard) requeueUnloaded(id string) {
	if m, rev, ok := s.b.o.Cluster.open.get(id); ok && m.State == protocol.StateQueued {
		d := s.b.disp
		time.AfterFunc(time.Second, func() { d.requeueMirror(m, rev) })
	}
}
