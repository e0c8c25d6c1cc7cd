package broker

import (
	"crypto/rand"
	"encoding/base32"
)

// idEncoding is lower-case base32 without padding: URL- and log-safe, case
// stable, 26 characters for 128 bits.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// randomBytes returns n bytes from crypto/rand (which does not fail).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// newID returns prefix followed by 128 random bits in base32: conversation,
// session and anonymous visitor ids.
func newID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	// Built on the stack: the string is the only allocation.
	var s [8 + 26]byte
	n := copy(s[:8], prefix)
	idEncoding.Encode(s[n:], b[:])
	return string(s[:n+idEncoding.EncodedLen(len(b))])
}

// Id prefixes, so an id says what it names in logs.
const (
	prefixConversation = "c_"
	prefixSession      = "s_"
	// A session the authentication hook signed in: "_" is not a base32
	// character, so the mark cannot be a chance prefix of another id. The
	// id is signed into the resume token, so a node knows from the token
	// alone that the cluster keeps a record of the session (sessions.go).
	prefixHookSession = "s_h_"
	prefixVisitor     = "v_"
)

// hashString is 32-bit FNV-1a: the shard of a conversation id. It does
// not allocate.
func hashString(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
