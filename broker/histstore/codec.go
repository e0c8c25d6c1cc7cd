package histstore

import (
	"encoding/base32"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// Bounds on stored messages, enforced by Append and by the decoder.
const (
	// MaxTenantBytes bounds Message.Tenant.
	MaxTenantBytes = 128
	// MaxConversationBytes bounds Message.Conversation.
	MaxConversationBytes = 128
	// MaxIDBytes bounds Message.SenderID and Message.ClientMsgID.
	MaxIDBytes = 256
	// MaxTextBytes bounds Message.Text (NATS's default max payload is 1 MiB).
	MaxTextBytes = 512 << 10
)

// Body field numbers (protobuf wire format, see doc.go).
const (
	fieldSeq         protowire.Number = 1
	fieldSenderID    protowire.Number = 2
	fieldSenderRole  protowire.Number = 3
	fieldClientMsgID protowire.Number = 4
	fieldText        protowire.Number = 5
	fieldTime        protowire.Number = 6
)

// encodedSize returns the size of m's body.
func encodedSize(m *Message) int {
	n := protowire.SizeTag(fieldSeq) + protowire.SizeVarint(m.Seq)
	if m.SenderID != "" {
		n += protowire.SizeTag(fieldSenderID) + protowire.SizeBytes(len(m.SenderID))
	}
	if m.SenderRole != 0 {
		n += protowire.SizeTag(fieldSenderRole) + protowire.SizeVarint(uint64(m.SenderRole))
	}
	if m.ClientMsgID != "" {
		n += protowire.SizeTag(fieldClientMsgID) + protowire.SizeBytes(len(m.ClientMsgID))
	}
	if m.Text != "" {
		n += protowire.SizeTag(fieldText) + protowire.SizeBytes(len(m.Text))
	}
	if m.TimeMilli != 0 {
		n += protowire.SizeTag(fieldTime) + protowire.SizeVarint(uint64(m.TimeMilli))
	}
	return n
}

// appendMessage appends m's body (not Tenant and Conversation, which are
// in the subject) to b.
func appendMessage(b []byte, m *Message) []byte {
	b = protowire.AppendTag(b, fieldSeq, protowire.VarintType)
	b = protowire.AppendVarint(b, m.Seq)
	if m.SenderID != "" {
		b = protowire.AppendTag(b, fieldSenderID, protowire.BytesType)
		b = protowire.AppendString(b, m.SenderID)
	}
	if m.SenderRole != 0 {
		b = protowire.AppendTag(b, fieldSenderRole, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.SenderRole))
	}
	if m.ClientMsgID != "" {
		b = protowire.AppendTag(b, fieldClientMsgID, protowire.BytesType)
		b = protowire.AppendString(b, m.ClientMsgID)
	}
	if m.Text != "" {
		b = protowire.AppendTag(b, fieldText, protowire.BytesType)
		b = protowire.AppendString(b, m.Text)
	}
	if m.TimeMilli != 0 {
		b = protowire.AppendTag(b, fieldTime, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.TimeMilli))
	}
	return b
}

// decodeMessage decodes a body into m's Seq, SenderID, SenderRole,
// ClientMsgID, Text and TimeMilli (Tenant and Conversation are left
// alone). The strings are copied out of b, into one allocation. Unknown
// fields are skipped; a repeated field keeps its last value. Any malformed
// or out-of-bounds input returns an error wrapping ErrCorrupt.
func decodeMessage(b []byte, m *Message) error {
	var sender, cmid, text []byte
	var seq, role, ts uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: tag: %v", ErrCorrupt, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == fieldSeq && typ == protowire.VarintType,
			num == fieldSenderRole && typ == protowire.VarintType,
			num == fieldTime && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrCorrupt, num, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case fieldSeq:
				seq = v
			case fieldSenderRole:
				if v > 255 {
					return fmt.Errorf("%w: sender role %d", ErrCorrupt, v)
				}
				role = v
			default:
				ts = v
			}
		case num == fieldSenderID && typ == protowire.BytesType,
			num == fieldClientMsgID && typ == protowire.BytesType,
			num == fieldText && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrCorrupt, num, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case fieldSenderID:
				if len(v) > MaxIDBytes {
					return fmt.Errorf("%w: sender id of %d bytes", ErrCorrupt, len(v))
				}
				sender = v
			case fieldClientMsgID:
				if len(v) > MaxIDBytes {
					return fmt.Errorf("%w: client message id of %d bytes", ErrCorrupt, len(v))
				}
				cmid = v
			default:
				if len(v) > MaxTextBytes {
					return fmt.Errorf("%w: text of %d bytes", ErrCorrupt, len(v))
				}
				text = v
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrCorrupt, num, protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	if seq == 0 {
		return fmt.Errorf("%w: no sequence", ErrCorrupt)
	}
	// One allocation for the three strings.
	var sb strings.Builder
	sb.Grow(len(sender) + len(cmid) + len(text))
	sb.Write(sender)
	sb.Write(cmid)
	sb.Write(text)
	all := sb.String()
	m.Seq = seq
	m.SenderRole = uint8(role)
	m.TimeMilli = int64(ts)
	m.SenderID = all[:len(sender)]
	m.ClientMsgID = all[len(sender) : len(sender)+len(cmid)]
	m.Text = all[len(sender)+len(cmid):]
	return nil
}

// b32 is lowercase base32hex without padding: its alphabet (0-9a-v) is
// subject- and header-safe and sorts like the input.
var b32 = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// subjectToken returns s as one subject token: s itself when it is
// non-empty and only [a-z0-9_], otherwise "-" + base32hex(s). The mapping
// is injective ('-' is never in a plain token) and never yields '.', '*',
// '>' or white space.
func subjectToken(s string) string {
	if plain(s, false) {
		return s
	}
	return "-" + b32.EncodeToString([]byte(s))
}

// headerToken is subjectToken for the parts of Nats-Msg-Id: plain
// [A-Za-z0-9_.:-] is kept, anything else becomes "~" + base32hex(s), so a
// header value never holds '/', CR, LF or non-ASCII bytes.
func headerToken(s string) string {
	if plain(s, true) {
		return s
	}
	return "~" + b32.EncodeToString([]byte(s))
}

func plain(s string, header bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case header && (c >= 'A' && c <= 'Z' || c == '.' || c == ':' || c == '-'):
		default:
			return false
		}
	}
	return true
}
