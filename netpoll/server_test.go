package netpoll

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

// echo is a Handler that sends every message back and records events.
type echo struct {
	noEstablish bool // leave the application handshake open
	// handshakeOnMessage: every message counts as the client's handshake
	// (Conn.HandshakeReceived).
	handshakeOnMessage bool
	mu                 sync.Mutex
	opened             int
	closed             int
	errs               []error
	msgs               int
}

func (e *echo) OnOpen(c *Conn) {
	if !e.noEstablish {
		c.MarkEstablished()
	}
	e.mu.Lock()
	e.opened++
	e.mu.Unlock()
}

func (e *echo) OnMessage(c *Conn, op ws.OpCode, p []byte) {
	if e.handshakeOnMessage {
		c.HandshakeReceived()
	}
	e.mu.Lock()
	e.msgs++
	e.mu.Unlock()
	f := AcquireFrame()
	f.B = append(f.B, p...)
	f.Seal(op)
	_ = c.Send(f)
}

func (e *echo) OnClose(_ *Conn, err error) {
	e.mu.Lock()
	e.closed++
	e.errs = append(e.errs, err)
	e.mu.Unlock()
}

func (e *echo) counts() (opened, closed, msgs int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.opened, e.closed, e.msgs
}

// startServer starts a server on a free loopback port and stops it when the
// test ends.
func startServer(tb testing.TB, h Handler, opts ...Option) *Server {
	tb.Helper()
	opts = append([]Option{WithAddr("127.0.0.1:0"), WithEventLoops(2)}, opts...)
	s, err := New(h, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReusePortEveryLoop: with WithReusePort on port 0, every event loop
// listens on the one port the server reports, so clients reach them all
// (gnet alone would bind each loop's listener to a port of its own).
func TestReusePortEveryLoop(t *testing.T) {
	s := startServer(t, &echo{}, WithReusePort(true), WithEventLoops(2))
	var conns []*websocket.Conn
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}}
	for range 32 {
		c, _, err := d.Dial("ws://"+s.Addr()+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFor(t, 5*time.Second, "32 connections", func() bool { return s.Connections() == len(conns) })
	loops := map[*loopFlusher]int{}
	s.reg.each(func(c *Conn) { loops[c.loop]++ })
	// The kernel spreads connections over the listeners by their address
	// hash: all 32 on one of 2 loops has a chance of 2⁻³¹.
	if len(loops) != 2 {
		t.Fatalf("connections per event loop: %v; want both loops used", loops)
	}
}
