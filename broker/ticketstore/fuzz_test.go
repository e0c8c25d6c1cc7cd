package ticketstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
)

// fuzzWrapper is the fixed wrapper the seed corpus in
// testdata/fuzz/FuzzParseEntry was written with.
func fuzzWrapper(tb testing.TB) *atrest.MasterKey {
	tb.Helper()
	w, err := atrest.NewMasterKey(bytes.Repeat([]byte{0x42}, atrest.MasterKeySize))
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

// fuzzEntry is a valid ring entry of n keys under w.
func fuzzEntry(tb testing.TB, w atrest.KeyWrapper, n int) []byte {
	tb.Helper()
	aead := crypto.SM4GCM
	e := ringEntry{V: 1, Alg: aead.Name(), Wrapper: w.ID()}
	for i := range n {
		secret := bytes.Repeat([]byte{byte(i + 1)}, aead.KeySize())
		id := crypto.TicketKeyID(secret)
		active := int64(1_800_000_000_000 - i*3_600_000)
		wrapped, err := w.Wrap(secret, keyAAD(id, aead.Name(), active))
		if err != nil {
			tb.Fatal(err)
		}
		e.Keys = append(e.Keys, ringKey{ID: formatKeyID(id), Active: active, Wrapped: wrapped})
	}
	data, err := json.Marshal(e)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// FuzzParseEntry: no input panics; every refusal wraps ErrMalformed or
// ErrUnwrap and returns nothing; what is accepted is a ring the keyring
// takes, whose keys are the ones their ids name.
func FuzzParseEntry(f *testing.F) {
	w := fuzzWrapper(f)
	f.Add(fuzzEntry(f, w, 1))
	f.Add(fuzzEntry(f, w, 3))
	f.Add([]byte(`{"v":1,"alg":"SM4-GCM","wrapper":"","keys":[]}`))
	f.Add([]byte(`{"v":1,"alg":"SM4-GCM","keys":[{"id":"00000000","active":-1,"wrapped":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"id":"0000000000","active":1e30}]}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, keys, err := parseEntry(data, w, crypto.SM4GCM)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnwrap) {
				t.Fatalf("error %v wraps neither ErrMalformed nor ErrUnwrap", err)
			}
			if e != nil || keys != nil {
				t.Fatal("a refused entry returned keys")
			}
			return
		}
		defer wipeKeys(keys)
		if len(keys) != len(e.Keys) || len(keys) == 0 || len(keys) > MaxRingKeys {
			t.Fatalf("%d keys for %d entries", len(keys), len(e.Keys))
		}
		for i, k := range keys {
			if id, _ := parseKeyID(e.Keys[i].ID); crypto.TicketKeyID(k.Secret) != id {
				t.Fatalf("key %d is not the key its id names", i)
			}
		}
		kr, err := crypto.NewTicketKeyring(crypto.SM4GCM, 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := kr.SetSharedKeys(keys); err != nil {
			t.Fatalf("the keyring refuses an accepted ring: %v", err)
		}
	})
}

// TestFuzzSeedsParse: the valid seeds of the corpus stay valid (so the
// fuzzer starts from entries that get past the checks).
func TestFuzzSeedsParse(t *testing.T) {
	w := fuzzWrapper(t)
	for _, name := range []string{"valid-1", "valid-4"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzParseEntry", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(raw), "\n", 3)
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, keys, err := parseEntry([]byte(s), w, crypto.SM4GCM); err != nil || len(keys) == 0 {
			t.Fatalf("seed %s does not parse: %v", name, err)
		}
	}
}
