package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// lossyHistory makes the outcome of appends unknown, as an ack timeout
// does: while drop > 0 an append is not sent at all, while lose > 0 it is
// stored but its answer is lost; either way done gets histstore.ErrTimeout.
type lossyHistory struct {
	History
	drop, lose atomic.Int32
}

func (h *lossyHistory) AppendAsync(m *histstore.Message, expect uint64, done func(uint64, bool, error)) error {
	if h.drop.Load() > 0 && h.drop.Add(-1) >= 0 {
		go done(0, false, histstore.ErrTimeout)
		return nil
	}
	if h.lose.Load() > 0 && h.lose.Add(-1) >= 0 {
		return h.History.AppendAsync(m, expect, func(uint64, bool, error) { done(0, false, histstore.ErrTimeout) })
	}
	return h.History.AppendAsync(m, expect, done)
}

// answersTo returns what c got for envelope id (Acks and Errors).
func answersTo(c *tclient, id uint64) []*protocol.Envelope {
	return c.all(func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindAck || e.Kind == protocol.KindError)
	})
}

// ownDelivers returns the Delivers c got of messages with client message
// id cmid.
func ownDelivers(c *tclient, conv, cmid string) []*protocol.Envelope {
	return c.all(func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == conv && e.Deliver.ClientMsgID == cmid
	})
}

// storedCMIDs returns the client message ids of conv's history, in order.
func storedCMIDs(t *testing.T, env *testEnv, conv string) []string {
	t.Helper()
	msgs, _, err := env.b.History(context.Background(), token.DefaultTenant, conv, 0, MaxListLimit)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, m.ClientMsgID)
	}
	return out
}

// TestDurableAckTimeout: an append whose answer is lost (an ack timeout)
// is appended again unchanged, and the answer settles it. Stored the
// first time: the sender gets its Ack (learned from the stream), the
// agent one Deliver, the sender no Deliver of its own message (this used
// to be a 5001 refusal of a message that was stored and delivered
// anyway, docs/benchmarks.md item 7). Not stored: stored now, once.
// Unknown twice: CodeUnconfirmed; the message, stored after all, comes
// to its sender as a Deliver with its own client message id, and a
// re-send with that id gets the original Ack.
func TestDurableAckTimeout(t *testing.T) {
	st := startStores(t, t.TempDir())
	lh := &lossyHistory{History: st.hist}
	env, _ := startDurable(t, Options{}, lh, st.conv)
	v := env.dial("visitor", jsonProto)
	v.hello(protocol.Hello{Token: env.token("vis-timeout", token.RoleVisitor)})
	cid := v.open(protocol.Open{}).ConversationID
	a := env.dial("agent", pbProto)
	a.hello(protocol.Hello{Token: env.token("agent-timeout", token.RoleAgent)})
	a.online(1)
	v.waitState(cid, protocol.StateAssigned)
	if ack := v.say(cid, "m1", "one"); ack.Seq != 1 {
		t.Fatalf("first seq %d", ack.Seq)
	}

	// Stored, the answer lost.
	lh.lose.Store(1)
	if ack := v.say(cid, "m2", "stored, answer lost"); ack.Seq != 2 {
		t.Fatalf("m2 acked as seq %d, want 2", ack.Seq)
	}
	a.waitDeliver(cid, 2)
	// Not sent at all.
	lh.drop.Store(1)
	if ack := v.say(cid, "m3", "not sent the first time"); ack.Seq != 3 {
		t.Fatalf("m3 acked as seq %d, want 3", ack.Seq)
	}
	a.waitDeliver(cid, 3)

	// Stored, and both answers lost: unconfirmed.
	lh.lose.Store(2)
	id := v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "m4", Text: "unconfirmed"}})
	v.waitError(id, protocol.CodeUnconfirmed)
	// The next message meets it in the stream: everybody learns it, its
	// sender as a Deliver of its own client message id.
	if ack := v.say(cid, "m5", "after the unconfirmed one"); ack.Seq != 5 {
		t.Fatalf("m5 acked as seq %d, want 5", ack.Seq)
	}
	echo := v.waitFor("m4 delivered to its sender", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindDeliver && e.Deliver.ClientMsgID == "m4"
	})
	if echo.Deliver.Seq != 4 || echo.Deliver.SenderID != "vis-timeout" {
		t.Fatalf("m4 delivered as %+v", echo.Deliver)
	}
	if ack := v.say(cid, "m4", "unconfirmed"); ack.Seq != 4 {
		t.Fatalf("the re-sent m4 acked as seq %d, want its original 4", ack.Seq)
	}
	a.waitDeliver(cid, 5)

	if got := a.delivers(cid); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("agent got %v, want every seq once", got)
	}
	if got := storedCMIDs(t, env, cid); !slices.Equal(got, []string{"m1", "m2", "m3", "m4", "m5"}) {
		t.Fatalf("history %v", got)
	}
	for _, cmid := range []string{"m1", "m2", "m3", "m5"} {
		if n := len(ownDelivers(v, cid, cmid)); n != 0 {
			t.Fatalf("the visitor got its own acked %s delivered %d times", cmid, n)
		}
	}
	if n := len(v.all(isKind(protocol.KindError))); n != 1 {
		t.Fatalf("the visitor got %d errors, want the one unconfirmed", n)
	}
}

// holdHistory holds the appends made while hold is set: they are sent
// when release is called (a writer stalled with a forwarded send).
type holdHistory struct {
	History
	mu   sync.Mutex
	hold bool
	held []func()
}

func (h *holdHistory) AppendAsync(m *histstore.Message, expect uint64, done func(uint64, bool, error)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hold {
		h.held = append(h.held, func() {
			if err := h.History.AppendAsync(m, expect, done); err != nil {
				done(0, false, err)
			}
		})
		return nil
	}
	return h.History.AppendAsync(m, expect, done)
}

func (h *holdHistory) release() int {
	h.mu.Lock()
	held := h.held
	h.held, h.hold = nil, false
	h.mu.Unlock()
	for _, f := range held {
		f()
	}
	return len(held)
}

// TestClusterForwardTimeout: node A forwards a visitor's send to the
// conversation's writer B, which stalls with it (its append held) past
// the forward timeout. A appends the send itself, unchanged: its visitor
// gets the Ack, the agent on B one Deliver; when B's append goes through
// at last it is a duplicate, stored nowhere twice, and nobody hears of the
// message again. This used to fail the send with 5001 while B stored and
// delivered it later, and the visitor got its own message as a Deliver
// (docs/benchmarks.md item 7: refused yet delivered, delivered but never
// acked, "misrouted").
func TestClusterForwardTimeout(t *testing.T) {
	var hb *holdHistory
	nodes := startClusterHook(t, 2, 1, Options{}, func(i int, cn *clusterNode) {
		if i == 1 {
			hb = &holdHistory{History: cn.hist}
			cn.history = hb
		}
	})
	A, B := nodes[0].env, nodes[1].env
	ag := B.dial("agent@B", pbProto)
	ag.hello(protocol.Hello{Token: B.token("agent-stall", token.RoleAgent)})
	ag.online(1)
	v := A.dial("visitor@A", jsonProto)
	v.hello(protocol.Hello{Token: A.token("vis-stall", token.RoleVisitor)})
	cid := v.open(protocol.Open{}).ConversationID
	ag.waitState(cid, protocol.StateAssigned)
	ack := v.say(cid, "v-0", "before")
	ag.waitDeliver(cid, ack.Seq)

	onConv(t, A, cid, func(s *shard, c *conversation) {
		c.cw.writer, c.cw.peer, c.cw.peerAt = "n1", "n1", time.Now()
	})
	hb.mu.Lock()
	hb.hold = true
	hb.mu.Unlock()
	forwarded := A.b.m.forwarded.Get()
	id := v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "v-1", Text: "to a stalled writer"}})
	got := v.waitForWithin(2*forwardTimeout, "answer to v-1", func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindAck || e.Kind == protocol.KindError)
	})
	if got.Kind != protocol.KindAck {
		t.Fatalf("v-1 answered with error %d %s", got.Error.Code, got.Error.Message)
	}
	if A.b.m.forwarded.Get() != forwarded+1 {
		t.Fatal("A did not forward v-1 to B")
	}
	ag.waitDeliver(cid, got.Ack.Seq)

	// B's append of its forward goes through now: a duplicate.
	if n := hb.release(); n != 1 {
		t.Fatalf("B held %d appends, want its forward of v-1", n)
	}
	if !waitFor(t, 10*time.Second, func() bool {
		pending := -1
		onConv(t, B, cid, func(_ *shard, c *conversation) { pending = len(c.queue) })
		return pending == 0
	}) {
		t.Fatal("B's forwarded send is still queued")
	}
	next := v.say(cid, "v-2", "after")
	reply := ag.say(cid, "a-1", "reply")
	v.waitDeliver(cid, reply.Seq)
	ag.waitDeliver(cid, next.Seq)

	if h := storedCMIDs(t, A, cid); !slices.Equal(h, []string{"v-0", "v-1", "v-2", "a-1"}) {
		t.Fatalf("history %v", h)
	}
	if n := len(ownDelivers(ag, cid, "v-1")); n != 1 {
		t.Fatalf("the agent got v-1 %d times", n)
	}
	if n := len(ownDelivers(v, cid, "v-1")); n != 0 {
		t.Fatalf("the visitor got its own v-1 delivered %d times", n)
	}
	if n := len(answersTo(v, id)); n != 1 {
		t.Fatalf("v-1 answered %d times", n)
	}
	checkConsecutive(t, "visitor", seqsOf(v, cid), 1, reply.Seq)
	checkConsecutive(t, "agent", seqsOf(ag, cid), 1, reply.Seq)
}

// behindHistory answers Last with an error while behind is set, as a
// replica too far behind to be read does.
type behindHistory struct {
	History
	behind atomic.Bool
}

func (h *behindHistory) Last(ctx context.Context, tenant, conv string) (*histstore.Message, uint64, bool, error) {
	if h.behind.Load() {
		return nil, 0, false, errors.New("test: replica behind")
	}
	return h.History.Last(ctx, tenant, conv)
}

// TestClusterLateForward: node A forwards a visitor's send to writer B,
// which stores it and answers, but A cannot learn it: it missed the
// message before it (a lost notice) and cannot read the stream (a replica
// behind). A must not ack it while it has not delivered the message
// before it: the visitor's cursor (the highest seq of a Deliver or an
// Ack) would pass that message, and the client would drop it as a replay
// when it comes (it used to: A acked after maxLate ticks, and at once
// when B answered a re-send "stored before"). So the send fails with
// 5003 after maxLate ticks; the re-send the client makes, answered "stored
// before" by B, is acked once A has caught up: after the Deliver of the
// message it missed.
func TestClusterLateForward(t *testing.T) {
	var ha *behindHistory
	nodes := startClusterHook(t, 2, 1, Options{}, func(i int, cn *clusterNode) {
		if i == 0 {
			ha = &behindHistory{History: cn.hist}
			cn.history = ha
		}
	})
	A, B := nodes[0].env, nodes[1].env
	ag := B.dial("agent@B", pbProto)
	ag.hello(protocol.Hello{Token: B.token("agent-late", token.RoleAgent)})
	ag.online(1)
	v := A.dial("visitor@A", jsonProto)
	v.hello(protocol.Hello{Token: A.token("vis-late", token.RoleVisitor)})
	cid := v.open(protocol.Open{}).ConversationID
	ag.waitState(cid, protocol.StateAssigned)
	first := v.say(cid, "v-0", "hello")
	ag.waitDeliver(cid, first.Seq)

	// A misses the agent's next message and cannot read the stream.
	onConv(t, A, cid, func(s *shard, c *conversation) { s.unfollow(c) })
	missed := ag.say(cid, "a-0", "A does not hear this one")
	ha.behind.Store(true)
	forwardToB := func() {
		onConv(t, A, cid, func(s *shard, c *conversation) {
			c.cw.writer, c.cw.peer, c.cw.peerAt = "n1", "n1", time.Now()
		})
	}
	forwardToB()
	send := protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "v-1", Text: "stored by B"}}
	id := v.send(send)
	ans := v.waitForWithin(time.Minute, "answer to v-1", func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindAck || e.Kind == protocol.KindError)
	})
	if ans.Kind != protocol.KindError || ans.Error.Code != protocol.CodeUnconfirmed {
		t.Fatalf("v-1 answered %s %+v %+v, want error %d while A cannot read seq %d", ans.Kind, ans.Ack, ans.Error, protocol.CodeUnconfirmed, missed.Seq)
	}
	stored := ag.waitDeliver(cid, missed.Seq+1)
	if stored.ClientMsgID != "v-1" {
		t.Fatalf("seq %d is %q, want v-1", stored.Seq, stored.ClientMsgID)
	}

	// The client re-sends v-1, as 5003 asks; B answers "stored before",
	// with a seq A has not reached: A holds the answer.
	forwardToB()
	send.ID = 0
	id = v.send(send)
	if !waitFor(t, 30*time.Second, func() bool {
		held := false
		onConv(t, A, cid, func(s *shard, c *conversation) {
			for i := range c.queue {
				if p := &c.queue[i]; p.cmid == "v-1" && p.fwdAns != nil && p.fwdAns.Dup {
					held = true
				}
			}
		})
		return held || len(v.all(func(e *protocol.Envelope) bool { return e.ID == id })) > 0
	}) {
		t.Fatal("B never answered the re-send")
	}

	// A catches up: the message it missed, then v-1's Ack.
	ha.behind.Store(false)
	onConv(t, A, cid, func(s *shard, c *conversation) { s.follow(c) })
	ack := v.waitForWithin(time.Minute, "ack of the re-sent v-1", func(e *protocol.Envelope) bool {
		return e.ID == id && (e.Kind == protocol.KindAck || e.Kind == protocol.KindError)
	})
	if ack.Kind != protocol.KindAck || ack.Ack.Seq != missed.Seq+1 {
		t.Fatalf("re-sent v-1 answered %s %+v %+v, want the Ack of seq %d", ack.Kind, ack.Ack, ack.Error, missed.Seq+1)
	}
	var last uint64
	if !waitFor(t, 10*time.Second, func() bool {
		last = ag.say(cid, fmt.Sprintf("a-%d", time.Now().UnixNano()), "A hears this").Seq
		if len(v.all(func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindDeliver && e.Deliver.Seq == last
		})) > 0 {
			return true
		}
		time.Sleep(100 * time.Millisecond) // a new subscription's interest crosses the route
		return false
	}) {
		t.Fatal("the visitor never caught up")
	}
	// What a client keeping a cursor makes of it: nothing dropped, every
	// seq once, in order.
	checkConsecutive(t, "visitor", cursorView(t, v, cid), first.Seq, last)
}

// cursorView replays what c received for conv through a client's cursor
// (the highest seq of a Deliver or an Ack, docs/protocol.md "Resume"): it
// fails if a Deliver arrives at or below the cursor, which such a client
// would drop, and returns the seqs the client took in, in order.
func cursorView(t *testing.T, c *tclient, conv string) []uint64 {
	t.Helper()
	var cursor uint64
	var seen []uint64
	for _, e := range c.all(func(e *protocol.Envelope) bool {
		return (e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == conv) || (e.Kind == protocol.KindAck && e.Ack.ConversationID == conv)
	}) {
		seq := e.Ack.Seq
		if e.Kind == protocol.KindDeliver {
			seq = e.Deliver.Seq
			if seq <= cursor {
				t.Fatalf("%s: Deliver of seq %d after the cursor reached %d: a client drops it (%s)", c.name, seq, cursor, summary(c.all(func(*protocol.Envelope) bool { return true })))
			}
		}
		if seq > cursor {
			cursor = seq
			seen = append(seen, seq)
		}
	}
	return seen
}
