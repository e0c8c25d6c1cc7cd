package main

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/smx509"

	ugcrypto "github.com/unigate/unigate/crypto"
)

func runKeygen(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(append([]string{"keygen"}, args...), &o, &e)
	return code, o.String(), e.String()
}

var fingerprintRE = regexp.MustCompile(`(?m)^fingerprint:\s+(\S+)$`)
var publicRE = regexp.MustCompile(`(?m)^public key:\s+([0-9a-f]+)$`)

func TestKeygenIdentity(t *testing.T) {
	for _, alg := range []string{"sm2", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "id.key")
			code, out, errOut := runKeygen(t, "-alg", alg, "-out", path)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Fatalf("private key mode %v, want 0600", st.Mode().Perm())
			}
			data, _ := os.ReadFile(path)
			key, err := ugcrypto.ParseSignerPEM(data)
			if err != nil {
				t.Fatal(err)
			}
			m := fingerprintRE.FindStringSubmatch(out)
			if m == nil || m[1] != ugcrypto.Fingerprint(key.Public()) {
				t.Fatalf("printed fingerprint %v, key has %s\n%s", m, ugcrypto.Fingerprint(key.Public()), out)
			}
			wantPrefix := map[string]string{"sm2": "SM2:", "ed25519": "Ed25519:"}[alg]
			if !strings.HasPrefix(m[1], wantPrefix) {
				t.Fatalf("fingerprint %s", m[1])
			}
			// The printed raw key and PEM are what a client pins.
			raw := publicRE.FindStringSubmatch(out)
			if raw == nil {
				t.Fatal("no raw public key printed")
			}
			b, _ := hex.DecodeString(raw[1])
			if !bytes.Equal(b, key.Public().Bytes()) {
				t.Fatal("printed public key differs")
			}
			pub, err := ugcrypto.ParseVerifierPEM([]byte(out[strings.Index(out, "-----BEGIN"):]))
			if err != nil || pub.KeyID() != key.Public().KeyID() {
				t.Fatalf("printed PEM: %v", err)
			}
			if strings.Contains(out, "PRIVATE") {
				t.Fatal("private key printed")
			}
		})
	}
}

func TestKeygenRefusesOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	if code, _, e := runKeygen(t, "-out", path); code != 0 {
		t.Fatal(e)
	}
	before, _ := os.ReadFile(path)
	code, out, errOut := runKeygen(t, "-out", path)
	if code == 0 || !strings.Contains(errOut, "exists") || !strings.Contains(errOut, "-force") {
		t.Fatalf("overwrite without -force: exit %d\n%s%s", code, out, errOut)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("key file changed")
	}
	// -force replaces it, still with mode 0600 (even if it was loosened meanwhile).
	os.Chmod(path, 0o644)
	if code, _, e := runKeygen(t, "--force", "-out", path); code != 0 {
		t.Fatal(e)
	}
	after, _ := os.ReadFile(path)
	st, _ := os.Stat(path)
	if bytes.Equal(before, after) || st.Mode().Perm() != 0o600 {
		t.Fatalf("forced overwrite: changed=%v mode=%v", !bytes.Equal(before, after), st.Mode().Perm())
	}
	// A stale certificate file also blocks, before any file is written.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "server.pem"), []byte("old"), 0o644)
	code, _, errOut = runKeygen(t, "-out", filepath.Join(dir, "id.key"), "-cert", filepath.Join(dir, "server.pem"))
	if code == 0 || !strings.Contains(errOut, "server.pem exists") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "id.key")); err == nil {
		t.Fatal("key written although the certificate file blocked")
	}
}

func TestKeygenUsage(t *testing.T) {
	if code, _, _ := runKeygen(t, "-alg", "rsa", "-out", filepath.Join(t.TempDir(), "k")); code != 2 {
		t.Fatalf("unknown algorithm: exit %d", code)
	}
	if code, _, _ := runKeygen(t, "stray"); code != 2 {
		t.Fatalf("stray argument: exit %d", code)
	}
}

func TestKeygenCertificateChain(t *testing.T) {
	dir := t.TempDir()
	key, cert := filepath.Join(dir, "id.key"), filepath.Join(dir, "server.pem")
	code, out, errOut := runKeygen(t, "-out", key, "-cert", cert, "-names", "chat.example, 127.0.0.1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for path, mode := range map[string]os.FileMode{key: 0o600, filepath.Join(dir, "ca.key"): 0o600, cert: 0o644, filepath.Join(dir, "ca.pem"): 0o644} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != mode {
			t.Fatalf("%s: %v mode %v", path, err, st)
		}
	}
	if !strings.Contains(out, "ca.pem") {
		t.Fatal(out)
	}
	keyPEM, _ := os.ReadFile(key)
	chainPEM, _ := os.ReadFile(cert)
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	c, err := ugcrypto.LoadCertificatePEM(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf().SignatureAlgorithm != smx509.SM2WithSM3 {
		t.Fatalf("leaf signed with %v", c.Leaf().SignatureAlgorithm)
	}
	roots := smx509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem does not parse")
	}
	// A GM handshake authenticated by the chain, for both names; another name fails.
	server := &ugcrypto.ServerConfig{Certificates: []*ugcrypto.Certificate{c}}
	for _, name := range []string{"chat.example", "127.0.0.1", "other.example"} {
		ch, err := ugcrypto.NewClientHandshake(&ugcrypto.ClientConfig{Suites: []*ugcrypto.Suite{ugcrypto.GM}, Roots: roots, ServerName: name})
		if err != nil {
			t.Fatal(err)
		}
		sh, err := ugcrypto.NewServerHandshake(server).HandleClientHello(ch.Hello())
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = ch.HandleServerHello(sh)
		if (err == nil) != (name != "other.example") {
			t.Fatalf("%s: %v", name, err)
		}
	}
}
