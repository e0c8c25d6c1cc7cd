package sessionstore

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/crypto/atrest"
)

func masterKeys(tb testing.TB, path string) *atrest.MasterKeys {
	tb.Helper()
	m, _, err := atrest.LoadOrCreateMasterKeyFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// saveWith saves a snapshot of one session sealed with key and returns
// its path.
func saveWith(t *testing.T, dir string, key []byte) string {
	t.Helper()
	s, err := New(Options{}, key)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(sessionKey(1), sessionValue(1), time.Hour); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sessions.snap")
	if err := s.SaveSnapshot(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func restores(t *testing.T, snap string, key []byte) error {
	t.Helper()
	s, err := LoadSnapshot(snap, Options{}, key)
	if err != nil {
		return err
	}
	defer s.Close()
	if v, ok := s.Get(nil, sessionKey(1)); !ok || !bytes.Equal(v, sessionValue(1)) {
		t.Fatal("restored snapshot lacks the session")
	}
	return nil
}

func TestWrappedKey(t *testing.T) {
	dir := t.TempDir()
	masters := masterKeys(t, filepath.Join(t.TempDir(), "master.key"))
	path := filepath.Join(dir, "session.key.wrapped")
	k1, migrated, err := LoadOrCreateWrappedKey(path, filepath.Join(dir, "session.key"), masters)
	if err != nil || migrated || len(k1) != KeySize {
		t.Fatalf("create: %x %v %v", k1, migrated, err)
	}
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, k1) || strings.Contains(string(raw), hex.EncodeToString(k1)) {
		t.Fatal("the wrapped key file holds the key in clear")
	}
	k2, _, err := LoadOrCreateWrappedKey(path, "", masters)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reload: %v", err)
	}
	snap := saveWith(t, dir, k1)
	if err := restores(t, snap, k2); err != nil {
		t.Fatal(err)
	}
}

// TestWrappedKeyMigration: enabling encryption at rest keeps the snapshot
// written with the clear key, and removes the clear key.
func TestWrappedKeyMigration(t *testing.T) {
	dir := t.TempDir()
	legacy := filepath.Join(dir, "session.key")
	old, err := LoadOrCreateKey(legacy)
	if err != nil {
		t.Fatal(err)
	}
	snap := saveWith(t, dir, old)
	masters := masterKeys(t, filepath.Join(t.TempDir(), "master.key"))
	key, migrated, err := LoadOrCreateWrappedKey(filepath.Join(dir, "session.key.wrapped"), legacy, masters)
	if err != nil || !migrated || !bytes.Equal(key, old) {
		t.Fatalf("migration: %v %v", migrated, err)
	}
	if _, err := os.Stat(legacy); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("clear key left behind: %v", err)
	}
	if err := restores(t, snap, key); err != nil {
		t.Fatal(err)
	}
}

// TestWrappedKeyWrongMaster: another master key is refused with a clear
// error; a new key then makes the old snapshot refused as "written with
// another key" (the empty start).
func TestWrappedKeyWrongMaster(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "session.key.wrapped")
	right := masterKeys(t, filepath.Join(t.TempDir(), "master.key"))
	key, _, err := LoadOrCreateWrappedKey(path, "", right)
	if err != nil {
		t.Fatal(err)
	}
	snap := saveWith(t, dir, key)
	wrong := masterKeys(t, filepath.Join(t.TempDir(), "master.key"))
	_, _, err = LoadOrCreateWrappedKey(path, "", wrong)
	if !errors.Is(err, ErrBadKey) || !errors.Is(err, atrest.ErrWrongMasterKey) {
		t.Fatalf("wrong master: %v", err)
	}
	fresh, err := NewWrappedKey(path, wrong)
	if err != nil {
		t.Fatal(err)
	}
	if err := restores(t, snap, fresh); !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), "another key") {
		t.Fatalf("snapshot with a new key: %v", err)
	}
}

// TestWrappedKeyMasterRotation: after a master key rotation the file is
// rewrapped under the new master key on the next load; the key and the
// snapshot stay.
func TestWrappedKeyMasterRotation(t *testing.T) {
	dir := t.TempDir()
	mpath := filepath.Join(t.TempDir(), "master.key")
	m1 := masterKeys(t, mpath)
	path := filepath.Join(dir, "session.key.wrapped")
	key, _, err := LoadOrCreateWrappedKey(path, "", m1)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := atrest.RotateMasterKeyFile(mpath)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := LoadOrCreateWrappedKey(path, "", m2)
	if err != nil || !bytes.Equal(again, key) {
		t.Fatalf("after rotation: %v", err)
	}
	only2, _ := atrest.NewMasterKeys(m2.Current())
	if k, _, err := LoadOrCreateWrappedKey(path, "", only2); err != nil || !bytes.Equal(k, key) {
		t.Fatalf("new master alone: %v", err)
	}
}
