package sessionstore

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testKey is a fixed seal key for tests.
var testKey = []byte("0123456789abcdef")

// clock is a settable time source for Options.Now.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := new(clock)
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTestStore(tb testing.TB, o Options) *Store {
	tb.Helper()
	s, err := New(o, testKey)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// rawLen reports the length of what fastcache holds directly under key
// (16 for a chunked value's metavalue), and whether it holds anything.
func rawLen(s *Store, key string) (int, bool) {
	b, ok := s.cache.HasGet(nil, []byte(key))
	return len(b), ok
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>8)
	}
	return b
}

// inlineMax is the longest value stored under key with fastcache's Set:
// 4 + len(key) + len(value) + valueOverhead == 64 KiB - 1.
func inlineMax(key string) int { return chunkSize - 1 - 4 - len(key) - valueOverhead }

func TestPutGet(t *testing.T) {
	const key = "session:visitor:42"
	s := newTestStore(t, Options{MaxBytes: 256 << 20, Now: newClock().Now})
	tests := []struct {
		name    string
		size    int
		chunked bool // stored with SetBig
	}{
		{"empty", 0, false},
		{"small", 1, false},
		{"session", 300, false},
		{"entry 64KiB-2", inlineMax(key) - 1, false},
		{"entry 64KiB-1 (largest Set)", inlineMax(key), false},
		{"entry exactly 64KiB", inlineMax(key) + 1, true},
		{"entry 64KiB+1", inlineMax(key) + 2, true},
		{"value 64KiB-1", chunkSize - 1, true},
		{"value 64KiB", chunkSize, true},
		{"value 64KiB+1", chunkSize + 1, true},
		{"value 200KiB", 200 << 10, true},
		{"value MaxValueBytes", DefaultMaxValueBytes, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := pattern(tt.size, byte(i))
			if err := s.Put(key, want, time.Hour); err != nil {
				t.Fatalf("Put(%d bytes): %v", tt.size, err)
			}
			n, ok := rawLen(s, key)
			if !ok {
				t.Fatalf("nothing stored under the key")
			}
			if chunked := n == bigMetaLen; chunked != tt.chunked {
				t.Errorf("chunked = %v (raw %d bytes), want %v", chunked, n, tt.chunked)
			}
			if !tt.chunked && n != tt.size+valueOverhead {
				t.Errorf("raw length %d, want %d", n, tt.size+valueOverhead)
			}
			got, ok := s.Get(nil, key)
			if !ok || !bytes.Equal(got, want) {
				t.Fatalf("Get: ok=%v len=%d, want %d bytes back", ok, len(got), len(want))
			}
			// Appends to dst.
			got, ok = s.Get([]byte("prefix"), key)
			if !ok || !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[6:], want) {
				t.Fatalf("Get with dst: ok=%v", ok)
			}
		})
	}
	if st := s.Stats(); st.Misses != 0 || st.Unreadable != 0 || st.TooLarge != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestPutReplacesAcrossPaths(t *testing.T) {
	s := newTestStore(t, Options{MaxBytes: 64 << 20, Now: newClock().Now})
	for i, size := range []int{10, 100 << 10, 20, 70 << 10, 5} {
		want := pattern(size, byte(i))
		if err := s.Put("k", want, time.Minute); err != nil {
			t.Fatal(err)
		}
		if got, ok := s.Get(nil, "k"); !ok || !bytes.Equal(got, want) {
			t.Fatalf("step %d (%d bytes): ok=%v", i, size, ok)
		}
	}
}

func TestPutErrors(t *testing.T) {
	s := newTestStore(t, Options{MaxValueBytes: 1000, Now: newClock().Now})
	tests := []struct {
		name  string
		key   string
		value int
		ttl   time.Duration
		want  error
	}{
		{"value MaxValueBytes+1", "k", 1001, time.Hour, ErrTooLarge},
		{"value far too large", "k", 1 << 20, time.Hour, ErrTooLarge},
		{"key too long", strings.Repeat("k", MaxKeyBytes+1), 1, time.Hour, ErrTooLarge},
		{"zero ttl", "k", 1, 0, ErrInvalidTTL},
		{"negative ttl", "k", 1, -time.Second, ErrInvalidTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Put(tt.key, make([]byte, tt.value), tt.ttl)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Put: %v, want %v", err, tt.want)
			}
			if _, ok := s.Get(nil, tt.key); ok {
				t.Fatal("a refused value is readable")
			}
		})
	}
	if got := s.Stats().TooLarge; got != 3 {
		t.Errorf("Stats.TooLarge = %d, want 3", got)
	}
	if err := s.Put("k", make([]byte, 1000), time.Hour); err != nil {
		t.Errorf("Put at exactly MaxValueBytes: %v", err)
	}
}

// An 8 MiB value is 129 chunks; in a 32 MiB cache (one 64 KiB chunk per
// bucket) two of them share a bucket with probability 1-1e-7, and the
// second evicts the first. Put must say so instead of reporting success.
func TestPutNotStored(t *testing.T) {
	s := newTestStore(t, Options{MaxBytes: 32 << 20, MaxValueBytes: 8 << 20, Now: newClock().Now})
	err := s.Put("big", make([]byte, 8<<20), time.Hour)
	if !errors.Is(err, ErrNotStored) {
		t.Fatalf("Put: %v, want ErrNotStored", err)
	}
	if _, ok := s.Get(nil, "big"); ok {
		t.Fatal("Get found a value Put reported as not stored")
	}
	if s.Stats().NotStored != 1 {
		t.Errorf("Stats.NotStored = %d", s.Stats().NotStored)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		key  []byte
		want error
	}{
		{"short key", Options{}, testKey[:15], ErrBadKey},
		{"long key", Options{}, append(testKey, 0), ErrBadKey},
		{"nil key", Options{}, nil, ErrBadKey},
		{"negative MaxBytes", Options{MaxBytes: -1}, testKey, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.o, tt.key)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("New: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	tests := []struct {
		name    string
		ttl     time.Duration
		advance time.Duration
		found   bool
	}{
		{"fresh", time.Minute, 0, true},
		{"1ns before deadline", time.Minute, time.Minute - 1, true},
		{"at deadline", time.Minute, time.Minute, false},
		{"after deadline", time.Minute, time.Hour, false},
		{"huge ttl", time.Duration(1<<63 - 1), 100 * 365 * 24 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			s := newTestStore(t, Options{Now: clk.Now})
			if err := s.Put("k", []byte("v"), tt.ttl); err != nil {
				t.Fatal(err)
			}
			clk.Advance(tt.advance)
			_, ok := s.Get(nil, "k")
			if ok != tt.found {
				t.Fatalf("Get ok = %v, want %v", ok, tt.found)
			}
			_, raw := rawLen(s, "k")
			if raw != tt.found {
				t.Errorf("entry still in cache = %v, want %v (expired entries are deleted)", raw, tt.found)
			}
			if st := s.Stats(); !tt.found && (st.Expired != 1 || st.Misses != 1) {
				t.Errorf("Expired = %d, Misses = %d, want 1, 1", st.Expired, st.Misses)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	s := newTestStore(t, Options{MaxBytes: 64 << 20, Now: newClock().Now})
	for _, size := range []int{10, 100 << 10} {
		key := fmt.Sprintf("k%d", size)
		if err := s.Put(key, make([]byte, size), time.Hour); err != nil {
			t.Fatal(err)
		}
		s.Delete(key)
		if _, ok := s.Get(nil, key); ok {
			t.Errorf("%d-byte value readable after Delete", size)
		}
	}
	s.Delete("never-stored") // no-op
}

// A sealed value copied (by a bug or an attacker with write access) under
// another key, or with its deadline changed, must not open.
func TestTamperedValues(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(raw []byte) (key string, stored []byte)
	}{
		{"moved to another key", func(raw []byte) (string, []byte) { return "session:eve", raw }},
		{"deadline extended", func(raw []byte) (string, []byte) {
			b := bytes.Clone(raw)
			b[1] ^= 0x40 // +2^62 ns: far in the future
			return "session:alice", b
		}},
		{"ciphertext bit flipped", func(raw []byte) (string, []byte) {
			b := bytes.Clone(raw)
			b[prefixLen+3] ^= 1
			return "session:alice", b
		}},
		{"tag truncated", func(raw []byte) (string, []byte) { return "session:alice", raw[:len(raw)-1] }},
		{"unknown version", func(raw []byte) (string, []byte) {
			b := bytes.Clone(raw)
			b[0] = 2
			return "session:alice", b
		}},
		{"too short", func(raw []byte) (string, []byte) { return "session:alice", raw[:valueOverhead-1] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t, Options{Now: newClock().Now})
			if err := s.Put("session:alice", []byte("resume-token-alice"), time.Hour); err != nil {
				t.Fatal(err)
			}
			raw, _ := s.cache.HasGet(nil, []byte("session:alice"))
			key, stored := tt.mutate(raw)
			s.cache.Set([]byte(key), stored)
			if v, ok := s.Get(nil, key); ok {
				t.Fatalf("Get(%q) = %q, want a miss", key, v)
			}
			if st := s.Stats(); st.Unreadable != 1 || st.Misses != 1 {
				t.Errorf("Unreadable = %d, Misses = %d, want 1, 1", st.Unreadable, st.Misses)
			}
			if _, ok := rawLen(s, key); ok {
				t.Error("unreadable entry not deleted")
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s := newTestStore(t, Options{MaxBytes: 64 << 20, Now: clk.Now})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := range 2000 {
				key := fmt.Sprintf("s%d", i%100)
				val := []byte(key) // every value names its key
				switch (g + i) % 5 {
				case 0:
					s.Delete(key)
				case 1:
					clk.Advance(time.Millisecond)
				default:
					if err := s.Put(key, val, time.Hour); err != nil {
						t.Error(err)
						return
					}
				}
				var ok bool
				if buf, ok = s.Get(buf[:0], key); ok && string(buf) != key {
					t.Errorf("Get(%q) = %q", key, buf)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 3 {
			if err := s.SaveSnapshot(dir + "/snap"); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	_ = s.Stats()
}

// Put and Get allocate nothing in steady state, whatever the key length
// (up to MaxKeyBytes) and for values stored with Set.
func TestAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation counts (sync.Pool drops items under -race)")
	}
	s := newTestStore(t, Options{Now: newClock().Now})
	value := pattern(256, 1)
	buf := make([]byte, 0, 512)
	for _, klen := range []int{8, 100, MaxKeyBytes} {
		key := strings.Repeat("k", klen)
		if n := testing.AllocsPerRun(100, func() {
			if err := s.Put(key, value, time.Hour); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Put with a %d-byte key: %v allocs", klen, n)
		}
		if n := testing.AllocsPerRun(100, func() {
			if _, ok := s.Get(buf[:0], key); !ok {
				t.Fatal("miss")
			}
		}); n != 0 {
			t.Errorf("Get with a %d-byte key: %v allocs", klen, n)
		}
	}
}
