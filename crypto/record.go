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

// halfConn is one direction of a Conn.
type halfConn struct {
	suite      *Suite
	dir        byte
	aead       cipher.AEAD
	secret     []byte
	iv         [ivSize]byte
	nonce      [ivSize]byte
	ad         [14]byte
	seq        uint64
	epoch      uint32
	rekeyAfter uint64
	err        *Error
}

func (h *halfConn) setSecret(secret []byte) error {
	s := h.suite
	key := expandLabel(s.Hash, secret, "key", nil, s.AEAD.KeySize())
	iv := expandLabel(s.Hash, secret, "iv", nil, ivSize)
	a, err := s.AEAD.New(key)
	wipe(key)
	if err != nil {
		return err
	}
	if h.secret != nil {
		wipe(h.secret)
	}
	h.aead, h.secret = a, secret
	copy(h.iv[:], iv)
	h.seq = 0
	return nil
}

func (h *halfConn) maybeRekey(op string) *Error {
	if h.seq < h.rekeyAfter {
		return nil
	}
	if h.epoch == math.MaxUint32 {
		return newErr(CodeInternal, op, errLength)
	}
	next := expandLabel(h.suite.Hash, h.secret, "traffic upd", nil, h.suite.Hash.Size())
	if err := h.setSecret(next); err != nil {
		return newErr(CodeInternal, op, err)
	}
	h.epoch++
	return nil
}

// prepare fills nonce and additional data for the current sequence number.
func (h *halfConn) prepare(typ byte) {
	h.nonce = h.iv
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], h.seq)
	for i := 0; i < 8; i++ {
		h.nonce[4+i] ^= s[i]
	}
	h.ad[0], h.ad[1] = typ, h.dir
	binary.BigEndian.PutUint32(h.ad[2:], h.epoch)
	binary.BigEndian.PutUint64(h.ad[6:], h.seq)
}

// Conn is an established channel: the record layer of one connection.
// Seal may run concurrently with Open; two Seals (or two Opens) must not.
type Conn struct {
	suite   *Suite
	out, in halfConn
	resumed bool
	keyID   KeyID
}

func newConn(s *Suite, isClient bool, cSecret, sSecret []byte, rekeyAfter uint32, resumed bool, keyID KeyID) (*Conn, error) {
	c := &Conn{suite: s, resumed: resumed, keyID: keyID}
	c.out = halfConn{suite: s, rekeyAfter: uint64(rekeyAfter)}
	c.in = halfConn{suite: s, rekeyAfter: uint64(rekeyAfter)}
	outSecret, inSecret := cSecret, sSecret
	c.out.dir, c.in.dir = dirClientToServer, dirServerToClient
	if !isClient {
		outSecret, inSecret = sSecret, cSecret
		c.out.dir, c.in.dir = dirServerToClient, dirClientToServer
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
	if err := h.maybeRekey("seal"); err != nil {
		h.err = err
		return dst, err
	}
	h.prepare(typ)
	dst = append(dst, typ)
	dst = h.aead.Seal(dst, h.nonce[:], plaintext, h.ad[:])
	h.seq++
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
	h.prepare(typ)
	out, err := h.aead.Open(dst, h.nonce[:], record[1:], h.ad[:])
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
