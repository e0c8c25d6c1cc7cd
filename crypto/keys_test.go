package crypto

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/sm2"
)

func TestKeysPEMRoundTrip(t *testing.T) {
	for _, alg := range []SignatureAlgorithm{SigSM2, SigEd25519} {
		s, err := GenerateSigner(alg)
		if err != nil {
			t.Fatal(err)
		}
		privPEM, err := MarshalSignerPEM(s)
		if err != nil {
			t.Fatal(err)
		}
		pubPEM, err := MarshalVerifierPEM(s.Public())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(privPEM), "PRIVATE KEY") || !strings.Contains(string(pubPEM), "PUBLIC KEY") {
			t.Fatalf("%v: unexpected PEM types", alg)
		}
		s2, err := ParseSignerPEM(privPEM)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := ParseVerifierPEM(pubPEM)
		if err != nil {
			t.Fatal(err)
		}
		if s2.Public().KeyID() != s.Public().KeyID() || v2.KeyID() != s.Public().KeyID() || v2.Algorithm() != alg {
			t.Fatalf("%v: key id changed across PEM", alg)
		}
		msg := []byte("transcript")
		sig, err := s2.Sign(msg)
		if err != nil {
			t.Fatal(err)
		}
		if !v2.Verify(msg, sig) || v2.Verify([]byte("other"), sig) {
			t.Fatalf("%v: sign/verify after PEM round trip", alg)
		}
		var raw Verifier
		if alg == SigSM2 {
			raw, err = ParseSM2PublicKey(s.Public().Bytes())
		} else {
			raw, err = ParseEd25519PublicKey(s.Public().Bytes())
		}
		if err != nil || raw.KeyID() != s.Public().KeyID() {
			t.Fatalf("%v: raw public key round trip: %v", alg, err)
		}
	}
	for _, bad := range []string{"", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"} {
		if _, err := ParseSignerPEM([]byte(bad)); CodeOf(err) != CodeConfig {
			t.Fatalf("bad private PEM: %v", err)
		}
		if _, err := ParseVerifierPEM([]byte(bad)); CodeOf(err) != CodeConfig {
			t.Fatalf("bad public PEM: %v", err)
		}
	}
}

// TestSM2SignatureUsesZ checks that the SM2 signature is GB/T 32918.2's, over
// Z_A ‖ M with the default user ID: gmsm's independent entry point verifies it, and
// it does not verify under another user ID.
func TestSM2SignatureUsesZ(t *testing.T) {
	s, _ := GenerateSigner(SigSM2)
	msg := []byte("unigate")
	sig, err := s.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	pub := s.(*sm2Signer).priv.PublicKey
	if !sm2.VerifyASN1WithSM2(&pub, nil, msg, sig) {
		t.Fatal("signature does not verify with the GB/T default user ID")
	}
	if sm2.VerifyASN1WithSM2(&pub, []byte("another-user-id!"), msg, sig) {
		t.Fatal("signature verifies under another user ID")
	}
	if !bytes.Equal(DefaultSM2UID, []byte("1234567812345678")) {
		t.Fatal("default UID changed")
	}
}

func TestKEMs(t *testing.T) {
	for _, k := range []KEM{SM2ECDH, MLKEM768, X25519MLKEM768, SM2MLKEM768} {
		priv, err := k.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if len(priv.PublicKey()) != k.PublicKeySize() {
			t.Fatalf("%s: public key size", k.Name())
		}
		ct, ss, err := k.Encapsulate(priv.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != k.CiphertextSize() {
			t.Fatalf("%s: ciphertext size %d", k.Name(), len(ct))
		}
		ss2, err := priv.Decapsulate(ct)
		if err != nil || !bytes.Equal(ss, ss2) {
			t.Fatalf("%s: secrets differ (%v)", k.Name(), err)
		}
		if _, _, err := k.Encapsulate(priv.PublicKey()[1:]); err == nil {
			t.Fatalf("%s: short public key accepted", k.Name())
		}
		if _, err := priv.Decapsulate(ct[1:]); err == nil {
			t.Fatalf("%s: short ciphertext accepted", k.Name())
		}
	}
	// SM2 ECDH rejects points off the curve.
	bad := make([]byte, 65)
	bad[0] = 4
	if _, _, err := SM2ECDH.Encapsulate(bad); err == nil {
		t.Fatal("SM2 point off the curve accepted")
	}
}

func TestErrors(t *testing.T) {
	err := error(newErr(CodeBadSignature, "server hello", nil))
	if !strings.Contains(err.Error(), "bad signature") || CodeOf(err) != CodeBadSignature {
		t.Fatal(err)
	}
	if CodeOf(nil) != 0 || Code(200).String() != "code 200" {
		t.Fatal("CodeOf/String")
	}
}
