package broker

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// benchPair is a visitor and its conversation, assigned to an agent, with
// pre-encoded Send payloads that carry distinct client message ids (more
// of them than the history holds, so a reused id is never a duplicate).
type benchPair struct {
	visitor  *client
	vp       *recPeer
	conv     string
	payloads [][]byte
	sent     int64
}

const benchPayloads = 2048

// setupRelay builds a broker with n assigned conversations, everything in
// process: visitors and agents are recPeers, no sockets.
func setupRelay(b *testing.B, n int, subprotocol string) (*Broker, []*benchPair, []*recPeer) {
	return setupRelayWith(b, n, subprotocol, Options{}, true)
}

// setupRelayWith is setupRelay with extra options (History, ...); withCmid
// false sends messages without client message ids.
func setupRelayWith(b *testing.B, n int, subprotocol string, o Options, withCmid bool) (*Broker, []*benchPair, []*recPeer) {
	b.Helper()
	signer := testSigner(b)
	o.AllowAnonymous, o.Signer, o.MaxQueue, o.HistoryPerConversation = true, signer, n+1, 1000
	br, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	codec := protocol.ForSubprotocol(subprotocol)
	var id uint64
	nextID := func() uint64 { id++; return id }

	// Agents, 100 conversations each.
	var agents []*recPeer
	for i := 0; i*DefaultMaxAgentCapacity < n; i++ {
		p, cl := newPeer(b, br, nextID(), subprotocol)
		now := time.Now()
		tok, err := signer.Sign(token.Claims{Subject: fmt.Sprintf("agent-%d", i), Role: token.RoleAgent, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		br.receive(cl, encode(b, codec, protocol.Envelope{Kind: protocol.KindHello, ID: 1, Hello: protocol.Hello{Token: tok}}))
		p.waitEnvelope(b, codec, "agent welcome", isReply(1, protocol.KindWelcome))
		br.receive(cl, encode(b, codec, protocol.Envelope{Kind: protocol.KindPresence, ID: 2, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: DefaultMaxAgentCapacity}}))
		p.waitEnvelope(b, codec, "presence", isReply(2, protocol.KindPresence))
		agents = append(agents, p)
	}
	pairs := make([]*benchPair, n)
	for i := range pairs {
		p, cl := newPeer(b, br, nextID(), subprotocol)
		br.receive(cl, encode(b, codec, protocol.Envelope{Kind: protocol.KindHello, ID: 1}))
		br.receive(cl, encode(b, codec, protocol.Envelope{Kind: protocol.KindOpen, ID: 2}))
		conv := p.waitEnvelope(b, codec, "conversation", isReply(2, protocol.KindConversation)).Conversation.ConversationID
		pr := &benchPair{visitor: cl, vp: p, conv: conv, payloads: make([][]byte, benchPayloads)}
		for j := range pr.payloads {
			cmid := fmt.Sprintf("m-%08d", j)
			if !withCmid {
				cmid = ""
			}
			pr.payloads[j] = encode(b, codec, protocol.Envelope{Kind: protocol.KindSend, ID: uint64(j + 3), Send: protocol.Send{
				ConversationID: conv,
				ClientMsgID:    cmid,
				Text:           "Hello, I have a question about my last invoice: it shows two charges.",
			}})
		}
		pairs[i] = pr
	}
	if !waitFor(b, 10*time.Second, func() bool { return br.Stats().ConversationsAssigned == int64(n) }) {
		b.Fatalf("assigned %d of %d", br.Stats().ConversationsAssigned, n)
	}
	for _, p := range agents {
		p.capture.Store(false)
	}
	for _, pr := range pairs {
		pr.vp.capture.Store(false)
		pr.sent = pr.vp.frames.Load() // acks counted from here
	}
	return br, pairs, agents
}

// relay sends pair's next message, first waiting until fewer than window
// of its messages are unacknowledged (an open-loop client with a bounded
// window, so the shard inbox never overflows).
func (pr *benchPair) relay(br *Broker, window int64) {
	for pr.sent-pr.vp.frames.Load() >= window {
		runtime.Gosched()
	}
	br.receive(pr.visitor, pr.payloads[pr.sent%benchPayloads])
	pr.sent++
}

func (pr *benchPair) drain() {
	for pr.vp.frames.Load() < pr.sent {
		runtime.Gosched()
	}
}

func checkRelayed(b *testing.B, br *Broker, agents []*recPeer, want uint64) {
	b.Helper()
	st := br.Stats()
	if st.DroppedOverload != 0 {
		b.Fatalf("%d requests dropped by overload", st.DroppedOverload)
	}
	if !waitFor(b, 10*time.Second, func() bool { return br.Stats().MessagesRelayed >= want }) {
		b.Fatalf("relayed %d, want ≥ %d", br.Stats().MessagesRelayed, want)
	}
}

// cpuMeter adds up the process's CPU time (every thread: the "event loop",
// the shards, the GC) over the timed parts of a benchmark; report gives it
// per operation as cpu-ns/op. On a machine shared with other work, wall
// time mostly measures waiting for a core; CPU time does not.
type cpuMeter struct{ total, t0 time.Duration }

func (m *cpuMeter) start() { m.t0 = processCPU() }
func (m *cpuMeter) stop()  { m.total += processCPU() - m.t0 }
func (m *cpuMeter) report(b *testing.B) {
	b.ReportMetric(float64(m.total)/float64(b.N), "cpu-ns/op")
}

// BenchmarkRelay measures one chat message through the broker core: copy
// and decode the Send (as OnMessage does on the event loop), hand it to
// the conversation's shard, sequence and store it, encode the Ack and the
// Deliver once each and queue them to the two peers. The peers release
// the frames at once. allocs/op counts every goroutine; cpu-ns/op is the
// process's CPU per message. With -cpu 1 the event loop and the shard
// share one P, so both ns/op and cpu-ns/op are the server's CPU per
// message; with more Ps the "event loop" spins (Gosched) while its window
// of 256 messages is full, and cpu-ns/op counts that too.
func BenchmarkRelay(b *testing.B) {
	for _, sp := range []string{pbProto, jsonProto} {
		b.Run(sp, func(b *testing.B) {
			br, pairs, agents := setupRelay(b, 1, sp)
			pr := pairs[0]
			base := br.Stats().MessagesRelayed
			// Warm up the pools, the history ring and the dedupe table.
			for range 4 * benchPayloads {
				pr.relay(br, 256)
			}
			pr.drain()
			b.SetBytes(int64(len(pr.payloads[0])))
			b.ReportAllocs()
			var cpu cpuMeter
			b.ResetTimer()
			cpu.start()
			for range b.N {
				pr.relay(br, 256)
			}
			pr.drain()
			cpu.stop()
			b.StopTimer()
			cpu.report(b)
			checkRelayed(b, br, agents, base+uint64(4*benchPayloads+b.N))
		})
	}
}

// BenchmarkRelayParallel relays over many conversations from GOMAXPROCS
// goroutines (each one stands for an event loop and owns its visitors),
// so every shard is busy.
func BenchmarkRelayParallel(b *testing.B) {
	for _, n := range []int{64, 1024} {
		b.Run(fmt.Sprintf("%s/conversations=%d", pbProto, n), func(b *testing.B) {
			br, pairs, agents := setupRelay(b, n, pbProto)
			base := br.Stats().MessagesRelayed
			var next atomic.Int64
			var total atomic.Int64
			procs := int64(runtime.GOMAXPROCS(0))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				// Goroutine g owns pairs g, g+procs, g+2·procs, …
				g := next.Add(1) - 1
				var mine []*benchPair
				for i := g; i < int64(len(pairs)); i += procs {
					mine = append(mine, pairs[i])
				}
				if len(mine) == 0 {
					return
				}
				k, sent := 0, int64(0)
				for pb.Next() {
					mine[k].relay(br, 4)
					sent++
					if k++; k == len(mine) {
						k = 0
					}
				}
				for _, pr := range mine {
					pr.drain()
				}
				total.Add(sent)
			})
			b.StopTimer()
			checkRelayed(b, br, agents, base+uint64(total.Load()))
		})
	}
}

// BenchmarkRelayDurable is BenchmarkRelay with durability on: every
// message is appended to a real embedded NATS JetStream (file store in a
// temporary directory) and acked and delivered only after the PubAck.
// One conversation has one append in flight at a time, so a single
// conversation measures the append round trip; 64 conversations pipeline
// across conversations. Messages carry no client message id (the
// benchmark would reuse them within the store's duplicate window).
//
// The hook_messages variants add a hook with HookMessages on and the
// durable event queue (Backends.Events, a nopHook taking every event):
// one message_stored event per message, in JetStream too.
func BenchmarkRelayDurable(b *testing.B) {
	for _, hooks := range []bool{false, true} {
		for _, n := range []int{1, 64} {
			name := fmt.Sprintf("%s/conversations=%d", pbProto, n)
			if hooks {
				name += "/hook_messages"
			}
			b.Run(name, func(b *testing.B) { benchRelayDurable(b, n, hooks) })
		}
	}
}

func benchRelayDurable(b *testing.B, n int, hooks bool) {
	st := startStores(b, b.TempDir())
	o := Options{History: st.hist, Conversations: st.conv, MaxPendingPerConversation: 64}
	if hooks {
		hev := openHookEventsT(b, st.node.JetStream(), HookEventsOptions{MaxEvents: 1 << 30, DuplicateWindow: time.Second})
		o.Backends = &Backends{Hook: &nopHook{}, HookMessages: true, Events: hev}
	}
	br, pairs, agents := setupRelayWith(b, n, pbProto, o, false)
	base := br.Stats().MessagesRelayed
	const window = 32
	for i := range 256 {
		pairs[i%n].relay(br, window)
	}
	for _, pr := range pairs {
		pr.drain()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		pairs[i%n].relay(br, window)
	}
	for _, pr := range pairs {
		pr.drain()
	}
	b.StopTimer()
	checkRelayed(b, br, agents, base+uint64(256+b.N))
}
