package atrest

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to ParseSealed and Keyring.Open (with a
// real keyring on an embedded NATS server). Nothing panics, every error
// wraps a sentinel, and the only input that opens is the one value the
// keyring sealed (GCM tags cannot be forged by mutation). Seeds in
// testdata/fuzz/FuzzOpen include malformed lengths, versions and key ids.
func FuzzOpen(f *testing.F) {
	js := startJS(f)
	k := openRing(f, js, newMasters(f), Options{})
	aad := []byte("acme/c_1/1")
	plain := []byte("你好, order 42")
	sealed, err := k.Seal(nil, plain, aad)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed)
	f.Add(sealed[:Overhead])
	f.Add(append(bytes.Clone(sealed), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, perr := ParseSealed(b)
		if perr == nil && (s.KeyID == 0 || len(s.Nonce) != NonceSize || len(s.Ciphertext) < TagSize) {
			t.Fatalf("parsed out of bounds: %+v", s)
		}
		got, err := k.Open([]byte("dst"), b, aad)
		if err != nil {
			if string(got) != "dst" {
				t.Fatalf("failed open changed dst: %q", got)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrAuth) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			if (perr != nil) != errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseSealed %v but Open %v", perr, err)
			}
			return
		}
		if !bytes.Equal(b, sealed) || !bytes.Equal(got[3:], plain) {
			t.Fatalf("opened a value the keyring never sealed: %x -> %q", b, got)
		}
	})
}
