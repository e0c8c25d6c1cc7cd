package token

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// vectorFile is testdata/vectors.json: known answers computed by an
// independent implementation of the documented format.
type vectorFile struct {
	Key     string `json:"key"`
	Vectors []struct {
		Name    string `json:"name"`
		Kind    string `json:"kind"` // chat or resume
		Payload string `json:"payload"`
		Session string `json:"session"`
		Token   string `json:"token"`
		Now     int64  `json:"now"`
		Error   string `json:"error"`
	} `json:"vectors"`
}

var vectorErrors = map[string]error{
	"malformed": ErrMalformed, "bad_signature": ErrBadSignature,
	"expired": ErrExpired, "not_yet_valid": ErrNotYetValid,
}

func loadVectors(tb testing.TB) vectorFile {
	tb.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		tb.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(data, &vf); err != nil {
		tb.Fatal(err)
	}
	return vf
}

func TestVectors(t *testing.T) {
	vf := loadVectors(t)
	key, err := hex.DecodeString(vf.Key)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestSigner(t, key)
	for _, v := range vf.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			now := time.Unix(v.Now, 0)
			var err error
			if v.Kind == "resume" {
				var id string
				id, err = s.VerifyResume(v.Token, now)
				if err == nil && id != v.Session {
					t.Errorf("session = %q, want %q", id, v.Session)
				}
			} else {
				var c Claims
				c, err = s.Verify(v.Token, now)
				if err == nil {
					checkClaimsMatchJSON(t, c, v.Payload)
				}
			}
			if v.Error == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if v.Kind == "chat" && mint(key, chatDomain, v.Payload) != v.Token {
					t.Error("the token is not the documented MAC over the payload")
				}
				return
			}
			if want := vectorErrors[v.Error]; !errors.Is(err, want) {
				t.Errorf("error = %v, want %v", err, want)
			}
		})
	}
}

// TestDocsQuoteVectors checks that docs/configuration.md shows the key
// and the first (visitor) vector, so integrators can test against it.
func TestDocsQuoteVectors(t *testing.T) {
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	vf := loadVectors(t)
	for _, want := range []string{vf.Key, vf.Vectors[0].Payload, vf.Vectors[0].Token, chatDomain, resumeDomain} {
		if !strings.Contains(string(data), want) {
			t.Errorf("docs/configuration.md does not quote %q", want)
		}
	}
}

// checkClaimsMatchJSON compares verified claims with the payload decoded
// by encoding/json.
func checkClaimsMatchJSON(tb testing.TB, c Claims, payload string) {
	tb.Helper()
	var p struct {
		Sub, Role, Ten, Name, Kid string
		Skills                    []string
		Iat, Exp                  int64
	}
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		tb.Fatalf("encoding/json rejects an accepted payload %q: %v", payload, err)
	}
	if p.Ten == "" {
		p.Ten = DefaultTenant
	}
	if c.Subject != p.Sub || c.Role != p.Role || c.Tenant != p.Ten || c.Name != p.Name ||
		(p.Kid != "" && c.KeyID != p.Kid) || c.IssuedAt.Unix() != p.Iat || c.ExpiresAt.Unix() != p.Exp ||
		strings.Join(c.Skills, "\x00") != strings.Join(p.Skills, "\x00") || len(c.Skills) != len(p.Skills) {
		tb.Errorf("claims %#v differ from encoding/json's reading %#v of %q", c, p, payload)
	}
}
