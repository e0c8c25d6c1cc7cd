package sessionstore

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"

	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/sm4"
)

// Stored value, format version 1 (all integers big-endian):
//
//	offset  size  field
//	0       1     version (1)
//	1       8     deadline, Unix nanoseconds (int64); authenticated, not encrypted
//	9       12    nonce (crypto/rand)
//	21      n+16  SM4-GCM ciphertext of the n-byte value, then the 16-byte tag
//
// The additional data is bytes 0..8 (version and deadline) followed by the
// cache key, so neither the deadline nor the key a value belongs to can be
// changed without the tag failing.
const (
	valueVersion  = 1
	headerLen     = 1 + 8 // version + deadline: the part in the additional data
	nonceLen      = 12    // GCM standard nonce
	tagLen        = 16    // GCM tag
	prefixLen     = headerLen + nonceLen
	valueOverhead = prefixLen + tagLen // 37 bytes added to every value
)

// Key derivation labels. The master key never seals anything itself: each
// use gets its own subkey, HMAC-SM3(master, label) truncated to 16 bytes, so
// a sealed value can never be taken for a manifest or the other way round.
const (
	labelValue    = "unigate/sessionstore/v1/value"
	labelManifest = "unigate/sessionstore/v1/manifest"
	labelKeyID    = "unigate/sessionstore/v1/key-id"
)

// Decoder errors. Get only counts them (Stats.Unreadable) and reports a
// miss; they never leave the package.
var (
	errShort   = errors.New("sessionstore: stored value too short")
	errVersion = errors.New("sessionstore: unknown stored value version")
	errOpen    = errors.New("sessionstore: stored value failed authentication")
)

// keys holds what is derived from one master key.
type keys struct {
	value    cipher.AEAD
	manifest cipher.AEAD
	id       [8]byte // key identifier written in clear in the manifest
}

func deriveKeys(master []byte) (*keys, error) {
	if len(master) != KeySize {
		return nil, errBadKeyLen(len(master))
	}
	var k keys
	var err error
	if k.value, err = newAEAD(subkey(master, labelValue)); err != nil {
		return nil, err
	}
	if k.manifest, err = newAEAD(subkey(master, labelManifest)); err != nil {
		return nil, err
	}
	copy(k.id[:], subkey(master, labelKeyID))
	return &k, nil
}

func subkey(master []byte, label string) []byte {
	m := hmac.New(sm3.New, master)
	m.Write([]byte(label))
	return m.Sum(nil)[:KeySize]
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := sm4.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// sealValue appends the stored form of value (see the format above) to dst.
// aad is scratch space for the additional data; the grown slice is returned
// so that callers can pool it.
func sealValue(aead cipher.AEAD, dst, aad []byte, key string, value []byte, deadline int64) (out, aadOut []byte) {
	start := len(dst)
	dst = append(dst, valueVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(deadline))
	dst = append(dst, make([]byte, nonceLen)...)
	rand.Read(dst[start+headerLen : start+prefixLen]) // never fails since Go 1.24
	aad = append(append(aad[:0], dst[start:start+headerLen]...), key...)
	dst = aead.Seal(dst, dst[start+headerLen:start+prefixLen], value, aad)
	return dst, aad
}

// valueDeadline returns the deadline of a stored value without opening it.
// The deadline is authenticated only by openValue: a tampered deadline can
// make an entry look expired (it is then deleted, as a corrupted one would
// be) but never makes openValue succeed.
func valueDeadline(stored []byte) (int64, error) {
	if len(stored) < valueOverhead {
		return 0, errShort
	}
	if stored[0] != valueVersion {
		return 0, errVersion
	}
	return int64(binary.BigEndian.Uint64(stored[1:headerLen])), nil
}

// openValue authenticates and decrypts a stored value bound to key and
// appends the plaintext to dst. It never panics, whatever stored holds.
func openValue(aead cipher.AEAD, dst, aad []byte, key string, stored []byte) (out, aadOut []byte, err error) {
	if _, err := valueDeadline(stored); err != nil {
		return dst, aad, err
	}
	aad = append(append(aad[:0], stored[:headerLen]...), key...)
	out, err = aead.Open(dst, stored[headerLen:prefixLen], stored[prefixLen:], aad)
	if err != nil {
		return dst, aad, errOpen
	}
	return out, aad, nil
}
