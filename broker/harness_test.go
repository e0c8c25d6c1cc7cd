package broker

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

const waitTimeout = 5 * time.Second

// waitFor polls cond until it holds or timeout passes (nats-server's
// checkFor): tests never sleep for a fixed time.
func waitFor(t testing.TB, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

func testSigner(t testing.TB) *token.Signer {
	t.Helper()
	s, err := token.NewSigner(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testEnv is a broker behind a real netpoll server on 127.0.0.1:0.
type testEnv struct {
	t      *testing.T
	b      *Broker
	srv    *netpoll.Server
	signer *token.Signer
}

func startEnv(t *testing.T, o Options) *testEnv {
	t.Helper()
	e := &testEnv{t: t, signer: testSigner(t)}
	if o.Signer == nil {
		o.Signer = e.signer
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := netpoll.New(b, netpoll.WithAddr("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Stop(ctx)
		b.Close()
	})
	e.b, e.srv = b, srv
	return e
}

// token signs a chat token valid for an hour.
func (e *testEnv) token(sub, role string, skills ...string) string {
	e.t.Helper()
	now := time.Now()
	tok, err := e.signer.Sign(token.Claims{
		Subject: sub, Role: role, Skills: skills,
		IssuedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// tclient is a gorilla/websocket client speaking one subprotocol. A reader
// goroutine decodes everything the server sends into got.
type tclient struct {
	t     testing.TB
	name  string
	ws    *websocket.Conn
	codec protocol.Codec
	id    atomic.Uint64

	mu   sync.Mutex
	got  []*protocol.Envelope
	err  error // read error, once the connection is gone
	done chan struct{}
}

func (e *testEnv) dial(name, subprotocol string) *tclient {
	e.t.Helper()
	d := websocket.Dialer{Subprotocols: []string{subprotocol}, HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial("ws://"+e.srv.Addr()+"/ws", nil)
	if err != nil {
		e.t.Fatalf("%s: dial: %v (%v)", name, err, resp)
	}
	if conn.Subprotocol() != subprotocol {
		e.t.Fatalf("%s: subprotocol %q, want %q", name, conn.Subprotocol(), subprotocol)
	}
	c := &tclient{t: e.t, name: name, ws: conn, codec: protocol.ForSubprotocol(subprotocol), done: make(chan struct{})}
	go c.read()
	e.t.Cleanup(func() {
		_ = conn.Close()
		<-c.done
	})
	return c
}

func (c *tclient) read() {
	defer close(c.done)
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		env := new(protocol.Envelope)
		if err := c.codec.Decode(data, env); err != nil {
			err = fmt.Errorf("%s: cannot decode a server message: %w", c.name, err)
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		c.got = append(c.got, env)
		c.mu.Unlock()
	}
}

// send encodes env with a fresh envelope id (unless env.ID is set) and
// writes it; it returns the id.
func (c *tclient) send(env protocol.Envelope) uint64 {
	c.t.Helper()
	if env.ID == 0 {
		env.ID = c.id.Add(1)
	}
	data, err := c.codec.AppendEncode(nil, &env)
	if err != nil {
		c.t.Fatalf("%s: encode %s: %v", c.name, env.Kind, err)
	}
	c.sendRaw(data)
	return env.ID
}

func (c *tclient) sendRaw(data []byte) {
	c.t.Helper()
	op := websocket.TextMessage
	if c.codec.Binary() {
		op = websocket.BinaryMessage
	}
	if err := c.ws.WriteMessage(op, data); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

// all returns the received envelopes matching m, in arrival order.
func (c *tclient) all(m func(*protocol.Envelope) bool) []*protocol.Envelope {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*protocol.Envelope
	for _, e := range c.got {
		if m(e) {
			out = append(out, e)
		}
	}
	return out
}

// waitFor returns the first received envelope matching m, waiting for it.
func (c *tclient) waitFor(what string, m func(*protocol.Envelope) bool) *protocol.Envelope {
	c.t.Helper()
	var found *protocol.Envelope
	ok := waitFor(c.t, waitTimeout, func() bool {
		if all := c.all(m); len(all) > 0 {
			found = all[0]
			return true
		}
		return false
	})
	if !ok {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.t.Fatalf("%s: no %s within %v; got %d envelopes: %s (read error %v)", c.name, what, waitTimeout, len(c.got), summary(c.got), c.err)
	}
	return found
}

// waitError waits for the Error answering envelope id and checks its code.
func (c *tclient) waitError(id uint64, code protocol.Code) *protocol.Envelope {
	c.t.Helper()
	e := c.waitFor(fmt.Sprintf("error for envelope %d", id), func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindError && e.ID == id
	})
	if e.Error.Code != code {
		c.t.Fatalf("%s: envelope %d got error %d (%s), want %d", c.name, id, e.Error.Code, e.Error.Message, code)
	}
	if e.Error.Temporary != code.Temporary() {
		c.t.Fatalf("%s: error %d temporary=%v", c.name, code, e.Error.Temporary)
	}
	return e
}

// waitClosed waits until the server closed the connection with code.
func (c *tclient) waitClosed(code int) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitTimeout):
		c.t.Fatalf("%s: connection not closed within %v", c.name, waitTimeout)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !websocket.IsCloseError(c.err, code) {
		c.t.Fatalf("%s: closed with %v, want close code %d", c.name, c.err, code)
	}
}

// hello sends a Hello and returns the Welcome.
func (c *tclient) hello(h protocol.Hello) *protocol.Welcome {
	c.t.Helper()
	id := c.send(protocol.Envelope{Kind: protocol.KindHello, Hello: h})
	e := c.waitFor("welcome", func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindWelcome || e.Kind == protocol.KindError)
	})
	if e.Kind != protocol.KindWelcome {
		c.t.Fatalf("%s: hello answered with error %d %s", c.name, e.Error.Code, e.Error.Message)
	}
	return &e.Welcome
}

// online sends Presence ONLINE with capacity and waits for its echo.
func (c *tclient) online(capacity uint32) *protocol.Presence {
	c.t.Helper()
	id := c.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: capacity}})
	return &c.waitFor("presence echo", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindPresence && e.ID == id
	}).Presence
}

// open sends an Open and returns the Conversation event answering it.
func (c *tclient) open(o protocol.Open) *protocol.Conversation {
	c.t.Helper()
	id := c.send(protocol.Envelope{Kind: protocol.KindOpen, Open: o})
	e := c.waitFor("conversation event for open", func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindConversation || e.Kind == protocol.KindError)
	})
	if e.Kind != protocol.KindConversation {
		c.t.Fatalf("%s: open answered with error %d %s", c.name, e.Error.Code, e.Error.Message)
	}
	return &e.Conversation
}

// say sends a chat message and returns the Ack.
func (c *tclient) say(conv, cmid, text string) *protocol.Ack {
	c.t.Helper()
	id := c.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: conv, ClientMsgID: cmid, Text: text}})
	e := c.waitFor("ack", func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindAck || e.Kind == protocol.KindError)
	})
	if e.Kind != protocol.KindAck {
		c.t.Fatalf("%s: send answered with error %d %s", c.name, e.Error.Code, e.Error.Message)
	}
	if e.Ack.ConversationID != conv || e.Ack.ClientMsgID != cmid {
		c.t.Fatalf("%s: ack %+v does not echo conversation %s and cmid %s", c.name, e.Ack, conv, cmid)
	}
	return &e.Ack
}

// delivers returns the seqs of the Delivers received for conv, in order.
func (c *tclient) delivers(conv string) []uint64 {
	var seqs []uint64
	for _, e := range c.all(isDeliver(conv)) {
		seqs = append(seqs, e.Deliver.Seq)
	}
	return seqs
}

func (c *tclient) waitDeliver(conv string, seq uint64) *protocol.Deliver {
	c.t.Helper()
	return &c.waitFor(fmt.Sprintf("deliver %s#%d", conv, seq), func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == conv && e.Deliver.Seq == seq
	}).Deliver
}

func (c *tclient) waitState(conv string, st protocol.State) *protocol.Conversation {
	c.t.Helper()
	return &c.waitFor("conversation "+st.String(), func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == conv && e.Conversation.State == st
	}).Conversation
}

func isDeliver(conv string) func(*protocol.Envelope) bool {
	return func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == conv
	}
}

func isKind(k protocol.Kind) func(*protocol.Envelope) bool {
	return func(e *protocol.Envelope) bool { return e.Kind == k }
}

func summary(envs []*protocol.Envelope) string {
	var b bytes.Buffer
	for i, e := range envs {
		if i == 20 {
			b.WriteString(" …")
			break
		}
		fmt.Fprintf(&b, "[%s id=%d", e.Kind, e.ID)
		switch e.Kind {
		case protocol.KindError:
			fmt.Fprintf(&b, " %d %s", e.Error.Code, e.Error.Message)
		case protocol.KindConversation:
			fmt.Fprintf(&b, " %s agent=%s", e.Conversation.State, e.Conversation.AgentID)
		case protocol.KindDeliver:
			fmt.Fprintf(&b, " seq=%d", e.Deliver.Seq)
		case protocol.KindQueue:
			fmt.Fprintf(&b, " pos=%d", e.Queue.Position)
		}
		b.WriteString("] ")
	}
	return b.String()
}

// recPeer is an in-process Peer: it counts what it is sent and, if
// capturing, keeps a copy of every payload. The real *netpoll.Conn
// implements the same interface.
type recPeer struct {
	id      uint64
	frames  atomic.Int64
	capture atomic.Bool

	mu     sync.Mutex
	got    [][]byte
	closed ws.StatusCode
}

func (p *recPeer) ID() uint64 { return p.id }

func (p *recPeer) Send(f *netpoll.Frame) error {
	p.frames.Add(1)
	if p.capture.Load() {
		p.mu.Lock()
		p.got = append(p.got, bytes.Clone(f.Payload()))
		p.mu.Unlock()
	}
	f.Release()
	return nil
}

func (p *recPeer) Close(code ws.StatusCode, _ string) {
	p.mu.Lock()
	p.closed = code
	p.mu.Unlock()
}

// envelopes decodes what the peer captured.
func (p *recPeer) envelopes(t testing.TB, codec protocol.Codec) []*protocol.Envelope {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*protocol.Envelope, 0, len(p.got))
	for _, data := range p.got {
		e := new(protocol.Envelope)
		if err := codec.Decode(data, e); err != nil {
			t.Fatalf("peer %d: undecodable frame: %v", p.id, err)
		}
		out = append(out, e)
	}
	return out
}

// waitEnvelope waits until the peer captured an envelope matching m.
func (p *recPeer) waitEnvelope(t testing.TB, codec protocol.Codec, what string, m func(*protocol.Envelope) bool) *protocol.Envelope {
	t.Helper()
	var found *protocol.Envelope
	if !waitFor(t, waitTimeout, func() bool {
		i := slices.IndexFunc(p.envelopes(t, codec), m)
		if i >= 0 {
			found = p.envelopes(t, codec)[i]
		}
		return i >= 0
	}) {
		t.Fatalf("peer %d: no %s; got %s", p.id, what, summary(p.envelopes(t, codec)))
	}
	return found
}

// encode encodes env with codec, failing the test on error.
func encode(t testing.TB, codec protocol.Codec, env protocol.Envelope) []byte {
	t.Helper()
	data, err := codec.AppendEncode(nil, &env)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
