package netpoll

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/unigate/unigate/limiter"
)

// Errors returned by Conn.Send.
var (
	// ErrClosed: the connection is closed or closing; the frame was dropped.
	ErrClosed = errors.New("netpoll: connection closed")
	// ErrSlowConsumer: the connection's outbound bound was exceeded; it is
	// being closed with 1013 and the frame was dropped.
	ErrSlowConsumer = errors.New("netpoll: slow consumer")
)

// StatusTryAgainLater is the close code 1013 (RFC 6455 IANA registry),
// which gobwas/ws does not name.
const StatusTryAgainLater ws.StatusCode = 1013

// validCloseCode reports whether a client may send code in a close frame:
// the codes RFC 6455 and the IANA registry define (1000-1003, 1007-1014) and
// the ranges for libraries and applications (3000-4999). gobwas/ws's
// CheckCloseFrameData rejects 1012-1014, which are registered.
func validCloseCode(code ws.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}

// connState is where a connection is in its life. It is only changed on the
// connection's event loop.
type connState uint8

const (
	stateHTTP      connState = iota // reading an HTTP request head
	stateHTTPBusy                   // a request is being served off the loop
	stateWebSocket                  // upgraded
	stateClosing                    // a close frame was queued; input is ignored
)

// Conn is one client connection. The exported methods are safe for
// concurrent use unless they say otherwise. A Conn stays valid as a value
// after it closed: Send then returns ErrClosed.
type Conn struct {
	srv  *Server
	gc   gnet.Conn
	loop *loopFlusher
	id   uint64

	// Fixed after the upgrade.
	subprotocol string
	query       string     // raw query of the upgrade request
	origin      string     // Origin header of the upgrade request ("" if none)
	remote      netip.Addr // the client: the TCP peer, or what a trusted proxy said

	peer         netip.Addr // the TCP peer
	peerPort     uint16     // the TCP peer's port (read off the loop: gc's addresses are not)
	admitted     bool       // Admission.Admit said yes: Release on close
	admittedAddr netip.Addr
	proxyChecked bool // the first bytes were checked for a PROXY header
	msgBucket    limiter.Bucket
	byteBucket   limiter.Bucket

	data atomic.Value // handler-owned

	// Event-loop-only state.
	state    connState
	fragOp   ws.OpCode // opcode of the message being reassembled, 0 if none
	frag     []byte    // reassembly buffer of a fragmented message (from fragPool)
	fragBuf  *[]byte   // its pool holder; nil between fragmented messages
	utf8     utf8Stream
	regIndex int   // position in the registry shard
	readAt   int64 // Nanotime at the start of the current OnTraffic pass
	// handlerOpened: Handler.OnOpen was called, so OnClose is owed.
	handlerOpened bool

	// Activity clocks in unix seconds, written on the loop, read by the sweeper.
	lastRead    atomic.Int64
	lastPingAt  atomic.Int64
	httpSince   atomic.Int64 // start of the current HTTP request deadline
	upgraded    atomic.Bool
	upgradedAt  int64        // written before upgraded is set
	handshaking atomic.Bool  // the handler has the client's handshake message
	established atomic.Bool  // the handler's own handshake completed
	lingerSince atomic.Int64 // half-closed after the close frame at (linger); 0: not

	// Outbound queue, guarded by mu.
	mu        sync.Mutex
	pending   []*Frame
	spare     []*Frame
	pendBytes int
	scheduled bool // in the loop's flush list
	closing   bool // a close frame is queued: no more Sends
	gone      bool // gnet closed the connection
	sealer    Sealer

	// Sealed connections (see SetSealer).
	hasSealer   atomic.Bool
	sealedAt    atomic.Int64 // unix seconds of the last sealed frame
	compactedAt int64        // sweeper-only: when Compact was last scheduled
}

// ID returns a process-unique connection id (never 0).
func (c *Conn) ID() uint64 { return c.id }

// Subprotocol returns the negotiated WebSocket subprotocol.
func (c *Conn) Subprotocol() string { return c.subprotocol }

// RemoteAddr returns the client's IP address: the TCP peer's, or, from a
// trusted proxy, the address its PROXY protocol header or X-Forwarded-For /
// X-Real-IP header gave (see WithTrustedProxies). It is fixed once the
// handler's OnOpen is called.
func (c *Conn) RemoteAddr() netip.Addr { return c.remote }

// Query returns the value of a query parameter of the upgrade request URL.
func (c *Conn) Query(key string) string {
	v, _ := queryValue([]byte(c.query), key)
	return v
}

// Origin returns the Origin header of the upgrade request: the web page's
// origin for a browser, "" for clients that send none. The application
// checks it against what the tenant it learns later allows.
func (c *Conn) Origin() string { return c.origin }

// MarkEstablished tells the server that the application handshake (for
// Unigate, hello → welcome) completed. Until then an upgraded connection
// is closed with 1008 once the handshake timeout since the upgrade has
// passed, so an idle socket that never authenticates cannot hold a slot.
func (c *Conn) MarkEstablished() { c.established.Store(true) }

// HandshakeReceived tells the server that the client's application
// handshake message (for Unigate, the hello) arrived and the handler is
// working on it: the client did its part, so a server slow to answer (a
// backlog, an authentication hook) must not close it at the handshake
// timeout. The deadline becomes three times the handshake timeout since the
// upgrade, which still bounds a client that sends handshakes the handler
// refuses without closing. Call it from the handler; it is cheap.
func (c *Conn) HandshakeReceived() { c.handshaking.Store(true) }

// ReadAt returns the time (Nanotime) at which the event loop began the
// read pass that delivered the message being handled: the start of the
// relay stages (Trace.Read). Call it from Handler.OnMessage.
func (c *Conn) ReadAt() int64 { return c.readAt }

// SetData stores a handler-owned value on the connection.
func (c *Conn) SetData(v any) { c.data.Store(&v) }

// Data returns the value stored by SetData, or nil.
func (c *Conn) Data() any {
	if p, _ := c.data.Load().(*any); p != nil {
		return *p
	}
	return nil
}

// Send queues a sealed frame for the connection and consumes one reference
// of f in every case. On a connection with a Sealer (SetSealer), a data
// frame is replaced by the Sealer's frame for this connection. It never blocks: the frame is written by the
// connection's event loop. When the queued bytes would exceed the server's
// outbound bound, the connection is closed with 1013 (try again later) and
// Send returns ErrSlowConsumer.
func (c *Conn) Send(f *Frame) error {
	c.mu.Lock()
	if c.closing || c.gone {
		c.mu.Unlock()
		f.Release()
		return ErrClosed
	}
	if c.sealer != nil && !f.control() {
		var err error
		if f, err = c.seal(f); err != nil {
			c.mu.Unlock()
			c.sealFailed()
			return err
		}
	}
	n := len(f.Bytes())
	if c.pendBytes+n > c.srv.opts.maxOutbound {
		c.mu.Unlock()
		f.Release()
		c.srv.metrics.slowConsumers.Inc()
		c.Close(StatusTryAgainLater, "slow consumer")
		return ErrSlowConsumer
	}
	c.pending = append(c.pending, f)
	c.pendBytes += n
	schedule := !c.scheduled
	c.scheduled = true
	c.mu.Unlock()
	if schedule {
		c.loop.add(c)
	}
	return nil
}

// Close sends a close frame with code and reason (truncated to fit a control
// frame) after the frames already queued, then closes the TCP connection.
// It is idempotent and safe from any goroutine.
func (c *Conn) Close(code ws.StatusCode, reason string) {
	c.mu.Lock()
	if c.closing || c.gone {
		c.mu.Unlock()
		return
	}
	c.closing = true
	f := closeFrame(code, reason)
	c.pending = append(c.pending, f)
	c.pendBytes += len(f.Bytes())
	schedule := !c.scheduled
	c.scheduled = true
	c.mu.Unlock()
	if schedule {
		c.loop.add(c)
	}
}

// closeFrame builds a close frame; the reason is cut to fit 125 bytes on a
// rune boundary.
func closeFrame(code ws.StatusCode, reason string) *Frame {
	f := AcquireFrame()
	if code == 0 {
		f.Seal(ws.OpClose)
		return f
	}
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	f.B = append(f.B, byte(code>>8), byte(code))
	f.B = append(f.B, reason...)
	f.Seal(ws.OpClose)
	return f
}

// flush writes the queued frames; it runs on the connection's event loop.
func (c *Conn) flush(iov [][]byte) [][]byte {
	c.mu.Lock()
	batch := c.pending
	c.pending, c.spare = c.spare[:0], nil
	c.pendBytes = 0
	c.scheduled = false
	closing, gone := c.closing, c.gone
	c.mu.Unlock()

	if !gone {
		iov = iov[:0]
		traced := false
		for _, f := range batch {
			iov = append(iov, f.Bytes())
			traced = traced || f.Trace.traced()
		}
		var flushAt int64
		if traced {
			flushAt = Nanotime()
		}
		if len(iov) > 0 {
			// Writev copies whatever the socket does not take at once into
			// gnet's outbound buffer, so the frames can be released now.
			_, _ = c.gc.Writev(iov)
		}
		if traced {
			wrote := Nanotime()
			for _, f := range batch {
				if f.Trace.traced() {
					c.srv.metrics.relay.observe(&f.Trace, flushAt, wrote)
				}
			}
		}
		if closing {
			c.state = stateClosing
			c.linger()
		} else if c.gc.OutboundBuffered() > c.srv.opts.maxOutbound {
			c.srv.metrics.slowConsumers.Inc()
			c.Close(StatusTryAgainLater, "slow consumer")
		}
	}
	for i, f := range batch {
		f.Release()
		batch[i] = nil
	}
	c.mu.Lock()
	if c.spare == nil && cap(batch) <= 64 {
		c.spare = batch[:0]
	}
	c.mu.Unlock()
	return iov
}

// lingerTimeout is how long, in seconds of the server's clock (so 1–2 s),
// a half-closed connection waits for its client to close (linger).
const lingerTimeout = 2

// linger ends a WebSocket connection whose close frame was just written:
// it half-closes the socket (the client reads the close frame, then end of
// stream) and keeps reading and discarding what the client still sends
// until the client closes its side (gnet's OnClose) or lingerTimeout
// passes (OnTick). Closing at once would make the kernel answer input
// that arrives after the close, or was not read yet (the rest of a
// message over the limit, frames the client sent before it saw the
// close frame), with a reset, which can destroy the close frame before
// the client reads it: the client would see 1006 instead of the code.
// On the connection's loop.
func (c *Conn) linger() {
	if c.lingerSince.Load() != 0 {
		return
	}
	// Bytes gnet still holds would be cut off by the half-close; an HTTP
	// connection's answer says Connection: close and needs no close frame.
	if !c.upgraded.Load() || c.gc.OutboundBuffered() > 0 {
		_ = c.gc.Close()
		return
	}
	if err := unix.Shutdown(c.gc.Fd(), unix.SHUT_WR); err != nil {
		_ = c.gc.Close()
		return
	}
	c.lingerSince.Store(max(c.srv.clock.Load(), 1))
}

// closeQueued reports whether a close frame is queued or the connection is gone.
func (c *Conn) closeQueued() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing || c.gone
}

// markGone records that gnet closed the connection and drops what is queued.
func (c *Conn) markGone() {
	c.mu.Lock()
	c.gone = true
	c.sealer = nil
	batch := c.pending
	c.pending, c.spare, c.pendBytes = nil, nil, 0
	c.mu.Unlock()
	for _, f := range batch {
		f.Release()
	}
	c.frag, c.fragBuf = nil, nil
}

// loopFlusher batches the connections of one event loop that have frames to
// write, so that one task on the loop serves all of them: under load, one
// wake-up of the loop writes many connections' frames.
type loopFlusher struct {
	el        gnet.EventLoop
	mu        sync.Mutex
	conns     []*Conn
	spare     []*Conn
	scheduled bool
	iov       [][]byte // loop-only scratch
	up        upgradeScratch
	// Loop-only: the current stretch of back-to-back callbacks (yield.go).
	busyFrom, lastExit int64
}

// upgradeScratch is the loop-only state of an upgrade (Server.upgrade runs
// on the connection's event loop): the request reader and the response
// buffer, reused, and rw, the interface over both built once, so a
// handshake allocates none of them.
type upgradeScratch struct {
	in  bytes.Reader
	out bytes.Buffer
	rw  io.ReadWriter
}

func (u *upgradeScratch) reset(head []byte) {
	if u.rw == nil {
		u.rw = struct {
			io.Reader
			io.Writer
		}{&u.in, &u.out}
	}
	u.in.Reset(head)
	u.out.Reset()
}

func (l *loopFlusher) add(c *Conn) {
	l.mu.Lock()
	l.conns = append(l.conns, c)
	schedule := !l.scheduled
	l.scheduled = true
	l.mu.Unlock()
	if schedule {
		if err := l.el.Execute(context.Background(), l); err != nil {
			// The engine is shutting down: nothing will be written.
			l.mu.Lock()
			l.scheduled = false
			l.mu.Unlock()
		}
	}
}

// Run implements gnet.Runnable: it flushes every connection in the list.
func (l *loopFlusher) Run(context.Context) error {
	l.mu.Lock()
	conns := l.conns
	l.conns, l.spare = l.spare[:0], nil
	l.scheduled = false
	l.mu.Unlock()
	for i, c := range conns {
		l.iov = c.flush(l.iov)
		conns[i] = nil
	}
	clear(l.iov[:cap(l.iov)])
	l.mu.Lock()
	if l.spare == nil {
		l.spare = conns[:0]
	}
	l.mu.Unlock()
	return nil
}
