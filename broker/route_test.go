package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
	"github.com/unigate/unigate/protocol"
)

// gateRouter is a remote router whose every Rank waits until the test
// answers it (answer), or its context ends: the test decides what the
// "plugin" says and when, while the dispatcher goes on.
type gateRouter struct {
	calls chan *gateCall
}

type gateCall struct {
	req backends.RankRequest
	out chan gateAnswer
}

type gateAnswer struct {
	rk  backends.Ranking
	err error
}

func newGateRouter() *gateRouter { return &gateRouter{calls: make(chan *gateCall, 64)} }

func (g *gateRouter) Rank(ctx context.Context, req backends.RankRequest) (backends.Ranking, error) {
	c := &gateCall{req: req, out: make(chan gateAnswer, 1)}
	g.calls <- c
	select {
	case a := <-c.out:
		return a.rk, a.err
	case <-ctx.Done():
		return backends.Ranking{}, ctx.Err()
	}
}

// next returns the next call the dispatcher made.
func (g *gateRouter) next(t *testing.T) *gateCall {
	t.Helper()
	select {
	case c := <-g.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the dispatcher did not call the router")
		return nil
	}
}

// none checks that no call is waiting.
func (g *gateRouter) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-g.calls:
		t.Fatalf("unexpected router call for %s", c.req.Conversation.ID)
	default:
	}
}

// rank answers the call with agents in this order.
func (c *gateCall) rank(ids ...string) {
	rk := backends.Ranking{Explanation: "plugin says " + strings.Join(ids, ">")}
	for _, id := range ids {
		rk.Agents = append(rk.Agents, backends.Ranked{AgentID: id, Score: 1})
	}
	c.out <- gateAnswer{rk: rk}
}

func (c *gateCall) fail(err error) { c.out <- gateAnswer{err: err} }

func (c *gateCall) candidates() []string {
	var ids []string
	for _, a := range c.req.Candidates {
		ids = append(ids, a.ID)
	}
	slices.Sort(ids)
	return ids
}

// syncRecorder collects what a dispatcher posts from any goroutine (the
// workers commit decisions).
type syncRecorder struct {
	mu    sync.Mutex
	posts []ctrl
}

func (r *syncRecorder) post(_ int, c ctrl) {
	r.mu.Lock()
	r.posts = append(r.posts, c)
	r.mu.Unlock()
}

// assigned returns the assignments so far, "conv>agent", and their notes.
func (r *syncRecorder) assigned() (got, notes []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.posts {
		if c.kind == ctrlAssign {
			got = append(got, c.conv+">"+c.u.id)
			notes = append(notes, c.note)
		}
	}
	return got, notes
}

// waitAssigned waits until n assignments were posted and returns them.
func (r *syncRecorder) waitAssigned(t *testing.T, n int) (got, notes []string) {
	t.Helper()
	if !waitFor(t, 10*time.Second, func() bool { got, _ := r.assigned(); return len(got) >= n }) {
		got, _ := r.assigned()
		t.Fatalf("assignments %v, want %d", got, n)
	}
	return r.assigned()
}

// routeEnv is a dispatcher with a gate router as its remote router, the
// built-in scorer as its in-process one, and real goroutines as workers.
type routeEnv struct {
	d    *dispatcher
	r    *syncRecorder
	g    *gateRouter
	set  *metrics.Set
	busy bool // submit refuses (all workers busy)
	mu   sync.Mutex
}

func newRouteEnv(t *testing.T, maxInFlight int) *routeEnv {
	e := &routeEnv{r: &syncRecorder{}, g: newGateRouter(), set: metrics.NewSet()}
	e.d = newDispatcher(100, e.r.post)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	submit := func(job func(context.Context)) bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.busy {
			return false
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			job(cctx)
		})
		return true
	}
	e.d.useRouters(&builtin.ScoringRouter{}, e.g, submit, maxInFlight, e.set)
	return e
}

// agent brings an agent online with capacity and region (skills from its
// user).
func (e *routeEnv) agent(id string, capacity int, region string, skills ...string) {
	e.d.presence(newAgentUser(id, "t", skills...), protocol.StatusOnline, capacity, 5, nil, region)
}

func (e *routeEnv) enqueue(t *testing.T, conv string, ri routeInfo) {
	t.Helper()
	if err := e.d.enqueue("t", conv, 0, ri); err != nil {
		t.Fatal(err)
	}
}

func (e *routeEnv) metric(name string) int {
	var b bytes.Buffer
	e.set.WritePrometheus(&b)
	for line := range strings.SplitSeq(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var n int
			fmt.Sscan(rest, &n)
			return n
		}
	}
	return -1
}

func (e *routeEnv) reserved(id string) int {
	e.d.mu.Lock()
	defer e.d.mu.Unlock()
	return e.d.agents[id].reserved
}

// inFlight checks that n decisions are in flight (taken under the lock:
// a call the dispatcher started is counted before its goroutine runs).
func (e *routeEnv) inFlight(t *testing.T, n int) {
	t.Helper()
	e.d.mu.Lock()
	got := e.d.routing
	e.d.mu.Unlock()
	if got != n {
		t.Fatalf("%d routing decisions in flight, want %d", got, n)
	}
}

func (e *routeEnv) idle(t *testing.T) {
	t.Helper()
	if !waitFor(t, 10*time.Second, func() bool {
		e.d.mu.Lock()
		defer e.d.mu.Unlock()
		return e.d.routing == 0
	}) {
		t.Fatal("routing decisions still in flight")
	}
}

// TestRoutePluginChoiceWins: the conversation goes to the agent the remote
// router ranks first, although the built-in scorer prefers another (same
// region, lower load), with the remote router's explanation; the
// candidates it was given are the available agents serving the skill.
func TestRoutePluginChoiceWins(t *testing.T) {
	e := newRouteEnv(t, 8)
	e.agent("near", 5, "cn-east", "billing")
	e.agent("far", 5, "us-west", "billing")
	e.agent("sales", 5, "cn-east", "sales")
	e.enqueue(t, "c1", routeInfo{skill: "billing/refund", region: "cn-east"})
	c := e.g.next(t)
	if got := c.candidates(); !slices.Equal(got, []string{"far", "near"}) {
		t.Fatalf("candidates %v, want far and near", got)
	}
	if c.req.Conversation.Region != "cn-east" || !slices.Equal(c.req.Conversation.Skills, []string{"billing/refund"}) {
		t.Fatalf("conversation %+v", c.req.Conversation)
	}
	if got, _ := e.r.assigned(); len(got) != 0 {
		t.Fatalf("assigned before the router answered: %v", got)
	}
	c.rank("far", "near")
	got, notes := e.r.waitAssigned(t, 1)
	if got[0] != "c1>far" || notes[0] != "plugin says far>near" {
		t.Fatalf("assigned %v %q, want c1>far with the plugin's explanation", got, notes)
	}
	e.idle(t)
	if n := e.metric(`unigate_broker_router_decisions_total{by="plugin"}`); n != 1 {
		t.Fatalf("plugin decisions %d, want 1", n)
	}
	if e.reserved("far") != 0 || e.reserved("near") != 0 {
		t.Fatal("reservations left after the decision")
	}
}

// TestRouteRevalidates: what changed while the remote router was deciding
// is checked before its decision is committed.
func TestRouteRevalidates(t *testing.T) {
	tests := []struct {
		name      string
		meanwhile func(e *routeEnv)
		answer    func(c *gateCall)
		want      string // "conv>agent", "" for none
		note      string // the explanation starts with it
		metric    string
		queued    int
	}{
		{
			name:      "the chosen agent went away: the next of the ranking",
			meanwhile: func(e *routeEnv) { e.d.presence(newAgentUser("a", "t", "billing"), protocol.StatusAway, 0, 5, nil, "") },
			answer:    func(c *gateCall) { c.rank("a", "b") },
			want:      "c1>b", note: "plugin says a>b",
			metric: `unigate_broker_router_decisions_total{by="plugin"}`,
		},
		{
			name:      "the only ranked agent went offline: the built-in scorer picks among those left",
			meanwhile: func(e *routeEnv) { e.d.setOffline("a") },
			answer:    func(c *gateCall) { c.rank("a") },
			want:      "c1>b", note: routeFellBackStale + "; weights",
			metric: `unigate_broker_router_decisions_total{by="fallback",reason="stale"}`,
		},
		{
			name: "the chosen agent was filled by a transfer: the next of the ranking",
			meanwhile: func(e *routeEnv) {
				// "a" has one slot; an explicit transfer takes it.
				e.d.presence(newAgentUser("x", "t", "billing"), protocol.StatusOnline, 1, 5, nil, "")
				e.d.mu.Lock()
				x := e.d.agents["x"]
				x.load, x.convs["other"] = 1, struct{}{}
				e.d.mu.Unlock()
				if _, err := e.d.transfer("x", "a", "other"); err != nil {
					panic(err)
				}
			},
			answer: func(c *gateCall) { c.rank("a", "b") },
			want:   "c1>b", note: "plugin says",
			metric: `unigate_broker_router_decisions_total{by="plugin"}`,
		},
		{
			name:      "the conversation left: the answer is dropped",
			meanwhile: func(e *routeEnv) { e.d.cancel("t", "c1") },
			answer:    func(c *gateCall) { c.rank("a") },
			want:      "",
			metric:    `unigate_broker_router_discarded_total{reason="left"}`,
		},
		{
			name:   "the plugin failed: the built-in scorer",
			answer: func(c *gateCall) { c.fail(errors.New("plugin crashed")) },
			want:   "c1>a", note: routeFellBackError + " (error); weights",
			metric: `unigate_broker_router_decisions_total{by="fallback",reason="error"}`,
		},
		{
			name:   "the plugin timed out",
			answer: func(c *gateCall) { c.fail(fmt.Errorf("call timed out: %w", context.DeadlineExceeded)) },
			want:   "c1>a", note: routeFellBackError + " (timeout)",
			metric: `unigate_broker_router_decisions_total{by="fallback",reason="error"}`,
		},
		{
			name:   "the plugin ranked an agent of another tenant and an unknown one",
			answer: func(c *gateCall) { c.rank("other-tenant", "ghost") },
			want:   "c1>a", note: routeFellBackStale,
			metric: `unigate_broker_router_decisions_total{by="fallback",reason="stale"}`,
		},
		{
			name: "nobody is eligible any more: the conversation keeps waiting",
			meanwhile: func(e *routeEnv) {
				e.d.setOffline("a")
				e.d.setOffline("b")
			},
			answer: func(c *gateCall) { c.rank("a", "b") },
			want:   "",
			metric: `unigate_broker_router_discarded_total{reason="no_agent"}`,
			queued: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRouteEnv(t, 8)
			e.d.presence(newAgentUser("other-tenant", "t2", "billing"), protocol.StatusOnline, 5, 5, nil, "cn-east")
			e.agent("a", 1, "cn-east", "billing") // the scorer's choice: same region
			e.agent("b", 5, "us-west", "billing")
			e.enqueue(t, "c1", routeInfo{skill: "billing", region: "cn-east"})
			c := e.g.next(t)
			if e.reserved("a") != 1 || e.reserved("b") != 1 {
				t.Fatalf("reserved a %d b %d, want 1 each", e.reserved("a"), e.reserved("b"))
			}
			if tt.meanwhile != nil {
				tt.meanwhile(e)
			}
			tt.answer(c)
			e.idle(t)
			got, notes := e.r.assigned()
			if tt.want == "" {
				if len(got) != 0 {
					t.Fatalf("assigned %v, want nothing", got)
				}
			} else if len(got) != 1 || got[0] != tt.want || !strings.HasPrefix(notes[0], tt.note) {
				t.Fatalf("assigned %v %q, want %s with an explanation starting %q", got, notes, tt.want, tt.note)
			}
			if n := e.metric(tt.metric); n != 1 {
				t.Fatalf("%s = %d, want 1", tt.metric, n)
			}
			if e.reserved("a") != 0 || e.reserved("b") != 0 {
				t.Fatal("reservations left after the decision")
			}
			if q := int(e.d.queueLen.Load()); q != tt.queued {
				t.Fatalf("queue length %d, want %d", q, tt.queued)
			}
			if tt.queued > 0 {
				// It is routed again when an agent comes back.
				e.agent("b", 5, "us-west", "billing")
				e.g.next(t).rank("b")
				if got, _ := e.r.waitAssigned(t, 1); got[0] != "c1>b" {
					t.Fatalf("assigned %v after b came back, want c1>b", got)
				}
			}
			e.g.none(t)
		})
	}
}

// TestRouteFairness: while a decision is pending, the slot it may choose
// is nobody else's: a later conversation waits for it (one free slot in
// all), even one of a higher priority; but it does not wait for agents the
// pending one cannot use, or for slots beyond the reservations, and an
// answer that arrives first does not take the earlier one's slot.
func TestRouteFairness(t *testing.T) {
	t.Run("one slot: the later conversation waits for the pending decision", func(t *testing.T) {
		e := newRouteEnv(t, 8)
		e.agent("a", 1, "", "billing")
		e.enqueue(t, "c1", routeInfo{skill: "billing"})
		c1 := e.g.next(t)
		e.enqueue(t, "c2", routeInfo{skill: "billing"})
		e.enqueue(t, "vip", routeInfo{skill: "billing", prio: 9})
		e.inFlight(t, 1) // neither is routed: a's slot is c1's until it is decided
		if got, _ := e.r.assigned(); len(got) != 0 {
			t.Fatalf("assigned %v while c1 was pending", got)
		}
		c1.rank("a")
		if got, _ := e.r.waitAssigned(t, 1); got[0] != "c1>a" {
			t.Fatalf("assigned %v, want c1>a", got)
		}
		e.idle(t) // a is full now: nothing else is routed
		e.d.release("a", "c1")
		c := e.g.next(t) // then the higher priority, ahead of c2
		if c.req.Conversation.ID != "vip" {
			t.Fatalf("routed %s next, want vip", c.req.Conversation.ID)
		}
		c.rank("a")
		e.r.waitAssigned(t, 2)
	})
	t.Run("disjoint skills do not wait", func(t *testing.T) {
		e := newRouteEnv(t, 8)
		e.agent("bill", 1, "", "billing")
		e.agent("sell", 1, "", "sales")
		e.enqueue(t, "c1", routeInfo{skill: "billing"})
		c1 := e.g.next(t)
		e.enqueue(t, "c2", routeInfo{skill: "sales"})
		c2 := e.g.next(t)
		if got := c2.candidates(); !slices.Equal(got, []string{"sell"}) {
			t.Fatalf("c2's candidates %v, want sell", got)
		}
		c2.rank("sell")
		if got, _ := e.r.waitAssigned(t, 1); got[0] != "c2>sell" {
			t.Fatalf("assigned %v, want c2>sell while c1 is pending", got)
		}
		c1.rank("bill")
		e.r.waitAssigned(t, 2)
	})
	t.Run("a later answer arriving first leaves the earlier one its slot", func(t *testing.T) {
		e := newRouteEnv(t, 8)
		e.agent("a", 2, "", "billing")
		e.agent("b", 1, "", "billing")
		e.enqueue(t, "c1", routeInfo{skill: "billing"}) // reserves a and b
		c1 := e.g.next(t)
		e.enqueue(t, "c2", routeInfo{skill: "billing"}) // a's second slot only
		c2 := e.g.next(t)
		if got := c2.candidates(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("c2's candidates %v, want a (b's only slot is c1's)", got)
		}
		e.enqueue(t, "c3", routeInfo{skill: "billing"})
		e.inFlight(t, 2) // everything is reserved
		c2.rank("a")
		e.r.waitAssigned(t, 1)
		c1.rank("a", "b") // a still has the slot c1 reserved
		got, _ := e.r.waitAssigned(t, 2)
		if !slices.Equal(got, []string{"c2>a", "c1>a"}) {
			t.Fatalf("assigned %v, want c2>a then c1>a", got)
		}
		// b is free again: c3 is routed to it.
		c3 := e.g.next(t)
		if got := c3.candidates(); !slices.Equal(got, []string{"b"}) {
			t.Fatalf("c3's candidates %v, want b", got)
		}
		c3.rank("b")
		e.r.waitAssigned(t, 3)
	})
}

// TestRouteLimits: with every worker busy the in-process router decides
// at once; beyond maxRouting decisions in flight, conversations wait
// (another tenant's too) and are routed when one ends.
func TestRouteLimits(t *testing.T) {
	t.Run("workers busy", func(t *testing.T) {
		e := newRouteEnv(t, 8)
		e.busy = true
		e.agent("a", 1, "cn-east", "billing")
		e.enqueue(t, "c1", routeInfo{skill: "billing"})
		got, notes := e.r.assigned()
		if len(got) != 1 || got[0] != "c1>a" || !strings.HasPrefix(notes[0], routeFellBackBusy+"; weights") {
			t.Fatalf("assigned %v %q, want c1>a by the built-in scorer at once", got, notes)
		}
		if n := e.metric(`unigate_broker_router_decisions_total{by="fallback",reason="busy"}`); n != 1 {
			t.Fatalf("busy fallbacks %d, want 1", n)
		}
	})
	t.Run("decisions in flight", func(t *testing.T) {
		e := newRouteEnv(t, 1)
		e.agent("a", 5, "", "billing")
		e.d.presence(newAgentUser("z", "t2"), protocol.StatusOnline, 5, 5, nil, "")
		e.enqueue(t, "c1", routeInfo{skill: "billing"})
		c1 := e.g.next(t)
		if err := e.d.enqueue("t2", "other", 0, routeInfo{}); err != nil {
			t.Fatal(err)
		}
		e.enqueue(t, "c2", routeInfo{skill: "billing"})
		e.inFlight(t, 1)
		c1.rank("a")
		// Then the two that waited, one at a time.
		for range 2 {
			c := e.g.next(t)
			c.rank(c.req.Candidates[0].ID)
		}
		got, _ := e.r.waitAssigned(t, 3)
		slices.Sort(got)
		if want := []string{"c1>a", "c2>a", "other>z"}; !slices.Equal(got, want) {
			t.Fatalf("assigned %v, want %v", got, want)
		}
	})
}

// TestRouteExplicitActionsWin: the integrator API's assignment of a
// conversation whose decision is pending takes it out of the queue, and
// the decision's answer is dropped.
func TestRouteExplicitActionsWin(t *testing.T) {
	e := newRouteEnv(t, 8)
	e.agent("a", 1, "", "billing")
	e.agent("b", 1, "", "billing")
	e.enqueue(t, "c1", routeInfo{skill: "billing"})
	c := e.g.next(t)
	if _, err := e.d.take("t", "c1", "b"); err != nil {
		t.Fatal(err)
	}
	if e.reserved("a") != 0 || e.reserved("b") != 0 {
		t.Fatal("the taken conversation's reservations were kept")
	}
	c.rank("a")
	e.idle(t)
	if got, _ := e.r.assigned(); len(got) != 0 {
		t.Fatalf("assigned %v after the API took it", got)
	}
	if n := e.metric(`unigate_broker_router_discarded_total{reason="left"}`); n != 1 {
		t.Fatalf("discarded %d, want 1", n)
	}
	if l, _, _ := e.d.agentLoad("a"); l != 0 {
		t.Fatalf("a's load %d, want 0", l)
	}
}

// TestRouterPluginInBroker: a broker whose router is remote (a gate
// router standing for the plugin), with real WebSocket clients. The
// conversation goes to the agent the router ranks first; an agent that
// went away while the router was deciding is not given the conversation
// (the built-in scorer picks among those left, and says so); a
// conversation the visitor closed meanwhile is not assigned, and the slots
// it held go to the next one.
func TestRouterPluginInBroker(t *testing.T) {
	g := newGateRouter()
	e := startEnv(t, Options{AllowAnonymous: true, Backends: &Backends{Router: &builtin.ScoringRouter{}, RouterPlugin: g}})
	agents := map[string]*tclient{}
	for _, a := range []struct{ id, region string }{{"a-east", "cn-east"}, {"z-west", "us-west"}} {
		c := e.dial(a.id, protocol.SubprotocolJSON)
		c.hello(protocol.Hello{Token: e.token(a.id, "agent", "billing")})
		id := c.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 1, Region: a.region}})
		c.waitFor("presence", func(e *protocol.Envelope) bool { return e.Kind == protocol.KindPresence && e.ID == id })
		agents[a.id] = c
	}
	isConv := func(conv string) func(*protocol.Envelope) bool {
		return func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == conv
		}
	}

	// 1. The router's choice, although the scorer prefers a-east.
	v1 := e.dial("v1", protocol.SubprotocolJSON)
	v1.hello(protocol.Hello{})
	id1 := v1.open(protocol.Open{Skill: "billing", Region: "cn-east"}).ConversationID
	c := g.next(t)
	if c.req.Conversation.ID != id1 || len(c.req.Candidates) != 2 {
		t.Fatalf("router asked %+v", c.req)
	}
	c.rank("z-west", "a-east")
	if got := agents["z-west"].waitState(id1, protocol.StateAssigned); got.Routing != "plugin says z-west>a-east" {
		t.Fatalf("routing %q, want the plugin's explanation", got.Routing)
	}
	v1.waitState(id1, protocol.StateAssigned)

	// 2. z-west is full now; a-east goes away while the router decides
	// about the next visitor: nobody is eligible when the answer comes, the
	// conversation waits, and a-east coming back gets it.
	v2 := e.dial("v2", protocol.SubprotocolJSON)
	v2.hello(protocol.Hello{})
	id2 := v2.open(protocol.Open{Skill: "billing", Region: "cn-east"}).ConversationID
	c = g.next(t)
	a := agents["a-east"]
	pid := a.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusAway}})
	a.waitFor("away", func(e *protocol.Envelope) bool { return e.Kind == protocol.KindPresence && e.ID == pid })
	c.rank("a-east")
	if !waitFor(t, 5*time.Second, func() bool { return e.b.Stats().QueueLength == 1 && e.b.disp.idle() }) {
		t.Fatal("the answer was not dropped")
	}
	if a.all(isConv(id2)) != nil {
		t.Fatal("a-east was given a conversation while away")
	}
	a.online(1)
	g.next(t).fail(errors.New("plugin down"))
	if got := a.waitState(id2, protocol.StateAssigned); !strings.HasPrefix(got.Routing, routeFellBackError+" (error); weights") {
		t.Fatalf("routing %q, want the built-in scorer's, saying the plugin failed", got.Routing)
	}

	// 3. Both agents full; v3 waits. z-west frees its slot (closes id1):
	// v3 is routed; v3 closes its conversation while the router decides:
	// it is not assigned, and v4 gets the slot.
	v3 := e.dial("v3", protocol.SubprotocolJSON)
	v3.hello(protocol.Hello{})
	id3 := v3.open(protocol.Open{Skill: "billing"}).ConversationID
	z := agents["z-west"]
	z.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: id1}})
	c = g.next(t)
	if c.req.Conversation.ID != id3 {
		t.Fatalf("router asked about %s, want %s", c.req.Conversation.ID, id3)
	}
	v4 := e.dial("v4", protocol.SubprotocolJSON)
	v4.hello(protocol.Hello{})
	id4 := v4.open(protocol.Open{Skill: "billing"}).ConversationID // waits: z-west's slot is reserved for id3
	v3.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: id3}})
	v3.waitState(id3, protocol.StateClosed)
	c4 := g.next(t) // the reservation was released when id3 left
	if c4.req.Conversation.ID != id4 {
		t.Fatalf("router asked about %s, want %s", c4.req.Conversation.ID, id4)
	}
	c.rank("z-west") // id3's answer, too late
	c4.rank("z-west")
	z.waitState(id4, protocol.StateAssigned)
	if z.all(func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == id3 && e.Conversation.State == protocol.StateAssigned
	}) != nil {
		t.Fatal("the closed conversation was assigned")
	}
}

// BenchmarkAssignTwoPhase: a whole two-phase decision among 1,000 online
// agents with the built-in scorer's Rank standing for the remote router
// (no process, no IPC): phase 1 under the lock (the snapshot, a slot of
// each candidate reserved, the call handed to a goroutine), the ranking
// off the lock, phase 2 under the lock (revalidation, commit). p50/p99
// are per decision, from the enqueue to the posted assignment. Add
// BenchmarkRouterCall's round trip for a plugin.
func BenchmarkAssignTwoPhase(b *testing.B) {
	assigned := make(chan ctrl, 1)
	d := newDispatcher(1<<20, func(_ int, c ctrl) {
		if c.kind == ctrlAssign {
			assigned <- c
		}
	})
	submit := func(job func(context.Context)) bool {
		go job(context.Background())
		return true
	}
	d.useRouters(&builtin.ScoringRouter{}, &builtin.ScoringRouter{}, submit, 32, metrics.NewSet())
	ri := benchAgents(d)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if err := d.enqueue("t", "c", 0, ri); err != nil {
			b.Fatal(err)
		}
		c := <-assigned
		lat = append(lat, time.Since(t0))
		d.release(c.u.id, "c")
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// TestRouteExplanationIsBounded: the plugin's explanation reaches the
// agent cut to 1 KiB and as valid UTF-8 (it goes into protobuf strings).
func TestRouteExplanationIsBounded(t *testing.T) {
	e := newRouteEnv(t, 8)
	e.agent("a", 1, "", "billing")
	e.enqueue(t, "c1", routeInfo{skill: "billing"})
	c := e.g.next(t)
	c.out <- gateAnswer{rk: backends.Ranking{
		Agents:      []backends.Ranked{{AgentID: "a", Score: 1}},
		Explanation: "\xff\xfe bad bytes, then " + strings.Repeat("说明", 1000),
	}}
	_, notes := e.r.waitAssigned(t, 1)
	if len(notes[0]) > maxRoutingNote+3 || !utf8.ValidString(notes[0]) || !strings.Contains(notes[0], "bad bytes") {
		t.Fatalf("explanation of %d bytes, valid UTF-8 %v: %q…", len(notes[0]), utf8.ValidString(notes[0]), notes[0][:40])
	}
}
