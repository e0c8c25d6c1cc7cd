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
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sessionstore: key directory: %w", err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("sessionstore: key directory: %w", err)
	}
	if m := di.Mode(); m&0o022 != 0 && m&fs.ModeSticky == 0 {
		return nil, fmt.Errorf("%w: directory %s is writable by group or others (mode %v): chmod 700 it", ErrBadKey, dir, m.Perm())
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
