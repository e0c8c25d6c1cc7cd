package atrest

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Sealed value, format version 1 (integers big-endian):
//
//	offset  size  field
//	0       1     version (1)
//	1       4     data key id (never 0)
//	5       12    nonce (crypto/rand)
//	17      n+16  AEAD ciphertext of the n-byte plaintext, then the 16-byte tag
//
// The AEAD's additional data is bytes 0..4 (version and key id) followed by
// the caller's additional data, which binds the value to its place (for a
// history message: tenant, conversation, sequence, sender, time).
const (
	// Version is the format version written by Seal.
	Version = 1
	// KeyIDSize is the size of a data key id in a sealed value.
	KeyIDSize = 4
	// NonceSize and TagSize are the AEAD's (96-bit nonce, 128-bit tag).
	NonceSize = 12
	TagSize   = 16
	// HeaderSize is the authenticated header: version and key id.
	HeaderSize = 1 + KeyIDSize
	// Overhead is what Seal adds to a plaintext: 33 bytes.
	Overhead = HeaderSize + NonceSize + TagSize
)

// Errors. Every error the package returns wraps one of these (test with
// errors.Is); none carries key material.
var (
	// ErrMalformed: a sealed value is too short or has an unknown version
	// or a zero key id.
	ErrMalformed = errors.New("atrest: malformed sealed value")
	// ErrUnknownKey: a sealed value names a data key that is not in the
	// keyring (never created, or the bucket was lost).
	ErrUnknownKey = errors.New("atrest: unknown data key")
	// ErrAuth: a sealed value does not authenticate: its bytes were
	// changed, or it was moved to another place (other additional data).
	ErrAuth = errors.New("atrest: sealed value failed authentication")
	// ErrWrongMasterKey: a wrapped data key (or local key file) names a
	// master key the master key file does not hold, or does not unwrap
	// with the one it names.
	ErrWrongMasterKey = errors.New("atrest: wrong master key")
	// ErrKeyFile: a master key file or wrapped key file is malformed.
	ErrKeyFile = errors.New("atrest: bad key file")
	// ErrInsecureKeyFile: a key file is accessible by group or others.
	ErrInsecureKeyFile = errors.New("atrest: key file is accessible by group or others")
	// ErrReadOnly: Seal or Rotate on a keyring opened with ReadOnly.
	ErrReadOnly = errors.New("atrest: keyring is read-only")
	// ErrNoKeyring: a read-only keyring was asked for and the bucket does
	// not exist (encryption at rest was never enabled).
	ErrNoKeyring = errors.New("atrest: no keyring bucket")
	// ErrTooManyKeys: the keyring holds MaxDataKeys data keys.
	ErrTooManyKeys = errors.New("atrest: too many data keys")
	// ErrClosed: the keyring was closed.
	ErrClosed = errors.New("atrest: keyring closed")
)

// KeyID identifies a data key; 0 is never used.
type KeyID uint32

// String returns the id as 8 lowercase hex digits, as in the keyring's
// bucket ("dk.<id>") and in logs.
func (id KeyID) String() string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(id))
	return hex.EncodeToString(b[:])
}

// ParseKeyID parses the form String returns.
func ParseKeyID(s string) (KeyID, error) {
	var b [4]byte
	if len(s) != 8 {
		return 0, fmt.Errorf("%w: key id %q is not 8 hex digits", ErrMalformed, s)
	}
	if _, err := hex.Decode(b[:], []byte(s)); err != nil {
		return 0, fmt.Errorf("%w: key id %q is not 8 hex digits", ErrMalformed, s)
	}
	id := KeyID(binary.BigEndian.Uint32(b[:]))
	if id == 0 {
		return 0, fmt.Errorf("%w: key id 0", ErrMalformed)
	}
	return id, nil
}

// Sealed is a parsed sealed value. Its slices point into the parsed bytes.
type Sealed struct {
	Version uint8
	KeyID   KeyID
	// Header is the authenticated header (version and key id).
	Header []byte
	Nonce  []byte
	// Ciphertext is the AEAD output: ciphertext then tag.
	Ciphertext []byte
}

// ParseSealed splits a sealed value into its parts without opening it.
// It never panics; a value that cannot be one returns an error wrapping
// ErrMalformed.
func ParseSealed(b []byte) (Sealed, error) {
	if len(b) < Overhead {
		return Sealed{}, fmt.Errorf("%w: %d bytes, at least %d", ErrMalformed, len(b), Overhead)
	}
	if b[0] != Version {
		return Sealed{}, fmt.Errorf("%w: version %d, this build reads %d", ErrMalformed, b[0], Version)
	}
	id := KeyID(binary.BigEndian.Uint32(b[1:HeaderSize]))
	if id == 0 {
		return Sealed{}, fmt.Errorf("%w: key id 0", ErrMalformed)
	}
	return Sealed{
		Version:    b[0],
		KeyID:      id,
		Header:     b[:HeaderSize:HeaderSize],
		Nonce:      b[HeaderSize : HeaderSize+NonceSize : HeaderSize+NonceSize],
		Ciphertext: b[HeaderSize+NonceSize:],
	}, nil
}

// appendHeader appends version and key id.
func appendHeader(dst []byte, id KeyID) []byte {
	dst = append(dst, Version)
	return binary.BigEndian.AppendUint32(dst, uint32(id))
}
