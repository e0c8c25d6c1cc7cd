package sessionstore

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets", "session.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if len(k1) != KeySize || bytes.Equal(k1, make([]byte, KeySize)) {
		t.Fatalf("key %x", k1)
	}
	for p, want := range map[string]fs.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode().Perm(), err, want)
		}
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reload: %x, %v; want %x", k2, err, k1)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".sessionkey-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// The key works with a Store.
	s, err := New(Options{}, k1)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func TestLoadOrCreateKeyErrors(t *testing.T) {
	const hexKey = "00112233445566778899aabbccddeeff"
	tests := []struct {
		name     string
		content  string
		fileMode fs.FileMode
		dirMode  fs.FileMode
	}{
		{"group readable", hexKey + "\n", 0o640, 0o700},
		{"world readable", hexKey + "\n", 0o604, 0o700},
		{"group writable", hexKey + "\n", 0o620, 0o700},
		{"directory writable by others", hexKey + "\n", 0o600, 0o777},
		{"directory writable by group", hexKey + "\n", 0o600, 0o770},
		{"empty", "", 0o600, 0o700},
		{"short", hexKey[:30] + "\n", 0o600, 0o700},
		{"long", hexKey + "00\n", 0o600, 0o700},
		{"trailing garbage", hexKey + "\nxx", 0o600, 0o700},
		{"not hex", "zz" + hexKey[2:] + "\n", 0o600, 0o700},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			path := filepath.Join(dir, "session.key")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			// Explicit chmod: WriteFile and Mkdir honour the umask.
			if err := os.Chmod(path, tt.fileMode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tt.dirMode); err != nil {
				t.Fatal(err)
			}
			key, err := LoadOrCreateKey(path)
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("LoadOrCreateKey = %x, %v; want ErrBadKey", key, err)
			}
		})
	}
}

func TestLoadOrCreateKeyAccepts(t *testing.T) {
	const hexKey = "00112233445566778899AABBCCDDEEFF"
	for _, content := range []string{hexKey, hexKey + "\n", hexKey + "\r\n"} {
		path := filepath.Join(t.TempDir(), "session.key")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		key, err := LoadOrCreateKey(path)
		if err != nil || key[15] != 0xff || key[0] != 0 {
			t.Errorf("%q: %x, %v", content, key, err)
		}
	}
}
