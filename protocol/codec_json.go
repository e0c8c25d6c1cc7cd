package protocol

import (
	"encoding/base64"
	"encoding/binary"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// jsonCodec is the proto3 JSON mapping of unigate.proto, hand-written like
// protoCodec: a scanner and an encoder driven by the field tables below, no
// reflection, no generated types. It reproduces protojson (v1.36, with
// UnmarshalOptions{DiscardUnknown: true}) over the pb types exactly; the
// differential tests and fuzz targets (codec_json_test.go) hold it to the
// previous protojson-based codec, kept as protojsonCodec in the tests.
//
// Output: lowerCamelCase field names in field-number order, compact (no
// whitespace); 64-bit integers as decimal strings; enums by name, or as a
// number when this version has no name for the value; bytes as standard
// base64 with padding; proto3 zero values omitted, the body always present
// (an empty body is {}). Strings escape only what JSON requires, like
// protojson: '"', '\\' and the control characters U+0000–U+001F (\b \f \n
// \r \t, others as \u00XX). '<', '>', '&', U+2028 and U+2029 are written as
// they are: the output is a WebSocket text frame, never embedded in HTML or
// in a JavaScript source, and JSON.parse reads U+2028/U+2029 inside strings.
//
// Input, as protojson reads it:
//   - field names: the JSON name or the schema name (conversationId or
//     conversation_id); the same field twice, under either name, is an
//     error, and so are two bodies;
//   - null for any field means "not set" (the field still counts as seen
//     for the duplicate check; a null body is no body);
//   - 64-bit and 32-bit integers: a JSON number or a string holding one,
//     in any form protojson accepts (1e2, 1.0, -0, "7"), within the type's
//     range; no surrounding spaces inside the string;
//   - enums: a known name (a string), or any int32 as a number; an unknown
//     name is ignored (the field stays unset);
//   - bytes: standard or URL-safe base64, with or without padding;
//   - strings: every JSON escape, \uXXXX surrogate pairs included; a lone
//     or broken surrogate escape is an error (protojson refuses it; it does
//     not substitute U+FFFD);
//   - unknown fields are skipped whatever their value, nested as deep as
//     protojson allows (its recursion limit, 10000 levels, counts the
//     enclosing messages too).
//
// The one difference: a field name in brackets ("[pkg.Name]", protojson's
// syntax for extensions, which unigate.proto has none of) is skipped like
// any unknown field. protojson looked it up in the binary's global type
// registry and failed when some linked-in type had that name, so its
// answer depended on the binary (TestJSONBracketName).
//
// Errors: invalid UTF-8 anywhere in the message is CodeInvalidUTF8; any
// other syntax or type error CodeMalformed. Then the limits of the Proto
// codec: an envelope without a body is CodeMissingField (unknown bodies are
// skipped as unknown fields before the codec can tell), more than
// MaxRepeated elements CodeTooMany, an enum outside 0..255 or an
// Error.code above 65535 CodeMalformed.
//
// Strings of the decoded envelope alias data, as Proto's do, except those
// that contained an escape sequence (those are allocated). Secure.Data is
// always allocated (it is decoded from base64).
type jsonCodec struct{}

func (jsonCodec) Subprotocol() string { return SubprotocolJSON }
func (jsonCodec) Binary() bool        { return false }

// jkind is the JSON type of a field.
type jkind uint8

const (
	jString  jkind = iota // string
	jUint64               // uint64: a string on output
	jInt64                // int64: a string on output
	jUint32               // uint32
	jBool                 // bool
	jRole                 // enum Role (uint8 in Go)
	jState                // enum State
	jStatus               // enum Status
	jCode                 // Error.code: uint32 in the schema, Code (uint16) in Go
	jStrings              // repeated string
	jCursors              // repeated Cursor
	jBytes                // bytes
)

// jfield is one field of a message: its names, its JSON type, and where it
// lives in the Go struct. Tables list fields in field-number order, which
// is the output order; a field's index is its bit in the duplicate mask.
type jfield struct {
	json  string  // lowerCamelCase name (the proto3 JSON name)
	proto string  // the schema's name
	key   string  // `"json":`, written on output
	kind  jkind   //
	off   uintptr // offset in the Go struct
}

func jf(json, proto string, kind jkind, off uintptr) jfield {
	return jfield{json: json, proto: proto, key: `"` + json + `":`, kind: kind, off: off}
}

var (
	jsonCursor = []jfield{
		jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Cursor{}.ConversationID)),
		jf("lastSeq", "last_seq", jUint64, unsafe.Offsetof(Cursor{}.LastSeq)),
	}

	// jsonBodies holds the fields of each body, indexed by Kind.
	jsonBodies = [KindSecure + 1][]jfield{
		KindHello: {
			jf("token", "token", jString, unsafe.Offsetof(Hello{}.Token)),
			jf("resumeToken", "resume_token", jString, unsafe.Offsetof(Hello{}.ResumeToken)),
			jf("cursors", "cursors", jCursors, unsafe.Offsetof(Hello{}.Cursors)),
			jf("clientName", "client_name", jString, unsafe.Offsetof(Hello{}.ClientName)),
			jf("tenant", "tenant", jString, unsafe.Offsetof(Hello{}.Tenant)),
			jf("username", "username", jString, unsafe.Offsetof(Hello{}.Username)),
			jf("password", "password", jString, unsafe.Offsetof(Hello{}.Password)),
		},
		KindWelcome: {
			jf("sessionId", "session_id", jString, unsafe.Offsetof(Welcome{}.SessionID)),
			jf("resumeToken", "resume_token", jString, unsafe.Offsetof(Welcome{}.ResumeToken)),
			jf("role", "role", jRole, unsafe.Offsetof(Welcome{}.Role)),
			jf("userId", "user_id", jString, unsafe.Offsetof(Welcome{}.UserID)),
			jf("heartbeatMillis", "heartbeat_millis", jUint32, unsafe.Offsetof(Welcome{}.HeartbeatMillis)),
			jf("maxMessageBytes", "max_message_bytes", jUint32, unsafe.Offsetof(Welcome{}.MaxMessageBytes)),
			jf("serverVersion", "server_version", jString, unsafe.Offsetof(Welcome{}.ServerVersion)),
			jf("resumed", "resumed", jBool, unsafe.Offsetof(Welcome{}.Resumed)),
			jf("conversations", "conversations", jStrings, unsafe.Offsetof(Welcome{}.Conversations)),
		},
		KindOpen: {
			jf("skill", "skill", jString, unsafe.Offsetof(Open{}.Skill)),
			jf("priority", "priority", jUint32, unsafe.Offsetof(Open{}.Priority)),
			jf("text", "text", jString, unsafe.Offsetof(Open{}.Text)),
			jf("region", "region", jString, unsafe.Offsetof(Open{}.Region)),
			jf("language", "language", jString, unsafe.Offsetof(Open{}.Language)),
			jf("page", "page", jString, unsafe.Offsetof(Open{}.Page)),
		},
		KindConversation: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Conversation{}.ConversationID)),
			jf("state", "state", jState, unsafe.Offsetof(Conversation{}.State)),
			jf("visitorId", "visitor_id", jString, unsafe.Offsetof(Conversation{}.VisitorID)),
			jf("agentId", "agent_id", jString, unsafe.Offsetof(Conversation{}.AgentID)),
			jf("skill", "skill", jString, unsafe.Offsetof(Conversation{}.Skill)),
			jf("reason", "reason", jString, unsafe.Offsetof(Conversation{}.Reason)),
			jf("lastSeq", "last_seq", jUint64, unsafe.Offsetof(Conversation{}.LastSeq)),
			jf("intent", "intent", jString, unsafe.Offsetof(Conversation{}.Intent)),
			jf("summary", "summary", jString, unsafe.Offsetof(Conversation{}.Summary)),
			jf("routing", "routing", jString, unsafe.Offsetof(Conversation{}.Routing)),
			jf("region", "region", jString, unsafe.Offsetof(Conversation{}.Region)),
			jf("language", "language", jString, unsafe.Offsetof(Conversation{}.Language)),
			jf("page", "page", jString, unsafe.Offsetof(Conversation{}.Page)),
		},
		KindSend: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Send{}.ConversationID)),
			jf("clientMsgId", "client_msg_id", jString, unsafe.Offsetof(Send{}.ClientMsgID)),
			jf("text", "text", jString, unsafe.Offsetof(Send{}.Text)),
		},
		KindAck: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Ack{}.ConversationID)),
			jf("clientMsgId", "client_msg_id", jString, unsafe.Offsetof(Ack{}.ClientMsgID)),
			jf("seq", "seq", jUint64, unsafe.Offsetof(Ack{}.Seq)),
			jf("timestampMilli", "timestamp_milli", jInt64, unsafe.Offsetof(Ack{}.TimestampMilli)),
		},
		KindDeliver: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Deliver{}.ConversationID)),
			jf("seq", "seq", jUint64, unsafe.Offsetof(Deliver{}.Seq)),
			jf("senderId", "sender_id", jString, unsafe.Offsetof(Deliver{}.SenderID)),
			jf("senderRole", "sender_role", jRole, unsafe.Offsetof(Deliver{}.SenderRole)),
			jf("clientMsgId", "client_msg_id", jString, unsafe.Offsetof(Deliver{}.ClientMsgID)),
			jf("text", "text", jString, unsafe.Offsetof(Deliver{}.Text)),
			jf("timestampMilli", "timestamp_milli", jInt64, unsafe.Offsetof(Deliver{}.TimestampMilli)),
		},
		KindTyping: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Typing{}.ConversationID)),
			jf("on", "on", jBool, unsafe.Offsetof(Typing{}.On)),
			jf("senderId", "sender_id", jString, unsafe.Offsetof(Typing{}.SenderID)),
			jf("senderRole", "sender_role", jRole, unsafe.Offsetof(Typing{}.SenderRole)),
		},
		KindRead: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Read{}.ConversationID)),
			jf("seq", "seq", jUint64, unsafe.Offsetof(Read{}.Seq)),
			jf("senderId", "sender_id", jString, unsafe.Offsetof(Read{}.SenderID)),
			jf("senderRole", "sender_role", jRole, unsafe.Offsetof(Read{}.SenderRole)),
		},
		KindPresence: {
			jf("agentId", "agent_id", jString, unsafe.Offsetof(Presence{}.AgentID)),
			jf("status", "status", jStatus, unsafe.Offsetof(Presence{}.Status)),
			jf("capacity", "capacity", jUint32, unsafe.Offsetof(Presence{}.Capacity)),
			jf("skills", "skills", jStrings, unsafe.Offsetof(Presence{}.Skills)),
			jf("region", "region", jString, unsafe.Offsetof(Presence{}.Region)),
		},
		KindTransfer: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Transfer{}.ConversationID)),
			jf("toAgentId", "to_agent_id", jString, unsafe.Offsetof(Transfer{}.ToAgentID)),
			jf("toSkill", "to_skill", jString, unsafe.Offsetof(Transfer{}.ToSkill)),
			jf("note", "note", jString, unsafe.Offsetof(Transfer{}.Note)),
		},
		KindClose: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Close{}.ConversationID)),
			jf("reason", "reason", jString, unsafe.Offsetof(Close{}.Reason)),
		},
		KindQueue: {
			jf("conversationId", "conversation_id", jString, unsafe.Offsetof(Queue{}.ConversationID)),
			jf("position", "position", jUint32, unsafe.Offsetof(Queue{}.Position)),
			jf("etaSeconds", "eta_seconds", jUint32, unsafe.Offsetof(Queue{}.EtaSeconds)),
		},
		KindError: {
			jf("code", "code", jCode, unsafe.Offsetof(Error{}.Code)),
			jf("message", "message", jString, unsafe.Offsetof(Error{}.Message)),
			jf("temporary", "temporary", jBool, unsafe.Offsetof(Error{}.Temporary)),
		},
		KindSecure: {
			jf("data", "data", jBytes, unsafe.Offsetof(Secure{}.Data)),
		},
	}

	// jsonBodyOffset is the offset of each body in Envelope, by Kind.
	jsonBodyOffset = [KindSecure + 1]uintptr{
		KindHello:        unsafe.Offsetof(Envelope{}.Hello),
		KindWelcome:      unsafe.Offsetof(Envelope{}.Welcome),
		KindOpen:         unsafe.Offsetof(Envelope{}.Open),
		KindConversation: unsafe.Offsetof(Envelope{}.Conversation),
		KindSend:         unsafe.Offsetof(Envelope{}.Send),
		KindAck:          unsafe.Offsetof(Envelope{}.Ack),
		KindDeliver:      unsafe.Offsetof(Envelope{}.Deliver),
		KindTyping:       unsafe.Offsetof(Envelope{}.Typing),
		KindRead:         unsafe.Offsetof(Envelope{}.Read),
		KindPresence:     unsafe.Offsetof(Envelope{}.Presence),
		KindTransfer:     unsafe.Offsetof(Envelope{}.Transfer),
		KindClose:        unsafe.Offsetof(Envelope{}.Close),
		KindQueue:        unsafe.Offsetof(Envelope{}.Queue),
		KindError:        unsafe.Offsetof(Envelope{}.Error),
		KindSecure:       unsafe.Offsetof(Envelope{}.Secure),
	}

	// The enum value names of unigate.proto, indexed by number.
	roleNames   = [...]string{"ROLE_UNSPECIFIED", "ROLE_VISITOR", "ROLE_AGENT", "ROLE_BOT", "ROLE_SYSTEM"}
	stateNames  = [...]string{"STATE_UNSPECIFIED", "STATE_BOT", "STATE_QUEUED", "STATE_ASSIGNED", "STATE_TRANSFERRED", "STATE_CLOSED"}
	statusNames = [...]string{"STATUS_UNSPECIFIED", "STATUS_ONLINE", "STATUS_AWAY", "STATUS_BUSY", "STATUS_OFFLINE"}
)

func enumNames(k jkind) []string {
	switch k {
	case jRole:
		return roleNames[:]
	case jState:
		return stateNames[:]
	}
	return statusNames[:]
}

func bodyPtr(env *Envelope, k Kind) unsafe.Pointer {
	return unsafe.Add(unsafe.Pointer(env), jsonBodyOffset[k])
}

// Encoding. Strings are validated while they are escaped; on any failure
// the envelope is measured with measureBody, which gives the same error the
// Proto codec gives, and dst is returned unchanged.

func (jsonCodec) AppendEncode(dst []byte, env *Envelope) ([]byte, error) {
	if !env.Kind.Valid() {
		return dst, measureErr(env)
	}
	orig := dst
	dst = slices.Grow(dst, 32+len(kindNames[env.Kind])+jsonSizeHint(jsonBodies[env.Kind], bodyPtr(env, env.Kind)))
	dst = append(dst, '{')
	if env.ID != 0 {
		dst = append(dst, `"id":"`...)
		dst = strconv.AppendUint(dst, env.ID, 10)
		dst = append(dst, `",`...)
	}
	dst = append(dst, '"')
	dst = append(dst, kindNames[env.Kind]...)
	dst = append(dst, `":`...)
	dst, ok := appendJSONMessage(dst, jsonBodies[env.Kind], bodyPtr(env, env.Kind))
	if !ok {
		return orig, measureErr(env)
	}
	return append(dst, '}'), nil
}

// jsonSizeHint returns the encoded size of the message at p if no string
// needs escapes, plus a little room for some: the encoder grows dst once.
func jsonSizeHint(fields []jfield, p unsafe.Pointer) int {
	n := 2
	for i := range fields {
		f := &fields[i]
		fp := unsafe.Add(p, f.off)
		switch f.kind {
		case jString:
			if l := len(*(*string)(fp)); l > 0 {
				n += len(f.key) + 3 + l + l/16
			}
		case jStrings:
			if ss := *(*[]string)(fp); len(ss) > 0 {
				n += len(f.key) + 2
				for _, s := range ss {
					n += 3 + len(s) + len(s)/16
				}
			}
		case jCursors:
			if cs := *(*[]Cursor)(fp); len(cs) > 0 && len(cs) <= MaxRepeated {
				n += len(f.key) + 2
				for j := range cs {
					n += 1 + jsonSizeHint(jsonCursor, unsafe.Pointer(&cs[j]))
				}
			}
		case jBytes:
			if l := len(*(*[]byte)(fp)); l > 0 {
				n += len(f.key) + 3 + base64.StdEncoding.EncodedLen(l)
			}
		default: // numbers, bools, enum names
			n += len(f.key) + 23
		}
	}
	return n
}

// measureErr returns measureBody's error for an envelope the encoder could
// not write.
func measureErr(env *Envelope) error {
	if _, err := measureBody(env); err != nil {
		return err
	}
	return NewError(CodeInternal, "json: encode "+env.Kind.String()+" failed") // unreachable
}

// appendJSONMessage appends the object holding the fields of the struct at
// p. It reports false for an invalid string or too many elements.
func appendJSONMessage(dst []byte, fields []jfield, p unsafe.Pointer) ([]byte, bool) {
	dst = append(dst, '{')
	first := true
	for i := range fields {
		f := &fields[i]
		fp := unsafe.Add(p, f.off)
		mark := len(dst)
		if !first {
			dst = append(dst, ',')
		}
		dst = append(dst, f.key...)
		switch f.kind {
		case jString:
			s := *(*string)(fp)
			if s == "" {
				dst = dst[:mark]
				continue
			}
			var ok bool
			if dst, ok = appendJSONString(dst, s); !ok {
				return dst, false
			}
		case jUint64:
			v := *(*uint64)(fp)
			if v == 0 {
				dst = dst[:mark]
				continue
			}
			dst = append(dst, '"')
			dst = strconv.AppendUint(dst, v, 10)
			dst = append(dst, '"')
		case jInt64:
			v := *(*int64)(fp)
			if v == 0 {
				dst = dst[:mark]
				continue
			}
			dst = append(dst, '"')
			dst = strconv.AppendInt(dst, v, 10)
			dst = append(dst, '"')
		case jUint32:
			v := *(*uint32)(fp)
			if v == 0 {
				dst = dst[:mark]
				continue
			}
			dst = strconv.AppendUint(dst, uint64(v), 10)
		case jCode:
			v := *(*Code)(fp)
			if v == 0 {
				dst = dst[:mark]
				continue
			}
			dst = strconv.AppendUint(dst, uint64(v), 10)
		case jBool:
			if !*(*bool)(fp) {
				dst = dst[:mark]
				continue
			}
			dst = append(dst, "true"...)
		case jRole, jState, jStatus:
			v := *(*uint8)(fp)
			if v == 0 {
				dst = dst[:mark]
				continue
			}
			if names := enumNames(f.kind); int(v) < len(names) {
				dst = append(dst, '"')
				dst = append(dst, names[v]...)
				dst = append(dst, '"')
			} else {
				dst = strconv.AppendUint(dst, uint64(v), 10)
			}
		case jStrings:
			ss := *(*[]string)(fp)
			if len(ss) == 0 {
				dst = dst[:mark]
				continue
			}
			if len(ss) > MaxRepeated {
				return dst, false
			}
			dst = append(dst, '[')
			for j, s := range ss {
				if j > 0 {
					dst = append(dst, ',')
				}
				var ok bool
				if dst, ok = appendJSONString(dst, s); !ok {
					return dst, false
				}
			}
			dst = append(dst, ']')
		case jCursors:
			cs := *(*[]Cursor)(fp)
			if len(cs) == 0 {
				dst = dst[:mark]
				continue
			}
			if len(cs) > MaxRepeated {
				return dst, false
			}
			dst = append(dst, '[')
			for j := range cs {
				if j > 0 {
					dst = append(dst, ',')
				}
				var ok bool
				if dst, ok = appendJSONMessage(dst, jsonCursor, unsafe.Pointer(&cs[j])); !ok {
					return dst, false
				}
			}
			dst = append(dst, ']')
		case jBytes:
			b := *(*[]byte)(fp)
			if len(b) == 0 {
				dst = dst[:mark]
				continue
			}
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, b)
			dst = append(dst, '"')
		}
		first = false
	}
	return append(dst, '}'), true
}

// jsonNoEscape[c] is true for the bytes a JSON string holds as they are:
// everything but '"', '\\' and the control characters. Bytes from 0x80 up
// are UTF-8, validated separately.
var jsonNoEscape = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s as a JSON string, escaping as protojson does.
// It reports false if s is not valid UTF-8.
func appendJSONString(dst []byte, s string) ([]byte, bool) {
	if !utf8.ValidString(s) {
		return dst, false
	}
	dst = append(dst, '"')
	b := unsafe.Slice(unsafe.StringData(s), len(s))
	start := 0
	for i := 0; i < len(s); i++ {
		i += plainLen(b[i:])
		if i >= len(s) {
			break
		}
		c := s[i]
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"'), true
}

const hexDigits = "0123456789abcdef"

// plainLen returns the number of bytes at the start of b that a JSON string
// holds as they are (see jsonNoEscape). It tests eight bytes at a time: the
// lowest flagged byte of a word is the first '"', '\\' or control
// character, since the borrows of these tests only run towards later bytes.
func plainLen(b []byte) int {
	const (
		lsb = 0x0101010101010101
		msb = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		q, e := x^(lsb*'"'), x^(lsb*'\\')
		if t := ((q - lsb) &^ q) | ((e - lsb) &^ e) | ((x - lsb*0x20) &^ x); t&msb != 0 {
			return i + bits.TrailingZeros64(t&msb)/8
		}
	}
	for ; i < len(b) && jsonNoEscape[b[i]]; i++ {
	}
	return i
}

func tooMany(k Kind) *Error {
	return NewError(CodeTooMany, k.String()+": more than "+itoa(MaxRepeated)+" elements")
}

func outOfRange(k Kind) *Error {
	return NewError(CodeMalformed, k.String()+": value out of range")
}
