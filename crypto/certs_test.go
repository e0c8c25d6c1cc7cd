package crypto

import (
	"bytes"
	"crypto/rand"
	"net"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
)

// pki is a small SM2 hierarchy: a root, an intermediate, and server certificates.
type pki struct {
	rootKey, interKey Signer
	root, inter       []byte
	roots             *smx509.CertPool
}

func newPKI(tb testing.TB, alg SignatureAlgorithm, now time.Time) *pki {
	tb.Helper()
	p := &pki{}
	var err error
	if p.rootKey, err = GenerateSigner(alg); err != nil {
		tb.Fatal(err)
	}
	if p.interKey, err = GenerateSigner(alg); err != nil {
		tb.Fatal(err)
	}
	if p.root, err = CreateCACertificate(p.rootKey, CertificateTemplate{CommonName: "Unigate Test Root", NotBefore: now.Add(-time.Hour)}); err != nil {
		tb.Fatal(err)
	}
	// The intermediate is a CA issued by the root.
	rootCert, _ := smx509.ParseCertificate(p.root)
	tmpl, _ := (&CertificateTemplate{CommonName: "Unigate Test Intermediate", NotBefore: now.Add(-time.Hour)}).x509(true)
	pub, _ := publicKeyOf(p.interKey)
	rootPriv, _ := cryptoSigner(p.rootKey)
	if p.inter, err = smx509.CreateCertificate(rand.Reader, tmpl, rootCert, pub, rootPriv); err != nil {
		tb.Fatal(err)
	}
	p.roots = smx509.NewCertPool()
	p.roots.AddCert(rootCert)
	return p
}

// server issues a leaf for a fresh key through the intermediate and returns the
// Certificate (leaf, intermediate).
func (p *pki) server(tb testing.TB, alg SignatureAlgorithm, t CertificateTemplate) *Certificate {
	tb.Helper()
	key, err := GenerateSigner(alg)
	if err != nil {
		tb.Fatal(err)
	}
	if t.CommonName == "" {
		t.CommonName = "chat.example"
	}
	if t.DNSNames == nil {
		t.DNSNames = []string{"chat.example"}
	}
	leaf, err := IssueServerCertificate(p.inter, p.interKey, key, t)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := NewCertificate([][]byte{leaf, p.inter}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// certFixture: a server with an SM2 chain for the GM suites and an Ed25519 key.
func certFixture(tb testing.TB) (*fixture, *pki, *Certificate) {
	tb.Helper()
	f := newFixture(tb)
	p := newPKI(tb, SigSM2, f.now)
	c := p.server(tb, SigSM2, CertificateTemplate{NotBefore: f.now.Add(-time.Hour)})
	f.server.Certificates = []*Certificate{c}
	return f, p, c
}

func (f *fixture) rootsClient(p *pki, name string, suites ...*Suite) *ClientConfig {
	return &ClientConfig{
		Suites:     suites,
		Roots:      p.roots,
		ServerName: name,
		Now:        func() time.Time { return f.now },
	}
}

func TestCertificateChainHandshake(t *testing.T) {
	f, p, c := certFixture(t)
	for _, suite := range []*Suite{GM, GMPQ} {
		r := handshake(t, f.rootsClient(p, "chat.example", suite), f.server)
		if r.client.ServerKeyID() != c.Signer().Public().KeyID() {
			t.Fatalf("%s: client authenticated the wrong key", suite.Name)
		}
		exchange(t, r.client, r.server, "certified")
		exchange(t, r.server, r.client, "certified back")
		// Resumption keeps the leaf key as the authenticated identity.
		cfg := f.rootsClient(p, "chat.example", suite)
		cfg.Session = r.session
		rr := handshake(t, cfg, f.server)
		if !rr.client.Resumed() || rr.client.ServerKeyID() != c.Signer().Public().KeyID() {
			t.Fatalf("%s: resumption after a chain handshake: %v", suite.Name, rr.sh.TicketError())
		}
	}
	// The mode on the wire is the certificate mode, with the chain leaf first.
	pd := start(t, f.rootsClient(p, "chat.example", GM), f.server)
	sh, err := parseServerHello(pd.sh)
	if err != nil {
		t.Fatal(err)
	}
	if sh.mode != modeCert || len(sh.chain) != 2 || !bytes.Equal(sh.chain[0], c.chain[0]) {
		t.Fatalf("mode %d, %d certificates", sh.mode, len(sh.chain))
	}
	// INTL-PQ has no certificate here: the server names its pinned Ed25519 key.
	cfg := f.rootsClient(p, "chat.example", IntlPQ)
	cfg.ServerKeys = []Verifier{f.ed.Public()}
	handshake(t, cfg, f.server)
}

func TestCertificateChainPinnedLeaf(t *testing.T) {
	f, _, c := certFixture(t)
	// A client that pins the leaf key accepts the chain without roots.
	cfg := &ClientConfig{Suites: []*Suite{GM}, ServerKeys: []Verifier{c.Signer().Public()}, Now: func() time.Time { return f.now }}
	handshake(t, cfg, f.server)
	// A client that pins another key and has no roots refuses it.
	other, _ := GenerateSigner(SigSM2)
	cfg.ServerKeys = []Verifier{other.Public()}
	pd := start(t, cfg, f.server)
	_, _, err := pd.c.HandleServerHello(pd.sh)
	wantCode(t, err, CodeUnknownServerKey)
}

func TestCertificateEd25519Chain(t *testing.T) {
	f := newFixture(t)
	p := newPKI(t, SigEd25519, f.now)
	f.server.Certificates = []*Certificate{p.server(t, SigEd25519, CertificateTemplate{NotBefore: f.now.Add(-time.Hour)})}
	r := handshake(t, f.rootsClient(p, "chat.example", IntlPQ), f.server)
	exchange(t, r.client, r.server, "ed25519 chain")
}

// chainFailure runs a handshake against scfg with a roots client and returns the
// client's error.
func chainFailure(t *testing.T, ccfg *ClientConfig, scfg *ServerConfig) error {
	t.Helper()
	pd := start(t, ccfg, scfg)
	fin, conn, err := pd.c.HandleServerHello(pd.sh)
	if err == nil || fin != nil || conn != nil {
		t.Fatal("handshake accepted")
	}
	t.Logf("refused: %v", err)
	return err
}

func TestCertificateChainRefused(t *testing.T) {
	f, p, good := certFixture(t)
	server := func(c *Certificate) *ServerConfig {
		cfg := *f.server
		cfg.Certificates = []*Certificate{c}
		return &cfg
	}
	t.Run("wrong root", func(t *testing.T) {
		other := newPKI(t, SigSM2, f.now)
		wantCode(t, chainFailure(t, f.rootsClient(other, "chat.example", GM), f.server), CodeUnknownAuthority)
	})
	t.Run("missing intermediate", func(t *testing.T) {
		c := &Certificate{chain: good.chain[:1], signer: good.signer, leaf: good.leaf}
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeUnknownAuthority)
	})
	t.Run("expired", func(t *testing.T) {
		c := p.server(t, SigSM2, CertificateTemplate{NotBefore: f.now.Add(-48 * time.Hour), Validity: 24 * time.Hour})
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeCertExpired)
	})
	t.Run("not yet valid", func(t *testing.T) {
		c := p.server(t, SigSM2, CertificateTemplate{NotBefore: f.now.Add(time.Hour)})
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeCertExpired)
	})
	t.Run("client auth only", func(t *testing.T) {
		c := p.server(t, SigSM2, CertificateTemplate{NotBefore: f.now.Add(-time.Hour), ExtKeyUsage: []smx509.ExtKeyUsage{smx509.ExtKeyUsageClientAuth}})
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeBadCertificate)
	})
	t.Run("no digital signature usage", func(t *testing.T) {
		c := p.server(t, SigSM2, CertificateTemplate{NotBefore: f.now.Add(-time.Hour), KeyUsage: smx509.KeyUsageKeyEncipherment})
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeBadCertificate)
	})
	t.Run("leaf issued by a non-CA", func(t *testing.T) {
		// The valid leaf's key "issues" a certificate for an attacker's key.
		atk, _ := GenerateSigner(SigSM2)
		leaf, err := IssueServerCertificate(good.chain[0], good.signer, atk, CertificateTemplate{DNSNames: []string{"chat.example"}, NotBefore: f.now.Add(-time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewCertificate([][]byte{leaf, good.chain[0], good.chain[1]}, atk)
		if err != nil {
			t.Fatal(err)
		}
		err = chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c))
		if CodeOf(err) != CodeBadCertificate && CodeOf(err) != CodeUnknownAuthority {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("other server's certificate", func(t *testing.T) {
		// A genuine server of the same CA, for another name, with its own key.
		c := p.server(t, SigSM2, CertificateTemplate{DNSNames: []string{"other.example"}, NotBefore: f.now.Add(-time.Hour)})
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeBadCertificate)
	})
	t.Run("chain swapped from another server", func(t *testing.T) {
		// A man in the middle replays the real server's chain but can only sign with
		// its own key: the leaf/key mismatch shows in the transcript signature.
		atk, _ := GenerateSigner(SigSM2)
		c := &Certificate{chain: good.chain, signer: atk, leaf: good.leaf}
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), server(c)), CodeBadSignature)
	})
	t.Run("chain of the wrong algorithm", func(t *testing.T) {
		// An SM2 chain offered in a suite that signs with Ed25519 (the server is
		// made to lie by giving it a chain whose leaf is SM2 for an Ed25519 signer).
		c := &Certificate{chain: good.chain, signer: f.ed, leaf: good.leaf}
		cfg := f.rootsClient(p, "chat.example", IntlPQ)
		wantCode(t, chainFailure(t, cfg, server(c)), CodeBadCertificate)
	})
	t.Run("tampered certificate", func(t *testing.T) {
		for _, off := range []int{10, 200, len(good.chain[0]) - 5} {
			pd := start(t, f.rootsClient(p, "chat.example", GM), f.server)
			sh, _ := parseServerHello(pd.sh)
			i := bytes.Index(pd.sh, sh.chain[0])
			pd.sh[i+off] ^= 0x20
			_, _, err := pd.c.HandleServerHello(pd.sh)
			switch CodeOf(err) {
			case CodeBadCertificate, CodeUnknownAuthority, CodeBadSignature, CodeMalformed:
			default:
				t.Fatalf("offset %d: got %v", off, err)
			}
		}
	})
	t.Run("no roots, not pinned", func(t *testing.T) {
		other, _ := GenerateSigner(SigSM2)
		cfg := &ClientConfig{Suites: []*Suite{GM}, ServerKeys: []Verifier{other.Public()}, Now: func() time.Time { return f.now }}
		wantCode(t, chainFailure(t, cfg, f.server), CodeUnknownServerKey)
	})
	t.Run("pinned-key server to a roots-only client", func(t *testing.T) {
		cfg := *f.server
		cfg.Certificates = nil
		wantCode(t, chainFailure(t, f.rootsClient(p, "chat.example", GM), &cfg), CodeUnknownServerKey)
	})
}

func TestCertificateConfig(t *testing.T) {
	f, p, good := certFixture(t)
	other, _ := GenerateSigner(SigSM2)
	if _, err := NewCertificate(good.chain, other); CodeOf(err) != CodeConfig {
		t.Fatalf("leaf/key mismatch accepted: %v", err)
	}
	if _, err := NewCertificate(nil, other); CodeOf(err) != CodeConfig {
		t.Fatal("empty chain accepted")
	}
	if _, err := NewCertificate([][]byte{good.chain[0], good.chain[1], p.root, p.root, p.root}, good.signer); CodeOf(err) != CodeConfig {
		t.Fatal("over-long chain accepted")
	}
	if _, err := NewCertificate([][]byte{[]byte("not DER")}, good.signer); CodeOf(err) != CodeConfig {
		t.Fatal("garbage accepted")
	}
	keyPEM, _ := MarshalSignerPEM(good.signer)
	c, err := LoadCertificatePEM(EncodeCertificatePEM(good.chain...), keyPEM)
	if err != nil || len(c.chain) != 2 {
		t.Fatalf("PEM load: %v", err)
	}
	if _, err := NewClientHandshake(&ClientConfig{Roots: p.roots}); CodeOf(err) != CodeConfig {
		t.Fatal("roots without a server name accepted")
	}
	_ = f
	// IP address names work too.
	ipc := p.server(t, SigSM2, CertificateTemplate{DNSNames: []string{}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: f.now.Add(-time.Hour)})
	cfg := *f.server
	cfg.Certificates = []*Certificate{ipc}
	handshake(t, f.rootsClient(p, "127.0.0.1", GM), &cfg)
}

func TestParseChain(t *testing.T) {
	one := putVec16(nil, []byte{1, 2, 3})
	good := append(append([]byte(nil), one...), one...)
	if c, ok := parseChain(good); !ok || len(c) != 2 {
		t.Fatal("two certificates")
	}
	for _, bad := range [][]byte{
		nil,
		{0, 0},                 // empty certificate
		{0, 5, 1, 2},           // short
		bytes.Repeat(one, 5),   // too many
		append(one, 0),         // trailing byte
		make([]byte, 17<<10+2), // too large
	} {
		if _, ok := parseChain(bad); ok {
			t.Fatalf("accepted %x", bad[:min(len(bad), 8)])
		}
	}
}
