package protocol

import "strconv"

// Code is a protocol error code, carried by Error envelopes. The thousands
// digit is the range, and the range alone tells a client how to react:
//
//	1000–1999  malformed or unsupported request: fix the client; retrying
//	           the same bytes fails again. Codecs return these.
//	2000–2999  authentication and authorization: get a new token or give up.
//	3000–3999  conversation state: the request does not fit the current
//	           state (refresh it, e.g. by reopening the conversation).
//	4000–4999  limits: always Temporary; retry later with backoff.
//	5000–5999  server errors: Temporary; retry later, possibly elsewhere.
//
// 0 and codes outside 1000–5999 are not used. Codes are never reused with a
// new meaning; new codes are added inside the matching range (the numbers
// after the last constant of each range are free).
type Code uint16

// Range 1000–1999: malformed or unsupported request.
const (
	// CodeMalformed: the envelope is not valid for the schema (bad wire
	// data, bad JSON, a value that does not fit its field).
	CodeMalformed Code = 1000
	// CodeUnknownKind: the envelope's body is of a kind this server does not
	// know or does not accept from this client.
	CodeUnknownKind Code = 1001
	// CodeMissingField: the envelope has no body, or the body lacks a field
	// the request needs.
	CodeMissingField Code = 1002
	// CodeTooLarge: the message exceeds Welcome.max_message_bytes or a field
	// exceeds its size limit.
	CodeTooLarge Code = 1003
	// CodeInvalidUTF8: a string is not valid UTF-8.
	CodeInvalidUTF8 Code = 1004
	// CodeTooMany: a repeated field has more than MaxRepeated elements.
	CodeTooMany Code = 1005
	// CodeNotHello: the first envelope on a connection must be a Hello.
	CodeNotHello Code = 1006
)

// Range 2000–2999: authentication and authorization.
const (
	// CodeUnauthenticated: the request needs a session (or a token) and
	// there is none.
	CodeUnauthenticated Code = 2000
	// CodeBadToken: the token is malformed or its signature is wrong.
	CodeBadToken Code = 2001
	// CodeTokenExpired: the token has expired; get a new one.
	CodeTokenExpired Code = 2002
	// CodeForbidden: the role or tenant of the session may not do this.
	CodeForbidden Code = 2003
	// CodeBadResumeToken: the resume token is unknown or expired; start a
	// new session (send Hello without resume_token).
	CodeBadResumeToken Code = 2004
)

// Range 3000–3999: conversation state.
const (
	// CodeUnknownConversation: no such conversation.
	CodeUnknownConversation Code = 3000
	// CodeConversationClosed: the conversation is closed.
	CodeConversationClosed Code = 3001
	// CodeNotParticipant: the session takes no part in the conversation.
	CodeNotParticipant Code = 3002
	// CodeSeqFromFuture: a sequence number (Read.seq, Cursor.last_seq) is
	// higher than the conversation's last.
	CodeSeqFromFuture Code = 3003
	// CodeNoAgent: no agent (of the wanted skill) can take the conversation.
	CodeNoAgent Code = 3004
	// CodeAlreadyOpen: the visitor already has an open conversation.
	CodeAlreadyOpen Code = 3005
	// CodeBadTransition: the state change asked for is not allowed from the
	// current state (e.g. transferring a queued conversation).
	CodeBadTransition Code = 3006
)

// Range 4000–4999: limits. Always Temporary.
const (
	// CodeRateLimited: too many requests; slow down.
	CodeRateLimited Code = 4000
	// CodeQueueFull: the waiting queue is full; try again later.
	CodeQueueFull Code = 4001
	// CodeOverloaded: the server sheds load; reconnect later.
	CodeOverloaded Code = 4002
)

// Range 5000–5999: server errors. Temporary.
const (
	// CodeInternal: a bug or an unexpected failure on the server.
	CodeInternal Code = 5000
	// CodeUnavailable: a backend the request needs is unavailable.
	CodeUnavailable Code = 5001
	// CodeShuttingDown: the server is shutting down; reconnect (to another
	// instance).
	CodeShuttingDown Code = 5002
	// CodeUnconfirmed: the outcome of a Send is unknown: the history store
	// did not answer in time, so the message may or may not have been
	// stored (every other refusal of a Send means it was not stored and
	// will not be delivered). Re-send it with the same client_msg_id: the
	// answer is the original Ack if it was stored, else it is stored now.
	// A Deliver carrying the sender's own client_msg_id (live, or in a
	// replay) also says it was stored.
	CodeUnconfirmed Code = 5003
)

var codeNames = map[Code]string{
	CodeMalformed:    "malformed",
	CodeUnknownKind:  "unknown_kind",
	CodeMissingField: "missing_field",
	CodeTooLarge:     "too_large",
	CodeInvalidUTF8:  "invalid_utf8",
	CodeTooMany:      "too_many",
	CodeNotHello:     "not_hello",

	CodeUnauthenticated: "unauthenticated",
	CodeBadToken:        "bad_token",
	CodeTokenExpired:    "token_expired",
	CodeForbidden:       "forbidden",
	CodeBadResumeToken:  "bad_resume_token",

	CodeUnknownConversation: "unknown_conversation",
	CodeConversationClosed:  "conversation_closed",
	CodeNotParticipant:      "not_participant",
	CodeSeqFromFuture:       "seq_from_future",
	CodeNoAgent:             "no_agent",
	CodeAlreadyOpen:         "already_open",
	CodeBadTransition:       "bad_transition",

	CodeRateLimited: "rate_limited",
	CodeQueueFull:   "queue_full",
	CodeOverloaded:  "overloaded",

	CodeInternal:     "internal",
	CodeUnavailable:  "unavailable",
	CodeShuttingDown: "shutting_down",
	CodeUnconfirmed:  "unconfirmed",
}

var rangeNames = [...]string{
	1: "request",
	2: "auth",
	3: "conversation",
	4: "limit",
	5: "server",
}

// String returns the code's snake_case name, suitable as a metrics label,
// e.g. "rate_limited". A code without a name gives its range and number,
// e.g. "limit_4099", or "code_17" outside the ranges.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	r := int(c / 1000)
	if r >= 1 && r < len(rangeNames) {
		return rangeNames[r] + "_" + strconv.Itoa(int(c))
	}
	return "code_" + strconv.Itoa(int(c))
}

// Temporary reports whether a request that failed with c may succeed if
// retried later unchanged: true for the limit (4xxx) and server (5xxx)
// ranges.
func (c Code) Temporary() bool {
	return c >= 4000 && c <= 5999
}

// NewError returns an Error with the code, the message and Temporary set
// from the code's range.
func NewError(code Code, msg string) *Error {
	return &Error{Code: code, Message: msg, Temporary: code.Temporary()}
}

// Error implements the error interface: "protocol: 1004 invalid_utf8: msg".
func (e *Error) Error() string {
	s := "protocol: " + strconv.Itoa(int(e.Code)) + " " + e.Code.String()
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, protocol.ErrTooMany) matches any error of that code
// whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t != nil && e != nil && t.Code == e.Code
}

// Sentinel errors for errors.Is. Codecs return fresh *Error values with a
// precise message; these only name the codes. Do not modify them.
var (
	// ErrMalformed matches errors with CodeMalformed.
	ErrMalformed = NewError(CodeMalformed, "malformed envelope")
	// ErrUnknownKind matches errors with CodeUnknownKind.
	ErrUnknownKind = NewError(CodeUnknownKind, "unknown envelope kind")
	// ErrMissingField matches errors with CodeMissingField.
	ErrMissingField = NewError(CodeMissingField, "missing field")
	// ErrTooLarge matches errors with CodeTooLarge.
	ErrTooLarge = NewError(CodeTooLarge, "message too large")
	// ErrInvalidUTF8 matches errors with CodeInvalidUTF8.
	ErrInvalidUTF8 = NewError(CodeInvalidUTF8, "invalid UTF-8")
	// ErrTooMany matches errors with CodeTooMany.
	ErrTooMany = NewError(CodeTooMany, "too many elements in a repeated field")
	// ErrNotHello matches errors with CodeNotHello.
	ErrNotHello = NewError(CodeNotHello, "first envelope must be hello")
)
