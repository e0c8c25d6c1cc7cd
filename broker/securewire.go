package broker

import (
	"bytes"
	"encoding/base64"

	"google.golang.org/protobuf/encoding/protowire"
)

// Fast paths for the outer envelope of an established secure connection.
//
// Every message of an encrypted connection is secure{data}: the codec's
// full Decode of it (a generic field loop for protobuf, protojson for
// JSON, ~11 allocations) is work thrown away, since only data is kept.
// The functions below recognise the one shape the clients send
// (protocol/client, web/src/core.js) and return the record; anything else
// (an id, unknown fields, escapes, URL-safe base64, ...) returns ok false
// and the caller falls back to the codec, which decides as before. They
// accept nothing the codec would refuse and return the data the codec
// would (FuzzSecureRecord checks both against the codec).

// secureRecordProto returns the data of buf when buf is exactly the
// protobuf encoding of Envelope{secure: Secure{data}} with data present:
// tag 24 (bytes), length, tag 1 (bytes), length, data, nothing after. The
// result aliases buf.
func secureRecordProto(buf []byte) ([]byte, bool) {
	if len(buf) < len(secureTag) || string(buf[:len(secureTag)]) != string(secureTag) {
		return nil, false
	}
	body, n := protowire.ConsumeBytes(buf[len(secureTag):])
	if n < 0 || len(secureTag)+n != len(buf) {
		return nil, false
	}
	if len(body) < 1 || body[0] != dataTag {
		return nil, false
	}
	data, n := protowire.ConsumeBytes(body[1:])
	if n < 0 || 1+n != len(body) {
		return nil, false
	}
	return data, true
}

// dataTag is the protobuf tag of Secure.data (field 1, bytes).
const dataTag = 1<<3 | byte(protowire.BytesType)

// secureRecordJSON decodes the record of buf, appended to dst, when buf is
// {"secure":{"data":"<standard padded base64>"}} with optional JSON
// whitespace between the tokens. ok false leaves dst as it was.
func secureRecordJSON(dst, buf []byte) ([]byte, bool) {
	i := skipWS(buf, 0)
	for _, tok := range jsonPrefix {
		if i = skipWS(buf, i); len(buf)-i < len(tok) || string(buf[i:i+len(tok)]) != tok {
			return dst, false
		}
		i += len(tok)
	}
	end := bytes.IndexByte(buf[i:], '"')
	if end < 0 {
		return dst, false
	}
	b64 := buf[i : i+end]
	// The base64 decoder refuses every byte outside its alphabet but CR
	// and LF, which it skips: JSON refuses them raw in a string.
	// Escapes (a backslash) fail the decoder and go to the codec.
	if bytes.IndexByte(b64, '\n') >= 0 || bytes.IndexByte(b64, '\r') >= 0 {
		return dst, false
	}
	i += end + 1 // past the closing quote
	for _, tok := range []byte("}}") {
		if i = skipWS(buf, i); i == len(buf) || buf[i] != tok {
			return dst, false
		}
		i++
	}
	if skipWS(buf, i) != len(buf) {
		return dst, false
	}
	n := len(dst)
	out, err := base64.StdEncoding.AppendDecode(dst, b64)
	if err != nil {
		return dst[:n], false
	}
	return out, true
}

// jsonPrefix are the tokens before the base64 text; whitespace may separate them.
var jsonPrefix = [...]string{`{`, `"secure"`, `:`, `{`, `"data"`, `:`, `"`}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}
