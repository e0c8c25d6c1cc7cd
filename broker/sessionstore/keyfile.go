package sessionstore

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/unigate/unigate/crypto/atrest"
)

// LoadOrCreateKey returns the seal key kept in the file at path, creating
// it when it does not exist: KeySize random bytes (crypto/rand), written
// as hex and a newline to a 0600 file, in a directory created 0700.
// Creation is atomic (a temporary file hard-linked into place), so two
// processes starting together end up with the same key.
//
// It refuses, with an error wrapping ErrBadKey, a key file that group or
// others may access (mode & 0077 ≠ 0), a directory that group or others
// may write without the sticky bit, and a file that does not hold exactly
// 32 hex digits. Losing or replacing the key file only costs the snapshot:
// LoadSnapshot then reports that it was written with another key.
func LoadOrCreateKey(path string) ([]byte, error) {
	dir := filepath.Dir(path)
	if err := checkKeyDir(dir); err != nil {
		return nil, err
	}
	key, err := readKeyFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}

	key = make([]byte, KeySize)
	rand.Read(key)
	tmp, err := os.CreateTemp(dir, ".sessionkey-*") // 0600
	if err != nil {
		return nil, fmt.Errorf("sessionstore: key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(key) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("sessionstore: key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process won the race
			return readKeyFile(path)
		}
		return nil, fmt.Errorf("sessionstore: key file: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("sessionstore: key file: %w", err)
	}
	return key, nil
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBadKey, path)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("%w: key file %s is accessible by group or others (mode %v): chmod 600 it", ErrBadKey, path, m)
	}
	b, err := io.ReadAll(io.LimitReader(f, 2*KeySize+3))
	if err != nil {
		return nil, err
	}
	text := bytes.TrimRight(b, "\r\n")
	key := make([]byte, KeySize)
	if len(text) != 2*KeySize || len(b) > 2*KeySize+2 {
		return nil, fmt.Errorf("%w: key file %s must hold %d hex digits", ErrBadKey, path, 2*KeySize)
	}
	if _, err := hex.Decode(key, text); err != nil {
		return nil, fmt.Errorf("%w: key file %s: %v", ErrBadKey, path, err)
	}
	return key, nil
}

// wrappedKeyPurpose names the session seal key in its wrapped key file.
const wrappedKeyPurpose = "unigate/sessionstore/seal-key"

// LoadOrCreateWrappedKey is LoadOrCreateKey for encryption at rest
// (crypto/atrest): the seal key is kept in path wrapped by the master key
// (SM4-GCM under the master key's key-encryption key), so the data
// directory alone (a backup, a copied disk) no longer opens the snapshot.
//
//   - path exists: its key is unwrapped; if a previous master key wraps
//     it (after a master key rotation), it is rewrapped under the current
//     one.
//   - path is missing and legacyPath holds a clear key (LoadOrCreateKey's
//     file, from before encryption at rest was enabled): that key is
//     wrapped into path and legacyPath removed (migrated is true), so the
//     snapshot written with it stays readable.
//   - neither: a new random key is wrapped into path.
//
// A file that masters cannot unwrap (another master key, a damaged file)
// returns an error wrapping ErrBadKey and atrest.ErrWrongMasterKey: the
// caller logs it and starts empty with NewWrappedKey.
func LoadOrCreateWrappedKey(path, legacyPath string, masters *atrest.MasterKeys) (key []byte, migrated bool, err error) {
	if err := checkKeyDir(filepath.Dir(path)); err != nil {
		return nil, false, err
	}
	key, wrappedBy, err := atrest.ReadWrappedKeyFile(path, wrappedKeyPurpose, masters)
	switch {
	case err == nil:
		if len(key) != KeySize {
			return nil, false, fmt.Errorf("%w: %s holds a %d-byte key", ErrBadKey, path, len(key))
		}
		if cur := masters.Current(); wrappedBy != cur.ID() {
			if err := atrest.WriteWrappedKeyFile(path, wrappedKeyPurpose, key, cur); err != nil {
				return nil, false, err
			}
		}
		return key, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	if legacyPath != "" {
		key, err = readKeyFile(legacyPath)
		switch {
		case err == nil:
			if err := atrest.WriteWrappedKeyFile(path, wrappedKeyPurpose, key, masters.Current()); err != nil {
				return nil, false, err
			}
			if err := os.Remove(legacyPath); err != nil {
				return nil, false, fmt.Errorf("sessionstore: removing the clear key file after wrapping it: %w", err)
			}
			return key, true, syncDir(filepath.Dir(legacyPath))
		case !errors.Is(err, fs.ErrNotExist):
			return nil, false, err
		}
	}
	key, err = NewWrappedKey(path, masters)
	return key, false, err
}

// NewWrappedKey writes a new random seal key to path, wrapped by the
// current master key, replacing any file there (snapshots sealed with the
// previous key can no longer be restored).
func NewWrappedKey(path string, masters *atrest.MasterKeys) ([]byte, error) {
	if err := checkKeyDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	key := make([]byte, KeySize)
	rand.Read(key)
	if err := atrest.WriteWrappedKeyFile(path, wrappedKeyPurpose, key, masters.Current()); err != nil {
		return nil, err
	}
	return key, nil
}

// checkKeyDir creates dir (0700) and refuses one that group or others may
// write without the sticky bit.
func checkKeyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("sessionstore: key directory: %w", err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("sessionstore: key directory: %w", err)
	}
	if m := di.Mode(); m&0o022 != 0 && m&fs.ModeSticky == 0 {
		return fmt.Errorf("%w: directory %s is writable by group or others (mode %v): chmod 700 it", ErrBadKey, dir, m.Perm())
	}
	return nil
}
