package atrest

import (
	"bufio"
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/emmansun/gmsm/kdf"
	"github.com/emmansun/gmsm/sm3"

	"github.com/unigate/unigate/crypto"
)

// KeyWrapper wraps and unwraps data keys under a key-encryption key: the
// seam where a certified hardware crypto module replaces the software
// master key. The software implementation is [MasterKey] (SM4-GCM under a
// key derived from a file). An implementation must be safe for
// concurrent use and must never log or return key material in errors.
type KeyWrapper interface {
	// ID identifies the wrapping key: a short, stable, non-secret string
	// (MasterKey: 16 hex digits) stored next to every key it wraps, so
	// that the right wrapper is chosen after a rotation.
	ID() string
	// Wrap returns key sealed under the wrapping key, bound to aad.
	Wrap(key, aad []byte) ([]byte, error)
	// Unwrap returns the key Wrap sealed with the same aad, or an error
	// when wrapped was altered, belongs to another aad or another key.
	Unwrap(wrapped, aad []byte) ([]byte, error)
}

// MasterKeySize is the size of the master key material in the master key
// file (32 bytes, 64 hex digits).
const MasterKeySize = 32

// Derivation labels (GB/T 32918.4 KDF over SM3, Z = master ‖ label).
const (
	labelKEK      = "unigate/atrest/v1/kek"
	labelMasterID = "unigate/atrest/v1/master-id"
)

// MasterKey is the software KeyWrapper: the key-encryption key is 16
// bytes derived from the master key material with the SM3 KDF of GB/T
// 32918.4 (label "unigate/atrest/v1/kek"), and a wrapped key is
//
//	nonce (12, crypto/rand) | SM4-GCM(kek, nonce, key, aad) | tag (16)
//
// The id is 8 bytes of the same KDF with another label, in hex: it names
// the key without revealing anything about it.
type MasterKey struct {
	id   string
	aead cipher.AEAD
}

var _ KeyWrapper = (*MasterKey)(nil)

// NewMasterKey derives the master key from MasterKeySize bytes of key
// material. The Store keeps only derived values.
func NewMasterKey(material []byte) (*MasterKey, error) {
	if len(material) != MasterKeySize {
		return nil, fmt.Errorf("%w: master key of %d bytes, want %d", ErrKeyFile, len(material), MasterKeySize)
	}
	kek := derive(material, labelKEK, crypto.SM4GCM.KeySize())
	defer clear(kek)
	aead, err := crypto.SM4GCM.New(kek)
	if err != nil {
		return nil, err
	}
	return &MasterKey{id: hex.EncodeToString(derive(material, labelMasterID, 8)), aead: aead}, nil
}

func derive(material []byte, label string, n int) []byte {
	z := make([]byte, 0, len(material)+len(label))
	z = append(append(z, material...), label...)
	defer clear(z)
	return kdf.Kdf(sm3.New, z, n)
}

// ID implements KeyWrapper.
func (m *MasterKey) ID() string { return m.id }

// Wrap implements KeyWrapper.
func (m *MasterKey) Wrap(key, aad []byte) ([]byte, error) {
	out := make([]byte, NonceSize, NonceSize+len(key)+TagSize)
	rand.Read(out) // never fails (Go 1.24+)
	return m.aead.Seal(out, out[:NonceSize], key, aad), nil
}

// Unwrap implements KeyWrapper.
func (m *MasterKey) Unwrap(wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < NonceSize+TagSize {
		return nil, errors.New("wrapped key too short")
	}
	key, err := m.aead.Open(nil, wrapped[:NonceSize], wrapped[NonceSize:], aad)
	if err != nil {
		return nil, errors.New("wrapped key failed authentication")
	}
	return key, nil
}

// MasterKeys is the set of master keys a node knows: the current one
// wraps new data keys; the previous ones only unwrap (during a master key
// rotation). It is immutable and safe for concurrent use.
type MasterKeys struct {
	all  []KeyWrapper // current first
	path string       // the file it was loaded from, for messages ("" if none)
}

// NewMasterKeys returns the set with current first. IDs must be distinct.
func NewMasterKeys(current KeyWrapper, previous ...KeyWrapper) (*MasterKeys, error) {
	if current == nil {
		return nil, fmt.Errorf("%w: no current master key", ErrKeyFile)
	}
	all := append([]KeyWrapper{current}, previous...)
	for i, w := range all {
		for _, v := range all[:i] {
			if v.ID() == w.ID() {
				return nil, fmt.Errorf("%w: master key %s is listed twice", ErrKeyFile, w.ID())
			}
		}
	}
	return &MasterKeys{all: all}, nil
}

// Current returns the master key that wraps new data keys.
func (m *MasterKeys) Current() KeyWrapper { return m.all[0] }

// Get returns the master key with the given id, or nil.
func (m *MasterKeys) Get(id string) KeyWrapper {
	for _, w := range m.all {
		if w.ID() == id {
			return w
		}
	}
	return nil
}

// IDs returns the ids, current first.
func (m *MasterKeys) IDs() []string {
	ids := make([]string, len(m.all))
	for i, w := range m.all {
		ids[i] = w.ID()
	}
	return ids
}

// Source names where the set came from (the file), for messages.
func (m *MasterKeys) Source() string {
	if m.path == "" {
		return "the master key set"
	}
	return m.path
}

// unknownMaster is the error for a master id the set lacks.
func (m *MasterKeys) unknownMaster(what, id string) error {
	return fmt.Errorf("%w: %s is wrapped with master key %s, which %s does not hold (it holds %s); every node needs the same master key file",
		ErrWrongMasterKey, what, id, m.Source(), strings.Join(m.IDs(), ", "))
}

// Master key file: one key per line, 64 hex digits, the current key
// first; blank lines and lines starting with '#' are ignored.
const (
	maxKeyFileBytes = 64 << 10
	maxMasterKeys   = 16
	keyFileHeader   = "# Unigate master key file (encryption at rest, docs/crypto.md).\n" +
		"# The first key wraps new data keys; the others only unwrap. Keep it 0600, never in the data backup.\n"
)

// LoadMasterKeyFile reads the master key file at path. It refuses, with
// ErrInsecureKeyFile, a file that group or others may access, and with
// ErrKeyFile a file that is not a regular file or holds no key, a line
// that is not 64 hex digits, or the same key twice.
func LoadMasterKeyFile(path string) (*MasterKeys, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	var keys []KeyWrapper
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		material := make([]byte, MasterKeySize)
		if len(text) != 2*MasterKeySize {
			return nil, fmt.Errorf("%w: %s line %d: want %d hex digits", ErrKeyFile, path, line, 2*MasterKeySize)
		}
		if _, err := hex.Decode(material, []byte(text)); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: not hex", ErrKeyFile, path, line)
		}
		k, err := NewMasterKey(material)
		clear(material)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
		if len(keys) > maxMasterKeys {
			return nil, fmt.Errorf("%w: %s holds more than %d keys", ErrKeyFile, path, maxMasterKeys)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %s holds no key", ErrKeyFile, path)
	}
	m, err := NewMasterKeys(keys[0], keys[1:]...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.path = path
	return m, nil
}

// LoadOrCreateMasterKeyFile is LoadMasterKeyFile, creating the file with
// one random key (crypto/rand) when it does not exist: mode 0600, missing
// directories 0700. Creation is atomic (a temporary file hard-linked into
// place), so processes starting together end up with the same key.
// created reports whether this call created the file.
func LoadOrCreateMasterKeyFile(path string) (m *MasterKeys, created bool, err error) {
	return LoadOrCreateKeyFile(path, keyFileHeader)
}

// LoadOrCreateKeyFile is LoadOrCreateMasterKeyFile for a wrapping key of
// another purpose (the ticket key file): the same format, with header
// (comment lines, each starting with '#' and ending with a newline) at
// the top of a file it creates.
func LoadOrCreateKeyFile(path, header string) (m *MasterKeys, created bool, err error) {
	m, err = LoadMasterKeyFile(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return m, false, err
	}
	material := make([]byte, MasterKeySize)
	rand.Read(material)
	content := header + hex.EncodeToString(material) + "\n"
	clear(material)
	err = writeKeyFile(path, []byte(content), false)
	if errors.Is(err, fs.ErrExist) {
		m, err = LoadMasterKeyFile(path) // another process won the race
		return m, false, err
	}
	if err != nil {
		return nil, false, err
	}
	m, err = LoadMasterKeyFile(path)
	return m, err == nil, err
}

// RotateMasterKeyFile adds a new random master key at the top of the file
// at path; the previous keys stay below it, for unwrapping, until every
// data key is rewrapped (Keyring.Rewrap) and they are removed by hand.
// The file is replaced atomically and keeps mode 0600. It returns the new
// set.
func RotateMasterKeyFile(path string) (*MasterKeys, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := LoadMasterKeyFile(path); err != nil {
		return nil, err
	}
	var kept []string
	for l := range strings.SplitSeq(string(data), "\n") {
		if t := strings.TrimSpace(l); t != "" && t[0] != '#' {
			kept = append(kept, t)
		}
	}
	if len(kept) >= maxMasterKeys {
		return nil, fmt.Errorf("%w: %s already holds %d keys; remove the ones no data key uses (unigate keys status)", ErrKeyFile, path, len(kept))
	}
	material := make([]byte, MasterKeySize)
	rand.Read(material)
	lines := append([]string{hex.EncodeToString(material)}, kept...)
	clear(material)
	content := keyFileHeader + strings.Join(lines, "\n") + "\n"
	if err := writeKeyFile(path, []byte(content), true); err != nil {
		return nil, err
	}
	return LoadMasterKeyFile(path)
}

// readKeyFile reads a key file after checking that it is a regular file
// only its owner may access.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("atrest: key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("atrest: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("%w: %s has mode %04o; fix it with: chmod 600 %s", ErrInsecureKeyFile, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("atrest: key file: %w", err)
	}
	if len(data) > maxKeyFileBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrKeyFile, path, maxKeyFileBytes)
	}
	return data, nil
}

// writeKeyFile writes content to path with mode 0600 through a temporary
// file in the same directory (created 0700 if missing), fsynced. With
// replace the temporary file is renamed over path; without, it is
// hard-linked, which fails with fs.ErrExist if path exists.
func writeKeyFile(path string, content []byte, replace bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("atrest: key directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".unigate-key-*.tmp") // 0600
	if err != nil {
		return fmt.Errorf("atrest: key file: %w", err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	_, err = tmp.Write(content)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("atrest: writing key file: %w", err)
	}
	if replace {
		err = os.Rename(name, path)
	} else {
		err = os.Link(name, path)
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("atrest: key file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
