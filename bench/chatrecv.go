package bench

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/unigate/unigate/protocol"
)

// ended handles the end of a reader: expected while closing, a drop
// otherwise.
func (w *chatWorker) ended(err error) {
	if w.closing.Load() {
		return
	}
	w.dropped.Add(1)
	w.drops.addErr(err)
}

func (w *chatWorker) agentReader(a *agent) {
	defer w.readers.Done()
	defer close(a.replies)
	for {
		e, err := a.conn.read()
		var pe *protocol.Error
		if errors.As(err, &pe) {
			w.events.add("agent_undecodable", err)
			continue
		}
		if err != nil {
			w.ended(err)
			select {
			case a.presence <- err:
			default:
			}
			return
		}
		switch e.Kind {
		case protocol.KindDeliver:
			w.agentDeliver(a, e)
		case protocol.KindAck:
			w.ack(e, nil, a)
		case protocol.KindConversation:
			w.agentConversation(a, e)
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
			} else {
				w.events.add("agent_presence_event", nil)
			}
		case protocol.KindError:
			w.serverError(e, nil, a, func(err error) {
				if e.ID == presenceID {
					select {
					case a.presence <- err:
					default:
					}
				}
			})
		default:
			w.events.add("agent_"+e.Kind.String(), nil)
		}
	}
}

func (w *chatWorker) agentConversation(a *agent, e *protocol.Envelope) {
	cv := &e.Conversation
	if a.stale[cv.ConversationID] {
		if cv.State != protocol.StateClosed && e.ID == 0 && !w.setupDone.Load() {
			env := protocol.Envelope{Kind: protocol.KindClose, ID: staleID}
			env.Close = protocol.Close{ConversationID: strings.Clone(cv.ConversationID), Reason: "bench: left over from an earlier run"}
			if err := a.conn.send(&env); err == nil {
				w.staleClosed.Add(1)
			}
		}
		return
	}
	switch {
	case cv.State == protocol.StateAssigned && !w.setupDone.Load():
		id := strings.Clone(cv.ConversationID)
		w.link(id, nil, a)
	case cv.State == protocol.StateClosed && w.tearing.Load():
	default:
		w.events.add("agent_conversation_"+cv.State.String(), fmt.Errorf("conversation %s state %s reason %q", cv.ConversationID, cv.State, cv.Reason))
	}
}

// agentDeliver handles a visitor message at its agent.
func (w *chatWorker) agentDeliver(a *agent, e *protocol.Envelope) {
	now := w.now()
	d := &e.Deliver
	c := w.conversationOf(a, d.ConversationID)
	if c == nil {
		if !w.setupDone.Load() || a.stale[d.ConversationID] {
			w.staleReplayed.Add(1)
			return
		}
		w.events.add("agent_deliver_unknown_conversation", fmt.Errorf("conversation %s", d.ConversationID))
		return
	}
	f := &c.v2a
	if d.SenderRole != protocol.RoleVisitor || d.SenderID != c.visitorID {
		if d.SenderRole == protocol.RoleAgent && d.SenderID == a.userID && w.echo(&c.a2v, d, "a") {
			return
		}
		f.mu.Lock()
		f.misrouted++
		f.mu.Unlock()
		return
	}
	p, ok := parsePayload(d.Text, w.job.Size)
	k := p.k
	if !ok || d.ClientMsgID != "v"+strconv.Itoa(k) {
		w.corruptV2A.Add(1)
		return
	}
	if !w.deliver(f, k, d.Seq) {
		return
	}
	w.delivered.Add(1)
	w.ivl.record(now - p.due)
	measured, inWindow := w.measured(p.due, now)
	if measured {
		w.v2aHist.record(now - p.due)
		w.v2aSvc.record(now - p.sent)
		w.v2aSamples.add(p.due-w.tl.Load().t0, now-p.due)
		w.svcSamples.add(p.due-w.tl.Load().t0, now-p.sent)
	}
	if inWindow {
		w.inWindowV2A.Add(1)
	}
	if replyTo(k, w.job.Reply) {
		w.repliesQueued.Add(1)
		a.replies <- reply{c: c, k: k, decided: now}
	}
}

// echo reports whether d, delivered to the sender of flow f itself, is one
// of its messages refused with 5003 unconfirmed (the outcome unknown): a
// Deliver of its own client message id tells the sender it was stored
// after all (docs/protocol.md). It records it as such. Any other message
// delivered back to its sender is misrouted.
func (w *chatWorker) echo(f *flow, d *protocol.Deliver, prefix string) bool {
	p, ok := parsePayload(d.Text, w.job.Size)
	if !ok || d.ClientMsgID != prefix+strconv.Itoa(p.k) {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.unconfirmed.has(p.k) {
		return false
	}
	f.echoed.set(p.k)
	return true
}

// deliver records message k of flow f as delivered with server sequence
// seq and reports whether it was the first delivery.
func (w *chatWorker) deliver(f *flow, k int, seq uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq <= f.lastDeliverSeq {
		f.seqRegr++
	}
	f.lastDeliverSeq = max(f.lastDeliverSeq, seq)
	if f.delivered.has(k) {
		f.dups++
		return false
	}
	if !f.delivered.set(k) {
		f.misrouted++ // a number this conversation never sent
		return false
	}
	if k < f.maxDelivered {
		f.ooo++
	}
	f.maxDelivered = max(f.maxDelivered, k)
	return true
}

// agentWriter sends an agent's replies; it owns the agent's data writes
// once setup is over.
func (w *chatWorker) agentWriter(a *agent) {
	defer w.writers.Done()
	var buf []byte
	env := protocol.Envelope{Kind: protocol.KindSend}
	broken := false
	for r := range a.replies {
		w.repliesQueued.Add(-1)
		if broken {
			continue
		}
		buf = appendPayload(buf[:0], payload{k: r.k, due: r.decided, sent: w.now()}, w.job.Size)
		env.ID = msgID(r.c.idx, r.k)
		env.Send = protocol.Send{ConversationID: r.c.id, ClientMsgID: "a" + strconv.Itoa(r.k), Text: string(buf)}
		r.c.a2v.mu.Lock()
		r.c.a2v.sent.set(r.k)
		r.c.a2v.mu.Unlock()
		w.repliesSent.Add(1)
		if err := a.conn.send(&env); err != nil {
			w.writeErrs.addErr(err)
			broken = true
		}
	}
}

func (w *chatWorker) visitorReader(v *visitor) {
	defer w.readers.Done()
	c := v.conv
	for {
		e, err := v.conn.read()
		var pe *protocol.Error
		if errors.As(err, &pe) {
			w.events.add("visitor_undecodable", err)
			continue
		}
		if err != nil {
			w.ended(err)
			return
		}
		switch e.Kind {
		case protocol.KindAck:
			w.ack(e, v, nil)
		case protocol.KindDeliver:
			w.visitorDeliver(c, e)
		case protocol.KindConversation:
			w.visitorConversation(c, e)
		case protocol.KindQueue:
			// Positions while waiting: expected during setup only.
			if w.setupDone.Load() {
				w.events.add("visitor_queue_after_setup", nil)
			}
		case protocol.KindError:
			w.serverError(e, v, nil, nil)
		default:
			w.events.add("visitor_"+e.Kind.String(), nil)
		}
	}
}

func (w *chatWorker) visitorConversation(c *chatConv, e *protocol.Envelope) {
	cv := &e.Conversation
	if !w.setupDone.Load() {
		w.mu.Lock()
		known := c.id != ""
		if !known {
			c.id = strings.Clone(cv.ConversationID)
		}
		same := c.id == cv.ConversationID
		assigned := cv.State == protocol.StateAssigned && same && c.agentID == ""
		if assigned {
			c.agentID = strings.Clone(cv.AgentID)
		}
		w.mu.Unlock()
		if !same {
			w.events.add("visitor_conversation_other", fmt.Errorf("conversation %s, expected %s", cv.ConversationID, c.id))
			return
		}
		if !known {
			w.link(c.id, c, nil)
		}
		if assigned {
			w.assignedV.Add(1)
		}
		return
	}
	if cv.State == protocol.StateClosed && e.ID == closeID && cv.ConversationID == c.id {
		c.closedMu.Do(func() {
			w.closedConvs.Add(1)
			close(c.closed)
		})
		return
	}
	w.events.add("visitor_conversation_"+cv.State.String(), fmt.Errorf("conversation %s state %s reason %q", cv.ConversationID, cv.State, cv.Reason))
}

// visitorDeliver handles an agent reply at the visitor.
func (w *chatWorker) visitorDeliver(c *chatConv, e *protocol.Envelope) {
	now := w.now()
	d := &e.Deliver
	f := &c.a2v
	if d.ConversationID != c.id || d.SenderRole != protocol.RoleAgent || d.SenderID != c.agentID {
		if !w.setupDone.Load() {
			w.events.add("visitor_deliver_during_setup", nil)
			return
		}
		if d.ConversationID == c.id && d.SenderRole == protocol.RoleVisitor && d.SenderID == c.visitorID && w.echo(&c.v2a, d, "v") {
			return
		}
		f.mu.Lock()
		f.misrouted++
		f.mu.Unlock()
		return
	}
	p, ok := parsePayload(d.Text, w.job.Size)
	k := p.k
	if !ok || d.ClientMsgID != "a"+strconv.Itoa(k) {
		w.corruptA2V.Add(1)
		return
	}
	if !w.deliver(f, k, d.Seq) {
		return
	}
	w.repliesDeliv.Add(1)
	measured, inWindow := w.measured(p.due, now)
	if measured {
		w.a2vHist.record(now - p.due)
		w.a2vSvc.record(now - p.sent)
		w.a2vSamples.add(p.due-w.tl.Load().t0, now-p.due)
	}
	if inWindow {
		w.inWindowA2V.Add(1)
	}
}

// owner returns the conversation a message id names, if the connection
// that received the answer (visitor v or agent a) sent that message.
func (w *chatWorker) owner(id uint64, v *visitor, a *agent) (*chatConv, int, bool) {
	j, k, ok := splitMsgID(id)
	if !ok || j >= len(w.convs) {
		return nil, 0, false
	}
	c := w.convs[j]
	if (v != nil && c.v != v) || (a != nil && c.a != a) {
		return nil, 0, false
	}
	return c, k, true
}

// ack handles an Ack at visitor v or agent a (one of them is nil).
func (w *chatWorker) ack(e *protocol.Envelope, v *visitor, a *agent) {
	now := w.now()
	c, k, ok := w.owner(e.ID, v, a)
	if !ok {
		w.events.add("ack_unknown_id", fmt.Errorf("ack id %d", e.ID))
		return
	}
	fromVisitor := v != nil
	f := &c.a2v
	if fromVisitor {
		f = &c.v2a
	}
	f.mu.Lock()
	if e.Ack.Seq <= f.lastAckSeq {
		f.seqRegr++
	}
	f.lastAckSeq = max(f.lastAckSeq, e.Ack.Seq)
	if f.acked.has(k) {
		f.dupAcks++
		f.mu.Unlock()
		return
	}
	f.acked.set(k)
	f.mu.Unlock()
	if fromVisitor {
		w.acked.Add(1)
		if tl := w.tl.Load(); tl != nil {
			if due := tl.t0 + w.sched(c, k); due >= tl.wStart {
				w.ackHist.record(now - due)
			}
		}
	}
}

// serverError counts an Error envelope received by visitor v or agent a
// and marks the request it answers as refused.
func (w *chatWorker) serverError(e *protocol.Envelope, v *visitor, a *agent, setup func(error)) {
	err := &serverError{code: e.Error.Code, msg: strings.Clone(e.Error.Message)}
	if e.ID&setupID != 0 {
		switch e.ID {
		case staleID:
			// The stale conversation was closed meanwhile.
		case closeID:
			w.errs.addErr(err)
		default:
			w.setupErrs.addErr(err)
		}
		if setup != nil {
			setup(err)
		}
		return
	}
	w.errs.addErr(err)
	c, k, ok := w.owner(e.ID, v, a)
	if !ok {
		return
	}
	f := &c.a2v
	if v != nil {
		f = &c.v2a
		w.refusedV2A.Add(1)
	} else {
		w.refusedA2V.Add(1)
	}
	f.mu.Lock()
	if e.Error.Code == protocol.CodeUnconfirmed {
		// Not a refusal: the outcome is unknown (stored or not).
		f.unconfirmed.set(k)
	} else {
		f.refused.set(k)
	}
	f.mu.Unlock()
}
