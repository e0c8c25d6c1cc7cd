package backends

import (
	"context"
	"errors"
	"time"
)

// Bot answers a visitor before (or instead of) a human agent.
type Bot interface {
	Answer(ctx context.Context, req AnswerRequest) (Answer, error)
}

// Router ranks candidate agents for a conversation waiting in the queue.
type Router interface {
	Rank(ctx context.Context, req RankRequest) (Ranking, error)
}

// Hook receives conversation events and authenticates visitors and agents
// against an enterprise system.
type Hook interface {
	// Event is delivered at least once: a retried event carries the same
	// ID, so an implementation drops IDs it has already seen.
	Event(ctx context.Context, ev Event) error
	// Authenticate returns an Identity with OK set, or OK unset and a
	// Reason for the refusal. An error means the backend could not decide.
	Authenticate(ctx context.Context, cred Credentials) (Identity, error)
}

// ErrUnavailable is returned (wrapped) when a backend cannot be reached.
var ErrUnavailable = errors.New("backends: backend unavailable")

// HistoryMessage is one earlier message of a conversation.
type HistoryMessage struct {
	From string // "visitor", "agent" or "bot"
	Text string
	At   time.Time
}

// AnswerRequest is what a Bot answers.
type AnswerRequest struct {
	ConversationID string
	Tenant         string
	Text           string // the visitor's message
	Language       string // BCP 47, "" when unknown
	History        []HistoryMessage
}

// Answer is a Bot's reply.
type Answer struct {
	Text       string
	Intent     string
	Confidence float64 // 0..1
	Handoff    bool    // the bot asks for a human regardless of Confidence
	Summary    string  // shown to the agent on handoff
	// Skill is the skill an agent needs on hand-off ("billing/refund");
	// "" lets the gateway derive it from Intent.
	Skill string
}

// Conversation describes a conversation to route.
type Conversation struct {
	ID        string
	Tenant    string
	Skills    []string // hierarchical: "billing/refund"
	Region    string
	Language  string
	Sentiment float64 // -1 (angry) .. 1 (happy)
	Priority  int
}

// Agent is a routing candidate.
type Agent struct {
	ID        string
	Skills    []string
	Load      int // conversations currently assigned
	Capacity  int // load >= capacity excludes the agent
	Region    string
	Languages []string
}

// RankRequest is what a Router ranks.
type RankRequest struct {
	Conversation Conversation
	Candidates   []Agent
}

// Ranked is one agent in a Ranking.
type Ranked struct {
	AgentID string
	Score   float64
}

// Ranking is a Router's answer: eligible agents, best first.
type Ranking struct {
	Agents      []Ranked
	Explanation string
}

// EventType says what happened.
type EventType int

// Event types; the values match backends.proto.
const (
	EventUnspecified EventType = iota
	EventConversationOpened
	EventConversationAssigned
	EventConversationTransferred
	EventConversationClosed
	EventVisitorConnected
	EventVisitorDisconnected
	EventMessageStored
	// EventMessageLeft: a visitor wrote while its conversation waited in
	// the queue with no agent of the tenant online (leave-a-message).
	EventMessageLeft
	// EventConversationQueued: the bot handed the conversation to the
	// queue for a human (Attributes: reason, intent, summary).
	EventConversationQueued
)

var eventTypeNames = [...]string{
	"unspecified", "conversation_opened", "conversation_assigned",
	"conversation_transferred", "conversation_closed", "visitor_connected",
	"visitor_disconnected", "message_stored", "message_left",
	"conversation_queued",
}

func (t EventType) String() string {
	if t < 0 || int(t) >= len(eventTypeNames) {
		return "unknown"
	}
	return eventTypeNames[t]
}

// ParseEventType returns the EventType whose String is name; false for
// "unspecified" and unknown names.
func ParseEventType(name string) (EventType, bool) {
	for i := 1; i < len(eventTypeNames); i++ {
		if eventTypeNames[i] == name {
			return EventType(i), true
		}
	}
	return EventUnspecified, false
}

// Event is one conversation event for a Hook.
type Event struct {
	ID             string // idempotency id, stable across retries
	Type           EventType
	Tenant         string
	ConversationID string
	VisitorID      string
	AgentID        string // assigned agent, or the receiving agent of a transfer
	FromAgentID    string // the previous agent of a transfer
	MessageID      string // EventMessageStored, EventMessageLeft
	Text           string // EventMessageStored, EventMessageLeft
	At             time.Time
	Attributes     map[string]string
}

// Credentials are what a visitor or agent presented. Exactly one of Token,
// Username (with Password) or SSOAssertion is set.
type Credentials struct {
	Tenant       string
	Role         string // "visitor" or "agent"
	Token        string
	Username     string
	Password     string
	SSOAssertion []byte
	RemoteAddr   string
}

// Identity is the result of Authenticate.
type Identity struct {
	OK          bool
	Reason      string // why OK is false
	ID          string
	Tenant      string
	Roles       []string
	Skills      []string
	DisplayName string
	// Fallback is set by a supervisor's fallback (backends/supervisor):
	// the backend did not answer, so this is no decision of it. Callers
	// never cache such a result. Not carried over gRPC.
	Fallback bool
}
