package broker

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// Backends connects the broker to a bot, a router and a hook (package
// backends). cmd/unigate builds them from its configuration: the built-in
// FAQ bot and scoring router, or plugin processes under supervision
// (backends/supervisor), which time out, restart and fall back on their
// own. See "Backends" in docs/broker.md.
//
// Backend calls never run on a shard or an event loop: bot answers and
// authentications run on Workers goroutines and come back to the shard as
// control messages; hook events go through a bounded queue to one
// delivering goroutine, or with Events to a spooler that stores them in
// JetStream and one delivering goroutine per partition (hookevents.go).
// Router is the exception (see below).
type Backends struct {
	// Bot, when set, answers visitors first: a new conversation starts in
	// STATE_BOT, every visitor message is put to the bot, and an answer
	// with Confidence >= BotThreshold (and no Handoff) is stored and
	// delivered as a message from the bot (role BOT, sender "bot"). A
	// hand-off (the answer asks for one, its confidence is below the
	// threshold, or the bot fails) stores the bot's holding reply if it
	// gave one and queues the conversation for a human with the bot's
	// intent and summary, which the agent sees. Nil: conversations are
	// queued at once.
	Bot backends.Bot
	// BotThreshold is the confidence at which the bot answers. Default
	// 0.8.
	BotThreshold float64
	// BotHistory is how many earlier messages the bot is given. Default 10.
	BotHistory int

	// Router ranks the agents who may take a waiting conversation (online,
	// with a free slot, serving its skill or a parent of it). It is called
	// on the dispatcher with its lock held, so it must answer in
	// microseconds without I/O: builtin.ScoringRouter is (and is asked for
	// its best agents only, without a ranking: ScoringRouter.Pick). Its
	// explanation is shown to the chosen agent. Nil: the least loaded
	// agent, then the one idle longest.
	Router backends.Router
	// RouterPlugin, when set, ranks instead of Router, off the dispatcher's
	// lock on the Workers: a two-phase assignment (route.go; "Routing
	// through a plugin" in docs/backends.md). The dispatcher snapshots the
	// conversation and its candidates and reserves a slot of each; the
	// answer is committed after revalidation (the conversation still
	// waiting, the agent still online with a free slot). Router decides
	// instead when it fails (an error, a timeout, an open breaker: its Rank
	// must return the error, not a fallback of its own), when no worker is
	// free, or when its ranking names no agent still eligible. Its
	// explanation (at most 1 KiB kept) is shown to the chosen agent.
	RouterPlugin backends.Router

	// Hook receives conversation events (opened, assigned, transferred,
	// closed, visitor connected and disconnected, message stored, message
	// left while no agent was online), at least once, each with a stable
	// ID, in order per conversation, and authenticates hellos that carry
	// a username and password instead of a token. Nil: no events,
	// password hellos are refused.
	Hook backends.Hook
	// HookMessages also sends message_stored events (one per message).
	// message_left events are sent either way.
	HookMessages bool
	// Events, when set, keeps the hook events in JetStream until the hook
	// took them (see HookEvents): they survive a crash, and in a cluster
	// one node delivers each. Nil: an in-memory queue, lost with the
	// process.
	Events *HookEvents
	// AuthCacheTTL keeps the hook's Authenticate answers for this long
	// (refusals for at most RefusalTTL; see authCache). 0: every password
	// hello calls the hook.
	AuthCacheTTL time.Duration
	// AuthCacheSize bounds the cached answers. Default
	// DefaultAuthCacheSize.
	AuthCacheSize int

	// Regions maps a client address to a region for the router when the
	// visitor declares none (a CIDR table). Nil: unknown.
	Regions func(netip.Addr) string

	// Workers is the number of goroutines that run bot, authentication and
	// RouterPlugin calls; one more call than they can take is answered by
	// the fallback at once (a hand-off, a refused hello, Router). At most
	// Workers routing decisions are in flight; further conversations wait
	// for one of them to end. Default 32.
	Workers int
	// CallTimeout bounds one bot or authentication call. Default 5s.
	CallTimeout time.Duration
	// EventQueue bounds the hook events waiting for delivery in memory
	// (with Events: waiting to be stored, whose own bound is
	// HookEventsOptions.MaxEvents); an event beyond it is dropped and
	// counted. Default 10000.
	EventQueue int
	// EventRetry is the first delay before a failed event is delivered
	// again (doubling up to a minute). Default 1s.
	EventRetry time.Duration
}

// Defaults of Backends.
const (
	DefaultBotThreshold = 0.8
	DefaultBotHistory   = 10
	DefaultBackendCalls = 32
	DefaultCallTimeout  = 5 * time.Second
	DefaultEventQueue   = 10000
)

// Reasons of the Conversation events of bot-first routing.
const (
	ReasonHandoff        = "handoff"         // the bot (or the visitor) asked for a human
	ReasonLowConfidence  = "low_confidence"  // the bot was not sure enough
	ReasonBotUnavailable = "bot_unavailable" // the bot failed or was too busy
	ReasonNoAgentOnline  = "no_agent_online" // queued while no agent of the tenant is online: leave a message
)

// maxBotField bounds the intent and summary kept from a bot, in bytes.
const maxBotField = 1024

func (o *Backends) withDefaults() Backends {
	bk := *o
	if bk.BotThreshold <= 0 {
		bk.BotThreshold = DefaultBotThreshold
	}
	if bk.BotHistory <= 0 {
		bk.BotHistory = DefaultBotHistory
	}
	if bk.Workers <= 0 {
		bk.Workers = DefaultBackendCalls
	}
	if bk.CallTimeout <= 0 {
		bk.CallTimeout = DefaultCallTimeout
	}
	if bk.EventQueue <= 0 {
		bk.EventQueue = DefaultEventQueue
	}
	if bk.EventRetry <= 0 {
		bk.EventRetry = time.Second
	}
	if bk.AuthCacheSize <= 0 {
		bk.AuthCacheSize = DefaultAuthCacheSize
	}
	return bk
}

// backendRun is the broker's side of Backends: the call workers, the event
// queue and their metrics. A nil *backendRun (no Backends) does nothing.
type backendRun struct {
	o      Backends
	botU   *user // sender of bot messages
	jobs   chan func(context.Context)
	events chan backends.Event

	// Durable events (Backends.Events, hookevents.go): the store, the
	// backlog each partition's deliverer last saw, throttled logs.
	hev                         *HookEvents
	backlog                     []atomic.Int64
	dropLog, storeLog, fetchLog logEvery
	// boot tells this process's connection ids from another's in the IDs
	// of visitor events.
	boot  string
	cache *authCache // Backends.AuthCacheTTL; nil: off

	botAnswers, botHandoffs, botFailures *metrics.Counter
	evDelivered, evRetried, evDropped    *metrics.Counter
	evStored                             *metrics.Counter
	authOK, authRefused, authFailed      *metrics.Counter
}

func newBackendRun(o *Backends, set *metrics.Set, now func() time.Time) *backendRun {
	if o == nil {
		return nil
	}
	r := &backendRun{
		o:      o.withDefaults(),
		botU:   &user{id: SenderBot, role: protocol.RoleBot},
		events: nil,
	}
	r.jobs = make(chan func(context.Context), r.o.Workers)
	r.boot = idEncoding.EncodeToString(randomBytes(5))
	if r.o.Hook != nil {
		r.events = make(chan backends.Event, r.o.EventQueue)
		if r.o.Events != nil {
			r.hev = r.o.Events
			r.backlog = make([]atomic.Int64, r.hev.Partitions())
		}
		if r.o.AuthCacheTTL > 0 {
			r.cache = newAuthCache(r.o.AuthCacheTTL, r.o.AuthCacheSize, set, now)
		}
	}
	r.botAnswers = set.NewCounter("unigate_broker_bot_answers_total")
	r.botHandoffs = set.NewCounter("unigate_broker_bot_handoffs_total")
	r.botFailures = set.NewCounter("unigate_broker_bot_failures_total")
	r.evDelivered = set.NewCounter("unigate_broker_hook_events_delivered_total")
	r.evRetried = set.NewCounter("unigate_broker_hook_events_retried_total")
	r.evDropped = set.NewCounter("unigate_broker_hook_events_dropped_total")
	r.evStored = set.NewCounter("unigate_broker_hook_events_stored_total")
	r.authOK = set.NewCounter(`unigate_broker_hook_auth_total{result="ok"}`)
	r.authRefused = set.NewCounter(`unigate_broker_hook_auth_total{result="refused"}`)
	r.authFailed = set.NewCounter(`unigate_broker_hook_auth_total{result="error"}`)
	set.NewGauge("unigate_broker_hook_events_queued", func() float64 {
		n := int64(len(r.events))
		for i := range r.backlog {
			n += r.backlog[i].Load()
		}
		return float64(n)
	})
	return r
}

// start runs the workers and the event deliverer until b.done.
func (r *backendRun) start(b *Broker) {
	if r == nil {
		return
	}
	b.wg.Add(r.o.Workers)
	for range r.o.Workers {
		go func() {
			defer b.wg.Done()
			for {
				select {
				case <-b.done:
					return
				case job := <-r.jobs:
					ctx, cancel := context.WithTimeout(b.ctx, r.o.CallTimeout)
					job(ctx)
					cancel()
				}
			}
		}()
	}
	switch {
	case r.hev != nil:
		b.wg.Add(2 + r.hev.Partitions())
		go r.spool(b)
		go func() {
			defer b.wg.Done()
			r.hev.awaitPubs(b.done)
		}()
		for p := range r.hev.Partitions() {
			go r.consume(b, p)
		}
	case r.events != nil:
		b.wg.Add(1)
		go r.deliver(b)
	}
}

// submit hands job to a worker without waiting; false when all are busy.
func (r *backendRun) submit(job func(context.Context)) bool {
	select {
	case r.jobs <- job:
		return true
	default:
		return false
	}
}

// hooked reports whether events go to a hook.
func (b *Broker) hooked() bool { return b.bk != nil && b.bk.events != nil }

// visitorEventID is the ID of a visitor_connected or _disconnected event:
// unique per connection across restarts and nodes.
func (r *backendRun) visitorEventID(u *user, what string, cl *client) string {
	return "v:" + u.id + ":" + what + ":" + r.boot + "." + strconv.FormatUint(cl.peer.ID(), 10)
}

// emit queues a hook event (never blocks; a full queue drops and counts).
func (b *Broker) emit(ev backends.Event) {
	r := b.bk
	if r == nil || r.events == nil {
		return
	}
	if ev.At.IsZero() {
		ev.At = b.now()
	}
	select {
	case r.events <- ev:
	default:
		r.evDropped.Inc()
	}
}

// deliver sends the queued events to the hook in order, each until it is
// accepted (the same ID every time: the hook drops duplicates), backing
// off between attempts. A fail-open supervised hook accepts while it is
// down (and counts the loss there). In-memory mode only: with Events,
// spool and consume (hookevents.go) take over.
func (r *backendRun) deliver(b *Broker) {
	defer b.wg.Done()
	for {
		select {
		case <-b.done:
			return
		case ev := <-r.events:
			delay := r.o.EventRetry
			for {
				ctx, cancel := context.WithTimeout(b.ctx, r.o.CallTimeout)
				err := r.o.Hook.Event(ctx, ev)
				cancel()
				if err == nil {
					r.evDelivered.Inc()
					break
				}
				r.evRetried.Inc()
				b.log.Warn("broker: hook event not delivered, retrying", "event", ev.ID, "type", ev.Type.String(), "err", err, "in", delay)
				select {
				case <-b.done:
					return
				case <-time.After(delay):
				}
				delay = min(2*delay, time.Minute)
			}
		}
	}
}

// convEvent returns a hook event about c.
func convEvent(c *conversation, t backends.EventType, id string) backends.Event {
	return backends.Event{
		ID:             id,
		Type:           t,
		Tenant:         c.tenant,
		ConversationID: c.id,
		VisitorID:      c.visitor.id,
		AgentID:        c.agentID(),
	}
}

// stored runs after a message of c is stored (durably when History is
// set): the hook's message_stored event, and the bot's turn when the
// visitor wrote to a conversation in STATE_BOT.
func (s *shard) stored(c *conversation, m *message) {
	if ev, ok := s.leftEvent(c, m); ok {
		s.b.emit(ev)
	}
	r := s.b.bk
	if r == nil {
		return
	}
	if r.events != nil && r.o.HookMessages {
		s.b.emit(storedEvent(c, m))
	}
	if c.state == protocol.StateBot && m.senderRole == protocol.RoleVisitor && r.o.Bot != nil {
		s.askBot(c)
	}
}

// leftEvent notes a visitor message stored while c waits in the queue
// with no agent of its tenant online (leave-a-message): c counts it for
// the integrator API (ConversationInfo.LeftMessages; the first one is
// saved with the metadata), and the hook gets a message_left event with
// the text (returned, ok, when there is a hook). Not in a cluster, where
// this node does not see every agent (nor does the visitor get reason
// no_agent_online there).
func (s *shard) leftEvent(c *conversation, m *message) (backends.Event, bool) {
	if m.senderRole != protocol.RoleVisitor || c.state != protocol.StateQueued ||
		s.b.o.Cluster != nil || s.b.disp.anyOnline(c.tenant) {
		return backends.Event{}, false
	}
	c.left++
	c.leftMilli = m.ts
	if c.left == 1 {
		s.persist(c)
	}
	if !s.b.hooked() {
		return backends.Event{}, false
	}
	seq := strconv.FormatUint(m.seq, 10)
	ev := convEvent(c, backends.EventMessageLeft, c.id+":message_left:"+seq)
	ev.MessageID, ev.Text = seq, m.text
	ev.At = time.UnixMilli(m.ts)
	ev.Attributes = map[string]string{"reason": ReasonNoAgentOnline, "left": strconv.FormatUint(uint64(c.left), 10)}
	if c.intent != "" {
		ev.Attributes["intent"] = c.intent
	}
	return ev, true
}

// botResult is a bot's answer on its way back to the conversation's shard.
type botResult struct {
	c   *conversation // identity only: compared, never touched off the shard
	ans backends.Answer
	err error
}

// askBot puts the newest visitor message of c to the bot, on a worker; one
// question at a time per conversation (a message arriving meanwhile is
// asked when the answer comes).
func (s *shard) askBot(c *conversation) {
	r := s.b.bk
	if c.botBusy {
		c.botAgain = true
		return
	}
	req := backends.AnswerRequest{ConversationID: c.id, Tenant: c.tenant, Language: c.language}
	// The newest visitor message is the question; up to BotHistory
	// messages before it are the context.
	n := c.hist.len()
	q := -1
	for i := n - 1; i >= 0; i-- {
		if c.hist.at(i).senderRole == protocol.RoleVisitor {
			q = i
			break
		}
	}
	if q < 0 {
		return
	}
	req.Text = c.hist.at(q).text
	for i := max(0, q-r.o.BotHistory); i < q; i++ {
		m := c.hist.at(i)
		req.History = append(req.History, backends.HistoryMessage{From: roleName(m.senderRole), Text: m.text, At: time.UnixMilli(m.ts)})
	}
	c.botBusy, c.botAgain = true, false
	bot, mbox, conv := r.o.Bot, &s.mbox, c.id
	ok := r.submit(func(ctx context.Context) {
		ans, err := bot.Answer(ctx, req)
		mbox.post(ctrl{kind: ctrlBot, conv: conv, bot: &botResult{c: c, ans: ans, err: err}})
	})
	if !ok {
		c.botBusy = false
		s.botAnswered(&ctrl{conv: conv, bot: &botResult{c: c, err: errWorkersBusy}})
	}
}

func roleName(r protocol.Role) string {
	switch r {
	case protocol.RoleVisitor:
		return "visitor"
	case protocol.RoleAgent:
		return "agent"
	case protocol.RoleBot:
		return "bot"
	}
	return "system"
}

// botAnswered applies a bot's answer to its conversation (shard).
func (s *shard) botAnswered(r *ctrl) {
	c, res := s.convs[r.conv], r.bot
	if c == nil || c != res.c {
		return // forgotten meanwhile
	}
	c.botBusy = false
	if c.state != protocol.StateBot {
		return // closed, or handed off meanwhile
	}
	bk := s.b.bk
	ans := res.ans
	reason := ""
	switch {
	case res.err != nil:
		bk.botFailures.Inc()
		s.b.log.Warn("broker: bot failed, handing off", "conversation", c.id, "err", res.err)
		reason = ReasonBotUnavailable
		ans = backends.Answer{Summary: s.lastVisitorText(c), Handoff: true}
	case ans.Handoff:
		reason = ReasonHandoff
	case ans.Confidence < bk.o.BotThreshold || strings.TrimSpace(ans.Text) == "":
		reason = ReasonLowConfidence
	}
	if reason == "" {
		bk.botAnswers.Inc()
		s.botSay(c, ans.Text)
		if c.botAgain {
			s.askBot(c)
		}
		return
	}
	if ans.Handoff && strings.TrimSpace(ans.Text) != "" && res.err == nil {
		s.botSay(c, ans.Text) // the bot's holding reply
	}
	bk.botHandoffs.Inc()
	s.handoff(c, ans, reason)
}

func (s *shard) lastVisitorText(c *conversation) string {
	for i := c.hist.len() - 1; i >= 0; i-- {
		if m := c.hist.at(i); m.senderRole == protocol.RoleVisitor {
			return m.text
		}
	}
	return ""
}

// botSay stores text as a message of the bot in c and delivers it.
func (s *shard) botSay(c *conversation, text string) {
	if len(text) > int(s.b.o.MaxMessageBytes) {
		text = clip(text, int(s.b.o.MaxMessageBytes))
	}
	u, now := s.b.bk.botU, s.b.now().UnixMilli()
	if s.b.o.History != nil {
		if !s.queueSend(c, pendingSend{u: u, text: strings.Clone(text), ts: now}) {
			s.b.log.Warn("broker: bot answer dropped: too many messages in flight", "conversation", c.id)
		}
		return
	}
	m := s.store(c, u, "", text, now)
	e := &s.out
	e.Kind = protocol.KindDeliver
	e.ID = 0
	e.Deliver = deliverOf(c, m)
	s.b.fanout(c.attached, nil, e)
	e.Deliver = protocol.Deliver{}
	s.b.m.relayed.Inc()
}

// handoff moves c from the bot to the queue, with what the bot understood.
func (s *shard) handoff(c *conversation, ans backends.Answer, reason string) {
	intent, summary := clip(ans.Intent, maxBotField), clip(ans.Summary, maxBotField)
	skill := c.skill
	if skill == "" && ans.Skill != "" {
		skill = clip(ans.Skill, maxBotField)
	}
	if s.b.o.Cluster != nil {
		m := c.meta()
		m.State, m.Event, m.Reason, m.Skill = protocol.StateQueued, protocol.StateQueued, reason, skill
		m.Intent, m.Summary = intent, summary
		s.noteConv(c, m, backends.EventConversationQueued, "")
		if !s.commit(c, m) {
			return // another node changed it first; its record was applied
		}
	}
	c.intent, c.summary, c.skill, c.reason = intent, summary, skill, reason
	s.setState(c, protocol.StateQueued)
	if s.b.o.Cluster == nil {
		s.noteConv(c, nil, backends.EventConversationQueued, "")
		s.persist(c)
	}
	s.emitConv(c)
	s.b.disp.handoff(c.tenant, c.id, s.idx, s.routeInfo(c))
	s.recheckLater(c)
	if s.b.o.Cluster == nil && !s.b.disp.anyOnline(c.tenant) {
		reason = ReasonNoAgentOnline
	}
	s.announce(c, protocol.StateQueued, reason, nil, 0)
}

// routeInfo is what the dispatcher and the router know of a waiting c.
func (s *shard) routeInfo(c *conversation) routeInfo {
	return routeInfo{
		skill:     c.skill,
		prio:      c.prio,
		region:    c.region,
		language:  c.language,
		sentiment: s.sentiment(c),
	}
}

// clip cuts s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return strings.Clone(s)
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.Clone(s[:n])
}

// authResult is an authentication hook's answer for a hello.
type authResult struct {
	id  backends.Identity
	err error
}

// authenticate puts a hello with a username and password to the hook on a
// worker; the hello continues on the home shard when the answer comes
// (ctrlAuthed). It reports whether it kept the item.
func (s *shard) authenticate(it *item) bool {
	r := s.b.bk
	h := &it.env.Hello
	cred := backends.Credentials{
		Tenant:   strings.Clone(h.Tenant),
		Username: strings.Clone(h.Username),
		Password: strings.Clone(h.Password),
	}
	if a, ok := it.cl.peer.(interface{ RemoteAddr() netip.Addr }); ok {
		cred.RemoteAddr = a.RemoteAddr().String()
	}
	hook, mbox := r.o.Hook, &s.mbox
	cache := r.cache
	if cache == nil {
		return r.submit(func(ctx context.Context) {
			id, err := hook.Authenticate(ctx, cred)
			mbox.post(ctrl{kind: ctrlAuthed, it: it, auth: &authResult{id: id, err: err}})
		})
	}
	k := cache.keyOf(&cred)
	switch id, res := cache.lookup(k, authWaiter{it: it, mbox: mbox}); res {
	case authHit:
		mbox.post(ctrl{kind: ctrlAuthed, it: it, auth: &authResult{id: id}})
		return true
	case authJoined:
		return true // answered with the call in flight for the same credentials
	}
	ok := r.submit(func(ctx context.Context) {
		id, err := hook.Authenticate(ctx, cred)
		for _, w := range cache.settle(k, id, err) {
			w.mbox.post(ctrl{kind: ctrlAuthed, it: w.it, auth: &authResult{id: cloneIdentity(id), err: err}})
		}
		mbox.post(ctrl{kind: ctrlAuthed, it: it, auth: &authResult{id: id, err: err}})
	})
	if !ok {
		for _, w := range cache.settle(k, backends.Identity{}, errWorkersBusy) {
			w.mbox.post(ctrl{kind: ctrlAuthed, it: w.it, auth: &authResult{err: errWorkersBusy}})
		}
	}
	return ok
}

// errWorkersBusy: every backend worker is busy.
var errWorkersBusy = errors.New("broker: all backend workers busy")

// authed continues a hello after the authentication hook answered.
func (s *shard) authed(r *ctrl) {
	it, res, bk := r.it, r.auth, s.b.bk
	defer putItem(it)
	cl, id := it.cl, it.env.ID
	if cl.closed.Load() {
		return
	}
	switch {
	case res.err != nil:
		bk.authFailed.Inc()
		s.b.log.Warn("broker: authentication hook failed", "err", res.err)
		s.fail(cl, id, protocol.CodeUnavailable, "authentication unavailable, retry later")
		cl.peer.Close(netpoll.StatusTryAgainLater, "authentication unavailable; retry in 5 s")
		return
	case res.id.OK && res.id.ID == "":
		// A fail-open hook that is down: the hello goes on as an
		// anonymous one (refused unless AllowAnonymous).
		bk.authFailed.Inc()
		it.env.Hello.Username, it.env.Hello.Password = "", ""
		s.hello(it)
		return
	case !res.id.OK:
		bk.authRefused.Inc()
		msg := "authentication failed"
		if res.id.Reason != "" {
			msg += ": " + clip(res.id.Reason, 200)
		}
		s.fail(cl, id, protocol.CodeBadToken, msg)
		cl.peer.Close(ws.StatusPolicyViolation, "authentication failed")
		return
	}
	bk.authOK.Inc()
	role := token.RoleVisitor
	for _, r := range res.id.Roles {
		if r == token.RoleAgent {
			role = token.RoleAgent
		}
	}
	tenant := res.id.Tenant
	if tenant == "" {
		tenant = it.env.Hello.Tenant
	}
	if tenant == "" {
		tenant = token.DefaultTenant
	}
	it.ident = &token.Claims{Subject: res.id.ID, Role: role, Tenant: tenant, Name: res.id.DisplayName, Skills: res.id.Skills}
	s.hello(it)
}

// regionOf maps a connection's address to a region with Backends.Regions.
func (b *Broker) regionOf(cl *client) string {
	if b.bk == nil || b.bk.o.Regions == nil {
		return ""
	}
	a, ok := cl.peer.(interface{ RemoteAddr() netip.Addr })
	if !ok {
		return ""
	}
	return b.bk.o.Regions(a.RemoteAddr())
}

// sentiment scores the visitor's last messages in c for the router (zero
// without one).
func (s *shard) sentiment(c *conversation) float64 {
	if s.b.bk == nil || (s.b.bk.o.Router == nil && s.b.bk.o.RouterPlugin == nil) {
		return 0
	}
	var texts [5]string
	n := 0
	for i := c.hist.len() - 1; i >= 0 && n < len(texts); i-- {
		if m := c.hist.at(i); m.senderRole == protocol.RoleVisitor {
			texts[n] = m.text
			n++
		}
	}
	return builtin.Sentiment(texts[:n]...)
}
