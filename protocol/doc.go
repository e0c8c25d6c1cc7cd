// Package protocol defines Unigate's client protocol: the Envelope exchanged
// over a WebSocket, its two encodings, and the coded errors.
//
// The schema is unigate.proto (package unigate.v1); pb/ holds the code
// protoc-gen-go generates from it, and docs/protocol.md describes the
// protocol for client authors. Envelope mirrors the schema as one flat
// struct with a Kind and a value-typed body per kind, so that a connection
// can decode every message into the same Envelope without allocating.
//
// # Codecs
//
// One WebSocket message carries one Envelope. The subprotocol negotiated at
// the upgrade picks the Codec (ForSubprotocol, Subprotocols):
//
//   - Proto ("unigate.v1.proto", binary frames): a hand-written protowire
//     parser and encoder, the hot path. It decodes and encodes chat traffic
//     (Send, Deliver, Ack, Typing, Read) without allocating, and its output
//     is byte-identical to deterministic proto.Marshal of the pb types.
//   - JSON ("unigate.v1.json", text frames, browsers): a hand-written
//     scanner and encoder for the proto3 JSON mapping, held by differential
//     tests and fuzzing to what protojson over the pb types accepts and
//     writes. It allocates only for strings with escapes and Secure data.
//
// Decoders are strict where a mistake could hurt (invalid UTF-8, lengths
// past the end, more than MaxRepeated elements in a repeated field, an
// envelope without a body) and lenient where proto3 is (unknown fields are
// skipped, fields may come in any order, a repeated scalar's last value
// wins). The exceptions to "accepts exactly what the generated code
// accepts" are listed on the Proto codec's implementation and in
// docs/protocol.md.
//
// # Ownership and aliasing
//
// Decode does not copy: every string of the decoded Envelope points into
// the data slice (unsafe.String; with JSON, except strings that held an
// escape sequence). The caller
//
//   - must not modify data while it uses the Envelope — with an event loop
//     (gnet) that lends a read buffer, this means handling the Envelope
//     before the buffer is released or reused;
//   - must copy (strings.Clone) every string it keeps longer, and before
//     handing the Envelope or its strings to another goroutine, a cache, or
//     a backend.
//
// Repeated fields (Hello.Cursors, Welcome.Conversations, Presence.Skills)
// are appended into the Envelope's existing capacity; Reset keeps that
// capacity. AppendEncode appends to the caller's slice and grows it at most
// once; the result belongs to the caller.
//
// # Concurrency
//
// Proto and JSON are stateless and safe for concurrent use. An Envelope is
// not: use one per connection (or per goroutine) and reuse it.
//
// # Errors
//
// Decoders return a *Error whose Code is in the 1xxx range. The same Error
// type is the body of KindError envelopes the server sends; Code documents
// the ranges, and Code.Temporary tells whether a retry may help. Sentinel
// values (ErrMalformed, ErrTooMany, ...) match by code with errors.Is.
package protocol
