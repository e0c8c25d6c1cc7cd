package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"hash"

	"github.com/cloudflare/circl/kem"
	"github.com/cloudflare/circl/kem/hybrid"
	"github.com/cloudflare/circl/kem/mlkem/mlkem768"
	"github.com/emmansun/gmsm/ecdh"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/sm4"
)

// Hash is a hash function for the transcript, HMAC and HKDF.
type Hash interface {
	Name() string
	New() hash.Hash
	Size() int
}

// AEAD builds the record cipher from a key. Nonces are always 12 bytes and tags 16.
type AEAD interface {
	Name() string
	KeySize() int
	New(key []byte) (cipher.AEAD, error)
}

// KEM is a key-encapsulation mechanism; Diffie-Hellman is a KEM whose ciphertext is
// the responder's ephemeral public key. The client generates a key pair and sends
// its public key; the server encapsulates to it; the client decapsulates.
type KEM interface {
	Name() string
	PublicKeySize() int
	CiphertextSize() int
	// GenerateKey returns a fresh ephemeral key pair (randomness from crypto/rand).
	GenerateKey() (KEMPrivateKey, error)
	// Encapsulate returns the ciphertext for peer and the shared secret.
	Encapsulate(peer []byte) (ct, secret []byte, err error)
}

// KEMPrivateKey is the client's ephemeral key.
type KEMPrivateKey interface {
	PublicKey() []byte
	Decapsulate(ct []byte) (secret []byte, err error)
}

// --- hashes ---

type hashImpl struct {
	name string
	size int
	fn   func() hash.Hash
}

func (h hashImpl) Name() string   { return h.name }
func (h hashImpl) New() hash.Hash { return h.fn() }
func (h hashImpl) Size() int      { return h.size }

// SM3 is the GB/T 32905-2016 hash; SHA256 is FIPS 180-4 SHA-256.
var (
	SM3    Hash = hashImpl{"SM3", sm3.Size, sm3.New}
	SHA256 Hash = hashImpl{"SHA-256", sha256.Size, sha256.New}
)

// --- AEADs ---

type gcmImpl struct {
	name    string
	keySize int
	block   func(key []byte) (cipher.Block, error)
}

func (g gcmImpl) Name() string { return g.name }
func (g gcmImpl) KeySize() int { return g.keySize }
func (g gcmImpl) New(key []byte) (cipher.AEAD, error) {
	if len(key) != g.keySize {
		return nil, errLength
	}
	b, err := g.block(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// SM4GCM is SM4 (GB/T 32907-2016) in GCM mode (NIST SP 800-38D) with a 128-bit key;
// AES256GCM is AES-256-GCM. Both use crypto/cipher's GCM over a cipher.Block
// (gmsm's SM4 block provides the assembly GCM path).
var (
	SM4GCM    AEAD = gcmImpl{"SM4-GCM", 16, sm4.NewCipher}
	AES256GCM AEAD = gcmImpl{"AES-256-GCM", 32, aes.NewCipher}
)

// --- KEMs ---

// SM2ECDH is ephemeral Diffie-Hellman on the SM2 curve (GB/T 32918.5 parameters,
// gmsm/ecdh.P256, which is not NIST P-256). Public keys are uncompressed points.
var SM2ECDH KEM = sm2KEM{}

type sm2KEM struct{}

func (sm2KEM) Name() string        { return "SM2-ECDH" }
func (sm2KEM) PublicKeySize() int  { return 65 }
func (sm2KEM) CiphertextSize() int { return 65 }

func (sm2KEM) GenerateKey() (KEMPrivateKey, error) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return sm2Priv{k}, nil
}

func (sm2KEM) Encapsulate(peer []byte) ([]byte, []byte, error) {
	pub, err := ecdh.P256().NewPublicKey(peer)
	if err != nil {
		return nil, nil, err
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	ss, err := eph.ECDH(pub)
	if err != nil {
		return nil, nil, err
	}
	return eph.PublicKey().Bytes(), ss, nil
}

type sm2Priv struct{ k *ecdh.PrivateKey }

func (p sm2Priv) PublicKey() []byte { return p.k.PublicKey().Bytes() }
func (p sm2Priv) Decapsulate(ct []byte) ([]byte, error) {
	pub, err := ecdh.P256().NewPublicKey(ct)
	if err != nil {
		return nil, err
	}
	return p.k.ECDH(pub)
}

// circlKEM adapts a circl kem.Scheme.
type circlKEM struct{ s kem.Scheme }

// MLKEM768 is ML-KEM-768 (FIPS 203); X25519MLKEM768 is circl's hybrid of ML-KEM-768
// and X25519 (ML-KEM first in shares, ciphertexts and the concatenated secret).
var (
	MLKEM768       KEM = circlKEM{mlkem768.Scheme()}
	X25519MLKEM768 KEM = circlKEM{hybrid.X25519MLKEM768()}
)

func (c circlKEM) Name() string        { return c.s.Name() }
func (c circlKEM) PublicKeySize() int  { return c.s.PublicKeySize() }
func (c circlKEM) CiphertextSize() int { return c.s.CiphertextSize() }

func (c circlKEM) GenerateKey() (KEMPrivateKey, error) {
	pk, sk, err := c.s.GenerateKeyPair()
	if err != nil {
		return nil, err
	}
	pub, err := pk.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return circlPriv{c.s, sk, pub}, nil
}

func (c circlKEM) Encapsulate(peer []byte) ([]byte, []byte, error) {
	if len(peer) != c.s.PublicKeySize() {
		return nil, nil, errLength
	}
	pk, err := c.s.UnmarshalBinaryPublicKey(peer)
	if err != nil {
		return nil, nil, err
	}
	return c.s.Encapsulate(pk)
}

type circlPriv struct {
	s   kem.Scheme
	sk  kem.PrivateKey
	pub []byte
}

func (p circlPriv) PublicKey() []byte { return p.pub }
func (p circlPriv) Decapsulate(ct []byte) ([]byte, error) {
	if len(ct) != p.s.CiphertextSize() {
		return nil, errLength
	}
	return p.s.Decapsulate(p.sk, ct)
}

// HybridKEM concatenates two KEMs: shares, ciphertexts and secrets are first ‖ second.
// The combined secret must only ever be used as HKDF input keying material.
func HybridKEM(name string, first, second KEM) KEM { return hybridKEM{name, first, second} }

// SM2MLKEM768 is the GM-PQ key agreement: SM2 ECDH ‖ ML-KEM-768.
var SM2MLKEM768 = HybridKEM("SM2-MLKEM768", SM2ECDH, MLKEM768)

type hybridKEM struct {
	name          string
	first, second KEM
}

func (h hybridKEM) Name() string { return h.name }
func (h hybridKEM) PublicKeySize() int {
	return h.first.PublicKeySize() + h.second.PublicKeySize()
}
func (h hybridKEM) CiphertextSize() int {
	return h.first.CiphertextSize() + h.second.CiphertextSize()
}

func (h hybridKEM) GenerateKey() (KEMPrivateKey, error) {
	a, err := h.first.GenerateKey()
	if err != nil {
		return nil, err
	}
	b, err := h.second.GenerateKey()
	if err != nil {
		return nil, err
	}
	return hybridPriv{h, a, b}, nil
}

func (h hybridKEM) Encapsulate(peer []byte) ([]byte, []byte, error) {
	if len(peer) != h.PublicKeySize() {
		return nil, nil, errLength
	}
	n := h.first.PublicKeySize()
	ct1, ss1, err := h.first.Encapsulate(peer[:n])
	if err != nil {
		return nil, nil, err
	}
	ct2, ss2, err := h.second.Encapsulate(peer[n:])
	if err != nil {
		return nil, nil, err
	}
	return append(ct1, ct2...), append(ss1, ss2...), nil
}

type hybridPriv struct {
	h    hybridKEM
	a, b KEMPrivateKey
}

func (p hybridPriv) PublicKey() []byte {
	return append(append([]byte(nil), p.a.PublicKey()...), p.b.PublicKey()...)
}

func (p hybridPriv) Decapsulate(ct []byte) ([]byte, error) {
	if len(ct) != p.h.CiphertextSize() {
		return nil, errLength
	}
	n := p.h.first.CiphertextSize()
	ss1, err := p.a.Decapsulate(ct[:n])
	if err != nil {
		return nil, err
	}
	ss2, err := p.b.Decapsulate(ct[n:])
	if err != nil {
		return nil, err
	}
	return append(ss1, ss2...), nil
}

var errNoKey = errors.New("no key")
