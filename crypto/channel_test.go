package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
)

// tcpPair returns both ends of a loopback TCP connection (kernel buffers, unlike
// net.Pipe, so that the server's NewSessionTicket does not wait for a reader).
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	return a, b
}

// pipePair runs Server on one end of a connection and Client on the other.
func pipePair(t *testing.T, ccfg *ClientConfig, scfg *ServerConfig) (client, server *Channel, cerr, serr error) {
	t.Helper()
	a, b := tcpPair(t)
	t.Cleanup(func() { a.Close(); b.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		server, serr = Server(NewStreamTransport(b, 0), scfg)
		if serr != nil {
			b.Close()
		}
	}()
	client, cerr = Client(NewStreamTransport(a, 0), ccfg)
	if cerr != nil {
		a.Close()
	}
	<-done
	return client, server, cerr, serr
}

func TestChannelEverySuite(t *testing.T) {
	for _, suite := range allSuites {
		t.Run(suite.Name, func(t *testing.T) {
			f := newFixture(t)
			f.server.RekeyAfter = 3
			client, server, cerr, serr := pipePair(t, f.client(suite), f.server)
			if cerr != nil || serr != nil {
				t.Fatal(cerr, serr)
			}
			done := make(chan error, 1)
			go func() { // echo server
				var buf []byte
				for {
					msg, err := server.Receive(buf[:0])
					if CodeOf(err) == CodeClosed {
						done <- server.Close()
						return
					}
					if err != nil {
						done <- err
						return
					}
					if err := server.Send(append([]byte("echo: "), msg...)); err != nil {
						done <- err
						return
					}
				}
			}()
			for i, m := range []string{"你好", "", "third", "fourth message, after a rekey"} {
				if err := client.Send([]byte(m)); err != nil {
					t.Fatal(err)
				}
				got, err := client.Receive(nil)
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if string(got) != "echo: "+m {
					t.Fatalf("got %q", got)
				}
			}
			if err := client.Close(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if _, err := client.Receive(nil); CodeOf(err) != CodeClosed {
				t.Fatalf("after the server's close: %v", err)
			}
			sess := client.Session()
			if sess == nil {
				t.Fatal("no session from the ticket")
			}
			cfg := f.client(suite)
			cfg.Session = sess
			rc, rs, cerr, serr := pipePair(t, cfg, f.server)
			if cerr != nil || serr != nil || !rc.Conn().Resumed() || rs.TicketError() != nil {
				t.Fatalf("resumption: %v %v %v", cerr, serr, rs.TicketError())
			}
		})
	}
}

func TestChannelRefused(t *testing.T) {
	f := newFixture(t)
	other, _ := GenerateSigner(SigSM2)
	cfg := f.client(GM)
	cfg.ServerKeys = []Verifier{other.Public()}
	_, _, cerr, serr := pipePair(t, cfg, f.server)
	wantCode(t, cerr, CodeUnknownServerKey)
	if serr == nil || CodeOf(serr) != 0 {
		t.Fatalf("server: want a transport error after the client gave up, got %v", serr)
	}
}

func TestStreamTransportLimits(t *testing.T) {
	var buf bytes.Buffer
	st := NewStreamTransport(&buf, 8)
	if err := st.WriteMessage(make([]byte, 9)); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatal(err)
	}
	buf.Write(binary.BigEndian.AppendUint32(nil, 1<<31))
	if _, err := st.ReadMessage(); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatal(err)
	}
	buf.Reset()
	buf.Write([]byte{0, 0, 0, 5, 1, 2})
	if _, err := st.ReadMessage(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatal(err)
	}
	st.WriteMessage([]byte("ok"))
	if m, err := st.ReadMessage(); err != nil || string(m) != "ok" {
		t.Fatal(m, err)
	}
}

// BenchmarkChannelHandshake is a full handshake with both sides over a pipe (the
// Go client API's cost, loopback TCP and framing included).
func BenchmarkChannelHandshake(b *testing.B) {
	for _, suite := range allSuites {
		b.Run(suite.Name, func(b *testing.B) {
			f := newFixture(b)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				x, y := tcpPair(b)
				done := make(chan error, 1)
				go func() { _, err := Server(NewStreamTransport(y, 0), f.server); done <- err }()
				if _, err := Client(NewStreamTransport(x, 0), f.client(suite)); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				x.Close()
				y.Close()
			}
		})
	}
}

// FuzzStreamTransport: the length-prefix framing never panics, never returns a
// message above its limit, and consumes exactly what it returns.
func FuzzStreamTransport(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		st := NewStreamTransport(bytes.NewBuffer(data), 64)
		total := 0
		for {
			m, err := st.ReadMessage()
			if err != nil {
				if total > len(data) {
					t.Fatalf("read %d of %d bytes", total, len(data))
				}
				return
			}
			if len(m) > 64 {
				t.Fatalf("message of %d bytes above the limit", len(m))
			}
			total += 4 + len(m)
		}
	})
}
