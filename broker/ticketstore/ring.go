package ticketstore

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
)

// Defaults of RingOptions.
const (
	// DefaultKeysBucket is the bucket of the ticket key rings.
	DefaultKeysBucket = "UNIGATE_TICKET_KEYS"
	// DefaultLead is how long before its activation a new key is
	// published, at most (a quarter of the rotation period when shorter).
	DefaultLead = time.Minute
	// DefaultCheck is how often a node checks whether the ring is due, at
	// most (half the lead when shorter).
	DefaultCheck = 30 * time.Second
	// DefaultRingTimeout bounds one bucket operation of the ring.
	DefaultRingTimeout = 5 * time.Second
)

// RingOptions configures OpenRing. Wrapper, Rotation and Lifetime are
// required; zero values of the others select the defaults.
type RingOptions struct {
	// Bucket is the key-value bucket (default DefaultKeysBucket).
	Bucket string
	// Replicas is the bucket's replication factor (default 1).
	Replicas int
	// Wrapper wraps the ticket keys in the bucket: the at-rest master key
	// (atrest.MasterKeys.Current), or the ticket key file's. Nodes share a
	// ring only when their wrappers have the same ID.
	Wrapper atrest.KeyWrapper
	// Previous are the wrappers Wrapper replaced (the older master keys of
	// a rotated master key file, newest first). When the bucket has no
	// ring for Wrapper yet, the ring of the first of them that has a
	// readable one is carried over: its keys, rewrapped by Wrapper, start
	// the new ring, so the tickets they sealed still resume. Their own
	// entries are left as they are.
	Previous []atrest.KeyWrapper
	// Rotation is how long a key seals before the next one replaces it.
	Rotation time.Duration
	// Lifetime is the longest lifetime of a ticket
	// (crypto.ServerConfig.TicketLifetime): a key stays on the ring for
	// Lifetime + Margin after it stops sealing.
	Lifetime time.Duration
	// Lead is how long before its activation a new key is published
	// (default min(Rotation/4, DefaultLead)); it must exceed the time a
	// ring update takes to reach every node plus their clock skew.
	Lead time.Duration
	// Check is how often the node re-reads the ring and rotates it when
	// due (default min(Lead/2, DefaultCheck)); the watch brings other
	// nodes' updates in between.
	Check time.Duration
	// Margin is the clock skew allowed between nodes (default
	// DefaultMargin; negative: none).
	Margin time.Duration
	// Timeout bounds one bucket operation (default DefaultRingTimeout).
	Timeout time.Duration
	// Logger receives rotations and failures, with key ids only.
	Logger *slog.Logger
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
	// Metrics, when set, receives unigate_ticketstore_ring_* metrics.
	Metrics *metrics.Set
}

func (o *RingOptions) setDefaults() error {
	switch {
	case o.Wrapper == nil:
		return errors.New("ticketstore: RingOptions.Wrapper is nil")
	case o.Rotation <= 0 || o.Lifetime <= 0:
		return fmt.Errorf("ticketstore: rotation %v and lifetime %v must be positive", o.Rotation, o.Lifetime)
	}
	if o.Bucket == "" {
		o.Bucket = DefaultKeysBucket
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Margin == 0 {
		o.Margin = DefaultMargin
	}
	o.Margin = max(o.Margin, 0)
	if o.Lead <= 0 {
		o.Lead = min(o.Rotation/4, DefaultLead)
	}
	if o.Lead >= o.Rotation {
		return fmt.Errorf("ticketstore: lead %v must be shorter than the rotation %v", o.Lead, o.Rotation)
	}
	if o.Check <= 0 {
		o.Check = min(o.Lead/2, DefaultCheck)
	}
	o.Check = max(o.Check, 10*time.Millisecond)
	if o.Timeout <= 0 {
		o.Timeout = DefaultRingTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	// The keys a ring holds: one per rotation over a ticket lifetime, the
	// one sealing, the next one published ahead.
	if need := int((o.Lifetime+o.Margin)/o.Rotation) + 3; need > MaxRingKeys {
		return fmt.Errorf("ticketstore: a rotation every %v with tickets living %v needs %d keys on the ring; at most %d: rotate less often",
			o.Rotation, o.Lifetime, need, MaxRingKeys)
	}
	return nil
}

// Ring keeps a crypto.TicketKeyring in step with the cluster's ring for
// its wrapper; see the package documentation.
type Ring struct {
	kv   jetstream.KeyValue
	o    RingOptions
	ring *crypto.TicketKeyring
	name string
	log  *slog.Logger

	mu      sync.Mutex // everything below; held across bucket operations
	entry   *ringEntry // the ring applied; nil when absent or unreadable
	rev     uint64     // revision of the entry applied (or found unreadable)
	absent  bool       // the bucket has no entry (never written, or deleted)
	lastErr string     // the failure last logged, so a repeated one is logged once
	closed  bool

	stop     chan struct{}
	done     chan struct{}
	watcher  jetstream.KeyWatcher
	cancel   context.CancelFunc
	stopOnce sync.Once

	rotations, updates, failures *metrics.Counter
}

// OpenRing opens (or creates) the bucket, installs the cluster's ring for
// o.Wrapper and ring's AEAD into ring (creating the ring when there is
// none, replacing it when it does not unwrap), rotates it when it is due,
// and keeps it in step until Close. The ring's own keys are replaced.
func OpenRing(ctx context.Context, js jetstream.JetStream, ring *crypto.TicketKeyring, o RingOptions) (*Ring, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "Unigate: resumption ticket keys, wrapped by the master key or the ticket key file",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("ticketstore: bucket %s: %w", o.Bucket, err)
	}
	r := &Ring{
		kv: kv, o: o, ring: ring, log: o.Logger,
		name: entryName(o.Wrapper.ID(), ring.AEAD().Name()),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	set := o.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	r.rotations = set.NewCounter(`unigate_ticketstore_ring_rotations_total`)
	r.updates = set.NewCounter(`unigate_ticketstore_ring_updates_total`)
	r.failures = set.NewCounter(`unigate_ticketstore_ring_errors_total`)
	set.NewGauge(`unigate_ticketstore_ring_keys`, func() float64 { return float64(len(ring.KeyIDs())) })

	r.mu.Lock()
	err = r.load(ctx)
	if err == nil {
		err = r.check(ctx, false)
	}
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r.entry == nil {
		return nil, fmt.Errorf("ticketstore: no readable ring in %s", r.name)
	}
	wctx, cancel := context.WithCancel(context.Background())
	w, err := kv.Watch(wctx, r.name)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("ticketstore: watching %s: %w", r.name, err)
	}
	r.watcher, r.cancel = w, cancel
	go r.run(w.Updates())
	return r, nil
}

// Keyring is the TicketKeyring the ring keeps in step.
func (r *Ring) Keyring() *crypto.TicketKeyring { return r.ring }

// Name is the bucket key of this node's ring.
func (r *Ring) Name() string { return r.name }

// Rotate publishes a new key now, sealing from Lead on, whether or not the
// ring is due (operators; tests).
func (r *Ring) Rotate(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if err := r.load(ctx); err != nil {
		return err
	}
	return r.check(ctx, true)
}

// Close stops the watch and the periodic check. The keyring keeps the
// keys it has.
func (r *Ring) Close() error {
	r.stopOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		close(r.stop)
		_ = r.watcher.Stop()
		r.cancel()
	})
	<-r.done
	return nil
}

// run applies the watch's updates and checks the ring every o.Check.
func (r *Ring) run(updates <-chan jetstream.KeyValueEntry) {
	defer close(r.done)
	t := time.NewTicker(r.o.Check)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case e, ok := <-updates:
			if !ok {
				updates = nil // the periodic check reads the ring from now on
				continue
			}
			if e == nil {
				continue // the initial values are delivered
			}
			r.mu.Lock()
			if e.Operation() == jetstream.KeyValuePut {
				_ = r.apply(e.Value(), e.Revision())
			} else if e.Revision() > r.rev {
				r.entry, r.absent, r.rev = nil, true, e.Revision()
			}
			r.mu.Unlock()
		case <-t.C:
			r.checkNow()
		}
	}
}

// checkNow re-reads the ring and rotates it when due: the periodic check.
func (r *Ring) checkNow() {
	ctx, cancel := context.WithTimeout(context.Background(), r.o.Timeout)
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.load(ctx)
	if err == nil {
		err = r.check(ctx, false)
	}
	r.report(err)
}

// report logs a failure of the periodic check once, and its recovery.
// r.mu is held.
func (r *Ring) report(err error) {
	if err == nil {
		if r.lastErr != "" {
			r.log.Info("ticket keys: the ring is reachable again", "ring", r.name)
			r.lastErr = ""
		}
		return
	}
	r.failures.Inc()
	if msg := err.Error(); msg != r.lastErr {
		r.lastErr = msg
		r.log.Warn("ticket keys: ring not checked; the keys in place keep working, rotation waits", "ring", r.name, "err", err)
	}
}

// load reads the entry and applies it. r.mu is held.
func (r *Ring) load(ctx context.Context) error {
	e, err := r.kv.Get(ctx, r.name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		r.entry, r.absent = nil, true
		return nil
	}
	if err != nil {
		return fmt.Errorf("ticketstore: reading %s: %w", r.name, err)
	}
	_ = r.apply(e.Value(), e.Revision()) // an unreadable entry is replaced by check
	return nil
}

// apply installs the ring in data (revision rev) unless it was applied
// already. An unreadable entry is logged and left for check to replace;
// the keys in place stay. r.mu is held.
func (r *Ring) apply(data []byte, rev uint64) error {
	if rev < r.rev || rev == r.rev && !r.absent {
		return nil // older, or this very revision was applied (or found unreadable) already
	}
	r.absent = false
	r.rev = rev
	e, keys, err := parseEntry(data, r.o.Wrapper, r.ring.AEAD())
	if err == nil {
		err = r.ring.SetSharedKeys(keys)
		wipeKeys(keys)
	}
	if err != nil {
		r.entry = nil
		r.failures.Inc()
		r.log.Error("ticket keys: the ring in the bucket is unreadable (altered?); it is replaced by a new ring, and tickets sealed under it resume no more",
			"ring", r.name, "revision", rev, "err", err)
		return err
	}
	r.entry = e
	r.updates.Inc()
	return nil
}

// check writes the next ring when the newest key is due to be replaced
// (or force): a new key published Lead ahead of its activation, the keys
// whose tickets have all expired dropped. With no readable ring it writes
// a first one whose key seals at once. Losing the compare-and-set to
// another node is not an error: its ring is applied. r.mu is held.
func (r *Ring) check(ctx context.Context, force bool) error {
	if r.absent && r.entry == nil && len(r.o.Previous) > 0 {
		if err := r.carryOver(ctx); err != nil {
			return err
		}
	}
	now := r.o.Now()
	var old []ringKey
	active := now
	if r.entry != nil {
		old = r.entry.Keys
		newest := old[0].activeTime()
		if !force && now.Before(newest.Add(r.o.Rotation-r.o.Lead)) {
			return nil
		}
		active = now.Add(r.o.Lead)
		if next := newest.Add(r.o.Rotation); !force && next.After(active) {
			active = next
		}
		if !active.After(newest) {
			// Forced while the next key waits for its activation: the
			// new one follows it, so the ring stays newest first.
			active = newest.Add(time.Millisecond)
		}
	}
	aead := r.ring.AEAD()
	secret := make([]byte, aead.KeySize())
	defer clear(secret)
	var id uint32
	for {
		rand.Read(secret)
		id = crypto.TicketKeyID(secret)
		if !hasKey(old, id) {
			break
		}
	}
	activeMs := active.UnixMilli()
	wrapped, err := r.o.Wrapper.Wrap(secret, keyAAD(id, aead.Name(), activeMs))
	if err != nil {
		return fmt.Errorf("ticketstore: wrapping a ticket key with %s: %w", r.o.Wrapper.ID(), err)
	}
	next := ringEntry{V: ringVersion, Alg: aead.Name(), Wrapper: r.o.Wrapper.ID(),
		Keys: append([]ringKey{{ID: formatKeyID(id), Active: activeMs, Wrapped: wrapped}}, r.keep(old, now)...)}
	data, err := json.Marshal(next)
	if err != nil {
		return err
	}
	var rev uint64
	switch {
	case r.absent:
		rev, err = r.kv.Create(ctx, r.name, data)
	default:
		rev, err = r.kv.Update(ctx, r.name, data, r.rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return r.load(ctx) // another node was first
	}
	if err != nil {
		return fmt.Errorf("ticketstore: writing %s: %w", r.name, err)
	}
	if err := r.apply(data, rev); err != nil {
		return err
	}
	r.rotations.Inc()
	dropped := len(old) + 1 - len(next.Keys)
	if old == nil {
		r.log.Info("ticket keys: new ring", "ring", r.name, "key", next.Keys[0].ID)
	} else {
		r.log.Info("ticket keys: rotated", "ring", r.name, "key", next.Keys[0].ID, "seals_from", active.UTC(),
			"keys", len(next.Keys), "dropped", dropped)
	}
	return nil
}

// carryOver creates the ring of r.o.Wrapper from the ring of the first
// previous wrapper that has a readable one: the same keys and activation
// times, rewrapped, those no live ticket needs dropped. With none (or when
// another node created the ring first, which is then applied) the caller
// goes on as before. r.mu is held; the bucket has no entry for r.name.
func (r *Ring) carryOver(ctx context.Context) error {
	aead := r.ring.AEAD()
	for _, prev := range r.o.Previous {
		if prev == nil || prev.ID() == r.o.Wrapper.ID() {
			continue
		}
		from := entryName(prev.ID(), aead.Name())
		e, err := r.kv.Get(ctx, from)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("ticketstore: reading %s: %w", from, err)
		}
		old, keys, err := parseEntry(e.Value(), prev, aead)
		if err != nil {
			r.log.Warn("ticket keys: the ring of a previous master key is unreadable; not carried over",
				"ring", from, "err", err)
			continue
		}
		next := ringEntry{V: ringVersion, Alg: aead.Name(), Wrapper: r.o.Wrapper.ID()}
		for i, k := range r.keep(old.Keys, r.o.Now()) {
			id, _ := parseKeyID(k.ID)
			wrapped, err := r.o.Wrapper.Wrap(keys[i].Secret, keyAAD(id, aead.Name(), k.Active))
			if err != nil {
				wipeKeys(keys)
				return fmt.Errorf("ticketstore: wrapping a ticket key with %s: %w", r.o.Wrapper.ID(), err)
			}
			next.Keys = append(next.Keys, ringKey{ID: k.ID, Active: k.Active, Wrapped: wrapped})
		}
		wipeKeys(keys)
		data, err := json.Marshal(next)
		if err != nil {
			return err
		}
		rev, err := r.kv.Create(ctx, r.name, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return r.load(ctx) // another node carried it over (or started one) first
		}
		if err != nil {
			return fmt.Errorf("ticketstore: writing %s: %w", r.name, err)
		}
		if err := r.apply(data, rev); err != nil {
			return err
		}
		r.log.Info("ticket keys: ring carried over from a previous master key", "ring", r.name, "from", from,
			"keys", len(next.Keys))
		return nil
	}
	return nil
}

// keep returns the keys of old still needed at now: the newest, and each
// older one while a ticket it sealed may be alive (until its successor's
// activation + Lifetime + Margin); at most MaxRingKeys-1.
func (r *Ring) keep(old []ringKey, now time.Time) []ringKey {
	var out []ringKey
	for i, k := range old {
		if len(out) == MaxRingKeys-1 {
			break
		}
		if i > 0 && now.After(old[i-1].activeTime().Add(r.o.Lifetime+r.o.Margin)) {
			break // and every older key
		}
		out = append(out, k)
	}
	return out
}

func hasKey(keys []ringKey, id uint32) bool {
	for _, k := range keys {
		if got, ok := parseKeyID(k.ID); ok && got == id {
			return true
		}
	}
	return false
}
