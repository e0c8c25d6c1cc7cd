package sessionstore

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/VictoriaMetrics/fastcache"
)

const benchKeys = 1 << 16

func benchKeyNames() []string {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = "session:visitor:" + strconv.Itoa(i)
	}
	return keys
}

// BenchmarkPut and BenchmarkGet measure the Store with 256-byte values;
// the "fastcache" variants are the same operations on a bare
// fastcache.Cache, so the difference is the cost of sealing (SM4-GCM,
// nonce, deadline check).
func BenchmarkPut(b *testing.B) {
	keys := benchKeyNames()
	value := pattern(256, 1)
	b.Run("sealed", func(b *testing.B) {
		s := newTestStore(b, Options{MaxBytes: 64 << 20})
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		for i := 0; b.Loop(); i++ {
			if err := s.Put(keys[i%benchKeys], value, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sealed-parallel", func(b *testing.B) {
		s := newTestStore(b, Options{MaxBytes: 64 << 20})
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				if err := s.Put(keys[i%benchKeys], value, time.Hour); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("fastcache", func(b *testing.B) {
		c := fastcache.New(64 << 20)
		defer c.Reset()
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		for i := 0; b.Loop(); i++ {
			c.Set([]byte(keys[i%benchKeys]), value)
		}
	})
}

func BenchmarkGet(b *testing.B) {
	keys := benchKeyNames()
	value := pattern(256, 1)
	b.Run("sealed", func(b *testing.B) {
		s := newTestStore(b, Options{MaxBytes: 64 << 20})
		for _, k := range keys {
			if err := s.Put(k, value, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		buf := make([]byte, 0, 512)
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		for i := 0; b.Loop(); i++ {
			var ok bool
			if buf, ok = s.Get(buf[:0], keys[i%benchKeys]); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("sealed-parallel", func(b *testing.B) {
		s := newTestStore(b, Options{MaxBytes: 64 << 20})
		for _, k := range keys {
			if err := s.Put(k, value, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 0, 512)
			for i := 0; pb.Next(); i++ {
				var ok bool
				if buf, ok = s.Get(buf[:0], keys[i%benchKeys]); !ok {
					b.Error("miss")
					return
				}
			}
		})
	})
	b.Run("fastcache", func(b *testing.B) {
		c := fastcache.New(64 << 20)
		defer c.Reset()
		for _, k := range keys {
			c.Set([]byte(k), value)
		}
		buf := make([]byte, 0, 512)
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		for i := 0; b.Loop(); i++ {
			var ok bool
			if buf, ok = c.HasGet(buf[:0], []byte(keys[i%benchKeys])); !ok {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkSnapshot100k is the "cold start with a restored snapshot" figure:
// 100,000 sessions of ~300 bytes, saved then restored (restore includes the
// SM3 check of every file). It reports the snapshot size and, after the
// restore, how many sessions survived (fastcache evicts when a bucket is
// full: size MaxBytes with room to spare).
func BenchmarkSnapshot100k(b *testing.B) {
	const n = 100_000
	clk := newClock()
	o := Options{MaxBytes: 128 << 20, Now: clk.Now}
	s := newTestStore(b, o)
	value := pattern(300, 3)
	for i := range n {
		if err := s.Put(sessionKey(i), value, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	path := filepath.Join(b.TempDir(), "snap")
	b.Run("save", func(b *testing.B) {
		for b.Loop() {
			if err := s.SaveSnapshot(path); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(snapshotBytes(b, path))/(1<<20), "MiB")
	})
	b.Run("load", func(b *testing.B) {
		var r *Store
		for b.Loop() {
			if r != nil {
				r.Close()
			}
			var err error
			if r, err = LoadSnapshot(path, o, testKey); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		defer r.Close()
		hits := 0
		for i := range n {
			if _, ok := r.Get(nil, sessionKey(i)); ok {
				hits++
			}
		}
		b.ReportMetric(float64(hits), "sessions")
	})
}

func snapshotBytes(tb testing.TB, path string) int64 {
	tb.Helper()
	var total int64
	for _, name := range []string{manifestName, cacheDirName + "/metadata.bin"} {
		size, _, err := hashFile(filepath.Join(path, name), false)
		if err != nil {
			tb.Fatal(err)
		}
		total += size
	}
	files, _ := filepath.Glob(filepath.Join(path, cacheDirName, "data.*.bin"))
	for _, f := range files {
		size, _, _ := hashFile(f, false)
		total += size
	}
	return total
}
