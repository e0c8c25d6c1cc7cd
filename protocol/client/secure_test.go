package client_test

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
	"github.com/unigate/unigate/protocol/client"
)

// countingSigner counts the server's signatures.
type countingSigner struct {
	crypto.Signer
	n atomic.Int64
}

func (s *countingSigner) Sign(msg []byte) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(msg)
}

// secureServer is the channel configuration of a test gateway: an SM2 and
// an Ed25519 identity (counting their signatures), tickets on.
type secureServer struct {
	sm2, ed *countingSigner
	opts    *broker.SecureOptions
}

func newSecureServer(t *testing.T) *secureServer {
	t.Helper()
	sm2, err := crypto.GenerateSigner(crypto.SigSM2)
	if err != nil {
		t.Fatal(err)
	}
	ed, err := crypto.GenerateSigner(crypto.SigEd25519)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := crypto.NewTicketKeyring(nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	s := &secureServer{sm2: &countingSigner{Signer: sm2}, ed: &countingSigner{Signer: ed}}
	s.opts = &broker.SecureOptions{Server: &crypto.ServerConfig{
		Identities: []crypto.Signer{s.sm2, s.ed},
		Tickets:    ring,
		RekeyAfter: 5, // rekey often: every few envelopes in both directions
	}}
	return s
}

func (s *secureServer) signatures() int64 { return s.sm2.n.Load() + s.ed.n.Load() }

func (s *secureServer) client(suite *crypto.Suite) *crypto.ClientConfig {
	return &crypto.ClientConfig{
		Suites:     []*crypto.Suite{suite},
		ServerKeys: []crypto.Verifier{s.sm2.Public(), s.ed.Public()},
	}
}

// tap records every byte a client's connections read and write, and can
// cut them (a network drop).
type tap struct {
	mu    sync.Mutex
	wire  bytes.Buffer
	conns []net.Conn
}

type tapConn struct {
	net.Conn
	t *tap
}

func (c tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.mu.Lock()
	c.t.wire.Write(p[:n])
	c.t.mu.Unlock()
	return n, err
}

func (c tapConn) Write(p []byte) (int, error) {
	c.t.mu.Lock()
	c.t.wire.Write(p)
	c.t.mu.Unlock()
	return c.Conn.Write(p)
}

func (t *tap) dialer() *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		t.mu.Lock()
		t.conns = append(t.conns, c)
		t.mu.Unlock()
		return tapConn{Conn: c, t: t}, nil
	}}
}

func (t *tap) contains(s string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Contains(t.wire.Bytes(), []byte(s))
}

// drop cuts the current connection.
func (t *tap) drop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.conns {
		_ = c.Close()
	}
	t.conns = nil
}

// events collects a client's events.
type events struct {
	mu  sync.Mutex
	got []*protocol.Envelope
}

func (e *events) add(env *protocol.Envelope) {
	e.mu.Lock()
	e.got = append(e.got, env)
	e.mu.Unlock()
}

func (e *events) wait(t *testing.T, what string, m func(*protocol.Envelope) bool) *protocol.Envelope {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		for _, env := range e.got {
			if m(env) {
				e.mu.Unlock()
				return env
			}
		}
		e.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("no %s", what)
	return nil
}

func deliverOf(text string) func(*protocol.Envelope) bool {
	return func(e *protocol.Envelope) bool { return e.Kind == protocol.KindDeliver && e.Deliver.Text == text }
}

// TestSecureChat: through a real gateway, a visitor on GM (JSON), a
// visitor on GM-PQ (protobuf) and an agent on INTL-PQ chat both ways over
// the secure channel; no message text crosses the wire in clear; a
// reconnect resumes with the previous connection's ticket and costs the
// server no signature, and the chat goes on.
func TestSecureChat(t *testing.T) {
	ss := newSecureServer(t)
	n := startNode(t, broker.Options{Secure: ss.opts})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var agentEv, gmEv, pqEv events
	agentTap, gmTap, pqTap := &tap{}, &tap{}, &tap{}
	agent, err := client.Dial(ctx, client.Options{URL: n.url(), Token: n.token(token.RoleAgent, "a-1"), Dialer: agentTap.dialer(),
		Secure: ss.client(crypto.IntlPQ), OnEvent: agentEv.add})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if _, err := agent.Request(ctx, &protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 5}}); err != nil {
		t.Fatal(err)
	}
	gm, err := client.Dial(ctx, client.Options{URL: n.url(), Tenant: "default", Subprotocol: protocol.SubprotocolJSON,
		Dialer: gmTap.dialer(), Secure: ss.client(crypto.GM), OnEvent: gmEv.add})
	if err != nil {
		t.Fatal(err)
	}
	defer gm.Close()
	pq, err := client.Dial(ctx, client.Options{URL: n.url(), Tenant: "default", Dialer: pqTap.dialer(),
		Secure: ss.client(crypto.GMPQ), OnEvent: pqEv.add})
	if err != nil {
		t.Fatal(err)
	}
	defer pq.Close()
	for c, want := range map[*client.Client]string{agent: "INTL-PQ", gm: "GM", pq: "GM-PQ"} {
		if got := c.Secure(); got.Suite != want || got.Resumed {
			t.Fatalf("secure channel %+v, want a full %s handshake", got, want)
		}
	}

	const gmText, pqText = "我的订单号是 GM-SECRET-4711", "post-quantum PQ-SECRET-0815"
	gmConv, err := gm.Open(ctx, protocol.Open{Text: gmText})
	if err != nil {
		t.Fatal(err)
	}
	pqConv, err := pq.Open(ctx, protocol.Open{Text: pqText})
	if err != nil {
		t.Fatal(err)
	}
	agentEv.wait(t, "the GM visitor's message", deliverOf(gmText))
	agentEv.wait(t, "the GM-PQ visitor's message", deliverOf(pqText))
	// Enough envelopes both ways to rekey several times (RekeyAfter 5).
	for i := range 6 {
		reply := "agent REPLY-SECRET-" + string(rune('A'+i))
		if _, err := agent.Send(ctx, gmConv, reply); err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Send(ctx, pqConv, reply); err != nil {
			t.Fatal(err)
		}
		gmEv.wait(t, "the agent's reply (GM)", deliverOf(reply))
		pqEv.wait(t, "the agent's reply (GM-PQ)", deliverOf(reply))
	}
	for name, tp := range map[string]*tap{"agent": agentTap, "GM visitor": gmTap, "GM-PQ visitor": pqTap} {
		for _, secret := range []string{"GM-SECRET", "PQ-SECRET", "REPLY-SECRET", "我的订单号"} {
			if tp.contains(secret) {
				t.Errorf("%s's wire carries %q in clear", name, secret)
			}
		}
	}

	// Resumption: drop the GM visitor's connection; the reconnect offers the
	// ticket and the server signs nothing.
	before := ss.signatures()
	gmTap.drop()
	deadline := time.Now().Add(10 * time.Second)
	for gm.Stats().Reconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the GM visitor did not reconnect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := gm.Secure(); got.Suite != "GM" || !got.Resumed {
		t.Fatalf("after the reconnect: %+v, want a resumed GM channel", got)
	}
	if d := ss.signatures() - before; d != 0 {
		t.Fatalf("the resumed handshake cost the server %d signatures", d)
	}
	if !gm.Welcome().Resumed {
		t.Fatal("the chat session was not resumed")
	}
	if _, err := gm.Send(ctx, gmConv, "back again BACK-SECRET"); err != nil {
		t.Fatal(err)
	}
	agentEv.wait(t, "the resumed visitor's message", deliverOf("back again BACK-SECRET"))
	if gmTap.contains("BACK-SECRET") {
		t.Error("the resumed connection carries text in clear")
	}
	// The ticket of the resumed connection resumes again.
	gmTap.drop()
	for gm.Stats().Reconnects < 2 {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("no second reconnect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !gm.Secure().Resumed || ss.signatures() != before {
		t.Fatalf("second resumption: %+v, %d signatures since", gm.Secure(), ss.signatures()-before)
	}
}

// TestSecureWrongServerKey: a client pinning another key refuses the
// server for good (the handshake is the client's to refuse).
func TestSecureWrongServerKey(t *testing.T) {
	ss := newSecureServer(t)
	n := startNode(t, broker.Options{Secure: ss.opts})
	other, err := crypto.GenerateSigner(crypto.SigSM2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Dial(ctx, client.Options{URL: n.url(), Tenant: "default",
		Secure: &crypto.ClientConfig{Suites: []*crypto.Suite{crypto.GM}, ServerKeys: []crypto.Verifier{other.Public()}}})
	var pe *client.PermanentError
	if !asPermanent(err, &pe) || !strings.Contains(pe.Reason, "secure channel") {
		t.Fatalf("Dial: %v, want a permanent secure-channel refusal", err)
	}
}

func asPermanent(err error, pe **client.PermanentError) bool {
	p, ok := err.(*client.PermanentError)
	if ok {
		*pe = p
	}
	return ok
}

// TestSecureProtocolErrorIsPermanent: a server that closes with 1002 (here
// the real gateway refusing a resumption whose binder does not match the
// ticket's PSK) is not retried: Dial returns a PermanentError after one
// connection. (Retrying would have hidden the failure behind a full
// handshake on the next connection.)
func TestSecureProtocolErrorIsPermanent(t *testing.T) {
	ss := newSecureServer(t)
	n := startNode(t, broker.Options{Secure: ss.opts})

	// A genuine ticket of this server, with a PSK the client does not have.
	cfg := ss.client(crypto.GM)
	ch, err := crypto.NewClientHandshake(cfg)
	if err != nil {
		t.Fatal(err)
	}
	scfg := *ss.opts.Server // issuing a ticket needs no SeenSet
	sh := crypto.NewServerHandshake(&scfg)
	hello, err := sh.HandleClientHello(ch.Hello())
	if err != nil {
		t.Fatal(err)
	}
	fin, _, err := ch.HandleServerHello(hello)
	if err != nil {
		t.Fatal(err)
	}
	_, nst, err := sh.HandleClientFinished(fin)
	if err != nil || nst == nil {
		t.Fatalf("no ticket: %v", err)
	}
	sess, err := ch.HandleNewSessionTicket(nst)
	if err != nil {
		t.Fatal(err)
	}
	sess.PSK[0] ^= 1
	cfg.Session = sess

	var tp tap
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Dial(ctx, client.Options{URL: n.url(), Tenant: "default", Secure: cfg, Dialer: tp.dialer(), MinBackoff: time.Millisecond})
	var pe *client.PermanentError
	if !asPermanent(err, &pe) || pe.Close != websocket.CloseProtocolError {
		t.Fatalf("Dial: %v, want a PermanentError with close 1002", err)
	}
	if !strings.Contains(pe.Reason, "binder") {
		t.Errorf("close reason %q does not name the failure", pe.Reason)
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if dials := len(tp.conns); dials != 1 {
		t.Fatalf("%d connections, want 1 (no retry after 1002)", dials)
	}
}
