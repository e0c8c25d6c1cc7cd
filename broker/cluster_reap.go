package broker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/protocol"
)

// This file departs the users of a dead node. Only the node a user last
// connected to decides its departure (visitor_left, agent_left), from its
// own registry; a node that dies takes that knowledge with it. So every
// node writes a heartbeat record (bucket UNIGATE_NODES, expiring
// PresenceTTL after the last one) carrying the incarnation of its process,
// and a user's "seen" record names the incarnation it connected to. The
// live node with the smallest name is the reaper: when it becomes the
// reaper, and whenever an incarnation disappears, it looks at the
// participants of every conversation that is not closed (an index every
// node keeps from its watch of the conversation bucket) and notes those
// whose last incarnation is not live any more. ResumeTTL later, if they
// still did not come back anywhere (their seen record is unchanged), it
// departs them exactly as their own node would have: its shards load the
// conversation and close it (visitor_left) or queue it again
// (agent_left), each a revision-checked update, and the seen record is
// deleted. A reaper that dies is replaced by the next smallest name, which
// starts over (a departure may then come up to one ResumeTTL late).

// convIndex is the cluster's conversations that are not closed, their
// records as the conversation watch last saw them (one goroutine writes;
// the reaper and the shards read). The reaper finds a dead node's users
// in it; a shard loading a conversation the watch just announced uses it
// when a read of the bucket answers from a replica that has not applied
// that revision yet (KV reads go to any replica).
type convIndex struct {
	mu       sync.Mutex
	m        map[string]indexed
	visitors map[string]int // visitor id → its conversations in m
}

type indexed struct {
	meta *ConvMeta
	rev  uint64
}

func (x *convIndex) observe(m *ConvMeta, rev uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if m.State == protocol.StateClosed {
		x.removeLocked(m.ID)
		return
	}
	cur, ok := x.m[m.ID]
	if ok && rev <= cur.rev {
		return
	}
	if ok {
		x.removeLocked(m.ID)
	}
	x.m[m.ID] = indexed{meta: m, rev: rev}
	x.visitors[m.VisitorID]++
}

func (x *convIndex) forget(id string) {
	x.mu.Lock()
	x.removeLocked(id)
	x.mu.Unlock()
}

func (x *convIndex) removeLocked(id string) {
	e, ok := x.m[id]
	if !ok {
		return
	}
	delete(x.m, id)
	if n := x.visitors[e.meta.VisitorID]; n > 1 {
		x.visitors[e.meta.VisitorID] = n - 1
	} else {
		delete(x.visitors, e.meta.VisitorID)
	}
}

// hasVisitor reports whether visitor id takes part in a conversation of
// the cluster that is not closed (as the watch last saw it).
func (x *convIndex) hasVisitor(id string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.visitors[id] > 0
}

// get returns a copy of conversation id's record and its revision.
func (x *convIndex) get(id string) (*ConvMeta, uint64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.m[id]
	if !ok {
		return nil, 0, false
	}
	m := *e.meta
	return &m, e.rev, true
}

// agentOf is the agent a record names as holding the conversation.
func agentOf(m *ConvMeta) string {
	if m.State == protocol.StateQueued {
		return ""
	}
	return m.AgentID
}

// participants returns every user taking part in an open conversation,
// with its role.
func (x *convIndex) participants() map[string]protocol.Role {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make(map[string]protocol.Role, len(x.m))
	for _, e := range x.m {
		out[e.meta.VisitorID] = protocol.RoleVisitor
		if a := agentOf(e.meta); a != "" {
			out[a] = protocol.RoleAgent
		}
	}
	return out
}

// convsOf returns the open conversations in which id takes part as role.
func (x *convIndex) convsOf(id string, role protocol.Role) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for c, e := range x.m {
		if (role == protocol.RoleVisitor && e.meta.VisitorID == id) || (role == protocol.RoleAgent && agentOf(e.meta) == id) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// beat is a node's heartbeat record.
type beat struct {
	Inc string `json:"i"`
	At  int64  `json:"at"`
}

// putBeat refreshes this node's record.
func (cl *Cluster) putBeat(ctx context.Context, now time.Time) error {
	b, _ := json.Marshal(&beat{Inc: cl.inc, At: now.UnixMilli()})
	_, err := cl.nodes.Put(ctx, cl.node, b)
	return err
}

// dropBeat deletes this node's record (a graceful stop: its death is seen
// at once instead of PresenceTTL later).
func (cl *Cluster) dropBeat(ctx context.Context) {
	_ = cl.nodes.Delete(ctx, cl.node)
}

// liveNodes returns the live nodes and their incarnations.
func (cl *Cluster) liveNodes(ctx context.Context) (map[string]string, error) {
	w, err := cl.nodes.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	live := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("broker: node watch ended")
			}
			if e == nil {
				return live, nil
			}
			var b beat
			if json.Unmarshal(e.Value(), &b) == nil {
				live[e.Key()] = b.Inc
			}
		}
	}
}

// getSeen returns user id's seen record and its revision (nil: none).
func (cl *Cluster) getSeen(ctx context.Context, id string) (*seenRecord, uint64, error) {
	e, err := cl.load.Get(ctx, userKey("u", id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var s seenRecord
	if json.Unmarshal(e.Value(), &s) != nil {
		return nil, 0, nil
	}
	return &s, e.Revision(), nil
}

// orphaned reports whether s names a node run that is not live.
func orphaned(s *seenRecord, live map[string]string) bool {
	inc, ok := live[s.Node]
	return !ok || (s.Inc != "" && inc != s.Inc)
}

// orphan is a user whose last node died, due for departure at due.
type orphan struct {
	role protocol.Role
	due  time.Time
}

// reaper is the state of the reaper duty (the heartbeat goroutine only).
type reaper struct {
	active  bool              // this node was the reaper at the last pass
	live    map[string]string // node → incarnation at the last pass
	pending map[string]orphan // user id → departure due
}

// reap runs one pass of the reaper duty (see the top of this file).
func (b *Broker) reap(r *reaper, now time.Time) {
	cl := b.o.Cluster
	ctx, cancel := b.ioCtx()
	live, err := cl.liveNodes(ctx)
	cancel()
	if err != nil {
		b.log.Warn("broker: node records not read", "err", err)
		return
	}
	live[cl.node] = cl.inc
	for n := range live {
		if n < cl.node {
			r.active, r.pending = false, nil // another node reaps
			return
		}
	}
	scan := !r.active
	for n, inc := range r.live {
		if live[n] != inc {
			scan = true // a node died or restarted
		}
	}
	r.active, r.live = true, live
	if r.pending == nil {
		r.pending = make(map[string]orphan)
	}
	if scan {
		for id, role := range cl.open.participants() {
			if _, ok := r.pending[id]; ok {
				continue
			}
			ctx, cancel := b.ioCtx()
			s, _, err := cl.getSeen(ctx, id)
			cancel()
			if err != nil {
				b.log.Warn("broker: seen record not read", "err", err)
				r.active = false // the next pass scans again
				return
			}
			if s != nil && orphaned(s, live) {
				r.pending[id] = orphan{role: role, due: now.Add(b.o.ResumeTTL)}
			}
		}
	}
	for id, o := range r.pending {
		if now.Before(o.due) {
			continue
		}
		ctx, cancel := b.ioCtx()
		s, rev, err := cl.getSeen(ctx, id)
		if err != nil {
			cancel()
			continue // next pass
		}
		delete(r.pending, id)
		if s == nil || !orphaned(s, live) {
			cancel()
			continue // came back somewhere
		}
		convs := cl.open.convsOf(id, o.role)
		b.log.Info("broker: departing the user of a dead node", "user", id, "node", s.Node, "conversations", len(convs))
		for _, conv := range convs {
			b.shardFor(conv).mbox.post(ctrl{kind: ctrlCall, call: func(s *shard) { s.reapConv(conv, id, o.role) }})
		}
		// Gone for good: later scans skip it (unless it came back just now).
		_ = cl.load.Delete(ctx, userKey("u", id), jetstream.LastRevision(rev))
		cancel()
	}
}

// reapConv departs user id (role) from conversation conv for its dead
// node: visitor_left closes it, agent_left queues it again.
func (s *shard) reapConv(conv, id string, role protocol.Role) {
	c := s.convs[conv]
	if c == nil {
		c = s.load(conv)
	}
	if c == nil || c.state == protocol.StateClosed {
		return
	}
	switch {
	case role == protocol.RoleVisitor && c.visitor.id == id:
		s.visitorGone(&ctrl{conv: conv, u: c.visitor})
	case role == protocol.RoleAgent && c.agent != nil && c.agent.id == id:
		s.agentGone(&ctrl{conv: conv, u: c.agent})
	}
}
