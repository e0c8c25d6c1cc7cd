package broker

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// orderPeer is a recPeer that also numbers every frame it is sent on a
// clock shared with other peers, so a test can tell which of two peers was
// answered first.
type orderPeer struct {
	recPeer
	clock *atomic.Int64
	mu    sync.Mutex
	at    []int64 // clock value of each frame, in the order of recPeer.got
}

func (p *orderPeer) Send(f *netpoll.Frame) error {
	p.mu.Lock()
	p.at = append(p.at, p.clock.Add(1))
	p.mu.Unlock()
	return p.recPeer.Send(f)
}

// firstAt returns the clock value of the first frame matching m, or 0.
func (p *orderPeer) firstAt(t *testing.T, m func(*protocol.Envelope) bool) int64 {
	t.Helper()
	envs := p.envelopes(t, protocol.Proto)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, e := range envs {
		if m(e) {
			return p.at[i]
		}
	}
	return 0
}

// TestChatBeforeSetup: a shard with hellos and a chat message waiting
// serves the chat message first, although the hellos arrived before it.
func TestChatBeforeSetup(t *testing.T) {
	signer := testSigner(t)
	b, err := New(Options{AllowAnonymous: true, Signer: signer, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var clock atomic.Int64
	var nextID uint64
	peer := func() (*orderPeer, *client) {
		nextID++
		p := &orderPeer{recPeer: recPeer{id: nextID}, clock: &clock}
		p.capture.Store(true)
		cl := b.newClient(p, pbProto)
		return p, cl
	}
	enc := func(e protocol.Envelope) []byte { return encode(t, protocol.Proto, e) }

	ap, acl := peer()
	now := time.Now()
	tok, err := signer.Sign(token.Claims{Subject: "agent-1", Role: token.RoleAgent, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	b.receive(acl, enc(protocol.Envelope{Kind: protocol.KindHello, ID: 1, Hello: protocol.Hello{Token: tok}}))
	ap.waitEnvelope(t, protocol.Proto, "agent welcome", isReply(1, protocol.KindWelcome))
	b.receive(acl, enc(protocol.Envelope{Kind: protocol.KindPresence, ID: 2, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 5}}))
	ap.waitEnvelope(t, protocol.Proto, "presence", isReply(2, protocol.KindPresence))
	vp, vcl := peer()
	b.receive(vcl, enc(protocol.Envelope{Kind: protocol.KindHello, ID: 1}))
	b.receive(vcl, enc(protocol.Envelope{Kind: protocol.KindOpen, ID: 2}))
	conv := vp.waitEnvelope(t, protocol.Proto, "conversation", isReply(2, protocol.KindConversation)).Conversation.ConversationID
	if !waitFor(t, waitTimeout, func() bool { return b.Stats().ConversationsAssigned == 1 }) {
		t.Fatal("the conversation was not assigned")
	}

	// Hold the shard, queue eight hellos and then one chat message.
	started, release := make(chan struct{}), make(chan struct{})
	b.shards[0].mbox.post(ctrl{kind: ctrlCall, call: func(*shard) { close(started); <-release }})
	<-started
	var news []*orderPeer
	for range 8 {
		p, cl := peer()
		b.receive(cl, enc(protocol.Envelope{Kind: protocol.KindHello, ID: 1}))
		news = append(news, p)
	}
	b.receive(vcl, enc(protocol.Envelope{Kind: protocol.KindSend, ID: 3, Send: protocol.Send{ConversationID: conv, ClientMsgID: "m1", Text: "still there?"}}))
	close(release)

	vp.waitEnvelope(t, protocol.Proto, "ack", isReply(3, protocol.KindAck))
	ack := vp.firstAt(t, isReply(3, protocol.KindAck))
	for i, p := range news {
		p.waitEnvelope(t, protocol.Proto, "welcome", isReply(1, protocol.KindWelcome))
		if w := p.firstAt(t, isReply(1, protocol.KindWelcome)); w < ack {
			t.Errorf("new connection %d was welcomed (%d) before the chat message was acked (%d)", i, w, ack)
		}
	}
	ap.waitEnvelope(t, protocol.Proto, "delivery", isDeliver(conv))
}
