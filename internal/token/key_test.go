package token

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

func TestLoadOrCreateKeyCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "keys") // parents are missing
	path := filepath.Join(dir, "hmac.key")
	key, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	if len(key) != MinKeyLen || bytes.Equal(key, make([]byte, MinKeyLen)) {
		t.Errorf("key = %x", key)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(key) + "\n"; string(data) != want {
		t.Errorf("file holds %q, want %q", data, want)
	}
	if runtime.GOOS != "windows" {
		checkMode(t, path, 0o600)
		checkMode(t, dir, 0o700)
		checkMode(t, filepath.Dir(dir), 0o700)
	}

	again, created, err := LoadOrCreateKey(path)
	if err != nil || created || !bytes.Equal(again, key) {
		t.Errorf("second call: created=%v err=%v same=%v", created, err, bytes.Equal(again, key))
	}
	if _, err := NewSigner(key); err != nil {
		t.Errorf("NewSigner(created key): %v", err)
	}
}

func TestLoadOrCreateKeyReadsExisting(t *testing.T) {
	tests := []struct {
		name, content string
		want          []byte
	}{
		{"hex with newline", hex.EncodeToString(testKey) + "\n", testKey},
		{"upper-case hex, CRLF", "  " + hexUpper(testKey) + "\r\n", testKey},
		{"64-byte key", hex.EncodeToString(bytes.Repeat(testKey, 2)), bytes.Repeat(testKey, 2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeKeyFile(t, tt.content, 0o600)
			key, created, err := LoadOrCreateKey(path)
			if err != nil || created || !bytes.Equal(key, tt.want) {
				t.Errorf("got %x, created=%v, err=%v", key, created, err)
			}
		})
	}
}

func TestLoadOrCreateKeyRejects(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permissions")
	}
	good := hex.EncodeToString(testKey)
	tests := []struct {
		name    string
		content string
		mode    fs.FileMode
		target  error
		mention string
	}{
		{"group readable", good, 0o640, ErrInsecureKeyFile, "chmod 600"},
		{"world readable", good, 0o604, ErrInsecureKeyFile, "chmod 600"},
		{"group writable", good, 0o620, ErrInsecureKeyFile, "0620"},
		{"not hex", "not a key at all, definitely not", 0o600, nil, "not hex"},
		{"odd hex", good[:63], 0o600, nil, "not hex"},
		{"too short", good[:62], 0o600, ErrKeyTooShort, "delete it"},
		{"empty", "", 0o600, ErrKeyTooShort, "delete it"},
		{"huge", string(bytes.Repeat([]byte("00"), maxKeyFileLen)), 0o600, nil, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeKeyFile(t, tt.content, tt.mode)
			key, created, err := LoadOrCreateKey(path)
			if err == nil || key != nil || created {
				t.Fatalf("got key=%x created=%v err=%v", key, created, err)
			}
			if tt.target != nil {
				wantErr(t, err, tt.target, tt.mention)
			} else if !bytes.Contains([]byte(err.Error()), []byte(tt.mention)) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
			if data, _ := os.ReadFile(path); string(data) != tt.content {
				t.Error("the rejected file was changed")
			}
		})
	}
}

func TestLoadOrCreateKeyNotAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hmac.key")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(path); err == nil {
		t.Error("a directory was accepted as the key file")
	}
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(filepath.Join(blocker, "hmac.key")); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("key under a regular file: %v", err)
	}
}

// TestLoadOrCreateKeyRace starts many callers at once on a missing file:
// all must get the same key and exactly one must have created it, with no
// temporary files left behind.
func TestLoadOrCreateKeyRace(t *testing.T) {
	const callers = 16
	for round := range 20 {
		dir := t.TempDir()
		path := filepath.Join(dir, "hmac.key")
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			keys    [callers][]byte
			created [callers]bool
			errs    [callers]error
		)
		for i := range callers {
			wg.Go(func() {
				<-start
				keys[i], created[i], errs[i] = LoadOrCreateKey(path)
			})
		}
		close(start)
		wg.Wait()
		creators := 0
		for i := range callers {
			if errs[i] != nil {
				t.Fatalf("round %d caller %d: %v", round, i, errs[i])
			}
			if !bytes.Equal(keys[i], keys[0]) {
				t.Fatalf("round %d: caller %d got a different key", round, i)
			}
			if created[i] {
				creators++
			}
		}
		if creators != 1 {
			t.Fatalf("round %d: %d callers say they created the key", round, creators)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 1 {
			t.Fatalf("round %d: directory holds %v (%v)", round, entries, err)
		}
		onDisk, _, err := LoadOrCreateKey(path)
		if err != nil || !bytes.Equal(onDisk, keys[0]) {
			t.Fatalf("round %d: the file holds another key", round)
		}
	}
}

func writeKeyFile(tb testing.TB, content string, mode fs.FileMode) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "hmac.key")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // not subject to umask
		tb.Fatal(err)
	}
	return path
}

func checkMode(tb testing.TB, path string, want fs.FileMode) {
	tb.Helper()
	info, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	if got := info.Mode().Perm(); got != want {
		tb.Errorf("%s has mode %04o, want %04o", path, got, want)
	}
}

func hexUpper(b []byte) string {
	return string(bytes.ToUpper([]byte(hex.EncodeToString(b))))
}
