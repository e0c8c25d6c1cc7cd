package histstore

import (
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

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
	// fieldSealedText replaces fieldText when the text is encrypted at
	// rest: the Sealer's output (crypto/atrest: version, data key id,
	// nonce, SM4-GCM ciphertext and tag), bound to the message by
	// textAAD. A body has one of the two, never both.
	fieldSealedText protowire.Number = 7
)

// Sealer encrypts message texts at rest; *atrest.Keyring implements it.
// Seal and Open append to dst and must be safe for concurrent use; Seal
// adds exactly Overhead bytes.
type Sealer interface {
	Seal(dst, plaintext, aad []byte) ([]byte, error)
	Open(dst, sealed, aad []byte) ([]byte, error)
	Overhead() int
}

// ErrEncrypted: a stored text is sealed (encryption at rest) and the
// Store has no Sealer to open it. Returned wrapped together with
// ErrCorrupt.
var ErrEncrypted = errors.New("histstore: message text is encrypted at rest and no keyring is configured")

// textAADLabel starts textAAD (domain separation, format version).
const textAADLabel = "unigate/hist/v1/text"

// appendTextAAD appends the additional data that binds a sealed text to
// its message, so that a text moved to another message (another tenant,
// conversation, sequence, sender, role, client id or time) fails to open:
//
//	"unigate/hist/v1/text" ‖ 0x00 ‖ u8 len ‖ tenant ‖ u8 len ‖ conversation ‖
//	u64 seq ‖ u16 len ‖ sender id ‖ u8 role ‖ u16 len ‖ client msg id ‖ u64 time
//
// (big-endian; tenant and conversation are at most 128 bytes, the ids
// MaxIDBytes).
func appendTextAAD[S string | []byte](b []byte, tenant, conv string, seq uint64, sender S, role uint8, cmid S, ts int64) []byte {
	b = append(b, textAADLabel...)
	b = append(b, 0, byte(len(tenant)))
	b = append(b, tenant...)
	b = append(b, byte(len(conv)))
	b = append(b, conv...)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(sender)))
	b = append(b, sender...)
	b = append(b, role)
	b = binary.BigEndian.AppendUint16(b, uint16(len(cmid)))
	b = append(b, cmid...)
	return binary.BigEndian.AppendUint64(b, uint64(ts))
}

// sealScratch is pooled working space for the additional data and the
// plaintext of a sealed text.
type sealScratch struct{ aad, plain []byte }

var sealPool = sync.Pool{New: func() any { return new(sealScratch) }}

func putSealScratch(sc *sealScratch) {
	clear(sc.plain) // no message text left in pooled memory
	if cap(sc.plain) > 64<<10 {
		sc.plain = nil
	}
	sc.plain = sc.plain[:0]
	sealPool.Put(sc)
}

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
	b = appendHead(b, m)
	if m.Text != "" {
		b = protowire.AppendTag(b, fieldText, protowire.BytesType)
		b = protowire.AppendString(b, m.Text)
	}
	return appendTime(b, m)
}

// appendHead appends the fields before the text: seq, sender, role and
// client message id.
func appendHead(b []byte, m *Message) []byte {
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
	return b
}

func appendTime(b []byte, m *Message) []byte {
	if m.TimeMilli != 0 {
		b = protowire.AppendTag(b, fieldTime, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.TimeMilli))
	}
	return b
}

// appendSealedMessage is appendMessage with the text sealed by sl
// (fieldSealedText instead of fieldText). An empty text is not sealed.
func appendSealedMessage(b []byte, m *Message, sl Sealer) ([]byte, error) {
	if m.Text == "" {
		return appendMessage(b, m), nil
	}
	b = appendHead(b, m)
	sc := sealPool.Get().(*sealScratch)
	defer putSealScratch(sc)
	sc.aad = appendTextAAD(sc.aad[:0], m.Tenant, m.Conversation, m.Seq, m.SenderID, m.SenderRole, m.ClientMsgID, m.TimeMilli)
	sc.plain = append(sc.plain[:0], m.Text...)
	n := len(m.Text) + sl.Overhead()
	b = protowire.AppendTag(b, fieldSealedText, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	start := len(b)
	b, err := sl.Seal(b, sc.plain, sc.aad)
	if err != nil {
		return b, err
	}
	if len(b)-start != n {
		return b, fmt.Errorf("sealer added %d bytes, announced %d", len(b)-start-len(m.Text), sl.Overhead())
	}
	return appendTime(b, m), nil
}

// rawMessage is a parsed body whose byte fields still point into it.
type rawMessage struct {
	seq, role, ts      uint64
	sender, cmid, text []byte
	sealed             []byte
	hasText, hasSealed bool
}

// decodeMessage decodes a plain body into m's Seq, SenderID, SenderRole,
// ClientMsgID, Text and TimeMilli (Tenant and Conversation are left
// alone); see decode.
func decodeMessage(b []byte, m *Message) error { return decode(b, m, nil, true) }

// decode decodes a body into m (Tenant and Conversation must already be
// set: they are part of a sealed text's additional data). The strings are
// copied out of b, into one allocation. Unknown fields are skipped; a
// repeated field keeps its last value. A sealed text is opened with sl;
// with withText false it is left unopened and m.Text is empty (for
// lookups that need only the sequence). Any malformed or out-of-bounds
// input returns an error wrapping ErrCorrupt; a sealed text that sl
// cannot open also wraps sl's error (crypto/atrest: ErrAuth,
// ErrUnknownKey, ...), and one with no sl wraps ErrEncrypted.
func decode(b []byte, m *Message, sl Sealer, withText bool) error {
	var r rawMessage
	if err := r.parse(b); err != nil {
		return err
	}
	return r.fill(m, sl, withText)
}

func (r *rawMessage) parse(b []byte) error {
	*r = rawMessage{}
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
				r.seq = v
			case fieldSenderRole:
				if v > 255 {
					return fmt.Errorf("%w: sender role %d", ErrCorrupt, v)
				}
				r.role = v
			default:
				r.ts = v
			}
		case num == fieldSenderID && typ == protowire.BytesType,
			num == fieldClientMsgID && typ == protowire.BytesType,
			num == fieldText && typ == protowire.BytesType,
			num == fieldSealedText && typ == protowire.BytesType:
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
				r.sender = v
			case fieldClientMsgID:
				if len(v) > MaxIDBytes {
					return fmt.Errorf("%w: client message id of %d bytes", ErrCorrupt, len(v))
				}
				r.cmid = v
			case fieldText:
				if len(v) > MaxTextBytes {
					return fmt.Errorf("%w: text of %d bytes", ErrCorrupt, len(v))
				}
				r.text, r.hasText = v, true
			default:
				if len(v) > MaxTextBytes+maxSealOverhead {
					return fmt.Errorf("%w: sealed text of %d bytes", ErrCorrupt, len(v))
				}
				r.sealed, r.hasSealed = v, true
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrCorrupt, num, protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	if r.seq == 0 {
		return fmt.Errorf("%w: no sequence", ErrCorrupt)
	}
	if r.hasText && r.hasSealed {
		return fmt.Errorf("%w: both a plain and a sealed text", ErrCorrupt)
	}
	return nil
}

// maxSealOverhead bounds what a Sealer may add to a text.
const maxSealOverhead = 256

func (r *rawMessage) fill(m *Message, sl Sealer, withText bool) error {
	text := r.text
	if r.hasSealed && withText {
		if sl == nil {
			return fmt.Errorf("%w: seq %d: %w", ErrCorrupt, r.seq, ErrEncrypted)
		}
		sc := sealPool.Get().(*sealScratch)
		defer putSealScratch(sc)
		sc.aad = appendTextAAD(sc.aad[:0], m.Tenant, m.Conversation, r.seq, r.sender, uint8(r.role), r.cmid, int64(r.ts))
		var err error
		if sc.plain, err = sl.Open(sc.plain[:0], r.sealed, sc.aad); err != nil {
			return fmt.Errorf("%w: seq %d: sealed text: %w", ErrCorrupt, r.seq, err)
		}
		if len(sc.plain) > MaxTextBytes {
			return fmt.Errorf("%w: seq %d: text of %d bytes", ErrCorrupt, r.seq, len(sc.plain))
		}
		text = sc.plain
	}
	// One allocation for the three strings.
	var sb strings.Builder
	sb.Grow(len(r.sender) + len(r.cmid) + len(text))
	sb.Write(r.sender)
	sb.Write(r.cmid)
	sb.Write(text)
	all := sb.String()
	m.Seq = r.seq
	m.SenderRole = uint8(r.role)
	m.TimeMilli = int64(r.ts)
	m.SenderID = all[:len(r.sender)]
	m.ClientMsgID = all[len(r.sender) : len(r.sender)+len(r.cmid)]
	m.Text = all[len(r.sender)+len(r.cmid):]
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

// appendSubjectToken is subjectToken appended to b.
func appendSubjectToken(b []byte, s string) []byte {
	if plain(s, false) {
		return append(b, s...)
	}
	return b32.AppendEncode(append(b, '-'), []byte(s))
}

// appendHeaderToken is headerToken appended to b.
func appendHeaderToken(b []byte, s string) []byte {
	if plain(s, true) {
		return append(b, s...)
	}
	return b32.AppendEncode(append(b, '~'), []byte(s))
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
