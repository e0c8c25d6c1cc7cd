package broker

import (
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// ctrlKind names a control message between goroutines of the broker.
type ctrlKind uint8

const (
	ctrlItem        ctrlKind = iota + 1 // a client request forwarded by its home shard
	ctrlCreate                          // create a conversation (Open)
	ctrlAssign                          // the dispatcher assigned conv to agent u
	ctrlPosition                        // the queue position of conv is seq
	ctrlAttach                          // attach cl to conv, replay after seq
	ctrlVisitorGone                     // visitor u left for good: close conv
	ctrlAgentGone                       // agent u left for good: queue conv again
	ctrlSweep                           // forget conversations closed long ago
	ctrlAppended                        // a durable append finished (res)
	ctrlCall                            // run call on the shard (integrator API)
	ctrlMeta                            // cluster: another node changed conv's record (meta, seq = revision)
	ctrlBot                             // the bot answered in conv (bot)
	ctrlAuthed                          // the authentication hook answered the hello it (auth)
)

// ctrl is a control message; which fields are set depends on kind.
type ctrl struct {
	kind ctrlKind
	it   *item
	cl   *client
	u    *user
	conv string
	seq  uint64 // cursor (attach) or queue position
	eta  uint32 // ctrlPosition: the wait estimate in seconds
	id   uint64 // envelope id to echo to cl
	open *openReq
	res  *appendResult
	load bool         // attach: rebuild conv from the durable stores if unknown
	call func(*shard) // ctrlCall: runs on the shard, must not block
	meta *ConvMeta    // ctrlMeta
	bot  *botResult   // ctrlBot
	auth *authResult  // ctrlAuthed
	note string       // ctrlAssign: the router's explanation
}

// openReq is an Open on its way from the home shard to the conversation's
// shard. Its strings are owned copies.
type openReq struct {
	skill    string
	prio     uint32
	text     string
	region   string // declared, else from the client address
	language string
	page     string
}

// mailbox is a shard's control inbox. Posting appends under a leaf mutex
// and never blocks; the shard takes the whole batch at once. Its length is
// bounded by the state it describes (see the package documentation).
type mailbox struct {
	mu     sync.Mutex
	q      []ctrl
	spare  []ctrl
	signal chan struct{} // one slot: "the mailbox is not empty"
}

func (m *mailbox) post(c ctrl) {
	m.mu.Lock()
	m.q = append(m.q, c)
	m.mu.Unlock()
	select {
	case m.signal <- struct{}{}:
	default:
	}
}

func (m *mailbox) take() []ctrl {
	m.mu.Lock()
	q := m.q
	m.q, m.spare = m.spare[:0], nil
	m.mu.Unlock()
	return q
}

func (m *mailbox) recycle(q []ctrl) {
	clear(q)
	m.mu.Lock()
	if m.spare == nil && cap(q) <= 1024 {
		m.spare = q[:0]
	}
	m.mu.Unlock()
}

// shard is one conversation worker: a goroutine that owns the
// conversations hashed to it.
type shard struct {
	b   *Broker
	idx int
	// inbox takes the conversation requests of connections past their
	// hello (sends, typing, receipts ...); setup the session-scoped ones
	// (hello, open, presence) and the requests a connection sent before
	// its welcome, in order behind its hello. The shard serves inbox
	// first (see run): a relayed message does not wait behind a storm of
	// hellos.
	inbox chan *item
	setup chan *item
	// chatRun counts the inbox items served in a row while setup had
	// work (shard goroutine only).
	chatRun int
	mbox    mailbox
	// notices receives other nodes' messages of the conversations this
	// shard follows (cluster mode; nil otherwise: never ready).
	notices chan *nats.Msg

	// Owned by the shard goroutine.
	convs  map[string]*conversation
	closed []*conversation // closed conversations, oldest first
	// rechecks are conversations followed a moment ago (cluster mode).
	rechecks []recheck
	out      protocol.Envelope // scratch envelope for replies and deliveries
	// recs: conversations whose record write is in flight (persist).
	recs map[*conversation]struct{}
}

func newShard(b *Broker, idx int) *shard {
	s := &shard{
		b:     b,
		idx:   idx,
		inbox: make(chan *item, b.o.QueueSize),
		setup: make(chan *item, b.o.QueueSize),
		mbox:  mailbox{signal: make(chan struct{}, 1)},
		convs: make(map[string]*conversation),
	}
	if b.o.Cluster != nil {
		s.notices = make(chan *nats.Msg, noticeQueue)
	}
	return s
}

// maxChatRun bounds the inbox items and notices a shard serves in a row
// ahead of waiting session set-up, so hellos are never starved by chat.
const maxChatRun = 32

// run is the shard goroutine. The mailbox is drained before every inbox
// or setup item, so a request forwarded through the mailbox is handled
// before any later request of the same connection that came straight to
// the inbox. Chat comes first: an inbox item is taken before any setup
// item, up to maxChatRun in a row while setup has work.
func (s *shard) run() {
	defer s.b.wg.Done()
	for {
		// Only while setup has work: otherwise every channel is served
		// in the fair select below (a loop that preferred the inbox
		// whenever it had an item would starve other nodes' notices,
		// and the broker's stop, under a steady chat load). Other
		// nodes' messages are chat too.
		if len(s.setup) > 0 && s.chatRun < maxChatRun {
			select {
			case it := <-s.inbox:
				s.chatRun++
				s.drainMailbox()
				s.handle(it)
				continue
			case m := <-s.notices:
				s.chatRun++
				s.drainMailbox()
				s.notice(m)
				continue
			default:
			}
		}
		s.chatRun = 0
		select {
		case it := <-s.inbox:
			s.drainMailbox()
			s.handle(it)
		case it := <-s.setup:
			s.drainMailbox()
			s.handle(it)
		case <-s.mbox.signal:
			s.drainMailbox()
		case m := <-s.notices:
			s.drainMailbox()
			s.notice(m)
		case <-s.b.done:
			s.settleRecords()
			s.stop()
			return
		}
	}
}

// stop answers what is left in the inbox and setup with CodeShuttingDown.
func (s *shard) stop() {
	for {
		var it *item
		select {
		case it = <-s.inbox:
		case it = <-s.setup:
		default:
		}
		if it != nil {
			if it.viaHome {
				it.cl.viaHome.Add(-1)
			}
			s.b.answer(it, protocol.CodeShuttingDown, "server is shutting down")
			continue
		}
		for _, c := range s.mbox.take() {
			if c.it != nil {
				s.b.answer(c.it, protocol.CodeShuttingDown, "server is shutting down")
			}
		}
		return
	}
}

func (s *shard) drainMailbox() {
	for {
		q := s.mbox.take()
		if len(q) == 0 {
			s.mbox.recycle(q)
			return
		}
		for i := range q {
			s.control(&q[i])
		}
		s.mbox.recycle(q)
	}
}

func (s *shard) control(c *ctrl) {
	switch c.kind {
	case ctrlItem:
		s.conversationRequest(c.it)
		putItem(c.it)
	case ctrlCreate:
		s.create(c)
	case ctrlAssign:
		s.assign(c)
	case ctrlPosition:
		s.position(c)
	case ctrlAttach:
		s.attach(c)
	case ctrlVisitorGone:
		s.visitorGone(c)
	case ctrlAgentGone:
		s.agentGone(c)
	case ctrlSweep:
		s.sweep()
		s.runRechecks()
	case ctrlAppended:
		s.appended(c.res)
	case ctrlCall:
		c.call(s)
	case ctrlMeta:
		s.remoteMeta(c)
	case ctrlBot:
		s.botAnswered(c)
	case ctrlAuthed:
		s.authed(c)
	}
}

// handle processes one request from the inbox and recycles it.
func (s *shard) handle(it *item) {
	if it.tr.Read != 0 {
		it.tr.Picked = netpoll.Nanotime()
	}
	switch it.env.Kind {
	case protocol.KindHello:
		if !s.hello(it) {
			return // kept for the authentication hook (ctrlAuthed)
		}
	case protocol.KindOpen:
		s.open(it)
	case protocol.KindPresence:
		s.presence(it)
	default:
		if it.viaHome {
			s.forward(it)
			return
		}
		s.conversationRequest(it)
	}
	putItem(it)
}

// forward handles a conversation request that came through the home
// shard, and recycles it or hands it on: before a hello it is answered
// with CodeNotHello; otherwise it goes to the conversation's shard. The
// in-flight counter drops only after that, so no later request of the
// connection, routed directly, can overtake it.
func (s *shard) forward(it *item) {
	cl := it.cl
	it.viaHome = false
	switch t := s.b.shardFor(convIDOf(&it.env)); {
	case !cl.ready.Load():
		s.fail(cl, it.env.ID, protocol.CodeNotHello, "send hello first")
		putItem(it)
	case t == s:
		s.conversationRequest(it)
		putItem(it)
	default:
		t.mbox.post(ctrl{kind: ctrlItem, it: it})
	}
	cl.viaHome.Add(-1)
}

// fail answers a request of cl with an error.
func (s *shard) fail(cl *client, id uint64, code protocol.Code, msg string) {
	s.out.ID = id
	s.b.sendError(cl, &s.out, code, msg)
}

// conversationRequest dispatches send, typing, read, transfer and close.
func (s *shard) conversationRequest(it *item) {
	cl := it.cl
	u := cl.user.Load()
	if u == nil {
		s.fail(cl, it.env.ID, protocol.CodeNotHello, "send hello first")
		return
	}
	if it.env.Kind == protocol.KindTransfer && u.role != protocol.RoleAgent {
		s.fail(cl, it.env.ID, protocol.CodeForbidden, "only agents transfer conversations")
		return
	}
	c := s.convs[convIDOf(&it.env)]
	if c == nil {
		c = s.load(convIDOf(&it.env))
	}
	if c == nil {
		s.fail(cl, it.env.ID, protocol.CodeUnknownConversation, "no such conversation")
		return
	}
	if !c.participant(u) {
		s.fail(cl, it.env.ID, protocol.CodeNotParticipant, "not a participant of this conversation")
		return
	}
	switch it.env.Kind {
	case protocol.KindSend:
		s.send(c, it)
	case protocol.KindTyping:
		s.typing(c, it)
	case protocol.KindRead:
		s.read(c, it)
	case protocol.KindTransfer:
		s.transfer(c, it)
	case protocol.KindClose:
		s.closeRequest(c, it)
	}
}
