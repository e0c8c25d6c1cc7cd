package broker

import (
	"context"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/protocol"
)

// leftEvents returns the message_left events h received.
func (h *recHook) left() []backends.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []backends.Event
	for _, ev := range h.events {
		if ev.Type == backends.EventMessageLeft {
			out = append(out, ev)
		}
	}
	return out
}

// TestLeaveAMessage: a visitor who writes while no agent of its tenant is
// online leaves a message: each such message reaches the hook as a
// message_left event (conversation, visitor, text) even without
// hook_messages, and the integrator API lists the conversation with the
// left_message filter. Once an agent took it, messages are no longer
// "left". Durably, the count survives a restart.
func TestLeaveAMessage(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "durable"}[durable], func(t *testing.T) {
			h := &recHook{}
			o := Options{AllowAnonymous: true, Backends: &Backends{Hook: h, EventRetry: 10 * time.Millisecond}}
			var (
				e    *testEnv
				stop func()
				st   *durableStores
			)
			if durable {
				st = startStores(t, t.TempDir())
				e, stop = startDurable(t, o, st.hist, st.conv)
			} else {
				e = startEnv(t, o)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			v := e.dial("visitor", protocol.SubprotocolJSON)
			v.hello(protocol.Hello{})
			c := v.open(protocol.Open{Text: "is anybody there?"})
			if c.State != protocol.StateQueued || c.Reason != ReasonNoAgentOnline {
				t.Fatalf("open: %v %q, want queued with %q", c.State, c.Reason, ReasonNoAgentOnline)
			}
			id := c.ConversationID
			v.say(id, "m2", "call me back on 555-0100")
			quiet := e.dial("quiet visitor", protocol.SubprotocolJSON)
			quiet.hello(protocol.Hello{})
			other := quiet.open(protocol.Open{}).ConversationID

			if !waitFor(t, waitTimeout, func() bool { return len(h.left()) == 2 }) {
				t.Fatalf("%d message_left events, want 2: %v", len(h.left()), h.types())
			}
			for i, ev := range h.left() {
				want := []string{"is anybody there?", "call me back on 555-0100"}[i]
				if ev.ConversationID != id || ev.VisitorID == "" || ev.Text != want || ev.MessageID != []string{"1", "2"}[i] ||
					ev.Attributes["reason"] != ReasonNoAgentOnline || ev.ID != id+":message_left:"+ev.MessageID {
					t.Fatalf("message_left %d: %+v", i, ev)
				}
			}
			for _, ty := range h.types() {
				if ty == backends.EventMessageStored {
					t.Fatal("message_stored sent without hook_messages")
				}
			}

			list := func(f ConversationFilter) []ConversationInfo {
				t.Helper()
				l, _, err := e.b.ListConversations(ctx, "default", f, "", 50)
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			if l := list(ConversationFilter{State: protocol.StateQueued, LeftMessage: true}); len(l) != 1 || l[0].ID != id ||
				l[0].LeftMessages != 2 || l[0].LastLeftMilli == 0 {
				t.Fatalf("queued with left messages: %+v, want only %s with 2", l, id)
			}
			if l := list(ConversationFilter{State: protocol.StateQueued}); len(l) != 2 {
				t.Fatalf("queued: %d conversations, want 2 (%s and %s)", len(l), id, other)
			}

			a := e.dial("agent", protocol.SubprotocolJSON)
			a.hello(protocol.Hello{Token: e.token("a1", "agent")})
			a.online(5)
			a.waitState(id, protocol.StateAssigned)
			v.say(id, "m3", "thanks for calling")
			// Events arrive in order: once the close of the other
			// conversation is in, m3's would be too.
			a.waitState(other, protocol.StateAssigned)
			a.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: other}})
			quiet.waitState(other, protocol.StateClosed)
			if !waitFor(t, waitTimeout, func() bool {
				types := h.types()
				return len(types) > 0 && types[len(types)-1] == backends.EventConversationClosed
			}) {
				t.Fatalf("no close event: %v", h.types())
			}
			if n := len(h.left()); n != 2 {
				t.Fatalf("%d message_left events after the assignment, want still 2", n)
			}
			if l := list(ConversationFilter{LeftMessage: true}); len(l) != 1 || l[0].State != protocol.StateAssigned || l[0].LeftMessages != 2 {
				t.Fatalf("left_message after the assignment: %+v", l)
			}
			if !durable {
				return
			}
			stop()
			e2, _ := startDurable(t, Options{AllowAnonymous: true}, st.hist, st.conv)
			ci, err := e2.b.Conversation(ctx, "default", id)
			if err != nil {
				t.Fatal(err)
			}
			if ci.LeftMessages != 2 || ci.LastLeftMilli == 0 {
				t.Fatalf("after a restart: %+v, want 2 left messages", ci)
			}
		})
	}
}
