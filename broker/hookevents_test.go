package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/crypto/atrest"
	"github.com/unigate/unigate/protocol"
)

// eventLog is the integrator's system behind the hooks of one test: every
// event a hook took, in the order taken, and which node delivered it.
type eventLog struct {
	mu  sync.Mutex
	evs []backends.Event
	by  []string
}

func (l *eventLog) add(node string, ev backends.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
	l.by = append(l.by, node)
}

func (l *eventLog) snapshot() ([]backends.Event, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]backends.Event(nil), l.evs...), append([]string(nil), l.by...)
}

// unique returns the number of distinct event IDs taken.
func (l *eventLog) unique() int {
	evs, _ := l.snapshot()
	seen := map[string]bool{}
	for _, ev := range evs {
		seen[ev.ID] = true
	}
	return len(seen)
}

// logHook is one node's hook: it refuses every event while failing is
// set, otherwise it hands it to the log.
type logHook struct {
	node    string
	log     *eventLog
	failing atomic.Bool
	calls   atomic.Int64
}

func (h *logHook) Event(_ context.Context, ev backends.Event) error {
	h.calls.Add(1)
	if h.failing.Load() {
		return errors.New("crm down")
	}
	h.log.add(h.node, ev)
	return nil
}

func (h *logHook) Authenticate(context.Context, backends.Credentials) (backends.Identity, error) {
	return backends.Identity{Reason: "not here"}, nil
}

func openHookEventsT(t testing.TB, js jetstream.JetStream, o HookEventsOptions) *HookEvents {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := OpenHookEvents(ctx, js, o)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func pending(t testing.TB, h *HookEvents) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := h.Pending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkOrder fails unless, in evs (after dropping repeated IDs), each
// conversation's events come in the order the broker emitted them:
// opened, assigned, its messages by seq, closed; and each visitor
// connection's connected before its disconnected. It returns the events
// per conversation.
func checkOrder(t *testing.T, evs []backends.Event) map[string][]backends.Event {
	t.Helper()
	seen := map[string]bool{}
	per := map[string][]backends.Event{}
	for _, ev := range evs {
		if seen[ev.ID] {
			continue
		}
		seen[ev.ID] = true
		key := ev.ConversationID
		if key == "" {
			key = "visitor " + ev.VisitorID
		}
		per[key] = append(per[key], ev)
	}
	rank := func(ev backends.Event) int {
		switch ev.Type {
		case backends.EventVisitorConnected, backends.EventConversationOpened:
			return 0
		case backends.EventConversationAssigned:
			return 1
		case backends.EventMessageStored, backends.EventMessageLeft:
			return 2
		case backends.EventConversationClosed, backends.EventVisitorDisconnected:
			return 3
		}
		return -1
	}
	for key, list := range per {
		for i := 1; i < len(list); i++ {
			a, b := list[i-1], list[i]
			ok := rank(a) < rank(b) || rank(a) == rank(b) && rank(a) == 2 && msgSeq(a) < msgSeq(b) ||
				rank(a) == 0 && rank(b) == 0 && a.Type == backends.EventVisitorConnected // reconnections
			if !ok {
				t.Errorf("%s: %s (%s) came before %s (%s)", key, a.Type, a.ID, b.Type, b.ID)
			}
		}
	}
	return per
}

func msgSeq(ev backends.Event) int {
	var n int
	fmt.Sscan(ev.MessageID, &n)
	return n
}

// chat runs n conversations on e: each visitor opens, the agent (online
// with room for all) is assigned, the visitor says two messages; the
// first conversation is closed by the agent. It returns the number of
// events the broker emits for it (connections of the visitors included,
// their disconnections not).
func chat(t *testing.T, e *testEnv, agent string, n int) int {
	t.Helper()
	a := e.dial(agent, protocol.SubprotocolJSON)
	a.hello(protocol.Hello{Token: e.token(agent, "agent")})
	a.online(uint32(n))
	for i := range n {
		v := e.dial(fmt.Sprintf("visitor %d", i), protocol.SubprotocolJSON)
		v.hello(protocol.Hello{})
		id := v.open(protocol.Open{}).ConversationID
		a.waitState(id, protocol.StateAssigned)
		v.say(id, "m1", "hello")
		v.say(id, "m2", "my order is late")
		if i == 0 {
			a.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: id, Reason: "resolved"}})
			v.waitState(id, protocol.StateClosed)
		}
	}
	return n*5 + 1 // connected, opened, assigned, 2 stored; 1 closed
}

// TestDurableHookEventsSurviveRestart: while the hook refuses everything,
// the events wait in JetStream, not in the broker; after the broker is
// gone, the next one on the same stores (a restart) delivers every one of
// them, once per ID, in order per conversation and per connection.
func TestDurableHookEventsSurviveRestart(t *testing.T) {
	st := startStores(t, t.TempDir())
	log := &eventLog{}
	down := &logHook{node: "first", log: log}
	down.failing.Store(true)
	hev := openHookEventsT(t, st.node.JetStream(), HookEventsOptions{AckWait: 2 * time.Second})
	e, stop := startDurable(t, Options{AllowAnonymous: true, Backends: &Backends{
		Hook: down, HookMessages: true, Events: hev, EventRetry: 5 * time.Millisecond,
	}}, st.hist, st.conv)
	want := chat(t, e, "a1", 3)
	if !waitFor(t, waitTimeout, func() bool { return pending(t, hev) == uint64(want) }) {
		t.Fatalf("%d events stored, want %d", pending(t, hev), want)
	}
	if down.calls.Load() == 0 {
		t.Fatal("the failing hook was never called")
	}
	stop() // the visitors' disconnections are stored before Close returns
	want += 3
	if n := pending(t, hev); n != uint64(want) {
		t.Fatalf("%d events stored after the stop, want %d", n, want)
	}
	if n := log.unique(); n != 0 {
		t.Fatalf("the failing hook took %d events", n)
	}
	if c := counter(e.b, "unigate_broker_hook_events_stored_total"); c != uint64(want) {
		t.Fatalf("stored counter %d, want %d", c, want)
	}

	up := &logHook{node: "second", log: log}
	hev2 := openHookEventsT(t, st.node.JetStream(), HookEventsOptions{AckWait: 2 * time.Second})
	e2, _ := startDurable(t, Options{AllowAnonymous: true, Backends: &Backends{
		Hook: up, HookMessages: true, Events: hev2, EventRetry: 5 * time.Millisecond,
	}}, st.hist, st.conv)
	if !waitFor(t, 10*time.Second, func() bool { return log.unique() == want }) {
		t.Fatalf("%d distinct events delivered after the restart, want %d", log.unique(), want)
	}
	evs, _ := log.snapshot()
	per := checkOrder(t, evs)
	convs := 0
	for key, list := range per {
		if strings.HasPrefix(key, "visitor ") {
			if len(list) != 2 {
				t.Errorf("%s: %d events, want connected and disconnected", key, len(list))
			}
			continue
		}
		convs++
		if len(list) < 4 || list[0].Type != backends.EventConversationOpened {
			t.Errorf("%s: %v", key, list)
		}
		for _, ev := range list {
			if ev.Type == backends.EventMessageStored && ev.Text == "" {
				t.Errorf("message_stored without its text: %+v", ev)
			}
		}
	}
	if convs != 3 {
		t.Fatalf("%d conversations in the events, want 3", convs)
	}
	if !waitFor(t, waitTimeout, func() bool { return pending(t, hev2) == 0 }) {
		t.Fatalf("%d events still stored after delivery", pending(t, hev2))
	}
	if !waitFor(t, waitTimeout, func() bool { return counter(e2.b, "unigate_broker_hook_events_delivered_total") >= uint64(want) }) {
		t.Fatalf("delivered counter %d, want %d", counter(e2.b, "unigate_broker_hook_events_delivered_total"), want)
	}
}

// TestDurableHookEventsOneNodeDelivers: two brokers (nodes) share the
// event stream. While node A's hook is down, node B delivers A's events,
// in order; once both are up, every event is delivered by exactly one of
// them (no ID twice).
func TestDurableHookEventsOneNodeDelivers(t *testing.T) {
	st := startStores(t, t.TempDir())
	log := &eventLog{}
	hookA := &logHook{node: "A", log: log}
	hookA.failing.Store(true)
	hookB := &logHook{node: "B", log: log}
	node := func(h *logHook) *testEnv {
		hev := openHookEventsT(t, st.node.JetStream(), HookEventsOptions{AckWait: 5 * time.Second})
		e, _ := startDurable(t, Options{AllowAnonymous: true, Backends: &Backends{
			Hook: h, HookMessages: true, Events: hev, EventRetry: 10 * time.Millisecond,
		}}, st.hist, st.conv)
		return e
	}
	a, b := node(hookA), node(hookB)

	want := chat(t, a, "a1", 4)
	if !waitFor(t, 10*time.Second, func() bool { return log.unique() == want }) {
		t.Fatalf("%d distinct events delivered, want %d", log.unique(), want)
	}
	evs, by := log.snapshot()
	for i, n := range by {
		if n != "B" {
			t.Fatalf("event %s delivered by %s, whose hook is down", evs[i].ID, n)
		}
	}
	checkOrder(t, evs)
	if hookA.calls.Load() == 0 {
		t.Log("node A never pulled an event (B took them all first)")
	}

	// Both up: each event goes to one node.
	hookA.failing.Store(false)
	before := len(evs)
	want += chat(t, a, "a2", 3)
	want += chat(t, b, "b1", 3)
	if !waitFor(t, 10*time.Second, func() bool { return log.unique() == want }) {
		t.Fatalf("%d distinct events delivered, want %d", log.unique(), want)
	}
	evs, by = log.snapshot()
	count := map[string]int{}
	nodes := map[string]int{}
	for i, ev := range evs[before:] {
		count[ev.ID]++
		nodes[by[before+i]]++
	}
	for id, n := range count {
		if n != 1 {
			t.Errorf("event %s delivered %d times with both nodes up", id, n)
		}
	}
	checkOrder(t, evs)
	t.Logf("with both nodes up: delivered by %v", nodes)
}

// TestDurableHookEventsFull: the stream holds at most MaxEvents. An event
// that follows durable state is never dropped for room: a message stored
// in History while the stream is full is not acked (nor delivered) until
// its message_stored event is stored, which happens once the hook drains
// the stream; then every event is delivered, in order, none dropped.
func TestDurableHookEventsFull(t *testing.T) {
	st := startStores(t, t.TempDir())
	log := &eventLog{}
	h := &logHook{node: "n", log: log}
	h.failing.Store(true)
	hev := openHookEventsT(t, st.node.JetStream(), HookEventsOptions{MaxEvents: 4, AckWait: 2 * time.Second})
	e, _ := startDurable(t, Options{AllowAnonymous: true, Backends: &Backends{
		Hook: h, HookMessages: true, Events: hev, EventRetry: 10 * time.Millisecond,
	}}, st.hist, st.conv)
	a := e.dial("a1", protocol.SubprotocolJSON)
	a.hello(protocol.Hello{Token: e.token("a1", "agent")})
	a.online(1)
	v := e.dial("visitor", protocol.SubprotocolJSON)
	v.hello(protocol.Hello{}) // visitor_connected: 1
	id := v.open(protocol.Open{}).ConversationID
	a.waitState(id, protocol.StateAssigned) // opened, assigned: 3
	v.say(id, "m1", "hello")                // message 1: 4, the stream is full
	send := v.send(protocol.Envelope{Kind: protocol.KindSend, Send: protocol.Send{ConversationID: id, ClientMsgID: "m2", Text: "still there?"}})
	// Message 2 is stored in History, its event is refused (full).
	if !waitFor(t, waitTimeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		last, _, ok, err := st.hist.Last(ctx, "default", id)
		return err == nil && ok && last.Seq == 2
	}) {
		t.Fatal("message 2 not stored in History")
	}
	if !waitFor(t, waitTimeout, func() bool { return pending(t, hev) == 4 }) {
		t.Fatalf("%d events stored, want the limit 4", pending(t, hev))
	}
	isAck := func(e *protocol.Envelope) bool { return e.ID == send && e.Kind == protocol.KindAck }
	// Its Ack waits for the event (the refusal is retried every 50ms up
	// to 5s; a few rounds of the spool have run once the stream was full
	// and the message stored).
	if len(v.all(isAck)) != 0 || slices.Contains(a.delivers(id), 2) {
		t.Fatalf("message 2 was acked or delivered while its event was not stored: acks %d, agent delivers %v",
			len(v.all(isAck)), a.delivers(id))
	}
	h.failing.Store(false)
	v.waitFor("the ack of message 2", isAck)
	a.waitDeliver(id, 2)
	if !waitFor(t, waitTimeout, func() bool { return log.unique() == 5 }) {
		t.Fatalf("%d delivered after the hook came back, want 5", log.unique())
	}
	evs, _ := log.snapshot()
	checkOrder(t, evs)
	if d := counter(e.b, "unigate_broker_hook_events_dropped_total"); d != 0 {
		t.Fatalf("%d events dropped", d)
	}
}

// TestHookEventRecord: an event survives the stored form field for field;
// with encryption at rest its text is sealed (absent from the stored
// bytes) and bound to the event id; malformed records are refused with
// ErrBadHookEvent.
func TestHookEventRecord(t *testing.T) {
	st := startStores(t, t.TempDir())
	material := make([]byte, atrest.MasterKeySize)
	rand.Read(material)
	mk, err := atrest.NewMasterKey(material)
	if err != nil {
		t.Fatal(err)
	}
	masters, _ := atrest.NewMasterKeys(mk)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ring, err := atrest.OpenKeyring(ctx, st.node.JetStream(), masters, atrest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()

	ev := backends.Event{
		ID: "c_x:message:7", Type: backends.EventMessageStored, Tenant: "acme", ConversationID: "c_x",
		VisitorID: "v_1", AgentID: "a1", FromAgentID: "a0", MessageID: "7", Text: "我的订单 42 还没到",
		At: time.UnixMilli(1767225600123), Attributes: map[string]string{"sender": "v_1", "role": "ROLE_VISITOR"},
	}
	for _, sealed := range []bool{false, true} {
		h := &HookEvents{}
		if sealed {
			h.sealer, h.seal = ring, true
		}
		raw, err := h.encode(&ev)
		if err != nil {
			t.Fatal(err)
		}
		if sealed == bytes.Contains(raw, []byte("订单")) {
			t.Fatalf("sealed=%v: stored form %s", sealed, raw)
		}
		got, err := decodeHookEvent(raw, ring)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(ev) {
			t.Fatalf("sealed=%v: round trip\n got %+v\nwant %+v", sealed, got, ev)
		}
		if sealed {
			if _, err := decodeHookEvent(raw, nil); !errors.Is(err, ErrBadHookEvent) {
				t.Fatalf("sealed text without a keyring: %v", err)
			}
			moved := bytes.Replace(raw, []byte(`"id":"c_x:message:7"`), []byte(`"id":"c_x:message:8"`), 1)
			if _, err := decodeHookEvent(moved, ring); !errors.Is(err, ErrBadHookEvent) {
				t.Fatalf("a sealed text moved to another event id opened: %v", err)
			}
		}
	}
	long := strings.Repeat("x", maxHookField+1)
	for name, raw := range map[string]string{
		"not json":        `{"v":1,`,
		"no version":      `{"id":"e","type":"conversation_opened","at":0}`,
		"future version":  `{"v":2,"id":"e","type":"conversation_opened","at":0}`,
		"unknown type":    `{"v":1,"id":"e","type":"conversation_exploded","at":0}`,
		"unspecified":     `{"v":1,"id":"e","type":"unspecified","at":0}`,
		"no id":           `{"v":1,"type":"conversation_opened","at":0}`,
		"long field":      `{"v":1,"id":"e","type":"conversation_opened","tenant":"` + long + `","at":0}`,
		"text and sealed": `{"v":1,"id":"e","type":"message_stored","text":"a","sealed":"AAAA","at":0}`,
		"bad sealed":      `{"v":1,"id":"e","type":"message_stored","sealed":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","at":0}`,
		"wrong types":     `{"v":"1","id":5,"type":"conversation_opened","at":"now"}`,
	} {
		if _, err := decodeHookEvent([]byte(raw), ring); !errors.Is(err, ErrBadHookEvent) {
			t.Errorf("%s: %v, want ErrBadHookEvent", name, err)
		}
	}
}

// TestDurableHookEventsStoreRetry: while the stream cannot take events
// (here: it was deleted; in production: no JetStream leader) they are
// published again, in order, until it can (a message's Ack waits for its
// event meanwhile); the deliverers ride out the missing consumers the
// same way.
func TestDurableHookEventsStoreRetry(t *testing.T) {
	st := startStores(t, t.TempDir())
	log := &eventLog{}
	h := &logHook{node: "n", log: log}
	o := HookEventsOptions{AckWait: 2 * time.Second}
	hev := openHookEventsT(t, st.node.JetStream(), o)
	e, _ := startDurable(t, Options{AllowAnonymous: true, Backends: &Backends{
		Hook: h, HookMessages: true, Events: hev, EventRetry: 5 * time.Millisecond,
	}}, st.hist, st.conv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.node.JetStream().DeleteStream(ctx, DefaultHookStream); err != nil {
		t.Fatal(err)
	}
	// The conversations' events are retried on the shard's side: the
	// chat goes on in the background until the stream is back.
	done := make(chan int, 1)
	go func() { done <- chat(t, e, "a1", 2) }()
	if !waitFor(t, 30*time.Second, func() bool { return e.b.Stats().MessagesRelayed > 0 }) {
		t.Fatal("no message stored in History")
	}
	if c := counter(e.b, "unigate_broker_hook_events_stored_total"); c != 0 {
		t.Fatalf("%d events stored without a stream", c)
	}
	openHookEventsT(t, st.node.JetStream(), o) // the stream is back
	var want int
	select {
	case want = <-done:
	case <-time.After(60 * time.Second): // (chat failed: its t.Fatal ended the goroutine)
		t.Fatal("the chat did not finish after the stream came back")
	}
	if !waitFor(t, 30*time.Second, func() bool { return log.unique() == want }) {
		t.Fatalf("%d distinct events delivered, want %d", log.unique(), want)
	}
	evs, _ := log.snapshot()
	checkOrder(t, evs)
	if d := counter(e.b, "unigate_broker_hook_events_dropped_total"); d != 0 {
		t.Fatalf("%d events dropped", d)
	}
}
