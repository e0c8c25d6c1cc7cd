package token

import (
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewSigner(t *testing.T) {
	if _, err := NewSigner(make([]byte, 31)); err == nil {
		t.Fatal("31-byte key accepted")
	} else {
		wantErr(t, err, ErrKeyTooShort, "31")
	}
	key := append([]byte(nil), testKey...)
	s := newTestSigner(t, key)
	tok := mustSign(t, s, agentClaims())
	key[0] ^= 1 // the signer keeps its own copy
	if _, err := s.Verify(tok, t0); err != nil {
		t.Errorf("Verify after the caller changed its key slice: %v", err)
	}
	if got := s.KeyID(); len(got) != 16 || got != newTestSigner(t, testKey).KeyID() {
		t.Errorf("KeyID = %q", got)
	}
	if s.KeyID() == newTestSigner(t, key).KeyID() {
		t.Error("different keys share a KeyID")
	}
}

func TestRoundTrip(t *testing.T) {
	s := newTestSigner(t, testKey)
	tests := []struct {
		name string
		in   Claims
		want func(*Claims) // adjustments Sign makes
	}{
		{"agent", agentClaims(), func(c *Claims) { c.KeyID = s.KeyID() }},
		{"visitor defaults", Claims{Subject: "v-42", Role: RoleVisitor, IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)},
			func(c *Claims) { c.Tenant, c.KeyID = DefaultTenant, s.KeyID() }},
		{"sub-second times truncated", Claims{Subject: "v", Role: RoleVisitor, Tenant: "t",
			IssuedAt: t0.Add(900 * time.Millisecond), ExpiresAt: t0.Add(time.Hour + 500*time.Millisecond)},
			func(c *Claims) { c.IssuedAt, c.ExpiresAt, c.KeyID = t0, t0.Add(time.Hour), s.KeyID() }},
		{"unicode and markup", Claims{Subject: "über/1", Role: RoleVisitor, Tenant: "t", Name: `Zoë "<b>" 名前 😀`,
			IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), KeyID: s.KeyID()}, func(*Claims) {}},
		{"empty skills slice", Claims{Subject: "a", Role: RoleAgent, Tenant: "t", Skills: []string{},
			IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)}, func(c *Claims) { c.Skills, c.KeyID = nil, s.KeyID() }},
		{"local time zone", Claims{Subject: "a", Role: RoleAgent, Tenant: "t",
			IssuedAt: t0.In(time.FixedZone("X", 3600)), ExpiresAt: t0.Add(time.Hour).In(time.FixedZone("Y", -7200))},
			func(c *Claims) { c.IssuedAt, c.ExpiresAt, c.KeyID = t0, t0.Add(time.Hour), s.KeyID() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := mustSign(t, s, tt.in)
			got, err := s.Verify(tok, t0)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := tt.in
			want.Skills = append([]string(nil), tt.in.Skills...)
			want.IssuedAt, want.ExpiresAt = want.IssuedAt.UTC(), want.ExpiresAt.UTC()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %#v\nwant %#v", got, want)
			}
		})
	}
}

func TestVerifyValidityWindow(t *testing.T) {
	s := newTestSigner(t, testKey)
	c := agentClaims() // valid from t0 to t0+24h
	tok := mustSign(t, s, c)
	for _, now := range []time.Time{t0, t0.Add(-ClockSkew), c.ExpiresAt.Add(-time.Nanosecond)} {
		if _, err := s.Verify(tok, now); err != nil {
			t.Errorf("Verify at %v: %v", now, err)
		}
	}
	_, err := s.Verify(tok, c.ExpiresAt)
	wantErr(t, err, ErrExpired, "2023-11-15T22:13:20Z")
	_, err = s.Verify(tok, c.ExpiresAt.Add(time.Hour))
	wantErr(t, err, ErrExpired)
	_, err = s.Verify(tok, t0.Add(-ClockSkew-time.Second))
	wantErr(t, err, ErrNotYetValid)
}

func TestVerifyRejectsTampering(t *testing.T) {
	s := newTestSigner(t, testKey)
	tok := mustSign(t, s, agentClaims())
	dot := strings.IndexByte(tok, '.')
	flip := func(i int) string {
		b := []byte(tok)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	// Every single-character change anywhere must fail, and fail as a
	// signature (or, for the last mac character, encoding) problem.
	for i := range tok {
		if i == dot {
			continue
		}
		_, err := s.Verify(flip(i), t0)
		if err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	payload, mac := tok[:dot], tok[dot+1:]
	other := mustSign(t, s, Claims{Subject: "root", Role: RoleAgent, IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	otherPayload := other[:strings.IndexByte(other, '.')]

	tests := []struct{ name, tok string }{
		{"payload from another token", otherPayload + "." + mac},
		{"payload extended", payload + "AAAA." + mac},
		{"payload truncated", payload[:len(payload)-4] + "." + mac},
		{"mac of another token", payload + other[strings.IndexByte(other, '.'):]},
		{"mac zero", payload + "." + strings.Repeat("A", macSegmentLen)},
		{"wrong key", mustSign(t, newTestSigner(t, []byte("another key, thirty-two bytes!!!")), agentClaims())},
		{"resume token", s.SignResume("sess-1", t0.Add(time.Hour))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Verify(tt.tok, t0)
			wantErr(t, err, ErrBadSignature)
		})
	}
}

func TestVerifyMalformed(t *testing.T) {
	s := newTestSigner(t, testKey)
	tok := mustSign(t, s, agentClaims())
	dot := strings.IndexByte(tok, '.')
	tests := []struct{ name, tok string }{
		{"empty", ""},
		{"no dot", strings.ReplaceAll(tok, ".", "")},
		{"two dots", tok + ".x"},
		{"empty payload", tok[dot:]},
		{"empty mac", tok[:dot+1]},
		{"short mac", tok[:len(tok)-1]},
		{"long mac", tok + "A"},
		{"padded mac", tok[:len(tok)-1] + "="},
		{"standard alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(tok) + "+"},
		{"space", " " + tok},
		{"newline inside", tok[:5] + "\n" + tok[5:]},
		{"non-ASCII", "é" + tok},
		{"NUL", tok[:dot] + "\x00" + tok[dot:]},
		{"over MaxTokenLen", strings.Repeat("A", MaxTokenLen) + tok},
		{"MaxTokenLen+1 of dots", strings.Repeat(".", MaxTokenLen+1)},
		{"non-canonical mac tail", tok[:len(tok)-1] + nonCanonical(tok[len(tok)-1])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Verify(tt.tok, t0)
			wantErr(t, err, ErrMalformed)
		})
	}
}

// nonCanonical returns another base64url character that decodes to the
// same bytes in the last position of a 43-character segment (whose low 2
// bits are padding), which strict decoding must refuse.
func nonCanonical(c byte) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	return string(alphabet[i^1])
}

// TestVerifyPayloadRules signs payloads that break the format with the
// right key: the MAC matches, the content must still be refused. Syntax and
// type errors are encoding/json's, so their mentions are its wording.
func TestVerifyPayloadRules(t *testing.T) {
	s := newTestSigner(t, testKey)
	const tail = `"iat":1700000000,"exp":1700003600}`
	tests := []struct{ name, payload, mention string }{
		{"not JSON", `hello`, "invalid character"},
		{"array", `[1]`, "array"},
		{"empty object", `{}`, `"v"`},
		{"version 2", `{"v":2,"sub":"a","role":"visitor",` + tail, "version 2"},
		{"version string", `{"v":"1","sub":"a","role":"visitor",` + tail, "v of type int64"},
		{"version fraction", `{"v":1.0,"sub":"a","role":"visitor",` + tail, "v of type int64"},
		{"version null", `{"v":null,"sub":"a","role":"visitor",` + tail, `"v" is missing or null`},
		{"version missing", `{"sub":"a","role":"visitor",` + tail, `"v"`},
		{"role admin", `{"v":1,"sub":"a","role":"admin",` + tail, "role"},
		{"role case", `{"v":1,"sub":"a","role":"Agent",` + tail, "role"},
		{"role missing", `{"v":1,"sub":"a",` + tail, `"role"`},
		{"sub empty", `{"v":1,"sub":"","role":"visitor",` + tail, "sub"},
		{"sub null", `{"v":1,"sub":null,"role":"visitor",` + tail, `"sub" is missing or null`},
		{"sub number", `{"v":1,"sub":1,"role":"visitor",` + tail, "sub of type string"},
		{"sub too long", `{"v":1,"sub":"` + strings.Repeat("x", 129) + `","role":"visitor",` + tail, "sub"},
		{"sub control char", `{"v":1,"sub":"a\u0007","role":"visitor",` + tail, "control"},
		{"name raw newline", "{\"v\":1,\"sub\":\"a\",\"role\":\"visitor\",\"name\":\"x\ny\"," + tail, "in string literal"},
		{"name escaped newline", `{"v":1,"sub":"a","role":"visitor","name":"x\ny",` + tail, "control"},
		{"name line separator", `{"v":1,"sub":"a","role":"visitor","name":"x\u2028",` + tail, "control"},
		{"invalid UTF-8", "{\"v\":1,\"sub\":\"a\xff\",\"role\":\"visitor\"," + tail, "UTF-8"},
		{"lone surrogate", `{"v":1,"sub":"\ud800","role":"visitor",` + tail, "surrogate"},
		{"lone low surrogate", `{"v":1,"sub":"a","role":"visitor","name":"\udc00x",` + tail, "surrogate"},
		{"replacement character", `{"v":1,"sub":"a","role":"visitor","ten":"\ufffd",` + tail, "U+FFFD"},
		{"skills for visitor", `{"v":1,"sub":"a","role":"visitor","skills":["x"],` + tail, "agents only"},
		{"empty skill", `{"v":1,"sub":"a","role":"agent","skills":[""],` + tail, "skills"},
		{"skills not strings", `{"v":1,"sub":"a","role":"agent","skills":[1],` + tail, "string"},
		{"unknown member", `{"v":1,"sub":"a","role":"agent","tenant":"x",` + tail, `unknown field "tenant"`},
		{"unknown null member", `{"v":1,"sub":"a","role":"agent","tenant":null,` + tail, `unknown field "tenant"`},
		{"case-folded member", `{"v":1,"SUB":"a","role":"agent",` + tail, `unknown member "SUB"`},
		{"case-folded optional member", `{"v":1,"sub":"a","role":"agent","Ten":"x",` + tail, `unknown member "Ten"`},
		{"Unicode-folded member", `{"v":1,"\u017fub":"a","role":"agent",` + tail, "unknown member"},
		{"fractional iat", `{"v":1,"sub":"a","role":"agent","iat":1700000000.5,"exp":1700003600}`, "iat of type int64"},
		{"exponent exp", `{"v":1,"sub":"a","role":"agent","iat":1700000000,"exp":1.7e9}`, "exp of type int64"},
		{"string exp", `{"v":1,"sub":"a","role":"agent","iat":1700000000,"exp":"1700003600"}`, "exp of type int64"},
		{"leading zero", `{"v":1,"sub":"a","role":"agent","iat":01700000000,"exp":1700003600}`, "invalid character"},
		{"exp overflow", `{"v":1,"sub":"a","role":"agent","iat":1700000000,"exp":99999999999999999999}`, "exp of type int64"},
		{"exp before iat", `{"v":1,"sub":"a","role":"agent","iat":1700003600,"exp":1700000000}`, "after iat"},
		{"exp missing", `{"v":1,"sub":"a","role":"agent","iat":1700000000}`, `"exp"`},
		{"iat missing", `{"v":1,"sub":"a","role":"agent","exp":1700003600}`, `"iat" is missing`},
		{"iat null", `{"v":1,"sub":"a","role":"agent","iat":null,"exp":1700003600}`, `"iat" is missing or null`},
		{"foreign kid", `{"v":1,"sub":"a","role":"agent","kid":"0000000000000000",` + tail, "kid"},
		{"trailing comma", `{"v":1,"sub":"a","role":"agent","iat":1700000000,"exp":1700003600,}`, "string"},
		{"trailing data", `{"v":1,"sub":"a","role":"agent",` + tail + `{}`, "after the object"},
		{"trailing garbage", `{"v":1,"sub":"a","role":"agent",` + tail + ` x`, "after the object"},
		{"unterminated", `{"v":1,"sub":"a`, "unexpected EOF"},
		{"blank", " \n", "EOF"},
		{"bad escape", `{"v":1,"sub":"a\x","role":"agent",` + tail, "escape"},
		{"single quotes", `{'v':1}`, "string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Verify(mint(testKey, chatDomain, tt.payload), t0)
			wantErr(t, err, ErrMalformed, tt.mention)
		})
	}
}

// TestVerifyForeignPayloads accepts payloads other JSON encoders produce.
func TestVerifyForeignPayloads(t *testing.T) {
	s := newTestSigner(t, testKey)
	tests := []struct {
		name, payload string
		want          Claims
	}{
		{"minimal", `{"v":1,"sub":"v9","role":"visitor","iat":1700000000,"exp":1700003600}`,
			Claims{Subject: "v9", Role: RoleVisitor}},
		{"pretty and reordered", "{\n  \"exp\": 1700003600,\n  \"role\": \"agent\",\n\t\"skills\": [ \"a\" , \"b\" ],\r\n  \"sub\": \"x\",\n  \"iat\": 1700000000,\n  \"v\": 1\n}\n",
			Claims{Subject: "x", Role: RoleAgent, Skills: []string{"a", "b"}}},
		{"nulls for optional", `{"v":1,"sub":"v","role":"visitor","ten":null,"name":null,"skills":null,"kid":null,"iat":1700000000,"exp":1700003600}`,
			Claims{Subject: "v", Role: RoleVisitor}},
		{"empty tenant", `{"v":1,"sub":"v","role":"visitor","ten":"","iat":1700000000,"exp":1700003600}`,
			Claims{Subject: "v", Role: RoleVisitor}},
		{"escapes", `{"v":1,"sub":"\u00fc\/\"\\","role":"visitor","name":"\ud83d\ude00 \u003cb\u003e","iat":1700000000,"exp":1700003600}`,
			Claims{Subject: "ü/\"\\", Role: RoleVisitor, Name: "😀 <b>"}},
		{"many skills", `{"v":1,"sub":"a","role":"agent","skills":["1","2","3","4","5","6","7","8","9","10"],"iat":1700000000,"exp":1700003600}`,
			Claims{Subject: "a", Role: RoleAgent, Skills: []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}}},
		{"empty skills", `{"v":1,"sub":"a","role":"agent","skills":[],"iat":1700000000,"exp":1700003600}`,
			Claims{Subject: "a", Role: RoleAgent}},
		{"negative zero", `{"v":1,"sub":"a","role":"agent","iat":-0,"exp":1700003600}`,
			Claims{Subject: "a", Role: RoleAgent, IssuedAt: time.Unix(0, 0).UTC()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Verify(mint(testKey, chatDomain, tt.payload), t0)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			want.Tenant, want.KeyID = DefaultTenant, s.KeyID()
			if want.IssuedAt.IsZero() {
				want.IssuedAt = t0
			}
			want.ExpiresAt = t0.Add(time.Hour)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %#v\nwant %#v", got, want)
			}
		})
	}
}

func TestSignRejects(t *testing.T) {
	s := newTestSigner(t, testKey)
	ok := agentClaims()
	tests := []struct {
		name   string
		modify func(*Claims)
	}{
		{"no subject", func(c *Claims) { c.Subject = "" }},
		{"no role", func(c *Claims) { c.Role = "" }},
		{"bad role", func(c *Claims) { c.Role = "bot" }},
		{"no issue time", func(c *Claims) { c.IssuedAt = time.Time{} }},
		{"no expiry", func(c *Claims) { c.ExpiresAt = time.Time{} }},
		{"expiry before issue", func(c *Claims) { c.ExpiresAt = c.IssuedAt.Add(-time.Second) }},
		{"expiry within the same second", func(c *Claims) { c.ExpiresAt = c.IssuedAt.Add(time.Millisecond) }},
		{"visitor with skills", func(c *Claims) { c.Role = RoleVisitor }},
		{"blank skill", func(c *Claims) { c.Skills = []string{"a", ""} }},
		{"invalid UTF-8", func(c *Claims) { c.Name = "\xff" }},
		{"replacement character", func(c *Claims) { c.Name = "Ann \ufffd" }},
		{"control character", func(c *Claims) { c.Subject = "a\nb" }},
		{"long name", func(c *Claims) { c.Name = strings.Repeat("n", 257) }},
		{"foreign key id", func(c *Claims) { c.KeyID = "other" }},
		{"too long overall", func(c *Claims) {
			c.Skills = nil
			for range 40 {
				c.Skills = append(c.Skills, strings.Repeat("s", 100))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.modify(&c)
			_, err := s.Sign(c)
			wantErr(t, err, ErrInvalidClaims)
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newTestSigner(t, testKey)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				c := agentClaims()
				c.Subject = strings.Repeat("x", 1+(g*200+i)%100)
				tok, err := s.Sign(c)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := s.Verify(tok, t0)
				if err != nil || got.Subject != c.Subject {
					t.Errorf("Verify: %v, %q", err, got.Subject)
					return
				}
				if _, err := s.Verify(tok[:len(tok)-2]+"AA", t0); err == nil {
					t.Error("tampered token accepted")
					return
				}
				if id, err := s.VerifyResume(s.SignResume(c.Subject, t0.Add(time.Minute)), t0); err != nil || id != c.Subject {
					t.Errorf("VerifyResume: %v, %q", err, id)
					return
				}
			}
		})
	}
	wg.Wait()
}
