package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/protocol"
)

// Envelope ids the benchmark uses for requests other than chat messages.
// Chat messages use msgID (conversation index and message number), which
// never sets bit 63.
const (
	setupID    = uint64(1) << 63
	helloID    = setupID | 1
	openID     = setupID | 2
	presenceID = setupID | 3
	closeID    = setupID | 4 // visitor closing its own conversation
	staleID    = setupID | 5 // agent closing a conversation left by an earlier run
)

// msgID is the envelope id of message k of the worker's conversation conv.
func msgID(conv, k int) uint64 { return uint64(conv+1)<<32 | uint64(k) }

// splitMsgID reverses msgID; ok is false for setup ids and malformed ones.
func splitMsgID(id uint64) (conv, k int, ok bool) {
	if id&setupID != 0 || id>>32 == 0 {
		return 0, 0, false
	}
	return int(id>>32) - 1, int(uint32(id)), true
}

// serverError is an Error envelope the server sent.
type serverError struct {
	code protocol.Code
	msg  string
}

func (e *serverError) Error() string {
	return "server error " + strconv.Itoa(int(e.code)) + " " + e.code.String() + ": " + e.msg
}

// dialer opens benchmark connections, binding source addresses round
// robin.
type dialer struct {
	url     string
	codec   protocol.Codec
	msgType int
	timeout time.Duration
	ws      []*websocket.Dialer  // one per source address
	secure  *crypto.ClientConfig // nil: plaintext
	tickets ticketStore          // resumption tickets per connection index

	// pings counts the server's pings on every connection of this dialer;
	// pongErrors the pongs that could not be written.
	pings, pongErrors atomic.Int64
}

// pongWait bounds the write of a pong. gorilla's default handler allows
// one second, which a load generator sharing its CPUs with the server can
// miss when the server pings thousands of connections at once; a missed
// pong deadline then breaks the connection on the client side.
const pongWait = 10 * time.Second

// writePool lends write buffers to idle connections, which write once.
type writePool struct{ p sync.Pool }

func (w *writePool) Get() any  { return w.p.Get() }
func (w *writePool) Put(v any) { w.p.Put(v) }

func newDialer(c *Common, readBuf int, pool websocket.BufferPool) (*dialer, error) {
	sec, err := c.secureConfig()
	if err != nil {
		return nil, err
	}
	d := &dialer{url: c.URL, codec: protocol.ForSubprotocol(c.Subprotocol), timeout: c.Timeout, secure: sec}
	writeBuf := readBuf
	if sec != nil {
		// gorilla fragments a message longer than its write buffer, and
		// the INTL-PQ and GM-PQ ClientHellos (ML-KEM key shares) are
		// longer than 1 KiB: the gateway would then keep its reassembly
		// buffer (up to 4 KiB) for the connection's life. Clients such as
		// browsers send the hello in one frame.
		writeBuf = max(writeBuf, 4096)
	}
	d.msgType = websocket.TextMessage
	if d.codec.Binary() {
		d.msgType = websocket.BinaryMessage
	}
	mk := func(src netip.Addr) *websocket.Dialer {
		nd := netDialer(c.Timeout, src)
		return &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: c.Timeout,
			Subprotocols:     []string{c.Subprotocol},
			ReadBufferSize:   readBuf,
			WriteBufferSize:  writeBuf,
			WriteBufferPool:  pool,
		}
	}
	if len(c.Src) == 0 {
		d.ws = []*websocket.Dialer{mk(netip.Addr{})}
	}
	for _, a := range c.Src {
		d.ws = append(d.ws, mk(a))
	}
	return d, nil
}

// netDialer returns a TCP dialer bound to src (any address when src is
// not valid).
func netDialer(timeout time.Duration, src netip.Addr) *net.Dialer {
	nd := &net.Dialer{Timeout: timeout}
	if src.IsValid() {
		nd.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		// Pick the ephemeral port at connect time, per destination,
		// instead of at bind time, per source address only: without
		// this each source address is limited to one port range in
		// total.
		nd.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	return nd
}

// dial opens connection number i (which picks the source address),
// upgrades it, checks the subprotocol and, on an encrypted run, completes
// the secure channel's handshake.
func (d *dialer) dial(ctx context.Context, i int) (*wsConn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	c, resp, err := d.ws[i%len(d.ws)].DialContext(ctx, d.url, nil)
	if err != nil {
		if resp != nil {
			return nil, &httpError{status: resp.StatusCode}
		}
		return nil, err
	}
	if c.Subprotocol() != d.codec.Subprotocol() {
		_ = c.Close()
		return nil, fmt.Errorf("server chose subprotocol %q", c.Subprotocol())
	}
	c.SetPingHandler(func(msg string) error {
		d.pings.Add(1)
		err := c.WriteControl(websocket.PongMessage, []byte(msg), time.Now().Add(pongWait))
		if err == nil || errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		d.pongErrors.Add(1)
		return err
	})
	w := &wsConn{c: c, codec: d.codec, msgType: d.msgType}
	if d.secure != nil {
		deadline, _ := ctx.Deadline()
		if err := w.handshake(d, i, deadline); err != nil {
			_ = c.Close()
			return nil, err
		}
	}
	return w, nil
}

// httpError is an upgrade refused with an HTTP status.
type httpError struct{ status int }

func (e *httpError) Error() string { return "upgrade refused: HTTP " + strconv.Itoa(e.status) }

// wsConn is one client connection. Reads happen on one goroutine; send is
// safe for concurrent use.
type wsConn struct {
	c       *websocket.Conn
	codec   protocol.Codec
	msgType int

	rbuf []byte            // reader only
	renv protocol.Envelope // reader only

	wmu  sync.Mutex
	wbuf []byte

	// The secure channel (nil sec: plaintext). Seal and the write buffers
	// below are used under wmu; Open, hs and the read buffers by the reader.
	sec        *crypto.Conn
	hs         *crypto.ClientHandshake // until the ticket (or the first record) arrives
	tickets    *ticketStore
	idx        int
	sbuf, obuf []byte            // sealed record, outer envelope
	wenv       protocol.Envelope // outer envelope written
	dbuf, pbuf []byte            // record decoded from JSON, opened plaintext
}

// send encodes env and writes it as one message.
func (w *wsConn) send(env *protocol.Envelope) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	var err error
	w.wbuf, err = w.codec.AppendEncode(w.wbuf[:0], env)
	if err != nil {
		return err
	}
	if w.sec == nil {
		return w.c.WriteMessage(w.msgType, w.wbuf)
	}
	frame, err := w.seal()
	if err != nil {
		return err
	}
	return w.c.WriteMessage(w.msgType, frame)
}

// read returns the next envelope. It is valid until the next read: with
// the proto codec its strings alias the read buffer. A decode error is
// returned as a *protocol.Error; the connection stays usable.
//
// On an encrypted connection a frame that does not open (or a plaintext
// envelope) is a *secureError: the connection is dead.
func (w *wsConn) read() (*protocol.Envelope, error) {
	_, r, err := w.c.NextReader()
	if err != nil {
		return nil, err
	}
	w.rbuf, err = readAll(w.rbuf[:0], r)
	if err != nil {
		return nil, err
	}
	data := w.rbuf
	if w.sec != nil {
		var ok bool
		if data, ok, err = w.open(); err != nil {
			return nil, err
		}
		if !ok { // the server's NewSessionTicket
			return w.read()
		}
	}
	if err := w.codec.Decode(data, &w.renv); err != nil {
		return nil, err
	}
	return &w.renv, nil
}

// readAll appends everything from r to buf.
func readAll(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// hello sends Hello with token ("" for an anonymous visitor) and waits for
// the Welcome until deadline. Envelopes that arrive before the Welcome are
// skipped (at most 64).
func (w *wsConn) hello(token string, deadline time.Time) (welcome protocol.Welcome, err error) {
	return w.helloWith(protocol.Hello{Token: token}, deadline)
}

// helloWith is hello with every field of the Hello (a resume token and
// cursors).
func (w *wsConn) helloWith(h protocol.Hello, deadline time.Time) (welcome protocol.Welcome, err error) {
	env := protocol.Envelope{Kind: protocol.KindHello, ID: helloID}
	env.Hello = h
	env.Hello.ClientName = "unigate-bench"
	if err := w.c.SetWriteDeadline(deadline); err != nil {
		return welcome, err
	}
	if err := w.send(&env); err != nil {
		return welcome, err
	}
	_ = w.c.SetWriteDeadline(time.Time{})
	if err := w.c.SetReadDeadline(deadline); err != nil {
		return welcome, err
	}
	defer func() { _ = w.c.SetReadDeadline(time.Time{}) }()
	for range 64 {
		e, err := w.read()
		var pe *protocol.Error
		switch {
		case errors.As(err, &pe):
			return welcome, fmt.Errorf("decoding the welcome: %w", err)
		case err != nil:
			return welcome, err
		case e.Kind == protocol.KindError && e.ID == helloID:
			return welcome, &serverError{code: e.Error.Code, msg: strings.Clone(e.Error.Message)}
		case e.Kind == protocol.KindWelcome:
			welcome = e.Welcome
			welcome.SessionID = strings.Clone(welcome.SessionID)
			welcome.ResumeToken = strings.Clone(welcome.ResumeToken)
			welcome.UserID = strings.Clone(welcome.UserID)
			welcome.ServerVersion = strings.Clone(welcome.ServerVersion)
			convs := make([]string, len(welcome.Conversations))
			for i, c := range welcome.Conversations {
				convs[i] = strings.Clone(c)
			}
			welcome.Conversations = convs
			return welcome, nil
		}
	}
	return welcome, errors.New("no welcome among the first 64 envelopes")
}

// closeNow sends a normal close frame (best effort) and closes the socket.
func (w *wsConn) closeNow() {
	_ = w.c.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bench done"), time.Now().Add(time.Second))
	_ = w.c.Close()
}

// reasonOf turns an error into a short, bounded label for failure counts.
func reasonOf(err error) string {
	var se *serverError
	var he *httpError
	var ce *websocket.CloseError
	var pe *protocol.Error
	var ne net.Error
	var cre *crypto.Error
	switch {
	case err == nil:
		return "none"
	case errors.As(err, &cre):
		return "secure_" + strconv.Itoa(int(cre.Code))
	case errors.As(err, &se):
		return "error_" + strconv.Itoa(int(se.code)) + "_" + se.code.String()
	case errors.As(err, &he):
		return "http_" + strconv.Itoa(he.status)
	case errors.As(err, &ce):
		return "close_" + strconv.Itoa(ce.Code)
	case errors.As(err, &pe):
		return "decode_" + strconv.Itoa(int(pe.Code))
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "eaddrnotavail"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "econnrefused"
	case errors.Is(err, syscall.ECONNRESET):
		return "econnreset"
	case errors.Is(err, syscall.EPIPE):
		return "epipe"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "emfile"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "etimedout"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, websocket.ErrBadHandshake):
		return "bad_handshake"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "eof"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "other"
}

// reasonCounter counts failures by reason, keeping the first error text of
// each reason as a sample. Safe for concurrent use.
type reasonCounter struct {
	mu      sync.Mutex
	counts  map[string]int64
	samples map[string]string
}

func newReasonCounter() *reasonCounter {
	return &reasonCounter{counts: make(map[string]int64), samples: make(map[string]string)}
}

func (r *reasonCounter) add(reason string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts[reason]++
	if _, ok := r.samples[reason]; !ok && err != nil {
		s := err.Error()
		if len(s) > 200 {
			s = s[:200]
		}
		r.samples[reason] = s
	}
}

func (r *reasonCounter) addErr(err error) { r.add(reasonOf(err), err) }

func (r *reasonCounter) total() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, v := range r.counts {
		n += v
	}
	return n
}

// Reasons is a count per reason with one sample error text per reason.
type Reasons struct {
	Counts  map[string]int64  `json:"counts,omitempty"`
	Samples map[string]string `json:"samples,omitempty"`
}

func (r *reasonCounter) export() Reasons {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := Reasons{Counts: make(map[string]int64, len(r.counts)), Samples: make(map[string]string, len(r.samples))}
	for k, v := range r.counts {
		out.Counts[k] = v
	}
	for k, v := range r.samples {
		out.Samples[k] = v
	}
	return out
}

// merge adds o into r (coordinator side).
func (r *Reasons) merge(o Reasons) {
	if len(o.Counts) == 0 {
		return
	}
	if r.Counts == nil {
		r.Counts = make(map[string]int64)
		r.Samples = make(map[string]string)
	}
	for k, v := range o.Counts {
		r.Counts[k] += v
	}
	for k, v := range o.Samples {
		if _, ok := r.Samples[k]; !ok {
			r.Samples[k] = v
		}
	}
}

func (r Reasons) total() int64 {
	var n int64
	for _, v := range r.Counts {
		n += v
	}
	return n
}

// helloAgent says hello with an agent token and checks that the server
// granted the agent role; on failure it closes the connection.
func (w *wsConn) helloAgent(token string, deadline time.Time) (protocol.Welcome, error) {
	welcome, err := w.hello(token, deadline)
	if err != nil {
		_ = w.c.Close()
		return welcome, err
	}
	if welcome.Role != protocol.RoleAgent {
		_ = w.c.Close()
		return welcome, fmt.Errorf("welcome gives role %s, want agent", welcome.Role)
	}
	return welcome, nil
}

// goOnline sends Presence online with capacity (and skill, if any) and
// waits for the agent's reader to report the answer on answered.
func (w *wsConn) goOnline(ctx context.Context, capacity int, skill string, answered <-chan error) error {
	env := protocol.Envelope{Kind: protocol.KindPresence, ID: presenceID}
	env.Presence = protocol.Presence{Status: protocol.StatusOnline, Capacity: uint32(capacity)}
	if skill != "" {
		env.Presence.Skills = []string{skill}
	}
	if err := w.send(&env); err != nil {
		return err
	}
	select {
	case err := <-answered:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer to presence: %w", ctx.Err())
	}
}
