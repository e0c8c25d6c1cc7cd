package token

import (
	"encoding/binary"
	"fmt"
	"time"
)

// MaxSessionIDLen is the longest session id SignResume accepts.
const MaxSessionIDLen = 1024

// SignResume returns a resume token for sessionID that expires at exp
// (truncated to whole seconds). The token is opaque to clients; only
// VerifyResume reads it. sessionID is chosen by the gateway, so an empty
// one or one longer than MaxSessionIDLen is a programming error and
// panics.
func (s *Signer) SignResume(sessionID string, exp time.Time) string {
	if sessionID == "" || len(sessionID) > MaxSessionIDLen {
		panic(fmt.Sprintf("token: SignResume: session id of %d bytes, want 1..%d", len(sessionID), MaxSessionIDLen))
	}
	var payload [8 + MaxSessionIDLen]byte
	binary.BigEndian.PutUint64(payload[:8], uint64(exp.Unix()))
	n := 8 + copy(payload[8:], sessionID)
	return s.seal(resumeMAC, payload[:n])
}

// VerifyResume checks a resume token at time now and returns its session
// id. Errors wrap ErrMalformed, ErrBadSignature or ErrExpired; a chat
// token gets ErrBadSignature.
func (s *Signer) VerifyResume(tok string, now time.Time) (sessionID string, err error) {
	sc := s.pool.Get().(*scratch)
	defer s.pool.Put(sc)
	payload, err := s.open(sc, resumeMAC, tok)
	if err != nil {
		return "", err
	}
	if len(payload) < 9 || len(payload) > 8+MaxSessionIDLen {
		return "", fmt.Errorf("%w: resume payload of %d bytes", ErrMalformed, len(payload))
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(payload[:8])), 0)
	if !now.Before(exp) {
		return "", fmt.Errorf("%w at %s", ErrExpired, exp.UTC().Format(time.RFC3339))
	}
	return string(payload[8:]), nil
}
