package netpoll

import (
	"fmt"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

func BenchmarkParseFrameHeader(b *testing.B) {
	for _, size := range []int{16, 256, 4 << 10, 64 << 10} {
		frame := clientFrame(true, 0, ws.OpBinary, true, make([]byte, size))
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				h, n, ok, err := parseFrameHeader(frame)
				if !ok || err != nil {
					b.Fatal("parse")
				}
				p := frame[n : n+int(h.Length)]
				ws.Cipher(p, h.Mask, 0) // unmask, as the read path does
			}
		})
	}
}

func BenchmarkFrameEncode(b *testing.B) {
	for _, size := range []int{16, 256, 4 << 10} {
		payload := make([]byte, size)
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				f := AcquireFrame()
				f.B = append(f.B, payload...)
				f.Seal(ws.OpBinary)
				f.Release()
			}
		})
	}
}

func BenchmarkUTF8Stream(b *testing.B) {
	msg := []byte("客服您好，我的订单什么时候发货？ Hello, when does my order ship?")
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		var s utf8Stream
		if !s.write(msg[:17]) || !s.write(msg[17:]) || !s.done() {
			b.Fatal("invalid")
		}
	}
}

// BenchmarkEchoRoundTrip measures one message through a real server and
// back, with gorilla/websocket clients (client cost included).
func BenchmarkEchoRoundTrip(b *testing.B) {
	for _, size := range []int{64, 1024} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			s := startServer(b, &echo{})
			d := websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}}
			c, _, err := d.Dial("ws://"+s.Addr()+"/ws", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					b.Fatal(err)
				}
				if _, _, err := c.ReadMessage(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
