// Package client is the Go client of the Unigate wire protocol: it
// connects, says hello, and keeps the session alive across network drops,
// node drains and restarts, the way docs/protocol.md asks clients to:
//
//   - reconnects with jittered exponential backoff, and honours what the
//     server says: Retry-After on a 429 or 503 upgrade refusal, "retry in
//     N s" on a close 1013 or a rate-limited hello, a short random delay on
//     a drain (1001) so a node's clients do not come back at once, and no
//     retry at all for what retrying cannot fix (a bad or expired token, a
//     forbidden origin, a 4xx other than 429, a close 1002 protocol error
//     such as a secure-channel failure);
//   - resumes: the hello after a reconnect carries the resume token and the
//     last sequence seen per conversation, so the server replays exactly
//     what was missed; a replayed message already seen is dropped, so the
//     application sees every message once, in order;
//   - never loses a message it was asked to send: a Send stays queued until
//     its Ack arrives, and is sent again, with the same client message id,
//     after a reconnect (the server answers a duplicate with the original
//     Ack instead of storing it twice).
//
// Use:
//
//	c, err := client.Dial(ctx, client.Options{URL: "ws://host:8080/ws", Token: tok,
//		OnEvent: func(e *protocol.Envelope) { ... }})
//	conv, err := c.Open(ctx, protocol.Open{Text: "hello"})
//	ack, err := c.Send(ctx, conv, "my order is late")
//	c.Close()
//
// OnEvent runs on the client's reader goroutine, one envelope at a time,
// in arrival order; it must not block for long and must not call the
// client's blocking methods. The envelope is the client's own copy.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/protocol"
)

// Defaults of Options.
const (
	DefaultMinBackoff       = 250 * time.Millisecond
	DefaultMaxBackoff       = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultDrainSpread is the window over which clients of a draining
	// node (close 1001) spread their reconnects.
	DefaultDrainSpread = time.Second
)

var (
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("client: closed")
	// ErrDisconnected: the connection dropped before a request (other than
	// a Send, which is retried) was answered.
	ErrDisconnected = errors.New("client: disconnected before the reply")
)

// PermanentError is a refusal that retrying cannot fix; the client stops.
type PermanentError struct {
	Status int           // HTTP status of a refused upgrade, or 0
	Code   protocol.Code // protocol error code of a refused hello, or 0
	Close  int           // WebSocket close code, or 0
	Reason string
}

func (e *PermanentError) Error() string {
	return fmt.Sprintf("client: refused for good (status %d, code %d, close %d): %s", e.Status, e.Code, e.Close, e.Reason)
}

// Options configure a Client.
type Options struct {
	// URL of the WebSocket endpoint, e.g. ws://127.0.0.1:8080/ws.
	URL string
	// Token is the visitor or agent token; empty for an anonymous visitor.
	Token string
	// Tenant of an anonymous visitor (ignored when Token carries one).
	Tenant string
	// ClientName is sent in the hello, e.g. "kiosk/1.0".
	ClientName string
	// Subprotocol is protocol.SubprotocolProto (default) or SubprotocolJSON.
	Subprotocol string
	// Header is sent with the upgrade request (e.g. Origin).
	Header http.Header
	// Dialer dials; nil means a websocket.Dialer with HandshakeTimeout.
	Dialer *websocket.Dialer
	// HandshakeTimeout bounds the upgrade and the hello. Default 10s.
	HandshakeTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay: attempt n waits
	// a uniformly random time in [0, min(MaxBackoff, MinBackoff·2ⁿ)]
	// ("full jitter"), or longer when the server said when to come back.
	MinBackoff, MaxBackoff time.Duration
	// DrainSpread is the window of the random delay after a close 1001.
	DrainSpread time.Duration
	// OnEvent receives every server envelope except Welcome, Ack and the
	// replies to Request; Delivers already seen (a replay) are dropped.
	OnEvent func(*protocol.Envelope)
	// Logger receives reconnect lines. Default: discard.
	Logger *slog.Logger
	// Secure, when set, runs the application-layer secure channel
	// (docs/crypto.md) on every connection: right after the upgrade, before
	// the hello, the client sends secure{ClientHello} and completes the
	// handshake; from then on every envelope both ways is a sealed record.
	// A reconnect offers the ticket of the previous connection (resumption,
	// no server signature); Session in the config is only used for the
	// first connection. A handshake that fails on the client's side (wrong
	// server key, bad signature or certificate) stops the client with a
	// *PermanentError.
	Secure *crypto.ClientConfig
}

// SecureInfo describes the secure channel of the current connection.
type SecureInfo struct {
	Suite       string       // negotiated suite name, e.g. "GM"
	Resumed     bool         // established from the previous connection's ticket
	ServerKeyID crypto.KeyID // the server identity that authenticated it
}

// Stats count what the client went through.
type Stats struct {
	Dials      int64 // upgrade attempts
	Refused    int64 // upgrades refused with 429 or 503
	Reconnects int64 // welcomes after the first
	Resent     int64 // sends sent again after a reconnect
	Duplicates int64 // replayed delivers dropped as already seen
}

// Client is a resumable connection; see the package doc. Its methods are
// safe for concurrent use.
type Client struct {
	o     Options
	codec protocol.Codec
	op    int // websocket message type of the codec
	log   *slog.Logger

	nextID     atomic.Uint64
	cmidPrefix string
	cmidSeq    atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	conn      *wsConn       // nil while disconnected
	connected chan struct{} // closed when conn is set; replaced when it drops
	welcome   protocol.Welcome
	resume    string
	cursors   map[string]uint64 // conversation → last seq seen
	waiters   map[uint64]chan *protocol.Envelope
	sends     []*pendingSend  // unacked, in order
	err       error           // why the client stopped
	ticket    *crypto.Session // ticket for the next connection's resumption
	secure    SecureInfo      // of the current connection

	st struct{ dials, refused, reconnects, resent, duplicates atomic.Int64 }
}

type pendingSend struct {
	id   uint64
	send protocol.Send
	done chan result
}

type result struct {
	ack protocol.Ack
	err error
}

// Dial connects and says hello; it returns once the first Welcome arrived,
// retrying (with backoff) until ctx is done or the server refuses for good.
// The client then keeps itself connected until Close.
func Dial(ctx context.Context, o Options) (*Client, error) {
	if o.Subprotocol == "" {
		o.Subprotocol = protocol.SubprotocolProto
	}
	codec := protocol.ForSubprotocol(o.Subprotocol)
	if codec == nil {
		return nil, fmt.Errorf("client: unknown subprotocol %q", o.Subprotocol)
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.DrainSpread <= 0 {
		o.DrainSpread = DefaultDrainSpread
	}
	if o.Dialer == nil {
		o.Dialer = &websocket.Dialer{HandshakeTimeout: o.HandshakeTimeout}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var prefix [6]byte
	_, _ = rand.Read(prefix[:])
	c := &Client{
		o: o, codec: codec, op: websocket.TextMessage, log: o.Logger,
		cmidPrefix: hex.EncodeToString(prefix[:]),
		done:       make(chan struct{}),
		connected:  make(chan struct{}),
		cursors:    map[string]uint64{},
		waiters:    map[uint64]chan *protocol.Envelope{},
	}
	if codec.Binary() {
		c.op = websocket.BinaryMessage
	}
	if o.Secure != nil {
		sc := *o.Secure
		c.ticket, sc.Session = sc.Session, nil
		c.o.Secure = &sc
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.run()
	select {
	case <-c.connectedCh():
		return c, nil
	case <-c.done:
		return nil, c.Err()
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
}

// Close ends the client: the connection is closed normally (1000) and
// pending requests fail with ErrClosed.
func (c *Client) Close() {
	c.cancel()
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		conn.wmu.Lock()
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		conn.wmu.Unlock()
		_ = conn.Close()
	}
	<-c.done
}

// Err returns why the client stopped (ErrClosed, a *PermanentError), or
// nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Welcome returns the last Welcome.
func (c *Client) Welcome() protocol.Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome
}

// LastSeq returns the last sequence seen in conversation conv.
func (c *Client) LastSeq(conv string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cursors[conv]
}

// Secure returns what the secure channel of the current (or last)
// connection negotiated; zero without Options.Secure.
func (c *Client) Secure() SecureInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.secure
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	return Stats{Dials: c.st.dials.Load(), Refused: c.st.refused.Load(), Reconnects: c.st.reconnects.Load(),
		Resent: c.st.resent.Load(), Duplicates: c.st.duplicates.Load()}
}

// Open opens a conversation (visitors) and returns its id.
func (c *Client) Open(ctx context.Context, o protocol.Open) (string, error) {
	reply, err := c.Request(ctx, &protocol.Envelope{Kind: protocol.KindOpen, Open: o})
	if err != nil {
		return "", err
	}
	c.track(reply.Conversation.ConversationID)
	return reply.Conversation.ConversationID, nil
}

// Send sends a chat message and returns its Ack. The message is kept and
// sent again after reconnects until it is acked, ctx is done or the client
// closes; a message sent twice this way is stored once.
func (c *Client) Send(ctx context.Context, conv, text string) (protocol.Ack, error) {
	p := &pendingSend{
		id:   c.nextID.Add(1),
		send: protocol.Send{ConversationID: conv, ClientMsgID: c.cmidPrefix + "-" + strconv.FormatUint(c.cmidSeq.Add(1), 36), Text: text},
		done: make(chan result, 1),
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return protocol.Ack{}, c.err
	}
	c.sends = append(c.sends, p)
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		_ = c.write(conn, &protocol.Envelope{Kind: protocol.KindSend, ID: p.id, Send: p.send})
	}
	select {
	case r := <-p.done:
		return r.ack, r.err
	case <-ctx.Done():
		c.dropSend(p)
		return protocol.Ack{}, ctx.Err()
	}
}

// Request sends env (its ID is set) and returns the server's reply: the
// envelope with the same ID, or the Error it got as a *protocol.Error. A
// request in flight when the connection drops fails with ErrDisconnected
// (it is not sent again: only the caller knows whether that is safe).
func (c *Client) Request(ctx context.Context, env *protocol.Envelope) (*protocol.Envelope, error) {
	for {
		c.mu.Lock()
		conn, wait, err := c.conn, c.connected, c.err
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if conn == nil {
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		env.ID = c.nextID.Add(1)
		ch := make(chan *protocol.Envelope, 1)
		c.mu.Lock()
		c.waiters[env.ID] = ch
		c.mu.Unlock()
		if err := c.write(conn, env); err != nil {
			c.forget(env.ID)
			return nil, ErrDisconnected
		}
		select {
		case reply := <-ch:
			if reply == nil {
				return nil, ErrDisconnected
			}
			if reply.Kind == protocol.KindError {
				e := reply.Error
				return nil, &e
			}
			return reply, nil
		case <-ctx.Done():
			c.forget(env.ID)
			return nil, ctx.Err()
		}
	}
}

// Notify sends env without waiting for a reply (typing, read receipts). It
// is dropped while disconnected.
func (c *Client) Notify(env *protocol.Envelope) error {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return ErrDisconnected
	}
	return c.write(conn, env)
}

func (c *Client) connectedCh() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

func (c *Client) track(conv string) {
	c.mu.Lock()
	if _, ok := c.cursors[conv]; !ok && conv != "" {
		c.cursors[conv] = 0
	}
	c.mu.Unlock()
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.waiters, id)
	c.mu.Unlock()
}

func (c *Client) dropSend(p *pendingSend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.sends {
		if q == p {
			c.sends = append(c.sends[:i], c.sends[i+1:]...)
			return
		}
	}
}

// wsConn is one connection; gorilla allows one writer at a time.
type wsConn struct {
	*websocket.Conn
	wmu sync.Mutex
	sec *crypto.Conn // the secure channel, once established: Seal under wmu, Open by the reader
	hs  *crypto.ClientHandshake
}

// write encodes env and writes it (sealed on a secure connection: sealing
// happens under the write lock, in write order, as record sequence numbers
// are implicit).
func (c *Client) write(conn *wsConn, env *protocol.Envelope) error {
	b, err := c.codec.AppendEncode(nil, env)
	if err != nil {
		return err
	}
	conn.wmu.Lock()
	defer conn.wmu.Unlock()
	if conn.sec != nil {
		rec, err := conn.sec.Seal(nil, b)
		if err != nil {
			return err
		}
		if b, err = c.codec.AppendEncode(b[:0], &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: rec}}); err != nil {
			return err
		}
	}
	_ = conn.SetWriteDeadline(time.Now().Add(c.o.HandshakeTimeout))
	return conn.WriteMessage(c.op, b)
}

// writeSecure writes one unsealed handshake message.
func (c *Client) writeSecure(conn *wsConn, msg []byte) error {
	b, err := c.codec.AppendEncode(nil, &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: msg}})
	if err != nil {
		return err
	}
	conn.wmu.Lock()
	defer conn.wmu.Unlock()
	_ = conn.SetWriteDeadline(time.Now().Add(c.o.HandshakeTimeout))
	return conn.WriteMessage(c.op, b)
}

// msgNewSessionTicket is the first byte of a NewSessionTicket (docs/crypto.md);
// records start with 0x17 or 0x15.
const msgNewSessionTicket = 4

// handshake runs the client side of the secure channel over conn.
func (c *Client) handshake(conn *wsConn) (outcome, bool) {
	cfg := *c.o.Secure
	c.mu.Lock()
	if c.ticket != nil {
		cfg.Session, c.ticket = c.ticket, nil // single use
	}
	c.mu.Unlock()
	hs, err := crypto.NewClientHandshake(&cfg)
	if err != nil {
		return outcome{permanent: &PermanentError{Reason: "secure channel: " + err.Error()}}, false
	}
	_ = conn.SetReadDeadline(time.Now().Add(c.o.HandshakeTimeout))
	if err := c.writeSecure(conn, hs.Hello()); err != nil {
		return outcome{}, false
	}
	_, data, err := conn.ReadMessage()
	if err != nil {
		return c.closed(err), false
	}
	var env protocol.Envelope
	if err := c.codec.Decode(data, &env); err != nil || env.Kind != protocol.KindSecure {
		if err == nil && env.Kind == protocol.KindError {
			return outcome{permanent: &PermanentError{Code: env.Error.Code, Reason: env.Error.Message}}, false
		}
		return outcome{}, false
	}
	fin, sec, err := hs.HandleServerHello(env.Secure.Data)
	if err != nil {
		return outcome{permanent: &PermanentError{Reason: "secure channel: " + err.Error()}}, false
	}
	if err := c.writeSecure(conn, fin); err != nil {
		return outcome{}, false
	}
	conn.wmu.Lock()
	conn.sec, conn.hs = sec, hs
	conn.wmu.Unlock()
	c.mu.Lock()
	c.secure = SecureInfo{Suite: sec.Suite().Name, Resumed: sec.Resumed(), ServerKeyID: sec.ServerKeyID()}
	c.mu.Unlock()
	return outcome{}, true
}

// retryInRE finds the server's "retry in N s" in a close reason or an
// error message.
var retryInRE = regexp.MustCompile(`retry in (\d+) s`)

// outcome is how a connection attempt or session ended, and what it says
// about waiting.
type outcome struct {
	wait      time.Duration // at least this long before the next attempt
	drain     bool          // close 1001: spread over DrainSpread
	permanent error
	welcomed  bool
}

// run connects, serves and reconnects until Close or a permanent refusal.
func (c *Client) run() {
	defer close(c.done)
	attempt := 0
	for {
		out := c.session()
		if out.welcomed {
			attempt = 0
		}
		if out.permanent != nil {
			c.stop(out.permanent)
			return
		}
		if c.ctx.Err() != nil {
			c.stop(ErrClosed)
			return
		}
		var d time.Duration
		if out.drain {
			d = time.Duration(mrand.Int64N(int64(c.o.DrainSpread)))
		} else {
			ceil := min(c.o.MaxBackoff, c.o.MinBackoff<<min(attempt, 30))
			d = time.Duration(mrand.Int64N(int64(ceil) + 1))
			attempt++
		}
		if out.wait > 0 {
			// Come back after the server's time, spread over a further
			// quarter of it so refused clients do not return in step.
			d = out.wait + time.Duration(mrand.Int64N(int64(out.wait/4)+1))
		}
		c.log.Debug("reconnecting", "in", d)
		select {
		case <-time.After(d):
		case <-c.ctx.Done():
			c.stop(ErrClosed)
			return
		}
	}
}

func (c *Client) stop(err error) {
	c.mu.Lock()
	c.err = err
	sends, waiters := c.sends, c.waiters
	c.sends, c.waiters = nil, map[uint64]chan *protocol.Envelope{}
	c.mu.Unlock()
	for _, p := range sends {
		p.done <- result{err: err}
	}
	for _, ch := range waiters {
		ch <- nil
	}
}

// session makes one connection: upgrade, hello, then reads until it drops.
func (c *Client) session() outcome {
	c.st.dials.Add(1)
	ctx, cancel := context.WithTimeout(c.ctx, c.o.HandshakeTimeout)
	dialer := *c.o.Dialer
	dialer.Subprotocols = []string{c.o.Subprotocol}
	ws, resp, err := dialer.DialContext(ctx, c.o.URL, c.o.Header)
	cancel()
	if err != nil {
		return c.refusal(resp, err)
	}
	conn := &wsConn{Conn: ws}
	defer conn.Close()
	ended := make(chan struct{})
	defer close(ended)
	go func() { // Close interrupts a blocked read
		select {
		case <-c.ctx.Done():
			_ = conn.SetReadDeadline(time.Now())
		case <-ended:
		}
	}()

	if c.o.Secure != nil {
		if out, ok := c.handshake(conn); !ok {
			return out
		}
	}
	if out, ok := c.hello(conn); !ok {
		return out
	}
	return c.serve(conn)
}

// refusal interprets a failed upgrade.
func (c *Client) refusal(resp *http.Response, err error) outcome {
	if resp == nil {
		c.log.Debug("dial failed", "err", err)
		return outcome{}
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		c.st.refused.Add(1)
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return outcome{wait: time.Duration(max(secs, 1)) * time.Second}
	}
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return outcome{permanent: &PermanentError{Status: resp.StatusCode, Reason: resp.Status}}
	}
	return outcome{}
}

// hello says hello (with the resume token and cursors when resuming) and
// waits for the Welcome. A refused resume token is dropped and the hello
// repeated without it.
func (c *Client) hello(conn *wsConn) (outcome, bool) {
	_ = conn.SetReadDeadline(time.Now().Add(c.o.HandshakeTimeout))
	for {
		env := &protocol.Envelope{Kind: protocol.KindHello, ID: c.nextID.Add(1)}
		c.mu.Lock()
		env.Hello = protocol.Hello{Token: c.o.Token, Tenant: c.o.Tenant, ClientName: c.o.ClientName, ResumeToken: c.resume}
		for conv, seq := range c.cursors {
			if len(env.Hello.Cursors) < protocol.MaxRepeated {
				env.Hello.Cursors = append(env.Hello.Cursors, protocol.Cursor{ConversationID: conv, LastSeq: seq})
			}
		}
		c.mu.Unlock()
		if err := c.write(conn, env); err != nil {
			return outcome{}, false
		}
		reply, out, ok := c.readUntilReply(conn, env.ID)
		if !ok {
			return out, false
		}
		if reply.Kind == protocol.KindWelcome {
			c.welcomed(conn, reply)
			return outcome{}, true
		}
		e := reply.Error
		switch e.Code {
		case protocol.CodeBadResumeToken:
			c.mu.Lock()
			c.resume = "" // the session is gone: start a new one
			c.mu.Unlock()
			continue
		case protocol.CodeRateLimited:
			return c.closeOutcome(conn, e.Message), false
		}
		if !e.Temporary {
			return outcome{permanent: &PermanentError{Code: e.Code, Reason: e.Message}}, false
		}
		return outcome{}, false
	}
}

// closeOutcome reads until the server's close after a refused hello and
// honours its "retry in N s" (from the close reason or msg).
func (c *Client) closeOutcome(conn *wsConn, msg string) outcome {
	_ = conn.SetReadDeadline(time.Now().Add(c.o.HandshakeTimeout))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			out := c.closed(err)
			if out.wait == 0 {
				out.wait = retryIn(msg)
			}
			return out
		}
	}
}

// readUntilReply reads envelopes, handling them, until the one with id.
func (c *Client) readUntilReply(conn *wsConn, id uint64) (*protocol.Envelope, outcome, bool) {
	for {
		env, err := c.read(conn)
		if err != nil {
			return nil, c.closed(err), false
		}
		if env.ID == id && (env.Kind == protocol.KindWelcome || env.Kind == protocol.KindError) {
			return env, outcome{}, true
		}
		c.handle(env)
	}
}

func (c *Client) read(conn *wsConn) (*protocol.Envelope, error) {
	_, data, err := conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	if conn.sec != nil {
		if data, err = c.open(conn, data); err != nil {
			return nil, err
		}
		if data == nil {
			return c.read(conn) // a NewSessionTicket
		}
	}
	env := new(protocol.Envelope)
	// data is this message's own buffer: strings aliasing it stay valid.
	if err := c.codec.Decode(data, env); err != nil {
		return nil, err
	}
	return env, nil
}

// open opens one secure envelope into the inner envelope's bytes, or
// consumes the server's NewSessionTicket (nil, nil). Any failure ends the
// connection.
func (c *Client) open(conn *wsConn, data []byte) ([]byte, error) {
	var outer protocol.Envelope
	if err := c.codec.Decode(data, &outer); err != nil {
		return nil, err
	}
	if outer.Kind != protocol.KindSecure {
		return nil, errors.New("client: plaintext envelope on an encrypted connection")
	}
	d := outer.Secure.Data
	if conn.hs != nil && len(d) > 0 && d[0] == msgNewSessionTicket {
		sess, err := conn.hs.HandleNewSessionTicket(d)
		conn.hs = nil
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.ticket = sess
		c.mu.Unlock()
		return nil, nil
	}
	conn.hs = nil
	return conn.sec.Open(nil, d)
}

// closed interprets the end of a connection.
func (c *Client) closed(err error) outcome {
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		return outcome{}
	}
	switch ce.Code {
	case websocket.CloseGoingAway:
		return outcome{drain: true}
	case 1013: // try again later
		return outcome{wait: max(retryIn(ce.Text), time.Second)}
	case websocket.CloseProtocolError:
		// The server found this client's bytes wrong (a secure-channel
		// failure such as a bad binder or record, a malformed frame): the
		// same client would send the same bytes again.
		return outcome{permanent: &PermanentError{Close: ce.Code, Reason: ce.Text}}
	case websocket.ClosePolicyViolation:
		if w := retryIn(ce.Text); w > 0 {
			return outcome{wait: w} // a cap: come back when told
		}
		return outcome{permanent: &PermanentError{Close: ce.Code, Reason: ce.Text}}
	}
	return outcome{}
}

func retryIn(s string) time.Duration {
	m := retryInRE.FindStringSubmatch(s)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return time.Duration(n) * time.Second
}

// welcomed installs conn as the live connection and re-sends the unacked
// messages, in order.
func (c *Client) welcomed(conn *wsConn, w *protocol.Envelope) {
	c.mu.Lock()
	first := c.welcome.SessionID == ""
	c.welcome = w.Welcome
	c.resume = w.Welcome.ResumeToken
	for _, conv := range w.Welcome.Conversations {
		if _, ok := c.cursors[conv]; !ok {
			c.cursors[conv] = 0
		}
	}
	c.conn = conn
	close(c.connected)
	sends := append([]*pendingSend(nil), c.sends...)
	c.mu.Unlock()
	if !first {
		c.st.reconnects.Add(1)
	}
	for _, p := range sends {
		if !first {
			c.st.resent.Add(1)
		}
		if c.write(conn, &protocol.Envelope{Kind: protocol.KindSend, ID: p.id, Send: p.send}) != nil {
			break
		}
	}
}

// serve reads until the connection drops, then fails the requests in
// flight on it.
func (c *Client) serve(conn *wsConn) outcome {
	_ = conn.SetReadDeadline(time.Time{})
	var out outcome
	for {
		env, err := c.read(conn)
		if err != nil {
			out = c.closed(err)
			break
		}
		c.handle(env)
	}
	out.welcomed = true
	c.mu.Lock()
	c.conn = nil
	c.connected = make(chan struct{})
	waiters := c.waiters
	c.waiters = map[uint64]chan *protocol.Envelope{}
	c.mu.Unlock()
	for _, ch := range waiters {
		ch <- nil
	}
	return out
}

// handle dispatches one server envelope.
func (c *Client) handle(env *protocol.Envelope) {
	switch env.Kind {
	case protocol.KindAck:
		c.acked(env)
		return
	case protocol.KindDeliver:
		d := &env.Deliver
		c.mu.Lock()
		last := c.cursors[d.ConversationID]
		fresh := d.Seq > last
		if fresh {
			c.cursors[d.ConversationID] = d.Seq
		}
		c.mu.Unlock()
		if !fresh {
			c.st.duplicates.Add(1)
			return
		}
	case protocol.KindConversation:
		c.track(env.Conversation.ConversationID)
	case protocol.KindError:
		if c.ackFailed(env) {
			return
		}
	}
	if env.ID != 0 {
		c.mu.Lock()
		ch := c.waiters[env.ID]
		delete(c.waiters, env.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- env
			if env.Kind == protocol.KindError {
				return
			}
		}
	}
	if c.o.OnEvent != nil {
		c.o.OnEvent(env)
	}
}

// acked resolves the pending send an Ack answers and advances the cursor.
func (c *Client) acked(env *protocol.Envelope) {
	a := env.Ack
	c.mu.Lock()
	if a.Seq > c.cursors[a.ConversationID] {
		c.cursors[a.ConversationID] = a.Seq
	}
	var p *pendingSend
	for i, q := range c.sends {
		if q.send.ClientMsgID == a.ClientMsgID && q.send.ConversationID == a.ConversationID {
			p = q
			c.sends = append(c.sends[:i], c.sends[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	if p != nil {
		p.done <- result{ack: a}
	}
}

// ackFailed handles an Error answering a pending send: a temporary one
// (the server is busy) sends it again after a jittered delay, as a
// reconnect would; a permanent one fails it.
func (c *Client) ackFailed(env *protocol.Envelope) bool {
	if env.ID == 0 {
		return false
	}
	c.mu.Lock()
	var p *pendingSend
	for i, q := range c.sends {
		if q.id == env.ID {
			p = q
			if !env.Error.Temporary {
				c.sends = append(c.sends[:i], c.sends[i+1:]...)
			}
			break
		}
	}
	c.mu.Unlock()
	if p == nil {
		return false
	}
	if env.Error.Temporary {
		time.AfterFunc(c.o.MinBackoff+time.Duration(mrand.Int64N(int64(c.o.MinBackoff))), func() {
			c.mu.Lock()
			conn, still := c.conn, slices.Contains(c.sends, p)
			c.mu.Unlock()
			if still && conn != nil {
				c.st.resent.Add(1)
				_ = c.write(conn, &protocol.Envelope{Kind: protocol.KindSend, ID: p.id, Send: p.send})
			}
		})
		return true
	}
	e := env.Error
	p.done <- result{err: &e}
	return true
}
