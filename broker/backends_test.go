package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
	"github.com/unigate/unigate/backends/builtin/faq"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

func faqBot(t *testing.T) backends.Bot {
	t.Helper()
	b, err := faq.New(faq.SampleKB())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// isBotDeliver matches a message from the bot in conv.
func isBotDeliver(conv string) func(*protocol.Envelope) bool {
	return func(e *protocol.Envelope) bool {
		return e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == conv && e.Deliver.SenderRole == protocol.RoleBot
	}
}

// TestBotFirstAnswersThenHandsOff: with the built-in FAQ bot, a question
// it knows is answered by the bot (STATE_BOT, a BOT message); asking for
// a human stores the bot's holding reply and queues the conversation
// (reason handoff, no_agent_online while nobody is online), and the agent
// who comes online gets it with the bot's intent and summary and the
// whole history.
func TestBotFirstAnswersThenHandsOff(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "durable"}[durable], func(t *testing.T) {
			h := &recHook{}
			o := Options{AllowAnonymous: true, Backends: &Backends{Bot: faqBot(t), Hook: h}}
			var e *testEnv
			if durable {
				st := startStores(t, t.TempDir())
				e, _ = startDurable(t, o, st.hist, st.conv)
			} else {
				e = startEnv(t, o)
			}
			v := e.dial("visitor", protocol.SubprotocolJSON)
			v.hello(protocol.Hello{})
			conv := v.open(protocol.Open{Text: "你们几点上班", Language: "zh-CN", Region: "cn-east", Page: "/help"})
			if conv.State != protocol.StateBot {
				t.Fatalf("open: state %v, want STATE_BOT", conv.State)
			}
			if conv.Intent != "" || conv.Region != "" {
				t.Fatalf("the visitor sees agent-only fields: %+v", conv)
			}
			id := conv.ConversationID
			ans := v.waitFor("the bot's answer", isBotDeliver(id)).Deliver
			if ans.SenderID != SenderBot || !strings.Contains(ans.Text, "9:00") {
				t.Fatalf("bot answer %+v, want the opening hours from the sample KB", ans)
			}
			v.say(id, "m2", "转人工")
			q := v.waitState(id, protocol.StateQueued)
			if q.Reason != ReasonNoAgentOnline {
				t.Fatalf("queued with reason %q, want %q (nobody online: leave a message)", q.Reason, ReasonNoAgentOnline)
			}
			// (Durably, the holding reply's append may finish after the
			// state change is announced.)
			if !waitFor(t, 5*time.Second, func() bool { return len(v.all(isBotDeliver(id))) == 2 }) {
				t.Fatalf("%d bot messages, want the answer and the holding reply:\n%s", len(v.all(isBotDeliver(id))), summary(v.all(isDeliver(id))))
			}
			v.say(id, "m3", "我的订单号是 42，麻烦尽快处理")

			a := e.dial("agent", protocol.SubprotocolJSON)
			a.hello(protocol.Hello{Token: e.token("a1", "agent")})
			a.online(2)
			got := a.waitState(id, protocol.StateAssigned)
			if got.Intent == "" || got.Summary == "" {
				t.Fatalf("agent's conversation event lacks the bot's intent/summary: %+v", got)
			}
			if got.Region != "cn-east" || got.Language != "zh-CN" || got.Page != "/help" {
				t.Fatalf("agent's conversation event lacks the visitor context: %+v", got)
			}
			// The whole history: the visitor's 3 messages and the bot's 2.
			waitFor(t, 5*time.Second, func() bool { return len(a.delivers(id)) == 5 })
			if seqs := a.delivers(id); len(seqs) != 5 || seqs[0] != 1 || seqs[4] != 5 {
				t.Fatalf("agent replay %v, want 1..5", seqs)
			}
			if v.all(func(e *protocol.Envelope) bool {
				return e.Kind == protocol.KindConversation && e.Conversation.Intent != ""
			}) != nil {
				t.Fatal("the visitor was sent the bot's intent")
			}
			// The hand-off is an event for integrators, with what the bot
			// understood, between the opening and the assignment.
			if !waitFor(t, 5*time.Second, func() bool { return slices.Contains(h.types(), backends.EventConversationAssigned) }) {
				t.Fatalf("hook events %v: no assignment", h.types())
			}
			types := h.types()
			qi := slices.Index(types, backends.EventConversationQueued)
			if qi < 0 || qi < slices.Index(types, backends.EventConversationOpened) || qi > slices.Index(types, backends.EventConversationAssigned) {
				t.Fatalf("hook events %v: want conversation_queued between opened and assigned", types)
			}
			h.mu.Lock()
			var qe backends.Event
			for _, ev := range h.events {
				if ev.Type == backends.EventConversationQueued {
					qe = ev
				}
			}
			h.mu.Unlock()
			if qe.Attributes["reason"] != ReasonHandoff || qe.Attributes["intent"] == "" || qe.Attributes["summary"] == "" {
				t.Fatalf("conversation_queued attributes %v, want reason %q and the bot's intent and summary", qe.Attributes, ReasonHandoff)
			}
		})
	}
}

// scriptedBot answers with fixed answers, or fails.
type scriptedBot struct {
	mu    sync.Mutex
	ans   backends.Answer
	err   error
	calls []backends.AnswerRequest
	gate  chan struct{} // when set, each call waits for a token
}

func (b *scriptedBot) Answer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-ctx.Done():
			return backends.Answer{}, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, req)
	return b.ans, b.err
}

func TestBotLowConfidenceAndFailure(t *testing.T) {
	tests := []struct {
		name   string
		bot    *scriptedBot
		reason string
	}{
		{"below the threshold", &scriptedBot{ans: backends.Answer{Text: "maybe this?", Intent: "billing/refund", Confidence: 0.79, Summary: "wants a refund"}}, ReasonLowConfidence},
		{"the bot fails", &scriptedBot{err: errors.New("model server down")}, ReasonBotUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startEnv(t, Options{AllowAnonymous: true, Backends: &Backends{Bot: tt.bot}})
			a := e.dial("agent", protocol.SubprotocolJSON)
			a.hello(protocol.Hello{Token: e.token("a1", "agent")})
			a.online(1)
			v := e.dial("visitor", protocol.SubprotocolProto)
			v.hello(protocol.Hello{})
			id := v.open(protocol.Open{}).ConversationID
			v.say(id, "m1", "I was charged twice, I want my money back")
			q := v.waitState(id, protocol.StateQueued)
			if q.Reason != tt.reason {
				t.Fatalf("queued with reason %q, want %q", q.Reason, tt.reason)
			}
			got := a.waitState(id, protocol.StateAssigned)
			if tt.bot.err == nil && (got.Intent != "billing/refund" || got.Summary != "wants a refund") {
				t.Fatalf("agent sees intent %q summary %q", got.Intent, got.Summary)
			}
			if tt.bot.err != nil && !strings.Contains(got.Summary, "charged twice") {
				t.Fatalf("after a bot failure the summary is the visitor's message, got %q", got.Summary)
			}
			if n := len(v.all(isBotDeliver(id))); n != 0 {
				t.Fatalf("the visitor got %d bot messages; a low-confidence or failed answer is never shown", n)
			}
		})
	}
}

// TestBotOneQuestionAtATime: messages sent while the bot thinks are put to
// it once the answer comes (the newest one, with the others as history).
func TestBotOneQuestionAtATime(t *testing.T) {
	bot := &scriptedBot{ans: backends.Answer{Text: "ok", Intent: "x", Confidence: 0.95}, gate: make(chan struct{})}
	e := startEnv(t, Options{AllowAnonymous: true, Backends: &Backends{Bot: bot}})
	v := e.dial("visitor", protocol.SubprotocolJSON)
	v.hello(protocol.Hello{})
	id := v.open(protocol.Open{}).ConversationID
	v.say(id, "m1", "one")
	v.say(id, "m2", "two")
	v.say(id, "m3", "three")
	bot.gate <- struct{}{}
	v.waitFor("first answer", isBotDeliver(id))
	bot.gate <- struct{}{}
	waitFor(t, 5*time.Second, func() bool { return len(v.all(isBotDeliver(id))) == 2 })
	bot.mu.Lock()
	defer bot.mu.Unlock()
	if len(bot.calls) != 2 || bot.calls[0].Text != "one" || bot.calls[1].Text != "three" {
		t.Fatalf("bot asked %d times: %+v; want \"one\" then \"three\"", len(bot.calls), bot.calls)
	}
	if h := bot.calls[1].History; len(h) != 2 || h[0].Text != "one" || h[1].Text != "two" {
		t.Fatalf("second question's history %+v, want the earlier messages ending with \"two\"", h)
	}
}

// TestRouterPicksByRegionAndExplains: the built-in scorer sends a visitor
// from cn-east to the agent of cn-east (both free, same skills), a skill
// "billing/refund" to the agent with "billing", and the agent sees why.
func TestRouterPicksByRegionAndExplains(t *testing.T) {
	e := startEnv(t, Options{AllowAnonymous: true, Backends: &Backends{Router: &builtin.ScoringRouter{}}})
	agents := map[string]*tclient{}
	for _, a := range []struct{ id, region string }{{"a-north", "cn-north"}, {"a-east", "cn-east"}, {"z-west", "us-west"}} {
		c := e.dial(a.id, protocol.SubprotocolJSON)
		c.hello(protocol.Hello{Token: e.token(a.id, "agent", "billing")})
		id := c.send(protocol.Envelope{Kind: protocol.KindPresence, Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 3, Region: a.region}})
		p := c.waitFor("presence", func(e *protocol.Envelope) bool { return e.Kind == protocol.KindPresence && e.ID == id }).Presence
		if p.Region != a.region {
			t.Fatalf("presence echo region %q, want %q", p.Region, a.region)
		}
		agents[a.id] = c
	}
	v := e.dial("visitor", protocol.SubprotocolJSON)
	v.hello(protocol.Hello{})
	id := v.open(protocol.Open{Skill: "billing/refund", Region: "cn-east"}).ConversationID
	got := agents["a-east"].waitState(id, protocol.StateAssigned)
	if !strings.Contains(got.Routing, "a-east") || !strings.Contains(got.Routing, "geo 1.00") {
		t.Fatalf("routing explanation %q does not explain the choice", got.Routing)
	}
	// Next from cn-north: the north agent (the east one is busier now).
	v2 := e.dial("visitor2", protocol.SubprotocolJSON)
	v2.hello(protocol.Hello{})
	id2 := v2.open(protocol.Open{Skill: "billing", Region: "cn-north"}).ConversationID
	agents["a-north"].waitState(id2, protocol.StateAssigned)
	// A skill nobody serves waits.
	v3 := e.dial("visitor3", protocol.SubprotocolJSON)
	v3.hello(protocol.Hello{})
	id3 := v3.open(protocol.Open{Skill: "sales"}).ConversationID
	time.Sleep(100 * time.Millisecond)
	for name, c := range agents {
		if c.all(func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindConversation && e.Conversation.ConversationID == id3
		}) != nil {
			t.Fatalf("%s got a conversation for a skill it does not serve", name)
		}
	}
}

// recHook records events and authenticates "alice"/"secret" as an agent.
type recHook struct {
	mu     sync.Mutex
	events []backends.Event
	fail   int // the next fail Event calls fail
}

func (h *recHook) Event(_ context.Context, ev backends.Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail > 0 {
		h.fail--
		h.events = append(h.events, backends.Event{ID: "failed:" + ev.ID})
		return errors.New("crm down")
	}
	h.events = append(h.events, ev)
	return nil
}

func (h *recHook) Authenticate(_ context.Context, c backends.Credentials) (backends.Identity, error) {
	switch {
	case c.Username == "alice" && c.Password == "secret":
		return backends.Identity{OK: true, ID: "alice", Tenant: "acme", Roles: []string{"agent"}, Skills: []string{"billing"}}, nil
	case c.Username == "broken":
		return backends.Identity{}, errors.New("ldap unreachable")
	}
	return backends.Identity{Reason: "wrong user name or password"}, nil
}

func (h *recHook) types() []backends.EventType {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []backends.EventType
	for _, e := range h.events {
		if !strings.HasPrefix(e.ID, "failed:") {
			out = append(out, e.Type)
		}
	}
	return out
}

// TestHookEventsAtLeastOnce: the lifecycle reaches the hook in order; a
// failed delivery is retried with the same ID.
func TestHookEventsAtLeastOnce(t *testing.T) {
	h := &recHook{fail: 2}
	e := startEnv(t, Options{AllowAnonymous: true, Backends: &Backends{Hook: h, HookMessages: true, EventRetry: 10 * time.Millisecond}})
	a := e.dial("agent", protocol.SubprotocolJSON)
	a.hello(protocol.Hello{Token: e.token("a1", "agent")})
	a.online(1)
	v := e.dial("visitor", protocol.SubprotocolJSON)
	v.hello(protocol.Hello{})
	id := v.open(protocol.Open{}).ConversationID
	a.waitState(id, protocol.StateAssigned)
	v.say(id, "m1", "hello")
	a.send(protocol.Envelope{Kind: protocol.KindClose, Close: protocol.Close{ConversationID: id, Reason: "resolved"}})
	v.waitState(id, protocol.StateClosed)
	want := []backends.EventType{
		backends.EventVisitorConnected, backends.EventConversationOpened, backends.EventConversationAssigned,
		backends.EventMessageStored, backends.EventConversationClosed,
	}
	if !waitFor(t, 5*time.Second, func() bool { return len(h.types()) == len(want) }) {
		t.Fatalf("events %v, want %v", h.types(), want)
	}
	if got := h.types(); !slicesEqual(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// The two failures were the first event, retried with its ID.
	if h.events[0].ID != "failed:"+h.events[2].ID || h.events[1].ID != h.events[0].ID {
		t.Fatalf("retries did not repeat the ID: %q %q %q", h.events[0].ID, h.events[1].ID, h.events[2].ID)
	}
	for _, ev := range h.events[2:] {
		if ev.ID == "" || ev.Tenant == "" {
			t.Fatalf("event without id or tenant: %+v", ev)
		}
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPasswordHello: a hello with a username and password is decided by
// the hook: an agent with the hook's tenant and skills, a refusal (code,
// close 1008), a hook failure (temporary, close 1013); without a hook the
// server says password sign-in is off.
func TestPasswordHello(t *testing.T) {
	e := startEnv(t, Options{AllowAnonymous: true, Backends: &Backends{Hook: &recHook{}}})
	ok := e.dial("alice", protocol.SubprotocolJSON)
	w := ok.hello(protocol.Hello{Username: "alice", Password: "secret"})
	if w.Role != protocol.RoleAgent || w.UserID != "alice" {
		t.Fatalf("welcome %+v, want agent alice", w)
	}
	if p := ok.online(1); len(p.Skills) != 1 || p.Skills[0] != "billing" {
		t.Fatalf("presence skills %v, want the hook's [billing]", p.Skills)
	}

	bad := e.dial("mallory", protocol.SubprotocolJSON)
	id := bad.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Username: "alice", Password: "guess"}})
	er := bad.waitError(id, protocol.CodeBadToken)
	if !strings.Contains(er.Error.Message, "wrong user name or password") {
		t.Fatalf("refusal %q does not carry the hook's reason", er.Error.Message)
	}
	bad.waitClosed(1008)

	down := e.dial("broken", protocol.SubprotocolJSON)
	id = down.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Username: "broken", Password: "x"}})
	down.waitError(id, protocol.CodeUnavailable)
	down.waitClosed(1013)

	off := startEnv(t, Options{AllowAnonymous: true})
	c := off.dial("nohook", protocol.SubprotocolJSON)
	id = c.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Username: "alice", Password: "secret"}})
	c.waitError(id, protocol.CodeUnauthenticated)
}

// TestAPITransferHookEvents: a transfer through the integrator API is a
// conversation_transferred event for the hook like a participant's, from
// the agent who had it, to an agent and to a skill group.
func TestAPITransferHookEvents(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "durable"}[durable], func(t *testing.T) {
			h := &recHook{}
			o := Options{AllowAnonymous: true, Backends: &Backends{Hook: h}}
			var e *testEnv
			if durable {
				st := startStores(t, t.TempDir())
				e, _ = startDurable(t, o, st.hist, st.conv)
			} else {
				e = startEnv(t, o)
			}
			a1 := e.dial("agent-1", protocol.SubprotocolProto)
			a1.hello(protocol.Hello{Token: e.token("a1", "agent")})
			a1.online(2)
			v := e.dial("visitor", protocol.SubprotocolJSON)
			v.hello(protocol.Hello{})
			id := v.open(protocol.Open{Text: "hello"}).ConversationID
			v.waitState(id, protocol.StateAssigned)
			a2 := e.dial("agent-2", protocol.SubprotocolProto)
			a2.hello(protocol.Hello{Token: e.token("a2", "agent")})
			a2.online(2)

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := e.b.Transfer(ctx, token.DefaultTenant, id, "a2", "", "by the CRM"); err != nil {
				t.Fatal(err)
			}
			a2.waitState(id, protocol.StateTransferred)
			if _, err := e.b.Transfer(ctx, token.DefaultTenant, id, "", "billing", "to billing"); err != nil {
				t.Fatal(err)
			}
			transfers := func() []backends.Event {
				h.mu.Lock()
				defer h.mu.Unlock()
				var out []backends.Event
				for _, ev := range h.events {
					if ev.Type == backends.EventConversationTransferred && ev.ConversationID == id {
						out = append(out, ev)
					}
				}
				return out
			}
			if !waitFor(t, 5*time.Second, func() bool { return len(transfers()) == 2 }) {
				t.Fatalf("hook events %v: want two conversation_transferred", h.types())
			}
			if tr := transfers(); tr[0].ID == tr[1].ID || tr[0].FromAgentID != "a1" || tr[0].AgentID != "a2" || tr[1].FromAgentID != "a2" {
				t.Fatalf("transfer events %+v: want a1 → a2, then from a2, two ids", tr)
			}
		})
	}
}
