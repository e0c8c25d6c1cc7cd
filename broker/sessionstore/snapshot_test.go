package sessionstore

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang/snappy"
)

// secretMarker is in every test value: it must never appear in a file.
const secretMarker = "RESUME-TOKEN-SECRET"

func sessionValue(i int) []byte {
	return []byte(fmt.Sprintf(`{"id":"s%d","tenant":"t%d","convs":["c%d"],"acked":{"c%d":%d},"resume":"%s-%08d"}`,
		i, i%7, i, i, i*3, secretMarker, i))
}

func sessionKey(i int) string { return fmt.Sprintf("session:%d", i) }

// filledStore returns a Store holding n sessions with a one-hour TTL.
func filledStore(tb testing.TB, n int, clk *clock) *Store {
	tb.Helper()
	return filledStoreSized(tb, n, clk, 64<<20)
}

func filledStoreSized(tb testing.TB, n int, clk *clock, maxBytes int) *Store {
	tb.Helper()
	s := newTestStore(tb, Options{MaxBytes: maxBytes, Now: clk.Now})
	for i := range n {
		if err := s.Put(sessionKey(i), sessionValue(i), time.Hour); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

func loadTestSnapshot(tb testing.TB, path string, o Options, key []byte) (*Store, error) {
	tb.Helper()
	s, err := LoadSnapshot(path, o, key)
	if err == nil {
		tb.Cleanup(s.Close)
	}
	return s, err
}

func TestSnapshotRoundTrip(t *testing.T) {
	const n = 10000
	// fastcache splits a big value into 64 KiB chunks whose buckets depend
	// on the sealed bytes (random nonce); in a 64 MiB cache (128 KiB
	// buckets) two chunks landing in one bucket evict its small entries,
	// which is a legitimate miss but not what this test is about. 512 MiB
	// (1 MiB buckets, allocated lazily) makes that impossible here.
	const size = 512 << 20
	clk := newClock()
	s := filledStoreSized(t, n, clk, size)
	// One chunked value too.
	big := pattern(300<<10, 9)
	if err := s.Put("big", big, time.Hour); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state", "sessions")
	for range 2 { // the second save replaces the first
		if err := s.SaveSnapshot(path); err != nil {
			t.Fatalf("SaveSnapshot: %v", err)
		}
	}

	snaps, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "sessions.snap-*"))
	if len(snaps) != 1 {
		t.Errorf("%d snapshot directories left, want 1: %v", len(snaps), snaps)
	}
	checkSnapshotFiles(t, path)

	r, err := loadTestSnapshot(t, path, Options{MaxBytes: size, Now: clk.Now}, testKey)
	if err != nil {
		t.Fatalf("LoadSnapshot: %v", err)
	}
	var buf []byte
	for i := range n {
		var ok bool
		buf, ok = r.Get(buf[:0], sessionKey(i))
		if !ok || !bytes.Equal(buf, sessionValue(i)) {
			t.Fatalf("entry %d: ok=%v value=%q", i, ok, buf)
		}
	}
	if got, ok := r.Get(nil, "big"); !ok || !bytes.Equal(got, big) {
		t.Fatalf("chunked value: ok=%v len=%d", ok, len(got))
	}
	if st := r.Stats(); st.Misses != 0 || st.Corruptions != 0 {
		t.Errorf("stats after restore: %+v", st)
	}
}

// checkSnapshotFiles checks modes and that no file holds plaintext, not
// even inside fastcache's snappy streams.
func checkSnapshotFiles(t *testing.T, path string) {
	t.Helper()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("%s is not a symlink: %v", path, err)
	}
	err := filepath.WalkDir(path+"/", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), "data.") {
			if b, err = io.ReadAll(snappy.NewReader(bytes.NewReader(b))); err != nil {
				return err
			}
		}
		if bytes.Contains(b, []byte(secretMarker)) || bytes.Contains(b, []byte(`"tenant"`)) {
			t.Errorf("%s holds plaintext", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotExpiredAtRestore(t *testing.T) {
	clk := newClock()
	s := newTestStore(t, Options{Now: clk.Now})
	if err := s.Put("short", []byte("a"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("long", []byte("b"), 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snap")
	if err := s.SaveSnapshot(path); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute) // the process was down for two minutes
	r, err := loadTestSnapshot(t, path, Options{Now: clk.Now}, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Get(nil, "short"); ok {
		t.Error("entry past its deadline returned after restore")
	}
	if v, ok := r.Get(nil, "long"); !ok || string(v) != "b" {
		t.Errorf("live entry: %q, %v", v, ok)
	}
	if r.Stats().Expired != 1 {
		t.Errorf("Expired = %d", r.Stats().Expired)
	}
}

func TestLoadSnapshotNotExist(t *testing.T) {
	_, err := LoadSnapshot(filepath.Join(t.TempDir(), "none"), Options{}, testKey)
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("LoadSnapshot: %v, want fs.ErrNotExist only", err)
	}
}

func TestSaveSnapshotOverDirectory(t *testing.T) {
	s := newTestStore(t, Options{})
	dir := t.TempDir()
	if err := s.SaveSnapshot(dir); err == nil {
		t.Fatal("SaveSnapshot replaced a real directory")
	}
}

// savedSnapshot writes a small snapshot and returns its path and the
// directory the link points to.
func savedSnapshot(t *testing.T) (path, dir string) {
	t.Helper()
	s := filledStore(t, 2000, newClock())
	path = filepath.Join(t.TempDir(), "snap")
	if err := s.SaveSnapshot(path); err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, filepath.Join(filepath.Dir(path), target)
}

func flipByte(t *testing.T, file string, at func(size int) int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[at(len(b))] ^= 0x5a
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadSnapshotErrors(t *testing.T) {
	otherKey := bytes.Repeat([]byte{7}, KeySize)
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
		o      Options
		key    []byte
		why    string // in the message
	}{
		{"wrong key", nil, Options{MaxBytes: 64 << 20}, otherKey, "snapshot was written with another key"},
		{"cache size changed", nil, Options{MaxBytes: 128 << 20}, testKey, "MaxBytes gives"},
		{"manifest missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, manifestName))
		}, Options{MaxBytes: 64 << 20}, testKey, "cannot read MANIFEST"},
		{"manifest ciphertext flipped", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, manifestName), func(n int) int { return n - 20 })
		}, Options{MaxBytes: 64 << 20}, testKey, "MANIFEST is damaged"},
		{"manifest key id flipped", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, manifestName), func(int) int { return 6 })
		}, Options{MaxBytes: 64 << 20}, testKey, "another key"},
		{"manifest magic", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, manifestName), func(int) int { return 0 })
		}, Options{MaxBytes: 64 << 20}, testKey, "not a session snapshot"},
		{"manifest truncated", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, manifestName), 10)
		}, Options{MaxBytes: 64 << 20}, testKey, "not a session snapshot"},
		{"data byte flipped", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, cacheDirName, "data.0.bin"), func(n int) int { return n / 2 })
		}, Options{MaxBytes: 64 << 20}, testKey, "data.0.bin is damaged"},
		{"data truncated", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, cacheDirName, "data.0.bin"), 100)
		}, Options{MaxBytes: 64 << 20}, testKey, "data.0.bin is damaged"},
		{"metadata flipped", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, cacheDirName, "metadata.bin"), func(int) int { return 0 })
		}, Options{MaxBytes: 64 << 20}, testKey, "metadata.bin is damaged"},
		{"data file missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, cacheDirName, "data.0.bin"))
		}, Options{MaxBytes: 64 << 20}, testKey, "data.0.bin is missing"},
		{"extra file", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, cacheDirName, "data.999.bin"), nil, 0o600)
		}, Options{MaxBytes: 64 << 20}, testKey, "unexpected file data.999.bin"},
		{"cache dir missing", func(t *testing.T, dir string) {
			os.RemoveAll(filepath.Join(dir, cacheDirName))
		}, Options{MaxBytes: 64 << 20}, testKey, "cannot list cache files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, dir := savedSnapshot(t)
			if tt.damage != nil {
				tt.damage(t, dir)
			}
			_, err := loadTestSnapshot(t, path, tt.o, tt.key)
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("LoadSnapshot: %v, want ErrBadSnapshot", err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("message %q does not say %q", err, tt.why)
			}
		})
	}
}

// TestLoadSnapshotDamagedBehindManifest damages the cache data and then
// re-seals a matching manifest, as if the checksums had not caught it:
// the second line of defence (fastcache's own checks, then SM4-GCM on
// every value) must turn the damage into misses, never into wrong data
// or a panic.
func TestLoadSnapshotDamagedBehindManifest(t *testing.T) {
	const n = 2000
	tests := []struct {
		name  string
		every int  // flip one byte in every `every` bytes of chunk data
		index bool // also damage the index (hash → position) entries
	}{
		{"sparse chunk bytes", 509, false},
		{"dense chunk bytes", 97, false},
		{"index and chunk bytes", 1021, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			s := filledStore(t, n, clk)
			path := filepath.Join(t.TempDir(), "snap")
			if err := s.SaveSnapshot(path); err != nil {
				t.Fatal(err)
			}
			target, _ := os.Readlink(path)
			dir := filepath.Join(filepath.Dir(path), target)
			damageBuckets(t, filepath.Join(dir, cacheDirName), tt.every, tt.index)
			resealManifest(t, s, dir)

			r, err := loadTestSnapshot(t, path, Options{MaxBytes: 64 << 20, Now: clk.Now}, testKey)
			if err != nil {
				if !errors.Is(err, ErrBadSnapshot) {
					t.Fatalf("LoadSnapshot: %v", err)
				}
				return
			}
			hits := 0
			for i := range n {
				if v, ok := r.Get(nil, sessionKey(i)); ok {
					if !bytes.Equal(v, sessionValue(i)) {
						t.Fatalf("entry %d: wrong data %q", i, v)
					}
					hits++
				}
			}
			st := r.Stats()
			t.Logf("%d/%d entries intact; unreadable %d, corruptions %d, collisions %d",
				hits, n, st.Unreadable, st.Corruptions, st.Collisions)
			if hits == n {
				t.Error("damage had no effect: the test is not testing anything")
			}
		})
	}
}

// damageBuckets rewrites fastcache's data files with bytes flipped inside
// the chunks (and, with index, in the position half of the index entries).
// Bucket layout (fastcache file.go): bucket number, idx, gen, len(m), m as
// (hash, position) pairs, number of chunks, chunks of 64 KiB; all uint64
// little-endian.
func damageBuckets(t *testing.T, cacheDir string, every int, index bool) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(cacheDir, "data.*.bin"))
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(snappy.NewReader(bytes.NewReader(raw)))
		if err != nil {
			t.Fatal(err)
		}
		u64 := func(off int) int { return int(binary.LittleEndian.Uint64(b[off:])) }
		for off := 0; off < len(b); {
			mLen := u64(off + 24)
			mOff := off + 32
			if index {
				for j := 0; j < mLen; j += 3 {
					b[mOff+16*j+8] ^= 0x40 // low byte of the position
				}
			}
			cOff := mOff + 16*mLen
			chunks := u64(cOff)
			data := b[cOff+8 : cOff+8+chunks*chunkSize]
			for j := every / 2; j < len(data); j += every {
				data[j] ^= 0xff
			}
			off = cOff + 8 + chunks*chunkSize
		}
		var out bytes.Buffer
		w := snappy.NewBufferedWriter(&out)
		w.Write(b)
		w.Close()
		if err := os.WriteFile(f, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// resealManifest writes a manifest matching the files as they are now.
func resealManifest(t *testing.T, s *Store, dir string) {
	t.Helper()
	m := manifest{Version: manifestVersion, Capacity: capacity(s.opts.MaxBytes)}
	entries, _ := os.ReadDir(filepath.Join(dir, cacheDirName))
	for _, e := range entries {
		size, sum, err := hashFile(filepath.Join(dir, cacheDirName, e.Name()), false)
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, manifestFile{Name: e.Name(), Size: size, SM3: hex.EncodeToString(sum)})
	}
	plain, _ := json.Marshal(&m)
	if err := os.WriteFile(filepath.Join(dir, manifestName), s.keys.sealManifest(plain), 0o600); err != nil {
		t.Fatal(err)
	}
}
