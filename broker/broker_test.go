package broker

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

const (
	jsonProto = protocol.SubprotocolJSON
	pbProto   = protocol.SubprotocolProto
)

// TestConversation runs a whole conversation: open, queue, assignment,
// messages both ways, a duplicate, typing, read receipts, a transfer with
// history replay, and close; with both subprotocols and mixed.
func TestConversation(t *testing.T) {
	for _, tc := range []struct{ name, visitor, agent string }{
		{"json", jsonProto, jsonProto},
		{"proto", pbProto, pbProto},
		{"visitor-json-agent-proto", jsonProto, pbProto},
	} {
		t.Run(tc.name, func(t *testing.T) { runConversation(t, tc.visitor, tc.agent) })
	}
}

func runConversation(t *testing.T, visitorProto, agentProto string) {
	env := startEnv(t, Options{AllowAnonymous: true})

	// A visitor opens a conversation and waits in the queue.
	visitor := env.dial("visitor", visitorProto)
	vw := visitor.hello(protocol.Hello{ClientName: "widget/test"})
	if vw.Role != protocol.RoleVisitor || vw.UserID == "" || vw.SessionID == "" || vw.ResumeToken == "" {
		t.Fatalf("welcome %+v", vw)
	}
	if vw.MaxMessageBytes != DefaultMaxMessageBytes || vw.HeartbeatMillis != DefaultHeartbeatMillis {
		t.Fatalf("welcome limits %+v", vw)
	}
	conv := visitor.open(protocol.Open{Skill: "billing", Text: "hello, I need help"})
	if conv.State != protocol.StateQueued || conv.VisitorID != vw.UserID || conv.Skill != "billing" || conv.LastSeq != 1 {
		t.Fatalf("open answered %+v", conv)
	}
	cid := conv.ConversationID
	visitor.waitFor("queue position 1", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindQueue && e.Queue.ConversationID == cid && e.Queue.Position == 1
	})

	// An agent comes online and gets it, with the history so far.
	agent1 := env.dial("agent-1", agentProto)
	aw := agent1.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent, "billing")})
	if aw.Role != protocol.RoleAgent || aw.UserID != "agent-1" {
		t.Fatalf("agent welcome %+v", aw)
	}
	if p := agent1.online(2); p.AgentID != "agent-1" || p.Capacity != 2 || !slices.Equal(p.Skills, []string{"billing"}) {
		t.Fatalf("presence echo %+v", p)
	}
	ac := agent1.waitState(cid, protocol.StateAssigned)
	if ac.VisitorID != vw.UserID || ac.Skill != "billing" || ac.AgentID != "agent-1" {
		t.Fatalf("agent's assigned event %+v", ac)
	}
	if vc := visitor.waitState(cid, protocol.StateAssigned); vc.AgentID != "agent-1" {
		t.Fatalf("visitor's assigned event %+v", vc)
	}
	if d := agent1.waitDeliver(cid, 1); d.Text != "hello, I need help" || d.SenderID != vw.UserID || d.SenderRole != protocol.RoleVisitor {
		t.Fatalf("replayed first message %+v", d)
	}

	// Messages both ways, in order, acked with increasing seqs.
	for i := range 3 {
		ack := visitor.say(cid, fmt.Sprintf("v%d", i+1), fmt.Sprintf("visitor says %d", i+1))
		if ack.Seq != uint64(i+2) || ack.TimestampMilli == 0 {
			t.Fatalf("visitor ack %d: %+v", i, ack)
		}
	}
	d := agent1.waitDeliver(cid, 4)
	if d.Text != "visitor says 3" || d.ClientMsgID != "v3" || d.SenderID != vw.UserID {
		t.Fatalf("deliver to agent %+v", d)
	}
	for i := range 2 {
		if ack := agent1.say(cid, fmt.Sprintf("a%d", i+1), fmt.Sprintf("agent says %d", i+1)); ack.Seq != uint64(i+5) {
			t.Fatalf("agent ack %d: %+v", i, ack)
		}
	}
	if d := visitor.waitDeliver(cid, 6); d.Text != "agent says 2" || d.SenderID != "agent-1" || d.SenderRole != protocol.RoleAgent {
		t.Fatalf("deliver to visitor %+v", d)
	}

	// A duplicate client message id gets the original ack, nothing else.
	dup := visitor.say(cid, "v2", "visitor says 2 (retry)")
	if dup.Seq != 3 {
		t.Fatalf("duplicate acked with seq %d, want 3", dup.Seq)
	}
	visitor.say(cid, "v4", "visitor says 4") // seq 7: a barrier
	agent1.waitDeliver(cid, 7)
	if got := agent1.delivers(cid); !slices.Equal(got, []uint64{1, 2, 3, 4, 7}) {
		t.Fatalf("agent delivers %v, want [1 2 3 4 7]", got)
	}
	if got := visitor.delivers(cid); !slices.Equal(got, []uint64{5, 6}) {
		t.Fatalf("visitor delivers %v, want [5 6]", got)
	}

	// Typing and read receipts, sender filled in by the server.
	visitor.send(protocol.Envelope{Kind: protocol.KindTyping, Typing: protocol.Typing{ConversationID: cid, On: true, SenderID: "spoofed"}})
	ty := agent1.waitFor("typing", isKind(protocol.KindTyping)).Typing
	if !ty.On || ty.SenderID != vw.UserID || ty.SenderRole != protocol.RoleVisitor {
		t.Fatalf("typing %+v", ty)
	}
	agent1.send(protocol.Envelope{Kind: protocol.KindRead, Read: protocol.Read{ConversationID: cid, Seq: 7}})
	rd := visitor.waitFor("read", isKind(protocol.KindRead)).Read
	if rd.Seq != 7 || rd.SenderID != "agent-1" || rd.SenderRole != protocol.RoleAgent {
		t.Fatalf("read %+v", rd)
	}

	// Transfer to a second agent, who gets the whole history.
	agent2 := env.dial("agent-2", agentProto)
	agent2.hello(protocol.Hello{Token: env.token("agent-2", token.RoleAgent, "billing")})
	agent2.online(1)
	tid := agent1.send(protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToAgentID: "agent-2", Note: "escalating"}})
	tr := agent1.waitFor("transfer echo", func(e *protocol.Envelope) bool { return e.ID == tid }).Conversation
	if tr.State != protocol.StateTransferred || tr.AgentID != "agent-2" || tr.Reason != "escalating" {
		t.Fatalf("transfer echo %+v", tr)
	}
	if c := visitor.waitState(cid, protocol.StateTransferred); c.AgentID != "agent-2" {
		t.Fatalf("visitor's transfer event %+v", c)
	}
	if c := agent2.waitState(cid, protocol.StateTransferred); c.AgentID != "agent-2" || c.VisitorID != vw.UserID {
		t.Fatalf("new agent's transfer event %+v", c)
	}
	agent2.waitDeliver(cid, 7)
	if got := agent2.delivers(cid); !slices.Equal(got, []uint64{1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("new agent's replay %v, want 1..7", got)
	}
	visitor.say(cid, "v5", "after transfer")
	agent2.waitDeliver(cid, 8)
	// The old agent is out: its requests are refused, and the error (sent
	// by the same shard after seq 8 was fanned out) proves it got no seq 8.
	id := agent1.send(protocol.Envelope{Kind: protocol.KindTyping, Typing: protocol.Typing{ConversationID: cid, On: true}})
	agent1.waitError(id, protocol.CodeNotParticipant)
	if got := agent1.delivers(cid); slices.Contains(got, 8) {
		t.Fatalf("old agent still receives: %v", got)
	}
	if l, _, _ := env.b.disp.agentLoad("agent-1"); l != 0 {
		t.Fatalf("agent-1 load %d after transfer, want 0", l)
	}

	// Close: everybody is told, capacity is freed, sends are refused.
	closeID := agent2.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid, Reason: "resolved"}})
	if c := agent2.waitFor("close echo", func(e *protocol.Envelope) bool { return e.ID == closeID }).Conversation; c.State != protocol.StateClosed {
		t.Fatalf("close echo %+v", c)
	}
	if c := visitor.waitState(cid, protocol.StateClosed); c.Reason != "resolved" || c.LastSeq != 8 {
		t.Fatalf("visitor's close event %+v", c)
	}
	if l, _, _ := env.b.disp.agentLoad("agent-2"); l != 0 {
		t.Fatalf("agent-2 load %d after close, want 0", l)
	}
	id = visitor.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "v6", Text: "hello?"}})
	visitor.waitError(id, protocol.CodeConversationClosed)

	st := env.b.Stats()
	if st.MessagesRelayed != 7 || st.ConversationsClosed != 1 || st.QueueLength != 0 || st.AgentsOnline != 2 {
		t.Fatalf("stats %+v", st)
	}
	var buf bytes.Buffer
	env.b.Metrics().WritePrometheus(&buf)
	for _, line := range []string{
		"unigate_broker_messages_relayed_total 7",
		`unigate_broker_errors_total{code="conversation_closed"} 1`,
		`unigate_broker_errors_total{code="not_participant"} 1`,
		`unigate_broker_conversations{state="closed"} 1`,
		"unigate_broker_agents_online 2",
		"unigate_broker_queue_length 0",
		"unigate_broker_overload_drops_total 0",
	} {
		if !strings.Contains(buf.String(), line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, buf.String())
		}
	}
}

// TestErrors checks the coded refusals; none changes any state.
func TestErrors(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	visitor := env.dial("visitor", jsonProto)

	id := visitor.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: "c_x", Text: "too early"}})
	visitor.waitError(id, protocol.CodeNotHello)
	id = visitor.send(protocol.Envelope{Kind: protocol.KindOpen})
	visitor.waitError(id, protocol.CodeNotHello)

	visitor.hello(protocol.Hello{})
	cid := visitor.open(protocol.Open{}).ConversationID
	agent := env.dial("agent", pbProto)
	agent.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	agent.online(1)
	visitor.waitState(cid, protocol.StateAssigned)
	visitor.say(cid, "m1", "one")

	stranger := env.dial("stranger", pbProto)
	stranger.hello(protocol.Hello{})

	tests := []struct {
		name string
		c    *tclient
		env  protocol.Envelope
		code protocol.Code
	}{
		{"unknown conversation", visitor, protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: "c_nope", Text: "x"}}, protocol.CodeUnknownConversation},
		{"missing conversation id", visitor, protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{Text: "x"}}, protocol.CodeMissingField},
		{"empty text", visitor, protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid}}, protocol.CodeMissingField},
		{"visitor transfers", visitor, protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToSkill: "x"}}, protocol.CodeForbidden},
		{"visitor sets presence", visitor, protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusOnline}}, protocol.CodeForbidden},
		{"agent opens", agent, protocol.Envelope{Kind: protocol.KindOpen}, protocol.CodeForbidden},
		{"second open", visitor, protocol.Envelope{Kind: protocol.KindOpen}, protocol.CodeAlreadyOpen},
		{"second hello", visitor, protocol.Envelope{Kind: protocol.KindHello}, protocol.CodeBadTransition},
		{"read from the future", visitor, protocol.Envelope{Kind: protocol.KindRead, Read: protocol.Read{ConversationID: cid, Seq: 99}}, protocol.CodeSeqFromFuture},
		{"non-participant sends", stranger, protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, Text: "hi"}}, protocol.CodeNotParticipant},
		{"transfer to an unknown agent", agent, protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToAgentID: "ghost"}}, protocol.CodeNoAgent},
		{"transfer to self", agent, protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToAgentID: "agent-1"}}, protocol.CodeBadTransition},
		{"transfer nowhere", agent, protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid}}, protocol.CodeMissingField},
		{"presence without status", agent, protocol.Envelope{Kind: protocol.KindPresence}, protocol.CodeMissingField},
		{"server-only kind", visitor, protocol.Envelope{Kind: protocol.KindAck, Ack: protocol.Ack{ConversationID: cid}}, protocol.CodeUnknownKind},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := env.b.Stats()
			defer tt.c.bind(t)()
			tt.c.waitError(tt.c.send(tt.env), tt.code)
			after := env.b.Stats()
			if after.MessagesRelayed != before.MessagesRelayed || after.ConversationsAssigned != before.ConversationsAssigned ||
				after.ConversationsQueued != before.ConversationsQueued || after.ConversationsClosed != before.ConversationsClosed {
				t.Fatalf("state changed: %+v → %+v", before, after)
			}
		})
	}
	// Nothing was stored by the failed requests: the next message is seq 2.
	if ack := visitor.say(cid, "m2", "two"); ack.Seq != 2 {
		t.Fatalf("next seq %d, want 2", ack.Seq)
	}

	// Closed conversation.
	visitor.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid}})
	agent.waitState(cid, protocol.StateClosed)
	for _, e := range []protocol.Envelope{
		{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, Text: "x"}},
		{Kind: protocol.KindTyping, Typing: protocol.Typing{ConversationID: cid}},
		{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid}},
		{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToSkill: "x"}},
	} {
		c := visitor
		if e.Kind == protocol.KindTransfer {
			c = agent // still the assignee of the closed conversation
		}
		c.waitError(c.send(e), protocol.CodeConversationClosed)
	}
}

// bind reports c's failures to t (a subtest) until the returned function
// is called.
func (c *tclient) bind(t testing.TB) func() {
	old := c.t
	c.t = t
	return func() { c.t = old }
}

func TestAuthFailures(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	now := time.Now()
	expired, err := env.signer.Sign(token.Claims{Subject: "v1", Role: token.RoleVisitor, IssuedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := token.NewSigner(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := other.Sign(token.Claims{Subject: "a1", Role: token.RoleAgent, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		code  protocol.Code
	}{
		{"garbage", "not-a-token", protocol.CodeBadToken},
		{"wrong key", forged, protocol.CodeBadToken},
		{"expired", expired, protocol.CodeTokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := env.dial(tt.name, jsonProto)
			defer c.bind(t)()
			id := c.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Token: tt.token}})
			c.waitError(id, tt.code)
			c.waitClosed(websocket.ClosePolicyViolation)
		})
	}
	t.Run("bad resume token", func(t *testing.T) {
		c := env.dial("resume", pbProto)
		defer c.bind(t)()
		id := c.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: "nope"}})
		c.waitError(id, protocol.CodeBadResumeToken)
		// The connection stays usable: a fresh hello works.
		c.hello(protocol.Hello{})
	})
	t.Run("tenant too long", func(t *testing.T) {
		c := env.dial("tenant", jsonProto)
		defer c.bind(t)()
		id := c.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Tenant: strings.Repeat("t", maxTenantLen+1)}})
		c.waitError(id, protocol.CodeTooLarge)
	})
	t.Run("anonymous not allowed", func(t *testing.T) {
		env := startEnv(t, Options{})
		c := env.dial("anon", jsonProto)
		id := c.send(protocol.Envelope{Kind: protocol.KindHello})
		c.waitError(id, protocol.CodeUnauthenticated)
		c.waitClosed(websocket.ClosePolicyViolation)
	})
	if n := env.b.Stats().Sessions; n != 1 {
		t.Fatalf("%d sessions, want 1 (only the successful hello)", n)
	}
}

func TestMalformedCloses(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	c := env.dial("garbage", pbProto)
	for range maxMalformed {
		c.sendRaw([]byte{0xff, 0xff, 0xff})
	}
	c.waitClosed(websocket.ClosePolicyViolation)
	if errs := c.all(isKind(protocol.KindError)); len(errs) != maxMalformed || errs[0].Error.Code/1000 != 1 {
		t.Fatalf("%d errors (%s), want %d malformed errors", len(errs), summary(errs), maxMalformed)
	}
}

// TestQueue: 10 visitors, one agent with capacity 3. Positions are exact
// and only decrease, assignment is first come first served, nobody is
// assigned twice, the agent never holds more than 3.
func TestQueue(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	const n = 10
	visitors := make([]*tclient, n)
	convs := make([]string, n)
	byConv := map[string]int{}
	for i := range visitors {
		visitors[i] = env.dial(fmt.Sprintf("visitor-%d", i), []string{jsonProto, pbProto}[i%2])
		visitors[i].hello(protocol.Hello{})
		convs[i] = visitors[i].open(protocol.Open{}).ConversationID
		byConv[convs[i]] = i
		visitors[i].waitFor("initial position", func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindQueue && e.Queue.Position == uint32(i+1)
		})
	}
	if q := env.b.Stats().QueueLength; q != n {
		t.Fatalf("queue length %d, want %d", q, n)
	}

	agent := env.dial("agent", pbProto)
	agent.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	agent.online(3)
	assigned := func() []string {
		var ids []string
		for _, e := range agent.all(func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateAssigned
		}) {
			ids = append(ids, e.Conversation.ConversationID)
		}
		return ids
	}
	waitAssigned := func(k int) {
		t.Helper()
		if !waitFor(t, waitTimeout, func() bool { return len(assigned()) >= k }) {
			t.Fatalf("%d assignments, want %d", len(assigned()), k)
		}
	}
	// Positions of the ones still waiting after k assignments.
	checkPositions := func(k int) {
		t.Helper()
		for i := k; i < n; i++ {
			want := uint32(i - k + 1)
			visitors[i].waitFor(fmt.Sprintf("position %d", want), func(e *protocol.Envelope) bool {
				return e.Kind == protocol.KindQueue && e.Queue.Position == want
			})
		}
	}
	waitAssigned(3)
	checkPositions(3)
	for k := 3; k < n; k++ {
		// The agent closes its oldest conversation; the next in line moves up.
		agent.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: convs[k-3]}})
		waitAssigned(k + 1)
		checkPositions(k + 1)
		if l, c, _ := env.b.disp.agentLoad("agent-1"); l > c {
			t.Fatalf("agent load %d over capacity %d", l, c)
		}
	}
	// The first three are assigned at once (their events come from
	// different shards, in any order); every later one alone.
	got := assigned()
	slices.Sort(got[:3])
	want := slices.Clone(convs)
	slices.Sort(want[:3])
	if !slices.Equal(got, want) {
		t.Fatalf("assignment order %v, want %v", got, want)
	}
	for i, v := range visitors {
		var positions []uint32
		for _, e := range v.all(isKind(protocol.KindQueue)) {
			positions = append(positions, e.Queue.Position)
		}
		for j := 1; j < len(positions); j++ {
			if positions[j] >= positions[j-1] {
				t.Fatalf("visitor %d positions not decreasing: %v", i, positions)
			}
		}
		if len(positions) == 0 || positions[0] != uint32(i+1) {
			t.Fatalf("visitor %d positions %v, want to start at %d", i, positions, i+1)
		}
		// The agent saw the assignment; the visitor's event may still be
		// on its way.
		v.waitState(convs[i], protocol.StateAssigned)
		if a := v.all(func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateAssigned
		}); len(a) != 1 {
			t.Fatalf("visitor %d assigned %d times", i, len(a))
		}
	}
	if q := env.b.Stats().QueueLength; q != 0 {
		t.Fatalf("queue length %d, want 0", q)
	}
}

// TestResume: a visitor reconnects with its resume token and a cursor and
// gets the same identity and only the messages after the cursor; it
// pipelines a send right after the hello.
func TestResume(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	v1 := env.dial("visitor", jsonProto)
	w := v1.hello(protocol.Hello{})
	cid := v1.open(protocol.Open{Text: "first"}).ConversationID
	agent := env.dial("agent", pbProto)
	agent.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	agent.online(2)
	v1.waitState(cid, protocol.StateAssigned)
	v1.say(cid, "m2", "second")
	agent.say(cid, "a3", "third")
	v1.waitDeliver(cid, 3)
	_ = v1.ws.Close()
	<-v1.done
	agent.say(cid, "a4", "fourth while away")

	v2 := env.dial("visitor-again", pbProto)
	helloID := v2.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{
		ResumeToken: w.ResumeToken,
		Cursors:     []protocol.Cursor{{ConversationID: cid, LastSeq: 2}},
	}})
	// Pipelined before the welcome: must be handled after it, in order.
	sendID := v2.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "m5", Text: "fifth"}})
	we := v2.waitFor("welcome", func(e *protocol.Envelope) bool { return e.ID == helloID })
	if we.Kind != protocol.KindWelcome || !we.Welcome.Resumed || we.Welcome.UserID != w.UserID || we.Welcome.SessionID != w.SessionID ||
		!slices.Equal(we.Welcome.Conversations, []string{cid}) {
		t.Fatalf("resumed welcome %+v", we)
	}
	ack := v2.waitFor("ack", func(e *protocol.Envelope) bool { return e.ID == sendID })
	if ack.Kind != protocol.KindAck || ack.Ack.Seq != 5 {
		t.Fatalf("pipelined send answered %s %+v %+v", ack.Kind, ack.Ack, ack.Error)
	}
	v2.waitDeliver(cid, 4)
	if got := v2.delivers(cid); !slices.Equal(got, []uint64{3, 4}) {
		t.Fatalf("replay after cursor 2: %v, want [3 4]", got)
	}
	agent.waitDeliver(cid, 5)
	// The state event comes before the replay.
	first := v2.all(func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation || e.Kind == protocol.KindDeliver
	})[0]
	if first.Kind != protocol.KindConversation || first.Conversation.State != protocol.StateAssigned {
		t.Fatalf("first event after resume: %s", summary([]*protocol.Envelope{first}))
	}
}

// TestTwoConsoles: an agent with two connections gets every delivery on
// both; its own message is acked on one and delivered to the other.
func TestTwoConsoles(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	visitor := env.dial("visitor", jsonProto)
	visitor.hello(protocol.Hello{})
	cid := visitor.open(protocol.Open{}).ConversationID
	tok := env.token("agent-1", token.RoleAgent)
	a1, a2 := env.dial("console-1", pbProto), env.dial("console-2", jsonProto)
	a1.hello(protocol.Hello{Token: tok})
	a2.hello(protocol.Hello{Token: tok})
	a1.online(1)
	a1.waitState(cid, protocol.StateAssigned)
	a2.waitState(cid, protocol.StateAssigned)
	visitor.say(cid, "v1", "hi")
	a1.waitDeliver(cid, 1)
	a2.waitDeliver(cid, 1)
	a1.say(cid, "a1", "hello from console 1")
	a2.waitDeliver(cid, 2)
	visitor.waitDeliver(cid, 2)
	if got := a1.delivers(cid); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("console 1 delivers %v, want only [1] (its own message is acked)", got)
	}
}

// TestTransferToSkill: a transfer to a skill puts the conversation back in
// the queue ahead of new ones; the next agent of that skill gets it with
// its history.
func TestTransferToSkill(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	early := env.dial("visitor", jsonProto)
	early.hello(protocol.Hello{})
	cid := early.open(protocol.Open{Text: "help"}).ConversationID
	a1 := env.dial("agent-1", pbProto)
	a1.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a1.online(1)
	a1.waitState(cid, protocol.StateAssigned)

	late := env.dial("late visitor", jsonProto)
	late.hello(protocol.Hello{})
	lateConv := late.open(protocol.Open{Skill: "vip"}).ConversationID

	a1.send(protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToSkill: "vip"}})
	if c := early.waitState(cid, protocol.StateTransferred); c.AgentID != "" || c.Skill != "vip" {
		t.Fatalf("transfer to skill event %+v", c)
	}
	early.waitFor("position 1", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindQueue && e.Queue.ConversationID == cid && e.Queue.Position == 1
	})
	late.waitFor("position 2", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindQueue && e.Queue.Position == 2
	})
	a2 := env.dial("agent-2", pbProto)
	a2.hello(protocol.Hello{Token: env.token("agent-2", token.RoleAgent, "vip")})
	a2.online(1)
	if c := a2.waitState(cid, protocol.StateAssigned); c.AgentID != "agent-2" {
		t.Fatalf("reassigned %+v", c)
	}
	a2.waitDeliver(cid, 1)
	if got := a2.all(func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == lateConv
	}); len(got) != 0 {
		t.Fatalf("the newer conversation was served first")
	}
}

// TestDeparture: after ResumeTTL a departed visitor's conversation is
// closed; an agent that left goes offline after its grace period and its
// conversations are queued again after ResumeTTL (a conversation_queued
// event for the hook, reason agent_left, from that agent).
func TestDeparture(t *testing.T) {
	h := &recHook{}
	env := startEnv(t, Options{AllowAnonymous: true, ResumeTTL: 200 * time.Millisecond, OfflineGrace: 50 * time.Millisecond, Backends: &Backends{Hook: h}})
	v := env.dial("visitor", jsonProto)
	v.hello(protocol.Hello{})
	cid := v.open(protocol.Open{}).ConversationID
	a := env.dial("agent", pbProto)
	a.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a.online(1)
	v.waitState(cid, protocol.StateAssigned)

	_ = a.ws.Close()
	if !waitFor(t, waitTimeout, func() bool { return env.b.Stats().AgentsOnline == 0 }) {
		t.Fatal("agent still online after its grace period")
	}
	v.waitFor("queued again", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateQueued && e.Conversation.Reason == reasonAgentLeft
	})
	requeued := func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, ev := range h.events {
			if ev.Type == backends.EventConversationQueued && ev.ConversationID == cid && ev.FromAgentID == "agent-1" && ev.Attributes["reason"] == reasonAgentLeft {
				return true
			}
		}
		return false
	}
	if !waitFor(t, waitTimeout, requeued) {
		t.Fatalf("hook events %v: no conversation_queued (agent_left) from agent-1", h.types())
	}
	_ = v.ws.Close()
	if !waitFor(t, waitTimeout, func() bool {
		st := env.b.Stats()
		return st.ConversationsQueued == 0 && st.ConversationsClosed == 0 && st.Sessions == 0 && st.QueueLength == 0
	}) {
		t.Fatalf("departed visitor's conversation not closed and forgotten: %+v", env.b.Stats())
	}
}

// TestQueueTwoAgents: 50 visitors wait for 2 agents of capacity 3. The
// first 6 are assigned at once; then each close frees one place and the
// longest waiting visitor takes it. Positions are exact and strictly
// decreasing, assignment is FIFO, nobody is skipped or assigned twice, and
// no agent goes over its capacity.
func TestQueueTwoAgents(t *testing.T) {
	env := startEnv(t, Options{AllowAnonymous: true})
	const n, agents, capacity = 50, 2, 3
	const first = agents * capacity
	visitors := make([]*tclient, n)
	convs := make([]string, n)
	for i := range visitors {
		visitors[i] = env.dial(fmt.Sprintf("visitor-%d", i), []string{jsonProto, pbProto}[i%2])
		visitors[i].hello(protocol.Hello{})
		convs[i] = visitors[i].open(protocol.Open{}).ConversationID
		visitors[i].waitFor("initial position", func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindQueue && e.Queue.Position == uint32(i+1)
		})
	}
	as := make([]*tclient, agents)
	for a := range as {
		id := fmt.Sprintf("agent-%d", a)
		as[a] = env.dial(id, pbProto)
		as[a].hello(protocol.Hello{Token: env.token(id, token.RoleAgent)})
		as[a].online(capacity)
	}
	// assignedSet counts the ASSIGNED events the agents saw per conversation.
	assignedSet := func() map[string]int {
		seen := map[string]int{}
		for _, a := range as {
			for _, e := range a.all(func(e *protocol.Envelope) bool {
				return e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateAssigned
			}) {
				seen[e.Conversation.ConversationID]++
			}
		}
		return seen
	}
	waitAssigned := func(k int) {
		t.Helper()
		if !waitFor(t, waitTimeout, func() bool { return len(assignedSet()) >= k }) {
			t.Fatalf("%d assignments, want %d", len(assignedSet()), k)
		}
	}
	checkWaiting := func(k int) {
		t.Helper()
		got := assignedSet()
		for i := range n {
			_, ok := got[convs[i]]
			if ok != (i < k) {
				t.Fatalf("after %d assignments visitor %d assigned=%v: not FIFO", k, i, ok)
			}
			if got[convs[i]] > 1 {
				t.Fatalf("conversation of visitor %d assigned %d times", i, got[convs[i]])
			}
		}
		for i := k; i < n; i++ {
			want := uint32(i - k + 1)
			visitors[i].waitFor(fmt.Sprintf("position %d", want), func(e *protocol.Envelope) bool {
				return e.Kind == protocol.KindQueue && e.Queue.Position == want
			})
		}
	}
	waitAssigned(first)
	checkWaiting(first)
	for k := first; k < n; k++ {
		// The longest-assigned visitor leaves; the head of the queue moves in.
		visitors[k-first].send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: convs[k-first]}})
		waitAssigned(k + 1)
		checkWaiting(k + 1)
		for a := range as {
			if l, c, _ := env.b.disp.agentLoad(fmt.Sprintf("agent-%d", a)); l > c {
				t.Fatalf("agent-%d load %d over capacity %d", a, l, c)
			}
		}
	}
	for i, v := range visitors {
		var positions, etas []uint32
		for _, e := range v.all(isKind(protocol.KindQueue)) {
			positions = append(positions, e.Queue.Position)
			etas = append(etas, e.Queue.EtaSeconds)
		}
		if len(positions) == 0 || positions[0] != uint32(i+1) {
			t.Fatalf("visitor %d positions %v, want to start at %d", i, positions, i+1)
		}
		if etas[0] != 0 {
			t.Fatalf("visitor %d: first estimate %d s before any conversation closed, want 0 (unknown)", i, etas[0])
		}
		for j := 1; j < len(positions); j++ {
			// A position is only repeated to carry a new wait estimate.
			if positions[j] > positions[j-1] || positions[j] == positions[j-1] && etas[j] == etas[j-1] {
				t.Fatalf("visitor %d positions not strictly decreasing: %v (estimates %v)", i, positions, etas)
			}
		}
		// Once conversations were closed and others handled, the estimate
		// is known: every visitor still waiting after the first close got
		// one (at least 1 s).
		if i > first && etas[len(etas)-1] == 0 {
			t.Fatalf("visitor %d: last estimate unknown after %d closes (positions %v, estimates %v)", i, i-first, positions, etas)
		}
	}
	if q := env.b.Stats().QueueLength; q != 0 {
		t.Fatalf("queue length %d, want 0", q)
	}
}
