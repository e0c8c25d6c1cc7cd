package protocol

import (
	"math"
	"reflect"
	"testing"

	"github.com/unigate/unigate/protocol/pb"
)

// sample is one envelope written twice by hand: as the Go Envelope and as
// the generated pb message. The differential tests check that the two
// agree on the wire, so the field mapping is verified independently of
// toPB/fromPB.
type sample struct {
	name string
	env  Envelope
	pb   *pb.Envelope
}

const longText = "您好，我的订单 #20240611-0042 还没有发货，能帮我查一下吗？Thanks! 🙏"

func samples() []sample {
	return []sample{
		{
			name: "hello",
			env: Envelope{Kind: KindHello, ID: 1, Hello: Hello{
				Token:       "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ2LTQyIn0.c2ln",
				ResumeToken: "rt-1",
				Cursors: []Cursor{
					{ConversationID: "c1", LastSeq: 42},
					{ConversationID: "c2"},
					{LastSeq: 7},
					{},
				},
				ClientName: "widget/1.2.0",
				Tenant:     "acme",
				Username:   "zhang.wei",
				Password:   "密码 p@ss",
			}},
			pb: &pb.Envelope{Id: 1, Body: &pb.Envelope_Hello{Hello: &pb.Hello{
				Token:       "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ2LTQyIn0.c2ln",
				ResumeToken: "rt-1",
				Cursors: []*pb.Cursor{
					{ConversationId: "c1", LastSeq: 42},
					{ConversationId: "c2"},
					{LastSeq: 7},
					{},
				},
				ClientName: "widget/1.2.0",
				Tenant:     "acme",
				Username:   "zhang.wei",
				Password:   "密码 p@ss",
			}}},
		},
		{
			name: "hello-empty",
			env:  Envelope{Kind: KindHello},
			pb:   &pb.Envelope{Body: &pb.Envelope_Hello{Hello: &pb.Hello{}}},
		},
		{
			name: "welcome",
			env: Envelope{Kind: KindWelcome, ID: 1, Welcome: Welcome{
				SessionID:       "s-9",
				ResumeToken:     "rt-2",
				Role:            RoleAgent,
				UserID:          "a-7",
				HeartbeatMillis: 25000,
				MaxMessageBytes: 65536,
				ServerVersion:   "unigate/1.0.0",
				Resumed:         true,
				Conversations:   []string{"c1", "", "c3"},
			}},
			pb: &pb.Envelope{Id: 1, Body: &pb.Envelope_Welcome{Welcome: &pb.Welcome{
				SessionId:       "s-9",
				ResumeToken:     "rt-2",
				Role:            pb.Role_ROLE_AGENT,
				UserId:          "a-7",
				HeartbeatMillis: 25000,
				MaxMessageBytes: 65536,
				ServerVersion:   "unigate/1.0.0",
				Resumed:         true,
				Conversations:   []string{"c1", "", "c3"},
			}}},
		},
		{
			name: "open",
			env:  Envelope{Kind: KindOpen, ID: 2, Open: Open{Skill: "billing", Priority: math.MaxUint32, Text: "hi", Region: "cn-east", Language: "zh-CN", Page: "https://example.gov.cn/服务"}},
			pb:   &pb.Envelope{Id: 2, Body: &pb.Envelope_Open{Open: &pb.Open{Skill: "billing", Priority: math.MaxUint32, Text: "hi", Region: "cn-east", Language: "zh-CN", Page: "https://example.gov.cn/服务"}}},
		},
		{
			name: "conversation",
			env: Envelope{Kind: KindConversation, ID: 2, Conversation: Conversation{
				ConversationID: "c1", State: StateAssigned, VisitorID: "v-1", AgentID: "a-7",
				Skill: "billing", Reason: "assigned", LastSeq: 3,
				Intent: "billing/refund", Summary: "退款 refund for order 42", Routing: "skills 1.00 geo 0.50",
				Region: "cn-east", Language: "zh-CN", Page: "/help",
			}},
			pb: &pb.Envelope{Id: 2, Body: &pb.Envelope_Conversation{Conversation: &pb.Conversation{
				ConversationId: "c1", State: pb.State_STATE_ASSIGNED, VisitorId: "v-1", AgentId: "a-7",
				Skill: "billing", Reason: "assigned", LastSeq: 3,
				Intent: "billing/refund", Summary: "退款 refund for order 42", Routing: "skills 1.00 geo 0.50",
				Region: "cn-east", Language: "zh-CN", Page: "/help",
			}}},
		},
		{
			name: "send",
			env:  Envelope{Kind: KindSend, ID: 7, Send: Send{ConversationID: "c1", ClientMsgID: "m1", Text: longText}},
			pb:   &pb.Envelope{Id: 7, Body: &pb.Envelope_Send{Send: &pb.Send{ConversationId: "c1", ClientMsgId: "m1", Text: longText}}},
		},
		{
			name: "send-no-id",
			env:  Envelope{Kind: KindSend, Send: Send{Text: "x"}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Send{Send: &pb.Send{Text: "x"}}},
		},
		{
			name: "ack",
			env:  Envelope{Kind: KindAck, ID: 7, Ack: Ack{ConversationID: "c1", ClientMsgID: "m1", Seq: math.MaxUint64, TimestampMilli: 1718100000123}},
			pb:   &pb.Envelope{Id: 7, Body: &pb.Envelope_Ack{Ack: &pb.Ack{ConversationId: "c1", ClientMsgId: "m1", Seq: math.MaxUint64, TimestampMilli: 1718100000123}}},
		},
		{
			name: "ack-negative-time",
			env:  Envelope{Kind: KindAck, ID: math.MaxUint64, Ack: Ack{Seq: 1, TimestampMilli: -1}},
			pb:   &pb.Envelope{Id: math.MaxUint64, Body: &pb.Envelope_Ack{Ack: &pb.Ack{Seq: 1, TimestampMilli: -1}}},
		},
		{
			name: "deliver",
			env: Envelope{Kind: KindDeliver, Deliver: Deliver{
				ConversationID: "c1", Seq: 43, SenderID: "v-1", SenderRole: RoleVisitor,
				ClientMsgID: "m1", Text: longText, TimestampMilli: 1718100000123,
			}},
			pb: &pb.Envelope{Body: &pb.Envelope_Deliver{Deliver: &pb.Deliver{
				ConversationId: "c1", Seq: 43, SenderId: "v-1", SenderRole: pb.Role_ROLE_VISITOR,
				ClientMsgId: "m1", Text: longText, TimestampMilli: 1718100000123,
			}}},
		},
		{
			name: "deliver-unknown-role",
			env:  Envelope{Kind: KindDeliver, Deliver: Deliver{SenderRole: 255, Text: "from the future"}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Deliver{Deliver: &pb.Deliver{SenderRole: 255, Text: "from the future"}}},
		},
		{
			name: "typing",
			env:  Envelope{Kind: KindTyping, Typing: Typing{ConversationID: "c1", On: true, SenderID: "a-7", SenderRole: RoleAgent}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Typing{Typing: &pb.Typing{ConversationId: "c1", On: true, SenderId: "a-7", SenderRole: pb.Role_ROLE_AGENT}}},
		},
		{
			name: "typing-off",
			env:  Envelope{Kind: KindTyping, Typing: Typing{ConversationID: "c1"}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Typing{Typing: &pb.Typing{ConversationId: "c1"}}},
		},
		{
			name: "read",
			env:  Envelope{Kind: KindRead, ID: 9, Read: Read{ConversationID: "c1", Seq: 43, SenderID: "v-1", SenderRole: RoleVisitor}},
			pb:   &pb.Envelope{Id: 9, Body: &pb.Envelope_Read{Read: &pb.Read{ConversationId: "c1", Seq: 43, SenderId: "v-1", SenderRole: pb.Role_ROLE_VISITOR}}},
		},
		{
			name: "presence",
			env:  Envelope{Kind: KindPresence, ID: 3, Presence: Presence{AgentID: "a-7", Status: StatusOnline, Capacity: 5, Skills: []string{"billing", "售后"}, Region: "cn-east"}},
			pb:   &pb.Envelope{Id: 3, Body: &pb.Envelope_Presence{Presence: &pb.Presence{AgentId: "a-7", Status: pb.Status_STATUS_ONLINE, Capacity: 5, Skills: []string{"billing", "售后"}, Region: "cn-east"}}},
		},
		{
			name: "transfer",
			env:  Envelope{Kind: KindTransfer, ID: 4, Transfer: Transfer{ConversationID: "c1", ToAgentID: "a-8", ToSkill: "refunds", Note: "VIP"}},
			pb:   &pb.Envelope{Id: 4, Body: &pb.Envelope_Transfer{Transfer: &pb.Transfer{ConversationId: "c1", ToAgentId: "a-8", ToSkill: "refunds", Note: "VIP"}}},
		},
		{
			name: "close",
			env:  Envelope{Kind: KindClose, ID: 5, Close: Close{ConversationID: "c1", Reason: "resolved"}},
			pb:   &pb.Envelope{Id: 5, Body: &pb.Envelope_Close{Close: &pb.Close{ConversationId: "c1", Reason: "resolved"}}},
		},
		{
			name: "queue",
			env:  Envelope{Kind: KindQueue, Queue: Queue{ConversationID: "c1", Position: 3, EtaSeconds: 120}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Queue{Queue: &pb.Queue{ConversationId: "c1", Position: 3, EtaSeconds: 120}}},
		},
		{
			name: "error",
			env:  Envelope{Kind: KindError, ID: 7, Error: Error{Code: CodeShuttingDown, Message: "shutting down", Temporary: true}},
			pb:   &pb.Envelope{Id: 7, Body: &pb.Envelope_Error{Error: &pb.Error{Code: 5002, Message: "shutting down", Temporary: true}}},
		},
		{
			name: "secure-client-hello",
			env:  Envelope{Kind: KindSecure, Secure: Secure{Data: []byte{1, 1, 0xff, 0, 0x80, '{', '"'}}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Secure{Secure: &pb.Secure{Data: []byte{1, 1, 0xff, 0, 0x80, '{', '"'}}}},
		},
		{
			name: "secure-empty",
			env:  Envelope{Kind: KindSecure, ID: 3},
			pb:   &pb.Envelope{Id: 3, Body: &pb.Envelope_Secure{Secure: &pb.Secure{}}},
		},
		{
			name: "error-max-code",
			env:  Envelope{Kind: KindError, Error: Error{Code: math.MaxUint16}},
			pb:   &pb.Envelope{Body: &pb.Envelope_Error{Error: &pb.Error{Code: math.MaxUint16}}},
		},
	}
}

// sampleEnv returns the sample with the given name.
func sampleEnv(tb testing.TB, name string) sample {
	tb.Helper()
	for _, s := range samples() {
		if s.name == name {
			return s
		}
	}
	tb.Fatalf("no sample %q", name)
	return sample{}
}

// activeBody returns a copy of the body named by env.Kind, with empty
// slices normalized to nil, for comparisons.
func activeBody(env *Envelope) any {
	switch env.Kind {
	case KindHello:
		b := env.Hello
		if len(b.Cursors) == 0 {
			b.Cursors = nil
		}
		return b
	case KindWelcome:
		b := env.Welcome
		if len(b.Conversations) == 0 {
			b.Conversations = nil
		}
		return b
	case KindOpen:
		return env.Open
	case KindConversation:
		return env.Conversation
	case KindSend:
		return env.Send
	case KindAck:
		return env.Ack
	case KindDeliver:
		return env.Deliver
	case KindTyping:
		return env.Typing
	case KindRead:
		return env.Read
	case KindPresence:
		b := env.Presence
		if len(b.Skills) == 0 {
			b.Skills = nil
		}
		return b
	case KindTransfer:
		return env.Transfer
	case KindClose:
		return env.Close
	case KindQueue:
		return env.Queue
	case KindError:
		return env.Error
	case KindSecure:
		b := env.Secure
		if len(b.Data) == 0 {
			b.Data = nil
		}
		return b
	}
	return nil
}

// sameEnvelope reports whether a and b carry the same message (kind, id
// and active body).
func sameEnvelope(a, b *Envelope) bool {
	return a.Kind == b.Kind && a.ID == b.ID && reflect.DeepEqual(activeBody(a), activeBody(b))
}

func assertSame(tb testing.TB, got, want *Envelope) {
	tb.Helper()
	if !sameEnvelope(got, want) {
		tb.Fatalf("envelopes differ:\n got %s id=%d %+v\nwant %s id=%d %+v",
			got.Kind, got.ID, activeBody(got), want.Kind, want.ID, activeBody(want))
	}
}

// onlyActiveBody reports whether every body other than the active one is
// zero (slices may keep capacity), as Decode promises.
func onlyActiveBody(env *Envelope) bool {
	probe := *env
	probe.Kind, probe.ID = 0, 0
	probe.resetBody(env.Kind)
	var zero Envelope
	zero.Hello.Cursors = probe.Hello.Cursors[:0]
	zero.Welcome.Conversations = probe.Welcome.Conversations[:0]
	zero.Presence.Skills = probe.Presence.Skills[:0]
	if len(probe.Hello.Cursors) != 0 || len(probe.Welcome.Conversations) != 0 || len(probe.Presence.Skills) != 0 {
		return false
	}
	return reflect.DeepEqual(probe, zero)
}
