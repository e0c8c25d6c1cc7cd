package protocol

import (
	"slices"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// protoCodec is the hand-written protobuf codec. It follows the schema of
// unigate.proto (field numbers are written out below; the differential
// tests against the generated pb package keep them honest).
//
// Decoding accepts what the generated code accepts, with these documented
// exceptions, all errors:
//   - an envelope without a known body: CodeUnknownKind when it carried an
//     unknown length-delimited field numbered above the last known body
//     (presumably a newer kind), CodeMissingField otherwise;
//   - an Envelope body field (10–24) whose wire type is not
//     length-delimited: CodeMalformed (the generated code keeps it as an
//     unknown field; since fields never change type, it is always a bug);
//   - an enum value outside 0..255 (after proto's int32 truncation) or an
//     Error.code above 65535, which the Go types cannot hold: CodeMalformed.
//     Values in range that this version does not define are kept as they
//     are (enums are open), so a relay re-encodes them unchanged;
//   - more than MaxRepeated elements in a repeated field: CodeTooMany.
//
// Inside a body, a known field with the wrong wire type is skipped like an
// unknown field, exactly as the generated code does. Like the generated
// code, it rejects invalid UTF-8 in known string fields (CodeInvalidUTF8),
// field numbers 0 or above 2^29-1, truncated data, and varints that overflow
// (CodeMalformed). A body that appears twice is merged (scalars: last one
// wins; repeated: appended); a different body replaces it.
type protoCodec struct{}

func (protoCodec) Subprotocol() string { return SubprotocolProto }
func (protoCodec) Binary() bool        { return true }

// Failure codes returned as a negative n by the consume helpers, next to
// protowire's own (-1 to -6).
const (
	errUTF8    = -100 // invalid UTF-8 in a string field
	errRange   = -101 // value does not fit the Go type
	errTooMany = -102 // repeated field over MaxRepeated
	errType    = -103 // body field with a wrong wire type
)

// Envelope field numbers; the body numbers are the Kind values.
const (
	fieldID        protowire.Number = 1
	firstBodyField                  = protowire.Number(KindHello)
	lastBodyField                   = protowire.Number(KindSecure)
)

func (protoCodec) Decode(data []byte, env *Envelope) error {
	env.Reset()
	var unknownBody protowire.Number
	for len(data) > 0 {
		num, typ, n := consumeTag(data)
		if n < 0 {
			return decodeErr(KindNone, 0, n)
		}
		data = data[n:]
		switch {
		case num == fieldID:
			n = consumeUint64(data, num, typ, &env.ID)
		case num >= firstBodyField && num <= lastBodyField:
			if typ != protowire.BytesType {
				return decodeErr(KindNone, num, errType)
			}
			var b []byte
			b, n = protowire.ConsumeBytes(data)
			if n < 0 {
				break
			}
			k := Kind(num)
			if env.Kind != k {
				env.resetBody(env.Kind)
				env.resetBody(k)
				env.Kind = k
			}
			if err := decodeBody(b, env, k); err != nil {
				return err
			}
		default:
			if num > lastBodyField && typ == protowire.BytesType && unknownBody == 0 {
				unknownBody = num
			}
			n = protowire.ConsumeFieldValue(num, typ, data)
		}
		if n < 0 {
			return decodeErr(KindNone, num, n)
		}
		data = data[n:]
	}
	if env.Kind == KindNone {
		if unknownBody != 0 {
			return NewError(CodeUnknownKind, "envelope: unknown body field "+itoa(uint64(unknownBody)))
		}
		return NewError(CodeMissingField, "envelope: no body")
	}
	return nil
}

func decodeBody(b []byte, env *Envelope, k Kind) error {
	var num protowire.Number
	var n int
	switch k {
	case KindHello:
		num, n = decodeHello(b, &env.Hello)
	case KindWelcome:
		num, n = decodeWelcome(b, &env.Welcome)
	case KindOpen:
		num, n = decodeOpen(b, &env.Open)
	case KindConversation:
		num, n = decodeConversation(b, &env.Conversation)
	case KindSend:
		num, n = decodeSend(b, &env.Send)
	case KindAck:
		num, n = decodeAck(b, &env.Ack)
	case KindDeliver:
		num, n = decodeDeliver(b, &env.Deliver)
	case KindTyping:
		num, n = decodeTyping(b, &env.Typing)
	case KindRead:
		num, n = decodeRead(b, &env.Read)
	case KindPresence:
		num, n = decodePresence(b, &env.Presence)
	case KindTransfer:
		num, n = decodeTransfer(b, &env.Transfer)
	case KindClose:
		num, n = decodeClose(b, &env.Close)
	case KindQueue:
		num, n = decodeQueue(b, &env.Queue)
	case KindError:
		num, n = decodeError(b, &env.Error)
	case KindSecure:
		num, n = decodeSecure(b, &env.Secure)
	}
	if n < 0 {
		return decodeErr(k, num, n)
	}
	return nil
}

// decodeErr turns a negative n into a *Error naming where it happened.
func decodeErr(k Kind, num protowire.Number, n int) *Error {
	where := "envelope"
	if k != KindNone {
		where = k.String()
	}
	if num > 0 {
		where += " field " + itoa(uint64(num))
	}
	switch n {
	case errUTF8:
		return NewError(CodeInvalidUTF8, where+": invalid UTF-8")
	case errRange:
		return NewError(CodeMalformed, where+": value out of range")
	case errTooMany:
		return NewError(CodeTooMany, where+": more than "+itoa(MaxRepeated)+" elements")
	case errType:
		return NewError(CodeMalformed, where+": body must be length-delimited")
	}
	return NewError(CodeMalformed, where+": "+protowire.ParseError(n).Error())
}

// consumeTag is protowire.ConsumeTag with the generated code's upper bound
// on field numbers.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && num > protowire.MaxValidNumber {
		return 0, 0, -2 // protowire's errCodeFieldNumber
	}
	return num, typ, n
}

// The consume helpers parse one field value of the expected wire type into
// dst. A value of another wire type is skipped, as proto does for a known
// field with an unexpected wire type. They return the bytes consumed or a
// negative code.

func consumeString(b []byte, num protowire.Number, typ protowire.Type, dst *string) int {
	if typ != protowire.BytesType {
		return protowire.ConsumeFieldValue(num, typ, b)
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return n
	}
	if !utf8.Valid(v) {
		return errUTF8
	}
	*dst = aliasString(v)
	return n
}

// consumeRepeatedString appends one element to a repeated string field.
func consumeRepeatedString(b []byte, num protowire.Number, typ protowire.Type, dst *[]string) int {
	if typ != protowire.BytesType {
		return protowire.ConsumeFieldValue(num, typ, b)
	}
	if len(*dst) >= MaxRepeated {
		return errTooMany
	}
	var s string
	n := consumeString(b, num, typ, &s)
	if n >= 0 {
		*dst = append(*dst, s)
	}
	return n
}

func consumeVarint(b []byte, num protowire.Number, typ protowire.Type) (uint64, int, bool) {
	if typ != protowire.VarintType {
		return 0, protowire.ConsumeFieldValue(num, typ, b), false
	}
	v, n := protowire.ConsumeVarint(b)
	return v, n, n >= 0
}

func consumeUint64(b []byte, num protowire.Number, typ protowire.Type, dst *uint64) int {
	v, n, ok := consumeVarint(b, num, typ)
	if ok {
		*dst = v
	}
	return n
}

func consumeInt64(b []byte, num protowire.Number, typ protowire.Type, dst *int64) int {
	v, n, ok := consumeVarint(b, num, typ)
	if ok {
		*dst = int64(v)
	}
	return n
}

func consumeUint32(b []byte, num protowire.Number, typ protowire.Type, dst *uint32) int {
	v, n, ok := consumeVarint(b, num, typ)
	if ok {
		*dst = uint32(v) // proto truncates uint32 the same way
	}
	return n
}

func consumeBool(b []byte, num protowire.Number, typ protowire.Type, dst *bool) int {
	v, n, ok := consumeVarint(b, num, typ)
	if ok {
		*dst = protowire.DecodeBool(v)
	}
	return n
}

// consumeEnum reads a proto enum (an int32) into a uint8 Go enum.
func consumeEnum(b []byte, num protowire.Number, typ protowire.Type, dst *uint8) int {
	v, n, ok := consumeVarint(b, num, typ)
	if ok {
		e := int32(v) // proto truncates enums to int32
		if e < 0 || e > 255 {
			return errRange
		}
		*dst = uint8(e)
	}
	return n
}

// aliasString returns a string sharing b's memory.
func aliasString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// The body decoders return the number of the failing field and a negative
// code, or n >= 0 on success.

func decodeHello(b []byte, m *Hello) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.Token)
		case 2:
			n = consumeString(b, num, typ, &m.ResumeToken)
		case 3:
			if typ != protowire.BytesType {
				n = protowire.ConsumeFieldValue(num, typ, b)
				break
			}
			var v []byte
			v, n = protowire.ConsumeBytes(b)
			if n < 0 {
				break
			}
			if len(m.Cursors) >= MaxRepeated {
				return num, errTooMany
			}
			m.Cursors = append(m.Cursors, Cursor{})
			if _, cn := decodeCursor(v, &m.Cursors[len(m.Cursors)-1]); cn < 0 {
				return num, cn
			}
		case 4:
			n = consumeString(b, num, typ, &m.ClientName)
		case 5:
			n = consumeString(b, num, typ, &m.Tenant)
		case 6:
			n = consumeString(b, num, typ, &m.Username)
		case 7:
			n = consumeString(b, num, typ, &m.Password)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeCursor(b []byte, m *Cursor) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeUint64(b, num, typ, &m.LastSeq)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeWelcome(b []byte, m *Welcome) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.SessionID)
		case 2:
			n = consumeString(b, num, typ, &m.ResumeToken)
		case 3:
			n = consumeEnum(b, num, typ, (*uint8)(&m.Role))
		case 4:
			n = consumeString(b, num, typ, &m.UserID)
		case 5:
			n = consumeUint32(b, num, typ, &m.HeartbeatMillis)
		case 6:
			n = consumeUint32(b, num, typ, &m.MaxMessageBytes)
		case 7:
			n = consumeString(b, num, typ, &m.ServerVersion)
		case 8:
			n = consumeBool(b, num, typ, &m.Resumed)
		case 9:
			n = consumeRepeatedString(b, num, typ, &m.Conversations)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeOpen(b []byte, m *Open) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.Skill)
		case 2:
			n = consumeUint32(b, num, typ, &m.Priority)
		case 3:
			n = consumeString(b, num, typ, &m.Text)
		case 4:
			n = consumeString(b, num, typ, &m.Region)
		case 5:
			n = consumeString(b, num, typ, &m.Language)
		case 6:
			n = consumeString(b, num, typ, &m.Page)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeConversation(b []byte, m *Conversation) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeEnum(b, num, typ, (*uint8)(&m.State))
		case 3:
			n = consumeString(b, num, typ, &m.VisitorID)
		case 4:
			n = consumeString(b, num, typ, &m.AgentID)
		case 5:
			n = consumeString(b, num, typ, &m.Skill)
		case 6:
			n = consumeString(b, num, typ, &m.Reason)
		case 7:
			n = consumeUint64(b, num, typ, &m.LastSeq)
		case 8:
			n = consumeString(b, num, typ, &m.Intent)
		case 9:
			n = consumeString(b, num, typ, &m.Summary)
		case 10:
			n = consumeString(b, num, typ, &m.Routing)
		case 11:
			n = consumeString(b, num, typ, &m.Region)
		case 12:
			n = consumeString(b, num, typ, &m.Language)
		case 13:
			n = consumeString(b, num, typ, &m.Page)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeSend(b []byte, m *Send) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeString(b, num, typ, &m.ClientMsgID)
		case 3:
			n = consumeString(b, num, typ, &m.Text)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeAck(b []byte, m *Ack) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeString(b, num, typ, &m.ClientMsgID)
		case 3:
			n = consumeUint64(b, num, typ, &m.Seq)
		case 4:
			n = consumeInt64(b, num, typ, &m.TimestampMilli)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeDeliver(b []byte, m *Deliver) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeUint64(b, num, typ, &m.Seq)
		case 3:
			n = consumeString(b, num, typ, &m.SenderID)
		case 4:
			n = consumeEnum(b, num, typ, (*uint8)(&m.SenderRole))
		case 5:
			n = consumeString(b, num, typ, &m.ClientMsgID)
		case 6:
			n = consumeString(b, num, typ, &m.Text)
		case 7:
			n = consumeInt64(b, num, typ, &m.TimestampMilli)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeTyping(b []byte, m *Typing) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeBool(b, num, typ, &m.On)
		case 3:
			n = consumeString(b, num, typ, &m.SenderID)
		case 4:
			n = consumeEnum(b, num, typ, (*uint8)(&m.SenderRole))
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeRead(b []byte, m *Read) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeUint64(b, num, typ, &m.Seq)
		case 3:
			n = consumeString(b, num, typ, &m.SenderID)
		case 4:
			n = consumeEnum(b, num, typ, (*uint8)(&m.SenderRole))
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodePresence(b []byte, m *Presence) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.AgentID)
		case 2:
			n = consumeEnum(b, num, typ, (*uint8)(&m.Status))
		case 3:
			n = consumeUint32(b, num, typ, &m.Capacity)
		case 4:
			n = consumeRepeatedString(b, num, typ, &m.Skills)
		case 5:
			n = consumeString(b, num, typ, &m.Region)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeTransfer(b []byte, m *Transfer) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeString(b, num, typ, &m.ToAgentID)
		case 3:
			n = consumeString(b, num, typ, &m.ToSkill)
		case 4:
			n = consumeString(b, num, typ, &m.Note)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeClose(b []byte, m *Close) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeString(b, num, typ, &m.Reason)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeQueue(b []byte, m *Queue) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			n = consumeString(b, num, typ, &m.ConversationID)
		case 2:
			n = consumeUint32(b, num, typ, &m.Position)
		case 3:
			n = consumeUint32(b, num, typ, &m.EtaSeconds)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeError(b []byte, m *Error) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch num {
		case 1:
			var code uint32
			if n = consumeUint32(b, num, typ, &code); n >= 0 && typ == protowire.VarintType {
				if code > 0xffff {
					return num, errRange
				}
				m.Code = Code(code)
			}
		case 2:
			n = consumeString(b, num, typ, &m.Message)
		case 3:
			n = consumeBool(b, num, typ, &m.Temporary)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

func decodeSecure(b []byte, m *Secure) (protowire.Number, int) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return 0, n
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			var v []byte
			if v, n = protowire.ConsumeBytes(b); n >= 0 {
				m.Data = nil // proto3 bytes: the last occurrence wins
				if len(v) > 0 {
					m.Data = v
				}
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return num, n
		}
		b = b[n:]
	}
	return 0, 0
}

// Encoding. AppendEncode measures the body first (validating it on the
// way), grows dst once, then appends. Field order and omission of zero
// values follow deterministic proto.Marshal: fields in number order, proto3
// zero values left out, the body always present (even if empty).

func (protoCodec) AppendEncode(dst []byte, env *Envelope) ([]byte, error) {
	size, err := measureBody(env)
	if err != nil {
		return dst, err
	}
	num := protowire.Number(env.Kind)
	total := sizeVarintField(env.ID) + protowire.SizeTag(num) + protowire.SizeBytes(size)
	dst = slices.Grow(dst, total)
	dst = appendVarintField(dst, fieldID, env.ID)
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(size))
	return appendBody(dst, env), nil
}

// measure computes the encoded size of a body's fields and checks what
// deterministic proto.Marshal checks (UTF-8), plus MaxRepeated. All body
// field numbers are below 16, so every tag is one byte.
type measure struct {
	n   int
	bad Code // first failure, 0 if none
}

func (m *measure) str(s string) {
	if s == "" {
		return
	}
	m.valid(s)
	m.n += 1 + protowire.SizeBytes(len(s))
}

func (m *measure) valid(s string) {
	if m.bad == 0 && !utf8.ValidString(s) {
		m.bad = CodeInvalidUTF8
	}
}

func (m *measure) varint(v uint64) {
	if v != 0 {
		m.n += 1 + protowire.SizeVarint(v)
	}
}

func (m *measure) boolean(v bool) {
	if v {
		m.n += 2
	}
}

func (m *measure) strs(ss []string) {
	if len(ss) > MaxRepeated && m.bad == 0 {
		m.bad = CodeTooMany
	}
	for _, s := range ss {
		m.valid(s)
		m.n += 1 + protowire.SizeBytes(len(s))
	}
}

func sizeVarintField(v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

func cursorSize(c *Cursor) int {
	n := sizeVarintField(c.LastSeq)
	if c.ConversationID != "" {
		n += 1 + protowire.SizeBytes(len(c.ConversationID))
	}
	return n
}

// measureBody returns the encoded size of env's body, or a *Error if env
// cannot be encoded. The JSON codec uses it for validation too.
func measureBody(env *Envelope) (int, error) {
	var m measure
	switch env.Kind {
	case KindHello:
		b := &env.Hello
		m.str(b.Token)
		m.str(b.ResumeToken)
		if len(b.Cursors) > MaxRepeated {
			m.bad = CodeTooMany
		}
		for i := range b.Cursors {
			c := &b.Cursors[i]
			m.valid(c.ConversationID)
			m.n += 1 + protowire.SizeBytes(cursorSize(c))
		}
		m.str(b.ClientName)
		m.str(b.Tenant)
		m.str(b.Username)
		m.str(b.Password)
	case KindWelcome:
		b := &env.Welcome
		m.str(b.SessionID)
		m.str(b.ResumeToken)
		m.varint(uint64(b.Role))
		m.str(b.UserID)
		m.varint(uint64(b.HeartbeatMillis))
		m.varint(uint64(b.MaxMessageBytes))
		m.str(b.ServerVersion)
		m.boolean(b.Resumed)
		m.strs(b.Conversations)
	case KindOpen:
		b := &env.Open
		m.str(b.Skill)
		m.varint(uint64(b.Priority))
		m.str(b.Text)
		m.str(b.Region)
		m.str(b.Language)
		m.str(b.Page)
	case KindConversation:
		b := &env.Conversation
		m.str(b.ConversationID)
		m.varint(uint64(b.State))
		m.str(b.VisitorID)
		m.str(b.AgentID)
		m.str(b.Skill)
		m.str(b.Reason)
		m.varint(b.LastSeq)
		m.str(b.Intent)
		m.str(b.Summary)
		m.str(b.Routing)
		m.str(b.Region)
		m.str(b.Language)
		m.str(b.Page)
	case KindSend:
		b := &env.Send
		m.str(b.ConversationID)
		m.str(b.ClientMsgID)
		m.str(b.Text)
	case KindAck:
		b := &env.Ack
		m.str(b.ConversationID)
		m.str(b.ClientMsgID)
		m.varint(b.Seq)
		m.varint(uint64(b.TimestampMilli))
	case KindDeliver:
		b := &env.Deliver
		m.str(b.ConversationID)
		m.varint(b.Seq)
		m.str(b.SenderID)
		m.varint(uint64(b.SenderRole))
		m.str(b.ClientMsgID)
		m.str(b.Text)
		m.varint(uint64(b.TimestampMilli))
	case KindTyping:
		b := &env.Typing
		m.str(b.ConversationID)
		m.boolean(b.On)
		m.str(b.SenderID)
		m.varint(uint64(b.SenderRole))
	case KindRead:
		b := &env.Read
		m.str(b.ConversationID)
		m.varint(b.Seq)
		m.str(b.SenderID)
		m.varint(uint64(b.SenderRole))
	case KindPresence:
		b := &env.Presence
		m.str(b.AgentID)
		m.varint(uint64(b.Status))
		m.varint(uint64(b.Capacity))
		m.strs(b.Skills)
		m.str(b.Region)
	case KindTransfer:
		b := &env.Transfer
		m.str(b.ConversationID)
		m.str(b.ToAgentID)
		m.str(b.ToSkill)
		m.str(b.Note)
	case KindClose:
		b := &env.Close
		m.str(b.ConversationID)
		m.str(b.Reason)
	case KindQueue:
		b := &env.Queue
		m.str(b.ConversationID)
		m.varint(uint64(b.Position))
		m.varint(uint64(b.EtaSeconds))
	case KindError:
		b := &env.Error
		m.varint(uint64(b.Code))
		m.str(b.Message)
		m.boolean(b.Temporary)
	case KindSecure:
		if d := env.Secure.Data; len(d) > 0 {
			m.n += 1 + protowire.SizeBytes(len(d))
		}
	default:
		return 0, NewError(CodeUnknownKind, "encode: envelope kind "+env.Kind.String()+" names no body")
	}
	switch m.bad {
	case 0:
		return m.n, nil
	case CodeTooMany:
		return 0, NewError(CodeTooMany, "encode "+env.Kind.String()+": more than "+itoa(MaxRepeated)+" elements")
	default:
		return 0, NewError(m.bad, "encode "+env.Kind.String()+": invalid UTF-8")
	}
}

// Append helpers for body fields (numbers below 16: one-byte tags).

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = append(b, byte(num)<<3|byte(protowire.BytesType))
	b = protowire.AppendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, byte(num)<<3|byte(protowire.VarintType))
	return protowire.AppendVarint(b, v)
}

func appendBoolField(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	return append(b, byte(num)<<3|byte(protowire.VarintType), 1)
}

func appendRepeatedString(b []byte, num protowire.Number, ss []string) []byte {
	for _, s := range ss {
		b = append(b, byte(num)<<3|byte(protowire.BytesType))
		b = protowire.AppendVarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func appendBody(dst []byte, env *Envelope) []byte {
	switch env.Kind {
	case KindHello:
		b := &env.Hello
		dst = appendStringField(dst, 1, b.Token)
		dst = appendStringField(dst, 2, b.ResumeToken)
		for i := range b.Cursors {
			c := &b.Cursors[i]
			dst = append(dst, 3<<3|byte(protowire.BytesType))
			dst = protowire.AppendVarint(dst, uint64(cursorSize(c)))
			dst = appendStringField(dst, 1, c.ConversationID)
			dst = appendVarintField(dst, 2, c.LastSeq)
		}
		dst = appendStringField(dst, 4, b.ClientName)
		dst = appendStringField(dst, 5, b.Tenant)
		dst = appendStringField(dst, 6, b.Username)
		dst = appendStringField(dst, 7, b.Password)
	case KindWelcome:
		b := &env.Welcome
		dst = appendStringField(dst, 1, b.SessionID)
		dst = appendStringField(dst, 2, b.ResumeToken)
		dst = appendVarintField(dst, 3, uint64(b.Role))
		dst = appendStringField(dst, 4, b.UserID)
		dst = appendVarintField(dst, 5, uint64(b.HeartbeatMillis))
		dst = appendVarintField(dst, 6, uint64(b.MaxMessageBytes))
		dst = appendStringField(dst, 7, b.ServerVersion)
		dst = appendBoolField(dst, 8, b.Resumed)
		dst = appendRepeatedString(dst, 9, b.Conversations)
	case KindOpen:
		b := &env.Open
		dst = appendStringField(dst, 1, b.Skill)
		dst = appendVarintField(dst, 2, uint64(b.Priority))
		dst = appendStringField(dst, 3, b.Text)
		dst = appendStringField(dst, 4, b.Region)
		dst = appendStringField(dst, 5, b.Language)
		dst = appendStringField(dst, 6, b.Page)
	case KindConversation:
		b := &env.Conversation
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendVarintField(dst, 2, uint64(b.State))
		dst = appendStringField(dst, 3, b.VisitorID)
		dst = appendStringField(dst, 4, b.AgentID)
		dst = appendStringField(dst, 5, b.Skill)
		dst = appendStringField(dst, 6, b.Reason)
		dst = appendVarintField(dst, 7, b.LastSeq)
		dst = appendStringField(dst, 8, b.Intent)
		dst = appendStringField(dst, 9, b.Summary)
		dst = appendStringField(dst, 10, b.Routing)
		dst = appendStringField(dst, 11, b.Region)
		dst = appendStringField(dst, 12, b.Language)
		dst = appendStringField(dst, 13, b.Page)
	case KindSend:
		b := &env.Send
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendStringField(dst, 2, b.ClientMsgID)
		dst = appendStringField(dst, 3, b.Text)
	case KindAck:
		b := &env.Ack
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendStringField(dst, 2, b.ClientMsgID)
		dst = appendVarintField(dst, 3, b.Seq)
		dst = appendVarintField(dst, 4, uint64(b.TimestampMilli))
	case KindDeliver:
		b := &env.Deliver
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendVarintField(dst, 2, b.Seq)
		dst = appendStringField(dst, 3, b.SenderID)
		dst = appendVarintField(dst, 4, uint64(b.SenderRole))
		dst = appendStringField(dst, 5, b.ClientMsgID)
		dst = appendStringField(dst, 6, b.Text)
		dst = appendVarintField(dst, 7, uint64(b.TimestampMilli))
	case KindTyping:
		b := &env.Typing
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendBoolField(dst, 2, b.On)
		dst = appendStringField(dst, 3, b.SenderID)
		dst = appendVarintField(dst, 4, uint64(b.SenderRole))
	case KindRead:
		b := &env.Read
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendVarintField(dst, 2, b.Seq)
		dst = appendStringField(dst, 3, b.SenderID)
		dst = appendVarintField(dst, 4, uint64(b.SenderRole))
	case KindPresence:
		b := &env.Presence
		dst = appendStringField(dst, 1, b.AgentID)
		dst = appendVarintField(dst, 2, uint64(b.Status))
		dst = appendVarintField(dst, 3, uint64(b.Capacity))
		dst = appendRepeatedString(dst, 4, b.Skills)
		dst = appendStringField(dst, 5, b.Region)
	case KindTransfer:
		b := &env.Transfer
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendStringField(dst, 2, b.ToAgentID)
		dst = appendStringField(dst, 3, b.ToSkill)
		dst = appendStringField(dst, 4, b.Note)
	case KindClose:
		b := &env.Close
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendStringField(dst, 2, b.Reason)
	case KindQueue:
		b := &env.Queue
		dst = appendStringField(dst, 1, b.ConversationID)
		dst = appendVarintField(dst, 2, uint64(b.Position))
		dst = appendVarintField(dst, 3, uint64(b.EtaSeconds))
	case KindError:
		b := &env.Error
		dst = appendVarintField(dst, 1, uint64(b.Code))
		dst = appendStringField(dst, 2, b.Message)
		dst = appendBoolField(dst, 3, b.Temporary)
	case KindSecure:
		if d := env.Secure.Data; len(d) > 0 {
			dst = append(dst, 1<<3|byte(protowire.BytesType))
			dst = protowire.AppendVarint(dst, uint64(len(d)))
			dst = append(dst, d...)
		}
	}
	return dst
}
