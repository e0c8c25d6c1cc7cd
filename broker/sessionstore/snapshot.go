package sessionstore

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/fastcache"
	"github.com/emmansun/gmsm/sm3"
)

// Snapshot layout (see the package documentation):
//
//	path                  symlink → <base>.snap-<random>  (replaced atomically)
//	<base>.snap-<random>/
//	    MANIFEST          sealed manifest, 0600
//	    cache/            fastcache.SaveToFileConcurrent output, 0700
//	        metadata.bin  0600
//	        data.N.bin    0600
//
// MANIFEST: "UGSS" | version (1 byte) | key id (8) | nonce (12) |
// SM4-GCM(JSON manifest) with the first 13 bytes as additional data.
const (
	manifestName    = "MANIFEST"
	cacheDirName    = "cache"
	manifestMagic   = "UGSS"
	manifestVersion = 1
	manifestHdrLen  = len(manifestMagic) + 1 + 8
	maxManifestSize = 1 << 20
	snapInfix       = ".snap-"
)

type manifest struct {
	Version  int            `json:"version"`
	Capacity uint64         `json:"capacity"` // fastcache capacity in bytes
	Files    []manifestFile `json:"files"`    // sorted by name
}

type manifestFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	SM3  string `json:"sm3"` // hex
}

// SaveSnapshot writes the cache to path so that LoadSnapshot can restore it
// after a restart. It may run while other goroutines use the Store (the
// snapshot then holds each bucket as it was when it was copied); two
// SaveSnapshot calls on one Store run one after the other. Only one
// process may write a given path.
//
// path becomes a symbolic link to a sibling directory <base>.snap-<random>;
// the new snapshot replaces the old one with a single rename of the link,
// so a crash leaves either the old snapshot or the new one, never a mix.
// Directories are 0700, files 0600, and everything is fsynced before the
// switch. The previous snapshot directory, and any left by a crash, are
// removed afterwards. path must not be an existing real directory.
func (s *Store) SaveSnapshot(path string) error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()

	parent, base := filepath.Split(filepath.Clean(path))
	if parent == "" {
		parent = "."
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("sessionstore: snapshot: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("sessionstore: snapshot: %s exists and is not a snapshot link", path)
	}
	dir, err := os.MkdirTemp(parent, base+snapInfix)
	if err != nil {
		return fmt.Errorf("sessionstore: snapshot: %w", err)
	}
	if err := s.writeSnapshotDir(dir); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("sessionstore: snapshot: %w", err)
	}

	// Switch atomically: a new link renamed over the old one.
	link := filepath.Join(parent, "."+base+".link-"+randHex(8))
	if err := os.Symlink(filepath.Base(dir), link); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("sessionstore: snapshot: %w", err)
	}
	if err := os.Rename(link, path); err != nil {
		_ = os.Remove(link)
		_ = os.RemoveAll(dir)
		return fmt.Errorf("sessionstore: snapshot: %w", err)
	}
	if err := syncDir(parent); err != nil {
		return fmt.Errorf("sessionstore: snapshot: %w", err)
	}

	// Remove the previous snapshot and leftovers of interrupted saves.
	old, _ := filepath.Glob(filepath.Join(parent, globEscape(base)+snapInfix+"*"))
	for _, o := range old {
		if filepath.Base(o) != filepath.Base(dir) {
			_ = os.RemoveAll(o)
		}
	}
	return nil
}

func (s *Store) writeSnapshotDir(dir string) error {
	cacheDir := filepath.Join(dir, cacheDirName)
	if err := s.cache.SaveToFileConcurrent(cacheDir, 0); err != nil {
		return err
	}
	// fastcache creates its files with os.Create (0666 before umask) in a
	// 0700 directory; tighten them, and checksum them for the manifest.
	m := manifest{Version: manifestVersion, Capacity: capacity(s.opts.MaxBytes)}
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(cacheDir, e.Name())
		if !e.Type().IsRegular() {
			return fmt.Errorf("unexpected entry %s", p)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			return err
		}
		size, sum, err := hashFile(p, true)
		if err != nil {
			return err
		}
		m.Files = append(m.Files, manifestFile{Name: e.Name(), Size: size, SM3: hex.EncodeToString(sum)})
	}
	if err := os.Chmod(cacheDir, 0o700); err != nil {
		return err
	}
	if err := syncDir(cacheDir); err != nil {
		return err
	}
	plain, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(dir, manifestName), s.keys.sealManifest(plain)); err != nil {
		return err
	}
	return syncDir(dir)
}

func (k *keys) sealManifest(plain []byte) []byte {
	out := make([]byte, 0, manifestHdrLen+nonceLen+len(plain)+tagLen)
	out = append(out, manifestMagic...)
	out = append(out, manifestVersion)
	out = append(out, k.id[:]...)
	nonce := make([]byte, nonceLen)
	rand.Read(nonce)
	out = append(out, nonce...)
	return k.manifest.Seal(out, nonce, plain, out[:manifestHdrLen])
}

func (k *keys) openManifest(b []byte) (*manifest, error) {
	if len(b) < manifestHdrLen+nonceLen+tagLen || string(b[:len(manifestMagic)]) != manifestMagic {
		return nil, errors.New("MANIFEST is not a session snapshot manifest")
	}
	if v := b[len(manifestMagic)]; v != manifestVersion {
		return nil, fmt.Errorf("MANIFEST has format version %d, this build reads %d", v, manifestVersion)
	}
	if !bytes.Equal(b[len(manifestMagic)+1:manifestHdrLen], k.id[:]) {
		return nil, errors.New("snapshot was written with another key")
	}
	nonce := b[manifestHdrLen : manifestHdrLen+nonceLen]
	plain, err := k.manifest.Open(nil, nonce, b[manifestHdrLen+nonceLen:], b[:manifestHdrLen])
	if err != nil {
		return nil, errors.New("MANIFEST is damaged (authentication failed)")
	}
	var m manifest
	if err := json.Unmarshal(plain, &m); err != nil || m.Version != manifestVersion {
		return nil, errors.New("MANIFEST content is malformed")
	}
	return &m, nil
}

// LoadSnapshot restores a Store from a snapshot written by SaveSnapshot
// with the same seal key and the same cache size (Options.MaxBytes,
// rounded as fastcache does).
//
// When path does not exist the error wraps fs.ErrNotExist (a first
// start). Any other failure wraps ErrBadSnapshot and says why: the
// snapshot was written with another key, a file is missing, damaged or
// unexpected, or the cache size changed. Every file is checked against
// the sealed manifest's SM3 checksums before fastcache reads it, so a
// damaged snapshot is refused as a whole; the caller logs the error and
// starts empty with New. Entries whose deadline passed while the process
// was down are restored but never returned by Get.
func LoadSnapshot(path string, o Options, sealKey []byte) (*Store, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	k, err := deriveKeys(sealKey)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("sessionstore: no snapshot at %s: %w", path, err)
		}
		return nil, badSnapshot(path, err.Error())
	}
	raw, err := readLimited(filepath.Join(path, manifestName), maxManifestSize)
	if err != nil {
		return nil, badSnapshot(path, "cannot read MANIFEST: "+err.Error())
	}
	m, err := k.openManifest(raw)
	if err != nil {
		return nil, badSnapshot(path, err.Error())
	}
	if want := capacity(o.MaxBytes); m.Capacity != want {
		return nil, badSnapshot(path, fmt.Sprintf("snapshot holds a %d-byte cache, MaxBytes gives %d", m.Capacity, want))
	}
	cacheDir := filepath.Join(path, cacheDirName)
	if err := verifyFiles(cacheDir, m.Files); err != nil {
		return nil, badSnapshot(path, err.Error())
	}
	c, err := fastcache.LoadFromFileMaxBytes(cacheDir, o.MaxBytes)
	if err != nil {
		return nil, badSnapshot(path, "fastcache: "+err.Error())
	}
	return &Store{cache: c, keys: k, opts: o}, nil
}

func badSnapshot(path, why string) error {
	return fmt.Errorf("%w %s: %s", ErrBadSnapshot, path, why)
}

// verifyFiles checks that dir holds exactly the listed files with their
// sizes and SM3 checksums. SM3 is most of the cost of a restore (~300 MB/s
// per core here), so files are hashed in parallel: fastcache writes one
// data file per core of the saving process.
func verifyFiles(dir string, files []manifestFile) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cannot list cache files: %v", err)
	}
	want := make(map[string]manifestFile, len(files))
	for _, f := range files {
		want[f.Name] = f
	}
	for _, e := range entries {
		if _, ok := want[e.Name()]; !ok {
			return fmt.Errorf("unexpected file %s", e.Name())
		}
	}
	for _, f := range files {
		if !slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.Name() == f.Name }) {
			return fmt.Errorf("file %s is missing", f.Name)
		}
	}
	errs := make([]error, len(files))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			size, sum, err := hashFile(filepath.Join(dir, f.Name), false)
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("cannot read %s: %v", f.Name, err)
			case size != f.Size || hex.EncodeToString(sum) != f.SM3:
				errs[i] = fmt.Errorf("file %s is damaged (checksum mismatch)", f.Name)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func hashFile(path string, sync bool) (int64, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	h := sm3.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, nil, err
	}
	if sync {
		if err := f.Sync(); err != nil {
			return 0, nil, err
		}
	}
	return n, h.Sum(nil), nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}

// writeFileSync creates path (0600, must not exist) and fsyncs it.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// globEscape quotes the characters filepath.Match treats specially.
func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}
