package netpoll

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
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
