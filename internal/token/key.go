package token

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
	"runtime"
)

// maxKeyFileLen bounds what LoadOrCreateKey reads; a key file is 65 bytes.
const maxKeyFileLen = 4096

// LoadOrCreateKey returns the HMAC key stored hex-encoded in the file at
// path, creating the file with MinKeyLen random bytes (crypto/rand) if it
// does not exist. created reports whether this call created it.
//
// A new file gets mode 0600; missing directories are created with 0700.
// An existing file that group or others can access is refused with
// ErrInsecureKeyFile (except on Windows, which has no such mode bits),
// because whoever reads the key can mint agent tokens.
//
// Creation is atomic: the key is written to a temporary file in the same
// directory and hard-linked into place, which fails if path already
// exists, so processes starting at once all end up with the key of the
// first one to link, and no reader ever sees a partial file. On file
// systems without hard links it falls back to rename, which keeps the
// file whole but may let a concurrent creator's key replace this one.
func LoadOrCreateKey(path string) (key []byte, created bool, err error) {
	key, err = readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	key, err = createKey(path)
	if errors.Is(err, fs.ErrExist) {
		key, err = readKey(path) // another process won the race
		return key, false, err
	}
	if err != nil {
		return nil, false, err
	}
	return key, true, nil
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("token: key file: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("token: key file: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("token: key file %s is not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("%w: %s has mode %04o, readable or writable by group or others; fix it with: chmod 600 %s",
			ErrInsecureKeyFile, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileLen+1))
	if err != nil {
		return nil, fmt.Errorf("token: key file: %w", err)
	}
	text := bytes.TrimSpace(data)
	if len(data) > maxKeyFileLen {
		return nil, fmt.Errorf("token: key file %s is larger than %d bytes; it should hold one hex-encoded key", path, maxKeyFileLen)
	}
	key := make([]byte, hex.DecodedLen(len(text)))
	if _, err := hex.Decode(key, text); err != nil {
		return nil, fmt.Errorf("token: key file %s: not hex: %v", path, err)
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("%w: %s holds %d bytes, need at least %d; delete it to generate a new key",
			ErrKeyTooShort, path, len(key), MinKeyLen)
	}
	return key, nil
}

// createKey writes a new key to path and fails with fs.ErrExist if path
// appeared meanwhile.
func createKey(path string) ([]byte, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("token: key directory: %w", err)
	}
	key := make([]byte, MinKeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("token: random key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".hmac-key-*.tmp") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("token: key file: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	_, err = tmp.WriteString(hex.EncodeToString(key) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("token: writing key file: %w", err)
	}
	err = os.Link(tmpName, path)
	if err == nil {
		syncDir(dir)
		return key, nil
	}
	if errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	// No hard links here (some FUSE and SMB mounts): rename, after a last
	// look, is the best remaining option.
	if _, statErr := os.Lstat(path); statErr == nil {
		return nil, fs.ErrExist
	}
	if err := os.Rename(tmpName, path); err != nil {
		return nil, fmt.Errorf("token: key file: %w", err)
	}
	syncDir(dir)
	return key, nil
}

// syncDir makes a new directory entry durable, so a key that signed
// tokens survives a power cut. Best effort: not every system can sync a
// directory.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
