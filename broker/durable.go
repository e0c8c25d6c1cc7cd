package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// History is the durable history of every conversation. *histstore.Store
// implements it. See histstore's package documentation for the meaning of
// the stream sequences and of an acknowledgement.
type History interface {
	// Append stores m synchronously.
	Append(ctx context.Context, m *histstore.Message, expectLastStreamSeq uint64) (streamSeq uint64, dup bool, err error)
	// AppendAsync stores m and calls done exactly once with the outcome,
	// from another goroutine; done must not block.
	AppendAsync(m *histstore.Message, expectLastStreamSeq uint64, done func(streamSeq uint64, dup bool, err error)) error
	// Replay calls fn for the messages with Seq > after, in order, at most
	// limit, until fn returns false.
	Replay(ctx context.Context, tenant, conv string, after uint64, limit int, fn func(*histstore.Message) bool) (histstore.RangeInfo, error)
	// Last returns the conversation's last stored message and its stream
	// sequence.
	Last(ctx context.Context, tenant, conv string) (m *histstore.Message, streamSeq uint64, ok bool, err error)
	// Get returns the conversation's message at stream sequence streamSeq
	// (ok=false: none, or another conversation's).
	Get(ctx context.Context, tenant, conv string, streamSeq uint64) (m *histstore.Message, ok bool, err error)
}

var _ History = (*histstore.Store)(nil)

// ConvMeta is the durable record of a conversation: who takes part and in
// which state it is. Messages are in History.
type ConvMeta struct {
	ID           string         `json:"id"`
	Tenant       string         `json:"tenant"`
	VisitorID    string         `json:"visitor"`
	AgentID      string         `json:"agent,omitempty"`
	State        protocol.State `json:"state"`
	Skill        string         `json:"skill,omitempty"`
	Prio         uint32         `json:"prio,omitempty"`
	Reason       string         `json:"reason,omitempty"`
	CreatedMilli int64          `json:"created"`
	ClosedMilli  int64          `json:"closed,omitempty"`
	// Event is the state the change announced when it differs from State
	// (TRANSFERRED for a transfer to a skill, which leaves it QUEUED), so
	// that other nodes tell their clients the same.
	Event protocol.State `json:"event,omitempty"`
	// Boost: queued again (transfer to a skill, departed agent), ahead of
	// new conversations of its priority.
	Boost bool `json:"boost,omitempty"`
	// What the bot understood at hand-off, and the visitor's context.
	Intent   string `json:"intent,omitempty"`
	Summary  string `json:"summary,omitempty"`
	Region   string `json:"region,omitempty"`
	Language string `json:"lang,omitempty"`
	Page     string `json:"page,omitempty"`
	// Left counts visitor messages left while no agent was online (saved
	// with the first one and with later state changes; leftMessage).
	Left      uint32 `json:"left,omitempty"`
	LeftMilli int64  `json:"left_at,omitempty"`
	// Hooks are the hook events of changes not known to be stored in the
	// hook stream yet, oldest first (at most maxNotes): written with the
	// change, stored again by the node that loads the record
	// (hookstrict.go).
	Hooks []HookNote `json:"hooks,omitempty"`
}

// ErrConvNotFound is returned by ConvStore.Get for an unknown conversation.
var ErrConvNotFound = errors.New("broker: conversation not found")

// ConvStore keeps conversation metadata durably with revision-checked
// updates, so that two writers (a stale owner, another node) never
// overwrite each other silently. KVConvStore implements it on a JetStream
// key-value bucket.
type ConvStore interface {
	// Create stores a new conversation; it fails if the id exists.
	Create(ctx context.Context, m *ConvMeta) (rev uint64, err error)
	// Update replaces the record if its revision is still rev.
	Update(ctx context.Context, m *ConvMeta, rev uint64) (newRev uint64, err error)
	// Get returns the record and its revision, or ErrConvNotFound.
	Get(ctx context.Context, id string) (*ConvMeta, uint64, error)
}

// DefaultConvBucket is the key-value bucket of KVConvStore.
const DefaultConvBucket = "UNIGATE_CONVERSATIONS"

// KVConvStore is a ConvStore on a JetStream key-value bucket (one key per
// conversation id, JSON values, file storage).
type KVConvStore struct {
	kv jetstream.KeyValue
}

// KVConvOptions configures OpenKVConvStore.
type KVConvOptions struct {
	// Bucket is the bucket name (default DefaultConvBucket).
	Bucket string
	// Replicas is the bucket's replication factor (default 1).
	Replicas int
	// TTL discards records not updated for this long (0: kept forever).
	// Set it to the history's max age so metadata does not outlive the
	// messages by much.
	TTL time.Duration
}

// OpenKVConvStore creates (or updates) the bucket and returns the store.
func OpenKVConvStore(ctx context.Context, js jetstream.JetStream, o KVConvOptions) (*KVConvStore, error) {
	if o.Bucket == "" {
		o.Bucket = DefaultConvBucket
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "Unigate conversation metadata",
		History:     1,
		TTL:         o.TTL,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("broker: conversation bucket %s: %w", o.Bucket, err)
	}
	return &KVConvStore{kv: kv}, nil
}

// Create implements ConvStore.
func (s *KVConvStore) Create(ctx context.Context, m *ConvMeta) (uint64, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	return s.kv.Create(ctx, m.ID, b)
}

// Update implements ConvStore.
func (s *KVConvStore) Update(ctx context.Context, m *ConvMeta, rev uint64) (uint64, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	return s.kv.Update(ctx, m.ID, b, rev)
}

// Get implements ConvStore.
func (s *KVConvStore) Get(ctx context.Context, id string) (*ConvMeta, uint64, error) {
	if !validConvKey(id) {
		return nil, 0, ErrConvNotFound
	}
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrConvNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	var m ConvMeta
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return nil, 0, fmt.Errorf("broker: conversation %q: bad record: %w", id, err)
	}
	if m.ID != id || m.VisitorID == "" {
		return nil, 0, fmt.Errorf("broker: conversation %q: inconsistent record", id)
	}
	return &m, e.Revision(), nil
}

// validConvKey reports whether id can be a key (and is one of ours):
// conversation ids are "c_" + base32, at most 128 bytes.
func validConvKey(id string) bool {
	if len(id) <= len(prefixConversation) || len(id) > 128 || id[:len(prefixConversation)] != prefixConversation {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ioTimeout bounds the store calls a shard makes synchronously (metadata
// writes, cold loads, resynchronisation, replay).
const ioTimeout = 5 * time.Second

func (s *shard) ioCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), ioTimeout)
}

// meta returns the durable record of c.
func (c *conversation) meta() *ConvMeta {
	m := &ConvMeta{
		ID:           c.id,
		Tenant:       c.tenant,
		VisitorID:    c.visitor.id,
		AgentID:      c.agentID(),
		State:        c.state,
		Skill:        c.skill,
		Prio:         c.prio,
		Reason:       c.reason,
		CreatedMilli: c.createdMilli,
	}
	m.ClosedMilli = c.closedMilli
	m.Intent, m.Summary = c.intent, c.summary
	m.Region, m.Language, m.Page = c.region, c.language, c.page
	m.Left, m.LeftMilli = c.left, c.leftMilli
	m.Hooks = c.notes
	return m
}

// persist writes c's metadata after a state change (no-op without a
// ConvStore). A failure is logged: the in-memory state stays
// authoritative while the conversation is live, and the next change
// retries with a fresh revision.
//
// On a single node without strict hook events the write runs off the
// shard goroutine (a KV update is a JetStream round trip: a mass close
// of thousands of conversations used to hold every append and ack of
// the shard behind it, docs/benchmarks.md "The end of the run: a close
// storm"). One write per conversation is in flight; changes made
// meanwhile are written, the latest state, when it completes (recDirty),
// with the revision it returned. Nothing else reads c.rev on a single
// node (the cluster's commits and strict hook events keep the
// synchronous write), and the shard waits for its writes before it
// stops (settleRecords). At most maxRecordWrites per shard are in
// flight; beyond, the write is synchronous (back-pressure).
func (s *shard) persist(c *conversation) {
	cs := s.b.o.Conversations
	if cs == nil {
		return
	}
	if c.rec != nil {
		c.recDirty = true
		return
	}
	if s.b.o.Cluster == nil && !s.b.strictHooks() && len(s.recs) < maxRecordWrites && !s.b.closing.Load() {
		s.persistAsync(c, cs)
		return
	}
	ctx, cancel := s.ioCtx()
	if s.b.closing.Load() {
		// settleRecords: the broker's context is cancelled already.
		cancel()
		ctx, cancel = context.WithTimeout(context.Background(), ioTimeout)
	}
	defer cancel()
	c.rev = s.writeRecord(ctx, cs, c.meta(), c.rev)
}

// maxRecordWrites bounds the record writes in flight per shard.
const maxRecordWrites = 256

// recWrite is a record write in flight: rev is the revision it leaves,
// set before done is closed.
type recWrite struct {
	done chan struct{}
	rev  uint64
}

// writeRecord writes m over revision rev and returns the record's new
// revision (on a failure, logged, the current one if it can be read, so
// that the next write replaces it).
func (s *shard) writeRecord(ctx context.Context, cs ConvStore, m *ConvMeta, rev uint64) uint64 {
	nrev, err := cs.Update(ctx, m, rev)
	if err == nil {
		return nrev
	}
	s.b.log.Error("broker: conversation metadata not saved", "conversation", m.ID, "err", err)
	if _, r, gerr := cs.Get(ctx, m.ID); gerr == nil {
		return r
	}
	return rev
}

func (s *shard) persistAsync(c *conversation, cs ConvStore) {
	m, rev := c.meta(), c.rev
	m.Hooks = slices.Clone(m.Hooks)
	w := &recWrite{done: make(chan struct{})}
	c.rec = w
	if s.recs == nil {
		s.recs = make(map[*conversation]struct{})
	}
	s.recs[c] = struct{}{}
	mbox := &s.mbox
	go func() {
		// Not the broker's context: Close cancels it before the shard
		// settles its writes.
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		w.rev = s.writeRecord(ctx, cs, m, rev)
		cancel()
		close(w.done)
		mbox.post(ctrl{kind: ctrlCall, call: func(s *shard) { s.recordWritten(c, w) }})
	}()
}

// recordWritten takes in the outcome of c's record write w, and writes
// again if c changed meanwhile.
func (s *shard) recordWritten(c *conversation, w *recWrite) {
	if c.rec != w {
		return // settled already
	}
	c.rec = nil
	delete(s.recs, c)
	c.rev = w.rev
	if c.recDirty {
		c.recDirty = false
		s.persist(c)
	}
}

// settleRecords waits for the record writes in flight and makes the
// changes made meanwhile (the shard is stopping).
func (s *shard) settleRecords() {
	for len(s.recs) > 0 {
		for c := range s.recs {
			w := c.rec
			<-w.done
			s.recordWritten(c, w) // synchronous now: the broker is closing
		}
	}
}

// pendingSend is a chat message waiting for (or in) its append.
type pendingSend struct {
	cl       *client // sender's connection; nil for an Open's text
	id       uint64  // envelope id to echo
	u        *user
	cmid     string // owned
	text     string // owned
	ts       int64
	quiet    bool // Open text: not delivered to the sender's own connections
	attempts int
	seq      uint64 // seq of the append in flight
	// reply, when set (integrator API), gets the outcome instead of cl:
	// the stored seq and time (dup: stored before, by client message
	// id), or an error. It runs on the shard and must
	// not block.
	reply func(seq uint64, ts int64, dup bool, err *protocol.Error)

	// Cluster mode (cluster_write.go). fwd is the id of this send's
	// forward to another node's writer (0: appended here); fwdAns the
	// writer's answer while the message itself has not reached this node;
	// fwdBy when the forward times out (or, answered, when to read the
	// message from History). remote: a send another node forwarded here.
	fwd    uint64
	fwdAns *fwdAnswer
	fwdBy  time.Time
	late   int // ticks the answered message has not reached this node
	remote *remoteSend
	// batch: the sends the append in flight carries (on the head only);
	// solo: refused in an atomic batch once, appended alone.
	batch int
	solo  bool
	// tr times the relay of the message (netpoll.Trace; zero: untimed).
	tr netpoll.Trace

	// serial names this send among c's (its index in the queue moves).
	// unknowns counts its appends and forwards whose outcome was unknown
	// (an ack timeout, a forward without an answer); maybe: an append of
	// it may have been stored, which a later append's answer will tell;
	// fwdMaybe: a writer it was forwarded to may still store it. A send
	// refused while maybe or fwdMaybe gets CodeUnconfirmed, never a
	// definitive code (unconfirmed).
	serial          uint64
	unknowns        int
	maybe, fwdMaybe bool
}

// maxUnknown bounds the appends (and forwards) of one send whose outcome
// was unknown: each is retried unchanged (same seq, same expected stream
// sequence, same message id), so the next answer says whether the earlier
// one was stored; after maxUnknown of them (an ack timeout each, so about
// 10 s with histstore's default) the sender gets CodeUnconfirmed.
const maxUnknown = 2

// unconfirmed returns code, or CodeUnconfirmed (with its message) if p
// may have been stored: a definitive refusal must mean "not stored, never
// delivered".
func unconfirmed(p *pendingSend, code protocol.Code, msg string) (protocol.Code, string) {
	if p.maybe || p.fwdMaybe {
		return protocol.CodeUnconfirmed, msgUnconfirmed
	}
	return code, msg
}

const msgUnconfirmed = "the message may have been stored: re-send it with the same client_msg_id to learn its outcome"

// indexOfSend returns the index in c's queue of the send with serial, or
// -1 (answered meanwhile).
func indexOfSend(c *conversation, serial uint64) int {
	for i := range c.queue {
		if c.queue[i].serial == serial {
			return i
		}
	}
	return -1
}

// serialsOf returns the serials of c's first n queued sends.
func serialsOf(c *conversation, n int) []uint64 {
	out := make([]uint64, n)
	for i := range n {
		out[i] = c.queue[i].serial
	}
	return out
}

// appendResult is the outcome of an AppendAsync, posted to the shard.
type appendResult struct {
	c         *conversation
	streamSeq uint64
	dup       bool
	err       error
	at        int64 // netpoll.Nanotime when the append completed
}

// queueSend queues a message for its durable append.
func (s *shard) queueSend(c *conversation, p pendingSend) bool {
	if len(c.held) > 0 && len(c.queue)+len(c.held) >= s.b.o.MaxPendingPerConversation {
		// Stored messages waiting for their hook events count too: so at
		// most that many can be in History without their events
		// (repairMessages).
		return false
	}
	if limit := s.b.o.MaxPendingPerConversation; len(c.queue) >= limit {
		// The writer of a conversation several nodes write to holds their
		// sends too (cluster_write.go): this node's clients and the
		// others' each have the bound.
		n := 0
		for i := range c.queue {
			if (c.queue[i].remote != nil) == (p.remote != nil) {
				n++
			}
		}
		if n >= limit || len(c.queue) >= 2*limit {
			return false
		}
	}
	c.sends++
	p.serial = c.sends
	c.queue = append(c.queue, p)
	s.pump(c)
	return true
}

// pump starts the append of the first queued message, if none is in
// flight. Messages whose client id is already stored are answered with
// the original Ack without an append.
func (s *shard) pump(c *conversation) {
	for !c.inflight && len(c.queue) > 0 {
		if c.cw.writer != "" && s.forwardQueued(c) {
			return // the head went to the writer
		}
		p := &c.queue[0]
		if p.fwd != 0 {
			return // forwarded: later sends wait for it, in order
		}
		if p.cmid != "" {
			if seq, dup := c.dedupe[dedupeKey{p.u.id, p.cmid}]; dup {
				s.ackStored(c, p, seq)
				s.popSend(c)
				continue
			}
		}
		if c.appendDone == nil {
			// One closure and one result per conversation, not per append:
			// one append is in flight at a time, and appended copies the
			// result before it starts the next.
			mbox := &s.mbox
			c.appendDone = func(ss uint64, dup bool, err error) {
				// NATS goroutine: only c.appendRes and the post, nothing else of c.
				c.appendRes = appendResult{c: c, streamSeq: ss, dup: dup, err: err, at: netpoll.Nanotime()}
				mbox.post(ctrl{kind: ctrlAppended, res: &c.appendRes})
			}
		}
		done := c.appendDone
		p.seq = c.lastSeq + 1
		hm := histMessage(c, p)
		var err error
		if ms := s.batch(c, hm); len(ms) > 1 {
			err = s.b.o.History.(batchHistory).AppendBatchAsync(ms, c.streamSeq, done)
			if err == nil {
				p.batch = len(ms)
				s.b.m.batches.Inc()
				s.b.m.batched.Add(len(ms))
			}
		} else {
			err = s.b.o.History.AppendAsync(hm, c.streamSeq, done)
		}
		if err != nil {
			// Nothing was sent.
			code, msg := protocol.CodeUnavailable, "history unavailable, retry later"
			switch {
			case errors.Is(err, histstore.ErrInvalid):
				code, msg = protocol.CodeTooLarge, "message field too long"
			case errors.Is(err, histstore.ErrBackpressure):
				code, msg = protocol.CodeOverloaded, "history busy, retry later"
			}
			code, msg = unconfirmed(p, code, msg)
			s.failSend(c, p, code, msg)
			s.popSend(c)
			continue
		}
		c.inflight = true
	}
}

// batchHistory is a History that stores several messages of one
// conversation at once, atomically (histstore on a replicated stream).
type batchHistory interface {
	Batches() bool
	AppendBatchAsync(ms []*histstore.Message, expectLastStreamSeq uint64, done func(lastStreamSeq uint64, dup bool, err error)) error
}

// batch returns the messages to append with hm, the head of c's queue:
// hm alone, or, when History takes atomic batches, hm and the queued
// sends right behind it (each with the next seq) up to the first one
// forwarded, known by its client id, or refused in a batch before. One
// round trip then stores them all: on a replicated stream an append costs
// a RAFT round trip, and one conversation has one append in flight, so
// without batches a busy conversation (two sides writing, one node taking
// both sides' sends) is bounded by that round trip.
func (s *shard) batch(c *conversation, hm *histstore.Message) []*histstore.Message {
	bh, ok := s.b.o.History.(batchHistory)
	if !ok || len(c.queue) < 2 || c.queue[0].solo || !bh.Batches() {
		return nil
	}
	if c.queue[0].cmid == "" {
		return nil
	}
	ms := []*histstore.Message{hm}
	for i := 1; i < len(c.queue) && len(ms) < histstore.MaxBatch; i++ {
		q := &c.queue[i]
		// A send without a client message id could not be recognised if
		// the batch's outcome were unknown: it goes alone.
		if q.fwd != 0 || q.solo || q.cmid == "" {
			break
		}
		if _, dup := c.dedupe[dedupeKey{q.u.id, q.cmid}]; dup {
			break
		}
		q.seq = hm.Seq + uint64(i)
		ms = append(ms, histMessage(c, q))
	}
	return ms
}

func histMessage(c *conversation, p *pendingSend) *histstore.Message {
	return &histstore.Message{
		Tenant:       c.tenant,
		Conversation: c.id,
		Seq:          p.seq,
		SenderID:     p.u.id,
		SenderRole:   uint8(p.u.role),
		ClientMsgID:  p.cmid,
		Text:         p.text,
		TimeMilli:    p.ts,
	}
}

func (s *shard) popSend(c *conversation) {
	c.queue[0] = pendingSend{}
	c.queue = c.queue[1:]
	if len(c.queue) == 0 {
		c.queue = nil
	}
}

// removeSend removes the i-th queued send (a forwarded one, answered).
func (s *shard) removeSend(c *conversation, i int) {
	if i == 0 {
		s.popSend(c)
		return
	}
	copy(c.queue[i:], c.queue[i+1:])
	c.queue[len(c.queue)-1] = pendingSend{}
	c.queue = c.queue[:len(c.queue)-1]
}

func (s *shard) failSend(c *conversation, p *pendingSend, code protocol.Code, msg string) {
	if p.remote != nil {
		s.b.o.Cluster.answerForward(p.remote.reply, &fwdAnswer{Conv: c.id, ID: p.remote.id, Code: code, Msg: msg})
		return
	}
	if p.reply != nil {
		p.reply(0, 0, false, protocol.NewError(code, msg))
		return
	}
	if p.cl != nil && !p.cl.closed.Load() {
		s.fail(p.cl, p.id, code, msg)
	}
}

// ackStored answers p with the Ack of the stored message seq: at once, or,
// when hook events follow durable state, once the message's events are
// stored (holdAck).
func (s *shard) ackStored(c *conversation, p *pendingSend, seq uint64) {
	if s.b.strictHooks() {
		s.holdAck(c, p, seq)
		return
	}
	s.ackNow(c, p, seq)
}

// ackNow answers p with the Ack of the stored message seq.
func (s *shard) ackNow(c *conversation, p *pendingSend, seq uint64) {
	if p.remote != nil {
		ans := fwdAnswer{Seq: seq, TS: p.ts, Dup: true}
		if m, ok := c.hist.get(seq); ok {
			ans.TS = m.ts
		}
		s.answerRemote(c, p, ans)
		return
	}
	if p.reply != nil {
		ts := p.ts
		if m, ok := c.hist.get(seq); ok {
			ts = m.ts
		}
		p.reply(seq, ts, true, nil)
		return
	}
	if p.cl == nil || p.cl.closed.Load() {
		return
	}
	e := &s.out
	e.Kind = protocol.KindAck
	e.ID = p.id
	e.Ack = protocol.Ack{ConversationID: c.id, ClientMsgID: p.cmid, Seq: seq, TimestampMilli: p.ts}
	if m, ok := c.hist.get(seq); ok {
		e.Ack.TimestampMilli = m.ts
	}
	s.b.sendTo(p.cl, e)
}

// maxAppendAttempts bounds the conflicts one message may meet
// (maxClusterAppendAttempts where several nodes write).
const (
	maxAppendAttempts        = 3
	maxClusterAppendAttempts = 16
)

// appended handles the outcome of the in-flight append of c (shard).
func (s *shard) appended(res *appendResult) {
	// A copy: the next append, started below, reuses *res.
	r := *res
	c := r.c
	handled := netpoll.Nanotime()
	if s.convs[c.id] != c || !c.inflight || len(c.queue) == 0 {
		return // forgotten meanwhile
	}
	c.inflight = false
	p := &c.queue[0]
	n := min(max(p.batch, 1), len(c.queue)) // the sends this append carried
	p.batch = 0
	switch {
	case r.err == nil && !r.dup:
		// The store accepted them after c.streamSeq: nobody else appended
		// meanwhile, so their seqs are the next ones (the stream
		// sequences of a batch are consecutive, ending at r.streamSeq).
		var done []message // for s.stored, once the batch is off the queue
		for i := range n {
			p := &c.queue[0]
			ss := r.streamSeq - uint64(n-1-i)
			if p.seq <= c.lastSeq {
				// Already learned from the stream (a resync): only the
				// ack is missing.
				s.ackStored(c, p, p.seq)
				s.popSend(c)
				continue
			}
			c.lastSeq = p.seq
			c.streamSeq = ss
			m := message{seq: c.lastSeq, senderID: p.u.id, senderRole: p.u.role, ts: p.ts, cmid: p.cmid, text: p.text}
			c.hist.push(m, c.dedupe)
			mm, ok := c.hist.get(m.seq)
			if !ok { // cannot happen: push keeps the newest message
				mm = &m
			}
			if p.remote == nil {
				c.cw.ownAt = time.Now()
			}
			s.b.m.relayed.Inc()
			if s.b.strictHooks() {
				if evs := s.msgEvents(c, mm, true); len(evs) > 0 {
					// Acked, delivered and noticed once its events
					// are stored (hookstrict.go).
					s.hold(c, heldMsg{m: *mm, ss: ss, p: *p, deliver: true, own: true}, evs)
					s.popSend(c)
					continue
				}
			}
			if p.tr.Read != 0 {
				p.tr.Stored, p.tr.Handled = r.at, handled
			}
			s.complete(c, p, mm, ss)
			if cl := s.b.o.Cluster; cl != nil {
				cl.publish(c, mm, ss)
			}
			s.popSend(c)
			if s.b.bk != nil || c.state == protocol.StateQueued { // hooks, the bot, leave-a-message
				done = append(done, *mm)
			}
		}
		for i := range done {
			s.stored(c, &done[i])
		}
	case r.err == nil && r.dup && (n > 1 || r.streamSeq > c.streamSeq):
		// Stored before, after what this node knows: by an earlier attempt
		// whose answer was lost (an ack timeout). Learn them from the
		// stream: learn acks each of these sends as it comes by.
		serials := serialsOf(c, n)
		if err := s.resync(c); err != nil {
			s.b.log.Warn("broker: resync after a stored append failed", "conversation", c.id, "err", err)
		}
		// Those the resync did not reach (cut short) are stored all the
		// same: they stay queued, and the next append's answer (a
		// duplicate again) or a resync settles them.
		for _, serial := range serials {
			if i := indexOfSend(c, serial); i >= 0 {
				c.queue[i].maybe = true
			}
		}
		s.unknownOutcome(c, serials)
	case r.err == nil && r.dup:
		// Stored long before (a retry after a restart, within the
		// duplicate window): the original Ack. Its seq is in memory while
		// the message is in the ring; older, it is read from the stream at
		// the sequence the PubAck names.
		seq, ok := c.dedupe[dedupeKey{p.u.id, p.cmid}]
		if !ok {
			seq = s.storedSeq(c, p, r.streamSeq)
		}
		if seq == 0 {
			// Not found (retention removed it, or the read failed): the
			// message was stored, but its seq is unknown here.
			s.unknownOutcome(c, serialsOf(c, 1))
			break
		}
		s.ackStored(c, p, seq)
		s.popSend(c)
	case errors.Is(r.err, histstore.ErrBatch):
		// Not taken as a batch (nothing stored): one by one.
		for i := range n {
			c.queue[i].solo = true
		}
	case errors.Is(r.err, histstore.ErrConflict):
		// The stream holds messages this shard does not know: another
		// writer's, or this very send's, stored by an attempt whose
		// answer was lost. Catch up (deliver them; learn acks a send it
		// recognises), then retry this one.
		serial := p.serial
		s.b.m.appendConflicts.Inc()
		// A resync cut short (a replica lagging behind the one that
		// answered Last, a timeout) leaves c consistent: the next attempt
		// conflicts again and resyncs the rest.
		err := s.resync(c)
		i := indexOfSend(c, serial)
		if i < 0 {
			break // it was stored, and is answered
		}
		p := &c.queue[i]
		p.attempts++
		// (An earlier attempt of it that timed out stays "maybe": on a
		// replicated stream it may still be a proposal that commits
		// after this resync.)
		limit := maxAppendAttempts
		if s.b.o.Cluster != nil {
			limit = maxClusterAppendAttempts // two writers conflict by design
		}
		if p.attempts >= limit {
			s.b.log.Warn("broker: append conflict", "conversation", c.id, "err", r.err, "resync", err)
			code, msg := unconfirmed(p, protocol.CodeUnavailable, "history out of sync, retry later")
			s.failSend(c, p, code, msg)
			s.removeSend(c, i)
		} else if s.b.o.Cluster != nil {
			// Another node is writing: hand it this conversation's sends
			// rather than racing it (cluster_write.go), even when the
			// resync was cut short (a replica behind, under load): the
			// writer needs nothing from this node to store them, and
			// racing it from behind conflicts again.
			s.startForwarding(c)
		}
	case errors.Is(r.err, histstore.ErrUnavailable):
		// The store (or NATS) answered that it did not take them: nothing
		// stored, no seq consumed.
		for range n {
			p := &c.queue[0]
			code, msg := unconfirmed(p, protocol.CodeUnavailable, "history unavailable, retry later")
			s.failSend(c, p, code, msg)
			s.popSend(c)
		}
	default:
		// Ack timeout, store closed: they may or may not be stored. Kept
		// at the head and appended again unchanged (same seqs, expected
		// stream sequence and message ids): the answer tells. Stored by
		// the first attempt, the retry is a duplicate, or a conflict
		// whose resync brings them; not stored, the first attempt cannot
		// be stored any more (the stream's last sequence moves past the
		// one it expected, and its message id is taken).
		serials := serialsOf(c, n)
		for i := range n {
			c.queue[i].maybe = true
		}
		if errors.Is(r.err, histstore.ErrClosed) {
			// The store is closing (shutdown): no retry.
			for range n {
				s.failSend(c, &c.queue[0], protocol.CodeUnconfirmed, msgUnconfirmed)
				s.popSend(c)
			}
			break
		}
		s.unknownOutcome(c, serials)
	}
	if c.resyncAfter {
		c.resyncAfter = false
		if err := s.resync(c); err != nil {
			s.b.log.Warn("broker: resync after a gap failed", "conversation", c.id, "err", err)
		}
	}
	s.pump(c)
}

// unknownOutcome counts one more unknown outcome for each queued send of
// serials (an append whose answer did not settle it): those past
// maxUnknown, or without a client message id (a retry could not be
// recognised), get CodeUnconfirmed; the others stay queued for a retry.
func (s *shard) unknownOutcome(c *conversation, serials []uint64) {
	for _, serial := range serials {
		i := indexOfSend(c, serial)
		if i < 0 {
			continue
		}
		p := &c.queue[i]
		p.unknowns++
		if p.unknowns >= maxUnknown || p.cmid == "" {
			p.maybe = true
			s.failSend(c, p, protocol.CodeUnconfirmed, msgUnconfirmed)
			s.removeSend(c, i)
		}
	}
}

// complete answers p, now stored as mm (at stream sequence ss, known when
// this node appended it): the Ack (or the API's reply, or the forwarding
// node's answer) to its sender, the Deliver to every other attached
// connection.
func (s *shard) complete(c *conversation, p *pendingSend, mm *message, ss uint64) {
	e := &s.out
	if p.reply != nil {
		p.reply(mm.seq, mm.ts, false, nil)
	}
	if p.remote != nil {
		s.answerRemote(c, p, fwdAnswer{Seq: mm.seq, Stream: ss, TS: mm.ts})
	}
	if p.cl != nil && !p.cl.closed.Load() {
		e.Kind = protocol.KindAck
		e.ID = p.id
		e.Ack = protocol.Ack{ConversationID: c.id, ClientMsgID: mm.cmid, Seq: mm.seq, TimestampMilli: mm.ts}
		s.b.sendTo(p.cl, e)
	}
	e.Kind = protocol.KindDeliver
	e.ID = 0
	e.Deliver = deliverOf(c, mm)
	if p.quiet {
		s.b.fanout(othersThan(c.attached, p.u), nil, e)
	} else {
		s.b.fanoutTraced(c.attached, p.cl, e, p.tr)
	}
	e.Deliver = protocol.Deliver{}
}

// othersThan returns the connections in to that are not u's (a new slice;
// rare path).
func othersThan(to []*client, u *user) []*client {
	out := make([]*client, 0, len(to))
	for _, cl := range to {
		if cl.user.Load() != u {
			out = append(out, cl)
		}
	}
	return out
}

// resync reads the messages stored after c.lastSeq (at most a replay
// page), stores them in the ring, delivers them to every attached
// connection and moves c's sequence numbers to the stream's.
func (s *shard) resync(c *conversation) error {
	h := s.b.o.History
	ctx, cancel := s.ioCtx()
	defer cancel()
	last, ss, ok, err := h.Last(ctx, c.tenant, c.id)
	if err != nil {
		return err
	}
	if !ok {
		// Everything was discarded by retention: continue from our own
		// counter with expected 0.
		c.streamSeq = 0
		return nil
	}
	if last.Seq > c.lastSeq {
		// c.lastSeq moves with every message delivered, so a replay cut
		// short (a timeout under load) leaves c consistent: the messages
		// it did deliver are never delivered twice, the rest come with
		// the next resync. A message that is one of this node's forwarded
		// sends is acked to its sender instead (learn).
		_, err = h.Replay(ctx, c.tenant, c.id, c.lastSeq, 0, func(hm *histstore.Message) bool {
			if hm.Seq > last.Seq {
				return false
			}
			if hm.Seq <= c.lastSeq {
				return true
			}
			s.learn(c, messageOf(hm), 0)
			return true
		})
		if err != nil {
			return err
		}
		if c.lastSeq < last.Seq {
			return fmt.Errorf("broker: resync of %s stopped at seq %d of %d", c.id, c.lastSeq, last.Seq)
		}
	}
	c.streamSeq = ss
	return nil
}

func messageOf(hm *histstore.Message) message {
	return message{
		seq:        hm.Seq,
		senderID:   hm.SenderID,
		senderRole: protocol.Role(hm.SenderRole),
		cmid:       hm.ClientMsgID,
		text:       hm.Text,
		ts:         hm.TimeMilli,
	}
}

// replayDurable sends the stored messages after `after` (up to the last
// visible seq, at most ReplayLimit) to cl from the durable history; it is
// used when the in-memory ring does not reach back to the cursor.
func (s *shard) replayDurable(c *conversation, cl *client, after uint64) {
	if upTo := c.visibleSeq(); upTo > after {
		s.replayStream(c, []*client{cl}, after, upTo, s.b.o.ReplayLimit)
	}
}

// MaxHistoryReplay bounds the messages older than a conversation's ring
// that an assignment or transfer replays from the stream to the agent
// (the newest of them; the REST history API pages through the rest).
const MaxHistoryReplay = 1000

// replayStream sends the stored messages after `after`, up to and
// including upTo, at most limit of them, from the durable history to the
// connections in to, encoding each once per codec. (Seqs retention
// removed are skipped: limit counts messages, not seqs.) A store failure
// is logged and told to each of them (CodeUnavailable), and their
// connections are closed with 1013: a connection left open would get the
// next live messages, whose seqs move the client's cursor past the ones
// the replay did not bring, and the client would never ask for them
// again. Closed, it resumes from its cursor a few seconds later.
func (s *shard) replayStream(c *conversation, to []*client, after, upTo uint64, limit int) {
	ctx, cancel := s.ioCtx()
	defer cancel()
	e := &s.out
	e.Kind = protocol.KindDeliver
	e.ID = 0
	_, err := s.readStream(ctx, c, after, upTo, limit, func(hm *histstore.Message) {
		m := messageOf(hm)
		e.Deliver = deliverOf(c, &m)
		s.b.fanout(to, nil, e)
	})
	e.Deliver = protocol.Deliver{}
	if err != nil {
		s.b.log.Warn("broker: history replay failed", "conversation", c.id, "err", err)
		s.b.m.replayFailures.Inc()
		for _, cl := range to {
			s.fail(cl, 0, protocol.CodeUnavailable, "history unavailable, resume again later")
			cl.peer.Close(netpoll.StatusTryAgainLater, "history unavailable; retry in 2 s")
		}
	}
}

// storedSeq reads the conversation seq of p's original, stored at stream
// sequence ss (0: not found or unreadable; logged).
func (s *shard) storedSeq(c *conversation, p *pendingSend, ss uint64) uint64 {
	ctx, cancel := s.ioCtx()
	defer cancel()
	m, ok, err := s.b.o.History.Get(ctx, c.tenant, c.id, ss)
	switch {
	case err != nil:
		s.b.log.Warn("broker: reading a duplicate's original failed", "conversation", c.id, "stream_seq", ss, "err", err)
		return 0
	case !ok || m.SenderID != p.u.id || m.ClientMsgID != p.cmid:
		return 0
	}
	return m.Seq
}

// errShortRead: the stream's replicas did not show the messages up to the
// seq asked for before the read's deadline.
var errShortRead = errors.New("broker: history read ended before the last visible seq")

// shortReadPause is the pause between two attempts of readStream.
const shortReadPause = 10 * time.Millisecond

// readStream passes to fn the stored messages of c after `after`, up to
// and including upTo, at most limit of them (0: no limit), in order, and
// returns the last seq it passed. History reads are direct gets, which
// any replica of the stream answers: one that has not applied the newest
// messages yet ends the read early without an error (in a cluster after a
// node died, or under load: the stream's Last, answered by another
// replica, named them). Such a read is continued from the last message
// passed until it reaches upTo, the limit, or ctx's deadline
// (errShortRead): a message is never skipped, so a replay followed by
// live deliveries has no gap. Seqs retention removed are skipped (only
// the oldest are removed; a read that reaches a seq past upTo, or a
// conversation retention emptied, ends it).
func (s *shard) readStream(ctx context.Context, c *conversation, after, upTo uint64, limit int, fn func(*histstore.Message)) (uint64, error) {
	last, n := after, 0
	for {
		rem := 0
		if limit > 0 {
			rem = limit - n
		}
		beyond := false // the read reached a seq past upTo: nothing more to get
		info, err := s.b.o.History.Replay(ctx, c.tenant, c.id, last, rem, func(hm *histstore.Message) bool {
			if hm.Seq > upTo {
				beyond = true
				return false
			}
			fn(hm)
			last = hm.Seq
			n++
			return true
		})
		if err != nil {
			return last, err
		}
		if last >= upTo || beyond || (limit > 0 && n >= limit) || info.Last == 0 {
			return last, nil
		}
		s.b.m.shortReads.Inc()
		t := time.NewTimer(shortReadPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return last, fmt.Errorf("%w: %s at seq %d of %d", errShortRead, c.id, last, upTo)
		case <-t.C:
		}
	}
}

// load rebuilds a conversation from the durable stores on a cold start
// (first request or resume naming it). It returns nil if it does not
// exist (or the stores fail: logged).
func (s *shard) load(id string) *conversation {
	b := s.b
	cs := b.o.Conversations
	if cs == nil || !validConvKey(id) {
		return nil
	}
	ctx, cancel := s.ioCtx()
	defer cancel()
	if b.o.Cluster != nil {
		// Subscribe before reading the last message: a message stored
		// later has its notice queued for this shard, one stored earlier
		// is in Last (see also shard.recheck for interest still
		// travelling through the routes).
		c0 := &conversation{id: id}
		s.follow(c0)
		defer func() {
			if c := s.convs[id]; c != nil && c.sub == nil {
				c.sub = c0.sub
				s.recheckLater(c)
			} else {
				s.unfollow(c0)
			}
		}()
	}
	meta, rev, err := cs.Get(ctx, id)
	if cl := b.o.Cluster; cl != nil && (err == nil || errors.Is(err, ErrConvNotFound)) {
		// The watch may have announced a revision the replica that
		// answered has not applied yet (a conversation queued a moment
		// ago by another node): the newer record wins.
		if m, r, ok := cl.open.get(id); ok && r > rev {
			meta, rev, err = m, r, nil
		}
	}
	if err != nil {
		if !errors.Is(err, ErrConvNotFound) {
			b.log.Warn("broker: conversation load failed", "conversation", id, "err", err)
		}
		return nil
	}
	last, ss, ok, err := b.o.History.Last(ctx, meta.Tenant, id)
	if err != nil {
		b.log.Warn("broker: conversation load failed", "conversation", id, "err", err)
		return nil
	}
	c := &conversation{
		id:           meta.ID,
		tenant:       meta.Tenant,
		skill:        meta.Skill,
		prio:         meta.Prio,
		reason:       meta.Reason,
		intent:       meta.Intent,
		summary:      meta.Summary,
		region:       meta.Region,
		language:     meta.Language,
		page:         meta.Page,
		createdMilli: meta.CreatedMilli,
		left:         meta.Left,
		leftMilli:    meta.LeftMilli,
		rev:          rev,
		hist:         newHistory(b.o.HistoryPerConversation, b.o.HistoryBytesPerConversation),
		dedupe:       make(map[dedupeKey]uint64),
	}
	if ok {
		c.lastSeq, c.streamSeq = last.Seq, ss
		// Warm the ring (replays and the dedupe table) with the newest page.
		from := c.lastSeq - min(c.lastSeq, uint64(min(b.o.ReplayLimit, b.o.HistoryPerConversation)))
		got, err := s.readStream(ctx, c, from, c.lastSeq, 0, func(hm *histstore.Message) {
			c.hist.push(messageOf(hm), c.dedupe)
		})
		if errors.Is(err, errShortRead) {
			// The replicas never showed the newest messages in time: c
			// ends at the last one read (its seqs stay contiguous, a
			// replay never skips one), and expects no stream sequence,
			// so that its next append conflicts and resyncs; a notice
			// or attach resyncs too.
			b.log.Warn("broker: conversation loaded short of its last message", "conversation", id, "err", err)
			c.lastSeq, c.streamSeq, err = got, 0, nil
		}
		if err != nil {
			b.log.Warn("broker: conversation load failed", "conversation", id, "err", err)
			return nil
		}
	}
	c.visitor = b.reg.userByID(meta.VisitorID, protocol.RoleVisitor, meta.Tenant, b.now())
	if c.visitor == nil {
		return nil
	}
	if meta.AgentID != "" && meta.State != protocol.StateQueued {
		if c.agent = b.reg.userByID(meta.AgentID, protocol.RoleAgent, meta.Tenant, b.now()); c.agent == nil {
			return nil
		}
		if b.o.Cluster == nil && meta.State != protocol.StateClosed {
			// The dispatcher of a restarted node counts it in the
			// agent's load again (a cluster reads UNIGATE_AGENT_LOAD).
			b.disp.hold(c.agent, c.id, b.o.DefaultAgentCapacity)
		}
	}
	s.convs[c.id] = c
	// The events of its last changes, if a crash came before they were
	// stored: before anybody is told of its state.
	s.repairNotes(c, meta.Hooks)
	s.repairMessages(c)
	s.setState(c, meta.State)
	for _, u := range []*user{c.visitor, c.agent} {
		if u == nil {
			continue
		}
		u.mu.Lock()
		u.convs[c.id] = struct{}{}
		if u == c.visitor && meta.State != protocol.StateClosed {
			u.open++
		}
		u.mu.Unlock()
	}
	switch meta.State {
	case protocol.StateQueued:
		if b.o.Cluster == nil { // in a cluster the watcher queues it
			b.disp.requeue(c.tenant, c.id, s.idx, s.routeInfo(c), "")
		}
	case protocol.StateClosed:
		// Remembered for ResumeTTL from now, like a fresh close.
		c.closedMilli = meta.ClosedMilli
		c.closedAt = b.now()
		s.closed = append(s.closed, c)
	}
	return c
}
