package protocol

import (
	"errors"
	"fmt"
	"testing"
)

func TestCodes(t *testing.T) {
	tests := []struct {
		code      Code
		num       uint16
		name      string
		temporary bool
	}{
		{CodeMalformed, 1000, "malformed", false},
		{CodeUnknownKind, 1001, "unknown_kind", false},
		{CodeMissingField, 1002, "missing_field", false},
		{CodeTooLarge, 1003, "too_large", false},
		{CodeInvalidUTF8, 1004, "invalid_utf8", false},
		{CodeTooMany, 1005, "too_many", false},
		{CodeNotHello, 1006, "not_hello", false},
		{CodeUnauthenticated, 2000, "unauthenticated", false},
		{CodeBadToken, 2001, "bad_token", false},
		{CodeTokenExpired, 2002, "token_expired", false},
		{CodeForbidden, 2003, "forbidden", false},
		{CodeBadResumeToken, 2004, "bad_resume_token", false},
		{CodeUnknownConversation, 3000, "unknown_conversation", false},
		{CodeConversationClosed, 3001, "conversation_closed", false},
		{CodeNotParticipant, 3002, "not_participant", false},
		{CodeSeqFromFuture, 3003, "seq_from_future", false},
		{CodeNoAgent, 3004, "no_agent", false},
		{CodeAlreadyOpen, 3005, "already_open", false},
		{CodeBadTransition, 3006, "bad_transition", false},
		{CodeRateLimited, 4000, "rate_limited", true},
		{CodeQueueFull, 4001, "queue_full", true},
		{CodeOverloaded, 4002, "overloaded", true},
		{CodeInternal, 5000, "internal", true},
		{CodeUnavailable, 5001, "unavailable", true},
		{CodeShuttingDown, 5002, "shutting_down", true},
		{CodeUnconfirmed, 5003, "unconfirmed", true},
		// Codes without a constant.
		{1999, 1999, "request_1999", false},
		{2500, 2500, "auth_2500", false},
		{3999, 3999, "conversation_3999", false},
		{4999, 4999, "limit_4999", true},
		{5999, 5999, "server_5999", true},
		{0, 0, "code_0", false},
		{999, 999, "code_999", false},
		{6000, 6000, "code_6000", false},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		if uint16(tt.code) != tt.num {
			t.Errorf("%s = %d, want %d", tt.name, tt.code, tt.num)
		}
		if got := tt.code.String(); got != tt.name {
			t.Errorf("Code(%d).String() = %q, want %q", tt.code, got, tt.name)
		}
		if got := tt.code.Temporary(); got != tt.temporary {
			t.Errorf("Code(%d).Temporary() = %v", tt.code, got)
		}
		if e := NewError(tt.code, "m"); e.Temporary != tt.temporary || e.Code != tt.code || e.Message != "m" {
			t.Errorf("NewError(%d) = %+v", tt.code, e)
		}
		if seen[tt.name] {
			t.Errorf("duplicate name %q", tt.name)
		}
		seen[tt.name] = true
	}
	if len(codeNames) != 26 {
		t.Errorf("codeNames has %d entries; update this test", len(codeNames))
	}
}

func TestError(t *testing.T) {
	err := error(NewError(CodeTooMany, "hello field 3: more than 256 elements"))
	if got, want := err.Error(), "protocol: 1005 too_many: hello field 3: more than 256 elements"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := (&Error{Code: CodeInternal}).Error(), "protocol: 5000 internal"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	wrapped := fmt.Errorf("conn 42: %w", err)
	tests := []struct {
		target error
		want   bool
	}{
		{ErrTooMany, true},
		{&Error{Code: CodeTooMany}, true},
		{ErrMalformed, false},
		{errors.New("too_many"), false},
		{(*Error)(nil), false},
	}
	for _, tt := range tests {
		if got := errors.Is(wrapped, tt.target); got != tt.want {
			t.Errorf("errors.Is(%v, %v) = %v", wrapped, tt.target, got)
		}
	}
	var e *Error
	if !errors.As(wrapped, &e) || e.Code != CodeTooMany {
		t.Errorf("errors.As: %v", e)
	}
	sentinels := []*Error{ErrMalformed, ErrUnknownKind, ErrMissingField, ErrTooLarge, ErrInvalidUTF8, ErrTooMany, ErrNotHello}
	for i, s := range sentinels {
		if s.Code != CodeMalformed+Code(i) || s.Temporary {
			t.Errorf("sentinel %d: %+v", i, s)
		}
	}
}
