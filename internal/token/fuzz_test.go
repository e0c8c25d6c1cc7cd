package token

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzVerify feeds arbitrary strings to Verify and VerifyResume. Neither
// may panic, every error must be one of the sentinels, and a token is
// accepted only if it is exactly the documented encoding of its payload
// and the MAC of those bytes. Seeds (testdata/fuzz/FuzzVerify) include
// valid tokens, truncations and wrong segment lengths.
func FuzzVerify(f *testing.F) {
	s := newTestSigner(f, testKey)
	f.Add(mustSign(f, s, agentClaims()))
	f.Add(s.SignResume("sess-1", t0.Add(time.Hour)))
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := s.Verify(tok, t0)
		if err != nil {
			checkSentinel(t, err)
		} else {
			dot := strings.IndexByte(tok, '.')
			if dot < 0 || mint(testKey, chatDomain, decodeSeg(t, tok[:dot])) != tok {
				t.Fatalf("accepted %q, which is not the MAC of its exact payload", tok)
			}
			if c.Subject == "" || (c.Role != RoleVisitor && c.Role != RoleAgent) || !c.ExpiresAt.After(t0) {
				t.Fatalf("accepted claims %#v", c)
			}
		}
		id, err := s.VerifyResume(tok, t0)
		if err != nil {
			checkSentinel(t, err)
		} else {
			dot := strings.IndexByte(tok, '.')
			if dot < 0 || mint(testKey, resumeDomain, decodeSeg(t, tok[:dot])) != tok || id == "" {
				t.Fatalf("accepted resume token %q", tok)
			}
		}
	})
}

func checkSentinel(tb testing.TB, err error) {
	tb.Helper()
	for _, s := range []error{ErrMalformed, ErrBadSignature, ErrExpired, ErrNotYetValid} {
		if errors.Is(err, s) {
			return
		}
	}
	tb.Fatalf("error %v wraps no sentinel", err)
}

func decodeSeg(tb testing.TB, seg string) string {
	tb.Helper()
	b, err := b64.DecodeString(seg)
	if err != nil {
		tb.Fatalf("accepted a token whose payload %q is not strict base64url", seg)
	}
	return string(b)
}
