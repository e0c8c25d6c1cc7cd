package protocol

// Kind says which body of an Envelope is set. The numbers are the field
// numbers of the oneof in unigate.proto (Envelope.body), so Kind doubles as
// the wire tag of the body.
type Kind uint8

// The envelope kinds. Direction: C→S client to server, S→C server to client.
const (
	KindNone         Kind = 0
	KindHello        Kind = 10 // C→S first message: authenticate, optionally resume
	KindWelcome      Kind = 11 // S→C reply to Hello
	KindOpen         Kind = 12 // C→S visitor opens a conversation
	KindConversation Kind = 13 // S→C conversation state changed (opened, queued, assigned, transferred, closed)
	KindSend         Kind = 14 // C→S a chat message
	KindAck          Kind = 15 // S→C the server stored a Send and gave it a sequence number
	KindDeliver      Kind = 16 // S→C a chat message for a participant
	KindTyping       Kind = 17 // both ways: typing on/off
	KindRead         Kind = 18 // both ways: read receipt up to a sequence number
	KindPresence     Kind = 19 // C→S an agent sets its status; S→C presence events
	KindTransfer     Kind = 20 // C→S an agent transfers a conversation
	KindClose        Kind = 21 // C→S close a conversation
	KindQueue        Kind = 22 // S→C queue position and ETA of a waiting visitor
	KindError        Kind = 23 // S→C a coded error, usually answering the envelope with the same id
	KindSecure       Kind = 24 // both ways: a secure-channel handshake message or record (docs/crypto.md)
)

// Role of a participant.
type Role uint8

const (
	RoleUnspecified Role = 0
	RoleVisitor     Role = 1
	RoleAgent       Role = 2
	RoleBot         Role = 3
	RoleSystem      Role = 4
)

// State of a conversation.
type State uint8

const (
	StateUnspecified State = 0
	StateBot         State = 1
	StateQueued      State = 2
	StateAssigned    State = 3
	StateTransferred State = 4
	StateClosed      State = 5
)

// Status of an agent.
type Status uint8

const (
	StatusUnspecified Status = 0
	StatusOnline      Status = 1
	StatusAway        Status = 2
	StatusBusy        Status = 3
	StatusOffline     Status = 4
)

// Cursor names the last sequence number a client has seen in a conversation.
type Cursor struct {
	ConversationID string
	LastSeq        uint64
}

// Hello is the first envelope a client sends.
type Hello struct {
	Token       string   // signed visitor or agent token; empty: anonymous visitor
	ResumeToken string   // from an earlier Welcome; empty: new session
	Cursors     []Cursor // last seen sequence per conversation, for replay on resume
	ClientName  string   // free text, e.g. "widget/1.2.0"
	Tenant      string   // tenant of an anonymous visitor; ignored when Token carries one
	Username    string   // credentials for the authentication hook, instead of Token
	Password    string
}

// Welcome answers Hello.
type Welcome struct {
	SessionID       string
	ResumeToken     string
	Role            Role
	UserID          string // visitor or agent id
	HeartbeatMillis uint32 // server ping interval
	MaxMessageBytes uint32
	ServerVersion   string
	Resumed         bool
	Conversations   []string // conversations the session takes part in
}

// Open asks for a new conversation (visitor only).
type Open struct {
	Skill    string // wanted skill group, optional
	Priority uint32 // 0 normal; higher is served first
	Text     string // optional first message
	Region   string // visitor context: declared region, language (BCP 47), page
	Language string
	Page     string
}

// Conversation reports a conversation's state to its participants.
type Conversation struct {
	ConversationID string
	State          State
	VisitorID      string
	AgentID        string
	Skill          string
	Reason         string
	LastSeq        uint64
	Intent         string // the bot's understanding at hand-off
	Summary        string
	Routing        string // the router's explanation (agents only)
	Region         string // visitor context (agents only)
	Language       string
	Page           string
}

// Send is a chat message from a client.
type Send struct {
	ConversationID string
	ClientMsgID    string // client-chosen id, unique per sender; duplicates get the original Ack
	Text           string
}

// Ack tells a sender its message is stored under Seq.
type Ack struct {
	ConversationID string
	ClientMsgID    string
	Seq            uint64
	TimestampMilli int64
}

// Deliver carries a chat message to a participant.
type Deliver struct {
	ConversationID string
	Seq            uint64
	SenderID       string
	SenderRole     Role
	ClientMsgID    string
	Text           string
	TimestampMilli int64
}

// Typing says a participant started or stopped typing.
type Typing struct {
	ConversationID string
	On             bool
	SenderID       string // set by the server
	SenderRole     Role   // set by the server
}

// Read is a read receipt: everything up to Seq was read.
type Read struct {
	ConversationID string
	Seq            uint64
	SenderID       string // set by the server
	SenderRole     Role   // set by the server
}

// Presence is an agent's status and capacity.
type Presence struct {
	AgentID  string // set by the server on events
	Status   Status
	Capacity uint32 // concurrent conversations the agent takes; 0 keeps the current value
	Skills   []string
	Region   string // for the router's geography; empty keeps the current one
}

// Transfer moves a conversation to another agent or skill group.
type Transfer struct {
	ConversationID string
	ToAgentID      string
	ToSkill        string
	Note           string
}

// Close ends a conversation.
type Close struct {
	ConversationID string
	Reason         string
}

// Queue tells a waiting visitor where it stands.
type Queue struct {
	ConversationID string
	Position       uint32 // 1 is next
	EtaSeconds     uint32
}

// Secure carries one message of the application-layer secure channel
// (package crypto): a handshake message or a record whose plaintext is the
// inner envelope, encoded with the connection's codec. Data is opaque
// bytes, not a string: after Proto.Decode it aliases the decoded buffer
// like the string fields do.
type Secure struct {
	Data []byte
}

// Error is a coded error. It is both a body (KindError) and the Go error
// the codecs return; see Code for the ranges. NewError fills Temporary from
// the code.
type Error struct {
	Code      Code
	Message   string // a human sentence
	Temporary bool   // retrying the same request later may succeed
}

// Envelope is one protocol message. Exactly one body, named by Kind, is
// meaningful; encoders ignore the others, and Decode leaves them zero. ID is
// chosen by the client for requests and echoed in the server's reply
// (Welcome, Ack, Conversation, Error) so a client can match them.
//
// Envelope is designed to be reused: Reset clears it but keeps the
// capacity of its slices, and Codec.Decode resets it first. After
// Proto.Decode, string fields alias the decoded buffer (see Codec.Decode):
// the buffer must stay unchanged while the envelope is used, and anything
// kept longer must be copied (strings.Clone). An Envelope is not safe for
// concurrent use.
type Envelope struct {
	Kind Kind
	ID   uint64

	Hello        Hello
	Welcome      Welcome
	Open         Open
	Conversation Conversation
	Send         Send
	Ack          Ack
	Deliver      Deliver
	Typing       Typing
	Read         Read
	Presence     Presence
	Transfer     Transfer
	Close        Close
	Queue        Queue
	Error        Error
	Secure       Secure
}

// Reset clears e for reuse. The Cursors, Conversations and Skills slices
// keep their capacity (their elements are zeroed, so they stop aliasing an
// old buffer).
func (e *Envelope) Reset() {
	cursors := e.Hello.Cursors
	convs := e.Welcome.Conversations
	skills := e.Presence.Skills
	clear(cursors)
	clear(convs)
	clear(skills)
	*e = Envelope{}
	e.Hello.Cursors = cursors[:0]
	e.Welcome.Conversations = convs[:0]
	e.Presence.Skills = skills[:0]
}

// resetBody clears the body named by k, keeping slice capacity.
func (e *Envelope) resetBody(k Kind) {
	switch k {
	case KindHello:
		c := e.Hello.Cursors
		clear(c)
		e.Hello = Hello{Cursors: c[:0]}
	case KindWelcome:
		c := e.Welcome.Conversations
		clear(c)
		e.Welcome = Welcome{Conversations: c[:0]}
	case KindOpen:
		e.Open = Open{}
	case KindConversation:
		e.Conversation = Conversation{}
	case KindSend:
		e.Send = Send{}
	case KindAck:
		e.Ack = Ack{}
	case KindDeliver:
		e.Deliver = Deliver{}
	case KindTyping:
		e.Typing = Typing{}
	case KindRead:
		e.Read = Read{}
	case KindPresence:
		s := e.Presence.Skills
		clear(s)
		e.Presence = Presence{Skills: s[:0]}
	case KindTransfer:
		e.Transfer = Transfer{}
	case KindClose:
		e.Close = Close{}
	case KindQueue:
		e.Queue = Queue{}
	case KindError:
		e.Error = Error{}
	case KindSecure:
		e.Secure = Secure{}
	}
}

var kindNames = [...]string{
	KindNone:         "none",
	KindHello:        "hello",
	KindWelcome:      "welcome",
	KindOpen:         "open",
	KindConversation: "conversation",
	KindSend:         "send",
	KindAck:          "ack",
	KindDeliver:      "deliver",
	KindTyping:       "typing",
	KindRead:         "read",
	KindPresence:     "presence",
	KindTransfer:     "transfer",
	KindClose:        "close",
	KindQueue:        "queue",
	KindError:        "error",
	KindSecure:       "secure",
}

// Valid reports whether k names a body (KindHello through KindSecure).
func (k Kind) Valid() bool { return k >= KindHello && k <= KindSecure }

// String returns the body's name as in unigate.proto ("send"), "none" for
// KindNone, or "kind(N)".
func (k Kind) String() string {
	if k == KindNone || k.Valid() {
		return kindNames[k]
	}
	return "kind(" + itoa(uint64(k)) + ")"
}

// Valid reports whether r is one of the roles defined by this version
// (RoleUnspecified included). Decoders keep unknown values (see Codec);
// code acting on a role checks it.
func (r Role) Valid() bool { return r <= RoleSystem }

// String returns "visitor", "agent", "bot", "system", "unspecified" or
// "role(N)".
func (r Role) String() string {
	switch r {
	case RoleUnspecified:
		return "unspecified"
	case RoleVisitor:
		return "visitor"
	case RoleAgent:
		return "agent"
	case RoleBot:
		return "bot"
	case RoleSystem:
		return "system"
	}
	return "role(" + itoa(uint64(r)) + ")"
}

// Valid reports whether s is one of the states defined by this version
// (StateUnspecified included).
func (s State) Valid() bool { return s <= StateClosed }

// String returns "bot", "queued", "assigned", "transferred", "closed",
// "unspecified" or "state(N)".
func (s State) String() string {
	switch s {
	case StateUnspecified:
		return "unspecified"
	case StateBot:
		return "bot"
	case StateQueued:
		return "queued"
	case StateAssigned:
		return "assigned"
	case StateTransferred:
		return "transferred"
	case StateClosed:
		return "closed"
	}
	return "state(" + itoa(uint64(s)) + ")"
}

// Valid reports whether s is one of the statuses defined by this version
// (StatusUnspecified included).
func (s Status) Valid() bool { return s <= StatusOffline }

// String returns "online", "away", "busy", "offline", "unspecified" or
// "status(N)".
func (s Status) String() string {
	switch s {
	case StatusUnspecified:
		return "unspecified"
	case StatusOnline:
		return "online"
	case StatusAway:
		return "away"
	case StatusBusy:
		return "busy"
	case StatusOffline:
		return "offline"
	}
	return "status(" + itoa(uint64(s)) + ")"
}
