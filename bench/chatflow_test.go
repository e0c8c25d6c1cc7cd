package bench

import (
	"strconv"
	"testing"

	"github.com/unigate/unigate/protocol"
)

// TestFlowOutcomes: how the chat check classifies each message of a flow.
// A definitive refusal that is delivered anyway is a violation; a 5003
// unconfirmed is not a refusal, and its delivery (to the other side, or
// back to its sender as its own message) says it was stored; a message
// delivered back to its sender otherwise is misrouted.
func TestFlowOutcomes(t *testing.T) {
	const size = 64
	w := &chatWorker{job: &chatJob{Size: size}}
	f := newFlow(8)
	for k := range 8 {
		f.sent.set(k)
	}
	f.acked.set(0) // acked, delivered
	f.delivered.set(0)
	f.refused.set(1) // refused (definitive), delivered: a violation
	f.delivered.set(1)
	f.unconfirmed.set(2) // unconfirmed, delivered to the other side
	f.delivered.set(2)
	f.unconfirmed.set(3) // unconfirmed, delivered back to its sender
	f.unconfirmed.set(4) // unconfirmed, never seen again
	f.refused.set(5)     // refused, not delivered
	f.delivered.set(6)   // delivered, no answer (yet)
	// 7: sent, nothing else
	own := func(k int) *protocol.Deliver {
		return &protocol.Deliver{ClientMsgID: "v" + strconv.Itoa(k), Text: string(appendPayload(nil, payload{k: k}, size))}
	}
	if !w.echo(&f, own(3), "v") {
		t.Fatal("an unconfirmed message delivered back to its sender is not an echo")
	}
	if w.echo(&f, own(0), "v") {
		t.Fatal("an acked message delivered back to its sender counts as an echo")
	}
	if w.echo(&f, &protocol.Deliver{ClientMsgID: "v4", Text: string(appendPayload(nil, payload{k: 3}, size))}, "v") {
		t.Fatal("a text that does not match its client message id counts as an echo")
	}
	got := flowResultOf(&f)
	want := FlowResult{
		Sent: 8, Acked: 1, Refused: 2, Unconfirmed: 3, UnconfirmedStored: 2, Unanswered: 2,
		Delivered: 4, RefusedDelivered: 1, DeliveredUnacked: 2,
	}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if v := got.violations(); v != got.RefusedDelivered+got.DeliveredUnacked+got.Unanswered {
		t.Fatalf("violations %d", v)
	}
}
