package crypto

import (
	"errors"
	"fmt"
)

// Code classifies a failure. Ranges: 1-19 handshake failures (fatal), 20-29 ticket
// outcomes (reported by the server, which then falls back to a full handshake),
// 30-39 record-layer failures (fatal, sticky), 90-99 local errors.
type Code uint8

// Handshake, ticket, record and local error codes. Values are part of the
// documented contract (docs/crypto.md): never renumber.
const (
	CodeMalformed         Code = 1  // a message does not parse
	CodeUnsupportedVer    Code = 2  // unknown protocol version
	CodeNoCommonSuite     Code = 3  // no suite both sides accept
	CodeBadKeyShare       Code = 4  // a key share or KEM ciphertext is invalid
	CodeUnknownServerKey  Code = 5  // the server's key id is not pinned (or wrong algorithm)
	CodeBadSignature      Code = 6  // the server's transcript signature does not verify
	CodeBadFinished       Code = 7  // a Finished MAC does not match the transcript
	CodeBadBinder         Code = 8  // the PSK binder does not match
	CodeUnexpectedMessage Code = 9  // message out of order, or handshake already failed
	CodeSuiteNotOffered   Code = 10 // the server chose a suite the client did not offer
	CodeBadTicketMessage  Code = 11 // the NewSessionTicket message does not open
	CodeBadCertificate    Code = 12 // the server's chain does not parse, or fails name, usage or key checks
	CodeUnknownAuthority  Code = 13 // the server's chain does not lead to a configured root
	CodeCertExpired       Code = 14 // a certificate of the server's chain is expired or not yet valid

	CodeTicketInvalid Code = 20 // corrupted ticket, unknown ticket key, or wrong suite
	CodeTicketExpired Code = 21 // ticket past its expiry
	CodeTicketReused  Code = 22 // ticket already seen (single use)
	// CodeTicketUnavailable: the single-use check could not be made (the
	// SeenSet failed, e.g. the cluster's store is unreachable); the ticket
	// is refused, never accepted unchecked.
	CodeTicketUnavailable Code = 23

	CodeRecordAuth     Code = 30 // record failed authentication (tamper, replay, reorder, reflection)
	CodeRecordTooShort Code = 31 // record shorter than header + tag
	CodeRecordType     Code = 32 // unknown record type
	CodeClosed         Code = 33 // the peer sent a close record, or the Conn is closed
	CodeConnFailed     Code = 34 // an earlier Open failed: the Conn is dead

	CodeConfig   Code = 90 // invalid configuration or key
	CodeInternal Code = 91 // randomness or primitive failure
)

var codeNames = map[Code]string{
	CodeMalformed: "malformed message", CodeUnsupportedVer: "unsupported version",
	CodeNoCommonSuite: "no common suite", CodeBadKeyShare: "bad key share",
	CodeUnknownServerKey: "unknown server key", CodeBadSignature: "bad signature",
	CodeBadFinished: "bad finished", CodeBadBinder: "bad binder",
	CodeUnexpectedMessage: "unexpected message", CodeSuiteNotOffered: "suite not offered",
	CodeBadTicketMessage: "bad ticket message", CodeBadCertificate: "bad certificate",
	CodeUnknownAuthority: "unknown certificate authority", CodeCertExpired: "certificate expired",
	CodeTicketInvalid: "invalid ticket", CodeTicketExpired: "expired ticket",
	CodeTicketReused: "reused ticket", CodeTicketUnavailable: "ticket check unavailable",
	CodeRecordAuth: "record authentication failed", CodeRecordTooShort: "record too short",
	CodeRecordType: "unknown record type", CodeClosed: "closed", CodeConnFailed: "connection failed",
	CodeConfig: "configuration", CodeInternal: "internal",
}

func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code %d", uint8(c))
}

// Error is the only error type the package returns. Op names the step that failed
// ("client hello", "open", ...); Err, when set, is the underlying cause. Error never
// contains key material.
type Error struct {
	Code Code
	Op   string
	Err  error
}

func (e *Error) Error() string {
	s := "unigate/crypto: " + e.Op + ": " + e.Code.String()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, ErrBadSignature) works whatever Op and Err are.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is; each matches any *Error with its code.
var (
	ErrMalformed         = &Error{Code: CodeMalformed}
	ErrUnsupportedVer    = &Error{Code: CodeUnsupportedVer}
	ErrNoCommonSuite     = &Error{Code: CodeNoCommonSuite}
	ErrBadKeyShare       = &Error{Code: CodeBadKeyShare}
	ErrUnknownServerKey  = &Error{Code: CodeUnknownServerKey}
	ErrBadSignature      = &Error{Code: CodeBadSignature}
	ErrBadFinished       = &Error{Code: CodeBadFinished}
	ErrBadBinder         = &Error{Code: CodeBadBinder}
	ErrUnexpectedMessage = &Error{Code: CodeUnexpectedMessage}
	ErrSuiteNotOffered   = &Error{Code: CodeSuiteNotOffered}
	ErrBadTicketMessage  = &Error{Code: CodeBadTicketMessage}
	ErrBadCertificate    = &Error{Code: CodeBadCertificate}
	ErrUnknownAuthority  = &Error{Code: CodeUnknownAuthority}
	ErrCertExpired       = &Error{Code: CodeCertExpired}
	ErrTicketInvalid     = &Error{Code: CodeTicketInvalid}
	ErrTicketExpired     = &Error{Code: CodeTicketExpired}
	ErrTicketReused      = &Error{Code: CodeTicketReused}
	ErrTicketUnavailable = &Error{Code: CodeTicketUnavailable}
	ErrRecordAuth        = &Error{Code: CodeRecordAuth}
	ErrRecordTooShort    = &Error{Code: CodeRecordTooShort}
	ErrRecordType        = &Error{Code: CodeRecordType}
	ErrClosed            = &Error{Code: CodeClosed}
	ErrConnFailed        = &Error{Code: CodeConnFailed}
	ErrConfig            = &Error{Code: CodeConfig}
	ErrInternal          = &Error{Code: CodeInternal}
)

func newErr(code Code, op string, cause error) *Error { return &Error{Code: code, Op: op, Err: cause} }

var errLength = errors.New("bad length")

// CodeOf returns the Code of err, or 0 if err is not an *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
