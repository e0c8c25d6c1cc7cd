package crypto

import (
	"bufio"
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem768"
	"github.com/emmansun/gmsm/sm4"
)

// readVectors returns the whitespace-separated fields of every non-comment line of
// testdata/name whose first field is kind.
func readVectors(t *testing.T, name, kind string) [][]string {
	t.Helper()
	f, err := os.Open("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 0 && fs[0] == kind {
			out = append(out, fs[1:])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("no %s vectors in %s", kind, name)
	}
	return out
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	if s == "-" {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestKATSM3(t *testing.T) {
	for _, v := range readVectors(t, "sm3.txt", "sm3") {
		if got := hashOf(SM3, unhex(t, v[0])); !bytes.Equal(got, unhex(t, v[1])) {
			t.Errorf("SM3(%s) = %x, want %s", v[0], got, v[1])
		}
	}
}

func TestKATSM4(t *testing.T) {
	for _, v := range readVectors(t, "sm4.txt", "sm4") {
		n := atoi(t, v[3])
		if n > 1 && testing.Short() {
			continue
		}
		b, err := sm4.NewCipher(unhex(t, v[0]))
		if err != nil {
			t.Fatal(err)
		}
		blk := unhex(t, v[1])
		for i := 0; i < n; i++ {
			b.Encrypt(blk, blk)
		}
		if want := unhex(t, v[2]); !bytes.Equal(blk, want) {
			t.Errorf("SM4^%d = %x, want %x", n, blk, want)
		}
		for i := 0; i < n; i++ {
			b.Decrypt(blk, blk)
		}
		if !bytes.Equal(blk, unhex(t, v[1])) {
			t.Errorf("SM4 decrypt^%d did not return the plaintext", n)
		}
	}
}

func TestKATHKDFSM3(t *testing.T) {
	for _, v := range readVectors(t, "hkdf_sm3.txt", "hkdf") {
		ikm, salt, info, l := unhex(t, v[0]), unhex(t, v[1]), unhex(t, v[2]), atoi(t, v[3])
		prk := extract(SM3, salt, ikm)
		if !bytes.Equal(prk, unhex(t, v[4])) {
			t.Errorf("extract = %x, want %s", prk, v[4])
		}
		okm, err := hkdf.Expand(SM3.New, prk, string(info), l)
		if err != nil || !bytes.Equal(okm, unhex(t, v[5])) {
			t.Errorf("expand = %x (%v), want %s", okm, err, v[5])
		}
	}
	for _, v := range readVectors(t, "hkdf_sm3.txt", "expandlabel") {
		label := strings.ReplaceAll(v[1], "_", " ")
		got := expandLabel(SM3, unhex(t, v[0]), label, unhex(t, v[2]), atoi(t, v[3]))
		if !bytes.Equal(got, unhex(t, v[4])) {
			t.Errorf("expandLabel(%q) = %x, want %s", label, got, v[4])
		}
	}
}

// TestKATMLKEM768 checks circl's derandomized ML-KEM-768 API against NIST ACVP
// vectors (FIPS 203 keyGen and encapsulation), then a deterministic round trip.
func TestKATMLKEM768(t *testing.T) {
	for _, v := range readVectors(t, "mlkem768.txt", "keygen") {
		seed := append(unhex(t, v[0]), unhex(t, v[1])...) // d ‖ z
		pk, sk := mlkem768.NewKeyFromSeed(seed)
		ek := make([]byte, mlkem768.PublicKeySize)
		dk := make([]byte, mlkem768.PrivateKeySize)
		pk.Pack(ek)
		sk.Pack(dk)
		if h := sha256.Sum256(ek); !bytes.Equal(h[:], unhex(t, v[2])) {
			t.Errorf("keygen ek hash %x, want %s", h, v[2])
		}
		if h := sha256.Sum256(dk); !bytes.Equal(h[:], unhex(t, v[3])) {
			t.Errorf("keygen dk hash %x, want %s", h, v[3])
		}
		ct := make([]byte, mlkem768.CiphertextSize)
		ss := make([]byte, mlkem768.SharedKeySize)
		ss2 := make([]byte, mlkem768.SharedKeySize)
		pk.EncapsulateTo(ct, ss, bytes.Repeat([]byte{7}, mlkem768.EncapsulationSeedSize))
		sk.DecapsulateTo(ss2, ct)
		if !bytes.Equal(ss, ss2) {
			t.Error("deterministic round trip: shared secrets differ")
		}
	}
	for _, v := range readVectors(t, "mlkem768.txt", "encap") {
		var pk mlkem768.PublicKey
		if err := pk.Unpack(unhex(t, v[0])); err != nil {
			t.Fatal(err)
		}
		ct := make([]byte, mlkem768.CiphertextSize)
		ss := make([]byte, mlkem768.SharedKeySize)
		pk.EncapsulateTo(ct, ss, unhex(t, v[1]))
		if !bytes.Equal(ct, unhex(t, v[2])) || !bytes.Equal(ss, unhex(t, v[3])) {
			t.Errorf("encapsulation mismatch: ss %x want %s", ss, v[3])
		}
	}
}

// TestSM4GCMRoundTrip checks that the SM4 AEAD is GCM over the GB/T 32907 block
// (tag length, nonce length, tamper detection).
func TestAEADs(t *testing.T) {
	for _, a := range []AEAD{SM4GCM, AES256GCM} {
		c, err := a.New(make([]byte, a.KeySize()))
		if err != nil {
			t.Fatal(err)
		}
		if c.NonceSize() != ivSize || c.Overhead() != tagSize {
			t.Fatalf("%s: nonce %d overhead %d", a.Name(), c.NonceSize(), c.Overhead())
		}
		n := make([]byte, ivSize)
		ct := c.Seal(nil, n, []byte("hello"), []byte("ad"))
		if _, err := c.Open(nil, n, ct, []byte("ad")); err != nil {
			t.Fatal(err)
		}
		ct[0] ^= 1
		if _, err := c.Open(nil, n, ct, []byte("ad")); err == nil {
			t.Fatalf("%s: tampered ciphertext opened", a.Name())
		}
		if _, err := a.New(make([]byte, a.KeySize()+1)); err == nil {
			t.Fatalf("%s: wrong key size accepted", a.Name())
		}
	}
}
