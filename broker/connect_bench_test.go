package broker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// connectClient is the cheapest client of a complete connect: one raw TCP
// dial that writes a precomputed upgrade request and a masked anonymous
// hello in one write, then reads and checks the 101 and the welcome. It
// allocates little, so the benchmark's CPU is mostly the server's and the
// kernel's (on loopback the kernel's TCP work of both ends).
type connectClient struct {
	addr string
	req  []byte // upgrade request + hello frame
	buf  []byte
	br   *bufio.Reader
}

func newConnectClient(tb testing.TB, addr, subprotocol string) *connectClient {
	tb.Helper()
	codec := protocol.ForSubprotocol(subprotocol)
	hello := encode(tb, codec, protocol.Envelope{Kind: protocol.KindHello, ID: 1})
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Protocol: %s\r\n\r\n", addr, subprotocol)
	op := ws.OpBinary
	if subprotocol == jsonProto {
		op = ws.OpText
	}
	h := ws.Header{Fin: true, OpCode: op, Masked: true, Mask: ws.NewMask(), Length: int64(len(hello))}
	if err := ws.WriteHeader(&req, h); err != nil {
		tb.Fatal(err)
	}
	masked := bytes.Clone(hello)
	ws.Cipher(masked, h.Mask, 0)
	req.Write(masked)
	return &connectClient{addr: addr, req: req.Bytes(), buf: make([]byte, 4096), br: bufio.NewReaderSize(nil, 4096)}
}

// connect performs one complete connect and closes the connection.
func (c *connectClient) connect(codec protocol.Codec) error {
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(c.req); err != nil {
		return err
	}
	c.br.Reset(conn)
	// The 101 head.
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 101 ")) {
		return fmt.Errorf("status line %q", line)
	}
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) == 2 {
			break
		}
	}
	// The welcome: one unmasked frame.
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		return err
	}
	if h.Length > int64(len(c.buf)) {
		return fmt.Errorf("welcome of %d bytes", h.Length)
	}
	p := c.buf[:h.Length]
	if _, err := io.ReadFull(c.br, p); err != nil {
		return err
	}
	var env protocol.Envelope
	if err := codec.Decode(p, &env); err != nil {
		return err
	}
	if env.Kind != protocol.KindWelcome || env.Welcome.SessionID == "" || env.Welcome.ResumeToken == "" {
		return fmt.Errorf("not a welcome: %v", env.Kind)
	}
	return nil
}

// connectOptions is the broker of `unigate serve` as far as a connect
// touches it: anonymous visitors, a signer, the session cache.
func connectOptions(b *testing.B) Options {
	b.Helper()
	sc, err := sessionstore.New(sessionstore.Options{}, bytes.Repeat([]byte{3}, sessionstore.KeySize))
	if err != nil {
		b.Fatal(err)
	}
	return Options{AllowAnonymous: true, Signer: testSigner(b), Sessions: sc}
}

// BenchmarkConnect measures one complete anonymous connect against a real
// netpoll server in process: TCP connect and accept, the upgrade, the
// hello, the anonymous session, the welcome, the close. The client is a
// raw socket (connectClient), 4×GOMAXPROCS of them at once. allocs/op and B/op count the
// whole process (the client allocates a few objects per dial too);
// cpu-ns/op is the process's CPU per connect, client and kernel included.
// BenchmarkHello is the broker's share alone.
func BenchmarkConnect(b *testing.B) {
	for _, sp := range []string{pbProto, jsonProto} {
		b.Run(sp, func(b *testing.B) {
			br, err := New(connectOptions(b))
			if err != nil {
				b.Fatal(err)
			}
			srv, err := netpoll.New(br, netpoll.WithAddr("127.0.0.1:0"))
			if err != nil {
				b.Fatal(err)
			}
			if err := srv.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Stop(ctx)
				br.Close()
			})
			codec := protocol.ForSubprotocol(sp)
			c := newConnectClient(b, srv.Addr(), sp)
			for range 200 { // warm up the pools
				if err := c.connect(codec); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			// 4×GOMAXPROCS clients at once, so that the server's event
			// loop handles several connections per wake-up as under load.
			b.SetParallelism(4)
			var cpu cpuMeter
			b.ResetTimer()
			cpu.start()
			b.RunParallel(func(pb *testing.PB) {
				c := newConnectClient(b, srv.Addr(), sp)
				for pb.Next() {
					if err := c.connect(codec); err != nil {
						b.Error(err)
						return
					}
				}
			})
			cpu.stop()
			b.StopTimer()
			cpu.report(b)
		})
	}
}

// BenchmarkHello measures the broker's share of a connect, no socket: a
// peer opens, sends an anonymous hello, gets its welcome (encoded, queued
// to the peer) and closes. The session stays (as after a real disconnect,
// until it expires).
func BenchmarkHello(b *testing.B) {
	for _, sp := range []string{pbProto, jsonProto} {
		b.Run(sp, func(b *testing.B) {
			br, err := New(connectOptions(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(br.Close)
			codec := protocol.ForSubprotocol(sp)
			hello := encode(b, codec, protocol.Envelope{Kind: protocol.KindHello, ID: 1})
			var id uint64
			one := func() {
				id++
				p := &recPeer{id: id}
				cl := br.newClient(p, sp)
				br.receive(cl, hello)
				for p.frames.Load() == 0 {
					runtime.Gosched()
				}
				br.gone(cl)
			}
			for range 200 {
				one()
			}
			b.ReportAllocs()
			var cpu cpuMeter
			b.ResetTimer()
			cpu.start()
			for range b.N {
				one()
			}
			cpu.stop()
			b.StopTimer()
			cpu.report(b)
		})
	}
}
