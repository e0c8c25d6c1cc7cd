package crypto

import (
	"crypto/hkdf"
	"crypto/hmac"
	"hash"
)

// labelPrefix plays the role of TLS 1.3's "tls13 ".
const labelPrefix = "ug1 "

// expandLabel is HKDF-Expand(secret, u16 n ‖ vec8(prefix ‖ label) ‖ vec8(ctx), n).
func expandLabel(h Hash, secret []byte, label string, ctx []byte, n int) []byte {
	full := labelPrefix + label
	info := make([]byte, 0, 2+1+len(full)+1+len(ctx))
	info = append(info, byte(n>>8), byte(n), byte(len(full)))
	info = append(info, full...)
	info = append(info, byte(len(ctx)))
	info = append(info, ctx...)
	out, err := hkdf.Expand(h.New, secret, string(info), n)
	if err != nil {
		panic("unigate/crypto: hkdf expand: " + err.Error()) // only for n > 255*L: a programmer bug
	}
	return out
}

func extract(h Hash, salt, ikm []byte) []byte {
	out, err := hkdf.Extract(h.New, ikm, salt)
	if err != nil {
		panic("unigate/crypto: hkdf extract: " + err.Error())
	}
	return out
}

func hmacSum(h Hash, key, msg []byte) []byte {
	m := hmac.New(h.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func hashOf(h Hash, parts ...[]byte) []byte {
	d := h.New()
	for _, p := range parts {
		d.Write(p)
	}
	return d.Sum(nil)
}

func emptyHash(h Hash) []byte { return hashOf(h) }

// earlySecret is Extract(0^L, psk or 0^L).
func earlySecret(h Hash, psk []byte) []byte {
	zero := make([]byte, h.Size())
	if psk == nil {
		psk = zero
	}
	return extract(h, zero, psk)
}

func handshakeSecret(h Hash, early, shared []byte) []byte {
	return extract(h, expandLabel(h, early, "derived", emptyHash(h), h.Size()), shared)
}

func masterSecret(h Hash, hs []byte) []byte {
	return extract(h, expandLabel(h, hs, "derived", emptyHash(h), h.Size()), make([]byte, h.Size()))
}

func binderKey(h Hash, psk []byte) []byte {
	return expandLabel(h, earlySecret(h, psk), "res binder", nil, h.Size())
}

// transcript accumulates handshake bytes; snapshot hashes do not disturb it.
type transcript struct {
	h Hash
	d hash.Hash
}

func newTranscript(h Hash) *transcript { return &transcript{h: h, d: h.New()} }
func (t *transcript) write(b []byte)   { t.d.Write(b) }
func (t *transcript) sum() []byte      { return t.d.Sum(nil) }

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
