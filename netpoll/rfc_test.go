package netpoll

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// rawClient speaks WebSocket over a plain TCP connection so tests can send
// frames no conforming client library would.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

const upgradeRequest = "GET /ws?tenant=t1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
	"Sec-WebSocket-Protocol: unigate.v1.json\r\n\r\n"

func rawConnect(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

// rawDial connects and upgrades; extra bytes are sent in the same write as
// the request (a pipelined first frame).
func rawDial(t *testing.T, addr string, extra ...byte) *rawClient {
	t.Helper()
	r := rawConnect(t, addr)
	r.write(append([]byte(upgradeRequest), extra...))
	status, _ := r.readResponse()
	if status != 101 {
		t.Fatalf("upgrade: status %d", status)
	}
	return r
}

func (r *rawClient) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// readResponse reads an HTTP response head and body (Content-Length).
func (r *rawClient) readResponse() (status int, body string) {
	r.t.Helper()
	line, err := r.br.ReadString('\n')
	if err != nil {
		r.t.Fatalf("read status line: %v", err)
	}
	if _, err := fmt.Sscanf(line, "HTTP/1.1 %d", &status); err != nil {
		r.t.Fatalf("status line %q: %v", line, err)
	}
	n := 0
	for {
		h, err := r.br.ReadString('\n')
		if err != nil {
			r.t.Fatalf("read header: %v", err)
		}
		if h == "\r\n" {
			break
		}
		if k, v, ok := strings.Cut(h, ":"); ok && strings.EqualFold(k, "content-length") {
			fmt.Sscanf(strings.TrimSpace(v), "%d", &n)
		}
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		r.t.Fatalf("read body: %v", err)
	}
	return status, string(b)
}

var testMask = [4]byte{0x12, 0x34, 0x56, 0x78}

// clientFrame builds a frame; masked frames use testMask.
func clientFrame(fin bool, rsv byte, op ws.OpCode, masked bool, payload []byte) []byte {
	var b []byte
	b0 := byte(op) | rsv<<4
	if fin {
		b0 |= 0x80
	}
	b = append(b, b0)
	m := byte(0)
	if masked {
		m = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, m|byte(n))
	case n <= 0xffff:
		b = append(b, m|126, byte(n>>8), byte(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	p := bytes.Clone(payload)
	if masked {
		b = append(b, testMask[:]...)
		ws.Cipher(p, testMask, 0)
	}
	return append(b, p...)
}

func text(s string) []byte { return clientFrame(true, 0, ws.OpText, true, []byte(s)) }
func closeBody(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

type serverFrame struct {
	op      ws.OpCode
	fin     bool
	payload []byte
}

func (r *rawClient) readFrame() (serverFrame, error) {
	h, err := ws.ReadHeader(r.br)
	if err != nil {
		return serverFrame{}, err
	}
	if h.Masked {
		return serverFrame{}, errors.New("server frame is masked")
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r.br, p); err != nil {
		return serverFrame{}, err
	}
	return serverFrame{h.OpCode, h.Fin, p}, nil
}

func (r *rawClient) expectMessage(op ws.OpCode, want string) {
	r.t.Helper()
	f, err := r.readFrame()
	if err != nil {
		r.t.Fatalf("want %v %q: %v", op, abbrev(want), err)
	}
	if f.op != op || string(f.payload) != want || !f.fin {
		r.t.Fatalf("got op %v fin %v %q, want op %v %q", f.op, f.fin, abbrev(string(f.payload)), op, abbrev(want))
	}
}

// expectClose reads until a close frame, checks its code, then checks that
// the server closed the TCP connection.
func (r *rawClient) expectClose(code ws.StatusCode) {
	r.t.Helper()
	for {
		f, err := r.readFrame()
		if err != nil {
			r.t.Fatalf("want close %d: %v", code, err)
		}
		if f.op != ws.OpClose {
			continue
		}
		var got ws.StatusCode
		if len(f.payload) >= 2 {
			got = ws.StatusCode(binary.BigEndian.Uint16(f.payload))
		}
		if got != code {
			r.t.Fatalf("close code %d (%q), want %d", got, f.payload, code)
		}
		break
	}
	if _, err := r.br.ReadByte(); err != io.EOF {
		r.t.Fatalf("want EOF after close, got %v", err)
	}
}

func TestRFC6455Violations(t *testing.T) {
	s := startServer(t, &echo{})
	big := bytes.Repeat([]byte("x"), 126)
	cases := []struct {
		name  string
		input [][]byte
		code  ws.StatusCode
	}{
		{"unmasked frame", [][]byte{clientFrame(true, 0, ws.OpText, false, []byte("hi"))}, ws.StatusProtocolError},
		{"rsv1 without extension", [][]byte{clientFrame(true, 4, ws.OpText, true, []byte("hi"))}, ws.StatusProtocolError},
		{"rsv3 without extension", [][]byte{clientFrame(true, 1, ws.OpBinary, true, nil)}, ws.StatusProtocolError},
		{"reserved data opcode", [][]byte{clientFrame(true, 0, 3, true, nil)}, ws.StatusProtocolError},
		{"reserved control opcode", [][]byte{clientFrame(true, 0, 0xB, true, nil)}, ws.StatusProtocolError},
		{"ping over 125 bytes", [][]byte{clientFrame(true, 0, ws.OpPing, true, big)}, ws.StatusProtocolError},
		{"fragmented ping", [][]byte{clientFrame(false, 0, ws.OpPing, true, nil)}, ws.StatusProtocolError},
		{"continuation without start", [][]byte{clientFrame(true, 0, ws.OpContinuation, true, []byte("x"))}, ws.StatusProtocolError},
		{"data frame inside fragmented message", [][]byte{
			clientFrame(false, 0, ws.OpText, true, []byte("a")),
			clientFrame(true, 0, ws.OpText, true, []byte("b")),
		}, ws.StatusProtocolError},
		{"close with 1-byte payload", [][]byte{clientFrame(true, 0, ws.OpClose, true, []byte{3})}, ws.StatusProtocolError},
		{"close code 999", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(999, ""))}, ws.StatusProtocolError},
		{"close code 1005", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(1005, ""))}, ws.StatusProtocolError},
		{"close code 1006", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(1006, ""))}, ws.StatusProtocolError},
		{"close code 1016", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(1016, ""))}, ws.StatusProtocolError},
		{"close code 2000", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(2000, ""))}, ws.StatusProtocolError},
		{"close code 5000", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(5000, ""))}, ws.StatusProtocolError},
		{"close reason invalid UTF-8", [][]byte{clientFrame(true, 0, ws.OpClose, true, closeBody(1000, "\xff"))}, ws.StatusProtocolError},
		{"64-bit length with top bit", [][]byte{{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}}, ws.StatusProtocolError},
		{"invalid UTF-8 text", [][]byte{text("ok\xc3\x28")}, ws.StatusInvalidFramePayloadData},
		{"surrogate in text", [][]byte{text("\xed\xa0\x80")}, ws.StatusInvalidFramePayloadData},
		{"invalid UTF-8 across fragments", [][]byte{
			clientFrame(false, 0, ws.OpText, true, []byte("ok\xe2\x82")),
			clientFrame(true, 0, ws.OpContinuation, true, []byte("\x28")),
		}, ws.StatusInvalidFramePayloadData},
		{"invalid UTF-8 in first fragment fails fast", [][]byte{
			clientFrame(false, 0, ws.OpText, true, []byte("\xf8")),
		}, ws.StatusInvalidFramePayloadData},
		{"truncated rune at end of message", [][]byte{
			clientFrame(false, 0, ws.OpText, true, []byte("a")),
			clientFrame(true, 0, ws.OpContinuation, true, []byte("\xe2\x82")),
		}, ws.StatusInvalidFramePayloadData},
		{"message over limit in one frame", [][]byte{clientFrame(true, 0, ws.OpBinary, true, make([]byte, 64<<10+1))}, ws.StatusMessageTooBig},
		{"message over limit across fragments", [][]byte{
			clientFrame(false, 0, ws.OpBinary, true, make([]byte, 40<<10)),
			clientFrame(true, 0, ws.OpContinuation, true, make([]byte, 40<<10)),
		}, ws.StatusMessageTooBig},
		{"declared length over limit fails before the payload", [][]byte{{0x82, 0xFF, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 2, 3, 4}}, ws.StatusMessageTooBig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawDial(t, s.Addr())
			for _, b := range tc.input {
				r.write(b)
			}
			r.expectClose(tc.code)
		})
	}
}

func TestRFC6455Conforming(t *testing.T) {
	s := startServer(t, &echo{})

	t.Run("close handshake echoes the code", func(t *testing.T) {
		for _, code := range []ws.StatusCode{1000, 1001, 1003, 1011, 1013, 3000, 4999} {
			r := rawDial(t, s.Addr())
			r.write(clientFrame(true, 0, ws.OpClose, true, closeBody(uint16(code), "bye")))
			r.expectClose(code)
		}
	})
	t.Run("empty close is answered", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		r.write(clientFrame(true, 0, ws.OpClose, true, nil))
		r.expectClose(0)
	})
	t.Run("ping gets pong with the same payload", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		r.write(clientFrame(true, 0, ws.OpPing, true, []byte("are you there")))
		r.expectMessage(ws.OpPong, "are you there")
		r.write(clientFrame(true, 0, ws.OpPing, true, bytes.Repeat([]byte("p"), 125)))
		r.expectMessage(ws.OpPong, strings.Repeat("p", 125))
	})
	t.Run("ping between fragments", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		r.write(clientFrame(false, 0, ws.OpText, true, []byte("hel")))
		r.write(clientFrame(true, 0, ws.OpPing, true, []byte("mid")))
		r.write(clientFrame(false, 0, ws.OpContinuation, true, []byte("lo ")))
		r.write(clientFrame(true, 0, ws.OpPong, true, []byte("unsolicited")))
		r.write(clientFrame(true, 0, ws.OpContinuation, true, []byte("world")))
		r.expectMessage(ws.OpPong, "mid")
		r.expectMessage(ws.OpText, "hello world")
	})
	t.Run("rune split across fragments", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		msg := "你好, мир, 🌍"
		b := []byte(msg)
		var all []byte
		for i := 0; i < len(b); i += 2 {
			end := min(i+2, len(b))
			op := ws.OpContinuation
			if i == 0 {
				op = ws.OpText
			}
			all = append(all, clientFrame(end == len(b), 0, op, true, b[i:end])...)
		}
		r.write(all)
		r.expectMessage(ws.OpText, msg)
	})
	t.Run("empty fragments", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		r.write(clientFrame(false, 0, ws.OpBinary, true, nil))
		r.write(clientFrame(false, 0, ws.OpContinuation, true, []byte("x")))
		r.write(clientFrame(true, 0, ws.OpContinuation, true, nil))
		r.expectMessage(ws.OpBinary, "x")
	})
	t.Run("several frames in one write", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		var all []byte
		for i := range 100 {
			all = append(all, text(fmt.Sprint(i))...)
		}
		r.write(all)
		for i := range 100 {
			r.expectMessage(ws.OpText, fmt.Sprint(i))
		}
	})
	t.Run("first frame pipelined with the upgrade request", func(t *testing.T) {
		r := rawDial(t, s.Addr(), append(text("early"), text("bird")...)...)
		r.expectMessage(ws.OpText, "early")
		r.expectMessage(ws.OpText, "bird")
	})
	t.Run("byte by byte", func(t *testing.T) {
		r := rawConnect(t, s.Addr())
		all := []byte(upgradeRequest)
		all = append(all, clientFrame(true, 0, ws.OpText, true, bytes.Repeat([]byte("y"), 300))...)
		all = append(all, clientFrame(false, 0, ws.OpText, true, []byte("a"))...)
		all = append(all, clientFrame(true, 0, ws.OpPing, true, []byte("p"))...)
		all = append(all, clientFrame(true, 0, ws.OpContinuation, true, []byte("é"))...)
		for _, b := range all {
			r.write([]byte{b})
			// Pace the bytes so they arrive in separate reads; nothing is
			// asserted about time.
			time.Sleep(50 * time.Microsecond)
		}
		status, _ := r.readResponse()
		if status != 101 {
			t.Fatalf("status %d", status)
		}
		r.expectMessage(ws.OpText, strings.Repeat("y", 300))
		r.expectMessage(ws.OpPong, "p")
		r.expectMessage(ws.OpText, "aé")
	})
	t.Run("large frame with 64-bit length", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		payload := bytes.Repeat([]byte("z"), 64<<10)
		r.write(clientFrame(true, 0, ws.OpBinary, true, payload))
		r.expectMessage(ws.OpBinary, string(payload))
	})
}

func abbrev(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%s...(%d bytes)", s[:40], len(s))
	}
	return s
}

// TestCloseWithInputInFlight: when the server fails a connection while the
// client's bytes are still arriving (the rest of a message over the limit,
// frames sent before the client saw the close), the client still reads the
// close frame and then end of stream, not a reset. The server half-closes
// and discards input until the client closes (linger); closing at once
// made the kernel answer the unread input with a reset, which could reach
// the client before the close frame (the flake of "message over limit in
// one frame").
func TestCloseWithInputInFlight(t *testing.T) {
	s := startServer(t, &echo{})
	t.Run("rest of a message over the limit", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		// Declares 1 MiB, over the 64 KiB limit: refused at the header,
		// with 512 KiB of its payload already on the way.
		big := append([]byte{0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4}, make([]byte, 512<<10)...)
		r.write(big)
		r.expectClose(ws.StatusMessageTooBig)
	})
	t.Run("frames after a violation", func(t *testing.T) {
		r := rawDial(t, s.Addr())
		in := clientFrame(true, 0, 3, true, nil) // reserved opcode: 1002
		for range 2000 {
			in = append(in, clientFrame(true, 0, ws.OpBinary, true, make([]byte, 100))...)
		}
		r.write(in)
		r.expectClose(ws.StatusProtocolError)
	})
	t.Run("a client that never closes", func(t *testing.T) {
		s := startServer(t, &echo{}) // its own: the others' connections may still linger
		r := rawDial(t, s.Addr())
		waitFor(t, 5*time.Second, "the connection", func() bool { return s.Connections() == 1 })
		r.write(clientFrame(true, 0, 3, true, nil))
		r.expectClose(ws.StatusProtocolError)
		// The client keeps its side open: the server closes it after
		// lingerTimeout on its own.
		waitFor(t, 10*time.Second, "the server to give up lingering", func() bool { return s.Connections() == 0 })
		if got := metricValue(t, s, `unigate_netpoll_timeouts_total{kind="close"}`); got < 1 {
			t.Fatalf("close timeouts %v, want at least 1", got)
		}
	})
}

// metricValue reads one series of the server's metrics.
func metricValue(t *testing.T, s *Server, series string) float64 {
	t.Helper()
	var b bytes.Buffer
	s.Metrics().WritePrometheus(&b)
	for line := range strings.Lines(b.String()) {
		if name, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok && name == series {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("no series %s", series)
	return 0
}
