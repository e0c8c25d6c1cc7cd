package broker

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
)

// Two-phase routing: a remote router (Backends.RouterPlugin, a plugin
// process) is never called under the dispatcher's lock.
//
//  1. Snapshot. When the queue reaches a conversation w that some agent
//     could take, the dispatcher copies w's routing facts and its
//     candidates (the agents available to it), reserves one slot of every
//     candidate for w (agentSlot.reserved), marks w pending and hands the
//     call to a backend worker. w keeps its place in the queue.
//  2. Commit. The answer comes back through routed, under the lock: the
//     reservations are released, the conversation must still be waiting
//     (else the answer is dropped), and the first agent of the ranking
//     that is still eligible now (online, serving w's skill, with a free
//     slot no other pending decision holds) gets it. An error, a timeout,
//     an open breaker, all workers busy, or a ranking that names no
//     eligible agent: the in-process router decides instead, with what the
//     dispatcher knows now.
//
// Fairness. A reserved slot is available to nobody else. So a conversation
// behind a pending one (later, or of a lower priority) is given or routed
// only agents with a slot to spare beyond the reservations, and can never
// take the place an earlier pending decision might choose; it does not
// wait for that decision when such agents exist (disjoint skills, agents
// with several free slots), so decisions overlap. A pending decision is
// never pre-empted: a conversation queued ahead of it meanwhile (a higher
// priority, a re-queued one) waits like the others, at most one call
// (the plugin's call timeout). Explicit actions (a transfer, the
// integrator API's assign) ignore reservations; a decision that loses its
// agent to one takes the next of its ranking.
//
// At most maxRouting decisions are in flight (Backends.Workers): beyond,
// conversations wait for one to end (their pool is starved and is
// drained again then), so bot and authentication calls keep workers.

// pendingRoute is a routing decision in flight for w.
type pendingRoute struct {
	w        *waiting
	tenant   string
	slots    []*agentSlot // the candidates, one slot of each reserved
	released bool         // the reservations were given back
}

// routeMetrics count two-phase routing (unigate_broker_router_*).
type routeMetrics struct {
	byPlugin        *metrics.Counter // assigned to the remote router's choice
	fallbackError   *metrics.Counter // the call failed (error, timeout, breaker open, plugin down)
	fallbackStale   *metrics.Counter // the ranking named no agent still eligible
	fallbackBusy    *metrics.Counter // no worker free: decided in process at once
	discarded       *metrics.Counter // answers for conversations no longer waiting
	requeuedNoAgent *metrics.Counter // answers when nobody was eligible any more: the conversation waits
}

// Fallback reasons, at the start of the explanation of a decision the
// in-process router took in the remote router's stead.
const (
	routeFellBackError = "router plugin failed"
	routeFellBackStale = "router plugin ranked no available agent"
	routeFellBackBusy  = "router plugin busy"
)

// maxRoutingNote bounds the remote router's explanation kept, in bytes.
const maxRoutingNote = 1024

// useRouters sets the dispatcher's routers: local runs under the lock
// (nil: least loaded), remote, if not nil, off the lock on submit's
// workers with at most maxInFlight decisions at once, local being its
// fallback. Called before the dispatcher is used.
func (d *dispatcher) useRouters(local, remote backends.Router, submit func(func(context.Context)) bool, maxInFlight int, set *metrics.Set) {
	d.router = local
	d.scorer, _ = local.(*builtin.ScoringRouter)
	if remote == nil {
		return
	}
	d.remote, d.submit = remote, submit
	d.maxRouting = max(1, maxInFlight)
	d.starved = make(map[string]struct{})
	d.rm = routeMetrics{
		byPlugin:        set.NewCounter(`unigate_broker_router_decisions_total{by="plugin"}`),
		fallbackError:   set.NewCounter(`unigate_broker_router_decisions_total{by="fallback",reason="error"}`),
		fallbackStale:   set.NewCounter(`unigate_broker_router_decisions_total{by="fallback",reason="stale"}`),
		fallbackBusy:    set.NewCounter(`unigate_broker_router_decisions_total{by="fallback",reason="busy"}`),
		discarded:       set.NewCounter(`unigate_broker_router_discarded_total{reason="left"}`),
		requeuedNoAgent: set.NewCounter(`unigate_broker_router_discarded_total{reason="no_agent"}`),
	}
	set.NewGauge("unigate_broker_router_pending", func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		return float64(d.routing)
	})
}

// startRoute starts a remote routing decision for w among the candidates
// collect found (phase 1). It reports false when no worker took the call
// (nothing changed then). d.mu is held.
func (d *dispatcher) startRoute(p *tenantPool, w *waiting) bool {
	req := backends.RankRequest{
		Conversation: backends.Conversation{
			ID: w.conv, Tenant: p.tenant, Region: w.region, Language: w.language,
			Sentiment: w.sentiment, Priority: int(w.prio),
		},
		Candidates: slices.Clone(d.cands), // strings and skill slices are never mutated
	}
	if w.skill != "" {
		req.Conversation.Skills = []string{w.skill}
	}
	pr := &pendingRoute{w: w, tenant: p.tenant, slots: slices.Clone(d.slots)}
	remote := d.remote
	if !d.submit(func(ctx context.Context) {
		rk, err := remote.Rank(ctx, req)
		d.routed(pr, rk, err)
	}) {
		return false
	}
	for _, a := range pr.slots {
		a.reserved++
	}
	w.route = pr
	d.routing++
	return true
}

// dropRoute gives back the reservations of the decision pending for w, if
// any (w left the queue). Its answer is dropped when it comes. d.mu is
// held.
func (d *dispatcher) dropRoute(w *waiting) {
	if w.route != nil {
		w.route.release()
		w.route = nil
	}
}

func (pr *pendingRoute) release() {
	if pr.released {
		return
	}
	pr.released = true
	for _, a := range pr.slots {
		a.reserved--
	}
}

// routed commits a remote routing decision (phase 2); it runs on the
// worker that made the call.
func (d *dispatcher) routed(pr *pendingRoute, rk backends.Ranking, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.routing--
	pr.release()
	w := pr.w
	p := d.pools[pr.tenant]
	if w.route != pr || p == nil {
		// Closed, cancelled, assigned through the API or by another node
		// meanwhile: nothing to commit.
		d.rm.discarded.Inc()
		d.settleStarved(p)
		return
	}
	w.route = nil
	var a *agentSlot
	var why string
	if err == nil {
		for _, r := range rk.Agents {
			if c := d.agents[r.AgentID]; c != nil && c.tenant == p.tenant && c.available() && c.hasSkill(w.skill) {
				a = c
				break
			}
		}
	}
	switch {
	case a != nil:
		d.rm.byPlugin.Inc()
		why = strings.ToValidUTF8(clip(rk.Explanation, maxRoutingNote), "\uFFFD")
	default:
		reason, ctr := routeFellBackStale, d.rm.fallbackStale
		if err != nil {
			reason, ctr = routeFellBackError+" (error)", d.rm.fallbackError
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				reason = routeFellBackError + " (timeout)"
			case errors.Is(err, backends.ErrUnavailable):
				reason = routeFellBackError + " (unavailable)"
			}
		}
		if d.collect(p, w); len(d.slots) == 0 {
			// Nobody can take it now: it waits for the next change.
			d.rm.requeuedNoAgent.Inc()
			break
		}
		ctr.Inc()
		a, why = d.decide(p, w, reason)
	}
	if a != nil {
		p.remove(w.conv)
		delete(d.where, w.conv)
		d.queued--
		giveSlot(&d.clock, a, w.conv)
		d.handled(p, w.conv)
		d.post(w.shard, ctrl{kind: ctrlAssign, conv: w.conv, u: a.u, note: why})
	}
	d.settleStarved(p)
}

// settleStarved drains p (when not nil: the pool of a decision that just
// ended, whose reservations are free again) and the pools that waited for
// a routing slot. d.mu is held.
func (d *dispatcher) settleStarved(p *tenantPool) {
	if p != nil {
		delete(d.starved, p.tenant)
		d.settle(p)
	}
	for tenant := range d.starved {
		if d.routing >= d.maxRouting {
			return
		}
		delete(d.starved, tenant)
		if q := d.pools[tenant]; q != nil {
			d.settle(q)
		}
	}
}

// idle reports whether no routing decision is in flight (tests).
func (d *dispatcher) idle() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.routing == 0
}
