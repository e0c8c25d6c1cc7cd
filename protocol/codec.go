package protocol

import "strconv"

// The WebSocket subprotocols (Sec-WebSocket-Protocol), one per encoding.
const (
	// SubprotocolProto: binary frames, protobuf wire format.
	SubprotocolProto = "unigate.v1.proto"
	// SubprotocolJSON: text frames, proto3 JSON mapping.
	SubprotocolJSON = "unigate.v1.json"
)

// MaxRepeated caps every repeated field of an envelope (Hello.Cursors,
// Welcome.Conversations, Presence.Skills), so a small message cannot make
// the decoder allocate without bound. Decoders reject more with CodeTooMany;
// encoders refuse to produce more.
const MaxRepeated = 256

// Codec encodes and decodes envelopes for one subprotocol. Codecs are
// stateless and safe for concurrent use; the envelopes and buffers passed
// to them are not.
type Codec interface {
	// Subprotocol returns the Sec-WebSocket-Protocol name of the codec,
	// SubprotocolProto or SubprotocolJSON.
	Subprotocol() string

	// Binary reports whether messages go in binary WebSocket frames (true)
	// or text frames (false).
	Binary() bool

	// Decode resets env and parses data, one complete WebSocket message,
	// into it. It returns a *Error with a code from the 1xxx range for
	// malformed input and never panics.
	//
	// Ownership: Decode does not copy strings; they alias data
	// (unsafe.String). The caller must not modify data while env is in use
	// and must copy (strings.Clone) any string kept after that, e.g. before
	// handing it to another goroutine. (JSON's Decode allocates the strings
	// that held an escape sequence, and Secure.Data, which is base64 in
	// JSON; code must not rely on which.) Both append repeated fields into
	// env's existing capacity.
	//
	// On error env holds a partial result; Reset or decode into it again.
	Decode(data []byte, env *Envelope) error

	// AppendEncode appends the encoding of env to dst and returns the
	// extended slice. Only the body named by env.Kind is encoded. It fails
	// with a *Error for an envelope no peer could decode: a Kind that names
	// no body (CodeUnknownKind), a string that is not valid UTF-8
	// (CodeInvalidUTF8), a repeated field longer than MaxRepeated
	// (CodeTooMany). On error dst is returned unchanged.
	AppendEncode(dst []byte, env *Envelope) ([]byte, error)
}

var (
	// Proto is the protobuf codec (SubprotocolProto): a hand-written
	// protowire parser and encoder that allocates nothing for chat traffic
	// once the envelope and the output buffer are warm. Its output is
	// byte-identical to deterministic proto.Marshal of the pb types.
	Proto Codec = protoCodec{}

	// JSON is the JSON codec (SubprotocolJSON, browser clients): a
	// hand-written scanner and encoder for the proto3 JSON mapping of
	// unigate.proto that accepts and produces exactly what protojson does
	// over the pb types (see jsonCodec for the rules and the one exception).
	// Like Proto it allocates nothing for chat traffic once the envelope
	// and the output buffer are warm, unless a string holds an escape.
	JSON Codec = jsonCodec{}
)

// ForSubprotocol returns the codec for a Sec-WebSocket-Protocol name
// (compared exactly, as RFC 6455 tokens are), or nil if there is none.
func ForSubprotocol(name string) Codec {
	switch name {
	case SubprotocolProto:
		return Proto
	case SubprotocolJSON:
		return JSON
	}
	return nil
}

// Subprotocols returns the supported subprotocol names, most preferred
// first: the server picks the first of these the client offers. The slice
// is new on every call.
func Subprotocols() []string {
	return []string{SubprotocolProto, SubprotocolJSON}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
