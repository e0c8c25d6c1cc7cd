package crypto

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// SignatureAlgorithm names the server identity key algorithm.
type SignatureAlgorithm uint8

// Signature algorithms.
const (
	SigSM2     SignatureAlgorithm = 1 // SM2 (GB/T 32918.2) with Z value over DefaultSM2UID
	SigEd25519 SignatureAlgorithm = 2 // Ed25519 (RFC 8032)
)

func (a SignatureAlgorithm) String() string {
	switch a {
	case SigSM2:
		return "SM2"
	case SigEd25519:
		return "Ed25519"
	}
	return fmt.Sprintf("sig(%d)", uint8(a))
}

// DefaultSM2UID is the GB/T 32918.2 default user ID, used by both ends for the Z value.
var DefaultSM2UID = []byte("1234567812345678")

// KeyID is the first 8 bytes of SHA-256(algorithm ‖ public key bytes).
type KeyID [8]byte

func makeKeyID(alg SignatureAlgorithm, pub []byte) KeyID {
	h := sha256.New()
	h.Write([]byte{byte(alg)})
	h.Write(pub)
	var id KeyID
	copy(id[:], h.Sum(nil))
	return id
}

// Verifier is a server identity public key, as pinned by clients.
type Verifier interface {
	Algorithm() SignatureAlgorithm
	// Bytes is the raw public key: the uncompressed SM2 point or the Ed25519 key.
	Bytes() []byte
	KeyID() KeyID
	Verify(msg, sig []byte) bool
}

// Signer is a server identity private key. It may live in a hardware module; Sign
// signs the message itself (SM2 computes Z ‖ M internally, Ed25519 is pure).
type Signer interface {
	Public() Verifier
	Sign(msg []byte) ([]byte, error)
}

// --- SM2 ---

type sm2Signer struct {
	priv *sm2.PrivateKey
	pub  *sm2Verifier
}

type sm2Verifier struct {
	pub *ecdsa.PublicKey
	raw []byte
	id  KeyID
}

func newSM2Verifier(pub *ecdsa.PublicKey) (*sm2Verifier, error) {
	if !sm2.IsSM2PublicKey(pub) {
		return nil, errors.New("not an SM2 public key")
	}
	e, err := sm2.PublicKeyToECDH(pub)
	if err != nil {
		return nil, err
	}
	raw := e.Bytes()
	return &sm2Verifier{pub: pub, raw: raw, id: makeKeyID(SigSM2, raw)}, nil
}

func (v *sm2Verifier) Algorithm() SignatureAlgorithm { return SigSM2 }
func (v *sm2Verifier) Bytes() []byte                 { return v.raw }
func (v *sm2Verifier) KeyID() KeyID                  { return v.id }
func (v *sm2Verifier) Verify(msg, sig []byte) bool {
	return sm2.VerifyASN1WithSM2(v.pub, DefaultSM2UID, msg, sig)
}

func (s *sm2Signer) Public() Verifier { return s.pub }
func (s *sm2Signer) Sign(msg []byte) ([]byte, error) {
	return s.priv.Sign(rand.Reader, msg, sm2.NewSM2SignerOption(true, DefaultSM2UID))
}

// NewSM2Signer wraps an SM2 private key.
func NewSM2Signer(priv *sm2.PrivateKey) (Signer, error) {
	v, err := newSM2Verifier(&priv.PublicKey)
	if err != nil {
		return nil, newErr(CodeConfig, "sm2 key", err)
	}
	return &sm2Signer{priv: priv, pub: v}, nil
}

// ParseSM2PublicKey parses an uncompressed SM2 point (65 bytes).
func ParseSM2PublicKey(raw []byte) (Verifier, error) {
	pub, err := sm2.NewPublicKey(raw)
	if err != nil {
		return nil, newErr(CodeConfig, "sm2 public key", err)
	}
	v, err := newSM2Verifier(pub)
	if err != nil {
		return nil, newErr(CodeConfig, "sm2 public key", err)
	}
	return v, nil
}

// --- Ed25519 ---

type edSigner struct {
	priv ed25519.PrivateKey
	pub  *edVerifier
}

type edVerifier struct {
	pub ed25519.PublicKey
	id  KeyID
}

func (v *edVerifier) Algorithm() SignatureAlgorithm { return SigEd25519 }
func (v *edVerifier) Bytes() []byte                 { return v.pub }
func (v *edVerifier) KeyID() KeyID                  { return v.id }
func (v *edVerifier) Verify(msg, sig []byte) bool {
	return len(sig) == ed25519.SignatureSize && ed25519.Verify(v.pub, msg, sig)
}

func (s *edSigner) Public() Verifier                { return s.pub }
func (s *edSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.priv, msg), nil }

// NewEd25519Signer wraps an Ed25519 private key.
func NewEd25519Signer(priv ed25519.PrivateKey) (Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, newErr(CodeConfig, "ed25519 key", errLength)
	}
	pub := ed25519.PublicKey(append([]byte(nil), priv[32:]...))
	return &edSigner{priv: priv, pub: &edVerifier{pub: pub, id: makeKeyID(SigEd25519, pub)}}, nil
}

// ParseEd25519PublicKey parses a 32-byte Ed25519 public key.
func ParseEd25519PublicKey(raw []byte) (Verifier, error) {
	if len(raw) != ed25519.PublicKeySize {
		return nil, newErr(CodeConfig, "ed25519 public key", errLength)
	}
	pub := ed25519.PublicKey(append([]byte(nil), raw...))
	return &edVerifier{pub: pub, id: makeKeyID(SigEd25519, pub)}, nil
}

// --- generation and PEM ---

// GenerateSigner creates a new server identity key (for `unigate keygen`).
func GenerateSigner(alg SignatureAlgorithm) (Signer, error) {
	switch alg {
	case SigSM2:
		k, err := sm2.GenerateKey(rand.Reader)
		if err != nil {
			return nil, newErr(CodeInternal, "keygen", err)
		}
		return NewSM2Signer(k)
	case SigEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, newErr(CodeInternal, "keygen", err)
		}
		return NewEd25519Signer(k)
	}
	return nil, newErr(CodeConfig, "keygen", fmt.Errorf("unknown algorithm %v", alg))
}

// PEM block types. Private keys are PKCS#8 ("PRIVATE KEY"), public keys PKIX
// ("PUBLIC KEY"), both as gmsm's smx509 and OpenSSL/GmSSL write them (SM2 keys carry
// the SM2 curve OID 1.2.156.10197.1.301).
const (
	pemPrivate = "PRIVATE KEY"
	pemPublic  = "PUBLIC KEY"
)

// MarshalSignerPEM encodes a software Signer created by this package as PKCS#8 PEM.
func MarshalSignerPEM(s Signer) ([]byte, error) {
	var key any
	switch k := s.(type) {
	case *sm2Signer:
		key = k.priv
	case *edSigner:
		key = k.priv
	default:
		return nil, newErr(CodeConfig, "marshal key", errors.New("not a software key"))
	}
	der, err := smx509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, newErr(CodeConfig, "marshal key", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: der}), nil
}

// ParseSignerPEM decodes a PKCS#8 PEM SM2 or Ed25519 private key.
func ParseSignerPEM(data []byte) (Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != pemPrivate {
		return nil, newErr(CodeConfig, "parse key", errors.New("no PRIVATE KEY block"))
	}
	key, err := smx509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, newErr(CodeConfig, "parse key", err)
	}
	switch k := key.(type) {
	case *sm2.PrivateKey:
		return NewSM2Signer(k)
	case ed25519.PrivateKey:
		return NewEd25519Signer(k)
	}
	return nil, newErr(CodeConfig, "parse key", fmt.Errorf("unsupported key type %T", key))
}

// MarshalVerifierPEM encodes a public key as PKIX PEM (what clients pin).
func MarshalVerifierPEM(v Verifier) ([]byte, error) {
	var key any
	switch k := v.(type) {
	case *sm2Verifier:
		key = k.pub
	case *edVerifier:
		key = k.pub
	default:
		return nil, newErr(CodeConfig, "marshal public key", errors.New("unknown key type"))
	}
	der, err := smx509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, newErr(CodeConfig, "marshal public key", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: der}), nil
}

// ParseVerifierPEM decodes a PKIX PEM SM2 or Ed25519 public key.
func ParseVerifierPEM(data []byte) (Verifier, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != pemPublic {
		return nil, newErr(CodeConfig, "parse public key", errors.New("no PUBLIC KEY block"))
	}
	key, err := smx509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, newErr(CodeConfig, "parse public key", err)
	}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		v, err := newSM2Verifier(k)
		if err != nil {
			return nil, newErr(CodeConfig, "parse public key", err)
		}
		return v, nil
	case ed25519.PublicKey:
		return ParseEd25519PublicKey(k)
	}
	return nil, newErr(CodeConfig, "parse public key", fmt.Errorf("unsupported key type %T", key))
}
