package crypto

import (
	gocrypto "crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/emmansun/gmsm/smx509"
)

// Certificate-chain limits on the wire (docs/crypto.md, "Certificate chains").
const (
	maxChainCerts = 4
	maxChainBytes = 16 << 10
)

// Certificate is a server identity backed by an X.509 chain (leaf first, the root
// optional), parsed with gmsm's smx509: SM2 certificates signed with SM2-with-SM3
// (GB/T 32918.2, GM/T 0015), or Ed25519 ones. The leaf's public key must be the
// Signer's. Build it with NewCertificate or LoadCertificatePEM; it is immutable and
// safe for concurrent use.
type Certificate struct {
	chain  [][]byte
	signer Signer
	leaf   *smx509.Certificate
}

// NewCertificate checks that chain (DER, leaf first) parses, fits the wire limits
// and that the leaf carries signer's public key.
func NewCertificate(chain [][]byte, signer Signer) (*Certificate, error) {
	const op = "certificate"
	if len(chain) == 0 || len(chain) > maxChainCerts {
		return nil, newErr(CodeConfig, op, fmt.Errorf("chain of %d certificates (1..%d)", len(chain), maxChainCerts))
	}
	total := 0
	var leaf *smx509.Certificate
	for i, der := range chain {
		total += 2 + len(der)
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, newErr(CodeConfig, op, err)
		}
		if i == 0 {
			leaf = c
		}
	}
	if total > maxChainBytes {
		return nil, newErr(CodeConfig, op, fmt.Errorf("chain of %d bytes exceeds %d", total, maxChainBytes))
	}
	v, err := verifierFromPublicKey(leaf.PublicKey)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	if v.Algorithm() != signer.Public().Algorithm() || v.KeyID() != signer.Public().KeyID() {
		return nil, newErr(CodeConfig, op, errors.New("the leaf certificate does not carry the signer's public key"))
	}
	cp := make([][]byte, len(chain))
	for i, der := range chain {
		cp[i] = append([]byte(nil), der...)
	}
	return &Certificate{chain: cp, signer: signer, leaf: leaf}, nil
}

// LoadCertificatePEM builds a Certificate from a PEM chain (leaf first) and a
// PKCS#8 PEM private key.
func LoadCertificatePEM(chainPEM, keyPEM []byte) (*Certificate, error) {
	signer, err := ParseSignerPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	var chain [][]byte
	for rest := chainPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	return NewCertificate(chain, signer)
}

// Leaf is the parsed leaf certificate.
func (c *Certificate) Leaf() *smx509.Certificate { return c.leaf }

// Signer is the leaf's private key.
func (c *Certificate) Signer() Signer { return c.signer }

// verifierFromPublicKey wraps an SM2 (*ecdsa.PublicKey on the SM2 curve) or an
// Ed25519 public key.
func verifierFromPublicKey(pub any) (Verifier, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return newSM2Verifier(k)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, errLength
		}
		return &edVerifier{pub: k, id: makeKeyID(SigEd25519, k)}, nil
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// cryptoSigner returns the crypto.Signer behind a software Signer of this package,
// or one that a hardware Signer exposes through a CryptoSigner method.
func cryptoSigner(s Signer) (gocrypto.Signer, error) {
	switch k := s.(type) {
	case *sm2Signer:
		return k.priv, nil
	case *edSigner:
		return k.priv, nil
	case interface{ CryptoSigner() gocrypto.Signer }:
		return k.CryptoSigner(), nil
	}
	return nil, errors.New("signer cannot sign certificates")
}

func publicKeyOf(s Signer) (any, error) {
	cs, err := cryptoSigner(s)
	if err != nil {
		return nil, err
	}
	return cs.Public(), nil
}

// CertificateTemplate describes a certificate for CreateCACertificate and
// IssueServerCertificate. Zero values: NotBefore = now - 1 minute, Validity =
// 1 year (CA: 10 years).
type CertificateTemplate struct {
	CommonName string
	// DNSNames and IPAddresses go into the subject alternative names of a server
	// certificate; clients check ClientConfig.ServerName against them.
	DNSNames    []string
	IPAddresses []net.IP
	NotBefore   time.Time
	Validity    time.Duration
	// KeyUsage and ExtKeyUsage override the defaults (tests of refusal paths):
	// CA: CertSign|CRLSign; server: DigitalSignature with ExtKeyUsageServerAuth.
	KeyUsage    smx509.KeyUsage
	ExtKeyUsage []smx509.ExtKeyUsage
}

func (t *CertificateTemplate) x509(ca bool) (*smx509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	nb := t.NotBefore
	if nb.IsZero() {
		nb = time.Now().Add(-time.Minute)
	}
	life := t.Validity
	if life == 0 {
		life = 365 * 24 * time.Hour
		if ca {
			life *= 10
		}
	}
	c := &smx509.Certificate{
		SerialNumber:          serial,
		NotBefore:             nb,
		NotAfter:              nb.Add(life),
		BasicConstraintsValid: true,
		IsCA:                  ca,
		DNSNames:              t.DNSNames,
		IPAddresses:           t.IPAddresses,
		KeyUsage:              t.KeyUsage,
		ExtKeyUsage:           t.ExtKeyUsage,
	}
	c.Subject.CommonName = t.CommonName
	if c.KeyUsage == 0 {
		c.KeyUsage = smx509.KeyUsageDigitalSignature
		if ca {
			c.KeyUsage = smx509.KeyUsageCertSign | smx509.KeyUsageCRLSign
		}
	}
	if c.ExtKeyUsage == nil && !ca {
		c.ExtKeyUsage = []smx509.ExtKeyUsage{smx509.ExtKeyUsageServerAuth}
	}
	return c, nil
}

// CreateCACertificate returns a self-signed CA certificate (DER) for signer's key:
// with an SM2 key it is signed with SM2-with-SM3.
func CreateCACertificate(signer Signer, t CertificateTemplate) ([]byte, error) {
	const op = "create ca certificate"
	priv, err := cryptoSigner(signer)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	tmpl, err := t.x509(true)
	if err != nil {
		return nil, newErr(CodeInternal, op, err)
	}
	der, err := smx509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	return der, nil
}

// IssueServerCertificate returns a certificate (DER) for server's public key,
// signed by the CA certificate caDER with caSigner.
func IssueServerCertificate(caDER []byte, caSigner, server Signer, t CertificateTemplate) ([]byte, error) {
	const op = "issue certificate"
	ca, err := smx509.ParseCertificate(caDER)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	caPriv, err := cryptoSigner(caSigner)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	pub, err := publicKeyOf(server)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	tmpl, err := t.x509(false)
	if err != nil {
		return nil, newErr(CodeInternal, op, err)
	}
	der, err := smx509.CreateCertificate(rand.Reader, tmpl, ca, pub, caPriv)
	if err != nil {
		return nil, newErr(CodeConfig, op, err)
	}
	return der, nil
}

// EncodeCertificatePEM wraps DER certificates in CERTIFICATE PEM blocks.
func EncodeCertificatePEM(ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}

// Fingerprint is the printable form of a key id that operators compare and
// clients pin: "SM2:" or "Ed25519:" and the 16 hex digits of the key id.
func Fingerprint(v Verifier) string {
	id := v.KeyID()
	return fmt.Sprintf("%s:%x", v.Algorithm(), id[:])
}

// chainError classifies a failed chain verification.
func chainError(err error) Code {
	var ua smx509.UnknownAuthorityError
	var ci smx509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return CodeUnknownAuthority
	case errors.As(err, &ci) && ci.Reason == smx509.Expired:
		return CodeCertExpired
	}
	return CodeBadCertificate
}

// verifyChain parses the server's chain and decides whether it authenticates the
// server: the leaf key is pinned, or the chain verifies against cfg.Roots for
// cfg.ServerName at now with ServerAuth and a DigitalSignature leaf. It returns
// the leaf key to check the transcript signature with.
func (c *ClientHandshake) verifyChain(raw [][]byte, alg SignatureAlgorithm) (Verifier, *Error) {
	const op = "server certificate"
	certs := make([]*smx509.Certificate, 0, len(raw))
	for _, der := range raw {
		cert, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, newErr(CodeBadCertificate, op, err)
		}
		certs = append(certs, cert)
	}
	leaf := certs[0]
	v, err := verifierFromPublicKey(leaf.PublicKey)
	if err != nil || v.Algorithm() != alg {
		return nil, newErr(CodeBadCertificate, op, errors.New("leaf key of the wrong algorithm for the suite"))
	}
	for _, k := range c.cfg.ServerKeys {
		if k.Algorithm() == alg && k.KeyID() == v.KeyID() {
			return v, nil // pinned leaf key: the chain is informative only
		}
	}
	if c.cfg.Roots == nil {
		return nil, newErr(CodeUnknownServerKey, op, nil)
	}
	inter := smx509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	_, err = leaf.Verify(smx509.VerifyOptions{
		DNSName:       c.cfg.ServerName,
		Roots:         c.cfg.Roots,
		Intermediates: inter,
		CurrentTime:   c.now(),
		KeyUsages:     []smx509.ExtKeyUsage{smx509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, newErr(chainError(err), op, err)
	}
	if leaf.KeyUsage&smx509.KeyUsageDigitalSignature == 0 {
		return nil, newErr(CodeBadCertificate, op, errors.New("leaf certificate not valid for digital signatures"))
	}
	return v, nil
}

// marshalChain encodes a certificate list: vec16 { vec16 cert }.
func marshalChain(b []byte, chain [][]byte) []byte {
	n := 0
	for _, c := range chain {
		n += 2 + len(c)
	}
	b = append(b, byte(n>>8), byte(n))
	for _, c := range chain {
		b = putVec16(b, c)
	}
	return b
}

func parseChain(list []byte) ([][]byte, bool) {
	if len(list) == 0 || len(list) > maxChainBytes {
		return nil, false
	}
	r := reader{b: list}
	var out [][]byte
	for !r.empty() {
		c, ok := r.vec16()
		if !ok || len(c) == 0 || len(out) == maxChainCerts {
			return nil, false
		}
		out = append(out, c)
	}
	return out, true
}
