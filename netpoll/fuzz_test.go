package netpoll

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(upgradeRequest))
	f.Add([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Add([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: a,\x00b\r\n\r\n"))
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b, 8<<10, 1<<20)
		if err != nil {
			return
		}
		if r.headLen > len(b) || r.headLen < 4 || !bytes.HasSuffix(b[:r.headLen], crlfcrlf) {
			t.Fatalf("bad headLen %d of %d", r.headLen, len(b))
		}
		if len(r.path) == 0 || r.path[0] != '/' {
			t.Fatalf("path %q", r.path)
		}
		if r.contentLength < 0 || r.contentLength > 1<<20 {
			t.Fatalf("content length %d", r.contentLength)
		}
		_ = r.keepAlive()
		_ = r.wantsUpgrade()
		_, _ = queryValue(r.query, "token")
	})
}

func FuzzFrameHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x88, 0x81})
	f.Add([]byte{0x89})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, ok, err := parseFrameHeader(b)
		if err != nil || !ok {
			return
		}
		if n > len(b) || n < 2 || h.Length < 0 {
			t.Fatalf("n=%d len=%d length=%d", n, len(b), h.Length)
		}
		// Differential check against gobwas/ws's blocking reader.
		g, gerr := ws.ReadHeader(bytes.NewReader(b[:n]))
		if gerr != nil {
			t.Fatalf("gobwas rejects a header we accept: %v", gerr)
		}
		if g != h {
			t.Fatalf("header mismatch: ours %+v gobwas %+v", h, g)
		}
		_ = ws.CheckHeader(h, ws.StateServerSide)
	})
}

func FuzzUTF8Stream(f *testing.F) {
	f.Add([]byte("hello"), uint8(2))
	f.Add([]byte("你好世界"), uint8(1))
	f.Add([]byte("\xf0\x9f\x8c\x8d"), uint8(1))
	f.Add([]byte("\xed\xa0\x80"), uint8(1))
	f.Add([]byte("\xc3\x28"), uint8(1))
	f.Add([]byte("\xf4\x90\x80\x80"), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		st := int(step)%7 + 1
		var s utf8Stream
		ok := true
		for i := 0; i < len(b) && ok; i += st {
			ok = s.write(b[i:min(i+st, len(b))])
		}
		got := ok && s.done()
		if want := utf8.Valid(b); got != want {
			t.Fatalf("stream says %v, utf8.Valid says %v for %q (step %d)", got, want, b, st)
		}
	})
}
