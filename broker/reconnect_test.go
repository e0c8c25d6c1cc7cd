package broker

import (
	"testing"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// TestAgentReconnectClosed: an agent whose conversation was closed while
// it was away comes back. Without a cursor it is told the conversation is
// closed and gets none of its history; with a cursor it gets what it
// missed after it. Its open conversation is replayed whole, as before.
func TestAgentReconnectClosed(t *testing.T) {
	st := startStores(t, t.TempDir())
	env, _ := startDurable(t, Options{}, st.hist, st.conv)
	agTok := env.token("agent-rc", token.RoleAgent)
	a := env.dial("agent", pbProto)
	a.hello(protocol.Hello{Token: agTok})
	a.online(2)
	v1 := env.dial("visitor1", jsonProto)
	v1.hello(protocol.Hello{Token: env.token("vis-rc1", token.RoleVisitor)})
	closed := v1.open(protocol.Open{Text: "first"}).ConversationID
	v2 := env.dial("visitor2", jsonProto)
	v2.hello(protocol.Hello{Token: env.token("vis-rc2", token.RoleVisitor)})
	open := v2.open(protocol.Open{Text: "second"}).ConversationID
	a.waitDeliver(closed, 1)
	a.waitDeliver(open, 1)
	a.say(closed, "a1", "hello one")
	_ = a.ws.Close()
	<-a.done
	v1.say(closed, "v1-bye", "bye")
	id := v1.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: closed, Reason: "done"}})
	v1.waitFor("close answer", func(e *protocol.Envelope) bool { return e.ID == id && e.Kind == protocol.KindConversation })

	back := env.dial("agent-back", pbProto)
	w := back.hello(protocol.Hello{Token: agTok})
	if !containsAll(w.Conversations, closed, open) {
		t.Fatalf("welcome lists %v, want %s and %s", w.Conversations, closed, open)
	}
	back.waitState(closed, protocol.StateClosed)
	back.waitDeliver(open, 1) // the open one is replayed whole
	// A send to the closed conversation is answered by its shard after
	// the attachment (the mailbox goes first): a replay would be in
	// before the answer.
	late := back.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: closed, Text: "late"}})
	back.waitError(late, protocol.CodeConversationClosed)
	if got := back.delivers(closed); len(got) != 0 {
		t.Fatalf("closed conversation replayed to the agent: %v", got)
	}

	// With a cursor: what came after it.
	again := env.dial("agent-cursor", pbProto)
	again.hello(protocol.Hello{Token: agTok, Cursors: []protocol.Cursor{{ConversationID: closed, LastSeq: 2}}})
	again.waitState(closed, protocol.StateClosed)
	again.waitDeliver(closed, 3)
	if got := again.delivers(closed); len(got) != 1 || got[0] != 3 {
		t.Fatalf("replay after cursor 2: %v, want [3]", got)
	}
}

func containsAll(list []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, x := range list {
			found = found || x == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestRestartAgentLoad: a single node restarts with an agent (capacity 1)
// holding a conversation. The conversation is rebuilt from the stores when
// its participants come back; the dispatcher counts it in the agent's load
// again, so a new visitor waits instead of being given to a full agent,
// and the agent's transfer of the rebuilt conversation is its own. When
// the agent closes it, the waiting visitor gets the agent.
func TestRestartAgentLoad(t *testing.T) {
	st := startStores(t, t.TempDir())
	env, stop := startDurable(t, Options{}, st.hist, st.conv)
	agTok := env.token("agent-rl", token.RoleAgent)
	visTok := env.token("vis-rl", token.RoleVisitor)
	a := env.dial("agent", pbProto)
	a.hello(protocol.Hello{Token: agTok})
	a.online(1)
	v := env.dial("visitor", jsonProto)
	v.hello(protocol.Hello{Token: visTok})
	cid := v.open(protocol.Open{Text: "before the restart"}).ConversationID
	a.waitDeliver(cid, 1)
	stop()

	env2, _ := startDurable(t, Options{}, st.hist, st.conv)
	a2 := env2.dial("agent-after", pbProto)
	a2.hello(protocol.Hello{Token: agTok, Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: 1}}})
	a2.waitState(cid, protocol.StateAssigned)
	a2.online(1)
	if load, capacity, ok := env2.b.disp.agentLoad("agent-rl"); !ok || load != 1 || capacity != 1 {
		t.Fatalf("agent load after the restart: %d of %d (%v), want 1 of 1", load, capacity, ok)
	}
	v2 := env2.dial("visitor2", jsonProto)
	v2.hello(protocol.Hello{Token: env2.token("vis-rl2", token.RoleVisitor)})
	cid2 := v2.open(protocol.Open{}).ConversationID
	// The dispatcher decided when the conversation was queued, before the
	// open was answered: the agent is full, it waits.
	if n := env2.b.Stats().QueueLength; n != 1 {
		t.Fatalf("queue length %d after the new open, want 1 (the agent is full)", n)
	}
	id := a2.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid, Reason: "done"}})
	a2.waitFor("close answer", func(e *protocol.Envelope) bool { return e.ID == id && e.Kind == protocol.KindConversation })
	if c := v2.waitState(cid2, protocol.StateAssigned); c.AgentID != "agent-rl" {
		t.Fatalf("waiting visitor assigned to %q", c.AgentID)
	}
}
