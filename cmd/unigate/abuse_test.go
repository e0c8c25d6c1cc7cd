package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

func visitorToken(t *testing.T, g *gateway, id string) string {
	t.Helper()
	now := time.Now()
	tok, err := g.signer.Sign(token.Claims{Subject: id, Role: token.RoleVisitor, Tenant: "default", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// helloOutcome is what a hello got: a welcome (the connection stays open,
// returned), or an error code and the close that followed.
type helloOutcome struct {
	c         *websocket.Conn
	welcomed  bool
	errCode   float64
	closeCode int
	err       error
}

// tryHello dials, says hello with tok ("" = anonymous) and waits for the
// welcome, or for the error and the close.
func tryHello(addr, tok string) helloOutcome {
	hello := map[string]any{}
	if tok != "" {
		hello["token"] = tok
	}
	return helloWith(addr, hello, nil)
}

// helloWith dials with header, sends hello and waits for the welcome (the
// connection stays open, returned), or for the error and the close.
func helloWith(addr string, hello map[string]any, header http.Header) helloOutcome {
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.json"}, HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial("ws://"+addr+"/ws", header)
	if err != nil {
		return helloOutcome{err: err}
	}
	if err := c.WriteJSON(map[string]any{"id": "1", "hello": hello}); err != nil {
		c.Close()
		return helloOutcome{err: err}
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var out helloOutcome
	for {
		var env map[string]any
		if err := c.ReadJSON(&env); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				out.closeCode = ce.Code
			} else {
				out.err = err
			}
			c.Close()
			return out
		}
		if _, ok := env["welcome"]; ok {
			_ = c.SetReadDeadline(time.Time{})
			out.c, out.welcomed = c, true
			return out
		}
		if e, ok := env["error"].(map[string]any); ok {
			out.errCode, _ = e["code"].(float64)
		}
	}
}

// helloMany runs tryHello n times, 32 at a time; tok(i) gives the token.
func helloMany(t *testing.T, addr string, n int, tok func(i int) string) []helloOutcome {
	t.Helper()
	out := make([]helloOutcome, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = tryHello(addr, tok(i))
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, o := range out {
			if o.c != nil {
				o.c.Close()
			}
		}
	})
	return out
}

// TestNATIdentifiedAndAnonymous: behind one IP (a NAT), 1,000 visitors with
// tokens are all admitted, while anonymous sessions from that IP are held
// to their configured cap: exactly the excess is refused with
// CodeRateLimited and close 1008. A fourth connection of one identity
// over its cap of three is refused the same way.
func TestNATIdentifiedAndAnonymous(t *testing.T) {
	const n, anonCap, idCap = 1000, 100, 3
	g := startGateway(t, func(c *config.Config) {
		c.Limits.AcceptRate, c.Limits.AcceptBurst = 0, 0
		c.Limits.PerIPConnections, c.Limits.PerIPRate, c.Limits.PerIPBurst = 5000, 0, 0 // generous per IP
		c.Limits.IdentityConnections, c.Limits.IdentityRate, c.Limits.IdentityBurst = idCap, 0, 0
		c.Limits.AnonymousPerIPConnections, c.Limits.AnonymousPerIPRate, c.Limits.AnonymousPerIPBurst = anonCap, 0, 0
	})
	addr := g.srv.Addr()

	ident := helloMany(t, addr, n, func(i int) string { return visitorToken(t, g, fmt.Sprintf("nat-visitor-%d", i)) })
	for i, o := range ident {
		if !o.welcomed {
			t.Fatalf("identified visitor %d refused: error %v close %d %v", i, o.errCode, o.closeCode, o.err)
		}
	}

	anon := helloMany(t, addr, n, func(int) string { return "" })
	admitted, refused := 0, 0
	for i, o := range anon {
		switch {
		case o.welcomed:
			admitted++
		case o.errCode == float64(protocol.CodeRateLimited) && o.closeCode == websocket.ClosePolicyViolation:
			refused++
		default:
			t.Fatalf("anonymous %d: neither welcomed nor refused as documented: error %v close %d %v", i, o.errCode, o.closeCode, o.err)
		}
	}
	if admitted != anonCap || refused != n-anonCap {
		t.Fatalf("anonymous: %d admitted, %d refused; want %d and %d", admitted, refused, anonCap, n-anonCap)
	}

	// Closing anonymous sessions frees their places.
	for _, o := range anon {
		if o.c != nil {
			o.c.Close()
			break
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for o := tryHello(addr, ""); !o.welcomed; o = tryHello(addr, "") {
		if time.Now().After(deadline) {
			t.Fatalf("a closed anonymous session did not free its place: %+v", o)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The identity cap: one visitor id already holds one connection.
	tok := visitorToken(t, g, "nat-visitor-0")
	for i := range idCap - 1 {
		if o := tryHello(addr, tok); !o.welcomed {
			t.Fatalf("connection %d of one identity refused: %+v", i+2, o)
		} else {
			t.Cleanup(func() { o.c.Close() })
		}
	}
	if o := tryHello(addr, tok); o.welcomed || o.errCode != float64(protocol.CodeRateLimited) || o.closeCode != websocket.ClosePolicyViolation {
		t.Fatalf("connection over the identity cap: %+v", o)
	}
}

// TestAnonymousRateCloses1013: anonymous sessions over their rate are told
// to come back later (1013), not refused for good.
func TestAnonymousRateCloses1013(t *testing.T) {
	g := startGateway(t, func(c *config.Config) {
		c.Limits.AnonymousPerIPConnections, c.Limits.AnonymousPerIPRate, c.Limits.AnonymousPerIPBurst = 0, 1, 2
	})
	outs := helloMany(t, g.srv.Addr(), 6, func(int) string { return "" })
	later := 0
	for _, o := range outs {
		if !o.welcomed {
			if o.closeCode != 1013 || o.errCode != float64(protocol.CodeRateLimited) {
				t.Fatalf("refused anonymous hello: %+v, want CodeRateLimited and 1013", o)
			}
			later++
		}
	}
	if later < 6-2-1 { // the burst of 2, plus at most one token refilled meanwhile
		t.Fatalf("only %d of 6 refused with a burst of 2", later)
	}
}

// TestTypingFlood: typing updates over their rate are dropped (the agent
// sees fewer than were sent, the sender stays connected and chatting); a
// flood far over the rate closes the sender with 1008 while the
// conversation's other side is unaffected.
func TestTypingFlood(t *testing.T) {
	g := startGateway(t, func(c *config.Config) {
		c.Limits.TypingRate, c.Limits.TypingBurst = 1, 20
		c.Limits.MessageRate, c.Limits.MessageBurst = 0, 0 // isolate the typing limit from netpoll's
	})
	agent := dialJSON(t, g.srv.Addr())
	agent.send(map[string]any{"hello": map[string]any{"token": agentToken(t, g, "flood-agent")}})
	agent.next("welcome")
	agent.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 3}})
	agent.next("presence")

	visitor := dialJSON(t, g.srv.Addr())
	visitor.send(map[string]any{"hello": map[string]any{}})
	visitor.next("welcome")
	visitor.send(map[string]any{"open": map[string]any{"text": "hi"}})
	var convID string
	for {
		c := visitor.next("conversation")
		if c["state"] == "STATE_ASSIGNED" {
			convID = c["conversationId"].(string)
			break
		}
	}

	// 30 typing updates at once: a burst of 20 passes, the rest is dropped.
	const sent = 30
	for range sent {
		if err := visitor.c.WriteJSON(map[string]any{"typing": map[string]any{"conversationId": convID, "typing": true}}); err != nil {
			t.Fatal(err)
		}
	}
	visitor.send(map[string]any{"send": map[string]any{"conversationId": convID, "clientMsgId": "marker", "text": "after typing"}})
	visitor.next("ack")
	typings := 0
	_ = agent.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for done := false; !done; {
		var env map[string]any
		if err := agent.c.ReadJSON(&env); err != nil {
			t.Fatal(err)
		}
		if _, ok := env["typing"]; ok {
			typings++
		}
		if d, ok := env["deliver"].(map[string]any); ok && d["text"] == "after typing" {
			done = true
		}
	}
	if typings < 20 || typings >= sent {
		t.Fatalf("agent saw %d of %d typing updates; want the burst of 20 and drops", typings, sent)
	}

	// A flood: the sender is closed with 1008, the agent keeps working.
	for range 500 {
		if err := visitor.c.WriteJSON(map[string]any{"typing": map[string]any{"conversationId": convID, "typing": true}}); err != nil {
			break
		}
	}
	_ = visitor.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var err error
	for err == nil {
		_, _, err = visitor.c.ReadMessage()
	}
	if !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("flooder: %v, want close 1008", err)
	}
	agent.send(map[string]any{"send": map[string]any{"conversationId": convID, "clientMsgId": "agent-after", "text": "still here"}})
	agent.next("ack")
}

// TestPingFlood: pings count against the message rate; a ping flood is
// closed with 1008 while another client keeps chatting.
func TestPingFlood(t *testing.T) {
	g := startGateway(t, func(c *config.Config) { c.Limits.MessageRate, c.Limits.MessageBurst = 10, 20 })
	good := dialJSON(t, g.srv.Addr())
	good.send(map[string]any{"hello": map[string]any{}})
	good.next("welcome")
	bad := dialJSON(t, g.srv.Addr())
	for range 1000 {
		if err := bad.c.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
			break
		}
	}
	_ = bad.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var err error
	for err == nil {
		_, _, err = bad.c.ReadMessage()
	}
	if !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("ping flooder: %v, want close 1008", err)
	}
	good.send(map[string]any{"open": map[string]any{"text": "unaffected"}})
	good.next("conversation")
}

// TestSlowloris: 200 clients sending their request headers one byte at a
// time are each cut at the handshake deadline (the socket is closed),
// while a normal client connects and chats meanwhile.
func TestSlowloris(t *testing.T) {
	const n = 200
	g := startGateway(t, func(c *config.Config) { c.WebSocket.HandshakeTimeout = 2 * time.Second })
	var cut atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() {
			c, err := net.Dial("tcp", g.srv.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			req := []byte("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
			for _, b := range req {
				if _, err := c.Write([]byte{b}); err != nil {
					cut.Add(1)
					return
				}
				// Reading with a short deadline both paces the bytes and
				// notices the server's close.
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					cut.Add(1)
					return
				}
			}
		})
	}
	// Meanwhile a real client is served.
	v := dialJSON(t, g.srv.Addr())
	v.send(map[string]any{"hello": map[string]any{}})
	v.next("welcome")
	wg.Wait()
	if int(cut.Load()) != n {
		t.Fatalf("%d of %d slowloris connections were cut (after %v)", cut.Load(), n, time.Since(start))
	}
	v.send(map[string]any{"open": map[string]any{"text": "after the slowloris"}})
	v.next("conversation")
}

// TestTenantOrigins: a tenant with its own origins accepts browser pages
// only from them, whichever way the hello names the tenant; other tenants
// and clients without an Origin header are unaffected.
func TestTenantOrigins(t *testing.T) {
	g := startGateway(t, func(c *config.Config) {
		c.WebSocket.TenantOrigins = []string{"acme=https://shop.acme.example", "acme=https://*.acme-cdn.example"}
	})
	now := time.Now()
	acmeAgent, err := g.signer.Sign(token.Claims{Subject: "origin-agent", Role: token.RoleAgent, Tenant: "acme", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	try := func(origin string, hello map[string]any) helloOutcome {
		t.Helper()
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		o := helloWith(g.srv.Addr(), hello, h)
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.c != nil {
			t.Cleanup(func() { o.c.Close() })
		}
		return o
	}
	refused := func(o helloOutcome) bool {
		return !o.welcomed && o.errCode == float64(protocol.CodeForbidden) && o.closeCode == websocket.ClosePolicyViolation
	}
	for _, c := range []struct {
		name    string
		origin  string
		hello   map[string]any
		welcome bool
	}{
		{"anonymous acme visitor from acme's shop", "https://shop.acme.example", map[string]any{"tenant": "acme"}, true},
		{"anonymous acme visitor from a subdomain of acme's CDN", "https://eu.acme-cdn.example", map[string]any{"tenant": "acme"}, true},
		{"anonymous acme visitor from another site", "https://evil.example", map[string]any{"tenant": "acme"}, false},
		{"acme agent from another site", "https://evil.example", map[string]any{"token": acmeAgent}, false},
		{"acme agent from acme's shop", "https://shop.acme.example", map[string]any{"token": acmeAgent}, true},
		{"acme agent without Origin (a native app)", "", map[string]any{"token": acmeAgent}, true},
		{"default tenant from another site", "https://evil.example", map[string]any{}, true},
	} {
		o := try(c.origin, c.hello)
		if c.welcome && !o.welcomed || !c.welcome && !refused(o) {
			t.Errorf("%s: %+v, want welcome=%v (else error 2003 and close 1008)", c.name, o, c.welcome)
		}
	}
	// A reload (SIGHUP) lifts the restriction.
	next := g.cfg
	next.WebSocket.TenantOrigins = nil
	if err := g.reload(next); err != nil {
		t.Fatal(err)
	}
	if o := try("https://evil.example", map[string]any{"tenant": "acme"}); !o.welcomed {
		t.Fatalf("after the reload: %+v", o)
	}
}

// TestRefusalOrder: a hello that can never succeed (its page's origin is
// not allowed for the tenant) is told so, even when its IP has used up the
// anonymous limit: "busy, retry" would make it retry for nothing.
func TestRefusalOrder(t *testing.T) {
	g := startGateway(t, func(c *config.Config) {
		c.WebSocket.TenantOrigins = []string{"acme=https://shop.acme.example"}
		c.Limits.AnonymousPerIPConnections, c.Limits.AnonymousPerIPRate, c.Limits.AnonymousPerIPBurst = 1, 0, 0
	})
	hello := func(origin string) helloOutcome {
		t.Helper()
		o := helloWith(g.srv.Addr(), map[string]any{"tenant": "acme"}, http.Header{"Origin": {origin}})
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.c != nil {
			t.Cleanup(func() { o.c.Close() })
		}
		return o
	}
	if o := hello("https://shop.acme.example"); !o.welcomed {
		t.Fatalf("first visitor: %+v", o)
	}
	// The IP's one anonymous session is taken: a good page is told to wait…
	if o := hello("https://shop.acme.example"); o.welcomed || o.errCode != float64(protocol.CodeRateLimited) {
		t.Fatalf("second visitor from the shop: %+v, want error %d", o, protocol.CodeRateLimited)
	}
	// …and a page that may not connect is told that.
	if o := hello("https://evil.example"); o.welcomed || o.errCode != float64(protocol.CodeForbidden) || o.closeCode != websocket.ClosePolicyViolation {
		t.Fatalf("visitor from another site: %+v, want error %d and close 1008", o, protocol.CodeForbidden)
	}
}
