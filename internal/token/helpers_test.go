package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

// testKey is the key of most tests: the bytes 0x00 to 0x1f, the same as
// the documented test vectors.
var testKey = func() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

// t0 is the time tokens are issued at in tests: 2023-11-14T22:13:20Z.
var t0 = time.Unix(1700000000, 0).UTC()

func newTestSigner(tb testing.TB, key []byte) *Signer {
	tb.Helper()
	s, err := NewSigner(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// mint builds a token for an arbitrary payload straight from the
// documented format, independently of Signer, the way an integrator's
// backend would.
func mint(key []byte, domain, payload string) string {
	seg := base64.RawURLEncoding.EncodeToString([]byte(payload))
	m := hmac.New(sha256.New, key)
	m.Write([]byte(domain + seg))
	return seg + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func agentClaims() Claims {
	return Claims{
		Subject: "a1", Role: RoleAgent, Tenant: "acme", Name: "Ann Agent",
		Skills: []string{"billing", "returns"}, IssuedAt: t0, ExpiresAt: t0.Add(24 * time.Hour),
	}
}

func mustSign(tb testing.TB, s *Signer, c Claims) string {
	tb.Helper()
	tok, err := s.Sign(c)
	if err != nil {
		tb.Fatalf("Sign(%+v): %v", c, err)
	}
	return tok
}

// wantErr checks that err wraps target and mentions every fragment.
func wantErr(tb testing.TB, err, target error, fragments ...string) {
	tb.Helper()
	if !errors.Is(err, target) {
		tb.Fatalf("error = %v, want %v", err, target)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			tb.Errorf("error %q does not mention %q", err, f)
		}
	}
}
