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
	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// durableStores is an embedded NATS node with the history stream and the
// conversation bucket, shared by the brokers of one test ("restarts").
type durableStores struct {
	node *natsnode.Node
	hist *histstore.Store
	conv *KVConvStore
}

func startStores(t testing.TB, dir string) *durableStores {
	t.Helper()
	n, err := natsnode.Start(natsnode.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := histstore.Open(ctx, n.JetStream(), histstore.Options{})
	if err != nil {
		n.Shutdown()
		t.Fatal(err)
	}
	cs, err := OpenKVConvStore(ctx, n.JetStream(), KVConvOptions{})
	if err != nil {
		n.Shutdown()
		t.Fatal(err)
	}
	d := &durableStores{node: n, hist: h, conv: cs}
	t.Cleanup(d.close)
	return d
}

func (d *durableStores) close() {
	_ = d.hist.Close()
	d.node.Shutdown()
}

// startDurable starts a broker + netpoll server on the stores; stop shuts
// both down (a restart keeps the stores).
func startDurable(t *testing.T, o Options, hist History, cs ConvStore) (*testEnv, func()) {
	t.Helper()
	e := &testEnv{t: t, signer: testSigner(t)}
	o.Signer = e.signer
	o.History = hist
	o.Conversations = cs
	b, err := New(o)
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
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Stop(ctx)
			b.Close()
		})
	}
	t.Cleanup(stop)
	e.b, e.srv = b, srv
	return e, stop
}

// TestDurableRestart: messages acked before a restart are replayed after
// it, from a cold start, to clients that come back with their tokens and
// cursors; the sequence continues; a re-sent client message id gets its
// original Ack.
func TestDurableRestart(t *testing.T) {
	st := startStores(t, t.TempDir())
	env, stop := startDurable(t, Options{}, st.hist, st.conv)
	visTok := env.token("vis-1", token.RoleVisitor)
	agTok := env.token("agent-1", token.RoleAgent)

	v := env.dial("visitor", jsonProto)
	v.hello(protocol.Hello{Token: visTok})
	cid := v.open(protocol.Open{Text: "hello?"}).ConversationID
	a := env.dial("agent", pbProto)
	a.hello(protocol.Hello{Token: agTok})
	a.online(2)
	v.waitState(cid, protocol.StateAssigned)
	a.waitDeliver(cid, 1)
	if ack := v.say(cid, "m2", "two"); ack.Seq != 2 {
		t.Fatalf("ack seq %d, want 2", ack.Seq)
	}
	a.waitDeliver(cid, 2)
	if ack := a.say(cid, "a3", "three"); ack.Seq != 3 {
		t.Fatalf("ack seq %d, want 3", ack.Seq)
	}
	v.waitDeliver(cid, 3)
	v.say(cid, "m4", "four")
	a.waitDeliver(cid, 4)
	stop()

	// Cold start on the same stores.
	env2, _ := startDurable(t, Options{}, st.hist, st.conv)
	env2.signer = env.signer
	v2 := env2.dial("visitor-2", jsonProto)
	v2.hello(protocol.Hello{Token: visTok, Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: 2}}})
	v2.waitState(cid, protocol.StateAssigned)
	v2.waitDeliver(cid, 4)
	if got := v2.delivers(cid); !slices.Equal(got, []uint64{3, 4}) {
		t.Fatalf("visitor replay after cursor 2: %v, want [3 4]", got)
	}
	a2 := env2.dial("agent-2", pbProto)
	a2.hello(protocol.Hello{Token: agTok, Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: 0}}})
	a2.waitDeliver(cid, 4)
	if got := a2.delivers(cid); !slices.Equal(got, []uint64{1, 2, 3, 4}) {
		t.Fatalf("agent replay: %v", got)
	}
	// A retry of m4 (its ack lost in the crash) gets the original Ack.
	if ack := v2.say(cid, "m4", "four"); ack.Seq != 4 {
		t.Fatalf("duplicate after restart acked seq %d, want 4", ack.Seq)
	}
	if ack := v2.say(cid, "m5", "five"); ack.Seq != 5 {
		t.Fatalf("ack seq %d, want 5", ack.Seq)
	}
	a2.waitDeliver(cid, 5)
	if got := a2.delivers(cid); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("agent saw %v", got)
	}

	// The durable history has every acked message once, in order.
	var seqs []uint64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.hist.Range(ctx, token.DefaultTenant, cid, 0, 0, func(m *histstore.Message) bool {
		seqs = append(seqs, m.Seq)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("history %v", seqs)
	}
}

// TestDurableBadInput: after a cold start, a cursor from the future, an
// unknown conversation and a closed conversation are coded errors that
// change nothing.
func TestDurableBadInput(t *testing.T) {
	st := startStores(t, t.TempDir())
	env, stop := startDurable(t, Options{}, st.hist, st.conv)
	visTok := env.token("vis-1", token.RoleVisitor)
	v := env.dial("visitor", jsonProto)
	v.hello(protocol.Hello{Token: visTok})
	cid := v.open(protocol.Open{Text: "hi"}).ConversationID
	v.say(cid, "m2", "two")
	other := env.dial("other", jsonProto)
	other.hello(protocol.Hello{Token: env.token("vis-2", token.RoleVisitor)})
	cid2 := other.open(protocol.Open{}).ConversationID
	id := other.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid2}})
	other.waitFor("closed", func(e *protocol.Envelope) bool { return e.ID == id })
	stop()

	env2, _ := startDurable(t, Options{}, st.hist, st.conv)
	env2.signer = env.signer
	v2 := env2.dial("visitor-2", jsonProto)
	hid := v2.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Token: visTok, Cursors: []protocol.Cursor{
		{ConversationID: cid, LastSeq: 99},
		{ConversationID: "c_doesnotexist", LastSeq: 0},
		{ConversationID: cid2, LastSeq: 0},
	}}})
	v2.waitFor("welcome", func(e *protocol.Envelope) bool { return e.ID == hid && e.Kind == protocol.KindWelcome })
	errs := func() []protocol.Code {
		var out []protocol.Code
		for _, e := range v2.all(isKind(protocol.KindError)) {
			out = append(out, e.Error.Code)
		}
		slices.Sort(out)
		return out
	}
	want := []protocol.Code{protocol.CodeUnknownConversation, protocol.CodeNotParticipant, protocol.CodeSeqFromFuture}
	if !waitFor(t, waitTimeout, func() bool { return slices.Equal(errs(), want) }) {
		t.Fatalf("errors %v, want %v", errs(), want)
	}
	if len(v2.delivers(cid)) != 0 {
		t.Fatalf("a cursor from the future replayed %v", v2.delivers(cid))
	}
	sid := v2.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: "c_doesnotexist", Text: "x"}})
	v2.waitError(sid, protocol.CodeUnknownConversation)
	// Nothing changed: the conversation goes on at seq 3.
	if ack := v2.say(cid, "m3", "three"); ack.Seq != 3 {
		t.Fatalf("ack seq %d, want 3", ack.Seq)
	}

	// The closed conversation is closed after the restart too.
	o2 := env2.dial("other-2", jsonProto)
	o2.hello(protocol.Hello{Token: env.token("vis-2", token.RoleVisitor)})
	sid = o2.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid2, Text: "x"}})
	o2.waitError(sid, protocol.CodeConversationClosed)
}

// flakyHistory wraps a History: when fail is set appends fail with
// ErrUnavailable; when hold is set their outcome never comes.
type flakyHistory struct {
	History
	mu         sync.Mutex
	fail, hold bool
}

func (f *flakyHistory) AppendAsync(m *histstore.Message, expect uint64, done func(uint64, bool, error)) error {
	f.mu.Lock()
	fail, hold := f.fail, f.hold
	f.mu.Unlock()
	switch {
	case hold:
		return nil
	case fail:
		go done(0, false, histstore.ErrUnavailable)
		return nil
	}
	return f.History.AppendAsync(m, expect, done)
}

func (f *flakyHistory) set(fail, hold bool) {
	f.mu.Lock()
	f.fail, f.hold = fail, hold
	f.mu.Unlock()
}

// TestDurableStoreFailure: a failed append is CodeUnavailable to the
// sender, nothing is delivered and the seq is not consumed; over the
// per-conversation pending bound a send gets CodeOverloaded.
func TestDurableStoreFailure(t *testing.T) {
	st := startStores(t, t.TempDir())
	fh := &flakyHistory{History: st.hist}
	env, _ := startDurable(t, Options{MaxPendingPerConversation: 2}, fh, st.conv)
	v := env.dial("visitor", jsonProto)
	v.hello(protocol.Hello{Token: env.token("vis-1", token.RoleVisitor)})
	cid := v.open(protocol.Open{}).ConversationID
	a := env.dial("agent", jsonProto)
	a.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a.online(1)
	v.waitState(cid, protocol.StateAssigned)
	v.say(cid, "m1", "one")

	fh.set(true, false)
	id := v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "m2", Text: "two"}})
	v.waitError(id, protocol.CodeUnavailable)
	fh.set(false, false)
	if ack := v.say(cid, "m2", "two"); ack.Seq != 2 {
		t.Fatalf("after a failed append the seq is %d, want 2", ack.Seq)
	}
	a.waitDeliver(cid, 2)
	if got := a.delivers(cid); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("agent got %v", got)
	}

	fh.set(false, true)
	v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "h1", Text: "held"}})
	v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "h2", Text: "queued"}})
	id = v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: cid, ClientMsgID: "h3", Text: "too many"}})
	v.waitError(id, protocol.CodeOverloaded)
	if got := a.delivers(cid); len(got) != 2 {
		t.Fatalf("undurable messages were delivered: %v", got)
	}
}

func TestKVConvStore(t *testing.T) {
	st := startStores(t, t.TempDir())
	ctx := context.Background()
	m := &ConvMeta{ID: "c_abc", Tenant: "t", VisitorID: "v", State: protocol.StateQueued}
	rev, err := st.conv.Create(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.conv.Create(ctx, m); err == nil {
		t.Fatal("created twice")
	}
	m.State = protocol.StateClosed
	if _, err := st.conv.Update(ctx, m, rev+7); err == nil {
		t.Fatal("stale revision accepted")
	}
	if _, err := st.conv.Update(ctx, m, rev); err != nil {
		t.Fatal(err)
	}
	got, _, err := st.conv.Get(ctx, "c_abc")
	if err != nil || got.State != protocol.StateClosed {
		t.Fatalf("get %+v %v", got, err)
	}
	if _, _, err := st.conv.Get(ctx, "c_nope"); !errors.Is(err, ErrConvNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if _, _, err := st.conv.Get(ctx, "../x"); !errors.Is(err, ErrConvNotFound) {
		t.Fatalf("bad key: %v", err)
	}
}

// TestDurableCacheBound: with History, the in-memory ring is a bounded
// cache of the newest messages. A resume whose cursor is older than the
// cache is replayed from the stream, exactly the missed messages in
// order; a re-sent client message id older than the cache is recognised
// by the stream (its original Ack, nothing stored twice); a transfer
// replays the whole history; the ring never holds more than its bound.
func TestDurableCacheBound(t *testing.T) {
	st := startStores(t, t.TempDir())
	const cache = 4
	env, _ := startDurable(t, Options{HistoryPerConversation: cache}, st.hist, st.conv)
	v := env.dial("visitor", pbProto)
	visTok := env.token("vis-1", token.RoleVisitor)
	w := v.hello(protocol.Hello{Token: visTok})
	cid := v.open(protocol.Open{Text: "hello?"}).ConversationID
	a := env.dial("agent", jsonProto)
	a.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a.online(2)
	v.waitState(cid, protocol.StateAssigned)
	if ack := v.say(cid, "m2", "two"); ack.Seq != 2 {
		t.Fatalf("ack seq %d, want 2", ack.Seq)
	}
	_ = v.ws.Close()
	<-v.done
	// 10 messages while the visitor is away: more than the cache holds.
	for i := 3; i <= 12; i++ {
		if ack := a.say(cid, fmt.Sprint("a", i), fmt.Sprint("agent ", i)); ack.Seq != uint64(i) {
			t.Fatalf("ack seq %d, want %d", ack.Seq, i)
		}
	}
	ring := -1
	if err := env.b.onShard(context.Background(), env.b.shardFor(cid), func(s *shard) {
		if c := s.convs[cid]; c != nil {
			ring = c.hist.len()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if ring < 1 || ring > cache {
		t.Fatalf("the ring holds %d messages, bound %d", ring, cache)
	}

	v2 := env.dial("visitor-again", pbProto)
	v2.hello(protocol.Hello{Token: visTok, ResumeToken: w.ResumeToken, Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: 2}}})
	v2.waitDeliver(cid, 12)
	want := []uint64{3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	if got := v2.delivers(cid); !slices.Equal(got, want) {
		t.Fatalf("replay after cursor 2: %v, want %v", got, want)
	}
	// m2 left the cache long ago: the stream's duplicate window answers,
	// and the original is read at the stream sequence it names.
	if ack := v2.say(cid, "m2", "two"); ack.Seq != 2 {
		t.Fatalf("re-sent m2 acked with seq %d, want its original 2", ack.Seq)
	}
	if ack := v2.say(cid, "m13", "thirteen"); ack.Seq != 13 {
		t.Fatalf("ack seq %d, want 13", ack.Seq)
	}
	a.waitDeliver(cid, 13)
	// A transfer gives the new agent the whole history: the part older
	// than the cache from the stream, then the cache, once each, in order.
	a2 := env.dial("agent-2", pbProto)
	a2.hello(protocol.Hello{Token: env.token("agent-2", token.RoleAgent)})
	a2.online(1)
	tid := a.send(protocol.Envelope{Kind: protocol.KindTransfer, Transfer: protocol.Transfer{ConversationID: cid, ToAgentID: "agent-2"}})
	if e := a.waitFor("transfer echo", func(e *protocol.Envelope) bool { return e.ID == tid }); e.Kind != protocol.KindConversation {
		t.Fatalf("transfer answered %s %+v", e.Kind, e.Error)
	}
	a2.waitDeliver(cid, 13)
	if got := a2.delivers(cid); !slices.Equal(got, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}) {
		t.Fatalf("new agent's replay %v, want 1..13", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var seqs []uint64
	if err := st.hist.Range(ctx, token.DefaultTenant, cid, 0, 0, func(m *histstore.Message) bool {
		seqs = append(seqs, m.Seq)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 13 || seqs[0] != 1 || seqs[12] != 13 {
		t.Fatalf("history %v, want 1..13 once each", seqs)
	}
}

// TestCacheDefaults: the ring is the whole history without History
// (1000 messages, 1 MiB) and a 64-message, 64 KiB cache with it.
func TestCacheDefaults(t *testing.T) {
	mem, err := Options{AllowAnonymous: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	st := startStores(t, t.TempDir())
	dur, err := Options{AllowAnonymous: true, History: st.hist}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if mem.HistoryPerConversation != 1000 || mem.HistoryBytesPerConversation != 1<<20 ||
		dur.HistoryPerConversation != 64 || dur.HistoryBytesPerConversation != 64<<10 {
		t.Fatalf("in memory %d/%d, durable %d/%d", mem.HistoryPerConversation, mem.HistoryBytesPerConversation,
			dur.HistoryPerConversation, dur.HistoryBytesPerConversation)
	}
}

// replayFailHistory fails Replay while fail is set, as a store that is
// down or a replica that cannot be read does.
type replayFailHistory struct {
	History
	fail atomic.Bool
}

func (h *replayFailHistory) Replay(ctx context.Context, tenant, conv string, after uint64, limit int, fn func(*histstore.Message) bool) (histstore.RangeInfo, error) {
	if h.fail.Load() {
		return histstore.RangeInfo{}, errors.New("test: history unavailable")
	}
	return h.History.Replay(ctx, tenant, conv, after, limit, fn)
}

// TestDurableReplayFailureCloses: a resume whose replay from the stream
// fails (the cursor is older than the in-memory ring) gets 5001 and its
// connection closed with 1013, before any live message: left open, the
// next live message would move the client's cursor past the messages the
// replay did not bring, and they would be lost to it. The next resume
// from the same cursor gets every one, once, in order, then live ones.
func TestDurableReplayFailureCloses(t *testing.T) {
	st := startStores(t, t.TempDir())
	fh := &replayFailHistory{History: st.hist}
	env, _ := startDurable(t, Options{HistoryPerConversation: 4}, fh, st.conv)
	v := env.dial("visitor", jsonProto)
	visTok := env.token("vis-1", token.RoleVisitor)
	w := v.hello(protocol.Hello{Token: visTok})
	cid := v.open(protocol.Open{}).ConversationID
	a := env.dial("agent", pbProto)
	a.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a.online(1)
	v.waitState(cid, protocol.StateAssigned)
	first := v.say(cid, "v1", "one")
	_ = v.ws.Close()
	<-v.done
	for i := range 10 {
		a.say(cid, fmt.Sprint("a", i), "while the visitor is away")
	}

	fh.fail.Store(true)
	v2 := env.dial("visitor-again", jsonProto)
	v2.hello(protocol.Hello{Token: visTok, ResumeToken: w.ResumeToken, Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: first.Seq}}})
	v2.waitFor("5001", func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindError && e.Error.Code == protocol.CodeUnavailable
	})
	v2.waitClosed(int(netpoll.StatusTryAgainLater))
	if got := v2.delivers(cid); len(got) != 0 {
		t.Fatalf("delivered %v after a failed replay", got)
	}
	fh.fail.Store(false)
	live := a.say(cid, "a-live", "the visitor is back")

	v3 := env.dial("visitor-third", jsonProto)
	v3.hello(protocol.Hello{Token: visTok, ResumeToken: w.ResumeToken, Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: first.Seq}}})
	v3.waitDeliver(cid, live.Seq)
	last := a.say(cid, "a-after", "and live again")
	v3.waitDeliver(cid, last.Seq)
	checkConsecutive(t, "visitor", v3.delivers(cid), first.Seq+1, last.Seq)
}

// gatedConvStore holds every Update while gated, counting those held.
type gatedConvStore struct {
	ConvStore
	mu   sync.Mutex
	gate chan struct{} // nil: open
	held atomic.Int32
}

func (g *gatedConvStore) close() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedConvStore) open() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

func (g *gatedConvStore) Update(ctx context.Context, m *ConvMeta, rev uint64) (uint64, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.held.Add(1)
		defer g.held.Add(-1)
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return g.ConvStore.Update(ctx, m, rev)
}

// TestDurableRecordWriteOffShard: a conversation record write (here a
// close) that the store takes long to answer does not hold the other
// conversations of its shard: a message in another conversation of the
// same shard is acked while the write is still held. Changes made while
// a write is in flight are written after it (the latest state, over the
// revision it left), and a broker closing with writes in flight waits
// for them: the records say what the clients were told.
func TestDurableRecordWriteOffShard(t *testing.T) {
	st := startStores(t, t.TempDir())
	gs := &gatedConvStore{ConvStore: st.conv}
	env, stop := startDurable(t, Options{Shards: 1}, st.hist, gs)
	a := env.dial("agent", jsonProto)
	a.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a.online(2)
	var vs []*tclient
	var cids []string
	for i := range 2 {
		v := env.dial(fmt.Sprint("visitor-", i), jsonProto)
		v.hello(protocol.Hello{Token: env.token(fmt.Sprint("vis-", i), token.RoleVisitor)})
		cid := v.open(protocol.Open{}).ConversationID
		v.waitState(cid, protocol.StateAssigned)
		vs, cids = append(vs, v), append(cids, cid)
	}

	gs.close()
	vs[0].send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cids[0]}})
	vs[0].waitState(cids[0], protocol.StateClosed)
	if !waitFor(t, waitTimeout, func() bool { return gs.held.Load() == 1 }) {
		t.Fatal("the close's record write never reached the store")
	}
	ack := vs[1].say(cids[1], "m1", "the shard is not waiting for the store")
	if gs.held.Load() != 1 {
		t.Fatal("the ack came only after the record write returned: the shard waited for it")
	}
	a.waitDeliver(cids[1], ack.Seq)

	// Assigned and closed while its first write (assigned) is held: the
	// second state is written after it, over the revision it left.
	v := env.dial("visitor-2", jsonProto)
	v.hello(protocol.Hello{Token: env.token("vis-2", token.RoleVisitor)})
	cid := v.open(protocol.Open{}).ConversationID
	v.waitState(cid, protocol.StateAssigned)
	v.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cid}})
	v.waitState(cid, protocol.StateClosed)
	cids = append(cids, cid)
	// And one closed while the broker stops.
	vs[1].send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: cids[1]}})
	vs[1].waitState(cids[1], protocol.StateClosed)
	gs.open()
	stop()
	for _, cid := range cids {
		m, _, err := st.conv.Get(context.Background(), cid)
		if err != nil {
			t.Fatal(err)
		}
		if m.State != protocol.StateClosed {
			t.Fatalf("record of %s says %s after the broker closed, want closed", cid, m.State)
		}
	}
}
