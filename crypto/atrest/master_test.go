package atrest

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestMasterKeyWrap(t *testing.T) {
	m := newMasters(t).Current()
	key := []byte("0123456789abcdef")
	w, err := m.Wrap(key, []byte("aad"))
	if err != nil || bytes.Contains(w, key) || len(w) != NonceSize+len(key)+TagSize {
		t.Fatalf("wrap: %x %v", w, err)
	}
	if got, err := m.Unwrap(w, []byte("aad")); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("unwrap: %x %v", got, err)
	}
	for name, c := range map[string]struct{ w, aad []byte }{
		"other aad": {w, []byte("aae")},
		"tampered":  {append(bytes.Clone(w[:len(w)-1]), w[len(w)-1]^1), []byte("aad")},
		"short":     {w[:NonceSize+TagSize-1], []byte("aad")},
	} {
		if _, err := m.Unwrap(c.w, c.aad); err == nil {
			t.Errorf("%s: unwrapped", name)
		}
	}
	if _, err := newMasters(t).Current().Unwrap(w, []byte("aad")); err == nil {
		t.Error("another master key unwrapped")
	}
	if _, err := NewMasterKey(make([]byte, 16)); !errors.Is(err, ErrKeyFile) {
		t.Errorf("16-byte master key: %v", err)
	}
}

// TestMasterKeyID: the id is a function of the key material only.
func TestMasterKeyID(t *testing.T) {
	material := bytes.Repeat([]byte{7}, MasterKeySize)
	a, _ := NewMasterKey(material)
	b, _ := NewMasterKey(material)
	c, _ := NewMasterKey(bytes.Repeat([]byte{8}, MasterKeySize))
	if a.ID() != b.ID() || a.ID() == c.ID() || len(a.ID()) != 16 {
		t.Fatalf("ids %s %s %s", a.ID(), b.ID(), c.ID())
	}
	if strings.Contains(a.ID(), "0707") {
		t.Fatal("id shows the key")
	}
}

func TestMasterKeyFile(t *testing.T) {
	path, m := masterFile(t)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v", di.Mode())
	}
	again, created, err := LoadOrCreateMasterKeyFile(path)
	if err != nil || created || again.Current().ID() != m.Current().ID() {
		t.Fatalf("reload: created=%v err=%v", created, err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateMasterKeyFile(path); !errors.Is(err, ErrInsecureKeyFile) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("0640 file: %v", err)
	}
	if _, err := LoadMasterKeyFile(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestKeyFileHeader: a wrapping key file of another purpose carries its
// own header, 0600, and loads like a master key file.
func TestKeyFileHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "ticket.key")
	const header = "# Unigate ticket key file.\n"
	m, created, err := LoadOrCreateKeyFile(path, header)
	if err != nil || !created {
		t.Fatalf("create: created=%v err=%v", created, err)
	}
	data, err := os.ReadFile(path)
	if err != nil || !strings.HasPrefix(string(data), header) || strings.Contains(string(data), "master key") {
		t.Fatalf("file %q (%v)", data, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	again, err := LoadMasterKeyFile(path)
	if err != nil || again.Current().ID() != m.Current().ID() {
		t.Fatalf("reload: %v", err)
	}
}

// TestMasterKeyFileRace: processes starting together share one key.
func TestMasterKeyFileRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.key")
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			m, _, err := LoadOrCreateMasterKeyFile(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = m.Current().ID()
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("ids differ: %v", ids)
		}
	}
}

func TestMasterKeyFileBad(t *testing.T) {
	dir := t.TempDir()
	hexKey := strings.Repeat("ab", MasterKeySize)
	cases := map[string]string{
		"empty":        "",
		"comment only": "# nothing\n",
		"short":        "abcd\n",
		"not hex":      strings.Repeat("zz", MasterKeySize) + "\n",
		"twice":        hexKey + "\n" + hexKey + "\n",
	}
	for name, content := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadMasterKeyFile(p); !errors.Is(err, ErrKeyFile) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := LoadMasterKeyFile(dir); !errors.Is(err, ErrKeyFile) {
		t.Errorf("directory: %v", err)
	}
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# comment\n\n  "+hexKey+"  \n"), 0o600)
	if _, err := LoadMasterKeyFile(good); err != nil {
		t.Errorf("comments and spaces: %v", err)
	}
}

func TestRotateMasterKeyFile(t *testing.T) {
	path, m1 := masterFile(t)
	m2, err := RotateMasterKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m3, err := RotateMasterKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ids := m3.IDs()
	if len(ids) != 3 || ids[1] != m2.Current().ID() || ids[2] != m1.Current().ID() {
		t.Fatalf("ids %v", ids)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode after rotation %v", fi.Mode())
	}
	os.Chmod(path, 0o644)
	if _, err := RotateMasterKeyFile(path); !errors.Is(err, ErrInsecureKeyFile) {
		t.Fatalf("rotate an insecure file: %v", err)
	}
}

func TestWrappedKeyFile(t *testing.T) {
	path, m1 := masterFile(t)
	kpath := filepath.Join(filepath.Dir(path), "session.key.wrapped")
	key := []byte("0123456789abcdef")
	if _, _, err := ReadWrappedKeyFile(kpath, "sessionstore", m1); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	if err := WriteWrappedKeyFile(kpath, "sessionstore", key, m1.Current()); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(kpath)
	if bytes.Contains(raw, key) {
		t.Fatal("key in clear")
	}
	got, mid, err := ReadWrappedKeyFile(kpath, "sessionstore", m1)
	if err != nil || !bytes.Equal(got, key) || mid != m1.Current().ID() {
		t.Fatalf("read: %x %s %v", got, mid, err)
	}
	if _, _, err := ReadWrappedKeyFile(kpath, "other", m1); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("other purpose: %v", err)
	}
	if _, _, err := ReadWrappedKeyFile(kpath, "sessionstore", newMasters(t)); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("another master: %v", err)
	}
	// The same id with altered bytes: does not unwrap.
	tampered := bytes.Replace(raw, []byte(`"wrapped":"`), []byte(`"wrapped":"AAAA`), 1)
	os.WriteFile(kpath, tampered, 0o600)
	if _, _, err := ReadWrappedKeyFile(kpath, "sessionstore", m1); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("tampered: %v", err)
	}
	os.WriteFile(kpath, []byte("{"), 0o600)
	if _, _, err := ReadWrappedKeyFile(kpath, "sessionstore", m1); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("malformed: %v", err)
	}
}

func TestParseSealed(t *testing.T) {
	b := make([]byte, Overhead)
	b[0], b[4] = Version, 9
	s, err := ParseSealed(b)
	if err != nil || s.KeyID != 9 || len(s.Nonce) != NonceSize || len(s.Ciphertext) != TagSize || len(s.Header) != HeaderSize {
		t.Fatalf("%+v %v", s, err)
	}
	for _, id := range []string{"", "0000000", "00000000", "0000000g", "000000001"} {
		if _, err := ParseKeyID(id); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseKeyID(%q): %v", id, err)
		}
	}
	if id, err := ParseKeyID(KeyID(0xdeadbeef).String()); err != nil || id != 0xdeadbeef {
		t.Errorf("round trip: %v %v", id, err)
	}
}
