package broker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/protocol"
)

// The integrator API (package api) reaches the broker through the methods
// in this file. They are called from HTTP goroutines and keep the
// concurrency contract: anything that reads or changes a conversation is
// posted to its shard's mailbox as a ctrlCall and the caller waits for the
// reply (bounded by its context, and by Close). The mailbox holds at most
// one call per HTTP request in flight (netpoll bounds those). The
// dispatcher, a struct behind its own mutex, is read directly.
//
// Every method returns a *protocol.Error (CodeUnknownConversation,
// CodeForbidden for another tenant's conversation, CodeConversationClosed,
// CodeNoAgent, CodeMissingField, CodeTooLarge, CodeOverloaded,
// CodeUnavailable, CodeShuttingDown) or nil.

// ConversationInfo is a conversation as the integrator API shows it.
type ConversationInfo struct {
	ID            string
	Tenant        string
	State         protocol.State
	VisitorID     string
	AgentID       string // empty while queued
	Skill         string
	Priority      uint32
	Reason        string // why it closed (or was last transferred back)
	LastSeq       uint64 // last stored (acked) message
	QueuePosition uint32 // last position sent to the visitor, 0 if not queued
	QueueETA      uint32 // last wait estimate sent with it, seconds; 0: unknown
	CreatedMilli  int64  // 0 when unknown (created before durability)
	ClosedMilli   int64
	// LeftMessages counts the visitor's messages stored while it waited
	// with no agent of the tenant online (leave-a-message; each also a
	// message_left hook event); LastLeftMilli is the time of the last.
	LeftMessages  uint32
	LastLeftMilli int64
}

// ConversationFilter selects the conversations ListConversations returns;
// the zero value selects all.
type ConversationFilter struct {
	State protocol.State // 0: any
	// LeftMessage selects conversations with LeftMessages > 0. With
	// State queued: the messages left that no agent has taken yet.
	LeftMessage bool
}

func (f *ConversationFilter) match(c *conversation) bool {
	return (f.State == 0 || c.state == f.State) && (!f.LeftMessage || c.left > 0)
}

// StoredMessage is one message of a conversation's history.
type StoredMessage struct {
	Seq            uint64
	SenderID       string
	SenderRole     protocol.Role
	ClientMsgID    string
	Text           string
	TimestampMilli int64
}

// AgentInfo is an agent's presence as the dispatcher knows it.
type AgentInfo struct {
	ID       string
	Status   protocol.Status
	Capacity int
	Load     int
	Skills   []string
}

// PostResult is the outcome of PostMessage.
type PostResult struct {
	Seq            uint64 // 0 only for a duplicate older than the in-memory history
	TimestampMilli int64
	Duplicate      bool // the client message id was stored before: nothing new was stored
}

// MaxListLimit bounds one page of ListConversations and History.
const MaxListLimit = 500

var (
	errShutdown = protocol.NewError(protocol.CodeShuttingDown, "server is shutting down")
	errTimeout  = protocol.NewError(protocol.CodeUnavailable, "the broker did not answer in time, retry later")

	errBeingAssigned = protocol.NewError(protocol.CodeBadTransition, "the conversation is being assigned right now, retry")
)

// onShard runs fn on shard s and waits for it (or ctx, or Close).
func (b *Broker) onShard(ctx context.Context, s *shard, fn func(*shard)) error {
	if b.closing.Load() {
		return errShutdown
	}
	done := make(chan struct{})
	s.mbox.post(ctrl{kind: ctrlCall, call: func(s *shard) {
		fn(s)
		close(done)
	}})
	select {
	case <-done:
		return nil
	case <-b.done:
		return errShutdown
	case <-ctx.Done():
		return errTimeout
	}
}

// callConv runs fn on the shard of conversation id with the conversation
// (loaded from the durable stores if needed), after checking that it
// exists and belongs to tenant. fn's error is returned.
func (b *Broker) callConv(ctx context.Context, tenant, id string, fn func(*shard, *conversation) *protocol.Error) error {
	if id == "" || len(id) > histstore.MaxConversationBytes {
		return protocol.NewError(protocol.CodeUnknownConversation, "no such conversation")
	}
	var perr *protocol.Error
	err := b.onShard(ctx, b.shardFor(id), func(s *shard) {
		c := s.convs[id]
		if c == nil {
			c = s.load(id)
		}
		switch {
		case c == nil:
			perr = protocol.NewError(protocol.CodeUnknownConversation, "no such conversation")
		case c.tenant != tenant:
			perr = protocol.NewError(protocol.CodeForbidden, "the conversation belongs to another tenant")
		default:
			perr = fn(s, c)
		}
	})
	if err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	return nil
}

func (c *conversation) info() ConversationInfo {
	ci := ConversationInfo{
		ID:           c.id,
		Tenant:       c.tenant,
		State:        c.state,
		AgentID:      c.agentID(),
		Skill:        c.skill,
		Priority:     c.prio,
		Reason:       c.reason,
		LastSeq:      c.lastSeq,
		CreatedMilli: c.createdMilli,
		ClosedMilli:  c.closedMilli,

		LeftMessages:  c.left,
		LastLeftMilli: c.leftMilli,
	}
	if c.visitor != nil {
		ci.VisitorID = c.visitor.id
	}
	if c.state == protocol.StateQueued {
		ci.QueuePosition, ci.QueueETA = c.position, c.eta
	}
	return ci
}

// Conversation returns a conversation of tenant.
func (b *Broker) Conversation(ctx context.Context, tenant, id string) (ConversationInfo, error) {
	var ci ConversationInfo
	err := b.callConv(ctx, tenant, id, func(_ *shard, c *conversation) *protocol.Error {
		ci = c.info()
		return nil
	})
	return ci, err
}

// ListConversations returns the conversations of tenant this node holds in
// memory (live ones, and closed ones until they are forgotten, ResumeTTL
// after closing) that f selects, ordered by id, with id > after, at most
// limit (1 to MaxListLimit). more reports whether further conversations
// follow the last one returned.
func (b *Broker) ListConversations(ctx context.Context, tenant string, f ConversationFilter, after string, limit int) (list []ConversationInfo, more bool, err error) {
	limit = min(max(limit, 1), MaxListLimit)
	parts := make([][]ConversationInfo, len(b.shards))
	for i, s := range b.shards {
		err := b.onShard(ctx, s, func(s *shard) {
			var out []ConversationInfo
			for id, c := range s.convs {
				if c.tenant != tenant || id <= after || !f.match(c) {
					continue
				}
				out = append(out, c.info())
			}
			// Keep the limit+1 smallest ids: enough to fill the page and
			// tell whether more follow.
			slices.SortFunc(out, func(x, y ConversationInfo) int { return cmp.Compare(x.ID, y.ID) })
			if len(out) > limit+1 {
				out = out[:limit+1]
			}
			parts[i] = out
		})
		if err != nil {
			return nil, false, err
		}
	}
	for _, p := range parts {
		list = append(list, p...)
	}
	slices.SortFunc(list, func(x, y ConversationInfo) int { return cmp.Compare(x.ID, y.ID) })
	if len(list) > limit {
		return list[:limit], true, nil
	}
	return list, false, nil
}

// History returns the stored messages of a conversation of tenant with
// seq > after, oldest first, at most limit (1 to MaxListLimit), from the
// durable history (the in-memory ring without one), and the
// conversation's last acked seq. Messages still waiting for their durable
// append are not included.
func (b *Broker) History(ctx context.Context, tenant, id string, after uint64, limit int) (msgs []StoredMessage, lastSeq uint64, err error) {
	limit = min(max(limit, 1), MaxListLimit)
	durable := b.o.History != nil
	err = b.callConv(ctx, tenant, id, func(_ *shard, c *conversation) *protocol.Error {
		lastSeq = c.lastSeq
		if durable {
			return nil // read below, off the shard
		}
		c.hist.after(after, func(m *message) {
			if len(msgs) < limit {
				msgs = append(msgs, storedOf(m))
			}
		})
		return nil
	})
	if err != nil || !durable || after >= lastSeq {
		return msgs, lastSeq, err
	}
	// The durable history is safe for concurrent use and touches no
	// conversation state: read it on this goroutine, not on the shard.
	_, rerr := b.o.History.Replay(ctx, tenant, id, after, limit, func(hm *histstore.Message) bool {
		if hm.Seq > lastSeq {
			return false
		}
		m := messageOf(hm)
		msgs = append(msgs, storedOf(&m))
		return true
	})
	if rerr != nil {
		b.log.Warn("broker: history read failed", "conversation", id, "err", rerr)
		return nil, lastSeq, protocol.NewError(protocol.CodeUnavailable, "history unavailable, retry later")
	}
	return msgs, lastSeq, nil
}

func storedOf(m *message) StoredMessage {
	return StoredMessage{
		Seq:            m.seq,
		SenderID:       m.senderID,
		SenderRole:     m.senderRole,
		ClientMsgID:    m.cmid,
		Text:           m.text,
		TimestampMilli: m.ts,
	}
}

// Sender ids of messages posted through the integrator API, by role.
const (
	SenderSystem = "system"
	SenderBot    = "bot"
)

// PostMessage stores a message from the system or a bot (role RoleSystem
// or RoleBot; its sender id is SenderSystem or SenderBot) in a
// conversation of tenant, delivers it to every connection attached to the
// conversation and returns its seq once it is stored (durable, with a
// History). A repeated clientMsgID of the same role returns the original
// seq with Duplicate set, while the original is in the in-memory history
// (or, durably, within the store's duplicate window; then Seq may be 0).
func (b *Broker) PostMessage(ctx context.Context, tenant, id string, role protocol.Role, clientMsgID, text string) (PostResult, error) {
	var senderID string
	switch role {
	case protocol.RoleSystem:
		senderID = SenderSystem
	case protocol.RoleBot:
		senderID = SenderBot
	default:
		return PostResult{}, protocol.NewError(protocol.CodeMalformed, "sender must be system or bot")
	}
	switch {
	case text == "":
		return PostResult{}, protocol.NewError(protocol.CodeMissingField, "text is required")
	case len(text) > int(b.o.MaxMessageBytes) || len(text) > histstore.MaxTextBytes:
		return PostResult{}, protocol.NewError(protocol.CodeTooLarge, "text is too long")
	case len(clientMsgID) > histstore.MaxIDBytes:
		return PostResult{}, protocol.NewError(protocol.CodeTooLarge, "client_msg_id is too long")
	case !utf8.ValidString(text) || !utf8.ValidString(clientMsgID):
		return PostResult{}, protocol.NewError(protocol.CodeInvalidUTF8, "text is not valid UTF-8")
	}
	type outcome struct {
		res  PostResult
		perr *protocol.Error
	}
	// Buffered: the reply may come from a later mailbox batch, after the
	// caller gave up waiting.
	out := make(chan outcome, 1)
	cmid, txt := cloneTwo(clientMsgID, text)
	err := b.callConv(ctx, tenant, id, func(s *shard, c *conversation) *protocol.Error {
		if c.state == protocol.StateClosed {
			return protocol.NewError(protocol.CodeConversationClosed, "the conversation is closed")
		}
		u := &user{id: senderID, role: role, tenant: c.tenant}
		if cmid != "" {
			if seq, dup := c.dedupe[dedupeKey{u.id, cmid}]; dup {
				m, _ := c.hist.get(seq)
				out <- outcome{res: PostResult{Seq: seq, TimestampMilli: m.ts, Duplicate: true}}
				return nil
			}
		}
		ts := s.b.now().UnixMilli()
		if s.b.o.History != nil {
			ok := s.queueSend(c, pendingSend{u: u, cmid: cmid, text: txt, ts: ts,
				reply: func(seq uint64, ts int64, dup bool, perr *protocol.Error) {
					out <- outcome{res: PostResult{Seq: seq, TimestampMilli: ts, Duplicate: dup}, perr: perr}
				}})
			if !ok {
				return protocol.NewError(protocol.CodeOverloaded, "too many messages in flight, retry later")
			}
			return nil
		}
		c.lastSeq++
		m := message{seq: c.lastSeq, senderID: u.id, senderRole: role, ts: ts, cmid: cmid, text: txt}
		c.hist.push(m, c.dedupe)
		e := &s.out
		e.Kind = protocol.KindDeliver
		e.ID = 0
		e.Deliver = deliverOf(c, &m)
		s.b.fanout(c.attached, nil, e)
		e.Deliver = protocol.Deliver{}
		s.b.m.relayed.Inc()
		out <- outcome{res: PostResult{Seq: m.seq, TimestampMilli: ts}}
		return nil
	})
	if err != nil {
		return PostResult{}, err
	}
	select {
	case o := <-out:
		if o.perr != nil {
			return o.res, o.perr
		}
		return o.res, nil
	case <-b.done:
		return PostResult{}, errShutdown
	case <-ctx.Done():
		// The message may still be stored: a retry with the same
		// client_msg_id gets its seq.
		return PostResult{}, errTimeout
	}
}

// Transfer moves a conversation of tenant to the agent toAgent (online,
// with a free slot, same tenant) or back into the queue for toSkill
// (exactly one of them set), from whatever state it is in but closed. The
// participants get a TRANSFERRED (or ASSIGNED, for a queued conversation
// given to an agent) Conversation event with the note as its reason.
func (b *Broker) Transfer(ctx context.Context, tenant, id, toAgent, toSkill, note string) (ConversationInfo, error) {
	switch {
	case (toAgent == "") == (toSkill == ""):
		return ConversationInfo{}, protocol.NewError(protocol.CodeMissingField, "exactly one of to_agent_id and to_skill is required")
	case len(toAgent) > histstore.MaxIDBytes || len(toSkill) > histstore.MaxIDBytes || len(note) > histstore.MaxIDBytes:
		return ConversationInfo{}, protocol.NewError(protocol.CodeTooLarge, "to_agent_id, to_skill or note is too long")
	}
	toAgent, toSkill, note = strings.Clone(toAgent), strings.Clone(toSkill), strings.Clone(note)
	var ci ConversationInfo
	err := b.callConv(ctx, tenant, id, func(s *shard, c *conversation) *protocol.Error {
		if perr := s.apiTransfer(c, toAgent, toSkill, note); perr != nil {
			return perr
		}
		ci = c.info()
		return nil
	})
	return ci, err
}

// apiTransfer is Transfer on the conversation's shard. Every check runs
// before the first change.
func (s *shard) apiTransfer(c *conversation, toAgent, toSkill, note string) *protocol.Error {
	b := s.b
	if c.state == protocol.StateClosed {
		return protocol.NewError(protocol.CodeConversationClosed, "the conversation is closed")
	}
	from := c.agent
	clustered := b.o.Cluster != nil
	// The hook hears of it as of a participant's transfer (an assignment
	// when nobody had it), from the agent who had it.
	fromID := ""
	if from != nil {
		fromID = from.id
	}
	if toAgent != "" {
		if from != nil && from.id == toAgent {
			return protocol.NewError(protocol.CodeBadTransition, "the conversation is already with this agent")
		}
		var to *user
		var err error
		st, ev := protocol.StateTransferred, backends.EventConversationTransferred
		if from == nil {
			st, ev = protocol.StateAssigned, backends.EventConversationAssigned
		}
		if clustered {
			var perr *protocol.Error
			if to, perr = s.clusterTake(c, toAgent, st, note, ev, fromID); perr != nil {
				return perr
			}
			if from != nil {
				b.disp.release(from.id, c.id)
			}
		} else if from != nil {
			to, err = b.disp.transfer(from.id, toAgent, c.id)
		} else {
			to, err = b.disp.take(c.tenant, c.id, toAgent)
		}
		if err != nil {
			switch {
			case errors.Is(err, errNoAgent):
				return protocol.NewError(protocol.CodeNoAgent, "the agent is not available")
			case from == nil && errors.Is(err, errNotAssignee):
				// The dispatcher assigned it a moment ago; its decision
				// is on its way to this shard.
				return errBeingAssigned
			}
			b.log.Error("broker: api transfer refused", "conversation", c.id, "err", err)
			return protocol.NewError(protocol.CodeInternal, "assignment out of sync")
		}
		c.agent = to
		c.position = 0
		s.setState(c, st)
		if !clustered {
			s.noteConv(c, nil, ev, fromID)
			s.persist(c)
		}
		s.emitConv(c)
		fresh := s.adopt(c, to)
		s.announce(c, st, note, nil, 0)
		s.replay(c, fresh, 0) // before drop: fresh is a view of c.attached
		if from != nil {
			s.drop(c, from)
		}
		return nil
	}
	if clustered {
		if !s.clusterQueue(c, toSkill, protocol.StateTransferred, note, backends.EventConversationTransferred, fromID) {
			return errBeingAssigned
		}
	} else if from == nil && !b.disp.cancel(c.tenant, c.id) {
		// Waiting, but the dispatcher assigned it a moment ago.
		return errBeingAssigned
	}
	c.skill = toSkill
	c.agent = nil
	c.position = 0
	s.setState(c, protocol.StateQueued)
	if !clustered {
		s.noteConv(c, nil, backends.EventConversationTransferred, fromID)
		s.persist(c)
	}
	s.emitConv(c)
	s.announce(c, protocol.StateTransferred, note, nil, 0)
	if from != nil {
		s.drop(c, from)
	}
	b.disp.requeue(c.tenant, c.id, s.idx, s.routeInfo(c), fromID)
	return nil
}

// CloseConversation closes a conversation of tenant with reason; every
// participant gets a CLOSED Conversation event.
func (b *Broker) CloseConversation(ctx context.Context, tenant, id, reason string) (ConversationInfo, error) {
	if len(reason) > histstore.MaxIDBytes {
		return ConversationInfo{}, protocol.NewError(protocol.CodeTooLarge, "reason is too long")
	}
	var ci ConversationInfo
	err := b.callConv(ctx, tenant, id, func(s *shard, c *conversation) *protocol.Error {
		if c.state == protocol.StateClosed {
			return protocol.NewError(protocol.CodeConversationClosed, "the conversation is closed")
		}
		if !s.closeConversation(c, reason, nil, 0) {
			return protocol.NewError(protocol.CodeBadTransition, "the conversation changed meanwhile, retry")
		}
		ci = c.info()
		return nil
	})
	return ci, err
}

// Agents returns the agents of tenant this node's dispatcher knows (every
// agent that sent a presence since the start), ordered by id.
func (b *Broker) Agents(tenant string) []AgentInfo {
	return b.disp.agentsOf(tenant)
}

// agentsOf lists a tenant's agents.
func (d *dispatcher) agentsOf(tenant string) []AgentInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[tenant]
	if p == nil {
		return nil
	}
	out := make([]AgentInfo, 0, len(p.agents))
	for _, a := range p.agents {
		out = append(out, AgentInfo{ID: a.id, Status: a.status, Capacity: a.capacity, Load: a.load, Skills: slices.Clone(a.skills)})
	}
	slices.SortFunc(out, func(x, y AgentInfo) int { return cmp.Compare(x.ID, y.ID) })
	return out
}

// take assigns a waiting conversation of tenant to the agent to (online,
// with a free slot, same tenant), taking it out of the queue.
func (d *dispatcher) take(tenant, conv, to string) (*user, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dst := d.agents[to]
	if dst == nil || dst.tenant != tenant || !dst.hasRoom() {
		return nil, errNoAgent
	}
	p := d.pools[tenant]
	if p == nil || !d.unqueue(p, conv) {
		return nil, errNotAssignee
	}
	giveSlot(&d.clock, dst, conv)
	d.handled(p, conv)
	d.settle(p)
	return dst.u, nil
}
