package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// manualClock is a broker clock (Options.Now) that stands still until the
// test moves it: the reservation grace is measured on it, so a slot is
// fresh or stale when the test says so, however slow the machine is.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func newManualClock() *manualClock { return &manualClock{t: time.Now()} }

func (c *manualClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuffer collects a broker's log lines (Options.Logger).
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// loadOf returns agent's cluster-wide load as stored (no pruning).
func loadOf(t *testing.T, cl *Cluster, agent string) []string {
	t.Helper()
	l, _, err := cl.getLoad(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for c := range l.Convs {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// TestClusterStaleSlot reproduces the stall of the host100k rehearsals
// (docs/benchmarks.md, "What the gateway did under load", item 6): an
// agent's cluster-wide load holds a slot reserved for a conversation
// that another agent holds (a reservation never given back). Its node
// believes the agent full, so nothing offers it the conversation that
// waits, and prune, which would drop the slot, used to run only when
// something was offered to it: the conversation stayed queued for good.
// Once the slot is older than the reservation grace, the heartbeat of the
// agent's node re-reads the load, drops the slot and the waiting
// conversation is assigned.
func TestClusterStaleSlot(t *testing.T) {
	clock := newManualClock()
	nodes := startCluster(t, 2, Options{Now: clock.now})
	A, B := nodes[0].env, nodes[1].env
	ctx := context.Background()

	// Another agent holds conversation other; agent-stale's load holds a
	// slot for it too, reserved now.
	other := &ConvMeta{ID: newID(prefixConversation), Tenant: token.DefaultTenant, VisitorID: "vis-elsewhere",
		AgentID: "agent-other", State: protocol.StateAssigned, CreatedMilli: clock.now().UnixMilli()}
	if _, err := nodes[0].conv.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	planted := &agentLoad{Convs: map[string]int64{other.ID: clock.now().UnixMilli()}}
	if _, err := nodes[0].cl.putLoad(ctx, "agent-stale", planted, 0); err != nil {
		t.Fatal(err)
	}

	ag := A.dial("agent@A", pbProto)
	ag.hello(protocol.Hello{Token: A.token("agent-stale", token.RoleAgent)})
	ag.online(1)
	if load, capacity, _ := A.b.disp.agentLoad("agent-stale"); load != 1 || capacity != 1 {
		t.Fatalf("agent-stale's load on A is %d of %d, want the fresh slot counted: 1 of 1", load, capacity)
	}
	v := B.dial("visitor@B", jsonProto)
	v.hello(protocol.Hello{Token: B.token("vis-stale-slot", token.RoleVisitor)})
	cid := v.open(protocol.Open{Text: "is anybody there?"}).ConversationID
	if !waitFor(t, 20*time.Second, func() bool { return A.b.Stats().QueueLength == 1 }) {
		t.Fatal("A's dispatcher does not see the conversation waiting")
	}
	// The clock stands still: the slot stays fresh, the agent full (the
	// heartbeat must not drop a reservation whose conversation record may
	// still be being written).
	if got := loadOf(t, nodes[0].cl, "agent-stale"); !slices.Equal(got, []string{other.ID}) || A.b.m.clusterStaleSlots.Get() != 0 {
		t.Fatalf("agent-stale's load %v, want the planted slot", got)
	}

	clock.advance(reserveGrace + time.Second)
	if c := v.waitStateWithin(30*time.Second, cid, protocol.StateAssigned, "agent-stale"); c.AgentID != "agent-stale" {
		t.Fatalf("assigned to %q", c.AgentID)
	}
	ag.waitState(cid, protocol.StateAssigned)
	ag.waitDeliver(cid, 1)
	if n := A.b.m.clusterStaleSlots.Get(); n != 1 {
		t.Fatalf("%d stale slots dropped, want 1", n)
	}
	if got := loadOf(t, nodes[0].cl, "agent-stale"); !slices.Equal(got, []string{cid}) {
		t.Fatalf("agent-stale's load %v, want only %s", got, cid)
	}
	if m, _, err := nodes[1].conv.Get(ctx, other.ID); err != nil || m.AgentID != "agent-other" || m.State != protocol.StateAssigned {
		t.Fatalf("the other conversation changed: %+v %v", m, err)
	}
}

// racingKV is a conversation bucket where the next assignment (an Update
// to state ASSIGNED) loses a race: just before it, another node's
// assignment of the same conversation to rival is written. Then lost
// runs (it makes giving the loser's slot back difficult).
type racingKV struct {
	jetstream.KeyValue
	rival  string
	armed  atomic.Bool
	onLose func()
	lost   atomic.Value // conversation id of the lost assignment
}

func (k *racingKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	var m ConvMeta
	if json.Unmarshal(value, &m) == nil && m.State == protocol.StateAssigned && k.armed.CompareAndSwap(true, false) {
		w := m
		w.AgentID = k.rival
		b, _ := json.Marshal(&w)
		if _, err := k.KeyValue.Update(ctx, key, b, rev); err != nil {
			return 0, err
		}
		k.lost.Store(key)
		k.onLose()
	}
	return k.KeyValue.Update(ctx, key, value, rev)
}

// failingKV fails its next fail reads of an agent's load, as a bucket
// whose leader is busy, elsewhere or gone does.
type failingKV struct {
	jetstream.KeyValue
	fail  atomic.Int32
	fails atomic.Int32
}

func (k *failingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if strings.HasPrefix(key, "l.") && k.fail.Add(-1) >= 0 {
		k.fails.Add(1)
		return nil, context.DeadlineExceeded
	}
	return k.KeyValue.Get(ctx, key)
}

// TestClusterGiveBackFails: node A reserves agent-give's slot for a
// conversation, then loses the assignment to another node (its record
// now names agent-rival), and giving the slot back fails (the load bucket
// does not answer). That used to leak the slot silently for good: the
// agent, capacity 1, could never be given another conversation. Now the
// failure is logged at WARN and the slot owed: once it is older than the
// reservation grace, A's heartbeat prunes the agent's load, and the next
// conversation is assigned to the agent.
func TestClusterGiveBackFails(t *testing.T) {
	clock := newManualClock()
	logs := &logBuffer{}
	var race *racingKV
	var failing *failingKV
	nodes := startClusterHook(t, 2, 1, Options{Now: clock.now, Logger: logs.logger()}, func(i int, cn *clusterNode) {
		if i == 0 {
			fl := &failingKV{KeyValue: cn.cl.load}
			failing = fl
			cn.cl.load = fl
			race = &racingKV{KeyValue: cn.conv.kv, rival: "agent-rival", onLose: func() { fl.fail.Store(1) }}
			cn.conv.kv = race
		}
	})
	A, B := nodes[0].env, nodes[1].env
	ctx := context.Background()

	ag := A.dial("agent@A", pbProto)
	ag.hello(protocol.Hello{Token: A.token("agent-give", token.RoleAgent)})
	ag.online(1)
	race.armed.Store(true)
	v1 := B.dial("visitor-1@B", jsonProto)
	v1.hello(protocol.Hello{Token: B.token("vis-give-1", token.RoleVisitor)})
	cid1 := v1.open(protocol.Open{Text: "first"}).ConversationID
	if c := v1.waitStateWithin(30*time.Second, cid1, protocol.StateAssigned, "agent-rival"); c.AgentID != "agent-rival" {
		t.Fatalf("conversation 1 assigned to %q, want the rival that won the race", c.AgentID)
	}
	if lost, _ := race.lost.Load().(string); lost != cid1 {
		t.Fatalf("the race was lost on %q, want %s", lost, cid1)
	}
	if !waitFor(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "agent slot not given back") }) {
		t.Fatalf("no warning for the slot not given back; logs:\n%s", logs.String())
	}
	if failing.fails.Load() != 1 || A.b.m.clusterSlotsOwed.Get() != 1 {
		t.Fatalf("%d failed load reads, %d slots owed; want 1 and 1", failing.fails.Load(), A.b.m.clusterSlotsOwed.Get())
	}
	if got := loadOf(t, nodes[0].cl, "agent-give"); !slices.Equal(got, []string{cid1}) {
		t.Fatalf("agent-give's load %v, want the slot that was not given back (%s)", got, cid1)
	}

	// The next conversation finds the agent full (the slot is fresh).
	v2 := B.dial("visitor-2@B", jsonProto)
	v2.hello(protocol.Hello{Token: B.token("vis-give-2", token.RoleVisitor)})
	cid2 := v2.open(protocol.Open{Text: "second"}).ConversationID
	if !waitFor(t, 20*time.Second, func() bool {
		load, _, _ := A.b.disp.agentLoad("agent-give")
		return A.b.Stats().QueueLength == 1 && load == 1
	}) {
		load, _, _ := A.b.disp.agentLoad("agent-give")
		t.Fatalf("queue %d, agent-give's load %d: want conversation 2 waiting on a full agent", A.b.Stats().QueueLength, load)
	}

	clock.advance(reserveGrace + time.Second)
	if c := v2.waitStateWithin(30*time.Second, cid2, protocol.StateAssigned, "agent-give"); c.AgentID != "agent-give" {
		t.Fatalf("conversation 2 assigned to %q", c.AgentID)
	}
	ag.waitDeliver(cid2, 1)
	if got := loadOf(t, nodes[0].cl, "agent-give"); !slices.Equal(got, []string{cid2}) {
		t.Fatalf("agent-give's load %v, want only %s", got, cid2)
	}
	if due := nodes[0].cl.owedDue(clock.now().Add(time.Hour)); len(due) != 0 {
		t.Fatalf("still owed: %v", due)
	}
	if m, _, err := nodes[1].conv.Get(ctx, cid1); err != nil || m.AgentID != "agent-rival" {
		t.Fatalf("conversation 1's record %+v %v", m, err)
	}
	if n := len(ag.all(func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == cid1
	})); n != 0 {
		t.Fatalf("agent-give was told about the conversation it lost %d times", n)
	}
}

// laggingKV answers the next stale reads of an agent's load with the
// entry the read before them returned, as a node's own replica of the
// bucket does before it has applied the node's latest write (KV reads are
// direct gets, answered by the local replica).
type laggingKV struct {
	jetstream.KeyValue
	stale  atomic.Int32
	served atomic.Int32
	mu     sync.Mutex
	last   map[string]jetstream.KeyValueEntry // nil: not found
}

func (k *laggingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.mu.Lock()
	old, ok := k.last[key]
	k.mu.Unlock()
	if ok && strings.HasPrefix(key, "l.") && k.stale.Load() > 0 && k.stale.Add(-1) >= 0 {
		k.served.Add(1)
		if old == nil {
			return nil, jetstream.ErrKeyNotFound
		}
		return old, nil
	}
	e, err := k.KeyValue.Get(ctx, key)
	if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		k.mu.Lock()
		k.last[key] = e
		k.mu.Unlock()
	}
	return e, err
}

// TestClusterGiveBackStaleRead: node A loses an assignment race and gives
// agent-give's slot back, but its first reads of the agent's load come
// from a replica that has not applied the reservation yet. That read
// shows no slot, and giving back used to stop there, silently: the slot
// stayed (the leaks of the 3-node rehearsals, R3, where every node reads
// its own replica). Now a read older than the reservation's revision is
// read again, and the slot is given back at once: the clock stands still
// (no prune can repair anything), and the next conversation is assigned.
func TestClusterGiveBackStaleRead(t *testing.T) {
	clock := newManualClock()
	logs := &logBuffer{}
	var race *racingKV
	var lag *laggingKV
	nodes := startClusterHook(t, 2, 1, Options{Now: clock.now, Logger: logs.logger()}, func(i int, cn *clusterNode) {
		if i == 0 {
			lag = &laggingKV{KeyValue: cn.cl.load, last: make(map[string]jetstream.KeyValueEntry)}
			cn.cl.load = lag
			race = &racingKV{KeyValue: cn.conv.kv, rival: "agent-rival", onLose: func() { lag.stale.Store(2) }}
			cn.conv.kv = race
		}
	})
	A, B := nodes[0].env, nodes[1].env

	ag := A.dial("agent@A", pbProto)
	ag.hello(protocol.Hello{Token: A.token("agent-lag", token.RoleAgent)})
	ag.online(1)
	race.armed.Store(true)
	v1 := B.dial("visitor-1@B", jsonProto)
	v1.hello(protocol.Hello{Token: B.token("vis-lag-1", token.RoleVisitor)})
	cid1 := v1.open(protocol.Open{Text: "first"}).ConversationID
	if c := v1.waitStateWithin(30*time.Second, cid1, protocol.StateAssigned, "agent-rival"); c.AgentID != "agent-rival" {
		t.Fatalf("conversation 1 assigned to %q, want the rival that won the race", c.AgentID)
	}
	if !waitFor(t, 10*time.Second, func() bool { return lag.served.Load() >= 1 }) {
		t.Fatal("no stale read served")
	}
	v2 := B.dial("visitor-2@B", jsonProto)
	v2.hello(protocol.Hello{Token: B.token("vis-lag-2", token.RoleVisitor)})
	cid2 := v2.open(protocol.Open{Text: "second"}).ConversationID
	if c := v2.waitStateWithin(30*time.Second, cid2, protocol.StateAssigned, "agent-lag"); c.AgentID != "agent-lag" {
		t.Fatalf("conversation 2 assigned to %q", c.AgentID)
	}
	if n := lag.served.Load(); n != 2 {
		t.Fatalf("%d stale reads served, want 2 (both read again)", n)
	}
	if got := loadOf(t, nodes[0].cl, "agent-lag"); !slices.Equal(got, []string{cid2}) {
		t.Fatalf("agent-lag's load %v, want only %s", got, cid2)
	}
	if n := A.b.m.clusterSlotsOwed.Get() + A.b.m.clusterStaleSlots.Get(); n != 0 || strings.Contains(logs.String(), "not given back") {
		t.Fatalf("the slot was repaired, not given back (%d); logs:\n%s", n, logs.String())
	}
}
