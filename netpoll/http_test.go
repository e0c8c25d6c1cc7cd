package netpoll

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

func TestHTTPResponses(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		_, _ = w.Write([]byte(`{"path":"` + r.URL.Path + `","body":"` + string(body) + `"}`))
	})
	s := startServer(t, &echo{}, WithReady(ready.Load), WithHTTPHandler(api))

	cases := []struct {
		name   string
		req    string
		status int
		body   string // substring
	}{
		{"healthz", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "ok"},
		{"readyz", "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "ready"},
		{"handler", "POST /api/v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 201, `"body":"hello"`},
		{"malformed request line", "GARBAGE\r\n\r\n", 400, "malformed"},
		{"missing host", "GET /healthz HTTP/1.1\r\n\r\n", 400, "malformed"},
		{"obs-fold", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400, "malformed"},
		{"space before colon", "GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400, "malformed"},
		{"bad version", "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "version"},
		{"chunked", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "Content-Length"},
		{"smuggling", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, "malformed"},
		{"conflicting lengths", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "Content-Length"},
		{"body too large", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413, "too large"},
		{"headers over 8 KiB", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8200) + "\r\n\r\n", 431, "too large"},
		{"wrong websocket version", "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: unigate.v1.json\r\n\r\n", 426, ""},
		{"no subprotocol", "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, "unigate.v1.proto, unigate.v1.json"},
		{"post to ws", "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: unigate.v1.json\r\n\r\n", 405, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawConnect(t, s.Addr())
			r.write([]byte(tc.req))
			status, body := r.readResponse()
			if status != tc.status || !strings.Contains(body, tc.body) {
				t.Fatalf("got %d %q, want %d containing %q", status, body, tc.status, tc.body)
			}
		})
	}

	t.Run("426 names the supported version", func(t *testing.T) {
		resp := rawRoundTrip(t, s.Addr(), "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: unigate.v1.json\r\n\r\n")
		if !strings.Contains(resp, "Sec-WebSocket-Version: 13") {
			t.Fatalf("response does not name version 13: %q", resp)
		}
	})
	t.Run("readyz follows readiness", func(t *testing.T) {
		ready.Store(false)
		defer ready.Store(true)
		r := rawConnect(t, s.Addr())
		r.write([]byte("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
		if status, _ := r.readResponse(); status != 503 {
			t.Fatalf("status %d, want 503", status)
		}
	})
	t.Run("keep-alive and pipelining", func(t *testing.T) {
		r := rawConnect(t, s.Addr())
		r.write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
		for i, want := range []int{200, 201, 200} {
			if status, _ := r.readResponse(); status != want {
				t.Fatalf("response %d: status %d, want %d", i, status, want)
			}
		}
	})
	t.Run("partial request waits", func(t *testing.T) {
		r := rawConnect(t, s.Addr())
		req := "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
		for i := 0; i < len(req); i += 7 {
			r.write([]byte(req[i:min(i+7, len(req))]))
			time.Sleep(time.Millisecond) // pacing only
		}
		if status, body := r.readResponse(); status != 201 || !strings.Contains(body, `"body":"body"`) {
			t.Fatalf("got %d %q", status, body)
		}
	})
	t.Run("net/http client", func(t *testing.T) {
		resp, err := http.Get("http://" + s.Addr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "ok\n" {
			t.Fatalf("got %d %q", resp.StatusCode, b)
		}
	})
}

func rawRoundTrip(t *testing.T, addr, req string) string {
	t.Helper()
	r := rawConnect(t, addr)
	r.write([]byte(req))
	b, _ := io.ReadAll(r.br)
	return string(b)
}

func TestHandshakeTimeout(t *testing.T) {
	s := startServer(t, &echo{}, WithHandshakeTimeout(time.Second))
	r := rawConnect(t, s.Addr())
	r.write([]byte("GET /healthz HTTP/1.1\r\n")) // never completes
	if _, err := r.br.ReadByte(); err != io.EOF {
		t.Fatalf("want EOF from the handshake deadline, got %v", err)
	}
}

func TestIdleTimeoutAndPing(t *testing.T) {
	s := startServer(t, &echo{}, WithPingInterval(time.Second), WithIdleTimeout(3*time.Second))
	r := rawDial(t, s.Addr())
	f, err := r.readFrame()
	if err != nil || f.op != ws.OpPing {
		t.Fatalf("want a server ping, got %v %v", f.op, err)
	}
	// Staying silent (no pong) must end in an idle close.
	r.expectClose(ws.StatusGoingAway)
}

func TestPongKeepsAlive(t *testing.T) {
	s := startServer(t, &echo{}, WithPingInterval(time.Second), WithIdleTimeout(2*time.Second))
	c := dial(t, s.Addr(), "unigate.v1.json") // gorilla answers pings with pongs
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ReadMessage()
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("connection ended while answering pings: %v", err)
	case <-time.After(4 * time.Second): // longer than the idle timeout
	}
}

func TestDrainSendsGoingAway(t *testing.T) {
	e := &echo{}
	s, err := New(e, WithAddr("127.0.0.1:0"), WithEventLoops(2))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	conns := make([]*websocket.Conn, 10)
	for i := range conns {
		conns[i] = dial(t, s.Addr(), "unigate.v1.proto")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(ctx) }()
	for _, c := range conns {
		_, _, err := c.ReadMessage()
		if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("want 1001, got %v", err)
		}
		c.Close()
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if _, closed, _ := e.counts(); closed != len(conns) {
		t.Fatalf("OnClose called %d times, want %d", closed, len(conns))
	}
}

// flood sends n copies of every message it receives.
type flood struct {
	echo
	n int
}

func (f *flood) OnMessage(c *Conn, op ws.OpCode, p []byte) {
	for range f.n {
		fr := AcquireFrame()
		fr.B = append(fr.B, p...)
		fr.Seal(op)
		if c.Send(fr) != nil {
			return
		}
	}
}

func TestSlowConsumerClosedWith1013(t *testing.T) {
	s := startServer(t, &flood{n: 20000}, WithMaxOutboundBytes(256<<10))
	r := rawDial(t, s.Addr())
	// Ask for 20000 x 4 KiB = 80 MB without reading: far beyond the bound
	// and the kernel's socket buffers.
	r.write(clientFrame(true, 0, ws.OpBinary, true, bytes.Repeat([]byte("s"), 4<<10)))
	waitFor(t, 10*time.Second, "slow consumer counted", func() bool { return s.metrics.slowConsumers.Get() > 0 })
	// Now read: data frames, then the 1013 close.
	for {
		f, err := r.readFrame()
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		if f.op == ws.OpClose {
			if code := binary.BigEndian.Uint16(f.payload); code != 1013 {
				t.Fatalf("close code %d, want 1013", code)
			}
			return
		}
	}
}

func TestMaxConnections(t *testing.T) {
	s := startServer(t, &echo{}, WithMaxConnections(3))
	for range 3 {
		dial(t, s.Addr(), "unigate.v1.json")
	}
	waitFor(t, 5*time.Second, "3 connections", func() bool { return s.Connections() == 3 })
	r := rawConnect(t, s.Addr())
	status, body := r.readResponse()
	if status != 503 || !strings.Contains(body, "capacity") {
		t.Fatalf("got %d %q, want 503", status, body)
	}
}

func TestOriginCheck(t *testing.T) {
	s := startServer(t, &echo{}, WithOriginCheck(func(o string) bool { return o == "" || o == "https://good.example" }))
	for origin, want := range map[string]int{"https://good.example": 101, "https://evil.example": 403, "": 101} {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		d := websocket.Dialer{Subprotocols: []string{"unigate.v1.json"}}
		c, resp, err := d.Dial("ws://"+s.Addr()+"/ws", h)
		if c != nil {
			c.Close()
		}
		if resp == nil || resp.StatusCode != want {
			t.Fatalf("origin %q: got %v (%v), want %d", origin, resp, err, want)
		}
	}
}

func TestApplicationHandshakeTimeout(t *testing.T) {
	s := startServer(t, &echo{noEstablish: true}, WithHandshakeTimeout(time.Second))
	r := rawDial(t, s.Addr())
	r.expectClose(ws.StatusPolicyViolation)
}

// TestHandshakeReceivedExtends: a client whose handshake message reached
// the handler is not closed at the handshake timeout while the handler
// works on it (a loaded server, a slow authentication hook), only at three
// times it.
func TestHandshakeReceivedExtends(t *testing.T) {
	e := &echo{noEstablish: true, handshakeOnMessage: true}
	s := startServer(t, e, WithHandshakeTimeout(time.Second))
	r := rawDial(t, s.Addr())
	start := time.Now()
	r.write(text("hello"))
	// The echo comes back; then nothing until the extended deadline. The
	// sweeper's clock counts whole seconds and may lag a tick, so the plain
	// deadline closes within [0, 1.25 s] of the upgrade, the extended one
	// within [1.75 s, 3.25 s].
	r.expectMessage(ws.OpText, "hello")
	r.expectClose(ws.StatusPolicyViolation)
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("closed after %v: the received handshake did not extend the deadline", d)
	}
}

// TestRunHandlerOffLoop: the HTTP handler runs on its own goroutine, where
// the client may already have closed the connection and gnet released
// it (its RemoteAddr is then nil). runHandler must take the client's
// address from what the event loop recorded at open, never from the gnet
// connection: here the Conn has none at all. (A wrk run that ended with
// requests in flight crashed the gateway with a nil dereference there.)
func TestRunHandlerOffLoop(t *testing.T) {
	var got []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.RemoteAddr)
		w.WriteHeader(204)
	})
	s, err := New(&echo{}, WithHTTPHandler(api))
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{srv: s, peer: netip.MustParseAddr("203.0.113.7"), peerPort: 4242} // no gnet connection
	raw := []byte("GET /api/v1/x HTTP/1.1\r\nHost: h\r\n\r\n")
	for _, client := range []netip.Addr{{}, netip.MustParseAddr("198.51.100.1")} {
		if resp := s.runHandler(c, raw, true, client); !bytes.HasPrefix(resp, []byte("HTTP/1.1 204")) {
			t.Fatalf("response %q", resp)
		}
	}
	if want := []string{"203.0.113.7:4242", "198.51.100.1:4242"}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("RemoteAddr %q, want %q", got, want)
	}
}
