package backends

import (
	"time"

	pb "github.com/unigate/unigate/backends/proto"
)

func unixMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromUnixMS(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func answerRequestToPB(r AnswerRequest) *pb.AnswerRequest {
	out := &pb.AnswerRequest{
		ConversationId: r.ConversationID,
		Tenant:         r.Tenant,
		Text:           r.Text,
		Language:       r.Language,
	}
	if len(r.History) > 0 {
		out.History = make([]*pb.HistoryMessage, len(r.History))
		for i, h := range r.History {
			out.History[i] = &pb.HistoryMessage{From: h.From, Text: h.Text, AtUnixMs: unixMS(h.At)}
		}
	}
	return out
}

func answerRequestFromPB(r *pb.AnswerRequest) AnswerRequest {
	out := AnswerRequest{
		ConversationID: r.GetConversationId(),
		Tenant:         r.GetTenant(),
		Text:           r.GetText(),
		Language:       r.GetLanguage(),
	}
	if h := r.GetHistory(); len(h) > 0 {
		out.History = make([]HistoryMessage, len(h))
		for i, m := range h {
			out.History[i] = HistoryMessage{From: m.GetFrom(), Text: m.GetText(), At: fromUnixMS(m.GetAtUnixMs())}
		}
	}
	return out
}

func answerToPB(a Answer) *pb.AnswerResponse {
	return &pb.AnswerResponse{
		Text: a.Text, Intent: a.Intent, Confidence: a.Confidence,
		Handoff: a.Handoff, Summary: a.Summary, Skill: a.Skill,
	}
}

func answerFromPB(a *pb.AnswerResponse) Answer {
	return Answer{
		Text: a.GetText(), Intent: a.GetIntent(), Confidence: a.GetConfidence(),
		Handoff: a.GetHandoff(), Summary: a.GetSummary(), Skill: a.GetSkill(),
	}
}

func rankRequestToPB(r RankRequest) *pb.RankRequest {
	c := r.Conversation
	out := &pb.RankRequest{
		Conversation: &pb.RankConversation{
			Id: c.ID, Tenant: c.Tenant, Skills: c.Skills, Region: c.Region,
			Language: c.Language, Sentiment: c.Sentiment, Priority: int32(c.Priority),
		},
		Candidates: make([]*pb.Agent, len(r.Candidates)),
	}
	for i, a := range r.Candidates {
		out.Candidates[i] = &pb.Agent{
			Id: a.ID, Skills: a.Skills, Load: int32(a.Load), Capacity: int32(a.Capacity),
			Region: a.Region, Languages: a.Languages,
		}
	}
	return out
}

func rankRequestFromPB(r *pb.RankRequest) RankRequest {
	c := r.GetConversation()
	out := RankRequest{
		Conversation: Conversation{
			ID: c.GetId(), Tenant: c.GetTenant(), Skills: c.GetSkills(), Region: c.GetRegion(),
			Language: c.GetLanguage(), Sentiment: c.GetSentiment(), Priority: int(c.GetPriority()),
		},
		Candidates: make([]Agent, len(r.GetCandidates())),
	}
	for i, a := range r.GetCandidates() {
		out.Candidates[i] = Agent{
			ID: a.GetId(), Skills: a.GetSkills(), Load: int(a.GetLoad()), Capacity: int(a.GetCapacity()),
			Region: a.GetRegion(), Languages: a.GetLanguages(),
		}
	}
	return out
}

func rankingToPB(r Ranking) *pb.RankResponse {
	out := &pb.RankResponse{Explanation: r.Explanation, Agents: make([]*pb.RankedAgent, len(r.Agents))}
	for i, a := range r.Agents {
		out.Agents[i] = &pb.RankedAgent{AgentId: a.AgentID, Score: a.Score}
	}
	return out
}

func rankingFromPB(r *pb.RankResponse) Ranking {
	out := Ranking{Explanation: r.GetExplanation(), Agents: make([]Ranked, len(r.GetAgents()))}
	for i, a := range r.GetAgents() {
		out.Agents[i] = Ranked{AgentID: a.GetAgentId(), Score: a.GetScore()}
	}
	return out
}

func eventToPB(e Event) *pb.EventRequest {
	return &pb.EventRequest{
		Id: e.ID, Type: pb.EventType(e.Type), Tenant: e.Tenant,
		ConversationId: e.ConversationID, VisitorId: e.VisitorID,
		AgentId: e.AgentID, FromAgentId: e.FromAgentID,
		MessageId: e.MessageID, Text: e.Text, AtUnixMs: unixMS(e.At),
		Attributes: e.Attributes,
	}
}

func eventFromPB(e *pb.EventRequest) Event {
	return Event{
		ID: e.GetId(), Type: EventType(e.GetType()), Tenant: e.GetTenant(),
		ConversationID: e.GetConversationId(), VisitorID: e.GetVisitorId(),
		AgentID: e.GetAgentId(), FromAgentID: e.GetFromAgentId(),
		MessageID: e.GetMessageId(), Text: e.GetText(), At: fromUnixMS(e.GetAtUnixMs()),
		Attributes: e.GetAttributes(),
	}
}

func credentialsToPB(c Credentials) *pb.AuthenticateRequest {
	out := &pb.AuthenticateRequest{Tenant: c.Tenant, Role: c.Role, RemoteAddr: c.RemoteAddr}
	switch {
	case c.Token != "":
		out.Credentials = &pb.AuthenticateRequest_Token{Token: c.Token}
	case c.Username != "":
		out.Credentials = &pb.AuthenticateRequest_Password{
			Password: &pb.PasswordCredentials{Username: c.Username, Password: c.Password},
		}
	case len(c.SSOAssertion) > 0:
		out.Credentials = &pb.AuthenticateRequest_SsoAssertion{SsoAssertion: c.SSOAssertion}
	}
	return out
}

func credentialsFromPB(r *pb.AuthenticateRequest) Credentials {
	out := Credentials{Tenant: r.GetTenant(), Role: r.GetRole(), RemoteAddr: r.GetRemoteAddr()}
	out.Token = r.GetToken()
	if p := r.GetPassword(); p != nil {
		out.Username, out.Password = p.GetUsername(), p.GetPassword()
	}
	out.SSOAssertion = r.GetSsoAssertion()
	return out
}

func identityToPB(id Identity) *pb.AuthenticateResponse {
	return &pb.AuthenticateResponse{
		Ok: id.OK, Reason: id.Reason, Identity: id.ID, Tenant: id.Tenant,
		Roles: id.Roles, Skills: id.Skills, DisplayName: id.DisplayName,
	}
}

func identityFromPB(r *pb.AuthenticateResponse) Identity {
	return Identity{
		OK: r.GetOk(), Reason: r.GetReason(), ID: r.GetIdentity(), Tenant: r.GetTenant(),
		Roles: r.GetRoles(), Skills: r.GetSkills(), DisplayName: r.GetDisplayName(),
	}
}
