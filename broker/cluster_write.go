package broker

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/unigate/unigate/protocol"
)

// This file is the write path of a conversation that several nodes append
// to at once (a visitor on one node, its agent on another, both typing).
// Compare-and-set keeps the history consistent, but it is not fair: the
// node whose append just won learns the new stream sequence first and has
// its next append on the wire before the loser has even resynchronised,
// so under a steady load from both sides the loser meets a conflict on
// almost every attempt and its messages fail after
// maxClusterAppendAttempts. So a node whose append conflicts with a node
// that is actively writing forwards its sends to that node (core NATS,
// <prefix>.fwd.<node>): the other node becomes the conversation's one
// writer and appends both nodes' messages in arrival order; nothing
// conflicts any more. See "Cluster" in docs/broker.md for the measured
// figures and the alternatives.
//
// The forwarding node keeps each forwarded send in its queue (in order,
// bounded as before) until the message comes back stored: by the writer's
// notice, by a resync, or by the writer's answer
// (<prefix>.fwdr.<node>). The message is recognised by its sender and
// client message id, or by the seq the answer named; its sender gets the
// Ack, everybody else the Deliver, exactly as if it had been appended
// here. Only sends with a client message id are forwarded (a send without
// one could not be recognised): others are appended here, in their turn.

// Forwarding bounds.
const (
	// forwardHold: a node forwards to a writer whose notices are at most
	// this old, and keeps forwarding while that writer appended a message
	// of its own clients within it.
	forwardHold = 2 * time.Second
	// forwardTimeout: a forward without an answer by then is taken back
	// and appended here, unchanged (the writer died, or is slow and may
	// still store it: the stream's deduplication by message id, or the
	// resync after a conflict, tells; see takeBack).
	forwardTimeout = 2*ioTimeout - time.Second
	// forwardTick: how often a conversation with forwards in flight checks
	// them; an answered message that has not reached this node a tick
	// later is read from History. After maxLate ticks its sender gets
	// CodeUnconfirmed: an Ack at a seq this node has not delivered up to
	// would move the client's cursor past the messages before it (see
	// ackInOrder).
	forwardTick = 250 * time.Millisecond
	maxLate     = 20
)

// msgLate answers a forward the writer stored that this node could not
// read within maxLate ticks.
const msgLate = "stored by another node, but this node cannot read the history up to it yet: re-send it with the same client_msg_id for its ack"

// convWriter is the cluster write state of a conversation (owned by its
// shard).
type convWriter struct {
	writer string    // sends are forwarded to this node ("" = appended here)
	peer   string    // the last other node that appended (its notices)
	peerAt time.Time // when its last notice came
	ownAt  time.Time // when this node last appended a send of its own clients
	timer  *time.Timer
}

// remoteSend is a send another node forwarded to this one: where to
// answer.
type remoteSend struct {
	reply string
	id    uint64
}

// fwdReq is a forwarded send.
type fwdReq struct {
	Node   string        `json:"n"`
	ID     uint64        `json:"i"`
	Conv   string        `json:"cv"`
	Sender string        `json:"s"`
	Role   protocol.Role `json:"r"`
	CMID   string        `json:"c"`
	Text   string        `json:"t"`
	TS     int64         `json:"ts"`
}

// fwdAnswer is the writer's answer to a forwarded send: stored (Seq,
// Stream), stored before (Dup), refused (Code), or not taken (Refused:
// append it yourself). Busy says the writer still has clients of its own
// writing, so forwarding should go on.
type fwdAnswer struct {
	Conv    string        `json:"cv"`
	ID      uint64        `json:"i"`
	Seq     uint64        `json:"q,omitempty"`
	Stream  uint64        `json:"ss,omitempty"`
	TS      int64         `json:"ts,omitempty"`
	Dup     bool          `json:"d,omitempty"`
	Code    protocol.Code `json:"e,omitempty"`
	Msg     string        `json:"m,omitempty"`
	Refused bool          `json:"x,omitempty"`
	Busy    bool          `json:"b,omitempty"`
}

// fwdSubject takes the sends forwarded to node; the answer goes to the
// request's reply subject, <prefix>.fwdr.<node>.<conversation>.<id>, so
// that NATS's "no responders" status (the writer is gone) names the
// forward it fails.
func (cl *Cluster) fwdSubject(node string) string { return cl.prefix + "fwd." + node }
func (cl *Cluster) ansPrefix() string             { return cl.prefix + "fwdr." + cl.node + "." }

// subscribeForwards takes the forwarded sends of this node and the
// answers to its own forwards; each is posted to the conversation's shard.
func (b *Broker) subscribeForwards() ([]*nats.Subscription, error) {
	cl := b.o.Cluster
	post := func(conv string, fn func(*shard)) {
		b.shardFor(conv).mbox.post(ctrl{kind: ctrlCall, call: fn})
	}
	reqs, err := cl.nc.Subscribe(cl.fwdSubject(cl.node), func(m *nats.Msg) {
		q := new(fwdReq)
		if json.Unmarshal(m.Data, q) != nil || q.Conv == "" || q.Node == "" || m.Reply == "" {
			return
		}
		reply := m.Reply
		post(q.Conv, func(s *shard) { s.acceptForward(q, reply) })
	})
	if err != nil {
		return nil, err
	}
	answers, err := cl.nc.Subscribe(cl.ansPrefix()+">", func(m *nats.Msg) {
		a := new(fwdAnswer)
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			// No responders: the writer is gone (or never subscribed).
			conv, id, ok := strings.Cut(strings.TrimPrefix(m.Subject, cl.ansPrefix()), ".")
			if a.ID, _ = strconv.ParseUint(id, 10, 64); !ok || a.ID == 0 {
				return
			}
			a.Conv, a.Refused = conv, true
		} else if json.Unmarshal(m.Data, a) != nil || a.Conv == "" {
			return
		}
		post(a.Conv, func(s *shard) { s.forwardAnswered(a) })
	})
	if err != nil {
		_ = reqs.Unsubscribe()
		return nil, err
	}
	// A slow shard must not make NATS drop forwards: they are bounded by
	// the other nodes' queues (MaxPendingPerConversation each).
	for _, sub := range []*nats.Subscription{reqs, answers} {
		_ = sub.SetPendingLimits(-1, -1)
	}
	return []*nats.Subscription{reqs, answers}, nil
}

// forwardable reports whether p may be forwarded: a send of a client of
// this node (or of the API) that can be recognised when it comes back.
func forwardable(p *pendingSend) bool {
	return p.cmid != "" && p.remote == nil && !p.quiet
}

// startForwarding makes c's sends go to the node that keeps winning its
// appends, if that node is writing right now and c holds no send
// forwarded to this node (a writer does not forward).
func (s *shard) startForwarding(c *conversation) {
	w := &c.cw
	if w.writer != "" || w.peer == "" || time.Since(w.peerAt) > forwardHold {
		return
	}
	for i := range c.queue {
		if c.queue[i].remote != nil {
			return
		}
	}
	w.writer = w.peer
}

// forwardQueued forwards c's queued sends, from the head, up to the first
// one that cannot be forwarded. It reports whether the head is now a
// forward in flight (nothing to append here).
func (s *shard) forwardQueued(c *conversation) bool {
	cl := s.b.o.Cluster
	for i := 0; i < len(c.queue); {
		p := &c.queue[i]
		if p.fwd != 0 {
			i++
			continue
		}
		if p.cmid != "" {
			if seq, dup := c.dedupe[dedupeKey{p.u.id, p.cmid}]; dup {
				s.ackStored(c, p, seq)
				s.removeSend(c, i)
				continue
			}
		}
		if !forwardable(p) {
			break
		}
		id := cl.fwdSeq.Add(1)
		b, err := json.Marshal(&fwdReq{Node: cl.node, ID: id, Conv: c.id, Sender: p.u.id, Role: p.u.role, CMID: p.cmid, Text: p.text, TS: p.ts})
		if err == nil {
			err = cl.nc.PublishMsg(&nats.Msg{Subject: cl.fwdSubject(c.cw.writer), Reply: cl.ansPrefix() + c.id + "." + strconv.FormatUint(id, 10), Data: b})
		}
		if err != nil {
			s.b.log.Warn("broker: send not forwarded, appending here", "conversation", c.id, "writer", c.cw.writer, "err", err)
			c.cw.writer = ""
			break
		}
		p.fwd, p.fwdBy = id, time.Now().Add(forwardTimeout)
		s.b.m.forwarded.Inc()
		s.armForwardTimer(c)
		i++
	}
	return len(c.queue) == 0 || c.queue[0].fwd != 0
}

func (s *shard) armForwardTimer(c *conversation) {
	if c.cw.timer != nil {
		return
	}
	mbox := &s.mbox
	c.cw.timer = time.AfterFunc(forwardTick, func() {
		mbox.post(ctrl{kind: ctrlCall, call: func(s *shard) { s.forwardTick(c) }})
	})
}

// forwardTick fails the forwards of c that had no answer in time, reads
// from History the messages answered but not yet seen here, and appends
// what may now be appended.
func (s *shard) forwardTick(c *conversation) {
	c.cw.timer = nil
	if s.convs[c.id] != c {
		return
	}
	now := time.Now()
	late, more := false, false
	for i := 0; i < len(c.queue); {
		p := &c.queue[i]
		switch {
		case p.fwd == 0:
		case p.fwdAns != nil && p.late >= maxLate:
			// Stored, says the writer, but this node cannot read it (a
			// replica far behind). No Ack before the messages ahead of
			// it are delivered here (ackInOrder): the sender re-sends,
			// and the message reaches everybody, its sender included,
			// when this node learns it.
			s.failSend(c, p, protocol.CodeUnconfirmed, msgLate)
			s.b.m.lateForwards.Inc()
			s.removeSend(c, i)
			continue
		case p.fwdAns != nil && now.After(p.fwdBy):
			late = true
			p.late++
		case p.fwdAns == nil && now.After(p.fwdBy):
			// No answer: the writer may be gone, or slow. Append here
			// from now on, this send too.
			c.cw.writer = ""
			if s.takeBack(c, i) {
				continue
			}
		default:
			more = true
		}
		i++
	}
	if late && !c.inflight {
		if err := s.resync(c); err != nil {
			s.b.log.Warn("broker: resync after a forward failed", "conversation", c.id, "err", err)
		}
	}
	s.learnAnswered(c)
	s.pump(c)
	for i := range c.queue {
		if c.queue[i].fwd != 0 {
			more = true
		}
	}
	if more {
		s.armForwardTimer(c)
	}
}

// acceptForward takes a send another node forwarded: queued like a local
// one, answered when its append is done.
func (s *shard) acceptForward(q *fwdReq, reply string) {
	cl := s.b.o.Cluster
	ans := fwdAnswer{Conv: q.Conv, ID: q.ID}
	c := s.convs[q.Conv]
	if c != nil {
		ans.Busy = time.Since(c.cw.ownAt) < forwardHold
	}
	switch {
	case c == nil || c.state == protocol.StateUnspecified:
		ans.Refused = true // not held here: the sender appends itself
	case c.cw.writer != "" && (c.cw.writer != q.Node || cl.node > q.Node):
		// This node forwards too: of two nodes forwarding to each other
		// the one with the smaller name writes.
		ans.Refused = true
	case c.state == protocol.StateClosed:
		ans.Code, ans.Msg = protocol.CodeConversationClosed, "the conversation is closed"
	default:
		c.cw.writer = ""
		var u *user
		switch {
		case q.Sender == c.visitor.id && q.Role == protocol.RoleVisitor:
			u = c.visitor
		case c.agent != nil && q.Sender == c.agent.id && q.Role == protocol.RoleAgent:
			u = c.agent
		case q.Role == protocol.RoleBot || q.Role == protocol.RoleSystem:
			u = &user{id: q.Sender, role: q.Role, tenant: c.tenant} // the integrator API
		}
		if u == nil {
			ans.Code, ans.Msg = protocol.CodeNotParticipant, "not a participant of this conversation"
			break
		}
		if s.queueSend(c, pendingSend{u: u, cmid: q.CMID, text: q.Text, ts: q.TS, remote: &remoteSend{reply: reply, id: q.ID}}) {
			return
		}
		ans.Code, ans.Msg = protocol.CodeOverloaded, "too many messages in flight, retry later"
	}
	cl.answerForward(reply, &ans)
}

// answerRemote answers the node that forwarded p.
func (s *shard) answerRemote(c *conversation, p *pendingSend, ans fwdAnswer) {
	ans.Conv, ans.ID = c.id, p.remote.id
	ans.Busy = time.Since(c.cw.ownAt) < forwardHold
	s.b.o.Cluster.answerForward(p.remote.reply, &ans)
}

func (cl *Cluster) answerForward(reply string, a *fwdAnswer) {
	b, err := json.Marshal(a)
	if err != nil {
		return
	}
	_ = cl.nc.Publish(reply, b) // a lost answer: the forward times out
}

// forwardAnswered handles the writer's answer to one of this node's
// forwards.
func (s *shard) forwardAnswered(a *fwdAnswer) {
	c := s.convs[a.Conv]
	if c == nil {
		return
	}
	i := -1
	for j := range c.queue {
		if c.queue[j].fwd == a.ID {
			i = j
			break
		}
	}
	if !a.Busy && !a.Refused {
		c.cw.writer = "" // the writer's own clients went quiet: append here again
	}
	if i < 0 {
		s.pump(c)
		return // came back already (notice or resync), or timed out
	}
	p := &c.queue[i]
	switch {
	case a.Refused:
		c.cw.writer, c.cw.peerAt = "", time.Time{}
		p.fwd, p.fwdAns = 0, nil
	case a.Code == protocol.CodeUnconfirmed:
		// The writer does not know whether it stored it: find out here.
		c.cw.writer, c.cw.peerAt = "", time.Time{}
		s.takeBack(c, i)
	case a.Code != 0:
		code, msg := unconfirmed(p, a.Code, a.Msg)
		s.failSend(c, p, code, msg)
		s.removeSend(c, i)
	case a.Seq <= c.lastSeq:
		// Learned already without being recognised (its notice was taken
		// for a re-send of the same client message id): only the Ack is
		// missing.
		s.ackStored(c, p, a.Seq)
		s.removeSend(c, i)
	default:
		// Stored (or stored before: Dup); wait for the messages before
		// it to arrive (their notices are usually queued right behind
		// this answer): see ackInOrder.
		p.fwdAns, p.fwdBy = a, time.Now().Add(forwardTick)
		s.learnAnswered(c)
	}
	s.pump(c)
}

// ackInOrder: a connection never gets the Ack of seq N before the
// Deliver of every seq below N that this node holds for it. Clients keep
// one cursor per conversation, the highest seq of a Deliver or an Ack
// (docs/protocol.md, "Resume"), and drop a Deliver at or below it as a
// replay: an Ack ahead of a Deliver would lose that Deliver for good. So
// an answered forward whose seq is ahead of this node waits until the
// node has learned everything before it (learnAnswered), or fails with
// CodeUnconfirmed after maxLate ticks.

// takeBack makes the i-th queued send, forwarded to a writer that did not
// say whether it stored it, an append of this node again: unchanged, so
// that the stream's deduplication by message id (or the resync after a
// conflict, which learn recognises it in) tells whether the writer stored
// it first, and the writer's later attempt, if any, is a duplicate. After
// maxUnknown unknown outcomes the sender gets CodeUnconfirmed instead
// (removed: it reports true).
func (s *shard) takeBack(c *conversation, i int) bool {
	p := &c.queue[i]
	p.fwd, p.fwdAns = 0, nil
	p.fwdMaybe = true
	if p.unknowns++; p.unknowns >= maxUnknown {
		s.failSend(c, p, protocol.CodeUnconfirmed, msgUnconfirmed)
		s.removeSend(c, i)
		return true
	}
	return false
}

// learnAnswered takes in the answered forwards that are next in seq, and
// acks those whose seq this node learned meanwhile without them.
func (s *shard) learnAnswered(c *conversation) {
	for again := true; again; {
		again = false
		for i := range c.queue {
			p := &c.queue[i]
			switch {
			case p.fwd == 0 || p.fwdAns == nil:
				continue
			case p.fwdAns.Seq == c.lastSeq+1 && p.fwdAns.Dup:
				// Stored before, by an earlier attempt of the same
				// client message id: the stored copy (a notice, a
				// resync) is the message, not this attempt's text.
				continue
			case p.fwdAns.Seq == c.lastSeq+1:
				s.learn(c, message{seq: p.fwdAns.Seq, senderID: p.u.id, senderRole: p.u.role, cmid: p.cmid, text: p.text, ts: p.fwdAns.TS}, p.fwdAns.Stream)
			case p.fwdAns.Seq <= c.lastSeq:
				s.ackStored(c, p, p.fwdAns.Seq)
				s.removeSend(c, i)
			default:
				continue
			}
			again = true
			break
		}
	}
}

// pendingAs returns the index in c's queue of the send that m is, or -1:
// the forwarded send the writer answered with m's seq, else the first
// send with m's sender and client message id that is not in the append
// in flight: a forward (a client may have re-sent it while the first was
// in flight: the writer stores one, answers the other as a duplicate), a
// send whose earlier append timed out but was stored, a forward taken
// back that the writer stored after all, or a re-send of a message
// another node stored. Each is that stored message: it gets its Ack.
func pendingAs(c *conversation, m *message) int {
	for i := range c.queue {
		if p := &c.queue[i]; p.fwd != 0 && p.fwdAns != nil && p.fwdAns.Seq == m.seq {
			return i
		}
	}
	if m.cmid == "" {
		return -1
	}
	from := 0
	if c.inflight {
		from = max(c.queue[0].batch, 1) // their append's answer settles them
	}
	for i := from; i < len(c.queue); i++ {
		if p := &c.queue[i]; p.fwdAns == nil && p.cmid == m.cmid && p.u.id == m.senderID {
			return i
		}
	}
	return -1
}

// learn takes m, the next message of c stored by another node (or by the
// writer this node forwarded it to, or by an append of this node whose
// answer was lost), into the ring and the seqs, and tells the local
// connections: the Ack to its sender if it is one of this node's queued
// sends (pendingAs), the Deliver to everybody else.
func (s *shard) learn(c *conversation, m message, streamSeq uint64) {
	c.hist.push(m, c.dedupe)
	c.lastSeq = m.seq
	if streamSeq != 0 {
		c.streamSeq = streamSeq
	}
	mm, ok := c.hist.get(m.seq)
	if !ok {
		mm = &m
	}
	if i := pendingAs(c, mm); i >= 0 {
		// Not a forward: this node's own append stored it (or a writer
		// it was taken back from), and no stored-message event was
		// emitted for it here (its ID names the seq: a second one is the
		// same event).
		own := c.queue[i].fwd == 0
		if own && s.b.strictHooks() {
			if evs := s.msgEvents(c, mm, true); len(evs) > 0 {
				p := c.queue[i]
				s.removeSend(c, i)
				s.hold(c, heldMsg{m: *mm, p: p, deliver: true, own: true}, evs)
				return
			}
		}
		s.complete(c, &c.queue[i], mm, 0)
		s.removeSend(c, i)
		if own {
			s.stored(c, mm)
		}
		return
	}
	e := &s.out
	e.Kind = protocol.KindDeliver
	e.ID = 0
	e.Deliver = deliverOf(c, mm)
	s.b.fanout(c.attached, nil, e)
	e.Deliver = protocol.Deliver{}
}
