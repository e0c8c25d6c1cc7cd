package netpoll

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/unigate/unigate/limiter"
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

// BenchmarkRefusal is one upgrade refused by a full node through a real
// server: connect, send the upgrade request, read the 503 with Retry-After
// to the server's close. The client is raw system calls and allocates
// nothing, so allocs/op is what the node (gnet's accept and connection,
// netpoll, the limiter) allocates per refused connection: a storm's
// garbage is collected on the cores that serve the live conversations.
//
// "acceptor" is gnet's default: one goroutine accepts and hands each
// connection to an event loop (an eventfd wake-up); "reuseport" is
// WithReusePort (config reuse_port): each event loop accepts on its own
// listener.
func BenchmarkRefusal(b *testing.B) {
	b.Run("acceptor", func(b *testing.B) { benchRefusal(b) })
	b.Run("reuseport", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		benchRefusal(b, WithAddr(addr), WithReusePort(true))
	})
}

func benchRefusal(b *testing.B, opts ...Option) {
	lim, err := limiter.New(limiter.Settings{MaxConnections: 1}, metrics.NewSet(), nil)
	if err != nil {
		b.Fatal(err)
	}
	s := startServer(b, &echo{}, append(opts, WithAdmission(lim))...)
	held, _, err := (&websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}}).Dial("ws://"+s.Addr()+"/ws", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer held.Close()
	ap := netip.MustParseAddrPort(s.Addr())
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	req := []byte("GET /ws HTTP/1.1\r\nHost: " + s.Addr() + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: unigate.v1.proto\r\n\r\n")
	want := []byte("HTTP/1.1 503 ")
	buf := make([]byte, 1024)
	// The client runs on this locked thread: the process's CPU time minus
	// this thread's is the server's (its event loops, gnet's acceptor,
	// the runtime), a cost that waiting for a shared CPU does not inflate.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var self0, thread0, self1, thread1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &self0)
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &thread0)
	b.ReportAllocs()
	for b.Loop() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			b.Fatal(err)
		}
		if _, err := unix.Write(fd, req); err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			m, err := unix.Read(fd, buf[n:])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				b.Fatal(err)
			}
			if m == 0 {
				break // the server closed
			}
			n += m
		}
		if !bytes.HasPrefix(buf[:n], want) || !bytes.Contains(buf[:n], []byte("\r\nRetry-After: 5\r\n")) {
			b.Fatalf("answer %q", buf[:n])
		}
		_ = unix.Close(fd)
	}
	_ = unix.Getrusage(unix.RUSAGE_SELF, &self1)
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &thread1)
	cpu := func(a, b unix.Rusage) int64 {
		return (b.Utime.Nano() - a.Utime.Nano()) + (b.Stime.Nano() - a.Stime.Nano())
	}
	b.ReportMetric(float64(cpu(self0, self1)-cpu(thread0, thread1))/float64(b.N), "server-cpu-ns/op")
}
