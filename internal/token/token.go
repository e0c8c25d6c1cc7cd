package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Errors. Verify and VerifyResume wrap the first four; Sign and SignResume
// wrap ErrInvalidClaims; NewSigner and LoadOrCreateKey return the key
// errors.
var (
	// ErrMalformed: the token is not a well-formed token of this kind:
	// too long, wrong alphabet or shape, or a payload that breaks the
	// format (after the MAC matched).
	ErrMalformed = errors.New("token: malformed")
	// ErrBadSignature: the MAC does not match; the token was altered,
	// signed with another key, or is of the other kind (chat/resume).
	ErrBadSignature = errors.New("token: bad signature")
	// ErrExpired: the token is authentic but its exp has passed.
	ErrExpired = errors.New("token: expired")
	// ErrNotYetValid: the token is authentic but issued more than
	// ClockSkew in the future.
	ErrNotYetValid = errors.New("token: not yet valid")
	// ErrInvalidClaims: Sign was given claims that Verify would reject.
	ErrInvalidClaims = errors.New("token: invalid claims")
	// ErrKeyTooShort: a key shorter than MinKeyLen.
	ErrKeyTooShort = errors.New("token: key too short")
	// ErrInsecureKeyFile: the key file is accessible by group or others.
	ErrInsecureKeyFile = errors.New("token: key file permissions too open")
)

// Limits and roles.
const (
	// MaxTokenLen is the longest token Verify and VerifyResume accept, in
	// bytes; Sign refuses claims that would not fit.
	MaxTokenLen = 4096
	// MinKeyLen is the shortest HMAC key NewSigner accepts, in bytes.
	MinKeyLen = 32
	// ClockSkew is how far in the future iat may be, to tolerate clocks
	// of the issuing backend that run ahead.
	ClockSkew = time.Minute
	// Version is the payload version this package signs and accepts.
	Version = 1

	RoleVisitor   = "visitor"
	RoleAgent     = "agent"
	DefaultTenant = "default"

	maxIDLen   = 128 // sub, ten, kid and each skill
	maxNameLen = 256

	chatDomain   = "unigate-token-v1."
	resumeDomain = "unigate-resume-v1."

	macLen        = sha256.Size
	macSegmentLen = (macLen*8 + 5) / 6 // 43 base64url characters
	maxPayloadLen = (MaxTokenLen - 1 - macSegmentLen) * 6 / 8
)

var (
	b64 = base64.RawURLEncoding.Strict()

	// The MAC domains as byte slices, so writing them allocates nothing.
	chatMAC   = []byte(chatDomain)
	resumeMAC = []byte(resumeDomain)
)

// Claims are the statements of a chat token.
type Claims struct {
	Subject   string    // visitor or agent id, "sub"
	Role      string    // RoleVisitor or RoleAgent, "role"
	Tenant    string    // "ten"; Sign writes DefaultTenant for ""
	Name      string    // display name, optional, "name"
	Skills    []string  // skill groups of an agent, optional, "skills"
	IssuedAt  time.Time // "iat", whole seconds
	ExpiresAt time.Time // "exp", whole seconds, after IssuedAt
	KeyID     string    // "kid"; Sign writes the signer's KeyID for ""
}

// Signer signs and verifies tokens with one HMAC key. It is safe for
// concurrent use.
type Signer struct {
	key  []byte
	kid  string
	pool sync.Pool // *scratch
}

// scratch is the per-call working memory of Verify, pooled so that a
// verification allocates only what it returns.
type scratch struct {
	mac     hash.Hash // keyed HMAC-SHA256, Reset before use
	tok     [MaxTokenLen]byte
	payload [maxPayloadLen]byte
	sum     [macLen]byte
	got     [macLen]byte
}

// NewSigner returns a Signer for key, which must be at least MinKeyLen
// random bytes. The key is copied.
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("%w: %d bytes, need at least %d", ErrKeyTooShort, len(key), MinKeyLen)
	}
	s := &Signer{key: append([]byte(nil), key...)}
	id := sha256.Sum256(s.key)
	s.kid = hex.EncodeToString(id[:8])
	s.pool.New = func() any { return &scratch{mac: hmac.New(sha256.New, s.key)} }
	return s, nil
}

// KeyID identifies the key: the first 16 hex digits of SHA-256(key). It
// is safe to publish.
func (s *Signer) KeyID() string { return s.kid }

// wirePayload is the JSON Sign writes and Verify reads; the order of the
// members is the documented one. The required members are pointers so that
// an absent or null member is not mistaken for a zero one; check refuses
// them nil. int64 makes encoding/json refuse fractions, exponents and
// quoted numbers. A new member needs its name in memberNames too.
type wirePayload struct {
	V      *int64   `json:"v"`
	Sub    *string  `json:"sub"`
	Role   *string  `json:"role"`
	Ten    string   `json:"ten"`
	Skills []string `json:"skills,omitempty"`
	Name   string   `json:"name,omitempty"`
	Iat    *int64   `json:"iat"`
	Exp    *int64   `json:"exp"`
	Kid    string   `json:"kid,omitempty"`
}

// Sign returns a chat token for c. Times are truncated to whole seconds;
// an empty Tenant becomes DefaultTenant and an empty KeyID the signer's.
// Claims that Verify would reject return ErrInvalidClaims.
func (s *Signer) Sign(c Claims) (string, error) {
	if c.Tenant == "" {
		c.Tenant = DefaultTenant
	}
	if c.KeyID == "" {
		c.KeyID = s.kid
	}
	if c.IssuedAt.IsZero() || c.ExpiresAt.IsZero() {
		return "", fmt.Errorf("%w: IssuedAt and ExpiresAt are required", ErrInvalidClaims)
	}
	v, iat, exp := int64(Version), c.IssuedAt.Unix(), c.ExpiresAt.Unix()
	p := wirePayload{
		V: &v, Sub: &c.Subject, Role: &c.Role, Ten: c.Tenant, Skills: c.Skills,
		Name: c.Name, Iat: &iat, Exp: &exp, Kid: c.KeyID,
	}
	if err := s.check(p); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidClaims, err)
	}
	js, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidClaims, err)
	}
	tok := s.seal(chatMAC, js)
	if len(tok) > MaxTokenLen {
		return "", fmt.Errorf("%w: token would be %d bytes, more than %d", ErrInvalidClaims, len(tok), MaxTokenLen)
	}
	return tok, nil
}

// seal encodes payload and appends the MAC of domain + encoded payload.
func (s *Signer) seal(domain, payload []byte) string {
	sc := s.pool.Get().(*scratch)
	defer s.pool.Put(sc)
	// The token is built in the pooled scratch (append moves it to the
	// heap in the unlikely case it is longer): the string is the only
	// allocation.
	buf := sc.tok[:0]
	buf = b64.AppendEncode(buf, payload)
	sc.mac.Reset()
	sc.mac.Write(domain)
	sc.mac.Write(buf)
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, sc.mac.Sum(sc.sum[:0]))
	return string(buf)
}

// Verify checks a chat token at time now and returns its claims. Errors
// wrap ErrMalformed, ErrBadSignature, ErrExpired or ErrNotYetValid.
func (s *Signer) Verify(tok string, now time.Time) (Claims, error) {
	sc := s.pool.Get().(*scratch)
	defer s.pool.Put(sc)
	payload, err := s.open(sc, chatMAC, tok)
	if err != nil {
		return Claims{}, err
	}
	p, err := parsePayload(payload)
	if err != nil {
		return Claims{}, err
	}
	if err := s.check(p); err != nil {
		return Claims{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	c := Claims{
		Subject: *p.Sub, Role: *p.Role, Tenant: p.Ten, Name: p.Name, Skills: p.Skills,
		IssuedAt: time.Unix(*p.Iat, 0).UTC(), ExpiresAt: time.Unix(*p.Exp, 0).UTC(), KeyID: p.Kid,
	}
	if c.Tenant == "" {
		c.Tenant = DefaultTenant
	}
	if c.KeyID == "" {
		c.KeyID = s.kid
	}
	if !now.Before(c.ExpiresAt) {
		return Claims{}, fmt.Errorf("%w at %s", ErrExpired, c.ExpiresAt.Format(time.RFC3339))
	}
	if c.IssuedAt.After(now.Add(ClockSkew)) {
		return Claims{}, fmt.Errorf("%w: issued at %s", ErrNotYetValid, c.IssuedAt.Format(time.RFC3339))
	}
	return c, nil
}

// open checks tok's length, alphabet, shape and MAC under domain and
// returns the decoded payload, which lives in sc.
func (s *Signer) open(sc *scratch, domain []byte, tok string) ([]byte, error) {
	if len(tok) > MaxTokenLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	// One pass: the alphabet, and exactly one dot.
	dot := -1
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.' && dot < 0:
			dot = i
		default:
			return nil, fmt.Errorf("%w: unexpected byte %q at offset %d", ErrMalformed, c, i)
		}
	}
	if dot < 1 || len(tok)-dot-1 != macSegmentLen {
		return nil, fmt.Errorf("%w: want payload.mac with a %d-character mac", ErrMalformed, macSegmentLen)
	}
	n := copy(sc.tok[:], tok)
	seg, macSeg := sc.tok[:dot], sc.tok[dot+1:n]
	if k, err := b64.Decode(sc.got[:], macSeg); err != nil || k != macLen {
		return nil, fmt.Errorf("%w: bad mac encoding", ErrMalformed)
	}
	sc.mac.Reset()
	sc.mac.Write(domain)
	sc.mac.Write(seg)
	if !hmac.Equal(sc.mac.Sum(sc.sum[:0]), sc.got[:]) {
		return nil, ErrBadSignature
	}
	k, err := b64.Decode(sc.payload[:], seg)
	if err != nil {
		return nil, fmt.Errorf("%w: bad payload encoding", ErrMalformed)
	}
	return sc.payload[:k], nil
}

// check applies the rules both Sign and Verify enforce. After it returns
// nil, the required members of p are not nil.
func (s *Signer) check(p wirePayload) error {
	for _, m := range [...]struct {
		name    string
		present bool
	}{{"v", p.V != nil}, {"sub", p.Sub != nil}, {"role", p.Role != nil}, {"iat", p.Iat != nil}, {"exp", p.Exp != nil}} {
		if !m.present {
			return fmt.Errorf("member %q is missing or null", m.name)
		}
	}
	if *p.V != Version {
		return fmt.Errorf("unsupported version %d", *p.V)
	}
	if err := checkText("sub", *p.Sub, 1, maxIDLen); err != nil {
		return err
	}
	if role := *p.Role; role != RoleVisitor && role != RoleAgent {
		return fmt.Errorf("role must be %q or %q, got %q", RoleVisitor, RoleAgent, role)
	}
	if err := checkText("ten", p.Ten, 0, maxIDLen); err != nil {
		return err
	}
	if len(p.Skills) > 0 && *p.Role != RoleAgent {
		return errors.New("skills are for agents only")
	}
	for _, sk := range p.Skills {
		if err := checkText("skills", sk, 1, maxIDLen); err != nil {
			return err
		}
	}
	if err := checkText("name", p.Name, 0, maxNameLen); err != nil {
		return err
	}
	if *p.Exp <= *p.Iat {
		return fmt.Errorf("exp (%d) must be after iat (%d)", *p.Exp, *p.Iat)
	}
	if p.Kid != "" && p.Kid != s.kid {
		return fmt.Errorf("kid %q is not this key's id %q", p.Kid, s.kid)
	}
	return nil
}

// checkText bounds a string's length and rejects invalid UTF-8 and
// control characters, which have no place in ids and names and would let
// a token forge log lines. It also rejects U+FFFD: encoding/json puts it
// in place of invalid UTF-8 and unpaired UTF-16 surrogates, so in a
// payload it means damaged text, and two different damaged ids would read
// as the same one.
func checkText(field, v string, minLen, maxLen int) error {
	if len(v) < minLen || len(v) > maxLen {
		if minLen > 0 && v == "" {
			return fmt.Errorf("%s is required", field)
		}
		return fmt.Errorf("%s must be at most %d bytes", field, maxLen)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s is not valid UTF-8", field)
	}
	for _, r := range v {
		if r == utf8.RuneError {
			return fmt.Errorf("%s contains U+FFFD (invalid UTF-8 or an unpaired UTF-16 surrogate)", field)
		}
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("%s contains control character %U", field, r)
		}
	}
	return nil
}
