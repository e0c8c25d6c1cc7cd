package netpoll

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func dial(t *testing.T, addr string, protos ...string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: protos, HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v (resp %v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestGorillaEcho(t *testing.T) {
	for _, proto := range []string{"unigate.v1.proto", "unigate.v1.json"} {
		t.Run(proto, func(t *testing.T) {
			e := &echo{}
			s := startServer(t, e)
			c := dial(t, s.Addr(), "other", proto)
			if got := c.Subprotocol(); got != proto {
				t.Fatalf("subprotocol %q, want %q", got, proto)
			}
			for i, size := range []int{0, 1, 125, 126, 65535 - 100, 65536} {
				msg := bytes.Repeat([]byte{byte('a' + i)}, size)
				if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				op, got, err := c.ReadMessage()
				if err != nil {
					t.Fatalf("size %d: %v", size, err)
				}
				if op != websocket.TextMessage || !bytes.Equal(got, msg) {
					t.Fatalf("size %d: echo mismatch (op %d, %d bytes)", size, op, len(got))
				}
			}
			// A message over the limit closes with 1009.
			if err := c.WriteMessage(websocket.BinaryMessage, make([]byte, 65537)); err != nil {
				t.Fatal(err)
			}
			_, _, err := c.ReadMessage()
			if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
				t.Fatalf("want close 1009, got %v", err)
			}
		})
	}
}

func TestGorillaManyClients(t *testing.T) {
	e := &echo{}
	s := startServer(t, e)
	const n = 50
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dial(t, s.Addr(), "unigate.v1.json")
	}
	for round := range 20 {
		for i, c := range conns {
			if err := c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d-%d", i, round)); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range conns {
			_, p, err := c.ReadMessage()
			if err != nil || string(p) != fmt.Sprintf("%d-%d", i, round) {
				t.Fatalf("conn %d round %d: %q %v", i, round, p, err)
			}
		}
	}
	for _, c := range conns {
		_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
	}
	waitFor(t, 5*time.Second, "all closed", func() bool { _, closed, _ := e.counts(); return closed == n })
}

func TestSubprotocolRequired(t *testing.T) {
	s := startServer(t, &echo{})
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	_, resp, err := d.Dial("ws://"+s.Addr()+"/ws", nil)
	if err == nil {
		t.Fatal("dial without subprotocol succeeded")
	}
	if resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("want 400, got %v", resp)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	if !strings.Contains(body.String(), "unigate.v1.proto") || !strings.Contains(body.String(), "unigate.v1.json") {
		t.Fatalf("body does not list the subprotocols: %q", body.String())
	}
}
