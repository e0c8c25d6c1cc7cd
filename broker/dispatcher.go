package broker

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
	"github.com/unigate/unigate/protocol"
)

// Errors of the dispatcher.
var (
	errQueueFull    = errors.New("broker: waiting queue is full")
	errNoAgent      = errors.New("broker: agent is not available")
	errNotAssignee  = errors.New("broker: agent does not hold the conversation")
	errUnknownAgent = errors.New("broker: unknown agent")
)

// posRule is which queue position updates are sent: every change for the
// first exact places; further back only positions that are multiples of
// step, so a long queue moving by one does not send a message to everyone
// in it (Options.PositionExact, Options.PositionStep; step 1 sends every
// change).
type posRule struct{ exact, step uint32 }

// sends reports whether a position that changed to pos is sent.
func (r posRule) sends(pos uint32) bool { return pos <= r.exact || pos%r.step == 0 }

// The queue's wait estimate (Queue.eta_seconds): a waiting conversation at
// position n waits about n × H / C, where H is the tenant's recent handling
// time (an exponentially weighted mean of assignment-to-close durations,
// weight etaWeight for the newest) and C the number of its conversations
// being handled now, that is the rate at which slots free up while all are
// taken. Unknown (0) until a conversation was closed or while nobody
// handles one. An estimate that moved by at least etaResend (and by a
// fifth) is sent again to the first posRule.exact places even when their
// position did not change.
const (
	etaWeight = 0.2
	etaResend = 10 // seconds
)

// agentSlot is the dispatcher's view of an agent.
type agentSlot struct {
	id         string
	tenant     string
	u          *user
	status     protocol.Status
	capacity   int
	load       int      // conversations held now
	skills     []string // owned copies
	region     string   // declared in presence, for the router
	lastAssign uint64   // dispatcher clock of the last assignment: smaller = idle longer
	reserved   int      // slots held for pending routing decisions (two-phase routing)
	convs      map[string]struct{}
}

// available reports whether the queue may give agent a another
// conversation: online, with a free slot that no pending routing decision
// holds.
func (a *agentSlot) available() bool {
	return a.status == protocol.StatusOnline && a.load+a.reserved < a.capacity
}

// hasRoom reports whether a may take one more conversation by an explicit
// action (a transfer, the integrator API), which ignores reservations: a
// pending routing decision that loses the slot revalidates.
func (a *agentSlot) hasRoom() bool {
	return a.status == protocol.StatusOnline && a.load < a.capacity
}

// hasSkill reports whether a serves skill, itself or a parent of it
// ("billing" serves "billing/refund"); the empty skill is served by
// everyone.
func (a *agentSlot) hasSkill(skill string) bool {
	if skill == "" {
		return true
	}
	for _, s := range a.skills {
		if s == skill || (len(skill) > len(s) && skill[len(s)] == '/' && strings.HasPrefix(skill, s)) {
			return true
		}
	}
	return false
}

// betterAgent reports whether a should get the next conversation rather
// than b: lower load/capacity, then fewer conversations, then idle longer,
// then the smaller id (so the choice is deterministic).
func betterAgent(a, b *agentSlot) bool {
	if l, r := a.load*b.capacity, b.load*a.capacity; l != r {
		return l < r
	}
	if a.load != b.load {
		return a.load < b.load
	}
	if a.lastAssign != b.lastAssign {
		return a.lastAssign < b.lastAssign
	}
	return a.id < b.id
}

// pickAgent returns the best available agent serving skill, or nil.
func pickAgent(agents []*agentSlot, skill string) *agentSlot {
	var best *agentSlot
	for _, a := range agents {
		if a.available() && a.hasSkill(skill) && (best == nil || betterAgent(a, best)) {
			best = a
		}
	}
	return best
}

// routeInfo is what the queue and the router know of a waiting
// conversation.
type routeInfo struct {
	skill     string
	prio      uint32
	region    string
	language  string
	sentiment float64 // -1 angry .. 1 happy
}

// waiting is a queued conversation.
type waiting struct {
	conv  string
	shard int
	routeInfo
	boosted  bool          // queued again (transfer, departed agent): ahead of new ones
	seq      uint64        // enqueue order
	notified uint32        // last position sent, 0 if none
	eta      uint32        // last wait estimate sent, seconds
	route    *pendingRoute // the routing decision in flight for it, if any
}

// waitsBefore orders the queue: higher priority first; within a priority,
// conversations queued again before new ones; then first come first served.
func waitsBefore(a, b *waiting) bool {
	if a.prio != b.prio {
		return a.prio > b.prio
	}
	if a.boosted != b.boosted {
		return a.boosted
	}
	return a.seq < b.seq
}

// tenantPool is the agents and the queue of one tenant: conversations are
// only ever assigned within their tenant.
type tenantPool struct {
	tenant string
	agents []*agentSlot
	queue  []*waiting // sorted by waitsBefore

	// For the wait estimate: the conversations being handled (assigned,
	// in any node's agent's hands) since when (dispatcher.now), and the
	// mean handling time in seconds (0: none closed yet).
	handling map[string]int64
	handle   float64
}

// started records that conv is being handled from now on (assigned; a
// transfer keeps the first start).
func (p *tenantPool) started(conv string, now int64) {
	if _, ok := p.handling[conv]; !ok {
		p.handling[conv] = now
	}
}

// ended records that conv is no longer handled; closed folds its handling
// time into the mean (a conversation queued again is not a sample).
func (p *tenantPool) ended(conv string, now int64, closed bool) {
	t, ok := p.handling[conv]
	if !ok {
		return
	}
	delete(p.handling, conv)
	if !closed {
		return
	}
	if h := float64(now-t) / 1e9; p.handle == 0 {
		p.handle = h
	} else {
		p.handle += etaWeight * (h - p.handle)
	}
}

// eta is the estimated wait at position pos in seconds, 0 if unknown.
func (p *tenantPool) eta(pos uint32) uint32 {
	if p.handle == 0 || len(p.handling) == 0 {
		return 0
	}
	e := float64(pos) * p.handle / float64(len(p.handling))
	return uint32(min(max(e+0.5, 1), 1<<31))
}

// insert puts w at its place in the queue.
func (p *tenantPool) insert(w *waiting) {
	i := sort.Search(len(p.queue), func(i int) bool { return waitsBefore(w, p.queue[i]) })
	p.queue = slices.Insert(p.queue, i, w)
}

// remove takes conv out of the queue and returns it, or nil if it was not
// there. A routing decision pending for it is the caller's to drop
// (dispatcher.unqueue).
func (p *tenantPool) remove(conv string) *waiting {
	for i, w := range p.queue {
		if w.conv == conv {
			p.queue = slices.Delete(p.queue, i, i+1)
			return w
		}
	}
	return nil
}

// drain assigns waiting conversations, in queue order, to the best
// available agent serving their skill, and calls assign for each. A
// conversation no agent can serve keeps its place without holding up the
// ones behind it; so does one whose routing decision is pending (pick
// started it, or it was started before), and the slots it holds are not
// available to the ones behind it. It returns the number assigned.
func (p *tenantPool) drain(clock *uint64, pick func(*tenantPool, *waiting) (*agentSlot, string), assign func(*waiting, *agentSlot, string)) int {
	n := 0
	kept := p.queue[:0]
	for i, w := range p.queue {
		if !p.anyAvailable() {
			kept = append(kept, p.queue[i:]...)
			break
		}
		var a *agentSlot
		var why string
		if w.route == nil {
			a, why = pick(p, w)
		}
		if a == nil {
			kept = append(kept, w)
			continue
		}
		giveSlot(clock, a, w.conv)
		assign(w, a, why)
		n++
	}
	clear(p.queue[len(kept):])
	p.queue = kept
	return n
}

// giveSlot counts conv in a's load.
func giveSlot(clock *uint64, a *agentSlot, conv string) {
	*clock++
	a.load++
	a.lastAssign = *clock
	a.convs[conv] = struct{}{}
}

func (p *tenantPool) anyAvailable() bool {
	for _, a := range p.agents {
		if a.available() {
			return true
		}
	}
	return false
}

// positions calls notify for every waiting conversation whose position
// (1 = next) changed since it was last notified, within rule, or whose
// wait estimate moved (etaResend); the first position is always sent.
func (p *tenantPool) positions(rule posRule, notify func(w *waiting, pos, eta uint32)) {
	for i, w := range p.queue {
		pos := uint32(i + 1)
		if pos == w.notified {
			if pos <= rule.exact && etaMoved(w.eta, p.eta(pos)) {
				w.eta = p.eta(pos)
				notify(w, pos, w.eta)
			}
			continue
		}
		if w.notified == 0 || rule.sends(pos) {
			w.notified, w.eta = pos, p.eta(pos)
			notify(w, pos, w.eta)
		}
	}
}

// etaMoved reports whether a wait estimate changed enough from was to be
// sent again: to or from unknown, or by etaResend seconds and a fifth.
func etaMoved(was, now uint32) bool {
	if (was == 0) != (now == 0) {
		return true
	}
	d := max(was, now) - min(was, now)
	return d >= etaResend && d*5 >= was
}

// dispatcher holds agent presence and capacity and the waiting queues. It
// is guarded by one mutex and does no I/O: it posts its decisions to shard
// mailboxes (a non-blocking append) while holding the mutex, so decisions
// reach each shard in the order they were taken.
type dispatcher struct {
	mu       sync.Mutex
	pools    map[string]*tenantPool // by tenant
	agents   map[string]*agentSlot  // by agent id
	queued   int
	maxQueue int
	rule     posRule // which position updates are sent
	clock    uint64  // assignment clock (agentSlot.lastAssign)
	seq      uint64  // enqueue counter (waiting.seq)
	post     func(shard int, c ctrl)
	now      func() int64 // monotonic nanoseconds, for handling times

	// router ranks the eligible agents under d.mu (Backends.Router); nil:
	// pickAgent. scorer is router when it is the built-in one (a Pick, no
	// ranking). skill, cands, slots, top and why are their scratch.
	router backends.Router
	scorer *builtin.ScoringRouter
	skill  [1]string
	cands  []backends.Agent
	slots  []*agentSlot
	top    []builtin.Scored
	why    []byte

	// remote ranks off the lock (Backends.RouterPlugin; two-phase routing,
	// route.go): submit hands a call to the backend workers, at most
	// maxRouting decisions are in flight (routing), and the pools whose
	// conversations wait for one of those are starved (by tenant).
	remote     backends.Router
	submit     func(func(context.Context)) bool
	maxRouting int
	routing    int
	starved    map[string]struct{}
	rm         routeMetrics

	// Cluster mode: the queue is fed by observe only.
	mirror  bool
	shardOf func(conv string) int
	where   map[string]string // waiting conversation → tenant

	queueLen atomic.Int64 // mirrors queued, for Stats
	online   atomic.Int64 // agents with StatusOnline
}

func newDispatcher(maxQueue int, post func(shard int, c ctrl)) *dispatcher {
	return &dispatcher{
		pools:    make(map[string]*tenantPool),
		agents:   make(map[string]*agentSlot),
		maxQueue: maxQueue,
		rule:     posRule{exact: DefaultPositionExact, step: DefaultPositionStep},
		post:     post,
		where:    make(map[string]string),
		now:      monotonic(),
	}
}

// monotonic returns a clock of nanoseconds since its creation that only
// moves forward (time.Since reads the monotonic clock).
func monotonic() func() int64 {
	base := time.Now()
	return func() int64 { return int64(time.Since(base)) }
}

func (d *dispatcher) pool(tenant string) *tenantPool {
	p := d.pools[tenant]
	if p == nil {
		p = &tenantPool{tenant: tenant, handling: make(map[string]int64)}
		d.pools[tenant] = p
	}
	return p
}

// handled records that conv of p is being handled from now on, for the
// wait estimate; in cluster mode the conversation records say so
// (observeLocked). d.mu is held.
func (d *dispatcher) handled(p *tenantPool, conv string) {
	if !d.mirror {
		p.started(conv, d.now())
	}
}

// settle assigns what can be assigned in p and sends position updates.
// d.mu is held.
func (d *dispatcher) settle(p *tenantPool) {
	n := p.drain(&d.clock, d.pick, func(w *waiting, a *agentSlot, why string) {
		delete(d.where, w.conv)
		d.handled(p, w.conv)
		d.post(w.shard, ctrl{kind: ctrlAssign, conv: w.conv, u: a.u, note: why})
	})
	d.queued -= n
	p.positions(d.rule, func(w *waiting, pos, eta uint32) {
		d.post(w.shard, ctrl{kind: ctrlPosition, conv: w.conv, seq: uint64(pos), eta: eta})
	})
	d.queueLen.Store(int64(d.queued))
	if len(p.agents) == 0 && len(p.queue) == 0 && len(p.handling) == 0 {
		// Tenants named by anonymous visitors must not accumulate.
		delete(d.pools, p.tenant)
	}
}

// pick chooses the agent for w among p's: with a router, the best ranked
// of the available agents serving w's skill (and its explanation); else,
// or when the router fails, pickAgent's choice. With a remote router it
// starts a routing decision instead (route.go) and returns nil: w keeps
// its place until the decision comes back. d.mu is held.
func (d *dispatcher) pick(p *tenantPool, w *waiting) (*agentSlot, string) {
	if d.router == nil && d.remote == nil {
		return pickAgent(p.agents, w.skill), ""
	}
	if d.remote != nil && d.routing >= d.maxRouting {
		d.starved[p.tenant] = struct{}{} // drained again when a decision in flight ends
		return nil, ""
	}
	d.collect(p, w)
	if len(d.slots) == 0 {
		return nil, ""
	}
	if d.remote != nil {
		if d.startRoute(p, w) {
			return nil, ""
		}
		d.rm.fallbackBusy.Inc()
		return d.decide(p, w, routeFellBackBusy)
	}
	return d.decide(p, w, "")
}

// collect puts the agents of p available to w in d.slots, and their
// router view in d.cands. d.mu is held.
func (d *dispatcher) collect(p *tenantPool, w *waiting) {
	clear(d.cands)
	d.cands, d.slots = d.cands[:0], d.slots[:0]
	for _, a := range p.agents {
		if a.available() && a.hasSkill(w.skill) {
			d.cands = append(d.cands, backends.Agent{ID: a.id, Skills: a.skills, Load: a.load, Capacity: a.capacity, Region: a.region})
			d.slots = append(d.slots, a)
		}
	}
}

// rankRequest is the router's question about w, with d.cands (collect) as
// the candidates; it aliases the dispatcher's scratch (d.mu is held).
func (d *dispatcher) rankRequest(p *tenantPool, w *waiting) backends.RankRequest {
	req := backends.RankRequest{
		Conversation: backends.Conversation{
			ID: w.conv, Tenant: p.tenant, Region: w.region, Language: w.language,
			Sentiment: w.sentiment, Priority: int(w.prio),
		},
		Candidates: d.cands,
	}
	if w.skill != "" {
		d.skill[0] = w.skill
		req.Conversation.Skills = d.skill[:]
	}
	return req
}

// decide chooses among the candidates collect found (at least one) with
// the in-process router: the built-in scorer's Pick (no ranking, no
// allocation but the explanation), another Router's Rank, or least loaded
// (no router, or the router failed). A non-empty prefix says why this is a
// fallback of the remote router; it starts the explanation. d.mu is held.
func (d *dispatcher) decide(p *tenantPool, w *waiting, prefix string) (*agentSlot, string) {
	req := d.rankRequest(p, w)
	d.why = d.why[:0]
	if prefix != "" {
		d.why = append(append(d.why, prefix...), "; "...)
	}
	switch {
	case d.scorer != nil:
		var excluded int
		d.top, excluded = d.scorer.Pick(&req, d.top)
		if len(d.top) > 0 {
			d.why = d.scorer.AppendExplanation(d.why, d.cands, d.top, excluded)
			return d.slots[d.top[0].Index], string(d.why)
		}
	case d.router != nil:
		rk, err := d.router.Rank(context.Background(), req)
		if err == nil {
			for _, r := range rk.Agents {
				for i, c := range d.cands {
					if c.ID == r.AgentID {
						return d.slots[i], string(append(d.why, rk.Explanation...))
					}
				}
			}
		}
		d.why = append(d.why, "router unavailable: "...)
	}
	return pickAgent(d.slots, w.skill), string(append(d.why, "least loaded agent"...))
}

// enqueue adds a new conversation to its tenant's queue, or fails with
// errQueueFull.
func (d *dispatcher) enqueue(tenant, conv string, shard int, ri routeInfo) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.queued >= d.maxQueue {
		return errQueueFull
	}
	if d.mirror {
		return nil // the watcher brings the record
	}
	d.add(tenant, conv, shard, ri, false)
	return nil
}

// handoff queues a conversation the bot hands to a human. Like requeue it
// never fails (the conversation exists; MaxQueue is checked at Open).
func (d *dispatcher) handoff(tenant, conv string, shard int, ri routeInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mirror {
		return // the watcher brings the record
	}
	d.add(tenant, conv, shard, ri, false)
}

// anyOnline reports whether an agent of tenant is online on this node.
func (d *dispatcher) anyOnline(tenant string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.pools[tenant]; p != nil {
		for _, a := range p.agents {
			if a.status == protocol.StatusOnline {
				return true
			}
		}
	}
	return false
}

// requeue puts a conversation back in the queue ahead of new ones of its
// priority, first releasing it from fromAgent (if not empty). It never
// fails: the conversation already exists.
func (d *dispatcher) requeue(tenant, conv string, shard int, ri routeInfo, fromAgent string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a := d.agents[fromAgent]; a != nil {
		a.free(conv)
	}
	if !d.mirror {
		d.pool(tenant).ended(conv, d.now(), false)
	}
	if d.mirror {
		d.settle(d.pool(tenant)) // the watcher brings the record
		return
	}
	d.add(tenant, conv, shard, ri, true)
}

func (d *dispatcher) add(tenant, conv string, shard int, ri routeInfo, boosted bool) {
	d.seq++
	p := d.pool(tenant)
	p.insert(&waiting{conv: conv, shard: shard, routeInfo: ri, boosted: boosted, seq: d.seq})
	d.where[conv] = tenant
	d.queued++
	d.settle(p)
}

// cancel removes a waiting conversation (closed while queued). It reports
// whether it was waiting.
func (d *dispatcher) cancel(tenant, conv string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[tenant]
	if p == nil || !d.unqueue(p, conv) {
		return false
	}
	d.settle(p)
	return true
}

// unqueue takes conv out of p's queue, dropping the routing decision
// pending for it, and reports whether it was there. d.mu is held.
func (d *dispatcher) unqueue(p *tenantPool, conv string) bool {
	w := p.remove(conv)
	if w == nil {
		return false
	}
	d.dropRoute(w)
	delete(d.where, conv)
	d.queued--
	return true
}

// release frees the slot agentID holds for conv (closed, or an assignment
// that arrived too late) and assigns waiting conversations.
func (d *dispatcher) release(agentID, conv string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.agents[agentID]
	if a == nil || !a.free(conv) {
		return
	}
	p := d.pool(a.tenant)
	if !d.mirror {
		p.ended(conv, d.now(), true)
	}
	d.settle(p)
}

func (a *agentSlot) free(conv string) bool {
	if _, ok := a.convs[conv]; !ok {
		return false
	}
	delete(a.convs, conv)
	a.load--
	return true
}

// presenceResult is an agent's effective presence after an update.
type presenceResult struct {
	status   protocol.Status
	capacity int
	skills   []string
	region   string
}

// presence sets an agent's status; capacity 0 and nil skills keep the
// current values (the defaults for a new agent: defCapacity and the
// token's skills). Going online assigns waiting conversations. Any status
// other than online stops new assignments but keeps the current ones.
func (d *dispatcher) presence(u *user, status protocol.Status, capacity, defCapacity int, skills []string, region string) presenceResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.slotFor(u, defCapacity)
	a.u = u
	if capacity > 0 {
		a.capacity = capacity
	}
	if skills != nil {
		a.skills = skills
	}
	if region != "" {
		a.region = region
	}
	d.setStatus(a, status)
	if status == protocol.StatusOnline {
		d.settle(d.pool(a.tenant))
	}
	return presenceResult{status: a.status, capacity: a.capacity, skills: a.skills, region: a.region}
}

// slotFor returns u's slot, creating it offline with defCapacity and the
// token's skills (and adding it to its tenant's pool) if it has none.
// d.mu is held.
func (d *dispatcher) slotFor(u *user, defCapacity int) *agentSlot {
	a := d.agents[u.id]
	if a == nil {
		a = &agentSlot{
			id:       u.id,
			tenant:   u.tenant,
			status:   protocol.StatusOffline,
			capacity: defCapacity,
			skills:   u.skills,
			convs:    make(map[string]struct{}),
		}
		d.agents[u.id] = a
		p := d.pool(a.tenant)
		p.agents = append(p.agents, a)
	}
	return a
}

func (d *dispatcher) setStatus(a *agentSlot, s protocol.Status) {
	was := a.status == protocol.StatusOnline
	a.status = s
	switch now := s == protocol.StatusOnline; {
	case now && !was:
		d.online.Add(1)
	case !now && was:
		d.online.Add(-1)
	}
}

// setOffline takes an agent offline (its grace period after the last
// connection ran out); it keeps its conversations.
func (d *dispatcher) setOffline(agentID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a := d.agents[agentID]; a != nil {
		d.setStatus(a, protocol.StatusOffline)
	}
}

// transfer moves conv from agent from to agent to, which must be online
// with a free slot in the same tenant. It returns the new agent's user.
func (d *dispatcher) transfer(from, to, conv string) (*user, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	src := d.agents[from]
	if src == nil {
		return nil, errUnknownAgent
	}
	if _, ok := src.convs[conv]; !ok {
		return nil, errNotAssignee
	}
	dst := d.agents[to]
	if dst == nil || dst.tenant != src.tenant || !dst.hasRoom() {
		return nil, errNoAgent
	}
	d.clock++
	dst.load++
	dst.lastAssign = d.clock
	dst.convs[conv] = struct{}{}
	src.free(conv)
	d.settle(d.pool(src.tenant))
	return dst.u, nil
}

// agentLoad returns an agent's load and capacity, for tests and Stats.
func (d *dispatcher) agentLoad(agentID string) (load, capacity int, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.agents[agentID]
	if a == nil {
		return 0, 0, false
	}
	return a.load, a.capacity, true
}

// The methods below serve cluster mode (Options.Cluster), where the
// waiting queue mirrors the conversation bucket: every node's dispatcher
// sees every queued conversation of the cluster (fed by observe, in the
// bucket's order, from the node's watcher) and assigns them to the agents
// connected to this node. Each assignment is then committed by the
// conversation's shard with two revision-checked updates (the agent's
// cluster-wide load, then the conversation record), so two nodes racing
// for one conversation, or for an agent's last slot, cannot both win.

// observe applies a conversation record (rev is its revision) to the
// queue and the local agents' loads.
func (d *dispatcher) observe(m *ConvMeta, rev uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observeLocked(m, rev, false)
}

// requeueMirror puts a queued conversation whose assignment failed back in
// the queue (the watcher will not repeat its record).
func (d *dispatcher) requeueMirror(m *ConvMeta, rev uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observeLocked(m, rev, true)
}

func (d *dispatcher) observeLocked(m *ConvMeta, rev uint64, again bool) {
	p := d.pool(m.Tenant)
	switch m.State {
	case protocol.StateAssigned, protocol.StateTransferred:
		p.started(m.ID, d.now())
	default:
		p.ended(m.ID, d.now(), m.State == protocol.StateClosed)
	}
	_, isWaiting := d.where[m.ID]
	if m.State != protocol.StateQueued && isWaiting {
		d.unqueue(p, m.ID)
	}
	for _, a := range p.agents {
		if m.State != protocol.StateClosed && m.State != protocol.StateQueued && a.id == m.AgentID {
			if _, ok := a.convs[m.ID]; !ok {
				a.convs[m.ID] = struct{}{}
				a.load++
			}
		} else {
			a.free(m.ID)
		}
	}
	if m.State == protocol.StateQueued && !isWaiting {
		seq := rev
		if again {
			// Keep its place: the first revision it was queued at is gone.
			d.seq++
			seq = d.seq
			for _, w := range p.queue {
				seq = min(seq, w.seq)
			}
			seq = min(seq, rev)
		}
		ri := routeInfo{skill: m.Skill, prio: m.Prio, region: m.Region, language: m.Language}
		p.insert(&waiting{conv: m.ID, shard: d.shardOf(m.ID), routeInfo: ri, boosted: m.Boost, seq: seq})
		d.where[m.ID] = m.Tenant
		d.queued++
	}
	d.settle(p)
}

// forget drops a conversation whose record was deleted or expired.
func (d *dispatcher) forget(conv string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgetHandled(conv)
	tenant, ok := d.where[conv]
	if !ok {
		return
	}
	p := d.pool(tenant)
	d.unqueue(p, conv)
	d.settle(p)
}

// forgetHandled drops a conversation whose record was deleted or expired
// from the handling times of every tenant (the record no longer says
// which): not a sample.
func (d *dispatcher) forgetHandled(conv string) {
	now := d.now()
	for _, p := range d.pools {
		p.ended(conv, now, false)
	}
}

// setLoad makes agentID's local slot hold exactly convs (its cluster-wide
// load), when it has a slot here.
func (d *dispatcher) setLoad(agentID string, convs []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.agents[agentID]
	if a == nil {
		return
	}
	clear(a.convs)
	for _, c := range convs {
		a.convs[c] = struct{}{}
	}
	a.load = len(a.convs)
	d.settle(d.pool(a.tenant))
}

// full reports whether the waiting queue is at its bound.
func (d *dispatcher) full() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queued >= d.maxQueue
}

// localPresence returns the presence of this node's agents that are not
// offline, for the cluster heartbeat.
func (d *dispatcher) localPresence() map[string]presenceRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]presenceRecord)
	for id, a := range d.agents {
		if a.status != protocol.StatusOffline && a.status != protocol.StatusUnspecified {
			out[id] = presenceRecord{Tenant: a.tenant, Status: a.status, Capacity: a.capacity, Skills: a.skills}
		}
	}
	return out
}

// hold records that agent u holds conv, a conversation rebuilt from the
// durable stores after a restart (single node; a cluster keeps the load
// in UNIGATE_AGENT_LOAD), creating u's slot, offline, if it has none: so
// that its load is right when it comes back online, and its transfers of
// conv are its own.
func (d *dispatcher) hold(u *user, conv string, defCapacity int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.slotFor(u, defCapacity)
	if a.u == nil {
		a.u = u
	}
	if _, ok := a.convs[conv]; !ok {
		a.convs[conv] = struct{}{}
		a.load++
	}
}
