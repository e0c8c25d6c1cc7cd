package broker

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// The application-layer secure channel (package crypto) on the broker's
// connections; docs/protocol.md, "Encrypted connections", is the contract.
//
// A connection that wants the channel sends secure{ClientHello} as its
// first envelope. The event loop hands it to a handshake worker (SM2
// signatures and ML-KEM never run on an event loop); the worker answers
// secure{ServerHello} and publishes the handshake state to the loop
// through secureConn.phase. The client's secure{Finished} is checked on the
// loop (HMACs and HKDF only): the loop creates the record layer, installs
// it as the connection's netpoll.Sealer with the NewSessionTicket as the
// unsealed preamble, and from then on
//
//   - inbound: the loop takes the record out of each secure{record}
//     (securewire.go: straight from the bytes for the shape clients send,
//     the codec otherwise), opens it in the item's buffer (Open is ~1 µs
//     and the loop is the connection's only reader) and the plaintext, the
//     inner envelope, takes the normal path (decode, route);
//   - outbound: every data frame queued on the connection, including the
//     frames a fan-out shares between connections, is sealed by
//     secureConn.SealFrame under netpoll's send lock, so records are sealed
//     in write order (their sequence numbers are implicit).
//
// Anything else on an encrypted connection (a plaintext envelope, a record
// that does not open, a handshake message out of order) closes it.

// SecureOptions enables the secure channel; see Options.Secure.
type SecureOptions struct {
	// Server is the handshake configuration: suites, identity keys or
	// certificates, tickets (Tickets and Seen), rekey limit. Required. When
	// Tickets is set and Seen is nil, Seen is the session cache
	// (Options.Sessions) when there is one, else an in-memory set: single
	// use per node. When Seen is set (the cluster's set,
	// broker/ticketstore.SeenSet) and there is a session cache, the cache
	// is asked first: a ticket this node already saw is refused without a
	// round trip to the shared set, which decides every other ticket.
	Server *crypto.ServerConfig

	// Required refuses plaintext connections: a first envelope that is not
	// secure gets error CodeForbidden and close 1008.
	Required bool

	// RequiredTenants refuses a plaintext hello naming one of these
	// tenants (through its token, its resumed session or, anonymously, the
	// hello's tenant): error CodeForbidden and close 1008.
	RequiredTenants []string

	// Workers run the server side of ClientHellos. Default GOMAXPROCS.
	Workers int

	// QueueSize bounds the ClientHellos waiting for a worker; one more
	// closes its connection with 1013 (try again later). Default 1024.
	QueueSize int

	// TicketRotation, when positive, rotates Server.Tickets at this period
	// (keep it at least the ticket lifetime divided by the ring's size
	// minus one, or live tickets stop opening). Leave it 0 when the ring
	// is shared and rotated by broker/ticketstore.Ring.
	TicketRotation time.Duration
}

// Defaults of SecureOptions.
const DefaultSecureQueueSize = 1024

// Phases of a secureConn.
const (
	phaseHello    uint32 = iota // the ClientHello is with a worker
	phaseFinished               // ServerHello sent: waiting for the client's Finished
	phaseOpen                   // established: records both ways
	phaseFailed                 // closed after a failure
)

// secureBroker is the channel's shared state.
type secureBroker struct {
	b        *Broker
	o        SecureOptions
	tenants  map[string]bool
	jobs     chan *item
	m        secureMetrics
	failures sync.Map // crypto.Code → *metrics.Counter, for codes not pre-registered
}

type secureMetrics struct {
	handshakes     map[string]*metrics.Counter // suite/mode → counter
	failures       map[crypto.Code]*metrics.Counter
	plaintext      *metrics.Counter // plaintext envelope on an encrypted connection
	refused        *metrics.Counter // plaintext refused by Required / RequiredTenants
	overload       *metrics.Counter
	ticketsRefused map[crypto.Code]*metrics.Counter // why an offered ticket was not used
}

// secureClient is the per-client part, a field of client.
type secureClient struct {
	first bool                       // event loop only: the first envelope was seen
	st    atomic.Pointer[secureConn] // set on the loop when a ClientHello is accepted
}

// secureConn is one connection's channel.
type secureConn struct {
	sb    *secureBroker
	cl    *client
	phase atomic.Uint32
	hs    *crypto.ServerHandshake // written by the worker before phaseFinished, then loop-only
	conn  *crypto.Conn            // Open on the loop; Seal and Compact under netpoll's send lock
}

// sealable is the optional Peer method that installs a netpoll.Sealer
// (*netpoll.Conn has it).
type sealable interface {
	SetSealer(s netpoll.Sealer, preamble *netpoll.Frame) error
}

var _ sealable = (*netpoll.Conn)(nil)

// newSecure checks o and builds the channel's state; nil for nil o.
func newSecure(b *Broker, o *SecureOptions) (*secureBroker, error) {
	if o == nil {
		return nil, nil
	}
	if o.Server == nil {
		return nil, errors.New("broker: Secure.Server is nil")
	}
	sb := &secureBroker{b: b, o: *o, tenants: map[string]bool{}}
	if sb.o.Workers <= 0 {
		sb.o.Workers = runtime.GOMAXPROCS(0)
	}
	if sb.o.QueueSize <= 0 {
		sb.o.QueueSize = DefaultSecureQueueSize
	}
	if cfg := sb.o.Server; cfg.Tickets != nil {
		c := *cfg
		switch {
		case c.Seen != nil && b.o.Sessions != nil:
			c.Seen = &localFirstSeen{local: &cacheSeenSet{c: b.o.Sessions, now: b.o.Now}, shared: c.Seen}
		case c.Seen != nil:
		case b.o.Sessions != nil:
			c.Seen = &cacheSeenSet{c: b.o.Sessions, now: b.o.Now}
		default:
			c.Seen = crypto.NewMemorySeenSet(b.o.Now)
		}
		sb.o.Server = &c
	}
	for _, t := range o.RequiredTenants {
		sb.tenants[t] = true
	}
	sb.jobs = make(chan *item, sb.o.QueueSize)
	set := b.m.set
	m := &sb.m
	m.handshakes = map[string]*metrics.Counter{}
	suites := sb.o.Server.Suites
	if suites == nil {
		suites = crypto.DefaultSuites
	}
	for _, s := range suites {
		for _, mode := range []string{"full", "resumed"} {
			m.handshakes[s.Name+"/"+mode] = set.NewCounter(`unigate_broker_secure_handshakes_total{suite="` + s.Name + `",mode="` + mode + `"}`)
		}
	}
	m.failures = map[crypto.Code]*metrics.Counter{}
	for _, c := range []crypto.Code{
		crypto.CodeMalformed, crypto.CodeUnsupportedVer, crypto.CodeNoCommonSuite, crypto.CodeBadKeyShare,
		crypto.CodeBadFinished, crypto.CodeBadBinder, crypto.CodeUnexpectedMessage,
		crypto.CodeRecordAuth, crypto.CodeRecordTooShort, crypto.CodeRecordType, crypto.CodeClosed, crypto.CodeInternal,
	} {
		m.failures[c] = set.NewCounter(failureMetric(c))
	}
	m.plaintext = set.NewCounter(`unigate_broker_secure_plaintext_closes_total`)
	m.refused = set.NewCounter(`unigate_broker_secure_required_refusals_total`)
	m.overload = set.NewCounter(`unigate_broker_secure_handshake_overload_total`)
	m.ticketsRefused = map[crypto.Code]*metrics.Counter{}
	for c, reason := range map[crypto.Code]string{
		crypto.CodeTicketInvalid: "invalid", crypto.CodeTicketExpired: "expired",
		crypto.CodeTicketReused: "reused", crypto.CodeTicketUnavailable: "unavailable",
	} {
		m.ticketsRefused[c] = set.NewCounter(`unigate_broker_secure_tickets_refused_total{reason="` + reason + `"}`)
	}
	return sb, nil
}

func failureMetric(c crypto.Code) string {
	return `unigate_broker_secure_failures_total{reason="` + c.String() + `"}`
}

// start runs the handshake workers and the ticket rotation; they stop with
// the broker.
func (sb *secureBroker) start() {
	if sb == nil {
		return
	}
	b := sb.b
	b.wg.Add(sb.o.Workers)
	for range sb.o.Workers {
		go func() {
			defer b.wg.Done()
			for {
				select {
				case it := <-sb.jobs:
					sb.serverHello(it)
				case <-b.done:
					return
				}
			}
		}()
	}
	if k := sb.o.Server.Tickets; k != nil && sb.o.TicketRotation > 0 {
		b.wg.Go(func() {
			t := time.NewTicker(sb.o.TicketRotation)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					if err := k.Rotate(); err != nil {
						b.log.Error("broker: ticket key not rotated", "err", err)
					}
				case <-b.done:
					return
				}
			}
		})
	}
}

// inbound runs on the event loop for every message of every connection,
// with it.buf holding a copy of the payload, before it is decoded. It
// returns true when the normal path goes on with it.buf (a plaintext
// connection's envelope, or the plaintext of a record moved into it.buf);
// false when it consumed it (a handshake message, or a failure).
func (sb *secureBroker) inbound(it *item) bool {
	cl := it.cl
	sc := cl.sec.st.Load()
	if sc == nil {
		if cl.sec.first {
			return true // a plaintext connection
		}
		cl.sec.first = true
		if err := cl.codec.Decode(it.buf, &it.env); err != nil {
			return true // the normal path answers it
		}
		if it.env.Kind != protocol.KindSecure {
			if sb.o.Required {
				sb.m.refused.Inc()
				id := it.env.ID
				it.env.Reset()
				it.env.ID = id
				sb.b.sendError(cl, &it.env, protocol.CodeForbidden, "this server accepts encrypted connections only (docs/protocol.md, Encrypted connections)")
				putItem(it)
				cl.peer.Close(ws.StatusPolicyViolation, "encryption required")
				return false
			}
			return true
		}
		sc = &secureConn{sb: sb, cl: cl}
		cl.sec.st.Store(sc)
		select {
		case sb.jobs <- it:
		default:
			sb.m.overload.Inc()
			sc.phase.Store(phaseFailed)
			putItem(it)
			cl.peer.Close(netpoll.StatusTryAgainLater, "handshake queue full; retry in 1 s")
		}
		return false
	}
	// The record: straight from the bytes when the envelope has the shape
	// every client sends (securewire.go), else through the codec. For JSON
	// it is base64-decoded into a pooled scratch buffer (bp).
	var data []byte
	var bp *[]byte
	ok := false
	if cl.codec.Binary() {
		data, ok = secureRecordProto(it.buf)
	} else {
		bp = scratchPool.Get().(*[]byte)
		if data, ok = secureRecordJSON((*bp)[:0], it.buf); !ok {
			putScratch(bp, data)
			bp = nil
		}
	}
	if !ok {
		if err := cl.codec.Decode(it.buf, &it.env); err != nil || it.env.Kind != protocol.KindSecure {
			putItem(it)
			if sc.phase.Swap(phaseFailed) != phaseFailed {
				sb.m.plaintext.Inc()
				cl.peer.Close(ws.StatusProtocolError, "secure channel: plaintext envelope on an encrypted connection")
			}
			return false
		}
		data = it.env.Secure.Data
	}
	switch sc.phase.Load() {
	case phaseOpen:
		var err error
		if bp != nil {
			// Open from the scratch buffer straight into it.buf, where the
			// normal path decodes the inner envelope: it.buf is at least
			// as long as the base64 text, longer than the plaintext.
			it.buf, err = sc.conn.Open(it.buf[:0], data)
			putScratch(bp, data)
		} else {
			// Open in place: the AEAD's output exactly overlaps its input
			// (the ciphertext after the record's type byte); then move the
			// plaintext to the start of it.buf.
			var pt []byte
			if len(data) > 0 {
				pt, err = sc.conn.Open(data[1:1], data)
			} else {
				_, err = sc.conn.Open(nil, data)
			}
			if err == nil {
				it.buf = it.buf[:copy(it.buf[:cap(it.buf)], pt)]
			}
		}
		if err != nil {
			putItem(it)
			sc.fail(err)
			return false
		}
		return true
	case phaseFinished:
		sc.finished(data)
	case phaseHello:
		sc.fail(&crypto.Error{Code: crypto.CodeUnexpectedMessage, Op: "secure envelope before the ServerHello"})
	default: // failed: the connection is closing
	}
	if bp != nil {
		putScratch(bp, data)
	}
	putItem(it)
	return false
}

// serverHello runs on a worker: the server's half of the key agreement and
// the signature, then the ServerHello.
func (sb *secureBroker) serverHello(it *item) {
	cl := it.cl
	sc := cl.sec.st.Load()
	defer putItem(it)
	if cl.closed.Load() {
		return
	}
	hs := crypto.NewServerHandshake(sb.o.Server)
	sh, err := hs.HandleClientHello(it.env.Secure.Data)
	if err != nil {
		sc.fail(err)
		return
	}
	if err := hs.TicketError(); err != nil {
		if c := sb.m.ticketsRefused[crypto.CodeOf(err)]; c != nil {
			c.Inc()
		}
	}
	sc.hs = hs
	if !sc.phase.CompareAndSwap(phaseHello, phaseFinished) { // publishes hs to the event loop
		return // failed meanwhile (an envelope before the ServerHello)
	}
	sb.sendHandshake(cl, sh)
}

// finished runs on the event loop: the client's Finished, then the record
// layer is installed and the ticket sent.
func (sc *secureConn) finished(msg []byte) {
	sb, cl := sc.sb, sc.cl
	conn, nst, err := sc.hs.HandleClientFinished(msg)
	sc.hs = nil
	if err != nil {
		sc.fail(err)
		return
	}
	sp, ok := cl.peer.(sealable)
	if !ok {
		sc.fail(&crypto.Error{Code: crypto.CodeInternal, Op: "the connection cannot seal frames"})
		return
	}
	sc.conn = conn
	var pre *netpoll.Frame
	if nst != nil {
		if pre = sb.handshakeFrame(cl, nst); pre == nil {
			sc.fail(&crypto.Error{Code: crypto.CodeInternal, Op: "new session ticket"})
			return
		}
	}
	if err := sp.SetSealer(sc, pre); err != nil {
		sc.phase.Store(phaseFailed)
		return
	}
	sc.phase.Store(phaseOpen)
	mode := "full"
	if conn.Resumed() {
		mode = "resumed"
	}
	if c := sb.m.handshakes[conn.Suite().Name+"/"+mode]; c != nil {
		c.Inc()
	}
}

// fail counts a channel failure and closes the connection with the close
// code docs/protocol.md maps its crypto code to. Nothing secret is in the
// reason: the code's name and number.
func (sc *secureConn) fail(err error) {
	if sc.phase.Swap(phaseFailed) == phaseFailed {
		return
	}
	code := crypto.CodeInternal
	var ce *crypto.Error
	if errors.As(err, &ce) {
		code = ce.Code
	}
	sc.sb.countFailure(code)
	sc.cl.peer.Close(SecureCloseCode(code), fmt.Sprintf("secure channel: %s (crypto %d)", code, uint8(code)))
}

func (sb *secureBroker) countFailure(code crypto.Code) {
	if c := sb.m.failures[code]; c != nil {
		c.Inc()
		return
	}
	sb.b.m.set.GetOrCreateCounter(failureMetric(code)).Inc()
}

// SecureCloseCode maps a crypto failure to the WebSocket close code the
// gateway closes with (docs/protocol.md, "Encrypted connections"): 1008
// when the server's policy refuses (no suite it allows), 1011 for its own
// failures, 1002 for everything the peer got wrong or an attacker bent
// (malformed or out-of-order handshake messages, bad Finished or binder,
// records that do not open, a close record).
func SecureCloseCode(code crypto.Code) ws.StatusCode {
	switch {
	case code == crypto.CodeNoCommonSuite:
		return ws.StatusPolicyViolation
	case code >= crypto.CodeConfig:
		return ws.StatusInternalServerError
	case code == crypto.CodeClosed:
		return ws.StatusNormalClosure
	}
	return ws.StatusProtocolError
}

// sendHandshake sends a handshake message (ServerHello) as an unsealed
// secure envelope.
func (sb *secureBroker) sendHandshake(cl *client, msg []byte) {
	if f := sb.handshakeFrame(cl, msg); f != nil {
		_ = cl.peer.Send(f)
	}
}

func (sb *secureBroker) handshakeFrame(cl *client, msg []byte) *netpoll.Frame {
	env := protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: msg}}
	return sb.b.encode(cl.ci, &env)
}

// secureTag is the protobuf tag of Envelope.secure (field 24, bytes).
var secureTag = protowire.AppendTag(nil, protowire.Number(protocol.KindSecure), protowire.BytesType)

// scratchPool holds the buffers a JSON record is sealed into before its
// base64 encoding, and base64-decoded into before it is opened.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// putScratch returns bp to the pool with b, the buffer last appended to
// from (*bp)[:0], unless it grew too large to keep.
func putScratch(bp *[]byte, b []byte) {
	if cap(b) <= maxPooledBuf {
		*bp = b[:0]
		scratchPool.Put(bp)
	}
}

// SealFrame implements netpoll.Sealer: the payload of f (the inner
// envelope, in the connection's encoding) becomes one record in a secure
// envelope. It runs under the connection's send lock. For protobuf the
// record is sealed straight into the new frame; for JSON it is sealed into
// a pooled scratch buffer and written base64-encoded.
func (sc *secureConn) SealFrame(f *netpoll.Frame) (*netpoll.Frame, error) {
	pt := f.Payload()
	out := netpoll.AcquireFrame()
	var err error
	if sc.cl.codec.Binary() {
		rec := len(pt) + crypto.RecordOverhead
		body := 1 + protowire.SizeBytes(rec)
		out.B = append(out.B, secureTag...)
		out.B = protowire.AppendVarint(out.B, uint64(body))
		out.B = append(out.B, 1<<3|byte(protowire.BytesType))
		out.B = protowire.AppendVarint(out.B, uint64(rec))
		if out.B, err = sc.conn.Seal(out.B, pt); err != nil {
			out.Release()
			return nil, err
		}
		out.Seal(ws.OpBinary)
		return out, nil
	}
	bp := scratchPool.Get().(*[]byte)
	rec, err := sc.conn.Seal((*bp)[:0], pt)
	if err != nil {
		putScratch(bp, rec)
		out.Release()
		return nil, err
	}
	out.B = append(out.B, `{"secure":{"data":"`...)
	out.B = base64.StdEncoding.AppendEncode(out.B, rec)
	out.B = append(out.B, `"}}`...)
	putScratch(bp, rec)
	out.Seal(ws.OpText)
	return out, nil
}

// Compact implements netpoll.Sealer: the idle connection keeps only its
// keys (docs/crypto.md, "Per-connection memory"). netpoll calls it on the
// event loop under the send lock, so neither direction is in use.
func (sc *secureConn) Compact() {
	if sc.conn != nil {
		sc.conn.Compact()
	}
}

// encrypted reports whether cl started the secure channel.
func (cl *client) encrypted() bool { return cl.sec.st.Load() != nil }

// secureHelloAllowed is the hello's policy check (home shard): a plaintext
// connection may not act for a tenant in RequiredTenants.
func (s *shard) secureHelloAllowed(cl *client, id uint64, sess *session, claims token.Claims, h *protocol.Hello) bool {
	sb := s.b.sec
	if sb == nil || len(sb.tenants) == 0 || cl.encrypted() {
		return true
	}
	tenant := helloTenant(sess, claims, h)
	if !sb.tenants[tenant] {
		return true
	}
	sb.m.refused.Inc()
	s.fail(cl, id, protocol.CodeForbidden, "tenant "+tenant+" requires an encrypted connection")
	cl.peer.Close(ws.StatusPolicyViolation, "encryption required for the tenant")
	return false
}

// cacheSeenSet is a crypto.SeenSet in the session cache, so that a ticket
// stays used across a restart that restores the cache's snapshot. Use is
// atomic within the process (a mutex around get-then-put). The cache may
// evict under memory pressure, so single use holds as long as the cache is
// sized for the tickets of a ticket lifetime (each entry is ~100 bytes).
type cacheSeenSet struct {
	mu  sync.Mutex
	c   SessionCache
	now func() time.Time
}

func (s *cacheSeenSet) Use(id []byte, expiry time.Time) (bool, error) {
	key := "tkt:" + hex.EncodeToString(id)
	ttl := expiry.Sub(s.now())
	if ttl <= 0 {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, seen := s.c.Get(nil, key); seen {
		return false, nil
	}
	if err := s.c.Put(key, []byte{1}, ttl); err != nil {
		return false, err
	}
	return true, nil
}

var _ crypto.SeenSet = (*cacheSeenSet)(nil)

// localFirstSeen puts the node's session cache in front of the cluster's
// seen set, as a fast negative path: the cache only holds tickets this
// node saw presented (it may forget some, never invent one), so its "used"
// is always right and saves the shared set a round trip; its "not seen"
// proves nothing, and the shared set decides. The local mark is made
// first: a ticket whose shared check failed (refused, full handshake)
// stays refused on this node, which costs an honest client nothing since
// it received a new ticket from that full handshake.
type localFirstSeen struct {
	local, shared crypto.SeenSet
}

func (s *localFirstSeen) Use(id []byte, expiry time.Time) (bool, error) {
	if fresh, err := s.local.Use(id, expiry); err == nil && !fresh {
		return false, nil
	}
	return s.shared.Use(id, expiry)
}

var _ crypto.SeenSet = (*localFirstSeen)(nil)

// helloTenant is the tenant a hello acts for: the resumed session's, the
// token's, or an anonymous hello's; the default tenant when empty.
func helloTenant(sess *session, claims token.Claims, h *protocol.Hello) string {
	var tenant string
	switch {
	case sess != nil:
		tenant = sess.u.tenant
	case claims.Subject != "": // verified: a token or the authentication hook
		tenant = claims.Tenant
	default:
		tenant = h.Tenant
	}
	if tenant == "" {
		tenant = token.DefaultTenant
	}
	return tenant
}
