package token

import (
	"strings"
	"testing"
	"time"
)

func TestResumeRoundTrip(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, id := range []string{"s", "sess-7f3a", "ünï\x00côde", strings.Repeat("x", MaxSessionIDLen)} {
		tok := s.SignResume(id, t0.Add(10*time.Minute))
		if len(tok) > MaxTokenLen {
			t.Fatalf("resume token of %d bytes", len(tok))
		}
		got, err := s.VerifyResume(tok, t0)
		if err != nil || got != id {
			t.Errorf("VerifyResume(SignResume(%q)) = %q, %v", id, got, err)
		}
	}
}

func TestResumeExpiry(t *testing.T) {
	s := newTestSigner(t, testKey)
	exp := t0.Add(10*time.Minute + 700*time.Millisecond) // truncated to t0+10m
	tok := s.SignResume("sess", exp)
	if _, err := s.VerifyResume(tok, t0.Add(10*time.Minute-time.Nanosecond)); err != nil {
		t.Errorf("just before expiry: %v", err)
	}
	_, err := s.VerifyResume(tok, t0.Add(10*time.Minute))
	wantErr(t, err, ErrExpired)
}

func TestResumeRejects(t *testing.T) {
	s := newTestSigner(t, testKey)
	tok := s.SignResume("sess", t0.Add(time.Hour))
	chat := mustSign(t, s, Claims{Subject: "v1", Role: RoleVisitor, IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	tests := []struct {
		name   string
		tok    string
		target error
	}{
		{"visitor token", chat, ErrBadSignature},
		{"wrong key", newTestSigner(t, []byte("another key, thirty-two bytes!!!")).SignResume("sess", t0.Add(time.Hour)), ErrBadSignature},
		{"tampered", "B" + tok[1:], ErrBadSignature},
		{"chat domain MAC over a resume payload", mint(testKey, chatDomain, "\x00\x00\x00\x00\xff\xff\xff\xffsess"), ErrBadSignature},
		{"empty", "", ErrMalformed},
		{"too long", strings.Repeat("A", MaxTokenLen+1), ErrMalformed},
		{"payload too short", mint(testKey, resumeDomain, "\x00\x00\x00\x00\xff\xff\xff\xff"), ErrMalformed},
		{"no dot", strings.ReplaceAll(tok, ".", ""), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.VerifyResume(tt.tok, t0)
			wantErr(t, err, tt.target)
		})
	}
	// And the other way round: a resume token is not a chat token.
	_, err := s.Verify(tok, t0)
	wantErr(t, err, ErrBadSignature)
}

func TestSignResumePanicsOnBadID(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, id := range []string{"", strings.Repeat("x", MaxSessionIDLen+1)} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("SignResume(%d bytes) did not panic", len(id))
				}
			}()
			s.SignResume(id, t0)
		}()
	}
}
