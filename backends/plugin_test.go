package backends_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/unigate/unigate/backends"
)

// recorder returns canned results and records what it was given.
type recorder struct {
	answerReq backends.AnswerRequest
	rankReq   backends.RankRequest
	event     backends.Event
	cred      backends.Credentials
}

func (r *recorder) Answer(_ context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	r.answerReq = req
	return backends.Answer{Text: "t", Intent: "i", Confidence: 0.5, Handoff: true, Summary: "s", Skill: "billing/refund"}, nil
}

func (r *recorder) Rank(_ context.Context, req backends.RankRequest) (backends.Ranking, error) {
	r.rankReq = req
	return backends.Ranking{Agents: []backends.Ranked{{AgentID: "a", Score: 0.7}}, Explanation: "e"}, nil
}

func (r *recorder) Event(_ context.Context, ev backends.Event) error {
	r.event = ev
	return nil
}

func (r *recorder) Authenticate(_ context.Context, c backends.Credentials) (backends.Identity, error) {
	r.cred = c
	return backends.Identity{OK: true, ID: "u", Tenant: "t", Roles: []string{"agent"}, Skills: []string{"billing"}, DisplayName: "U"}, nil
}

// TestGRPCGlue sends every field through the gRPC glue in-process and
// checks that it arrives unchanged.
func TestGRPCGlue(t *testing.T) {
	rec := &recorder{}
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{
		backends.PluginBot:    &backends.BotPlugin{Impl: rec},
		backends.PluginRouter: &backends.RouterPlugin{Impl: rec},
		backends.PluginHook:   &backends.HookPlugin{Impl: rec},
	})
	defer client.Close()
	dispense := func(name string) any {
		raw, err := client.Dispense(name)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	ctx := context.Background()
	at := time.UnixMilli(1700000000123)

	areq := backends.AnswerRequest{ConversationID: "c", Tenant: "acme", Text: "hi", Language: "zh-CN",
		History: []backends.HistoryMessage{{From: "visitor", Text: "h", At: at}}}
	a, err := dispense(backends.PluginBot).(backends.Bot).Answer(ctx, areq)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.answerReq, areq) {
		t.Errorf("answer request: got %+v, want %+v", rec.answerReq, areq)
	}
	if want := (backends.Answer{Text: "t", Intent: "i", Confidence: 0.5, Handoff: true, Summary: "s", Skill: "billing/refund"}); a != want {
		t.Errorf("answer: got %+v, want %+v", a, want)
	}

	rreq := backends.RankRequest{
		Conversation: backends.Conversation{ID: "c", Tenant: "acme", Skills: []string{"billing/refund"}, Region: "cn-east",
			Language: "zh", Sentiment: -0.5, Priority: 2},
		Candidates: []backends.Agent{{ID: "a", Skills: []string{"billing"}, Load: 1, Capacity: 4, Region: "cn-east", Languages: []string{"zh"}}},
	}
	rk, err := dispense(backends.PluginRouter).(backends.Router).Rank(ctx, rreq)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.rankReq, rreq) {
		t.Errorf("rank request: got %+v, want %+v", rec.rankReq, rreq)
	}
	if len(rk.Agents) != 1 || rk.Agents[0] != (backends.Ranked{AgentID: "a", Score: 0.7}) || rk.Explanation != "e" {
		t.Errorf("ranking: %+v", rk)
	}

	hook := dispense(backends.PluginHook).(backends.Hook)
	ev := backends.Event{ID: "e1", Type: backends.EventConversationTransferred, Tenant: "acme", ConversationID: "c",
		VisitorID: "v", AgentID: "a2", FromAgentID: "a1", MessageID: "m", Text: "x", At: at,
		Attributes: map[string]string{"reason": "skill"}}
	if err := hook.Event(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.event, ev) {
		t.Errorf("event: got %+v, want %+v", rec.event, ev)
	}
	for _, c := range []backends.Credentials{
		{Tenant: "acme", Role: "agent", Username: "u", Password: "p", RemoteAddr: "10.0.0.1"},
		{Tenant: "acme", Role: "visitor", Token: "tok"},
		{Tenant: "acme", Role: "agent", SSOAssertion: []byte("<saml/>")},
	} {
		id, err := hook.Authenticate(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rec.cred, c) {
			t.Errorf("credentials: got %+v, want %+v", rec.cred, c)
		}
		if !id.OK || id.ID != "u" || id.DisplayName != "U" || len(id.Skills) != 1 {
			t.Errorf("identity: %+v", id)
		}
	}
}

func TestEventTypeString(t *testing.T) {
	if s := backends.EventMessageStored.String(); s != "message_stored" {
		t.Errorf("got %q", s)
	}
	if s := backends.EventType(99).String(); s != "unknown" {
		t.Errorf("got %q", s)
	}
}
