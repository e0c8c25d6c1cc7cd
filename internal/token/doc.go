// Package token signs and verifies the bearer tokens of Unigate: chat
// tokens that say who a visitor or agent is, and resume tokens that let a
// client take its session back after a disconnect.
//
// # Chat token format (version 1)
//
// A chat token is two base64url segments (RFC 4648 §5, no padding) joined
// by a dot:
//
//	token   = base64url(payload) "." base64url(mac)
//	mac     = HMAC-SHA256(key, "unigate-token-v1." + base64url(payload))
//	payload = {"v":1,"sub":"a1","role":"agent","ten":"default",
//	           "skills":["billing"],"name":"Ann","iat":1700000000,
//	           "exp":1700086400,"kid":"5c8b1d1e6e0f6a4b"}
//
// The MAC covers the payload segment exactly as it appears in the token, so
// the verifier authenticates the bytes before it parses them. key is the
// raw key: the hex-decoded content of the key file (see LoadOrCreateKey).
// The payload is a UTF-8 JSON object with these members:
//
//	v       integer, required, 1
//	sub     string, required: the visitor or agent id (1..128 bytes)
//	role    string, required: "visitor" or "agent"
//	ten     string, optional: the tenant; absent or "" means "default" (max 128 bytes)
//	skills  array of strings, optional, agents only: skill groups served (each 1..128 bytes)
//	name    string, optional: display name (max 256 bytes)
//	iat     integer, required: issued-at, Unix seconds
//	exp     integer, required: expiry, Unix seconds, greater than iat
//	kid     string, optional: the key id (Signer.KeyID); when present it must match
//
// Verify reads the payload with encoding/json. Members may come in any
// order; unknown members (names match exactly, case included), numbers
// that are not whole int64s (1.0, 1.7e9) or are quoted ("1"), data after the
// object, control characters, invalid UTF-8, unpaired UTF-16 surrogates
// and U+FFFD in strings, and a whole token over MaxTokenLen bytes are
// rejected. null is the same as an absent member, so a required one may
// not be null, and "skills":[] is the same as no skills. A repeated member
// is not rejected; which one counts is not part of the format (see
// parsePayload for why that is safe). A token is valid from iat −
// ClockSkew until exp (exclusive).
// docs/configuration.md shows how to mint visitor tokens in other
// languages.
//
// # Resume tokens
//
// A resume token names a session and an expiry. It has the same two-segment
// shape, but it is opaque to clients, its payload is binary (8-byte
// big-endian Unix expiry followed by the session id) and its MAC uses the
// domain "unigate-resume-v1." instead of "unigate-token-v1.", so a chat
// token never verifies as a resume token nor the reverse.
//
// # Contract
//
// A Signer is safe for concurrent use by any number of goroutines. Verify
// and VerifyResume check a token's length, alphabet and MAC (compared in
// constant time) in pooled buffers before decoding anything, so a forged
// token costs no allocation and never reaches the JSON decoder. Errors are
// the sentinels below, wrapped with detail; test them with errors.Is.
// Claims returned by Verify share no memory with the token or with other
// calls.
package token
