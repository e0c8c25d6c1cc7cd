package broker

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/protocol"
)

// Hook events that follow durable state (Backends.Events with History):
// stored before anybody is told of the state they describe, so that a
// SIGKILL never loses one a client saw. See "Hook events across a crash"
// in docs/backends.md and "Durability" in doc.go.
//
//   - A message: its message_stored (HookMessages) and message_left
//     events are published (asynchronously, on the shard, in order) once
//     its append is stored; its Ack, its Delivers, its cluster notice and
//     the bot's turn wait until JetStream stored them (held). A crash in
//     between leaves a stored message nobody was told of; the sender
//     re-sends it with its client message id, the dedupe path finds it and
//     publishes its events again with the same ids (the seq names them)
//     before the Ack.
//   - A state change: its event (a HookNote) is written inside the
//     conversation record with the change (the outbox), then stored
//     synchronously before the change is announced. The node that loads
//     the record (cold start, another node) stores the notes it carries
//     again, with their ids, before it tells anybody the state; a note is
//     dropped from the record by the next write after it was stored.

// HookNote is the hook event of one state change of a conversation, kept
// in its record until it is known to be stored in the hook stream.
type HookNote struct {
	ID    string            `json:"id"`
	Type  string            `json:"type"`
	Agent string            `json:"agent,omitempty"`
	From  string            `json:"from,omitempty"`
	At    int64             `json:"at"` // unix milliseconds
	Attrs map[string]string `json:"attrs,omitempty"`
}

// maxNotes bounds the notes a record carries (changes whose event could
// not be stored yet); beyond it the oldest is dropped and counted.
const maxNotes = 8

// maxHeldResends bounds the re-sends of one held message answered when
// it is released (more get CodeOverloaded, temporary).
const maxHeldResends = 8

// strictHooks reports whether events that follow durable state are stored
// before they are announced (durable history and the JetStream queue).
func (b *Broker) strictHooks() bool {
	return b.bk != nil && b.bk.hev != nil && b.o.History != nil
}

// asyncPub is one event published without waiting: done gets the outcome
// (from the waiter goroutine, or at once when it cannot be sent).
type asyncPub struct {
	f    jetstream.PubAckFuture
	done func(pubOutcome, error)
}

// errPubBusy: too many events are waiting for their PubAck.
var errPubBusy = errors.New("broker: hook events: too many publishes in flight")

// publishAsync publishes ev and calls done with the outcome, never on the
// caller's goroutine unless the event could not be sent at all (then at
// once). done must not block.
func (h *HookEvents) publishAsync(ev *backends.Event, done func(pubOutcome, error)) {
	data, err := h.encode(ev)
	if err != nil {
		done(pubBad, err)
		return
	}
	m := nats.NewMsg(h.prefix + strconv.Itoa(h.partition(ev)))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, ev.ID)
	f, err := h.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Millisecond))
	if err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			done(pubBad, err)
		} else {
			done(pubRetry, err)
		}
		return
	}
	select {
	case h.waits <- asyncPub{f: f, done: done}:
	default:
		done(pubRetry, errPubBusy) // stored or not: published again, same id
	}
}

// awaitPubs answers the asynchronous publishes in order until stop.
func (h *HookEvents) awaitPubs(stop <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var p asyncPub
		select {
		case <-stop:
			return
		case p = <-h.waits:
		}
		t.Reset(ioTimeout)
		select {
		case ack := <-p.f.Ok():
			if ack.Duplicate {
				p.done(pubDup, nil)
			} else {
				p.done(pubStored, nil)
			}
		case err := <-p.f.Err():
			out := pubRetry
			var ae *jetstream.APIError
			switch {
			case streamFull(err):
				out = pubFull
			case errors.As(err, &ae) && ae.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
				out = pubBad
			}
			p.done(out, err)
		case <-t.C:
			p.done(pubRetry, context.DeadlineExceeded)
		case <-stop:
			return
		}
	}
}

// storeNow publishes ev and waits for the answer (bounded by ioTimeout):
// whether it is stored (now or before).
func (r *backendRun) storeNow(ev *backends.Event) (bool, error) {
	var out [1]pubOutcome
	var errs [1]error
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	r.hev.publish(ctx, []backends.Event{*ev}, out[:], errs[:])
	cancel()
	switch out[0] {
	case pubStored:
		r.evStored.Inc()
		return true, nil
	case pubDup:
		return true, nil
	case pubBad:
		r.evDropped.Inc()
		return true, errs[0] // never storable: not kept
	}
	return false, errs[0]
}

// retryDelayOf is the back-off before publishing an event again after its
// n-th failure.
func retryDelayOf(n int) time.Duration {
	d := 50 * time.Millisecond
	for i := 1; i < n && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// convEv is an event of a conversation waiting to be stored, and what to
// run on the shard once it is.
type convEv struct {
	ev     backends.Event
	stored func(*shard)
}

// settled counts the outcome of one publish of ev and reports whether it
// is over: stored (now or before), or never storable (dropped, counted).
// Refusals for a full stream are not over: an event that follows durable
// state is never dropped for room.
func (s *shard) settled(ev *backends.Event, out pubOutcome, err error) bool {
	r := s.b.bk
	switch out {
	case pubStored:
		r.evStored.Inc()
	case pubDup:
	case pubBad:
		r.evDropped.Inc()
		r.dropLog.log(s.b.log, "broker: hook event dropped", "event", ev.ID, "type", ev.Type.String(), "err", err)
	default:
		r.storeLog.log(s.b.log, "broker: hook event not stored, retrying", "event", ev.ID, "err", err)
		return false
	}
	return true
}

// publishConv stores ev, an event of c, in order with c's other events,
// then runs stored on the shard. Published at once (pipelined) unless an
// earlier event of c is being retried: then behind it.
func (s *shard) publishConv(c *conversation, ev backends.Event, stored func(*shard)) {
	if len(c.evq) > 0 {
		c.evq = append(c.evq, convEv{ev: ev, stored: stored})
		return
	}
	mbox := &s.mbox
	s.b.bk.hev.publishAsync(&ev, func(out pubOutcome, err error) {
		mbox.post(ctrl{kind: ctrlCall, call: func(s *shard) {
			if s.settled(&ev, out, err) {
				stored(s)
				return
			}
			// Refusals come in publish order (awaitPubs): queued in it.
			// (One published after it may be stored meanwhile: the one
			// case where a conversation's events can swap.)
			c.evq = append(c.evq, convEv{ev: ev, stored: stored})
			if len(c.evq) == 1 {
				s.retryConv(c, 1)
			}
		}})
	})
}

// retryConv publishes the first waiting event of c again after a back-off
// (attempt n), until it is stored, then the next ones in order. It goes
// on after c is forgotten (the events still follow stored state), until
// the broker closes.
func (s *shard) retryConv(c *conversation, n int) {
	b, mbox := s.b, &s.mbox
	again := func(s *shard) {
		if len(c.evq) == 0 {
			return
		}
		head := c.evq[0]
		b.bk.hev.publishAsync(&head.ev, func(out pubOutcome, err error) {
			mbox.post(ctrl{kind: ctrlCall, call: func(s *shard) {
				if !s.settled(&head.ev, out, err) {
					s.retryConv(c, n+1)
					return
				}
				c.evq[0] = convEv{}
				c.evq = c.evq[1:]
				if len(c.evq) == 0 {
					c.evq = nil
				} else {
					s.retryConv(c, 0)
				}
				head.stored(s)
			}})
		})
	}
	if n == 0 {
		again(s)
		return
	}
	time.AfterFunc(retryDelayOf(n), func() {
		select {
		case <-b.done:
		default:
			mbox.post(ctrl{kind: ctrlCall, call: again})
		}
	})
}

// noteEvent is the hook event a note describes.
func noteEvent(c *conversation, n *HookNote) backends.Event {
	t, _ := backends.ParseEventType(n.Type)
	return backends.Event{
		ID: n.ID, Type: t, Tenant: c.tenant, ConversationID: c.id, VisitorID: c.visitor.id,
		AgentID: n.Agent, FromAgentID: n.From, At: time.UnixMilli(n.At), Attributes: n.Attrs,
	}
}

// noteConv prepares the hook event of a state change of c: the record
// about to be written is m (nil: c's own fields, written by persist). Its
// ID names the conversation, the event, the record revision it replaces
// and c's own count of events (unique without a ConvStore, where the
// revision stays 0, and after a write that failed). emitConv stores it
// once the record is written.
func (s *shard) noteConv(c *conversation, m *ConvMeta, t backends.EventType, from string) {
	if !s.b.hooked() {
		return
	}
	c.events++
	src := m
	if src == nil {
		src = c.meta()
	}
	n := HookNote{
		ID:    c.id + ":" + t.String() + ":" + strconv.FormatUint(c.rev, 10) + ":" + strconv.FormatUint(c.events, 10),
		Type:  t.String(),
		Agent: src.AgentID,
		From:  from,
		At:    s.b.now().UnixMilli(),
	}
	if src.Reason != "" {
		n.Attrs = map[string]string{"reason": src.Reason}
	}
	if t == backends.EventConversationQueued && (src.Intent != "" || src.Summary != "") {
		if n.Attrs == nil {
			n.Attrs = make(map[string]string, 2)
		}
		n.Attrs["intent"], n.Attrs["summary"] = src.Intent, src.Summary
	}
	c.next = &n
	if !s.b.strictHooks() {
		return
	}
	if m != nil {
		m.Hooks = s.appendNote(m.Hooks, n)
	} else {
		c.notes = s.appendNote(c.notes, n)
	}
}

// appendNote adds n to notes (a new slice), dropping the oldest beyond
// maxNotes.
func (s *shard) appendNote(notes []HookNote, n HookNote) []HookNote {
	out := make([]HookNote, 0, min(len(notes)+1, maxNotes))
	if over := len(notes) + 1 - maxNotes; over > 0 {
		s.b.bk.evDropped.Add(over)
		s.b.bk.dropLog.log(s.b.log, "broker: hook events of a conversation dropped: too many not stored", "conversation", n.ID)
		notes = notes[over:]
	}
	return append(append(out, notes...), n)
}

// emitConv stores the event noteConv prepared, now that the change is
// written: synchronously (before the caller announces the change) when
// events follow durable state, else queued.
func (s *shard) emitConv(c *conversation) {
	n := c.next
	if n == nil {
		return
	}
	c.next = nil
	ev := noteEvent(c, n)
	if !s.b.strictHooks() {
		s.b.emit(ev)
		return
	}
	s.storeNote(c, n)
}

// storeNote stores the event of note n of c before anything is told of
// it. If JetStream does not take it now (a full stream, a timeout) the
// change goes ahead (a shard does not wait longer than ioTimeout) and the
// note stays in c's record, published again in the background until
// stored, and again by whichever node loads the record.
func (s *shard) storeNote(c *conversation, n *HookNote) {
	r := s.b.bk
	ev := noteEvent(c, n)
	id := n.ID
	stored := func(s *shard) { s.noteStored(c, id) }
	if len(c.evq) > 0 {
		// Earlier events of c are being retried: behind them.
		s.publishConv(c, ev, stored)
		return
	}
	ok, err := r.storeNow(&ev)
	if ok {
		stored(s)
		return
	}
	r.storeLog.log(s.b.log, "broker: hook event not stored before its change was announced, retrying", "event", id, "err", err)
	c.evq = append(c.evq, convEv{ev: ev, stored: stored})
	if len(c.evq) == 1 {
		s.retryConv(c, 1)
	}
}

// noteStored forgets the note id of c: its event is stored (the next
// write of the record leaves it out).
func (s *shard) noteStored(c *conversation, id string) {
	for i := range c.notes {
		if c.notes[i].ID == id {
			c.notes = append(c.notes[:i:i], c.notes[i+1:]...)
			return
		}
	}
}

// repairNotes stores the events of the notes a record read from the store
// carries (a crash, or another node, between the record and its event):
// again, with their ids, before anything is told of the state.
func (s *shard) repairNotes(c *conversation, notes []HookNote) {
	if len(notes) == 0 || !s.b.strictHooks() {
		return
	}
	c.notes = append([]HookNote(nil), notes...)
	for i := range notes {
		s.storeNote(c, &notes[i])
	}
}

// repairMessages stores again the message_stored events of c's newest
// messages, just loaded from History, before any replay shows them: a
// crash may have come after their append and before their events. At
// most MaxPendingPerConversation of them can be in that state (held
// messages count against that bound in queueSend), so as many are
// published again, pipelined, with their ids (within the stream's
// duplicate window a repeat is dropped; later the hook gets it again,
// same id). Those JetStream does not take now are retried in the
// background.
func (s *shard) repairMessages(c *conversation) {
	r := s.b.bk
	if !s.b.strictHooks() || !r.o.HookMessages || c.hist.len() == 0 {
		return
	}
	n := c.hist.len()
	k := min(n, s.b.o.MaxPendingPerConversation)
	evs := make([]backends.Event, 0, k)
	for i := n - k; i < n; i++ {
		evs = append(evs, storedEvent(c, c.hist.at(i)))
	}
	out := make([]pubOutcome, k)
	errs := make([]error, k)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	r.hev.publish(ctx, evs, out, errs)
	cancel()
	for i := range evs {
		if !s.settled(&evs[i], out[i], errs[i]) {
			s.publishConv(c, evs[i], func(*shard) {})
		}
	}
}

// heldMsg is a stored message whose hook events are being stored: its Ack
// (and, for a new message, its Delivers, cluster notice and the bot's
// turn) wait for them.
type heldMsg struct {
	serial  uint64
	m       message
	ss      uint64
	p       pendingSend // the sender's side (cl, id, reply, remote); deliver only
	deliver bool        // a new message (false: a re-send found stored)
	own     bool        // appended by this node (the bot's turn)
	pending int         // events not stored yet
	resends []pendingSend
}

// msgEvents returns the hook events that follow message m of c being
// stored: message_left (leave-a-message; counted in c as it happens) and
// message_stored (HookMessages). Their ids name the seq, so publishing
// them again is the same event.
func (s *shard) msgEvents(c *conversation, m *message, fresh bool) []backends.Event {
	var evs []backends.Event
	if fresh {
		if ev, ok := s.leftEvent(c, m); ok {
			evs = append(evs, ev)
		}
	}
	if r := s.b.bk; r.o.HookMessages {
		evs = append(evs, storedEvent(c, m))
	}
	return evs
}

// storedEvent is the message_stored event of m.
func storedEvent(c *conversation, m *message) backends.Event {
	ev := convEvent(c, backends.EventMessageStored, c.id+":message:"+strconv.FormatUint(m.seq, 10))
	ev.MessageID = strconv.FormatUint(m.seq, 10)
	ev.Text = m.text
	ev.Attributes = map[string]string{"sender": m.senderID, "role": m.senderRole.String()}
	return ev
}

// finish answers p, now stored as mm: at once (complete, the cluster
// notice, the hook's events and the bot's turn), or, when events follow
// durable state, once its events are stored (hold).
func (s *shard) finish(c *conversation, p *pendingSend, mm *message, ss uint64, own bool) {
	if s.b.strictHooks() {
		if evs := s.msgEvents(c, mm, own); len(evs) > 0 {
			s.hold(c, heldMsg{m: *mm, ss: ss, p: *p, deliver: true, own: own}, evs)
			return
		}
	}
	s.complete(c, p, mm, ss)
	if cl := s.b.o.Cluster; cl != nil && ss != 0 {
		cl.publish(c, mm, ss)
	}
	if own {
		s.stored(c, mm)
	}
}

// hold queues h on c and publishes its events.
func (s *shard) hold(c *conversation, h heldMsg, evs []backends.Event) {
	c.holds++
	h.serial = c.holds
	h.pending = len(evs)
	c.held = append(c.held, h)
	serial := h.serial
	for _, ev := range evs {
		s.publishConv(c, ev, func(s *shard) { s.heldStored(c, serial) })
	}
}

// heldStored counts one stored event of c's held message serial and
// releases the held messages whose events are all stored, in order.
func (s *shard) heldStored(c *conversation, serial uint64) {
	if s.convs[c.id] != c {
		return // forgotten meanwhile
	}
	for i := range c.held {
		if c.held[i].serial == serial {
			c.held[i].pending--
			break
		}
	}
	for len(c.held) > 0 && c.held[0].pending <= 0 {
		h := c.held[0]
		c.held[0] = heldMsg{}
		c.held = c.held[1:]
		if len(c.held) == 0 {
			c.held = nil
		}
		mm, ok := c.hist.get(h.m.seq)
		if !ok {
			mm = &h.m
		}
		if h.deliver {
			s.complete(c, &h.p, mm, h.ss)
			if cl := s.b.o.Cluster; cl != nil && h.ss != 0 {
				cl.publish(c, mm, h.ss)
			}
			if h.own && c.state == protocol.StateBot && mm.senderRole == protocol.RoleVisitor && s.b.bk.o.Bot != nil {
				s.askBot(c)
			}
		}
		for i := range h.resends {
			s.ackNow(c, &h.resends[i], mm.seq)
		}
	}
}

// holdAck answers p, a send whose message is stored as seq (found by its
// client message id), once the message's events are stored: with the
// held message if it is still held, else after publishing its events
// again (a crash may have come between the message and its events).
func (s *shard) holdAck(c *conversation, p *pendingSend, seq uint64) {
	for i := range c.held {
		if h := &c.held[i]; h.m.seq == seq {
			if len(h.resends) >= maxHeldResends {
				s.failSend(c, p, protocol.CodeOverloaded, "the message is being stored, retry later")
				return
			}
			h.resends = append(h.resends, *p)
			return
		}
	}
	mm, ok := c.hist.get(seq)
	if !ok {
		s.ackNow(c, p, seq) // older than the ring: long stored, its events too
		return
	}
	evs := s.msgEvents(c, mm, false)
	if len(evs) == 0 {
		s.ackNow(c, p, seq)
		return
	}
	s.hold(c, heldMsg{m: *mm, resends: []pendingSend{*p}}, evs)
}

// visibleSeq is the last seq of c anybody may be shown: the messages from
// the first held new one on wait for their events.
func (c *conversation) visibleSeq() uint64 {
	for i := range c.held {
		if c.held[i].deliver {
			return c.held[i].m.seq - 1
		}
	}
	return c.lastSeq
}
