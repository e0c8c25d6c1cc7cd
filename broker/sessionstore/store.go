package sessionstore

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/fastcache"
)

// KeySize is the length in bytes of the seal key New and LoadSnapshot take
// (an SM4 key, GB/T 32907-2016).
const KeySize = 16

// Defaults for zero Options fields.
const (
	// DefaultMaxBytes is the cache size used when Options.MaxBytes is 0. It
	// is also fastcache's minimum: smaller sizes are rounded up to it.
	DefaultMaxBytes = 32 << 20
	// DefaultMaxValueBytes is the largest value Put accepts when
	// Options.MaxValueBytes is 0.
	DefaultMaxValueBytes = 1 << 20
	// MaxKeyBytes is the longest key Put accepts. Session keys are short;
	// the bound keeps every key well inside one fastcache chunk.
	MaxKeyBytes = 1024
)

const (
	chunkSize    = 64 << 10 // fastcache chunk: key+value+4 must stay below it
	bucketsCount = 512      // fastcache buckets
	bigMetaLen   = 16       // fastcache's SetBig metavalue: value hash + length
)

// Errors. Put returns ErrTooLarge, ErrInvalidTTL and ErrNotStored wrapped
// with details; New, LoadSnapshot and LoadOrCreateKey return ErrBadKey;
// LoadSnapshot returns ErrBadSnapshot. Test with errors.Is.
var (
	// ErrTooLarge: the key or the value is longer than the store accepts
	// (MaxKeyBytes, Options.MaxValueBytes). Nothing was stored.
	ErrTooLarge = errors.New("sessionstore: entry too large")
	// ErrInvalidTTL: Put was given a TTL that is not positive.
	ErrInvalidTTL = errors.New("sessionstore: ttl must be positive")
	// ErrNotStored: a value large enough to be split into chunks lost one
	// of them while it was being written, because the cache is too small
	// for values this large. Raise Options.MaxBytes or lower
	// Options.MaxValueBytes.
	ErrNotStored = errors.New("sessionstore: value evicted while being stored")
	// ErrBadKey: the seal key has the wrong length, or the key file is
	// malformed or too widely readable.
	ErrBadKey = errors.New("sessionstore: bad seal key")
	// ErrBadSnapshot: a snapshot cannot be restored (another key, damaged
	// or incomplete files, another cache size). The message says which;
	// the caller logs it and starts empty with New.
	ErrBadSnapshot = errors.New("sessionstore: bad snapshot")
)

func errBadKeyLen(n int) error {
	return fmt.Errorf("%w: key is %d bytes, want %d", ErrBadKey, n, KeySize)
}

// Options configures a Store. The zero value is usable: every field has a
// default.
type Options struct {
	// MaxBytes is the cache size in bytes (from configuration). fastcache
	// allocates it in 512 buckets of whole 64 KiB chunks, so it is rounded
	// up to a multiple of 32 MiB; 0 means DefaultMaxBytes. Size it at about
	// twice entries × (key + value + 41 bytes): an entry is evicted, with
	// the rest of its bucket's oldest chunk, when its bucket is full.
	MaxBytes int
	// MaxValueBytes is the largest value Put accepts; 0 means
	// DefaultMaxValueBytes. Longer values are refused with ErrTooLarge,
	// never silently dropped. Values over ~64 KiB are split into 64 KiB
	// chunks, and each chunk takes a whole chunk of some bucket: keep this
	// far below MaxBytes/512 × (number of values that may be that large).
	MaxValueBytes int
	// Now returns the current time; nil means time.Now. Tests inject a
	// clock here.
	Now func() time.Time
}

func (o *Options) setDefaults() error {
	if o.MaxBytes < 0 || o.MaxValueBytes < 0 {
		return fmt.Errorf("sessionstore: negative MaxBytes (%d) or MaxValueBytes (%d)", o.MaxBytes, o.MaxValueBytes)
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxValueBytes == 0 {
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// capacity is the size fastcache really allocates for maxBytes.
func capacity(maxBytes int) uint64 {
	bucketBytes := (uint64(maxBytes) + bucketsCount - 1) / bucketsCount
	chunks := (bucketBytes + chunkSize - 1) / chunkSize
	return chunks * chunkSize * bucketsCount
}

// Store is the broker's session cache: sealed values with a deadline in a
// fastcache.Cache. All methods are safe for concurrent use. A Get may miss
// for reasons other than absence or expiry (eviction, hash collision, a
// damaged snapshot): see the package documentation.
type Store struct {
	cache *fastcache.Cache
	keys  *keys
	opts  Options

	saveMu sync.Mutex // one SaveSnapshot at a time

	puts, gets, misses                   atomic.Uint64
	expired, tooLarge, unreadable, notSt atomic.Uint64
}

// New returns an empty Store. sealKey is the 16-byte master key (see
// LoadOrCreateKey); the Store keeps only keys derived from it. Call Close
// when the Store is no longer needed.
func New(o Options, sealKey []byte) (*Store, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	k, err := deriveKeys(sealKey)
	if err != nil {
		return nil, err
	}
	return &Store{cache: fastcache.New(o.MaxBytes), keys: k, opts: o}, nil
}

// Close gives the cache memory back to fastcache's free list (it stays
// mapped in the process). The Store must not be used afterwards.
func (s *Store) Close() {
	s.cache.Reset()
}

// scratch is pooled working space for sealing and opening.
type scratch struct {
	buf, aad []byte
	key      []byte // the key as bytes: []byte(key) allocates beyond 32 bytes
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(sc *scratch) {
	if cap(sc.buf) > 2*chunkSize { // do not keep big-value buffers alive
		sc.buf = nil
	}
	scratchPool.Put(sc)
}

// Put stores value under key until ttl has passed. It seals value first
// (SM4-GCM, bound to key and to the deadline), so the cache and any snapshot
// hold only ciphertext. Put does not retain value or key.
//
// Put returns an error wrapping ErrTooLarge when key is longer than
// MaxKeyBytes or value longer than Options.MaxValueBytes, ErrInvalidTTL
// when ttl ≤ 0, and ErrNotStored when a chunked value was evicted while it
// was written. A nil error does not promise a later Get will find the
// value: it may be evicted at any time.
func (s *Store) Put(key string, value []byte, ttl time.Duration) error {
	if len(key) > MaxKeyBytes {
		s.tooLarge.Add(1)
		return fmt.Errorf("%w: key of %d bytes, limit %d", ErrTooLarge, len(key), MaxKeyBytes)
	}
	if len(value) > s.opts.MaxValueBytes {
		s.tooLarge.Add(1)
		return fmt.Errorf("%w: value of %d bytes, limit %d", ErrTooLarge, len(value), s.opts.MaxValueBytes)
	}
	if ttl <= 0 {
		return fmt.Errorf("%w: got %v", ErrInvalidTTL, ttl)
	}
	s.puts.Add(1)
	deadline := deadlineAfter(s.opts.Now(), ttl)

	sc := getScratch()
	defer putScratch(sc)
	sc.buf, sc.aad = sealValue(s.keys.value, sc.buf[:0], sc.aad, key, value, deadline)
	sc.key = append(sc.key[:0], key...)
	kb := sc.key
	if 4+len(kb)+len(sc.buf) < chunkSize {
		s.cache.Set(kb, sc.buf)
		return nil
	}
	// fastcache's Set would drop this entry without a word: SetBig splits
	// it into chunks stored under derived keys and stores a 16-byte
	// metavalue under kb. Sealed values are never 16 bytes long (at least
	// valueOverhead), which is how Get tells the two apart. A chunk can be
	// evicted by the next one when buckets are small: check.
	s.cache.SetBig(kb, sc.buf)
	n := len(sc.buf)
	sc.buf = s.cache.GetBig(sc.buf[:0], kb)
	if len(sc.buf) != n {
		s.notSt.Add(1)
		s.cache.Del(kb)
		return fmt.Errorf("%w: %d-byte value in a %d-byte cache", ErrNotStored, len(value), capacity(s.opts.MaxBytes))
	}
	return nil
}

func deadlineAfter(now time.Time, ttl time.Duration) int64 {
	n := now.UnixNano()
	if n > math.MaxInt64-int64(ttl) {
		return math.MaxInt64
	}
	return n + int64(ttl)
}

// Get appends the value stored under key to dst and returns the result
// and true. It returns dst and false when the value is absent, past its
// deadline (the entry is then deleted), or cannot be opened (evicted
// chunk, collision, damage, a value moved to another key); every false
// means "rebuild the session from its source of truth".
//
// The returned slice is dst's backing array or a new one: the Store keeps
// no reference to it. Pass dst[:0] of a reused buffer to avoid allocating.
func (s *Store) Get(dst []byte, key string) (value []byte, ok bool) {
	s.gets.Add(1)
	sc := getScratch()
	defer putScratch(sc)
	sc.key = append(sc.key[:0], key...)
	kb := sc.key
	var found bool
	sc.buf, found = s.cache.HasGet(sc.buf[:0], kb)
	if found && len(sc.buf) == bigMetaLen {
		sc.buf = s.cache.GetBig(sc.buf[:0], kb)
		found = len(sc.buf) > 0
	}
	if !found {
		s.misses.Add(1)
		return dst, false
	}
	deadline, err := valueDeadline(sc.buf)
	if err != nil {
		return s.unreadableMiss(dst, kb)
	}
	if s.opts.Now().UnixNano() >= deadline {
		// A Put racing with this Get may be deleted too: that is one
		// more miss, which the contract already covers.
		s.cache.Del(kb)
		s.expired.Add(1)
		s.misses.Add(1)
		return dst, false
	}
	value, sc.aad, err = openValue(s.keys.value, dst, sc.aad, key, sc.buf)
	if err != nil {
		return s.unreadableMiss(dst, kb)
	}
	return value, true
}

func (s *Store) unreadableMiss(dst, kb []byte) ([]byte, bool) {
	s.cache.Del(kb)
	s.unreadable.Add(1)
	s.misses.Add(1)
	return dst, false
}

// Delete removes the value stored under key, if any. The bytes stay in
// the cache's memory (and in snapshots taken before the ring wraps) as
// ciphertext that nothing points to.
func (s *Store) Delete(key string) {
	s.cache.Del([]byte(key))
}

// Stats is a snapshot of a Store's counters. Counters count since New or
// LoadSnapshot; they are not saved in snapshots.
type Stats struct {
	// Entries is the number of fastcache entries: live values, values past
	// their deadline that no Get has seen yet, and the chunks of chunked
	// values (each counts separately).
	Entries uint64
	// Bytes is the memory the cache holds; MaxBytes its capacity.
	Bytes, MaxBytes uint64

	Puts uint64 // Put calls that passed validation
	Gets uint64 // Get calls
	// Misses counts every Get that returned false, including those also
	// counted in Expired and Unreadable.
	Misses     uint64
	Expired    uint64 // Gets that found a value past its deadline
	Unreadable uint64 // Gets that found a value that failed to open
	TooLarge   uint64 // Puts refused with ErrTooLarge
	NotStored  uint64 // Puts that failed with ErrNotStored
	// Collisions counts lookups that found another key with the same
	// 64-bit hash (a miss); Corruptions, fastcache's own checks failing on
	// restored data. Both should stay near zero.
	Collisions, Corruptions uint64
}

// Stats returns the current counters. It walks the 512 buckets: call it
// from a metrics scrape, not per request.
func (s *Store) Stats() Stats {
	var fs fastcache.Stats
	s.cache.UpdateStats(&fs)
	return Stats{
		Entries:     fs.EntriesCount,
		Bytes:       fs.BytesSize,
		MaxBytes:    fs.MaxBytesSize,
		Puts:        s.puts.Load(),
		Gets:        s.gets.Load(),
		Misses:      s.misses.Load(),
		Expired:     s.expired.Load(),
		Unreadable:  s.unreadable.Load(),
		TooLarge:    s.tooLarge.Load(),
		NotStored:   s.notSt.Load(),
		Collisions:  fs.Collisions,
		Corruptions: fs.Corruptions,
	}
}
