package protocol

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/unigate/unigate/protocol/pb"
)

// protojsonCodec is the JSON codec as it was before the hand-written one:
// protojson over the generated pb types, converted with toPB and fromPB.
// It is the reference the differential tests and fuzz targets hold JSON
// to; it is not linked into the program.
type protojsonCodec struct{}

var (
	jsonMarshal   = protojson.MarshalOptions{}
	jsonUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

func (protojsonCodec) Subprotocol() string { return SubprotocolJSON }
func (protojsonCodec) Binary() bool        { return false }

func (protojsonCodec) Decode(data []byte, env *Envelope) error {
	env.Reset()
	if !utf8.Valid(data) {
		return NewError(CodeInvalidUTF8, "json: invalid UTF-8")
	}
	var m pb.Envelope
	if err := jsonUnmarshal.Unmarshal(data, &m); err != nil {
		return NewError(CodeMalformed, "json: "+strings.TrimPrefix(err.Error(), "proto: "))
	}
	return fromPB(&m, env)
}

func (protojsonCodec) AppendEncode(dst []byte, env *Envelope) ([]byte, error) {
	if _, err := measureBody(env); err != nil {
		return dst, err
	}
	out, err := jsonMarshal.MarshalAppend(dst, toPB(env))
	if err != nil {
		return dst, NewError(CodeInternal, "json: "+err.Error())
	}
	return out, nil
}

// toPB converts the body named by env.Kind into a new pb.Envelope. Strings
// are shared, not copied. A Kind that names no body gives an envelope
// without a body.
func toPB(env *Envelope) *pb.Envelope {
	m := &pb.Envelope{Id: env.ID}
	switch env.Kind {
	case KindHello:
		b := &env.Hello
		h := &pb.Hello{Token: b.Token, ResumeToken: b.ResumeToken, ClientName: b.ClientName, Tenant: b.Tenant, Username: b.Username, Password: b.Password}
		if len(b.Cursors) > 0 {
			h.Cursors = make([]*pb.Cursor, len(b.Cursors))
			for i, c := range b.Cursors {
				h.Cursors[i] = &pb.Cursor{ConversationId: c.ConversationID, LastSeq: c.LastSeq}
			}
		}
		m.Body = &pb.Envelope_Hello{Hello: h}
	case KindWelcome:
		b := &env.Welcome
		m.Body = &pb.Envelope_Welcome{Welcome: &pb.Welcome{
			SessionId:       b.SessionID,
			ResumeToken:     b.ResumeToken,
			Role:            pb.Role(b.Role),
			UserId:          b.UserID,
			HeartbeatMillis: b.HeartbeatMillis,
			MaxMessageBytes: b.MaxMessageBytes,
			ServerVersion:   b.ServerVersion,
			Resumed:         b.Resumed,
			Conversations:   b.Conversations,
		}}
	case KindOpen:
		b := &env.Open
		m.Body = &pb.Envelope_Open{Open: &pb.Open{Skill: b.Skill, Priority: b.Priority, Text: b.Text, Region: b.Region, Language: b.Language, Page: b.Page}}
	case KindConversation:
		b := &env.Conversation
		m.Body = &pb.Envelope_Conversation{Conversation: &pb.Conversation{
			ConversationId: b.ConversationID,
			State:          pb.State(b.State),
			VisitorId:      b.VisitorID,
			AgentId:        b.AgentID,
			Skill:          b.Skill,
			Reason:         b.Reason,
			LastSeq:        b.LastSeq,
			Intent:         b.Intent,
			Summary:        b.Summary,
			Routing:        b.Routing,
			Region:         b.Region,
			Language:       b.Language,
			Page:           b.Page,
		}}
	case KindSend:
		b := &env.Send
		m.Body = &pb.Envelope_Send{Send: &pb.Send{ConversationId: b.ConversationID, ClientMsgId: b.ClientMsgID, Text: b.Text}}
	case KindAck:
		b := &env.Ack
		m.Body = &pb.Envelope_Ack{Ack: &pb.Ack{
			ConversationId: b.ConversationID,
			ClientMsgId:    b.ClientMsgID,
			Seq:            b.Seq,
			TimestampMilli: b.TimestampMilli,
		}}
	case KindDeliver:
		b := &env.Deliver
		m.Body = &pb.Envelope_Deliver{Deliver: &pb.Deliver{
			ConversationId: b.ConversationID,
			Seq:            b.Seq,
			SenderId:       b.SenderID,
			SenderRole:     pb.Role(b.SenderRole),
			ClientMsgId:    b.ClientMsgID,
			Text:           b.Text,
			TimestampMilli: b.TimestampMilli,
		}}
	case KindTyping:
		b := &env.Typing
		m.Body = &pb.Envelope_Typing{Typing: &pb.Typing{
			ConversationId: b.ConversationID,
			On:             b.On,
			SenderId:       b.SenderID,
			SenderRole:     pb.Role(b.SenderRole),
		}}
	case KindRead:
		b := &env.Read
		m.Body = &pb.Envelope_Read{Read: &pb.Read{
			ConversationId: b.ConversationID,
			Seq:            b.Seq,
			SenderId:       b.SenderID,
			SenderRole:     pb.Role(b.SenderRole),
		}}
	case KindPresence:
		b := &env.Presence
		m.Body = &pb.Envelope_Presence{Presence: &pb.Presence{
			AgentId:  b.AgentID,
			Status:   pb.Status(b.Status),
			Capacity: b.Capacity,
			Skills:   b.Skills,
			Region:   b.Region,
		}}
	case KindTransfer:
		b := &env.Transfer
		m.Body = &pb.Envelope_Transfer{Transfer: &pb.Transfer{
			ConversationId: b.ConversationID,
			ToAgentId:      b.ToAgentID,
			ToSkill:        b.ToSkill,
			Note:           b.Note,
		}}
	case KindClose:
		b := &env.Close
		m.Body = &pb.Envelope_Close{Close: &pb.Close{ConversationId: b.ConversationID, Reason: b.Reason}}
	case KindQueue:
		b := &env.Queue
		m.Body = &pb.Envelope_Queue{Queue: &pb.Queue{ConversationId: b.ConversationID, Position: b.Position, EtaSeconds: b.EtaSeconds}}
	case KindError:
		b := &env.Error
		m.Body = &pb.Envelope_Error{Error: &pb.Error{Code: uint32(b.Code), Message: b.Message, Temporary: b.Temporary}}
	case KindSecure:
		m.Body = &pb.Envelope_Secure{Secure: &pb.Secure{Data: env.Secure.Data}}
	}
	return m
}

// fromPB resets env and fills it from m, with the checks Proto's Decode
// makes: a body must be set, enums fit in 0..255, error codes in 16 bits,
// repeated fields at most MaxRepeated long. Strings are shared with m.
func fromPB(m *pb.Envelope, env *Envelope) error {
	env.Reset()
	env.ID = m.GetId()
	switch body := m.GetBody().(type) {
	case *pb.Envelope_Hello:
		env.Kind = KindHello
		b, h := &env.Hello, body.Hello
		if len(h.GetCursors()) > MaxRepeated {
			return tooMany(KindHello)
		}
		b.Token, b.ResumeToken, b.ClientName, b.Tenant = h.GetToken(), h.GetResumeToken(), h.GetClientName(), h.GetTenant()
		b.Username, b.Password = h.GetUsername(), h.GetPassword()
		for _, c := range h.GetCursors() {
			b.Cursors = append(b.Cursors, Cursor{ConversationID: c.GetConversationId(), LastSeq: c.GetLastSeq()})
		}
	case *pb.Envelope_Welcome:
		env.Kind = KindWelcome
		b, w := &env.Welcome, body.Welcome
		if len(w.GetConversations()) > MaxRepeated {
			return tooMany(KindWelcome)
		}
		role, ok := enum8(int32(w.GetRole()))
		if !ok {
			return outOfRange(KindWelcome)
		}
		b.SessionID = w.GetSessionId()
		b.ResumeToken = w.GetResumeToken()
		b.Role = Role(role)
		b.UserID = w.GetUserId()
		b.HeartbeatMillis = w.GetHeartbeatMillis()
		b.MaxMessageBytes = w.GetMaxMessageBytes()
		b.ServerVersion = w.GetServerVersion()
		b.Resumed = w.GetResumed()
		b.Conversations = append(b.Conversations, w.GetConversations()...)
	case *pb.Envelope_Open:
		env.Kind = KindOpen
		o := body.Open
		env.Open = Open{Skill: o.GetSkill(), Priority: o.GetPriority(), Text: o.GetText(), Region: o.GetRegion(), Language: o.GetLanguage(), Page: o.GetPage()}
	case *pb.Envelope_Conversation:
		env.Kind = KindConversation
		c := body.Conversation
		state, ok := enum8(int32(c.GetState()))
		if !ok {
			return outOfRange(KindConversation)
		}
		env.Conversation = Conversation{
			ConversationID: c.GetConversationId(),
			State:          State(state),
			VisitorID:      c.GetVisitorId(),
			AgentID:        c.GetAgentId(),
			Skill:          c.GetSkill(),
			Reason:         c.GetReason(),
			LastSeq:        c.GetLastSeq(),
			Intent:         c.GetIntent(),
			Summary:        c.GetSummary(),
			Routing:        c.GetRouting(),
			Region:         c.GetRegion(),
			Language:       c.GetLanguage(),
			Page:           c.GetPage(),
		}
	case *pb.Envelope_Send:
		env.Kind = KindSend
		s := body.Send
		env.Send = Send{ConversationID: s.GetConversationId(), ClientMsgID: s.GetClientMsgId(), Text: s.GetText()}
	case *pb.Envelope_Ack:
		env.Kind = KindAck
		a := body.Ack
		env.Ack = Ack{
			ConversationID: a.GetConversationId(),
			ClientMsgID:    a.GetClientMsgId(),
			Seq:            a.GetSeq(),
			TimestampMilli: a.GetTimestampMilli(),
		}
	case *pb.Envelope_Deliver:
		env.Kind = KindDeliver
		d := body.Deliver
		role, ok := enum8(int32(d.GetSenderRole()))
		if !ok {
			return outOfRange(KindDeliver)
		}
		env.Deliver = Deliver{
			ConversationID: d.GetConversationId(),
			Seq:            d.GetSeq(),
			SenderID:       d.GetSenderId(),
			SenderRole:     Role(role),
			ClientMsgID:    d.GetClientMsgId(),
			Text:           d.GetText(),
			TimestampMilli: d.GetTimestampMilli(),
		}
	case *pb.Envelope_Typing:
		env.Kind = KindTyping
		t := body.Typing
		role, ok := enum8(int32(t.GetSenderRole()))
		if !ok {
			return outOfRange(KindTyping)
		}
		env.Typing = Typing{ConversationID: t.GetConversationId(), On: t.GetOn(), SenderID: t.GetSenderId(), SenderRole: Role(role)}
	case *pb.Envelope_Read:
		env.Kind = KindRead
		r := body.Read
		role, ok := enum8(int32(r.GetSenderRole()))
		if !ok {
			return outOfRange(KindRead)
		}
		env.Read = Read{ConversationID: r.GetConversationId(), Seq: r.GetSeq(), SenderID: r.GetSenderId(), SenderRole: Role(role)}
	case *pb.Envelope_Presence:
		env.Kind = KindPresence
		b, p := &env.Presence, body.Presence
		if len(p.GetSkills()) > MaxRepeated {
			return tooMany(KindPresence)
		}
		status, ok := enum8(int32(p.GetStatus()))
		if !ok {
			return outOfRange(KindPresence)
		}
		b.AgentID = p.GetAgentId()
		b.Status = Status(status)
		b.Capacity = p.GetCapacity()
		b.Skills = append(b.Skills, p.GetSkills()...)
		b.Region = p.GetRegion()
	case *pb.Envelope_Transfer:
		env.Kind = KindTransfer
		t := body.Transfer
		env.Transfer = Transfer{ConversationID: t.GetConversationId(), ToAgentID: t.GetToAgentId(), ToSkill: t.GetToSkill(), Note: t.GetNote()}
	case *pb.Envelope_Close:
		env.Kind = KindClose
		c := body.Close
		env.Close = Close{ConversationID: c.GetConversationId(), Reason: c.GetReason()}
	case *pb.Envelope_Queue:
		env.Kind = KindQueue
		q := body.Queue
		env.Queue = Queue{ConversationID: q.GetConversationId(), Position: q.GetPosition(), EtaSeconds: q.GetEtaSeconds()}
	case *pb.Envelope_Error:
		env.Kind = KindError
		e := body.Error
		if e.GetCode() > 0xffff {
			return outOfRange(KindError)
		}
		env.Error = Error{Code: Code(e.GetCode()), Message: e.GetMessage(), Temporary: e.GetTemporary()}
	case *pb.Envelope_Secure:
		env.Kind = KindSecure
		if d := body.Secure.GetData(); len(d) > 0 {
			env.Secure = Secure{Data: d}
		}
	default:
		return NewError(CodeMissingField, "envelope: no body")
	}
	return nil
}

func enum8(v int32) (uint8, bool) {
	if v < 0 || v > 255 {
		return 0, false
	}
	return uint8(v), true
}
