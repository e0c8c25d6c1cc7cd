package broker

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// clusterNode is one node of an in-process cluster: its own embedded NATS
// server (routed to the others), stores, broker and netpoll server.
type clusterNode struct {
	name string
	node *natsnode.Node
	hist *histstore.Store
	// history, when a test's prepare sets it (a wrapper of hist), is the
	// broker's History instead of hist.
	history History
	conv    *KVConvStore
	cl      *Cluster
	env     *testEnv
}

// freeRoutePorts reserves n loopback ports for route listeners (every node
// of a JetStream cluster needs its routes up front).
func freeRoutePorts(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// retry calls fn until it succeeds or timeout passes (JetStream needs a
// meta leader after the routes form before streams can be created).
func retry(t testing.TB, timeout time.Duration, fn func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startCluster starts n routed nodes with brokers in cluster mode and
// waits until each one's conversation watch is live (streams and buckets
// R1).
func startCluster(t *testing.T, n int, o Options) []*clusterNode {
	t.Helper()
	return startClusterR(t, n, 1, o)
}

// startClusterR is startCluster with the history stream and every bucket
// replicated replicas times (3: JetStream RAFT on three servers, as in
// production).
func startClusterR(t *testing.T, n, replicas int, o Options) []*clusterNode {
	t.Helper()
	return startClusterHook(t, n, replicas, o, nil)
}

// startClusterHook is startClusterR with prepare run on each node after
// its stores are open and before its broker starts.
func startClusterHook(t *testing.T, n, replicas int, o Options, prepare func(i int, cn *clusterNode)) []*clusterNode {
	t.Helper()
	routes := freeRoutePorts(t, n)
	base := t.TempDir()
	nodes := make([]*clusterNode, n)
	errc := make(chan error, n)
	for i := range nodes {
		go func() {
			nn, err := natsnode.Start(natsnode.Options{
				StoreDir:      filepath.Join(base, fmt.Sprint(i)),
				ServerName:    fmt.Sprintf("n%d", i),
				ClusterName:   "test",
				ClusterListen: routes[i],
				Routes:        routes,
			})
			nodes[i] = &clusterNode{name: fmt.Sprintf("n%d", i), node: nn}
			errc <- err
		}()
	}
	for range nodes {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, cn := range nodes {
		t.Cleanup(cn.node.Shutdown)
	}
	for _, cn := range nodes {
		js := cn.node.JetStream()
		retry(t, 30*time.Second, func(ctx context.Context) (err error) {
			if cn.hist == nil {
				if cn.hist, err = histstore.Open(ctx, js, histstore.Options{Replicas: replicas}); err != nil {
					return err
				}
				t.Cleanup(func() { _ = cn.hist.Close() })
			}
			if cn.conv == nil {
				if cn.conv, err = OpenKVConvStore(ctx, js, KVConvOptions{Replicas: replicas}); err != nil {
					return err
				}
			}
			cn.cl, err = OpenCluster(ctx, cn.node.Conn(), js, ClusterOptions{Node: cn.name, Conversations: cn.conv, PresenceTTL: 3 * time.Second, Replicas: replicas})
			return err
		})
	}
	for i, cn := range nodes {
		if prepare != nil {
			prepare(i, cn)
		}
		e := &testEnv{t: t, signer: testSigner(t)}
		oo := o
		oo.Signer, oo.History, oo.Conversations, oo.Cluster = e.signer, cn.hist, cn.conv, cn.cl
		if cn.history != nil {
			oo.History = cn.history
		}
		b, err := New(oo)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := netpoll.New(b, netpoll.WithAddr("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Stop(ctx)
			b.Close()
		})
		e.b, e.srv = b, srv
		cn.env = e
	}
	for _, cn := range nodes {
		if !waitFor(t, 20*time.Second, cn.env.b.ClusterReady) {
			t.Fatalf("%s: conversation watch not ready", cn.name)
		}
	}
	return nodes
}

// seqsOf returns the seqs c saw for conv, acks and delivers, in arrival
// order.
func seqsOf(c *tclient, conv string) []uint64 {
	var out []uint64
	for _, e := range c.all(func(e *protocol.Envelope) bool {
		return (e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == conv) ||
			(e.Kind == protocol.KindAck && e.Ack.ConversationID == conv)
	}) {
		if e.Kind == protocol.KindAck {
			out = append(out, e.Ack.Seq)
		} else {
			out = append(out, e.Deliver.Seq)
		}
	}
	return out
}

// checkConsecutive fails unless seqs is from, from+1, ..., to: every
// message once, in order.
func checkConsecutive(t *testing.T, who string, seqs []uint64, from, to uint64) {
	t.Helper()
	if uint64(len(seqs)) != to-from+1 {
		t.Fatalf("%s saw %d messages %v, want %d..%d", who, len(seqs), seqs, from, to)
	}
	for i, s := range seqs {
		if s != from+uint64(i) {
			t.Fatalf("%s saw %v: position %d is %d, want %d..%d once, in order", who, seqs, i, s, from, to)
		}
	}
}

// TestClusterVisitorAndAgentOnTwoNodes: the visitor is on node A, the
// agent on node B, each node with its own embedded NATS server routed to
// the other. Messages go both ways (also concurrently: both nodes append
// to one conversation), every client sees each message once, in order;
// a transfer to an agent on A and the close are seen on both nodes.
func TestClusterVisitorAndAgentOnTwoNodes(t *testing.T) {
	nodes := startCluster(t, 2, Options{})
	A, B := nodes[0].env, nodes[1].env

	ag := B.dial("agent@B", pbProto)
	ag.hello(protocol.Hello{Token: B.token("agent-b", token.RoleAgent)})
	ag.online(2)

	v := A.dial("visitor@A", jsonProto)
	v.hello(protocol.Hello{Token: A.token("vis-1", token.RoleVisitor)})
	cid := v.open(protocol.Open{Text: "hello from A"}).ConversationID
	v.waitState(cid, protocol.StateAssigned)
	ag.waitState(cid, protocol.StateAssigned)
	ag.waitDeliver(cid, 1) // the opening text, stored by A, replayed on B

	// Ping-pong.
	for i := range 5 {
		ack := v.say(cid, fmt.Sprintf("v%d", i), "from the visitor")
		ag.waitDeliver(cid, ack.Seq)
		ack = ag.say(cid, fmt.Sprintf("a%d", i), "from the agent")
		v.waitDeliver(cid, ack.Seq)
	}
	// Both sides at once: the two nodes race for each next seq; the loser
	// of an append resynchronises and retries.
	const burst = 30
	var wg sync.WaitGroup
	for _, c := range []*tclient{v, ag} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range burst {
				c.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: fmt.Sprintf("%s-burst-%d", c.name, i), Text: "burst"}})
			}
		}()
	}
	wg.Wait()
	last := uint64(1 + 10 + 2*burst)
	for _, c := range []*tclient{v, ag} {
		if !waitFor(t, 20*time.Second, func() bool { return len(c.all(isKind(protocol.KindAck))) == 5+burst }) {
			t.Fatalf("%s: %d acks, errors %s", c.name, len(c.all(isKind(protocol.KindAck))), summary(c.all(isKind(protocol.KindError))))
		}
		if !waitFor(t, 20*time.Second, func() bool { return slices.Contains(seqsOf(c, cid), last) }) {
			t.Fatalf("%s: never saw seq %d: %v", c.name, last, seqsOf(c, cid))
		}
	}
	checkConsecutive(t, "visitor", seqsOf(v, cid), 2, last) // seq 1, its own opening text, is not echoed
	checkConsecutive(t, "agent", seqsOf(ag, cid), 1, last)
	msgs, lastSeq, err := A.b.History(context.Background(), token.DefaultTenant, cid, 0, MaxListLimit)
	if err != nil || lastSeq != last || len(msgs) != int(last) {
		t.Fatalf("history on A: %d messages, last %d, err %v; want %d", len(msgs), lastSeq, err, last)
	}

	// Transfer from the agent on B to an agent on A.
	ag2 := A.dial("agent@A", pbProto)
	ag2.hello(protocol.Hello{Token: A.token("agent-a", token.RoleAgent)})
	ag2.online(1)
	tid := ag.send(protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToAgentID: "agent-a", Note: "over to A"}})
	ag.waitFor("transfer answer", func(e *protocol.Envelope) bool {
		return e.ID == tid && e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateTransferred
	})
	if c := v.waitState(cid, protocol.StateTransferred); c.AgentID != "agent-a" {
		t.Fatalf("visitor sees transfer to %q", c.AgentID)
	}
	ag2.waitState(cid, protocol.StateTransferred)
	ag2.waitDeliver(cid, last) // the whole history
	checkConsecutive(t, "new agent", seqsOf(ag2, cid), 1, last)
	ack := ag2.say(cid, "a2-1", "agent on A here")
	v.waitDeliver(cid, ack.Seq)
	if n := len(ag.all(isDeliver(cid))); slices.Contains(seqsOf(ag, cid), ack.Seq) {
		t.Fatalf("the old agent still gets messages (%d delivers)", n)
	}

	// Close by the visitor: seen by the agent on A, and the record is closed.
	cl := v.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid, Reason: "thanks"}})
	v.waitFor("close answer", func(e *protocol.Envelope) bool { return e.ID == cl && e.Kind == protocol.KindConversation })
	if c := ag2.waitState(cid, protocol.StateClosed); c.Reason != "thanks" {
		t.Fatalf("close reason %q", c.Reason)
	}
	m, _, err := nodes[1].conv.Get(context.Background(), cid)
	if err != nil || m.State != protocol.StateClosed || m.AgentID != "agent-a" {
		t.Fatalf("record after close: %+v %v", m, err)
	}
	id := ag2.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, Text: "late"}})
	ag2.waitError(id, protocol.CodeConversationClosed)
	t.Logf("notices applied: A %d, B %d; record conflicts: A %d, B %d; gaps: A %d, B %d",
		A.b.m.clusterNotices.Get(), B.b.m.clusterNotices.Get(),
		A.b.m.clusterConflicts.Get(), B.b.m.clusterConflicts.Get(),
		A.b.m.clusterGaps.Get(), B.b.m.clusterGaps.Get())
}

// TestClusterAssignRace: a queued conversation, then two agents on two
// nodes going online at the same moment: both nodes' dispatchers try to
// assign it, exactly one wins (the record is written once), the loser's
// slot is given back. Then an agent with two consoles on two nodes and
// capacity 2 meets 6 conversations opened on both nodes at once: it never
// holds more than 2, nothing is assigned twice.
func TestClusterAssignRace(t *testing.T) {
	nodes := startCluster(t, 2, Options{})
	A, B := nodes[0].env, nodes[1].env
	ctx := context.Background()

	for round := range 4 {
		v := A.dial(fmt.Sprintf("visitor-%d", round), jsonProto)
		v.hello(protocol.Hello{Token: A.token(fmt.Sprintf("race-v%d", round), token.RoleVisitor)})
		cid := v.open(protocol.Open{}).ConversationID
		// Both dispatchers must know the conversation before the agents come.
		if !waitFor(t, 10*time.Second, func() bool {
			return A.b.Stats().QueueLength >= 1 && B.b.Stats().QueueLength >= 1
		}) {
			t.Fatal("the conversation is not queued on both nodes")
		}
		ids := [2]string{fmt.Sprintf("race-a%d", round), fmt.Sprintf("race-b%d", round)}
		agents := [2]*tclient{A.dial("agent-A", pbProto), B.dial("agent-B", pbProto)}
		for i, env := range []*testEnv{A, B} {
			agents[i].hello(protocol.Hello{Token: env.token(ids[i], token.RoleAgent)})
		}
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 1}})
			}()
		}
		wg.Wait()
		won := v.waitState(cid, protocol.StateAssigned).AgentID
		winner := slices.Index(ids[:], won)
		if winner < 0 {
			t.Fatalf("assigned to %q", won)
		}
		agents[winner].waitState(cid, protocol.StateAssigned)
		loser := 1 - winner
		m, _, err := nodes[0].conv.Get(ctx, cid)
		if err != nil || m.AgentID != won || m.State != protocol.StateAssigned {
			t.Fatalf("record %+v %v, want assigned to %s", m, err, won)
		}
		// The loser's slot is free again (locally and cluster-wide).
		lenv := []*testEnv{A, B}[loser]
		// (Its node may still be trying, or owe the slot until its
		// heartbeat pays it (payOwed): poll until it gave up. Generous:
		// on a loaded machine 10 s was seen too short once.)
		var (
			load     int
			convs    []string
			convsErr error
		)
		if !waitFor(t, time.Minute, func() bool {
			load, _, _ = lenv.b.disp.agentLoad(ids[loser])
			convs, convsErr = nodes[loser].cl.agentConvs(ctx, ids[loser], time.Now())
			return load == 0 && convsErr == nil && len(convs) == 0
		}) {
			t.Fatalf("loser %s keeps a slot after a minute: local load %d, cluster-wide conversations %v (%v), slots owed %d",
				ids[loser], load, convs, convsErr, lenv.b.m.clusterSlotsOwed.Get())
		}
		if n := len(agents[loser].all(func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == cid
		})); n != 0 {
			t.Fatalf("the loser was told about the conversation %d times", n)
		}
		// Out of the next rounds: away, then the conversation closes.
		for _, a := range agents {
			id := a.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusAway}})
			a.waitFor("away echo", func(e *protocol.Envelope) bool { return e.ID == id && e.Kind == protocol.KindPresence })
		}
		v.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid}})
		agents[winner].waitState(cid, protocol.StateClosed)
	}

	// One agent, two consoles on two nodes, capacity 2; 6 visitors, 3 per
	// node, opening at once.
	xa := A.dial("x@A", pbProto)
	xa.hello(protocol.Hello{Token: A.token("agent-x", token.RoleAgent)})
	xb := B.dial("x@B", pbProto)
	xb.hello(protocol.Hello{Token: B.token("agent-x", token.RoleAgent)})
	xa.online(2)
	xb.online(2)
	var vs []*tclient
	for i := range 6 {
		env := []*testEnv{A, B}[i%2]
		v := env.dial(fmt.Sprintf("cap-visitor-%d", i), jsonProto)
		v.hello(protocol.Hello{Token: env.token(fmt.Sprintf("cap-v%d", i), token.RoleVisitor)})
		vs = append(vs, v)
	}
	var wg sync.WaitGroup
	for _, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.send(protocol.Envelope{Kind: protocol.KindOpen, Open: protocol.Open{}})
		}()
	}
	wg.Wait()
	assigned := func() []string {
		var out []string
		for _, v := range vs {
			for _, e := range v.all(func(e *protocol.Envelope) bool {
				return e.Kind == protocol.KindConversation && e.Conversation.State == protocol.StateAssigned
			}) {
				if e.Conversation.AgentID != "agent-x" {
					t.Errorf("%s assigned to %s", e.Conversation.ConversationID, e.Conversation.AgentID)
				}
				out = append(out, e.Conversation.ConversationID)
			}
		}
		return out
	}
	if !waitFor(t, 10*time.Second, func() bool { return len(assigned()) >= 2 }) {
		t.Fatalf("assigned %v, want 2", assigned())
	}
	// Let any racing assignment land, then check the invariants.
	time.Sleep(500 * time.Millisecond)
	got := assigned()
	if len(got) != 2 || got[0] == got[1] {
		l, rev, err := nodes[0].cl.getLoad(ctx, "agent-x")
		t.Logf("load %v rev %d %v", l, rev, err)
		for _, v := range vs {
			t.Logf("%s: %s", v.name, summary(v.all(func(*protocol.Envelope) bool { return true })))
		}
		t.Fatalf("agent x (capacity 2) got %v", got)
	}
	convs, err := nodes[0].cl.agentConvs(ctx, "agent-x", time.Now())
	if err != nil || len(convs) != 2 {
		t.Fatalf("agent-x cluster-wide load %v %v", convs, err)
	}
	for _, cid := range got {
		m, _, err := nodes[1].conv.Get(ctx, cid)
		if err != nil || m.AgentID != "agent-x" || m.State != protocol.StateAssigned {
			t.Fatalf("record of %s: %+v %v", cid, m, err)
		}
		// Both consoles of x see it, once.
		for _, x := range []*tclient{xa, xb} {
			n := len(x.all(func(e *protocol.Envelope) bool {
				return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == cid && e.Conversation.State == protocol.StateAssigned
			}))
			if n != 1 {
				t.Fatalf("%s saw %s assigned %d times", x.name, cid, n)
			}
		}
	}
	t.Logf("record conflicts: A %d, B %d (a loser of a race counts one)", A.b.m.clusterConflicts.Get(), B.b.m.clusterConflicts.Get())
}

// stallingKV is a conversation bucket whose next watches (stalls of
// them) go silent once their initial records are delivered, as a watch
// does when nats.go fails to recreate its ordered consumer.
type stallingKV struct {
	jetstream.KeyValue
	stalls atomic.Int32
}

func (k *stallingKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	w, err := k.KeyValue.WatchAll(ctx, opts...)
	if err != nil || k.stalls.Add(-1) < 0 {
		return w, err
	}
	sw := &stalledWatcher{KeyWatcher: w, ch: make(chan jetstream.KeyValueEntry, 256)}
	go sw.forward()
	return sw, nil
}

// stalledWatcher passes the initial records and the end-of-initial marker
// on, then swallows every update.
type stalledWatcher struct {
	jetstream.KeyWatcher
	ch chan jetstream.KeyValueEntry
}

func (w *stalledWatcher) forward() {
	muted := false
	for e := range w.KeyWatcher.Updates() {
		if !muted {
			w.ch <- e
			muted = e == nil
		}
	}
}

func (w *stalledWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }

// TestClusterWatchStall: node A's conversation watch goes silent after its
// initial records. A visitor on B opens a conversation that only A's agent
// can take: A notices its watch is behind the bucket, restarts it from the
// last revision it saw, and assigns the conversation.
func TestClusterWatchStall(t *testing.T) {
	var kvA *stallingKV
	nodes := startClusterHook(t, 2, 1, Options{}, func(i int, cn *clusterNode) {
		if i == 0 {
			kvA = &stallingKV{KeyValue: cn.conv.kv}
			kvA.stalls.Store(1)
			cn.conv.kv = kvA
		}
	})
	A, B := nodes[0].env, nodes[1].env
	ag := A.dial("agent@A", pbProto)
	ag.hello(protocol.Hello{Token: A.token("agent-stall", token.RoleAgent)})
	ag.online(1)
	v := B.dial("visitor@B", jsonProto)
	v.hello(protocol.Hello{Token: B.token("vis-stall", token.RoleVisitor)})
	cid := v.open(protocol.Open{Text: "anyone?"}).ConversationID
	if kvA.stalls.Load() > 0 {
		t.Fatal("A's watch was not the stalling one")
	}
	// Two checks behind without progress, then the restart (about 10 s).
	if c := v.waitStateWithin(time.Minute, cid, protocol.StateAssigned, "agent-stall"); c.AgentID != "agent-stall" {
		t.Fatalf("assigned to %q", c.AgentID)
	}
	ag.waitDeliver(cid, 1)
}

// staleKV answers the next Gets (stale of them) "not found", as a replica
// that has not applied the newest revisions does (KV reads go to any
// replica).
type staleKV struct {
	jetstream.KeyValue
	stale atomic.Int32
}

func (k *staleKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if k.stale.Add(-1) >= 0 {
		return nil, jetstream.ErrKeyNotFound
	}
	return k.KeyValue.Get(ctx, key)
}

// TestClusterStaleRead: the node that assigns a conversation another node
// just queued reads its record from a replica that does not have it yet.
// It takes the record its watch delivered instead, and the assignment
// goes through (it used to be dropped, the conversation never assigned).
func TestClusterStaleRead(t *testing.T) {
	var kvA *staleKV
	nodes := startClusterHook(t, 2, 1, Options{}, func(i int, cn *clusterNode) {
		if i == 0 {
			kvA = &staleKV{KeyValue: cn.conv.kv}
			cn.conv.kv = kvA
		}
	})
	A, B := nodes[0].env, nodes[1].env
	ag := A.dial("agent@A", pbProto)
	ag.hello(protocol.Hello{Token: A.token("agent-stale", token.RoleAgent)})
	ag.online(1)
	kvA.stale.Store(3)
	v := B.dial("visitor@B", jsonProto)
	v.hello(protocol.Hello{Token: B.token("vis-stale", token.RoleVisitor)})
	cid := v.open(protocol.Open{Text: "hello"}).ConversationID
	if c := v.waitStateWithin(30*time.Second, cid, protocol.StateAssigned, "agent-stale"); c.AgentID != "agent-stale" {
		t.Fatalf("assigned to %q", c.AgentID)
	}
	ag.waitDeliver(cid, 1)
	if kvA.stale.Load() > 2 {
		t.Fatal("A never read the record")
	}
}
