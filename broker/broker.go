package broker

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/limiter"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// Peer is the broker's view of the outbound side of one client
// connection. *netpoll.Conn implements it; tests and benchmarks use an
// in-process recorder. Send and Close must be safe for concurrent use and
// must not block.
type Peer interface {
	// ID returns a process-unique id of the connection (it picks the
	// connection's home shard).
	ID() uint64
	// Send queues a sealed frame and consumes one reference of it, also
	// when it fails.
	Send(f *netpoll.Frame) error
	// Close closes the connection with a WebSocket close code; idempotent.
	Close(code ws.StatusCode, reason string)
}

var (
	_ Peer            = (*netpoll.Conn)(nil)
	_ netpoll.Handler = (*Broker)(nil)
)

// Limits enforced on the event loop.
const (
	// maxMalformed is the number of undecodable messages after which a
	// connection is closed with 1008.
	maxMalformed = 10
	// maxViaHome bounds the requests of one connection in flight through its
	// home shard (sent before its hello was processed).
	maxViaHome = 64
	// maxPooledBuf bounds the buffers kept in the item pool.
	maxPooledBuf = 64 << 10
)

// codecs are the codecs in use; a client's ci indexes this table, and a
// fan-out encodes at most once per entry.
var codecs = [...]protocol.Codec{protocol.Proto, protocol.JSON}

const numCodecs = len(codecs)

// Broker is the in-memory chat broker. Create it with New; it implements
// netpoll.Handler. All methods are safe for concurrent use.
type Broker struct {
	o      Options
	log    *slog.Logger
	signer *token.Signer
	shards []*shard
	disp   *dispatcher
	reg    registry
	m      *brokerMetrics

	started   time.Time
	ctx       context.Context // cancelled by Close (cluster watch)
	cancel    context.CancelFunc
	done      chan struct{}
	wg        sync.WaitGroup
	closing   atomic.Bool
	closeOnce sync.Once

	clusterReady atomic.Bool // the conversation watch delivered the initial records

	conns      atomic.Int64
	sessions   atomic.Int64
	convStates [protocol.StateClosed + 1]atomic.Int64

	rates atomic.Pointer[updateRates] // Options.TypingRate…, compiled; SetUpdateRates
	sec   *secureBroker               // Options.Secure; nil: plaintext only (secure.go)
	bk    *backendRun                 // Options.Backends; nil: none (backends.go)
}

// updateRates are the compiled typing and presence rates.
type updateRates struct{ typing, presence limiter.Rate }

// SetUpdateRates replaces the typing (and read-receipt) and presence rates
// of every connection (a reload); zero or negative rates mean no limit.
// Buckets keep their state.
func (b *Broker) SetUpdateRates(typingRate float64, typingBurst int, presenceRate float64, presenceBurst int) {
	b.rates.Store(&updateRates{
		typing:   limiter.NewRate(typingRate, typingBurst),
		presence: limiter.NewRate(presenceRate, presenceBurst),
	})
}

// New returns a started Broker: its shards and janitor are running.
func New(o Options) (*Broker, error) {
	b, err := newBroker(o)
	if err != nil {
		return nil, err
	}
	b.start()
	return b, nil
}

// newBroker builds a Broker without starting its goroutines (tests use it
// to fill an inbox deterministically).
func newBroker(o Options) (*Broker, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Broker{
		o:       o,
		started: o.Now(),
		log:     o.Logger,
		signer:  o.Signer,
		done:    make(chan struct{}),
		reg: registry{
			users:    make(map[string]*user),
			sessions: make(map[string]*session),
		},
	}
	b.SetUpdateRates(o.TypingRate, o.TypingBurst, o.PresenceRate, o.PresenceBurst)
	b.shards = make([]*shard, o.Shards)
	for i := range b.shards {
		b.shards[i] = newShard(b, i)
	}
	b.disp = newDispatcher(o.MaxQueue, func(i int, c ctrl) { b.shards[i].mbox.post(c) })
	b.disp.rule = posRule{exact: uint32(min(uint64(o.PositionExact), math.MaxUint32)), step: uint32(min(uint64(o.PositionStep), math.MaxUint32))}
	b.disp.shardOf = func(conv string) int { return b.shardFor(conv).idx }
	b.disp.mirror = o.Cluster != nil
	if o.Cluster != nil {
		o.Cluster.setResumeTTL(o.ResumeTTL) // before any seen record is written
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.m = newMetrics(b)
	b.bk = newBackendRun(o.Backends, b.m.set, o.Now)
	if b.bk != nil {
		b.disp.useRouters(b.bk.o.Router, b.bk.o.RouterPlugin, b.bk.submit, b.bk.o.Workers, b.m.set)
	}
	if b.sec, err = newSecure(b, o.Secure); err != nil {
		return nil, err
	}
	return b, nil
}

// start runs the shards and the janitor.
func (b *Broker) start() {
	b.wg.Add(len(b.shards) + 1)
	for _, s := range b.shards {
		go s.run()
	}
	go b.janitor()
	if b.o.Cluster != nil {
		b.wg.Add(2)
		go b.watchConversations()
		go b.heartbeat()
	}
	b.sec.start()
	b.bk.start(b)
}

// Close stops the shards and the janitor and waits for them. Requests
// that arrive afterwards are answered with CodeShuttingDown; connections
// are left open (netpoll's Stop closes them). Close is idempotent.
func (b *Broker) Close() {
	b.closeOnce.Do(func() {
		b.closing.Store(true)
		close(b.done)
		b.cancel()
		b.wg.Wait()
	})
}

// Metrics returns the broker's metrics (unigate_broker_*). Register it
// with metrics.RegisterSet to expose it on the admin endpoint.
func (b *Broker) Metrics() *metrics.Set { return b.m.set }

func (b *Broker) now() time.Time { return b.o.Now() }

func (b *Broker) ioCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, ioTimeout)
}

// ClusterReady reports whether this node is in step with the cluster: the
// conversation watch delivered every existing record (always true
// without a cluster).
func (b *Broker) ClusterReady() bool { return b.o.Cluster == nil || b.clusterReady.Load() }

func (b *Broker) shardFor(conv string) *shard {
	return b.shards[hashString(conv)%uint32(len(b.shards))]
}

// client is one connection as the broker knows it.
// establisher is implemented by peers that enforce an application
// handshake deadline (netpoll.Conn): the broker calls MarkEstablished once
// the hello is answered with a welcome.
type establisher interface{ MarkEstablished() }

// handshakeReceiver is implemented by peers whose handshake deadline
// should not close a client whose hello arrived and waits for the broker
// (netpoll.Conn.HandshakeReceived).
type handshakeReceiver interface{ HandshakeReceived() }

type client struct {
	peer  Peer
	codec protocol.Codec
	ci    uint8     // index of codec in codecs
	op    ws.OpCode // opcode of the codec's frames
	home  *shard

	// Event-loop-only (the goroutine that calls receive).
	direct    bool // conversation requests go straight to their shard
	malformed int
	typing    limiter.Bucket // typing and read receipts
	presence  limiter.Bucket
	dropped   limiter.Bucket // updates dropped over their rate: a flood past it closes

	// Shared.
	ready   atomic.Bool          // hello processed: user and sess are set
	closed  atomic.Bool          // OnClose ran
	viaHome atomic.Int32         // conversation requests in flight through the home shard
	user    atomic.Pointer[user] // set by hello
	sess    *session             // guarded by user.mu
	// admitted is what hello took from Options.Limits; whoever swaps it
	// to nil (OnClose, or hello finding the connection closed) releases it.
	admitted atomic.Pointer[admission]
	sec      secureClient // the secure channel (secure.go)
}

// admission is one hello's share of Options.Limits: an identity or, when
// identity is empty, an anonymous session of ip.
type admission struct {
	identity string
	ip       netip.Addr
}

// newClient registers a connection speaking subprotocol; nil if the
// subprotocol has no codec.
func (b *Broker) newClient(p Peer, subprotocol string) *client {
	codec := protocol.ForSubprotocol(subprotocol)
	if codec == nil {
		return nil
	}
	cl := &client{peer: p, codec: codec, op: ws.OpText, home: b.shards[p.ID()%uint64(len(b.shards))]}
	if codec.Binary() {
		cl.op = ws.OpBinary
	}
	for i, c := range codecs {
		if c.Subprotocol() == codec.Subprotocol() {
			cl.ci = uint8(i)
		}
	}
	b.conns.Add(1)
	return cl
}

// OnOpen implements netpoll.Handler.
func (b *Broker) OnOpen(c *netpoll.Conn) {
	cl := b.newClient(c, c.Subprotocol())
	if cl == nil {
		c.Close(ws.StatusProtocolError, "unsupported subprotocol")
		return
	}
	c.SetData(cl)
}

// OnMessage implements netpoll.Handler.
func (b *Broker) OnMessage(c *netpoll.Conn, _ ws.OpCode, payload []byte) {
	if cl, _ := c.Data().(*client); cl != nil {
		b.receiveAt(cl, payload, c.ReadAt())
	}
}

// OnClose implements netpoll.Handler.
func (b *Broker) OnClose(c *netpoll.Conn, _ error) {
	if cl, _ := c.Data().(*client); cl != nil {
		b.gone(cl)
	}
}

// item is one client request on its way to a shard: the only copy of the
// payload and the envelope decoded from it (whose strings may alias buf).
type item struct {
	cl      *client
	viaHome bool // counted in cl.viaHome
	buf     []byte
	env     protocol.Envelope
	ident   *token.Claims // a hello's identity from the authentication hook
	// tr times a Send's relay (netpoll.Trace): Read on the event loop,
	// Picked by the shard that takes it from its inbox.
	tr netpoll.Trace
}

var itemPool = sync.Pool{New: func() any { return new(item) }}

func getItem(cl *client) *item {
	it := itemPool.Get().(*item)
	it.cl = cl
	return it
}

func putItem(it *item) {
	it.env.Reset() // drop references into buf and decoded strings
	it.cl = nil
	it.viaHome = false
	it.ident = nil
	it.tr = netpoll.Trace{}
	if cap(it.buf) > maxPooledBuf {
		it.buf = nil
	}
	itemPool.Put(it)
}

// convIDOf returns the conversation a conversation-scoped request names.
func convIDOf(e *protocol.Envelope) string {
	switch e.Kind {
	case protocol.KindSend:
		return e.Send.ConversationID
	case protocol.KindTyping:
		return e.Typing.ConversationID
	case protocol.KindRead:
		return e.Read.ConversationID
	case protocol.KindTransfer:
		return e.Transfer.ConversationID
	case protocol.KindClose:
		return e.Close.ConversationID
	}
	return ""
}

// receive is receiveAt with the message read now (tests, benchmarks).
func (b *Broker) receive(cl *client, payload []byte) {
	b.receiveAt(cl, payload, netpoll.Nanotime())
}

// receiveAt is the event-loop half of OnMessage: copy, decode, route. It
// never blocks. It must be called by one goroutine at a time per client.
// readAt (netpoll.Nanotime) is when the loop read the message: the start
// of its relay trace.
func (b *Broker) receiveAt(cl *client, payload []byte, readAt int64) {
	it := getItem(cl)
	it.tr.Read = readAt
	if len(payload) > int(b.o.MaxMessageBytes) {
		b.malformed(it, protocol.CodeTooLarge, "message too large")
		return
	}
	it.buf = append(it.buf[:0], payload...)
	if b.sec != nil && !b.sec.inbound(it) {
		return // a handshake message, or the connection failed
	}
	if err := cl.codec.Decode(it.buf, &it.env); err != nil {
		code, msg := protocol.CodeMalformed, "malformed envelope"
		var pe *protocol.Error
		if errors.As(err, &pe) {
			code, msg = pe.Code, pe.Message
		}
		b.malformed(it, code, msg)
		return
	}
	if b.closing.Load() {
		b.answer(it, protocol.CodeShuttingDown, "server is shutting down")
		return
	}
	if !b.withinRate(it) {
		return
	}
	var target chan *item
	switch it.env.Kind {
	case protocol.KindHello, protocol.KindOpen, protocol.KindPresence:
		target = cl.home.setup
		if it.env.Kind == protocol.KindHello && !cl.ready.Load() {
			if hr, ok := cl.peer.(handshakeReceiver); ok {
				hr.HandshakeReceived()
			}
		}
	case protocol.KindSend, protocol.KindTyping, protocol.KindRead, protocol.KindTransfer, protocol.KindClose:
		conv := convIDOf(&it.env)
		if conv == "" {
			b.answer(it, protocol.CodeMissingField, "conversation_id is required")
			return
		}
		if !cl.direct && cl.ready.Load() && cl.viaHome.Load() == 0 {
			cl.direct = true
		}
		if cl.direct {
			target = b.shardFor(conv).inbox
			break
		}
		if cl.viaHome.Load() >= maxViaHome {
			b.answer(it, protocol.CodeRateLimited, "too many requests before the welcome")
			return
		}
		cl.viaHome.Add(1)
		it.viaHome = true
		target = cl.home.setup // behind the hello
	default:
		b.malformed(it, protocol.CodeUnknownKind, "a client may not send this kind")
		return
	}
	select {
	case target <- it:
	default:
		if it.viaHome {
			cl.viaHome.Add(-1)
		}
		b.m.overload.Inc()
		b.answer(it, protocol.CodeOverloaded, "server busy, retry later")
	}
}

// withinRate applies the typing, read-receipt and presence rates on the
// event loop; it consumes it and returns false for an update over its
// rate, and closes a connection that keeps flooding (1008).
func (b *Broker) withinRate(it *item) bool {
	cl := it.cl
	var bucket *limiter.Bucket
	var rate limiter.Rate
	rates := b.rates.Load()
	switch it.env.Kind {
	case protocol.KindTyping, protocol.KindRead:
		bucket, rate = &cl.typing, rates.typing
	case protocol.KindPresence:
		bucket, rate = &cl.presence, rates.presence
	default:
		return true
	}
	now := limiter.Now()
	if ok, _ := bucket.Allow(rate, now, 1); ok {
		return true
	}
	b.m.updatesDropped.Inc()
	if ok, _ := cl.dropped.Allow(rates.typing, now, 1); !ok {
		b.m.floodCloses.Inc()
		putItem(it)
		cl.peer.Close(ws.StatusPolicyViolation, "update flood: typing, receipts or presence far over their rate")
		return false
	}
	if it.env.ID == 0 {
		putItem(it) // typing indicators usually carry no id: nothing to answer
		return false
	}
	b.answer(it, protocol.CodeRateLimited, "updates too fast, this one was dropped")
	return false
}

// malformed answers an undecodable request and closes the connection
// after maxMalformed of them.
func (b *Broker) malformed(it *item, code protocol.Code, msg string) {
	cl := it.cl
	b.answer(it, code, msg)
	cl.malformed++
	if cl.malformed == maxMalformed {
		b.m.malformedCloses.Inc()
		cl.peer.Close(ws.StatusPolicyViolation, "too many malformed messages")
	}
}

// answer replies to the request in it with an error, reusing its envelope,
// and recycles it.
func (b *Broker) answer(it *item, code protocol.Code, msg string) {
	id := it.env.ID
	it.env.Reset()
	it.env.ID = id
	b.sendError(it.cl, &it.env, code, msg)
	putItem(it)
}

// sendError sends an Error envelope (built in env, whose ID is kept) to cl
// and counts it.
func (b *Broker) sendError(cl *client, env *protocol.Envelope, code protocol.Code, msg string) {
	env.Kind = protocol.KindError
	env.Error = protocol.Error{Code: code, Message: msg, Temporary: code.Temporary()}
	b.m.countError(code)
	b.sendTo(cl, env)
}

// sendTo encodes env for cl and queues it.
func (b *Broker) sendTo(cl *client, env *protocol.Envelope) {
	f := b.encode(cl.ci, env)
	if f != nil {
		_ = cl.peer.Send(f)
	}
}

// encode builds a sealed frame of env for codec ci, or nil (and a log
// line: an envelope the server built is invalid) on error.
func (b *Broker) encode(ci uint8, env *protocol.Envelope) *netpoll.Frame {
	f := netpoll.AcquireFrame()
	var err error
	f.B, err = codecs[ci].AppendEncode(f.B, env)
	if err != nil {
		f.Release()
		b.m.encodeErrors.Inc()
		b.log.Error("broker: cannot encode envelope", "kind", env.Kind.String(), "err", err)
		return nil
	}
	if codecs[ci].Binary() {
		f.Seal(ws.OpBinary)
	} else {
		f.Seal(ws.OpText)
	}
	return f
}

// fanout sends env to every live client in conns except skip, encoding it
// once per codec in use among them.
func (b *Broker) fanout(conns []*client, skip *client, env *protocol.Envelope) {
	b.fanoutTraced(conns, skip, env, netpoll.Trace{})
}

// fanoutTraced is fanout with the relay trace tr (a delivered chat
// message) on its frames; Queued is stamped here. A zero tr.Read traces
// nothing.
func (b *Broker) fanoutTraced(conns []*client, skip *client, env *protocol.Envelope, tr netpoll.Trace) {
	if tr.Read != 0 {
		tr.Queued = netpoll.Nanotime()
	}
	var frames [numCodecs]*netpoll.Frame
	var failed [numCodecs]bool
	for _, cl := range conns {
		if cl == skip || cl.closed.Load() {
			continue
		}
		f := frames[cl.ci]
		if f == nil {
			if failed[cl.ci] {
				continue
			}
			if f = b.encode(cl.ci, env); f == nil {
				failed[cl.ci] = true
				continue
			}
			f.Trace = tr
			frames[cl.ci] = f
		}
		f.Retain()
		_ = cl.peer.Send(f)
	}
	for _, f := range frames {
		if f != nil {
			f.Release()
		}
	}
}

// Stats is a snapshot of the broker's counters. Conversation counts are by
// state; closed conversations are counted until they are forgotten
// (ResumeTTL after closing).
type Stats struct {
	Connections              int64  // live connections
	Sessions                 int64  // sessions, attached or resumable
	ConversationsQueued      int64  // waiting for an agent
	ConversationsAssigned    int64  // with an agent
	ConversationsTransferred int64  // with an agent, after a transfer
	ConversationsClosed      int64  // closed, not yet forgotten
	AgentsOnline             int64  // agents with status online
	QueueLength              int64  // waiting conversations, all tenants
	MessagesRelayed          uint64 // chat messages stored and delivered
	DroppedOverload          uint64 // requests refused with CodeOverloaded
}

// Stats returns the current counters. It only reads atomics.
func (b *Broker) Stats() Stats {
	return Stats{
		Connections:              b.conns.Load(),
		Sessions:                 b.sessions.Load(),
		ConversationsQueued:      b.convStates[protocol.StateQueued].Load(),
		ConversationsAssigned:    b.convStates[protocol.StateAssigned].Load(),
		ConversationsTransferred: b.convStates[protocol.StateTransferred].Load(),
		ConversationsClosed:      b.convStates[protocol.StateClosed].Load(),
		AgentsOnline:             b.disp.online.Load(),
		QueueLength:              b.disp.queueLen.Load(),
		MessagesRelayed:          b.m.relayed.Get(),
		DroppedOverload:          b.m.overload.Get(),
	}
}
