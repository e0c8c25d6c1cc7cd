package broker

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
	"github.com/unigate/unigate/protocol"
)

func agentFor(id string, load, capacity int, lastAssign uint64, skills ...string) *agentSlot {
	return &agentSlot{
		id: id, status: protocol.StatusOnline, load: load, capacity: capacity,
		lastAssign: lastAssign, skills: skills, convs: map[string]struct{}{},
	}
}

func TestWaitsBefore(t *testing.T) {
	tests := []struct {
		name string
		a, b waiting
		want bool
	}{
		{"higher priority first", waiting{routeInfo: routeInfo{prio: 2}, seq: 9}, waiting{routeInfo: routeInfo{prio: 1}, seq: 1}, true},
		{"lower priority after", waiting{routeInfo: routeInfo{prio: 0}, seq: 1}, waiting{routeInfo: routeInfo{prio: 1}, seq: 9}, false},
		{"boosted before new", waiting{boosted: true, seq: 9}, waiting{seq: 1}, true},
		{"new after boosted", waiting{seq: 1}, waiting{boosted: true, seq: 9}, false},
		{"priority beats boost", waiting{routeInfo: routeInfo{prio: 1}, seq: 9}, waiting{boosted: true, seq: 1}, true},
		{"fifo", waiting{seq: 1}, waiting{seq: 2}, true},
		{"fifo reversed", waiting{seq: 2}, waiting{seq: 1}, false},
		{"fifo among boosted", waiting{boosted: true, seq: 3}, waiting{boosted: true, seq: 4}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := waitsBefore(&tt.a, &tt.b); got != tt.want {
				t.Fatalf("waitsBefore = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPickAgent(t *testing.T) {
	tests := []struct {
		name   string
		agents []*agentSlot
		skill  string
		want   string
	}{
		{"lowest load ratio", []*agentSlot{agentFor("a", 2, 4, 0), agentFor("b", 1, 4, 0)}, "", "b"},
		{"ratio, not count", []*agentSlot{agentFor("a", 1, 2, 0), agentFor("b", 2, 10, 0)}, "", "b"},
		{"equal ratio: fewer assigned", []*agentSlot{agentFor("a", 2, 4, 0), agentFor("b", 1, 2, 0)}, "", "b"},
		{"equal load: idle longer", []*agentSlot{agentFor("a", 1, 4, 7), agentFor("b", 1, 4, 3)}, "", "b"},
		{"all equal: smaller id", []*agentSlot{agentFor("b", 0, 4, 0), agentFor("a", 0, 4, 0)}, "", "a"},
		{"skill filter", []*agentSlot{agentFor("a", 0, 4, 0, "sales"), agentFor("b", 3, 4, 0, "billing")}, "billing", "b"},
		{"empty skill means any", []*agentSlot{agentFor("a", 0, 4, 0, "sales")}, "", "a"},
		{"full agent skipped", []*agentSlot{agentFor("a", 4, 4, 0), agentFor("b", 3, 4, 0)}, "", "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := pickAgent(tt.agents, tt.skill)
			if got == nil || got.id != tt.want {
				t.Fatalf("pickAgent = %v, want %s", got, tt.want)
			}
		})
	}
}

func TestPickAgentNone(t *testing.T) {
	away := agentFor("away", 0, 4, 0)
	away.status = protocol.StatusAway
	offline := agentFor("off", 0, 4, 0)
	offline.status = protocol.StatusOffline
	tests := []struct {
		name   string
		agents []*agentSlot
		skill  string
	}{
		{"no agents", nil, ""},
		{"all full", []*agentSlot{agentFor("a", 2, 2, 0), agentFor("b", 5, 5, 0)}, ""},
		{"wrong skill", []*agentSlot{agentFor("a", 0, 2, 0, "sales")}, "billing"},
		{"agent without skills, skill wanted", []*agentSlot{agentFor("a", 0, 2, 0)}, "billing"},
		{"away and offline", []*agentSlot{away, offline}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pickAgent(tt.agents, tt.skill); got != nil {
				t.Fatalf("pickAgent = %s, want nil", got.id)
			}
		})
	}
}

func TestTenantPoolInsertOrder(t *testing.T) {
	var p tenantPool
	for _, w := range []waiting{
		{conv: "n1", seq: 1},
		{conv: "n2", seq: 2},
		{conv: "vip", routeInfo: routeInfo{prio: 5}, seq: 3},
		{conv: "b1", boosted: true, seq: 4},
		{conv: "n3", seq: 5},
		{conv: "b2", boosted: true, seq: 6},
	} {
		p.insert(&w)
	}
	want := []string{"vip", "b1", "b2", "n1", "n2", "n3"}
	if got := queueIDs(&p); !slices.Equal(got, want) {
		t.Fatalf("queue %v, want %v", got, want)
	}
	if p.remove("b1") == nil || p.remove("b1") != nil {
		t.Fatal("remove: want the conversation, then nil")
	}
}

func queueIDs(p *tenantPool) []string {
	var ids []string
	for _, w := range p.queue {
		ids = append(ids, w.conv)
	}
	return ids
}

func TestTenantPoolDrain(t *testing.T) {
	tests := []struct {
		name      string
		agents    []*agentSlot
		queue     []waiting
		assigned  []string // "conv>agent" in order
		remaining []string
	}{
		{
			name:      "fifo up to capacity",
			agents:    []*agentSlot{agentFor("a", 0, 2, 0)},
			queue:     []waiting{{conv: "1", seq: 1}, {conv: "2", seq: 2}, {conv: "3", seq: 3}},
			assigned:  []string{"1>a", "2>a"},
			remaining: []string{"3"},
		},
		{
			name:      "spread by load",
			agents:    []*agentSlot{agentFor("a", 0, 2, 0), agentFor("b", 0, 2, 0)},
			queue:     []waiting{{conv: "1", seq: 1}, {conv: "2", seq: 2}, {conv: "3", seq: 3}},
			assigned:  []string{"1>a", "2>b", "3>a"},
			remaining: nil,
		},
		{
			name:      "unservable skill does not block",
			agents:    []*agentSlot{agentFor("a", 0, 2, 0, "sales")},
			queue:     []waiting{{conv: "1", routeInfo: routeInfo{skill: "billing"}, seq: 1}, {conv: "2", routeInfo: routeInfo{skill: "sales"}, seq: 2}},
			assigned:  []string{"2>a"},
			remaining: []string{"1"},
		},
		{
			name:      "nobody available",
			agents:    []*agentSlot{agentFor("a", 2, 2, 0)},
			queue:     []waiting{{conv: "1", seq: 1}},
			assigned:  nil,
			remaining: []string{"1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tenantPool{agents: tt.agents}
			for i := range tt.queue {
				p.insert(&tt.queue[i])
			}
			var clock uint64
			var got []string
			n := p.drain(&clock, pickFirst, func(w *waiting, a *agentSlot, _ string) { got = append(got, w.conv+">"+a.id) })
			if n != len(got) || !slices.Equal(got, tt.assigned) {
				t.Fatalf("assigned %v (n=%d), want %v", got, n, tt.assigned)
			}
			if rem := queueIDs(&p); !slices.Equal(rem, tt.remaining) {
				t.Fatalf("remaining %v, want %v", rem, tt.remaining)
			}
			for _, a := range tt.agents {
				if a.load > a.capacity {
					t.Fatalf("agent %s over capacity: %d/%d", a.id, a.load, a.capacity)
				}
			}
			for _, pair := range got {
				conv, agent, _ := strings.Cut(pair, ">")
				for _, a := range tt.agents {
					if _, ok := a.convs[conv]; ok != (a.id == agent) {
						t.Fatalf("conversation %s in convs of %s: %v", conv, a.id, ok)
					}
				}
			}
		})
	}
}

func TestTenantPoolPositions(t *testing.T) {
	for _, rule := range []posRule{
		{exact: DefaultPositionExact, step: DefaultPositionStep},
		{exact: 20, step: 7},
		{exact: 1, step: 1}, // every change
	} {
		t.Run(fmt.Sprintf("exact%d-step%d", rule.exact, rule.step), func(t *testing.T) {
			var p tenantPool
			for i := range 250 {
				p.insert(&waiting{conv: string(rune('a' + i%26)), seq: uint64(i + 1)})
			}
			sent := map[uint64]uint32{}
			p.positions(rule, func(w *waiting, pos, _ uint32) { sent[w.seq] = pos })
			if len(sent) != 250 {
				t.Fatalf("first round: %d positions sent, want all 250", len(sent))
			}
			// The head leaves: the first rule.exact places move, further
			// back only multiples of rule.step are sent.
			p.queue = p.queue[1:]
			clear(sent)
			p.positions(rule, func(w *waiting, pos, _ uint32) { sent[w.seq] = pos })
			want := 0
			for pos := uint32(1); pos <= 249; pos++ {
				if pos <= rule.exact || pos%rule.step == 0 {
					want++
				}
			}
			for seq, pos := range sent {
				if pos != uint32(seq-1) {
					t.Fatalf("seq %d got position %d, want %d", seq, pos, seq-1)
				}
				if pos > rule.exact && pos%rule.step != 0 {
					t.Fatalf("position %d sent beyond the exact range", pos)
				}
			}
			if len(sent) != want {
				t.Fatalf("%d updates, want %d", len(sent), want)
			}
			clear(sent)
			p.positions(rule, func(w *waiting, pos, _ uint32) { sent[w.seq] = pos })
			if len(sent) != 0 {
				t.Fatalf("no change, yet %d updates", len(sent))
			}
		})
	}
}

// recorder collects what a dispatcher posts.
type recorder struct{ posts []ctrl }

func (r *recorder) post(_ int, c ctrl) { r.posts = append(r.posts, c) }

func (r *recorder) assigned() []string {
	var s []string
	for _, c := range r.posts {
		if c.kind == ctrlAssign {
			s = append(s, c.conv+">"+c.u.id)
		}
	}
	return s
}

func (r *recorder) lastPosition(conv string) uint32 {
	var pos uint32
	for _, c := range r.posts {
		if c.kind == ctrlPosition && c.conv == conv {
			pos = uint32(c.seq)
		}
	}
	return pos
}

func newAgentUser(id, tenant string, skills ...string) *user {
	return &user{id: id, role: protocol.RoleAgent, tenant: tenant, skills: skills, convs: map[string]struct{}{}}
}

func TestDispatcherFlow(t *testing.T) {
	var r recorder
	d := newDispatcher(3, r.post)
	for _, c := range []string{"c1", "c2", "c3"} {
		if err := d.enqueue("t", c, 0, routeInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.queueLen.Load(); got != 3 {
		t.Fatalf("queue length %d, want 3", got)
	}
	if p := r.lastPosition("c3"); p != 3 {
		t.Fatalf("c3 position %d, want 3", p)
	}
	a := newAgentUser("a", "t")
	res := d.presence(a, protocol.StatusOnline, 2, 5, nil, "")
	if res.capacity != 2 || res.status != protocol.StatusOnline {
		t.Fatalf("presence result %+v", res)
	}
	if got, want := r.assigned(), []string{"c1>a", "c2>a"}; !slices.Equal(got, want) {
		t.Fatalf("assigned %v, want %v", got, want)
	}
	if p := r.lastPosition("c3"); p != 1 {
		t.Fatalf("c3 position %d, want 1", p)
	}
	d.release("a", "c1")
	d.release("a", "c1") // a second release is a no-op
	if got, want := r.assigned(), []string{"c1>a", "c2>a", "c3>a"}; !slices.Equal(got, want) {
		t.Fatalf("assigned %v, want %v", got, want)
	}
	if load, _, _ := d.agentLoad("a"); load != 2 {
		t.Fatalf("load %d, want 2", load)
	}
	if d.queueLen.Load() != 0 || d.online.Load() != 1 {
		t.Fatalf("queue %d online %d", d.queueLen.Load(), d.online.Load())
	}
}

func TestDispatcherTenantsAreSeparate(t *testing.T) {
	var r recorder
	d := newDispatcher(10, r.post)
	d.presence(newAgentUser("a", "t1"), protocol.StatusOnline, 2, 5, nil, "")
	if err := d.enqueue("t2", "c", 0, routeInfo{}); err != nil {
		t.Fatal(err)
	}
	if got := r.assigned(); len(got) != 0 {
		t.Fatalf("cross-tenant assignment %v", got)
	}
	d.presence(newAgentUser("b", "t2"), protocol.StatusOnline, 2, 5, nil, "")
	if got, want := r.assigned(), []string{"c>b"}; !slices.Equal(got, want) {
		t.Fatalf("assigned %v, want %v", got, want)
	}
}

func TestDispatcherRequeueAhead(t *testing.T) {
	var r recorder
	d := newDispatcher(10, r.post)
	a := newAgentUser("a", "t")
	d.presence(a, protocol.StatusOnline, 1, 5, nil, "")
	_ = d.enqueue("t", "old", 0, routeInfo{}) // assigned to a
	_ = d.enqueue("t", "new1", 0, routeInfo{})
	_ = d.enqueue("t", "new2", 0, routeInfo{})
	d.presence(a, protocol.StatusAway, 0, 5, nil, "") // keep "old", take no more
	d.requeue("t", "old", 0, routeInfo{}, "a")        // a transfers it back to the queue
	if p := r.lastPosition("old"); p != 1 {
		t.Fatalf("requeued conversation at %d, want 1", p)
	}
	d.presence(a, protocol.StatusOnline, 0, 5, nil, "")
	if got, want := r.assigned(), []string{"old>a", "old>a"}; !slices.Equal(got, want) {
		t.Fatalf("assigned %v, want %v", got, want)
	}
}

func TestDispatcherSuccess(t *testing.T) {
	var r recorder
	d := newDispatcher(10, r.post)
	a, b := newAgentUser("a", "t"), newAgentUser("b", "t")
	d.presence(a, protocol.StatusOnline, 1, 5, nil, "")
	d.presence(b, protocol.StatusOnline, 1, 5, nil, "")
	_ = d.enqueue("t", "c", 0, routeInfo{})
	from := r.assigned()[0][2:]
	to := "b"
	if from == "b" {
		to = "a"
	}
	got, err := d.transfer(from, to, "c")
	if err != nil || got.id != to {
		t.Fatalf("transfer: %v, %v", got, err)
	}
	if l, _, _ := d.agentLoad(from); l != 0 {
		t.Fatalf("source load %d, want 0", l)
	}
	if l, _, _ := d.agentLoad(to); l != 1 {
		t.Fatalf("target load %d, want 1", l)
	}
}

func TestDispatcherFailure(t *testing.T) {
	setup := func() (*dispatcher, *recorder) {
		var r recorder
		d := newDispatcher(1, r.post)
		d.presence(newAgentUser("a", "t"), protocol.StatusOnline, 1, 5, nil, "")
		d.presence(newAgentUser("full", "t"), protocol.StatusOnline, 1, 5, nil, "")
		d.presence(newAgentUser("away", "t"), protocol.StatusAway, 1, 5, nil, "")
		d.presence(newAgentUser("other", "t2"), protocol.StatusOnline, 1, 5, nil, "")
		_ = d.enqueue("t", "c1", 0, routeInfo{}) // → a (smaller id)
		_ = d.enqueue("t", "c2", 0, routeInfo{}) // → full
		return d, &r
	}
	tests := []struct {
		name string
		run  func(d *dispatcher) error
		want error
	}{
		{"queue full", func(d *dispatcher) error {
			if err := d.enqueue("t", "q1", 0, routeInfo{}); err != nil {
				return err
			}
			return d.enqueue("t", "q2", 0, routeInfo{})
		}, errQueueFull},
		{"transfer to a full agent", func(d *dispatcher) error { _, err := d.transfer("a", "full", "c1"); return err }, errNoAgent},
		{"transfer to an away agent", func(d *dispatcher) error { _, err := d.transfer("a", "away", "c1"); return err }, errNoAgent},
		{"transfer to another tenant", func(d *dispatcher) error { _, err := d.transfer("a", "other", "c1"); return err }, errNoAgent},
		{"transfer to nobody", func(d *dispatcher) error { _, err := d.transfer("a", "ghost", "c1"); return err }, errNoAgent},
		{"transfer by a non-holder", func(d *dispatcher) error { _, err := d.transfer("a", "full", "c2"); return err }, errNotAssignee},
		{"transfer by an unknown agent", func(d *dispatcher) error { _, err := d.transfer("ghost", "a", "c1"); return err }, errUnknownAgent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := setup()
			before := loads(d)
			if err := tt.run(d); !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if tt.want != errQueueFull && !maps.Equal(before, loads(d)) {
				t.Fatalf("state changed on error: %v → %v", before, loads(d))
			}
		})
	}
}

func loads(d *dispatcher) map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := map[string]int{}
	for id, a := range d.agents {
		m[id] = a.load
	}
	return m
}

// TestDispatcherForgetsEmptyTenants: tenants named by anonymous visitors
// leave nothing behind once their queue is empty and they have no agents.
func TestDispatcherForgetsEmptyTenants(t *testing.T) {
	var r recorder
	d := newDispatcher(10, r.post)
	for i := range 100 {
		tenant := string(rune('a' + i%26))
		conv := tenant + "-conv"
		if err := d.enqueue(tenant, conv, 0, routeInfo{}); err != nil {
			t.Fatal(err)
		}
		d.cancel(tenant, conv)
	}
	d.presence(newAgentUser("a", "kept"), protocol.StatusOnline, 1, 5, nil, "")
	if len(d.pools) != 1 || d.pools["kept"] == nil {
		t.Fatalf("pools %v, want only the agent's tenant", slices.Collect(maps.Keys(d.pools)))
	}
}

// pickFirst is the dispatcher's choice without a router.
func pickFirst(p *tenantPool, w *waiting) (*agentSlot, string) {
	return pickAgent(p.agents, w.skill), ""
}

// BenchmarkAssignOverAgents: one conversation queued and assigned among
// 1,000 online agents of one tenant (then released), with the built-in
// scoring router and with the default least-loaded choice: the whole
// dispatcher decision, under its lock. p50-ns and p99-ns are per decision
// (enqueue to assignment posted).
func BenchmarkAssignOverAgents(b *testing.B) {
	for _, tc := range []struct {
		name   string
		router backends.Router
	}{{"least-loaded", nil}, {"scoring-router", &builtin.ScoringRouter{}}} {
		b.Run(tc.name, func(b *testing.B) {
			var last ctrl
			d := newDispatcher(1<<20, func(_ int, c ctrl) { last = c })
			d.useRouters(tc.router, nil, nil, 0, nil)
			ri := benchAgents(d)
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := d.enqueue("t", "c", 0, ri); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				if last.kind != ctrlAssign {
					b.Fatal("not assigned")
				}
				d.release(last.u.id, "c")
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

func (r *recorder) lastETA(conv string) (eta uint32, sent int) {
	for _, c := range r.posts {
		if c.kind == ctrlPosition && c.conv == conv {
			eta, sent = c.eta, sent+1
		}
	}
	return eta, sent
}

// TestDispatcherETA: the wait estimate is unknown until a conversation
// was closed, then position × mean handling time / conversations being
// handled, sent again when it moves; queued-again conversations are not
// samples.
func TestDispatcherETA(t *testing.T) {
	var r recorder
	d := newDispatcher(100, r.post)
	var now int64
	d.now = func() int64 { return now }
	const sec = int64(1e9)
	d.presence(newAgentUser("a", "t"), protocol.StatusOnline, 2, 2, nil, "")
	for _, c := range []string{"c1", "c2", "c3", "c4", "c5"} {
		if err := d.enqueue("t", c, 0, routeInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	// c1, c2 assigned at 0; c3..c5 wait at 1..3 with no estimate yet.
	if eta, _ := r.lastETA("c3"); eta != 0 {
		t.Fatalf("eta before any close %d, want 0 (unknown)", eta)
	}
	// A requeue is not a sample: c2 goes back (ahead of new ones) and a
	// takes it again at once (started anew at 30 s).
	now = 30 * sec
	d.requeue("t", "c2", 0, routeInfo{}, "a")
	if eta, _ := r.lastETA("c4"); eta != 0 {
		t.Fatalf("eta after a requeue %d, want 0", eta)
	}
	// c1 closes after 120 s: H = 120; a takes c3; C = 2 (c2 and c3).
	now = 120 * sec
	d.release("a", "c1")
	if got, want := r.assigned(), []string{"c1>a", "c2>a", "c2>a", "c3>a"}; !slices.Equal(got, want) {
		t.Fatalf("assigned %v, want %v", got, want)
	}
	// Queue now c4 (1), c5 (2): 1×120/2 = 60 s and 2×120/2 = 120 s.
	if p, eta := r.lastPosition("c4"), first(r.lastETA("c4")); p != 1 || eta != 60 {
		t.Fatalf("c4 position %d eta %d, want 1 and 60", p, eta)
	}
	if eta, _ := r.lastETA("c5"); eta != 120 {
		t.Fatalf("c5 eta %d, want 120", eta)
	}
	// c3 closes after 120 s too: H stays 120; c4 is assigned, c5 moves to 1
	// with 60 s.
	now = 240 * sec
	d.release("a", "c3")
	if p, eta := r.lastPosition("c5"), first(r.lastETA("c5")); p != 1 || eta != 60 {
		t.Fatalf("c5 position %d eta %d, want 1 and 60", p, eta)
	}
	// A long conversation moves the mean: c2 (restarted at 30 s) closes at
	// 1,030 s: H = 120 + 0.2×(1000−120) = 296; c5 is assigned. New c6 waits
	// first with 1×296/2 = 148 s.
	now = 1030 * sec
	d.release("a", "c2")
	if err := d.enqueue("t", "c6", 0, routeInfo{}); err != nil {
		t.Fatal(err)
	}
	if eta, _ := r.lastETA("c6"); eta != 148 {
		t.Fatalf("c6 eta %d, want 148", eta)
	}
	// c4 (started at 240 s) closes at 1,210 s: H = 296 + 0.2×(970−296) =
	// 430.8; c6 is assigned and c7 moves to 1 with 430.8/2 ≈ 215 s.
	if err := d.enqueue("t", "c7", 0, routeInfo{}); err != nil {
		t.Fatal(err)
	}
	_, before := r.lastETA("c6")
	now = 1210 * sec
	d.release("a", "c4")
	if p, eta := r.lastPosition("c7"), first(r.lastETA("c7")); p != 1 || eta != 215 {
		t.Fatalf("c7 position %d eta %d, want 1 and 215", p, eta)
	}
	if _, after := r.lastETA("c6"); after != before {
		t.Fatalf("c6 was sent %d updates after it was assigned", after-before)
	}
	// The estimate of a conversation that keeps its place is sent again when
	// it moves: cx wants a skill nobody has and waits behind c7.
	if err := d.enqueue("t", "cx", 0, routeInfo{skill: "x"}); err != nil {
		t.Fatal(err)
	}
	// c5 (from 1,030 s) closes at 1,210 s: H = 430.8 + 0.2×(180−430.8) =
	// 380.64; c7 is assigned; cx is first: 380.64/2 ≈ 190 s.
	d.release("a", "c5")
	if p, eta := r.lastPosition("cx"), first(r.lastETA("cx")); p != 1 || eta != 190 {
		t.Fatalf("cx position %d eta %d, want 1 and 190", p, eta)
	}
	// c6 closes at once (a 0 s sample: H = 304.5) and nothing can be
	// assigned: cx stays first, C = 1, sent again with 305 s.
	_, sent := r.lastETA("cx")
	d.release("a", "c6")
	if eta, n := r.lastETA("cx"); eta != 305 || n != sent+1 {
		t.Fatalf("cx eta %d after %d more updates, want 305 after 1", eta, n-sent)
	}
	// Nobody handles anything any more: unknown again, and said so.
	d.release("a", "c7")
	if eta, n := r.lastETA("cx"); eta != 0 || n != sent+2 {
		t.Fatalf("cx eta %d after %d more updates, want 0 after 2", eta, n-sent)
	}
	d.setOffline("a")
	if err := d.enqueue("t", "c8", 0, routeInfo{}); err != nil {
		t.Fatal(err)
	}
	if eta, _ := r.lastETA("c8"); eta != 0 {
		t.Fatalf("eta with nobody handling %d, want 0", eta)
	}
}

func first[A, B any](a A, _ B) A { return a }

func TestETAMoved(t *testing.T) {
	for _, c := range []struct {
		was, now uint32
		want     bool
	}{
		{0, 0, false}, {0, 5, true}, {5, 0, true}, {60, 65, false}, {60, 70, false}, {60, 72, true},
		{600, 650, false}, {600, 720, true}, {720, 570, true}, {720, 600, false}, {100, 91, false},
	} {
		if got := etaMoved(c.was, c.now); got != c.want {
			t.Errorf("etaMoved(%d, %d) = %v, want %v", c.was, c.now, got, c.want)
		}
	}
}

// benchAgents puts 1,000 agents of tenant "t" online on d (skills billing
// and sales, capacity 5, four regions) and returns the waiting
// conversation the routing benchmarks assign among them.
func benchAgents(d *dispatcher) routeInfo {
	regions := []string{"cn-east", "cn-north", "cn-south", "us-west"}
	for i := range 1000 {
		u := newAgentUser(fmt.Sprintf("a%04d", i), "t", "billing", "sales")
		d.presence(u, protocol.StatusOnline, 5, 5, nil, regions[i%len(regions)])
	}
	return routeInfo{skill: "billing/refund", region: "cn-east", sentiment: -0.5}
}
