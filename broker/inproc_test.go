package broker

import (
	"testing"

	"github.com/unigate/unigate/protocol"
)

// newPeer returns a capturing in-process peer and its client.
func newPeer(t testing.TB, b *Broker, id uint64, subprotocol string) (*recPeer, *client) {
	t.Helper()
	p := &recPeer{id: id}
	p.capture.Store(true)
	cl := b.newClient(p, subprotocol)
	if cl == nil {
		t.Fatalf("no codec for %q", subprotocol)
	}
	return p, cl
}

func isReply(id uint64, k protocol.Kind) func(*protocol.Envelope) bool {
	return func(e *protocol.Envelope) bool { return e.ID == id && e.Kind == k }
}

// TestOverload: a full shard inbox is answered with a temporary
// CodeOverloaded, never waited for; after Close everything is answered
// with CodeShuttingDown.
func TestOverload(t *testing.T) {
	b, err := newBroker(Options{AllowAnonymous: true, Shards: 1, QueueSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p, cl := newPeer(t, b, 1, pbProto)
	for id := uint64(1); id <= 3; id++ { // the shard is not running yet
		b.receive(cl, encode(t, protocol.Proto, protocol.Envelope{Kind: protocol.KindHello, ID: id}))
	}
	e := p.waitEnvelope(t, protocol.Proto, "overload error", isReply(3, protocol.KindError))
	if e.Error.Code != protocol.CodeOverloaded || !e.Error.Temporary {
		t.Fatalf("third request answered %+v", e.Error)
	}
	if st := b.Stats(); st.DroppedOverload != 1 {
		t.Fatalf("DroppedOverload %d, want 1", st.DroppedOverload)
	}
	b.start()
	p.waitEnvelope(t, protocol.Proto, "welcome", isReply(1, protocol.KindWelcome))
	e = p.waitEnvelope(t, protocol.Proto, "second hello refused", isReply(2, protocol.KindError))
	if e.Error.Code != protocol.CodeBadTransition {
		t.Fatalf("second hello answered %+v", e.Error)
	}
	b.Close()
	b.receive(cl, encode(t, protocol.Proto, protocol.Envelope{Kind: protocol.KindOpen, ID: 4}))
	e = p.waitEnvelope(t, protocol.Proto, "shutting down", isReply(4, protocol.KindError))
	if e.Error.Code != protocol.CodeShuttingDown || !e.Error.Temporary {
		t.Fatalf("request after Close answered %+v", e.Error)
	}
}

// TestPipelineBound: requests sent before the hello is processed are
// bounded per connection; past the bound they are refused (temporary).
func TestPipelineBound(t *testing.T) {
	b, err := newBroker(Options{AllowAnonymous: true, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p, cl := newPeer(t, b, 1, jsonProto)
	b.receive(cl, encode(t, protocol.JSON, protocol.Envelope{Kind: protocol.KindHello, ID: 1}))
	send := protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: "c_x", Text: "x"}}
	for i := range maxViaHome + 1 {
		send.ID = uint64(i + 2)
		b.receive(cl, encode(t, protocol.JSON, send))
	}
	last := uint64(maxViaHome + 2)
	e := p.waitEnvelope(t, protocol.JSON, "refusal", isReply(last, protocol.KindError))
	if e.Error.Code != protocol.CodeRateLimited {
		t.Fatalf("request %d answered %+v", last, e.Error)
	}
	b.start()
	p.waitEnvelope(t, protocol.JSON, "welcome", isReply(1, protocol.KindWelcome))
	// The pipelined ones are handled after the welcome, in order.
	e = p.waitEnvelope(t, protocol.JSON, "last pipelined answer", isReply(last-1, protocol.KindError))
	if e.Error.Code != protocol.CodeUnknownConversation {
		t.Fatalf("pipelined send answered %+v", e.Error)
	}
	var ids []uint64
	for _, e := range p.envelopes(t, protocol.JSON) {
		if e.Kind == protocol.KindError && e.Error.Code == protocol.CodeUnknownConversation {
			ids = append(ids, e.ID)
		}
	}
	for i, id := range ids {
		if id != uint64(i+2) {
			t.Fatalf("pipelined answers out of order: %v", ids)
		}
	}
	if len(ids) != maxViaHome {
		t.Fatalf("%d pipelined answers, want %d", len(ids), maxViaHome)
	}
}
