package sessionstore

import (
	"bytes"
	"testing"
)

// FuzzOpenValue feeds arbitrary stored bytes and keys to the stored-value
// decoder. Nothing may panic; anything not sealed under this exact key
// fails; and a value the fuzzer seals itself opens to the same bytes.
// Seeds (testdata/fuzz/FuzzOpenValue) include empty, 1-byte, header-only,
// 16-byte (a chunk metavalue), one-short-of-minimum, wrong-version and
// valid sealed values.
func FuzzOpenValue(f *testing.F) {
	k, err := deriveKeys(testKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, key string, stored []byte) {
		deadline, derr := valueDeadline(stored)
		out, _, err := openValue(k.value, []byte("dst"), nil, key, stored)
		if derr != nil && err == nil {
			t.Fatalf("opened a value whose header does not parse: %v", derr)
		}
		if err != nil {
			if string(out) != "dst" {
				t.Fatalf("failed open changed dst: %q", out)
			}
		} else if !bytes.HasPrefix(out, []byte("dst")) || len(out) != 3+len(stored)-valueOverhead {
			t.Fatalf("open: %d bytes out of %d stored", len(out), len(stored))
		}

		// Round trip: seal the input as a value, under the fuzzed key.
		sealed, _ := sealValue(k.value, nil, nil, key, stored, deadline)
		back, _, err := openValue(k.value, nil, nil, key, sealed)
		if err != nil || !bytes.Equal(back, stored) {
			t.Fatalf("round trip: %v", err)
		}
		if d, _ := valueDeadline(sealed); d != deadline {
			t.Fatalf("deadline %d, want %d", d, deadline)
		}
		if _, _, err := openValue(k.value, nil, nil, key+"x", sealed); err == nil {
			t.Fatal("opened under another key")
		}
	})
}
