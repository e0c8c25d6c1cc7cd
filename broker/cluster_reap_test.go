package broker

import (
	"context"
	"testing"
	"time"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// crash stops cn like kill -9 would, as the others see it: its NATS server
// goes first (routes drop, no heartbeat, no record deleted), then its
// WebSocket server and broker.
func (cn *clusterNode) crash(t *testing.T) {
	t.Helper()
	cn.node.Server().Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = cn.env.srv.Stop(ctx)
	// Its shards may be waiting for NATS calls to time out: let them.
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		cn.env.b.Close()
	}()
	t.Cleanup(func() { <-closed })
}

// TestClusterDeadNodeUsers: three nodes (R3), node C crashes. Its visitor
// v1, whose agent is on A, never comes back: ResumeTTL later a surviving
// node closes the conversation (visitor_left, seen by the agent on A).
// Its agent a2, whose visitor v2 is on A, never comes back either: the
// conversation is queued again (agent_left, seen by v2) and given to the
// agent on A. Its visitor v3 resumes on B in time: its conversation stays
// assigned and its seen record is left alone. Seen records are written by
// the visitors' opens and the agents' hellos only: an idle visitor on C
// never has one (TestClusterSeenRecords).
func TestClusterDeadNodeUsers(t *testing.T) {
	const resumeTTL = 4 * time.Second
	nodes := startClusterR(t, 3, 3, Options{ResumeTTL: resumeTTL, OfflineGrace: time.Second})
	A, B, C := nodes[0].env, nodes[1].env, nodes[2].env
	ctx := context.Background()

	a0 := A.dial("a0@A", pbProto)
	a0.hello(protocol.Hello{Token: A.token("a0", token.RoleAgent)})
	a0.online(3)
	v1 := C.dial("v1@C", jsonProto)
	v1.hello(protocol.Hello{Token: C.token("v1", token.RoleVisitor)})
	conv1 := v1.open(protocol.Open{Text: "from C"}).ConversationID
	a0.waitState(conv1, protocol.StateAssigned)
	// An idle visitor on C: nothing to depart, no seen record.
	idle := C.dial("idle@C", jsonProto)
	idle.hello(protocol.Hello{Token: C.token("v-idle", token.RoleVisitor)})
	v3 := C.dial("v3@C", jsonProto)
	w3 := v3.hello(protocol.Hello{Token: C.token("v3", token.RoleVisitor)})
	conv3 := v3.open(protocol.Open{}).ConversationID
	a0.waitState(conv3, protocol.StateAssigned)
	v3.waitState(conv3, protocol.StateAssigned)

	// a0 takes no more; a2 on C takes v2's conversation from A.
	id := a0.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusAway}})
	a0.waitFor("away echo", func(e *protocol.Envelope) bool { return e.ID == id && e.Kind == protocol.KindPresence })
	a2 := C.dial("a2@C", pbProto)
	a2.hello(protocol.Hello{Token: C.token("a2", token.RoleAgent)})
	a2.online(3)
	v2 := A.dial("v2@A", jsonProto)
	v2.hello(protocol.Hello{Token: A.token("v2", token.RoleVisitor)})
	conv2 := v2.open(protocol.Open{Text: "from A"}).ConversationID
	if c := v2.waitState(conv2, protocol.StateAssigned); c.AgentID != "a2" {
		t.Fatalf("conversation 2 assigned to %q", c.AgentID)
	}
	a2.waitState(conv2, protocol.StateAssigned)

	crashed := time.Now()
	nodes[2].crash(t)
	t.Logf("crash took %v", time.Since(crashed).Round(time.Millisecond))
	// Right after the crash nothing is departed yet (ResumeTTL runs
	// from when the node is seen dead).
	for _, cv := range []string{conv1, conv2, conv3} {
		if m, _, err := nodes[0].conv.Get(ctx, cv); err == nil && m.State == protocol.StateClosed {
			t.Fatalf("%s closed at once: %+v", cv, m)
		}
	}

	// v3 comes back on B with its resume token.
	v3b := B.dial("v3@B", jsonProto)
	w := v3b.hello(protocol.Hello{Token: C.token("v3", token.RoleVisitor), ResumeToken: w3.ResumeToken, Cursors: []protocol.Cursor{{ConversationID: conv3, LastSeq: 0}}})
	if !w.Resumed {
		t.Fatal("v3 not resumed on B")
	}
	v3b.waitState(conv3, protocol.StateAssigned)

	// v1 is departed: the agent on A sees its conversation closed.
	closed := a0.waitForWithin(2*time.Minute, "visitor_left", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == conv1 && e.Conversation.State == protocol.StateClosed
	})
	if closed.Conversation.Reason != reasonVisitorLeft {
		t.Fatalf("conversation 1 closed with reason %q", closed.Conversation.Reason)
	}
	t.Logf("v1 departed %v after the crash (ResumeTTL %v, node record TTL 3s)", time.Since(crashed).Round(100*time.Millisecond), resumeTTL)
	// a2 is departed: v2 sees its conversation queued again, then a0
	// (back online) gets it.
	v2.waitForWithin(time.Minute, "agent_left", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == conv2 &&
			e.Conversation.State == protocol.StateQueued && e.Conversation.Reason == reasonAgentLeft
	})
	a0.online(3)
	if c := v2.waitStateWithin(time.Minute, conv2, protocol.StateAssigned, "a0"); c.AgentID != "a0" {
		t.Fatalf("conversation 2 reassigned to %q", c.AgentID)
	}

	// v3 came back in time: its conversation is untouched, its seen
	// record names B; v1's was deleted by the reaper.
	if m, _, err := nodes[0].conv.Get(ctx, conv3); err != nil || m.State != protocol.StateAssigned {
		t.Fatalf("conversation 3 after the crash: %+v %v", m, err)
	}
	if s, _, err := nodes[0].cl.getSeen(ctx, "v3"); err != nil || s == nil || s.Node != "n1" {
		t.Fatalf("v3's seen record %+v %v, want node n1", s, err)
	}
	if s, _, err := nodes[0].cl.getSeen(ctx, "v1"); err != nil || s != nil {
		t.Fatalf("v1's seen record %+v %v, want deleted", s, err)
	}
	// v1's record came from its open (its hello wrote none); the idle
	// visitor never had one.
	if s, _, err := nodes[0].cl.getSeen(ctx, "v-idle"); err != nil || s != nil {
		t.Fatalf("the idle visitor's seen record %+v %v, want none", s, err)
	}
	for _, c := range []*tclient{v3b} {
		if n := len(c.all(func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateClosed
		})); n != 0 {
			t.Fatalf("%s saw a close", c.name)
		}
	}
}

// waitForWithin is waitFor with its own (generous) bound, for what waits
// on cluster timers (node records expiring, ResumeTTL).
func (c *tclient) waitForWithin(d time.Duration, what string, m func(*protocol.Envelope) bool) *protocol.Envelope {
	c.t.Helper()
	var found *protocol.Envelope
	if !waitFor(c.t, d, func() bool {
		if all := c.all(m); len(all) > 0 {
			found = all[0]
			return true
		}
		return false
	}) {
		c.t.Fatalf("%s: no %s within %v; got %s", c.name, what, d, summary(c.all(func(*protocol.Envelope) bool { return true })))
	}
	return found
}

// waitStateWithin waits for a Conversation event of conv in state st
// naming agent.
func (c *tclient) waitStateWithin(d time.Duration, conv string, st protocol.State, agent string) *protocol.Conversation {
	c.t.Helper()
	return &c.waitForWithin(d, "conversation "+st.String()+" to "+agent, func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == conv && e.Conversation.State == st && e.Conversation.AgentID == agent
	}).Conversation
}

// TestClusterSeenRecords: a user's seen record (the node that decides its
// departure) is written only for users that can have something to close
// or requeue: an agent at its hello, a visitor when it opens a
// conversation, or at a hello while it takes part in one that is not
// closed (its session's, or any the node's watch knows). A visitor's
// hello without one writes nothing: those records were most of the
// memory of an idle clustered connection (docs/benchmarks.md, "What the
// gateway did under load", item 8). A node's records are published in
// order on its one connection, so once a later record of that node is
// visible, an earlier one that is not was never written.
func TestClusterSeenRecords(t *testing.T) {
	nodes := startCluster(t, 2, Options{AllowAnonymous: true})
	A, B := nodes[0].env, nodes[1].env
	ctx := context.Background()
	seenAt := func(id string) string {
		t.Helper()
		s, _, err := nodes[0].cl.getSeen(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if s == nil {
			return ""
		}
		return s.Node
	}
	waitSeen := func(id, node string) {
		t.Helper()
		if !waitFor(t, 10*time.Second, func() bool { return seenAt(id) == node }) {
			t.Fatalf("%s's seen record names %q, want %q", id, seenAt(id), node)
		}
	}
	agentHello := func(env *testEnv, id, node string) {
		t.Helper()
		a := env.dial(id, pbProto)
		a.hello(protocol.Hello{Token: env.token(id, token.RoleAgent)})
		waitSeen(id, node)
	}

	// Idle visitors on A, anonymous and identified: no record.
	anon := A.dial("anonymous@A", jsonProto)
	anonID := anon.hello(protocol.Hello{}).UserID
	idle := A.dial("idle@A", jsonProto)
	idle.hello(protocol.Hello{Token: A.token("vis-idle", token.RoleVisitor)})
	agentHello(A, "agent-seen-1", "n0")
	for _, id := range []string{anonID, "vis-idle"} {
		if n := seenAt(id); n != "" {
			t.Fatalf("visitor %s without a conversation has a seen record (%s)", id, n)
		}
	}

	// A visitor's open writes it.
	v := A.dial("visitor@A", jsonProto)
	w := v.hello(protocol.Hello{Token: A.token("vis-seen", token.RoleVisitor)})
	if n := seenAt("vis-seen"); n != "" {
		t.Fatalf("seen record at the hello of a visitor without a conversation: %s", n)
	}
	cid := v.open(protocol.Open{}).ConversationID
	waitSeen("vis-seen", "n0")
	// A new session on B (no resume token, no cursor) of that visitor: B
	// never held the conversation, but its watch knows it.
	if !waitFor(t, 10*time.Second, func() bool { return nodes[1].cl.open.hasVisitor("vis-seen") }) {
		t.Fatal("B's watch does not index the visitor's conversation")
	}
	vb := B.dial("visitor@B", jsonProto)
	vb.hello(protocol.Hello{Token: B.token("vis-seen", token.RoleVisitor)})
	waitSeen("vis-seen", "n1")
	// A resume on A moves it back.
	va := A.dial("visitor-again@A", jsonProto)
	va.hello(protocol.Hello{Token: A.token("vis-seen", token.RoleVisitor), ResumeToken: w.ResumeToken, Cursors: []protocol.Cursor{{ConversationID: cid}}})
	va.waitState(cid, protocol.StateQueued)
	waitSeen("vis-seen", "n0")

	// Closed: its next hello (on B) leaves the record alone.
	va.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid}})
	va.waitState(cid, protocol.StateClosed)
	if !waitFor(t, 10*time.Second, func() bool { return !nodes[1].cl.open.hasVisitor("vis-seen") }) {
		t.Fatal("B's watch still indexes the closed conversation")
	}
	v3 := B.dial("visitor-later@B", jsonProto)
	v3.hello(protocol.Hello{Token: B.token("vis-seen", token.RoleVisitor)})
	agentHello(B, "agent-seen-2", "n1")
	if n := seenAt("vis-seen"); n != "n0" {
		t.Fatalf("a hello without an open conversation moved the record to %q", n)
	}
}

// TestClusterSeenRecordsExpire: a seen record expires (Cluster.seenTTL,
// from ResumeTTL) once its user has gone for good, so the bucket does not
// keep one for every user that ever came; a connected user's record is
// written again by its node's heartbeat and outlives the lifetime of its
// first write.
func TestClusterSeenRecordsExpire(t *testing.T) {
	const resumeTTL = time.Second
	nodes := startCluster(t, 2, Options{AllowAnonymous: true, ResumeTTL: resumeTTL})
	A, B := nodes[0].env, nodes[1].env
	ttl := nodes[0].cl.seenTTL
	if ttl != seenTTLFor(resumeTTL, nodes[0].cl.ttl) || ttl <= 2*resumeTTL {
		t.Fatalf("seen TTL %v for ResumeTTL %v", ttl, resumeTTL)
	}
	ctx := context.Background()
	seen := func(id string) (*seenRecord, uint64) {
		t.Helper()
		s, rev, err := nodes[0].cl.getSeen(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return s, rev
	}
	live := B.dial("live@B", jsonProto)
	live.hello(protocol.Hello{Token: B.token("vis-live", token.RoleVisitor)})
	live.open(protocol.Open{})
	var first uint64
	if !waitFor(t, 10*time.Second, func() bool { _, first = seen("vis-live"); return first != 0 }) {
		t.Fatal("no seen record for the live visitor")
	}
	written := time.Now()
	gone := A.dial("gone@A", jsonProto)
	gone.hello(protocol.Hello{Token: A.token("vis-gone", token.RoleVisitor)})
	gone.open(protocol.Open{})
	if !waitFor(t, 10*time.Second, func() bool { s, _ := seen("vis-gone"); return s != nil }) {
		t.Fatal("no seen record for the visitor that leaves")
	}
	_ = gone.ws.Close()

	if !waitFor(t, ttl+20*time.Second, func() bool { s, _ := seen("vis-gone"); return s == nil }) {
		t.Fatalf("the record of a visitor gone for good is still there %v after its last write", ttl+20*time.Second)
	}
	if !waitFor(t, ttl, func() bool { return time.Since(written) > ttl }) {
		t.Fatal("clock")
	}
	s, rev := seen("vis-live")
	if s == nil || s.Node != "n1" || rev <= first {
		t.Fatalf("the connected visitor's record after %v: %+v at revision %d (first %d), want n1's, written again", time.Since(written), s, rev, first)
	}
}

// TestClusterPasswordSession: a password session signed in on node A
// resumes on node B with its resume token alone (the cluster's record of
// it), as the same agent with the hook's skills, without asking the hook
// again. Once it has been gone for ResumeTTL the record has expired, and
// the same token alone is refused on either node.
func TestClusterPasswordSession(t *testing.T) {
	const resumeTTL = 2 * time.Second
	hook := &countHook{release: make(chan struct{})}
	nodes := startCluster(t, 2, Options{ResumeTTL: resumeTTL, Backends: &Backends{Hook: hook}})
	A, B := nodes[0].env, nodes[1].env
	alice := A.dial("alice@A", jsonProto)
	w := alice.hello(protocol.Hello{Username: "alice", Password: "secret"})
	_ = alice.ws.Close()
	detached(t, A, w.SessionID, time.Now)
	ctx := context.Background()
	if !waitFor(t, 10*time.Second, func() bool {
		r, err := nodes[1].cl.getSession(ctx, w.SessionID)
		return err == nil && r != nil
	}) {
		t.Fatal("no cluster record of the password session")
	}

	back := B.dial("alice@B", jsonProto)
	w2 := back.hello(protocol.Hello{ResumeToken: w.ResumeToken})
	if !w2.Resumed || w2.SessionID != w.SessionID || w2.UserID != "alice" || w2.Role != protocol.RoleAgent {
		t.Fatalf("on B: %+v, want agent alice's session %s resumed", w2, w.SessionID)
	}
	if p := back.online(2); len(p.Skills) != 1 || p.Skills[0] != "billing" {
		t.Fatalf("skills on B %v, want the hook's [billing]", p.Skills)
	}
	if n := hook.calls.Load(); n != 1 {
		t.Fatalf("the hook was asked %d times, want once (the sign-in on A)", n)
	}

	_ = back.ws.Close()
	detached(t, B, w.SessionID, time.Now)
	if !waitFor(t, resumeTTL+15*time.Second, func() bool {
		r, err := nodes[0].cl.getSession(ctx, w.SessionID)
		return err == nil && r == nil
	}) {
		t.Fatal("the record of the password session outlived ResumeTTL")
	}
	for _, env := range []*testEnv{A, B} {
		late := env.dial("alice-late", jsonProto)
		late.waitError(late.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: w2.ResumeToken}}), protocol.CodeUnauthenticated)
	}
}
