package netpoll

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
	"github.com/panjf2000/gnet/v2"
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

// TestFragmentBufferReturned: a client that fragments its messages
// (gorilla splits a message longer than its write buffer) gets them
// reassembled and echoed whole, and between messages its connection holds
// no reassembly buffer: it goes back to the pool after each delivery
// (it used to stay with the connection, up to 4 KiB per such client).
func TestFragmentBufferReturned(t *testing.T) {
	s := startServer(t, &echo{})
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}, WriteBufferSize: 512}
	ws, _, err := d.Dial("ws://"+s.Addr()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	waitFor(t, 5*time.Second, "the connection", func() bool { return s.Connections() == 1 })
	var conn *Conn
	s.reg.each(func(c *Conn) { conn = c })
	for i, n := range []int{3000, 1500, 20 << 10, 2000} {
		msg := bytes.Repeat([]byte{byte('a' + i)}, n)
		if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d: echoed %d bytes, want the %d sent", i, len(got), n)
		}
		held := make(chan int, 1)
		if err := conn.loop.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			held <- cap(conn.frag)
			if conn.fragBuf != nil {
				held <- -1
			}
			return nil
		})); err != nil {
			t.Fatal(err)
		}
		if c := <-held; c != 0 || len(held) > 0 {
			t.Fatalf("after message %d (%d bytes) the connection holds a reassembly buffer of %d bytes", i, n, c)
		}
	}
}
