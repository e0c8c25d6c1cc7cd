package broker

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// sealPeer is a recPeer that can seal, as *netpoll.Conn does: SetSealer
// queues the preamble and then every frame goes through the Sealer under
// the peer's send lock.
type sealPeer struct {
	recPeer
	smu    sync.Mutex
	sealer netpoll.Sealer
}

func (p *sealPeer) Send(f *netpoll.Frame) error {
	p.smu.Lock()
	defer p.smu.Unlock()
	if p.sealer != nil {
		sf, err := p.sealer.SealFrame(f)
		f.Release()
		if err != nil {
			return err
		}
		f = sf
	}
	return p.recPeer.Send(f)
}

func (p *sealPeer) SetSealer(s netpoll.Sealer, pre *netpoll.Frame) error {
	p.smu.Lock()
	defer p.smu.Unlock()
	if pre != nil {
		_ = p.recPeer.Send(pre)
	}
	p.sealer = s
	return nil
}

func newSealPeer(tb testing.TB, b *Broker, id uint64, subprotocol string) (*sealPeer, *client) {
	tb.Helper()
	p := &sealPeer{recPeer: recPeer{id: id}}
	p.capture.Store(true)
	cl := b.newClient(p, subprotocol)
	if cl == nil {
		tb.Fatalf("no codec for %q", subprotocol)
	}
	return p, cl
}

// inprocSecure is the client side of an in-process encrypted connection.
type inprocSecure struct {
	p     *sealPeer
	cl    *client
	codec protocol.Codec
	conn  *crypto.Conn
	read  int // frames of p.got already opened
}

func outerOf(tb testing.TB, codec protocol.Codec, data []byte) []byte {
	return encode(tb, codec, protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: data}})
}

// handshakeInproc runs the handshake through br.receive, as the event loop
// would.
func handshakeInproc(tb testing.TB, br *Broker, p *sealPeer, cl *client, cfg *crypto.ClientConfig) *inprocSecure {
	tb.Helper()
	s := &inprocSecure{p: p, cl: cl, codec: cl.codec}
	hs, err := crypto.NewClientHandshake(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	br.receive(cl, outerOf(tb, s.codec, hs.Hello()))
	if !waitFor(tb, waitTimeout, func() bool { return p.frames.Load() > 0 }) {
		tb.Fatal("no server hello")
	}
	p.mu.Lock()
	var env protocol.Envelope
	err = s.codec.Decode(p.got[0], &env)
	p.mu.Unlock()
	if err != nil || env.Kind != protocol.KindSecure {
		tb.Fatalf("server hello: %s %v", env.Kind, err)
	}
	fin, conn, err := hs.HandleServerHello(env.Secure.Data)
	if err != nil {
		tb.Fatal(err)
	}
	br.receive(cl, outerOf(tb, s.codec, fin))
	s.conn, s.read = conn, 1
	return s
}

// record seals env into a secure envelope.
func (s *inprocSecure) record(tb testing.TB, env protocol.Envelope) []byte {
	rec, err := s.conn.Seal(nil, encode(tb, s.codec, env))
	if err != nil {
		tb.Fatal(err)
	}
	return outerOf(tb, s.codec, rec)
}

// wait opens the captured frames in order until one matches m.
func (s *inprocSecure) wait(tb testing.TB, what string, m func(*protocol.Envelope) bool) *protocol.Envelope {
	tb.Helper()
	var found *protocol.Envelope
	ok := waitFor(tb, waitTimeout, func() bool {
		s.p.mu.Lock()
		got := s.p.got
		s.p.mu.Unlock()
		for ; s.read < len(got); s.read++ {
			var outer protocol.Envelope
			if err := s.codec.Decode(got[s.read], &outer); err != nil {
				tb.Fatal(err)
			}
			pt, err := s.conn.Open(nil, outer.Secure.Data)
			if err != nil {
				tb.Fatalf("open: %v", err)
			}
			env := new(protocol.Envelope)
			if err := s.codec.Decode(pt, env); err != nil {
				tb.Fatal(err)
			}
			if m(env) {
				found = env
				s.read++
				return true
			}
		}
		return false
	})
	if !ok {
		tb.Fatalf("no %s", what)
	}
	return found
}

// BenchmarkRelaySecure is BenchmarkRelay with both ends on the secure
// channel: the Send is a record opened in place (on the "event loop"),
// the Ack and the Deliver are sealed per connection. The visitor's records
// are sealed while the timer is stopped (client work), so ns/op is the
// server's cost; compare with BenchmarkRelay/<same subprotocol>. Run it
// with -cpu 1 as well: on one P, ns/op is the CPU the server spends per
// message (event loop, shard and sealing), not the throughput of a
// pipeline spread over two cores.
func BenchmarkRelaySecure(b *testing.B) {
	for _, suite := range []*crypto.Suite{crypto.GM, crypto.IntlPQ} {
		for _, sp := range []string{pbProto, jsonProto} {
			b.Run(suite.Name+"/"+sp, func(b *testing.B) {
				keys := newSecureKeys(b)
				signer := testSigner(b)
				br, err := New(Options{AllowAnonymous: true, Signer: signer, MaxQueue: 2, Secure: &SecureOptions{Server: keys.server()}})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(br.Close)
				cfg := keys.client(suite)
				ap, acl := newSealPeer(b, br, 1, sp)
				agent := handshakeInproc(b, br, ap, acl, cfg)
				now := time.Now()
				tok, err := signer.Sign(token.Claims{Subject: "agent-1", Role: token.RoleAgent, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
				if err != nil {
					b.Fatal(err)
				}
				br.receive(acl, agent.record(b, protocol.Envelope{Kind: protocol.KindHello, ID: 1, Hello: protocol.Hello{Token: tok}}))
				agent.wait(b, "agent welcome", isReply(1, protocol.KindWelcome))
				br.receive(acl, agent.record(b, protocol.Envelope{Kind: protocol.KindPresence, ID: 2, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 5}}))
				agent.wait(b, "presence", isReply(2, protocol.KindPresence))

				vp, vcl := newSealPeer(b, br, 2, sp)
				visitor := handshakeInproc(b, br, vp, vcl, cfg)
				s := visitor
				br.receive(vcl, visitor.record(b, protocol.Envelope{Kind: protocol.KindHello, ID: 1}))
				br.receive(vcl, visitor.record(b, protocol.Envelope{Kind: protocol.KindOpen, ID: 2}))
				conv := visitor.wait(b, "conversation", isReply(2, protocol.KindConversation)).Conversation.ConversationID
				if !waitFor(b, 10*time.Second, func() bool { return br.Stats().ConversationsAssigned == 1 }) {
					b.Fatal("not assigned")
				}
				ap.capture.Store(false)
				vp.capture.Store(false)

				// The visitor's Sends are encoded once (2048 of them, as in
				// BenchmarkRelay) and their records sealed in chunks of 2048
				// into reused buffers while the timer is stopped, so the
				// working set is the plain benchmark's and sealing them
				// allocates nothing (no garbage collection paid in the
				// timed part for the client's work). JSON records are
				// wrapped as the browser client does (web/src/core.js).
				inner := make([][]byte, benchPayloads)
				for j := range inner {
					inner[j] = encode(b, s.codec, protocol.Envelope{Kind: protocol.KindSend, ID: uint64(j + 3), Send: protocol.Send{
						ConversationID: conv,
						ClientMsgID:    fmt.Sprintf("m-%08d", j),
						Text:           "Hello, I have a question about my last invoice: it shows two charges.",
					}})
				}
				recBuf := make([]byte, 0, 512)
				outer := make([]protocol.Envelope, 1)
				chunk := make([][]byte, benchPayloads)
				next := 0
				sealChunk := func(n int) {
					for i := range n {
						rec, err := visitor.conn.Seal(recBuf[:0], inner[next%benchPayloads])
						if err != nil {
							b.Fatal(err)
						}
						if s.codec.Binary() {
							outer[0] = protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: rec}}
							if chunk[i], err = s.codec.AppendEncode(chunk[i][:0], &outer[0]); err != nil {
								b.Fatal(err)
							}
						} else {
							c := append(chunk[i][:0], `{"secure":{"data":"`...)
							c = base64.StdEncoding.AppendEncode(c, rec)
							chunk[i] = append(c, `"}}`...)
						}
						next++
					}
				}
				pr := &benchPair{visitor: vcl, vp: &vp.recPeer, conv: conv, sent: vp.frames.Load()}
				base := br.Stats().MessagesRelayed
				relay := func(p []byte) {
					for pr.sent-pr.vp.frames.Load() >= 256 {
						runtime.Gosched()
					}
					br.receive(pr.visitor, p)
					pr.sent++
				}
				var cpu cpuMeter
				run := func(n int) { // n messages, sealed chunk by chunk, timer running
					for n > 0 {
						k := min(n, benchPayloads)
						b.StopTimer()
						sealChunk(k)
						b.StartTimer()
						cpu.start()
						for _, p := range chunk[:k] {
							relay(p)
						}
						pr.drain() // the chunk is done before the next one is sealed
						cpu.stop()
						n -= k
					}
				}
				const warm = 4 * benchPayloads
				run(warm)
				b.SetBytes(int64(len(chunk[0])))
				b.ReportAllocs()
				b.ResetTimer()
				cpu = cpuMeter{}
				run(b.N)
				b.StopTimer()
				cpu.report(b)
				checkRelayed(b, br, nil, base+uint64(warm+b.N))
			})
		}
	}
}

// BenchmarkSecureConnMemory reports the heap an established, idle
// (compacted) encrypted connection costs the broker beyond a plaintext one:
// the channel state (secureConn and the record layer) after the handshake.
// It builds 500 connections of each kind per iteration.
func BenchmarkSecureConnMemory(b *testing.B) {
	for _, suite := range []*crypto.Suite{crypto.GM, crypto.GMPQ, crypto.IntlPQ} {
		b.Run(suite.Name, func(b *testing.B) {
			keys := newSecureKeys(b)
			br, err := New(Options{AllowAnonymous: true, Secure: &SecureOptions{Server: keys.server()}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(br.Close)
			cfg := keys.client(suite)
			const n = 500
			var perConn float64
			for range b.N {
				heap := func() uint64 {
					runtime.GC()
					runtime.GC()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					return ms.HeapAlloc
				}
				// Both kinds keep their peer and client; only the channel differs.
				plain := make([]*client, n)
				h0 := heap()
				for i := range plain {
					_, plain[i] = newSealPeer(b, br, uint64(i+1), pbProto)
				}
				h1 := heap()
				secure := make([]*client, n)
				clients := make([]*inprocSecure, n)
				for i := range secure {
					p, cl := newSealPeer(b, br, uint64(n+i+1), pbProto)
					clients[i] = handshakeInproc(b, br, p, cl, cfg)
					secure[i] = cl
				}
				for _, cl := range secure {
					sc := cl.sec.st.Load()
					if sc == nil || sc.phase.Load() != phaseOpen {
						b.Fatal("handshake not complete")
					}
					sc.Compact()
					p := cl.peer.(*sealPeer)
					p.mu.Lock()
					p.got = nil // the captured handshake frames are the test's, not the connection's
					p.mu.Unlock()
				}
				for _, c := range clients {
					c.conn = nil // the client's side of the channel is not the server's memory
				}
				h2 := heap()
				perConn = (float64(h2-h1) - float64(h1-h0)) / n
				runtime.KeepAlive(plain)
				runtime.KeepAlive(secure)
				runtime.KeepAlive(clients)
			}
			b.ReportMetric(perConn, "B/conn")
		})
	}
}

// BenchmarkSealFrame prices the gateway's framing of one outbound record
// against the bare record layer: "frame" is secureConn.SealFrame (a
// pooled frame, the secure envelope's header or base64, crypto.Conn.Seal)
// of a 150-byte inner envelope, "record" is crypto.Conn.Seal of the same
// bytes into a reused buffer. The difference is what the gateway adds to
// the AEAD per sealed frame.
func BenchmarkSealFrame(b *testing.B) {
	keys := newSecureKeys(b)
	for _, suite := range []*crypto.Suite{crypto.GM, crypto.IntlPQ} {
		for _, sp := range []string{pbProto, jsonProto} {
			hs, err := crypto.NewClientHandshake(keys.client(suite))
			if err != nil {
				b.Fatal(err)
			}
			srv := crypto.NewServerHandshake(keys.server())
			sh, err := srv.HandleClientHello(hs.Hello())
			if err != nil {
				b.Fatal(err)
			}
			fin, _, err := hs.HandleServerHello(sh)
			if err != nil {
				b.Fatal(err)
			}
			conn, _, err := srv.HandleClientFinished(fin)
			if err != nil {
				b.Fatal(err)
			}
			sc := &secureConn{cl: &client{codec: protocol.ForSubprotocol(sp)}, conn: conn}
			inner := bytes.Repeat([]byte{'x'}, 150)
			b.Run(suite.Name+"/"+sp+"/frame", func(b *testing.B) {
				f := netpoll.AcquireFrame() // the plaintext frame a fan-out encodes once
				f.B = append(f.B, inner...)
				f.Seal(ws.OpBinary)
				defer f.Release()
				b.SetBytes(int64(len(inner)))
				b.ReportAllocs()
				for range b.N {
					out, err := sc.SealFrame(f)
					if err != nil {
						b.Fatal(err)
					}
					out.Release()
				}
			})
			b.Run(suite.Name+"/"+sp+"/record", func(b *testing.B) {
				rec := make([]byte, 0, 512)
				b.SetBytes(int64(len(inner)))
				b.ReportAllocs()
				for range b.N {
					if rec, err = conn.Seal(rec[:0], inner); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
