package crypto

import (
	"crypto/cipher"
	"encoding/binary"
	"math"
)

// Record types (docs/crypto.md, "Records").
const (
	recordData  = 0x17
	recordClose = 0x15

	dirClientToServer = 1
	dirServerToClient = 2

	ivSize  = 12
	tagSize = 16

	// RecordOverhead is the number of bytes a record adds to its plaintext.
	RecordOverhead = 1 + tagSize

	// DefaultRekeyAfter is the number of records per key and direction before both
	// sides move to the next traffic secret.
	DefaultRekeyAfter = 1 << 24
)

// Sizes of the per-direction state kept inline in a Conn.
const (
	maxKeySize    = 32 // AES-256
	maxSecretSize = 64 // a traffic secret: the suite hash's size
	adSize        = 14
)

// aeadState is the expanded cipher of one direction (key schedule, GHASH tables)
// with its nonce and additional-data scratch. It is built from halfConn.key on
// first use and dropped by Compact: it is most of a Conn's memory.
type aeadState struct {
	aead  cipher.AEAD
	nonce [ivSize]byte
	ad    [adSize]byte
}

// halfConn is one direction of a Conn. Everything but st is inline, so that an
// idle Conn is one small allocation.
type halfConn struct {
	suite      *Suite
	st         *aeadState // nil until first use and after Compact
	err        *Error
	seq        uint64
	rekeyAfter uint32
	epoch      uint32
	dir        byte
	keyLen     uint8
	secretLen  uint8
	key        [maxKeySize]byte
	iv         [ivSize]byte
	secret     [maxSecretSize]byte
}

// setSecret installs a traffic secret: it derives key and IV, and drops the
// expanded cipher of the previous key.
func (h *halfConn) setSecret(secret []byte) error {
	s := h.suite
	if len(secret) > maxSecretSize || s.AEAD.KeySize() > maxKeySize {
		return errLength
	}
	key := expandLabel(s.Hash, secret, "key", nil, s.AEAD.KeySize())
	iv := expandLabel(s.Hash, secret, "iv", nil, ivSize)
	wipe(h.secret[:])
	wipe(h.key[:])
	h.secretLen = uint8(copy(h.secret[:], secret))
	h.keyLen = uint8(copy(h.key[:], key))
	copy(h.iv[:], iv)
	wipe(key)
	wipe(secret)
	if h.st != nil {
		h.st.aead = nil
	}
	h.seq = 0
	return nil
}

// state returns the expanded cipher, building it if needed.
func (h *halfConn) state() (*aeadState, error) {
	if h.st != nil && h.st.aead != nil {
		return h.st, nil
	}
	a, err := h.suite.AEAD.New(h.key[:h.keyLen])
	if err != nil {
		return nil, err
	}
	if h.st == nil {
		h.st = new(aeadState)
	}
	h.st.aead = a
	return h.st, nil
}

func (h *halfConn) maybeRekey(op string) *Error {
	if h.seq < uint64(h.rekeyAfter) {
		return nil
	}
	if h.epoch == math.MaxUint32 {
		return newErr(CodeInternal, op, errLength)
	}
	next := expandLabel(h.suite.Hash, h.secret[:h.secretLen], "traffic upd", nil, h.suite.Hash.Size())
	if err := h.setSecret(next); err != nil {
		return newErr(CodeInternal, op, err)
	}
	h.epoch++
	return nil
}

// prepare fills st's nonce and additional data for the current sequence number.
func (h *halfConn) prepare(st *aeadState, typ byte) {
	st.nonce = h.iv
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], h.seq)
	for i := 0; i < 8; i++ {
		st.nonce[4+i] ^= s[i]
	}
	st.ad[0], st.ad[1] = typ, h.dir
	binary.BigEndian.PutUint32(st.ad[2:], h.epoch)
	binary.BigEndian.PutUint64(st.ad[6:], h.seq)
}

// sealRecord appends the record of typ and plaintext at the current sequence
// number and advances it.
func (h *halfConn) sealRecord(dst []byte, typ byte, plaintext []byte) ([]byte, *Error) {
	if err := h.maybeRekey("seal"); err != nil {
		return dst, err
	}
	st, err := h.state()
	if err != nil {
		return dst, newErr(CodeInternal, "seal", err)
	}
	h.prepare(st, typ)
	dst = append(dst, typ)
	dst = st.aead.Seal(dst, st.nonce[:], plaintext, st.ad[:])
	h.seq++
	return dst, nil
}

// Conn is an established channel: the record layer of one connection.
// Seal may run concurrently with Open; two Seals (or two Opens) must not.
//
// Memory: a Conn keeps each direction's traffic secret, key, IV and counters
// inline (one allocation of a few hundred bytes). The expanded AEAD of a direction
// (key schedule and GHASH tables, about 0.8 KB) is built on its first Seal or Open
// and kept until Compact drops it; call Compact when a connection goes idle (after
// a batch of frames) so that idle connections cost only the inline state. The
// next Seal or Open rebuilds the cipher from the stored key (docs/crypto.md,
// "Per-connection memory", has the figures).
type Conn struct {
	suite   *Suite
	out, in halfConn
	resumed bool
	keyID   KeyID
}

// newConn takes ownership of the secrets: it copies and then wipes them.
func newConn(s *Suite, isClient bool, cSecret, sSecret []byte, rekeyAfter uint32, resumed bool, keyID KeyID) (*Conn, error) {
	c := &Conn{suite: s, resumed: resumed, keyID: keyID}
	c.out = halfConn{suite: s, rekeyAfter: rekeyAfter}
	c.in = halfConn{suite: s, rekeyAfter: rekeyAfter}
	outSecret, inSecret := cSecret, sSecret
	c.out.dir, c.in.dir = dirClientToServer, dirServerToClient
	if !isClient {
		outSecret, inSecret = sSecret, cSecret
		c.out.dir, c.in.dir = dirServerToClient, dirClientToServer
	}
	if len(cSecret) > maxSecretSize || s.AEAD.KeySize() > maxKeySize {
		return nil, errLength
	}
	if err := c.out.setSecret(outSecret); err != nil {
		return nil, err
	}
	if err := c.in.setSecret(inSecret); err != nil {
		return nil, err
	}
	return c, nil
}

// Suite is the negotiated suite.
func (c *Conn) Suite() *Suite { return c.suite }

// Compact drops the expanded AEADs of both directions; the next Seal or Open
// rebuilds its own. It must not run concurrently with Seal or Open: a caller that
// seals and opens on different goroutines uses CompactSeal and CompactOpen, each
// on the goroutine that owns the direction.
func (c *Conn) Compact() {
	c.out.st = nil
	c.in.st = nil
}

// CompactSeal drops the sealing direction's expanded AEAD (see Compact).
func (c *Conn) CompactSeal() { c.out.st = nil }

// CompactOpen drops the opening direction's expanded AEAD (see Compact).
func (c *Conn) CompactOpen() { c.in.st = nil }

// Resumed reports whether the channel was established from a ticket (PSK-DHE).
func (c *Conn) Resumed() bool { return c.resumed }

// ServerKeyID is the identity key that authenticated the server (for a resumed
// channel: the key of the original full handshake).
func (c *Conn) ServerKeyID() KeyID { return c.keyID }

// Seal appends the record for plaintext to dst and returns the extended slice.
// It allocates nothing when dst has room for len(plaintext)+RecordOverhead bytes.
func (c *Conn) Seal(dst, plaintext []byte) ([]byte, error) {
	return c.seal(dst, recordData, plaintext)
}

// SealClose appends a close record; later Seals fail with CodeClosed. A peer that
// receives it gets CodeClosed from Open, which distinguishes an orderly end from a
// truncated stream.
func (c *Conn) SealClose(dst []byte) ([]byte, error) {
	out, err := c.seal(dst, recordClose, nil)
	if err == nil {
		c.out.err = newErr(CodeClosed, "seal", nil)
	}
	return out, err
}

func (c *Conn) seal(dst []byte, typ byte, plaintext []byte) ([]byte, error) {
	h := &c.out
	if h.err != nil {
		return dst, h.err
	}
	dst, err := h.sealRecord(dst, typ, plaintext)
	if err != nil {
		h.err = err
		return dst, err
	}
	return dst, nil
}

// Open authenticates and decrypts record, appending the plaintext to dst. Any
// failure is final: the Conn must be closed, and later Opens return CodeConnFailed.
// A close record yields CodeClosed.
func (c *Conn) Open(dst, record []byte) ([]byte, error) {
	h := &c.in
	if h.err != nil {
		if h.err.Code == CodeClosed {
			return dst, h.err
		}
		return dst, newErr(CodeConnFailed, "open", h.err)
	}
	if len(record) < RecordOverhead {
		h.err = newErr(CodeRecordTooShort, "open", nil)
		return dst, h.err
	}
	typ := record[0]
	if typ != recordData && typ != recordClose {
		h.err = newErr(CodeRecordType, "open", nil)
		return dst, h.err
	}
	if err := h.maybeRekey("open"); err != nil {
		h.err = err
		return dst, err
	}
	st, err := h.state()
	if err != nil {
		h.err = newErr(CodeInternal, "open", err)
		return dst, h.err
	}
	h.prepare(st, typ)
	out, err := st.aead.Open(dst, st.nonce[:], record[1:], st.ad[:])
	if err != nil {
		h.err = newErr(CodeRecordAuth, "open", nil)
		return dst, h.err
	}
	h.seq++
	if typ == recordClose {
		h.err = newErr(CodeClosed, "open", nil)
		return dst, h.err
	}
	return out, nil
}
