package atrest

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/crypto"
)

// Defaults for zero Options fields, and bounds.
const (
	// DefaultBucket is the JetStream key-value bucket of the keyring.
	DefaultBucket = "UNIGATE_KEYS"
	// DefaultMaxSealsPerKey bounds the values one data key seals across
	// the whole cluster: 2^31, half of NIST SP 800-38D's 2^32 limit for
	// random 96-bit nonces.
	DefaultMaxSealsPerKey uint64 = 1 << 31
	// DefaultReserveBlock is how many seals a node reserves at a time.
	DefaultReserveBlock uint64 = 1 << 20
	// DefaultTimeout bounds the bucket operations Seal and Open start.
	DefaultTimeout = 5 * time.Second
	// MaxDataKeys bounds the data keys a keyring creates.
	MaxDataKeys = 4096
)

// Bucket layout.
const (
	kvActive        = "active"
	kvDataKeyPrefix = "dk."
	labelDataKey    = "unigate/atrest/v1/data-key"
)

const (
	missTTL     = 5 * time.Second // an unknown key id is looked up again after this
	maxMisses   = 1024
	reloadEvery = 5 * time.Second // the master key file is re-read at most this often
)

// Options configures OpenKeyring. Zero values select the defaults.
type Options struct {
	// Bucket is the key-value bucket (default DefaultBucket).
	Bucket string
	// Replicas is the bucket's replication factor (default 1; the same as
	// the history stream's in a cluster).
	Replicas int
	// AEAD builds the data-key cipher (default crypto.SM4GCM): the seam
	// for a hardware module, together with the KeyWrapper.
	AEAD crypto.AEAD
	// ReadOnly opens an existing bucket for reading sealed values only:
	// no data key is created, Seal and Rotate fail with ErrReadOnly, and
	// a missing bucket is ErrNoKeyring.
	ReadOnly bool
	// MaxSealsPerKey bounds the values one data key seals, cluster-wide
	// (default DefaultMaxSealsPerKey); the node that would exceed it
	// rotates to a new data key.
	MaxSealsPerKey uint64
	// ReserveBlock is the number of seals a node reserves in the bucket
	// at a time (default DefaultReserveBlock). Reserved seals not used
	// when the process stops are lost, which only brings rotation nearer.
	ReserveBlock uint64
	// MasterKeyFile, when set, is re-read (at most every 5 s) when a data
	// key names a master key the set lacks: a node picks up a rotated
	// master key file without a restart.
	MasterKeyFile string
	// Timeout bounds the bucket operations Seal and Open start on their
	// own (default DefaultTimeout).
	Timeout time.Duration
	// Logger receives rotations and failed reservations (never keys).
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.AEAD == nil {
		o.AEAD = crypto.SM4GCM
	}
	if o.MaxSealsPerKey == 0 {
		o.MaxSealsPerKey = DefaultMaxSealsPerKey
	}
	if o.ReserveBlock == 0 {
		o.ReserveBlock = DefaultReserveBlock
	}
	o.ReserveBlock = min(o.ReserveBlock, o.MaxSealsPerKey, 1<<62)
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// dataKeyRecord is the bucket entry dk.<id>.
type dataKeyRecord struct {
	V       int       `json:"v"`
	ID      string    `json:"id"`
	Alg     string    `json:"alg"`
	Created time.Time `json:"created"`
	Master  string    `json:"master"`
	Wrapped []byte    `json:"wrapped"`
}

// activeRecord is the bucket entry "active".
type activeRecord struct {
	ID       string    `json:"id"`
	Reserved uint64    `json:"reserved"` // seals reserved by all nodes so far
	Since    time.Time `json:"since"`
}

// dataKeyAAD binds a wrapped data key to its id and algorithm, so an
// entry copied under another id does not unwrap.
func dataKeyAAD(id KeyID, alg string) []byte {
	b := append([]byte(labelDataKey), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(id))
	return append(b, alg...)
}

// activeKey is the data key this node seals with and the seals it may
// still make with it.
type activeKey struct {
	id     KeyID
	aead   cipher.AEAD
	budget atomic.Int64
	low    int64 // a reservation of the next block starts when budget reaches it
}

// Keyring is envelope encryption at rest: data keys (SM4-GCM by default)
// wrapped by a master key ([KeyWrapper]) and kept in a JetStream
// key-value bucket, so that every node of a cluster reads what the others
// sealed. See the package documentation.
type Keyring struct {
	kv  jetstream.KeyValue
	o   Options
	log *slog.Logger

	masters atomic.Pointer[MasterKeys]
	keys    atomic.Pointer[map[KeyID]cipher.AEAD] // copy on write under keysMu
	keysMu  sync.Mutex
	active  atomic.Pointer[activeKey]

	mu sync.Mutex // reservations, rotations and rewraps, one at a time

	fetchMu sync.Mutex // one lookup of a missing data key at a time
	misses  map[KeyID]miss

	reloadMu   sync.Mutex
	lastReload time.Time

	closed   atomic.Bool
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	cancel   context.CancelFunc
	watcher  jetstream.KeyWatcher
	stopOnce sync.Once
}

type miss struct {
	at  time.Time
	err error
}

// OpenKeyring opens (or, unless ReadOnly, creates) the keyring bucket,
// unwraps every data key in it with masters, and reserves a first block
// of seals on the active data key, creating the first data key when the
// bucket has none. A data key that masters cannot unwrap fails the open
// with ErrWrongMasterKey: history sealed under it would be unreadable.
// Close the Keyring to stop its goroutine.
func OpenKeyring(ctx context.Context, js jetstream.JetStream, masters *MasterKeys, o Options) (*Keyring, error) {
	if masters == nil {
		return nil, fmt.Errorf("%w: no master key", ErrKeyFile)
	}
	o.setDefaults()
	var (
		kv  jetstream.KeyValue
		err error
	)
	if o.ReadOnly {
		kv, err = js.KeyValue(ctx, o.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("%w %s", ErrNoKeyring, o.Bucket)
		}
	} else {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      o.Bucket,
			Description: "Unigate data keys for encryption at rest, wrapped by the master key",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("atrest: bucket %s: %w", o.Bucket, err)
	}
	k := &Keyring{
		kv: kv, o: o, log: o.Logger,
		misses: map[KeyID]miss{},
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	k.masters.Store(masters)
	empty := map[KeyID]cipher.AEAD{}
	k.keys.Store(&empty)
	if err := k.loadAll(ctx); err != nil {
		return nil, err
	}
	if o.ReadOnly {
		close(k.done)
		return k, nil
	}
	k.mu.Lock()
	err = k.refill(ctx)
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	w, err := kv.Watch(wctx, kvActive, jetstream.UpdatesOnly())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("atrest: watching %s: %w", o.Bucket, err)
	}
	k.watcher, k.cancel = w, cancel
	go k.run(w.Updates())
	return k, nil
}

// Close stops the keyring's goroutine; Seal and Open fail with ErrClosed
// afterwards. It does not close the NATS connection.
func (k *Keyring) Close() error {
	k.stopOnce.Do(func() {
		k.closed.Store(true)
		close(k.stop)
		if k.watcher != nil {
			_ = k.watcher.Stop()
			k.cancel()
		}
	})
	<-k.done
	return nil
}

// Overhead is the number of bytes Seal adds to a plaintext.
func (k *Keyring) Overhead() int { return Overhead }

// ReadOnly reports whether the keyring was opened read-only.
func (k *Keyring) ReadOnly() bool { return k.o.ReadOnly }

// Masters returns the master keys in use.
func (k *Keyring) Masters() *MasterKeys { return k.masters.Load() }

// Seal appends the sealed form of plaintext (see the format in sealed.go)
// under the active data key to dst, bound to aad. It does not retain any
// argument. It blocks only when this node's reserved seals are used up
// before the background reservation of the next block completed (then
// for one bucket update, at most Options.Timeout).
func (k *Keyring) Seal(dst, plaintext, aad []byte) ([]byte, error) {
	if k.o.ReadOnly {
		return dst, ErrReadOnly
	}
	a, err := k.take()
	if err != nil {
		return dst, err
	}
	n := len(dst)
	dst = slices.Grow(dst, Overhead+len(plaintext))
	dst = appendHeader(dst, a.id)
	dst = dst[:n+HeaderSize+NonceSize]
	nonce := dst[n+HeaderSize:]
	rand.Read(nonce) // never fails (Go 1.24+)
	sc := getScratch()
	sc.b = append(append(sc.b[:0], dst[n:n+HeaderSize]...), aad...)
	dst = a.aead.Seal(dst, nonce, plaintext, sc.b)
	putScratch(sc)
	return dst, nil
}

// Open authenticates and decrypts a sealed value bound to aad and appends
// the plaintext to dst. Errors wrap ErrMalformed, ErrUnknownKey, ErrAuth
// (tampered, or aad of another place) or ErrWrongMasterKey; Open never
// panics and never returns unauthenticated bytes. A data key created by
// another node since the open is fetched from the bucket (once; unknown
// ids are remembered for a few seconds).
func (k *Keyring) Open(dst, sealed, aad []byte) ([]byte, error) {
	s, err := ParseSealed(sealed)
	if err != nil {
		return dst, err
	}
	aead, err := k.aeadFor(s.KeyID)
	if err != nil {
		return dst, err
	}
	sc := getScratch()
	sc.b = append(append(sc.b[:0], s.Header...), aad...)
	out, err := aead.Open(dst, s.Nonce, s.Ciphertext, sc.b)
	putScratch(sc)
	if err != nil {
		return dst, fmt.Errorf("%w (data key %s)", ErrAuth, s.KeyID)
	}
	return out, nil
}

type scratch struct{ b []byte }

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(sc *scratch) {
	if cap(sc.b) > 4<<10 {
		sc.b = nil
	}
	scratchPool.Put(sc)
}

// take returns the active key after counting one seal against its
// budget, reserving more when needed. Under contention another sealer may
// use up a fresh block first: take keeps trying until Options.Timeout.
func (k *Keyring) take() (*activeKey, error) {
	var deadline time.Time
	for {
		if k.closed.Load() {
			return nil, ErrClosed
		}
		a := k.active.Load()
		if a != nil {
			left := a.budget.Add(-1)
			if left >= 0 {
				if left == a.low {
					select {
					case k.kick <- struct{}{}:
					default:
					}
				}
				return a, nil
			}
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(k.o.Timeout)
		} else if time.Now().After(deadline) {
			return nil, fmt.Errorf("atrest: no seals reserved on the active data key within %v", k.o.Timeout)
		}
		if err := k.refillSync(a); err != nil {
			return nil, err
		}
	}
}

// refillSync reserves seals now unless another goroutine already
// replaced seen.
func (k *Keyring) refillSync(seen *activeKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.active.Load() != seen {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), k.o.Timeout)
	defer cancel()
	return k.refill(ctx)
}

// run reserves the next block in the background (kick) and follows
// rotations made by other nodes or the CLI (watch of "active").
func (k *Keyring) run(updates <-chan jetstream.KeyValueEntry) {
	defer close(k.done)
	for {
		var why string
		select {
		case <-k.stop:
			return
		case <-k.kick:
			why = "budget"
		case e, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var rec activeRecord
			if json.Unmarshal(e.Value(), &rec) != nil {
				continue
			}
			if a := k.active.Load(); a != nil && a.id.String() == rec.ID {
				continue
			}
			why = "rotated"
		}
		k.mu.Lock()
		a := k.active.Load()
		need := a == nil || (why == "budget" && a.budget.Load() <= a.low)
		ctx, cancel := context.WithTimeout(context.Background(), k.o.Timeout)
		if why == "rotated" {
			// Check again under mu: our own reservation may be what the
			// watcher saw.
			e, err := k.kv.Get(ctx, kvActive)
			need = err != nil || a == nil || !sameID(e.Value(), a.id)
		}
		var err error
		if need {
			err = k.refill(ctx)
		}
		cancel()
		k.mu.Unlock()
		if err != nil && !k.closed.Load() {
			k.log.Warn("encryption at rest: reserving seals failed; retried when the budget runs out", "err", err)
		}
	}
}

func sameID(active []byte, id KeyID) bool {
	var rec activeRecord
	return json.Unmarshal(active, &rec) == nil && rec.ID == id.String()
}

// refill reserves a block of seals on the data key the bucket names as
// active: creates the first data key, or rotates to a new one when the
// active key's reservations would pass MaxSealsPerKey. k.mu is held.
func (k *Keyring) refill(ctx context.Context) error {
	block, limit := k.o.ReserveBlock, k.o.MaxSealsPerKey
	var fresh *freshKey // a key created by this call, reused on a retry
	for range 16 {
		e, err := k.kv.Get(ctx, kvActive)
		notFound := errors.Is(err, jetstream.ErrKeyNotFound)
		if err != nil && !notFound {
			return fmt.Errorf("atrest: active data key: %w", err)
		}
		var rec activeRecord
		if !notFound {
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return fmt.Errorf("%w: entry %s of bucket %s", ErrMalformed, kvActive, k.o.Bucket)
			}
		}
		if notFound || rec.Reserved > limit-block {
			if fresh == nil {
				if fresh, err = k.createDataKey(ctx); err != nil {
					return err
				}
			}
			next := activeRecord{ID: fresh.id.String(), Reserved: block, Since: time.Now().UTC()}
			if err := k.casActive(ctx, next, e, notFound); err != nil {
				if conflict(err) {
					continue
				}
				return err
			}
			k.install(fresh.id, fresh.aead, block)
			if notFound {
				k.log.Info("encryption at rest: first data key created", "key", fresh.id, "master", k.masters.Load().Current().ID())
			} else {
				k.log.Info("encryption at rest: data key rotated, its seal budget is used up", "key", fresh.id, "previous", rec.ID, "sealed", rec.Reserved)
			}
			return nil
		}
		id, err := ParseKeyID(rec.ID)
		if err != nil {
			return fmt.Errorf("entry %s of bucket %s: %w", kvActive, k.o.Bucket, err)
		}
		aead, err := k.aeadFor(id)
		if err != nil {
			return err
		}
		rec.Reserved += block
		if err := k.casActive(ctx, rec, e, false); err != nil {
			if conflict(err) {
				continue
			}
			return err
		}
		k.install(id, aead, block)
		return nil
	}
	return errors.New("atrest: active data key: too many concurrent updates")
}

func conflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// casActive writes the "active" entry if it is still e (or still absent).
func (k *Keyring) casActive(ctx context.Context, rec activeRecord, e jetstream.KeyValueEntry, absent bool) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if absent {
		_, err = k.kv.Create(ctx, kvActive, data)
	} else {
		_, err = k.kv.Update(ctx, kvActive, data, e.Revision())
	}
	return err
}

func (k *Keyring) install(id KeyID, aead cipher.AEAD, block uint64) {
	a := &activeKey{id: id, aead: aead, low: int64(block / 4)}
	a.budget.Store(int64(block))
	k.active.Store(a)
}

type freshKey struct {
	id   KeyID
	aead cipher.AEAD
}

// createDataKey makes a random data key, stores it wrapped by the current
// master key under a new random id, and adds it to the keyring.
func (k *Keyring) createDataKey(ctx context.Context) (*freshKey, error) {
	if len(*k.keys.Load()) >= MaxDataKeys {
		return nil, fmt.Errorf("%w: %d in bucket %s", ErrTooManyKeys, MaxDataKeys, k.o.Bucket)
	}
	key := make([]byte, k.o.AEAD.KeySize())
	defer clear(key)
	rand.Read(key)
	aead, err := k.o.AEAD.New(key)
	if err != nil {
		return nil, fmt.Errorf("atrest: data key cipher: %w", err)
	}
	w := k.masters.Load().Current()
	for range 8 {
		var b [KeyIDSize]byte
		rand.Read(b[:])
		id := KeyID(binary.BigEndian.Uint32(b[:]))
		if _, known := (*k.keys.Load())[id]; id == 0 || known {
			continue
		}
		wrapped, err := w.Wrap(key, dataKeyAAD(id, k.o.AEAD.Name()))
		if err != nil {
			return nil, fmt.Errorf("atrest: wrapping a data key with master key %s: %w", w.ID(), err)
		}
		data, err := json.Marshal(dataKeyRecord{V: 1, ID: id.String(), Alg: k.o.AEAD.Name(),
			Created: time.Now().UTC(), Master: w.ID(), Wrapped: wrapped})
		if err != nil {
			return nil, err
		}
		_, err = k.kv.Create(ctx, kvDataKeyPrefix+id.String(), data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("atrest: storing data key %s: %w", id, err)
		}
		k.addKey(id, aead)
		return &freshKey{id, aead}, nil
	}
	return nil, errors.New("atrest: no free data key id")
}

func (k *Keyring) addKey(id KeyID, aead cipher.AEAD) {
	k.keysMu.Lock()
	m := maps.Clone(*k.keys.Load())
	m[id] = aead
	k.keys.Store(&m)
	k.keysMu.Unlock()
}

// aeadFor returns the cipher of a data key, fetching the key from the
// bucket when this node has not seen it yet.
func (k *Keyring) aeadFor(id KeyID) (cipher.AEAD, error) {
	if a, ok := (*k.keys.Load())[id]; ok {
		return a, nil
	}
	if k.closed.Load() {
		return nil, ErrClosed
	}
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	if a, ok := (*k.keys.Load())[id]; ok {
		return a, nil
	}
	if m, ok := k.misses[id]; ok && time.Since(m.at) < missTTL {
		return nil, m.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), k.o.Timeout)
	defer cancel()
	name := kvDataKeyPrefix + id.String()
	e, err := k.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		err = fmt.Errorf("%w: %s is not in bucket %s", ErrUnknownKey, id, k.o.Bucket)
		k.remember(id, err)
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("atrest: looking up data key %s: %w", id, err)
	}
	got, aead, err := k.unwrapEntry(name, e.Value())
	if err == nil && got != id {
		err = fmt.Errorf("%w: entry %s holds data key %s", ErrMalformed, name, got)
	}
	if err != nil {
		k.remember(id, err)
		return nil, err
	}
	k.addKey(id, aead)
	return aead, nil
}

func (k *Keyring) remember(id KeyID, err error) {
	if len(k.misses) >= maxMisses {
		clear(k.misses)
	}
	k.misses[id] = miss{time.Now(), err}
}

// unwrapEntry parses a dk.<id> entry and unwraps its key.
func (k *Keyring) unwrapEntry(name string, value []byte) (KeyID, cipher.AEAD, error) {
	var rec dataKeyRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return 0, nil, fmt.Errorf("%w: entry %s of bucket %s is not a data key", ErrMalformed, name, k.o.Bucket)
	}
	return k.unwrapRecord(name, &rec)
}

// unwrapRecord checks a data key entry and unwraps its key.
func (k *Keyring) unwrapRecord(name string, rec *dataKeyRecord) (KeyID, cipher.AEAD, error) {
	if rec.V != 1 {
		return 0, nil, fmt.Errorf("%w: entry %s of bucket %s has version %d", ErrMalformed, name, k.o.Bucket, rec.V)
	}
	id, err := ParseKeyID(rec.ID)
	if err != nil || name != kvDataKeyPrefix+rec.ID {
		return 0, nil, fmt.Errorf("%w: entry %s of bucket %s names data key %q", ErrMalformed, name, k.o.Bucket, rec.ID)
	}
	if rec.Alg != k.o.AEAD.Name() {
		return 0, nil, fmt.Errorf("atrest: data key %s is for %s, this keyring uses %s", id, rec.Alg, k.o.AEAD.Name())
	}
	masters := k.masters.Load()
	w := masters.Get(rec.Master)
	if w == nil {
		masters = k.reloadMasters()
		w = masters.Get(rec.Master)
	}
	if w == nil {
		return 0, nil, masters.unknownMaster("data key "+id.String(), rec.Master)
	}
	key, err := w.Unwrap(rec.Wrapped, dataKeyAAD(id, rec.Alg))
	if err != nil {
		return 0, nil, fmt.Errorf("%w: data key %s does not unwrap with master key %s (%v): the entry was altered", ErrWrongMasterKey, id, rec.Master, err)
	}
	defer clear(key)
	aead, err := k.o.AEAD.New(key)
	if err != nil {
		return 0, nil, fmt.Errorf("atrest: data key %s: %w", id, err)
	}
	return id, aead, nil
}

// reloadMasters re-reads Options.MasterKeyFile (at most every 5 s) and
// returns the master keys to use.
func (k *Keyring) reloadMasters() *MasterKeys {
	if k.o.MasterKeyFile == "" {
		return k.masters.Load()
	}
	k.reloadMu.Lock()
	defer k.reloadMu.Unlock()
	if time.Since(k.lastReload) < reloadEvery {
		return k.masters.Load()
	}
	k.lastReload = time.Now()
	m, err := LoadMasterKeyFile(k.o.MasterKeyFile)
	if err != nil {
		k.log.Warn("encryption at rest: master key file not reloaded", "err", err)
		return k.masters.Load()
	}
	if cur := k.masters.Load(); !slices.Equal(cur.IDs(), m.IDs()) {
		k.log.Info("encryption at rest: master key file reloaded", "file", k.o.MasterKeyFile, "current", m.Current().ID())
	}
	k.masters.Store(m)
	return m
}

// entry is a dk.<id> entry as stored.
type entry struct {
	name string
	rev  uint64
	rec  dataKeyRecord
}

// dataKeyEntries returns every data key entry of the bucket.
func (k *Keyring) dataKeyEntries(ctx context.Context) ([]entry, error) {
	w, err := k.kv.Watch(ctx, kvDataKeyPrefix+"*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("atrest: listing bucket %s: %w", k.o.Bucket, err)
	}
	defer w.Stop() //nolint:errcheck
	var out []entry
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("atrest: listing bucket %s: %w", k.o.Bucket, ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("atrest: listing bucket %s: watcher stopped", k.o.Bucket)
			}
			if e == nil {
				return out, nil
			}
			var rec dataKeyRecord
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return nil, fmt.Errorf("%w: entry %s of bucket %s is not a data key", ErrMalformed, e.Key(), k.o.Bucket)
			}
			out = append(out, entry{name: e.Key(), rev: e.Revision(), rec: rec})
		}
	}
}

// loadAll unwraps every data key of the bucket.
func (k *Keyring) loadAll(ctx context.Context) error {
	entries, err := k.dataKeyEntries(ctx)
	if err != nil {
		return err
	}
	m := map[KeyID]cipher.AEAD{}
	for _, e := range entries {
		id, aead, err := k.unwrapRecord(e.name, &e.rec)
		if err != nil {
			return err
		}
		m[id] = aead
	}
	k.keysMu.Lock()
	k.keys.Store(&m)
	k.keysMu.Unlock()
	return nil
}

// Rotate makes a new data key the active one, for every node (they follow
// the bucket's "active" entry). Old data keys stay for reading; nothing
// already sealed is rewritten.
func (k *Keyring) Rotate(ctx context.Context) (KeyID, error) {
	if k.o.ReadOnly {
		return 0, ErrReadOnly
	}
	if k.closed.Load() {
		return 0, ErrClosed
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	fresh, err := k.createDataKey(ctx)
	if err != nil {
		return 0, err
	}
	block := k.o.ReserveBlock
	for range 16 {
		e, err := k.kv.Get(ctx, kvActive)
		notFound := errors.Is(err, jetstream.ErrKeyNotFound)
		if err != nil && !notFound {
			return 0, fmt.Errorf("atrest: active data key: %w", err)
		}
		next := activeRecord{ID: fresh.id.String(), Reserved: block, Since: time.Now().UTC()}
		if err := k.casActive(ctx, next, e, notFound); err != nil {
			if conflict(err) {
				continue
			}
			return 0, err
		}
		k.install(fresh.id, fresh.aead, block)
		k.log.Info("encryption at rest: data key rotated", "key", fresh.id)
		return fresh.id, nil
	}
	return 0, errors.New("atrest: active data key: too many concurrent updates")
}

// Rewrap makes masters the keyring's master keys (nil keeps the current
// set) and rewraps, under its current master key, every data key wrapped
// with another one. Only the wrapped data keys change; sealed values are
// not touched. It returns the number of data keys rewrapped.
func (k *Keyring) Rewrap(ctx context.Context, masters *MasterKeys) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if masters != nil {
		k.masters.Store(masters)
	}
	m := k.masters.Load()
	cur := m.Current()
	n := 0
	for attempt := 0; ; attempt++ {
		entries, err := k.dataKeyEntries(ctx)
		if err != nil {
			return n, err
		}
		retry := false
		for _, e := range entries {
			if e.rec.Master == cur.ID() {
				continue
			}
			w := m.Get(e.rec.Master)
			if w == nil {
				return n, m.unknownMaster("data key "+e.rec.ID, e.rec.Master)
			}
			id, err := ParseKeyID(e.rec.ID)
			if err != nil {
				return n, err
			}
			aad := dataKeyAAD(id, e.rec.Alg)
			key, err := w.Unwrap(e.rec.Wrapped, aad)
			if err != nil {
				return n, fmt.Errorf("%w: data key %s does not unwrap with master key %s", ErrWrongMasterKey, e.rec.ID, e.rec.Master)
			}
			wrapped, err := cur.Wrap(key, aad)
			clear(key)
			if err != nil {
				return n, fmt.Errorf("atrest: rewrapping data key %s: %w", e.rec.ID, err)
			}
			rec := e.rec
			rec.Master, rec.Wrapped = cur.ID(), wrapped
			data, err := json.Marshal(rec)
			if err != nil {
				return n, err
			}
			if _, err := k.kv.Update(ctx, e.name, data, e.rev); err != nil {
				if conflict(err) && attempt < 3 {
					retry = true
					continue
				}
				return n, fmt.Errorf("atrest: rewrapping data key %s: %w", e.rec.ID, err)
			}
			n++
		}
		if !retry {
			return n, nil
		}
	}
}

// KeyInfo describes one data key (never the key).
type KeyInfo struct {
	ID      KeyID     `json:"id"`
	Created time.Time `json:"created"`
	Master  string    `json:"master"` // id of the master key that wraps it
	Active  bool      `json:"active"`
}

// Status describes the keyring.
type Status struct {
	Bucket string `json:"bucket"`
	// Active is the data key new values are sealed with; Reserved the
	// seals all nodes reserved on it so far, out of MaxSealsPerKey.
	Active         KeyID  `json:"active"`
	Reserved       uint64 `json:"reserved"`
	MaxSealsPerKey uint64 `json:"max_seals_per_key"`
	// Masters are the master key ids this node holds, current first.
	Masters []string `json:"masters"`
	// Keys are every data key, oldest first.
	Keys []KeyInfo `json:"keys"`
}

// Status reads the keyring's state from the bucket.
func (k *Keyring) Status(ctx context.Context) (Status, error) {
	st := Status{Bucket: k.o.Bucket, MaxSealsPerKey: k.o.MaxSealsPerKey, Masters: k.masters.Load().IDs()}
	e, err := k.kv.Get(ctx, kvActive)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return st, fmt.Errorf("atrest: active data key: %w", err)
	default:
		var rec activeRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return st, fmt.Errorf("%w: entry %s of bucket %s", ErrMalformed, kvActive, k.o.Bucket)
		}
		st.Active, _ = ParseKeyID(rec.ID)
		st.Reserved = rec.Reserved
	}
	entries, err := k.dataKeyEntries(ctx)
	if err != nil {
		return st, err
	}
	for _, e := range entries {
		id, _ := ParseKeyID(e.rec.ID)
		st.Keys = append(st.Keys, KeyInfo{ID: id, Created: e.rec.Created, Master: e.rec.Master, Active: id == st.Active && id != 0})
	}
	slices.SortStableFunc(st.Keys, func(a, b KeyInfo) int { return a.Created.Compare(b.Created) })
	return st, nil
}

// MarshalText implements encoding.TextMarshaler (8 hex digits).
func (id KeyID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *KeyID) UnmarshalText(b []byte) error {
	v, err := ParseKeyID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
