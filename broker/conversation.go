package broker

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// Reasons the server puts in Conversation events it causes itself.
const (
	reasonVisitorLeft = "visitor_left"
	reasonAgentLeft   = "agent_left"
)

// dedupeKey names a message by its sender's client message id.
type dedupeKey struct {
	sender string
	cmid   string
}

// conversation is owned by its shard's goroutine: no field is touched by
// any other goroutine.
type conversation struct {
	id       string
	tenant   string
	skill    string
	prio     uint32
	state    protocol.State
	visitor  *user
	agent    *user     // nil while queued
	attached []*client // connections of the visitor and the agent
	hist     history
	dedupe   map[dedupeKey]uint64 // client message id → seq, for the messages in hist
	lastSeq  uint64
	position uint32 // last queue position sent
	eta      uint32 // last wait estimate sent, seconds
	reason   string // why it closed
	closedAt time.Time
	reads    [2]uint64 // highest read receipt of the visitor (0) and the agent side (1)

	// Bot-first routing and what the agent is shown (backends.go).
	intent, summary string // the bot's, at hand-off
	routing         string // the router's explanation of the assignment
	region          string // visitor context: declared (or mapped) region,
	language        string // language and the page the chat started on
	page            string
	botBusy         bool   // a question to the bot is in flight
	events          uint64 // hook events emitted for c (their IDs)
	// Hook events that follow durable state (hookstrict.go): the notes
	// of changes whose event is not known to be stored (written with the
	// record), the one emitConv stores next, and the stored messages
	// whose Ack waits for their events (serials from holds).
	notes    []HookNote
	next     *HookNote
	held     []heldMsg
	holds    uint64
	evq      []convEv // events being retried, and those behind them
	botAgain bool     // the visitor wrote again meanwhile

	// Leave-a-message: visitor messages stored while queued with no agent
	// online, and the time of the last one (leftMessage).
	left      uint32
	leftMilli int64

	// Durable mode (Options.History set).
	streamSeq  uint64                    // stream sequence of the last stored message
	inflight   bool                      // queue[0] is being appended
	appendDone func(uint64, bool, error) // the done of every append of c (pump)
	appendRes  appendResult              // its outcome: written by appendDone, read by appended
	queue      []pendingSend             // messages waiting for their append, bounded
	sends      uint64                    // serials of the queued sends (pendingSend.serial)
	rev        uint64                    // revision of the metadata record
	// rec: the record write in flight off the shard (single node,
	// persist); recDirty: c changed meanwhile, written again after it.
	rec          *recWrite
	recDirty     bool
	createdMilli int64
	closedMilli  int64

	// Cluster mode: the subscription to other nodes' message notices, and
	// a resync due when the append in flight is answered; cw, who writes
	// (cluster_write.go).
	sub         *nats.Subscription
	resyncAfter bool
	cw          convWriter
}

func (c *conversation) participant(u *user) bool {
	return u == c.visitor || (u == c.agent && u != nil)
}

func (c *conversation) agentID() string {
	if c.agent == nil {
		return ""
	}
	return c.agent.id
}

// setState moves c to state st, keeping the per-state counters.
func (s *shard) setState(c *conversation, st protocol.State) {
	if c.state != protocol.StateUnspecified {
		s.b.convStates[c.state].Add(-1)
	}
	c.state = st
	if st != protocol.StateUnspecified {
		s.b.convStates[st].Add(1)
	}
}

// announce sends a Conversation event with state st to every attached
// connection; requester (if not nil) gets it with the envelope id reqID.
// Agents' connections get what only agents see (the bot's intent and
// summary, the routing explanation, the visitor's context).
func (s *shard) announce(c *conversation, st protocol.State, reason string, requester *client, reqID uint64) {
	e := &s.out
	e.Kind = protocol.KindConversation
	e.ID = 0
	e.Conversation = convEventOf(c, st, reason, false)
	if !c.hasAgentView() {
		s.b.fanout(c.attached, requester, e)
	} else {
		// Rare (a state change): two lists, one encoding each.
		var vis, ag []*client
		for _, cl := range c.attached {
			if u := cl.user.Load(); u != nil && u.role == protocol.RoleAgent {
				ag = append(ag, cl)
			} else {
				vis = append(vis, cl)
			}
		}
		s.b.fanout(vis, requester, e)
		e.Conversation = convEventOf(c, st, reason, true)
		s.b.fanout(ag, requester, e)
		if requester != nil {
			if u := requester.user.Load(); u == nil || u.role != protocol.RoleAgent {
				e.Conversation = convEventOf(c, st, reason, false)
			}
		}
	}
	if requester != nil && !requester.closed.Load() {
		e.ID = reqID
		s.b.sendTo(requester, e)
	}
	e.Conversation = protocol.Conversation{}
}

// hasAgentView reports whether c has anything only agents see.
func (c *conversation) hasAgentView() bool {
	return c.intent != "" || c.summary != "" || c.routing != "" || c.region != "" || c.language != "" || c.page != ""
}

// convEventOf is c's Conversation event in state st; forAgent adds what
// only agents see.
func convEventOf(c *conversation, st protocol.State, reason string, forAgent bool) protocol.Conversation {
	ev := protocol.Conversation{
		ConversationID: c.id,
		State:          st,
		VisitorID:      c.visitor.id,
		AgentID:        c.agentID(),
		Skill:          c.skill,
		Reason:         reason,
		LastSeq:        c.lastSeq,
	}
	if forAgent {
		ev.Intent, ev.Summary, ev.Routing = c.intent, c.summary, c.routing
		ev.Region, ev.Language, ev.Page = c.region, c.language, c.page
	}
	return ev
}

// adopt makes u a participant's user on the delivery side: c joins u's
// conversations and u's live connections are attached. It returns the
// newly attached connections (a subslice of c.attached).
func (s *shard) adopt(c *conversation, u *user) []*client {
	c.attached = slices.DeleteFunc(c.attached, func(cl *client) bool { return cl.closed.Load() })
	start := len(c.attached)
	u.mu.Lock()
	u.convs[c.id] = struct{}{}
	for _, cl := range u.conns {
		if !slices.Contains(c.attached, cl) {
			c.attached = append(c.attached, cl)
		}
	}
	u.mu.Unlock()
	return c.attached[start:]
}

// drop detaches u's connections from c and removes c from u's
// conversations.
func (s *shard) drop(c *conversation, u *user) {
	u.mu.Lock()
	delete(u.convs, c.id)
	u.mu.Unlock()
	c.attached = slices.DeleteFunc(c.attached, func(cl *client) bool {
		return cl.closed.Load() || cl.user.Load() == u
	})
}

// replay sends the stored messages after seq to the connections in to,
// encoding each message once per codec. With History, the part older than
// the ring (a cache of the newest messages) is read from the stream first,
// at most MaxHistoryReplay messages of it (the newest ones): an agent given
// a conversation sees its history, not only the cached tail.
func (s *shard) replay(c *conversation, to []*client, after uint64) {
	if len(to) == 0 {
		return
	}
	if s.b.o.History != nil && after < c.lastSeq && (c.hist.len() == 0 || after+1 < c.hist.firstSeq()) {
		upTo := c.visibleSeq() // a held message is delivered live, once its hook events are stored
		if c.hist.len() > 0 {
			upTo = min(upTo, c.hist.firstSeq()-1)
		}
		if upTo > after {
			from := max(after, upTo-min(upTo, MaxHistoryReplay))
			s.replayStream(c, to, from, upTo, int(upTo-from))
		}
	}
	e := &s.out
	e.Kind = protocol.KindDeliver
	e.ID = 0
	visible := c.visibleSeq()
	c.hist.after(after, func(m *message) {
		if m.seq > visible {
			return // its hook events are being stored: delivered live
		}
		e.Deliver = deliverOf(c, m)
		s.b.fanout(to, nil, e)
	})
	e.Deliver = protocol.Deliver{}
}

func deliverOf(c *conversation, m *message) protocol.Deliver {
	return protocol.Deliver{
		ConversationID: c.id,
		Seq:            m.seq,
		SenderID:       m.senderID,
		SenderRole:     m.senderRole,
		ClientMsgID:    m.cmid,
		Text:           m.text,
		TimestampMilli: m.ts,
	}
}

// create makes the conversation of an Open (conversation shard).
func (s *shard) create(r *ctrl) {
	b, u, o := s.b, r.u, r.open
	c := &conversation{
		id:      r.conv,
		tenant:  u.tenant,
		skill:   o.skill,
		prio:    o.prio,
		visitor: u,
		hist:    newHistory(b.o.HistoryPerConversation, b.o.HistoryBytesPerConversation),
		dedupe:  make(map[dedupeKey]uint64),

		region:   o.region,
		language: o.language,
		page:     o.page,

		createdMilli: b.now().UnixMilli(),
	}
	// Bot-first: the bot answers before anybody is queued.
	st := protocol.StateQueued
	if b.bk != nil && b.bk.o.Bot != nil {
		st = protocol.StateBot
	}
	u.mu.Lock()
	deleted := u.deleted
	if deleted {
		u.open--
	}
	u.mu.Unlock()
	if deleted {
		return
	}
	s.adopt(c, u)
	durable := b.o.History != nil
	if cl := b.o.Cluster; cl != nil {
		// This node decides the visitor's departure now that it has
		// something to close (its hello may not have said so: helloSeen).
		cl.markSeen(u, b.now())
	}
	// The record carries the opened event until it is stored (hookstrict.go).
	s.noteConv(c, nil, backends.EventConversationOpened, "")
	if cs := b.o.Conversations; cs != nil {
		// The record exists before anybody hears of the conversation.
		m := c.meta()
		m.State = st
		ctx, cancel := s.ioCtx()
		rev, err := cs.Create(ctx, m)
		cancel()
		if err != nil {
			b.log.Error("broker: conversation not created", "conversation", c.id, "err", err)
			s.drop(c, u)
			u.mu.Lock()
			u.open--
			u.mu.Unlock()
			s.fail(r.cl, r.id, protocol.CodeUnavailable, "storage unavailable, retry later")
			return
		}
		c.rev = rev
	}
	var first *message // the Open's text, stored now when not durable
	if o.text != "" && !durable {
		first = s.store(c, u, "", o.text, b.now().UnixMilli())
	}
	reason := ""
	if st == protocol.StateQueued {
		if err := b.disp.enqueue(c.tenant, c.id, s.idx, s.routeInfo(c)); err != nil {
			s.drop(c, u)
			u.mu.Lock()
			u.open--
			u.mu.Unlock()
			s.fail(r.cl, r.id, protocol.CodeQueueFull, "the waiting queue is full")
			return
		}
		if b.o.Cluster == nil && !b.disp.anyOnline(c.tenant) {
			reason = ReasonNoAgentOnline // the visitor may leave a message
		}
	} else if b.disp.full() {
		// A hand-off would exceed MaxQueue later: refuse now.
		s.drop(c, u)
		u.mu.Lock()
		u.open--
		u.mu.Unlock()
		s.fail(r.cl, r.id, protocol.CodeQueueFull, "the waiting queue is full")
		return
	}
	s.convs[c.id] = c
	s.follow(c)
	s.recheckLater(c)
	s.setState(c, st)
	s.emitConv(c)
	s.announce(c, st, reason, r.cl, r.id)
	if first != nil {
		s.stored(c, first) // the bot's turn, the hook's event
	}
	if o.text != "" && durable {
		// Stored as seq 1 once durable; the agent sees it on assignment
		// (or live, if assigned before the append completes).
		s.queueSend(c, pendingSend{u: u, text: o.text, ts: b.now().UnixMilli(), quiet: true})
	}
}

// assign gives a queued conversation to the agent the dispatcher chose.
func (s *shard) assign(r *ctrl) {
	c := s.convs[r.conv]
	loaded := false
	if c == nil && s.b.o.Cluster != nil {
		c, loaded = s.load(r.conv), true // queued by another node
	}
	if c == nil || c.state != protocol.StateQueued {
		// Closed (or queued again and assigned elsewhere) meanwhile.
		s.b.disp.release(r.u.id, r.conv)
		if loaded && c != nil && c.state != protocol.StateClosed {
			// Its record change, which the watcher brings, is older than
			// what load read: tell the local participants now.
			s.attachLocal(c, c.state)
		}
		if loaded && c == nil {
			s.requeueUnloaded(r.conv) // the load failed: still waiting
		}
		return
	}
	if s.b.o.Cluster != nil {
		if !s.clusterAssign(c, r.u) {
			return
		}
	}
	c.agent = r.u
	c.routing = r.note
	s.setState(c, protocol.StateAssigned)
	if s.b.o.Cluster == nil {
		s.noteConv(c, nil, backends.EventConversationAssigned, "")
		s.persist(c)
	}
	s.emitConv(c)
	fresh := s.adopt(c, r.u)
	s.announce(c, protocol.StateAssigned, "", nil, 0)
	s.replay(c, fresh, 0)
}

// position tells a waiting visitor its place in the queue.
func (s *shard) position(r *ctrl) {
	c := s.convs[r.conv]
	if c == nil || c.state != protocol.StateQueued {
		return
	}
	c.position, c.eta = uint32(r.seq), r.eta
	e := &s.out
	e.Kind = protocol.KindQueue
	e.ID = 0
	e.Queue = protocol.Queue{ConversationID: c.id, Position: c.position, EtaSeconds: c.eta}
	s.b.fanout(c.attached, nil, e)
}

// attach adds a connection that just said hello to a conversation of its
// user: the current state, the queue position if waiting, then every
// stored message after the client's cursor.
func (s *shard) attach(r *ctrl) {
	c, cl := s.convs[r.conv], r.cl
	if c == nil && r.load && !cl.closed.Load() {
		if c = s.load(r.conv); c == nil {
			s.fail(cl, r.id, protocol.CodeUnknownConversation, "no such conversation")
			return
		}
	}
	if r.load && c != nil && !cl.closed.Load() && !c.participant(cl.user.Load()) {
		s.fail(cl, r.id, protocol.CodeNotParticipant, "not a participant of this conversation")
		return
	}
	if c == nil || cl.closed.Load() || !c.participant(cl.user.Load()) || slices.Contains(c.attached, cl) {
		return
	}
	var resyncErr error
	if s.b.o.Cluster != nil && !c.inflight && c.state != protocol.StateClosed {
		// Another node may have stored messages whose notices this one
		// missed: catch up before the replay.
		if resyncErr = s.resync(c); resyncErr != nil {
			s.b.log.Warn("broker: resync on attach failed", "conversation", c.id, "err", resyncErr)
		}
	}
	c.attached = slices.DeleteFunc(c.attached, func(x *client) bool { return x.closed.Load() })
	c.attached = append(c.attached, cl)
	e := &s.out
	e.Kind = protocol.KindConversation
	e.ID = 0
	u := cl.user.Load()
	e.Conversation = convEventOf(c, c.state, c.reason, u != nil && u.role == protocol.RoleAgent)
	s.b.sendTo(cl, e)
	e.Conversation = protocol.Conversation{}
	if c.state == protocol.StateQueued && c.position > 0 {
		e.Kind = protocol.KindQueue
		e.Queue = protocol.Queue{ConversationID: c.id, Position: c.position, EtaSeconds: c.eta}
		s.b.sendTo(cl, e)
	}
	after := r.seq
	if after > c.lastSeq {
		if resyncErr != nil {
			// This node may not have caught up yet (a replica behind):
			// the cursor may be right.
			s.fail(cl, r.id, protocol.CodeUnavailable, "history unavailable, resume again later")
			return
		}
		s.fail(cl, r.id, protocol.CodeSeqFromFuture, "cursor is ahead of the conversation")
		return
	}
	if c.state == protocol.StateClosed && after == 0 && cl.user.Load().role == protocol.RoleAgent {
		// An agent coming back gets the close, not the whole history of
		// a conversation that is over (a cursor asks for what it missed).
		return
	}
	if s.b.o.History != nil && after < c.lastSeq && (c.hist.len() == 0 || after+1 < c.hist.firstSeq()) {
		// The ring does not reach back to the cursor: replay from the
		// durable history (at most ReplayLimit messages).
		s.replayDurable(c, cl, after)
		return
	}
	s.replay(c, []*client{cl}, after)
}

// store appends a message to c's history and returns it. cmid and text
// may alias a request buffer: they are copied, in one allocation.
func (s *shard) store(c *conversation, u *user, cmid, text string, ts int64) *message {
	c.lastSeq++
	m := message{seq: c.lastSeq, senderID: u.id, senderRole: u.role, ts: ts}
	m.cmid, m.text = cloneTwo(cmid, text)
	c.hist.push(m, c.dedupe)
	mm, _ := c.hist.get(m.seq)
	return mm
}

// cloneTwo copies a and b into one new allocation (never aliasing them:
// a+b with one empty operand would return the other one as is).
func cloneTwo(a, b string) (string, string) {
	switch {
	case a == "":
		return "", strings.Clone(b)
	case b == "":
		return strings.Clone(a), ""
	}
	ab := a + b
	return ab[:len(a)], ab[len(a):]
}

// send stores a chat message, acks it to the sender's connection and
// delivers it to every other attached connection.
func (s *shard) send(c *conversation, it *item) {
	cl, req := it.cl, &it.env.Send
	u := cl.user.Load()
	switch {
	case c.state == protocol.StateClosed:
		s.fail(cl, it.env.ID, protocol.CodeConversationClosed, "the conversation is closed")
		return
	case req.Text == "":
		s.fail(cl, it.env.ID, protocol.CodeMissingField, "text is required")
		return
	}
	e := &s.out
	if req.ClientMsgID != "" {
		if seq, dup := c.dedupe[dedupeKey{u.id, req.ClientMsgID}]; dup {
			if s.b.strictHooks() {
				cmid := strings.Clone(req.ClientMsgID)
				s.holdAck(c, &pendingSend{cl: cl, id: it.env.ID, u: u, cmid: cmid}, seq)
				return
			}
			m, _ := c.hist.get(seq)
			e.Kind = protocol.KindAck
			e.ID = it.env.ID
			e.Ack = protocol.Ack{ConversationID: c.id, ClientMsgID: m.cmid, Seq: m.seq, TimestampMilli: m.ts}
			s.b.sendTo(cl, e)
			return
		}
	}
	if s.b.o.History != nil {
		cmid, text := cloneTwo(req.ClientMsgID, req.Text)
		if !s.queueSend(c, pendingSend{cl: cl, id: it.env.ID, u: u, cmid: cmid, text: text, ts: s.b.now().UnixMilli(), tr: it.tr}) {
			s.fail(cl, it.env.ID, protocol.CodeOverloaded, "too many messages in flight, retry later")
		}
		return
	}
	m := s.store(c, u, req.ClientMsgID, req.Text, s.b.now().UnixMilli())
	e.Kind = protocol.KindAck
	e.ID = it.env.ID
	e.Ack = protocol.Ack{ConversationID: c.id, ClientMsgID: m.cmid, Seq: m.seq, TimestampMilli: m.ts}
	s.b.sendTo(cl, e)
	e.Kind = protocol.KindDeliver
	e.ID = 0
	e.Deliver = deliverOf(c, m)
	tr := it.tr
	if tr.Read != 0 {
		tr.Stored = netpoll.Nanotime()
		tr.Handled = tr.Stored
	}
	s.b.fanoutTraced(c.attached, cl, e, tr)
	s.b.m.relayed.Inc()
	s.stored(c, m)
}

// typing relays a typing indicator, with the sender filled in by the
// server, to the other attached connections.
func (s *shard) typing(c *conversation, it *item) {
	cl := it.cl
	if c.state == protocol.StateClosed {
		s.fail(cl, it.env.ID, protocol.CodeConversationClosed, "the conversation is closed")
		return
	}
	u := cl.user.Load()
	it.env.ID = 0
	it.env.Typing.SenderID = u.id
	it.env.Typing.SenderRole = u.role
	s.b.fanout(c.attached, cl, &it.env)
}

// read relays a read receipt to the other attached connections.
func (s *shard) read(c *conversation, it *item) {
	cl := it.cl
	if it.env.Read.Seq > c.lastSeq {
		s.fail(cl, it.env.ID, protocol.CodeSeqFromFuture, "read is ahead of the conversation")
		return
	}
	u := cl.user.Load()
	side := 0
	if u.role == protocol.RoleAgent {
		side = 1
	}
	c.reads[side] = max(c.reads[side], it.env.Read.Seq)
	it.env.ID = 0
	it.env.Read.SenderID = u.id
	it.env.Read.SenderRole = u.role
	s.b.fanout(c.attached, cl, &it.env)
}

// transfer moves a conversation from its agent to another agent or back
// into the queue for a skill.
func (s *shard) transfer(c *conversation, it *item) {
	cl, t, id := it.cl, &it.env.Transfer, it.env.ID
	u := cl.user.Load()
	switch {
	case c.state == protocol.StateClosed:
		s.fail(cl, id, protocol.CodeConversationClosed, "the conversation is closed")
		return
	case c.agent != u:
		s.fail(cl, id, protocol.CodeNotParticipant, "only the assigned agent transfers")
		return
	case t.ToAgentID == "" && t.ToSkill == "":
		s.fail(cl, id, protocol.CodeMissingField, "to_agent_id or to_skill is required")
		return
	case t.ToAgentID == u.id:
		s.fail(cl, id, protocol.CodeBadTransition, "the conversation is already yours")
		return
	}
	clustered := s.b.o.Cluster != nil
	if t.ToAgentID != "" {
		var to *user
		if clustered {
			var perr *protocol.Error
			if to, perr = s.clusterTake(c, t.ToAgentID, protocol.StateTransferred, t.Note, backends.EventConversationTransferred, u.id); perr != nil {
				s.fail(cl, id, perr.Code, perr.Message)
				return
			}
			s.b.disp.release(u.id, c.id)
		} else {
			var err error
			if to, err = s.b.disp.transfer(u.id, t.ToAgentID, c.id); err != nil {
				if errors.Is(err, errNoAgent) {
					s.fail(cl, id, protocol.CodeNoAgent, "the agent is not available")
				} else {
					s.fail(cl, id, protocol.CodeInternal, "assignment out of sync")
					s.b.log.Error("broker: transfer refused", "conversation", c.id, "err", err)
				}
				return
			}
		}
		c.agent = to
		s.setState(c, protocol.StateTransferred)
		if !clustered {
			s.noteConv(c, nil, backends.EventConversationTransferred, u.id)
			s.persist(c)
		}
		s.emitConv(c)
		c.routing = "transferred by " + u.id
		fresh := s.adopt(c, to)
		s.announce(c, protocol.StateTransferred, t.Note, cl, id)
		s.replay(c, fresh, 0) // before drop: fresh is a view of c.attached
		s.drop(c, u)
		return
	}
	if clustered && !s.clusterQueue(c, t.ToSkill, protocol.StateTransferred, t.Note, backends.EventConversationTransferred, u.id) {
		s.fail(cl, id, protocol.CodeBadTransition, "the conversation changed meanwhile, retry")
		return
	}
	c.skill = strings.Clone(t.ToSkill)
	c.agent = nil
	c.position = 0
	s.setState(c, protocol.StateQueued)
	if !clustered {
		s.noteConv(c, nil, backends.EventConversationTransferred, u.id)
		s.persist(c)
	}
	s.emitConv(c)
	s.announce(c, protocol.StateTransferred, t.Note, cl, id)
	s.drop(c, u)
	s.b.disp.requeue(c.tenant, c.id, s.idx, s.routeInfo(c), u.id)
}

// closeRequest closes a conversation at a participant's request.
func (s *shard) closeRequest(c *conversation, it *item) {
	if c.state == protocol.StateClosed {
		s.fail(it.cl, it.env.ID, protocol.CodeConversationClosed, "the conversation is closed")
		return
	}
	s.closeConversation(c, it.env.Close.Reason, it.cl, it.env.ID)
}

// closeConversation closes c: the queue slot or the agent's capacity is
// freed, everybody attached is told, and c is remembered for ResumeTTL.
// In a cluster it fails (false, nothing changed; the requester gets an
// error) when another node changed the conversation first.
func (s *shard) closeConversation(c *conversation, reason string, requester *client, reqID uint64) bool {
	if cl := s.b.o.Cluster; cl != nil {
		m := c.meta()
		m.State, m.Event, m.Reason, m.ClosedMilli = protocol.StateClosed, protocol.StateClosed, reason, s.b.now().UnixMilli()
		s.noteConv(c, m, backends.EventConversationClosed, "")
		if !s.commit(c, m) {
			if requester != nil && !requester.closed.Load() {
				s.fail(requester, reqID, protocol.CodeBadTransition, "the conversation changed meanwhile, retry")
			}
			return false
		}
		if c.agent != nil {
			s.b.unreserve(c.agent.id, c.id, slot{})
		}
	}
	switch {
	case c.state == protocol.StateQueued:
		s.b.disp.cancel(c.tenant, c.id)
	case c.agent != nil:
		s.b.disp.release(c.agent.id, c.id)
	}
	s.setState(c, protocol.StateClosed)
	c.reason = strings.Clone(reason)
	c.closedAt = s.b.now()
	c.closedMilli = c.closedAt.UnixMilli()
	if s.b.o.Cluster == nil {
		s.noteConv(c, nil, backends.EventConversationClosed, "")
		s.persist(c)
	}
	s.emitConv(c)
	c.visitor.mu.Lock()
	c.visitor.open--
	c.visitor.mu.Unlock()
	s.announce(c, protocol.StateClosed, c.reason, requester, reqID)
	s.closed = append(s.closed, c)
	return true
}

// visitorGone closes the conversation of a visitor whose ResumeTTL ran
// out, unless it came back meanwhile.
func (s *shard) visitorGone(r *ctrl) {
	c := s.convs[r.conv]
	if c == nil || c.visitor != r.u || c.state == protocol.StateClosed || r.u.connected() {
		return
	}
	s.closeConversation(c, reasonVisitorLeft, nil, 0)
}

// agentGone queues again, ahead of new ones, the conversation of an agent
// whose ResumeTTL ran out, unless it came back meanwhile.
func (s *shard) agentGone(r *ctrl) {
	c := s.convs[r.conv]
	if c == nil || c.agent != r.u || c.state == protocol.StateClosed || r.u.connected() {
		return
	}
	// For the hook: queued again, from the agent who left.
	if s.b.o.Cluster != nil && !s.clusterQueue(c, c.skill, protocol.StateQueued, reasonAgentLeft, backends.EventConversationQueued, r.u.id) {
		return
	}
	c.agent = nil
	c.position = 0
	c.reason = reasonAgentLeft
	s.setState(c, protocol.StateQueued)
	if s.b.o.Cluster == nil {
		s.noteConv(c, nil, backends.EventConversationQueued, r.u.id)
		s.persist(c)
	}
	s.emitConv(c)
	s.drop(c, r.u)
	s.announce(c, protocol.StateQueued, reasonAgentLeft, nil, 0)
	s.b.disp.requeue(c.tenant, c.id, s.idx, s.routeInfo(c), r.u.id)
}

// sweep forgets conversations closed more than ResumeTTL ago.
func (s *shard) sweep() {
	now := s.b.now()
	n := 0
	for _, c := range s.closed {
		if now.Sub(c.closedAt) < s.b.o.ResumeTTL {
			break
		}
		n++
		s.unfollow(c)
		delete(s.convs, c.id)
		s.setState(c, protocol.StateUnspecified)
		for _, u := range []*user{c.visitor, c.agent} {
			if u != nil {
				u.mu.Lock()
				delete(u.convs, c.id)
				u.mu.Unlock()
			}
		}
		c.hist.reset()
		c.dedupe = nil
		c.queue = nil
		c.attached = nil
	}
	s.closed = slices.Delete(s.closed, 0, n)
}
