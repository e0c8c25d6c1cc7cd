package broker

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/backends"
)

// authCache remembers the authentication hook's answers for
// Backends.AuthCacheTTL, so that clients reconnecting again and again with
// the same credentials (a reconnect storm, several tabs) do not each cost
// a call to the enterprise system, and makes concurrent hellos with the
// same credentials share one call.
//
//   - The key is HMAC-SHA256 under a random key drawn at start (never
//     stored) of the tenant, username and password (length-prefixed), and
//     of the client address the hook is also given (a hook may decide by
//     network): the plaintext is never kept, and the keys mean nothing
//     outside this process.
//   - An identity is kept for TTL; a refusal for min(TTL, RefusalTTL),
//     long enough to absorb a storm of clients retrying a stale password,
//     short enough that an account just created or unlocked gets in at
//     once. An error, or a supervisor's fallback (the hook did not
//     answer), is never kept.
//   - At most max identities and refusals; a new one beyond that evicts
//     the oldest. Calls in flight are not counted: there are at most as
//     many as backend workers.
//
// A cached identity stays valid until it expires: an account disabled, or
// a password changed, in the directory takes effect within TTL for
// clients that already signed in with it.
type authCache struct {
	key        [32]byte
	ttl        time.Duration
	refusalTTL time.Duration
	max        int
	now        func() time.Time

	mu      sync.Mutex
	entries map[authKey]*list.Element // of *authEntry
	order   list.List                 // oldest first
	flights map[authKey][]authWaiter  // calls in flight and the hellos waiting for them

	hits, misses, shared *metrics.Counter
}

// RefusalTTL caps how long a refusal is cached.
const RefusalTTL = 5 * time.Second

// DefaultAuthCacheSize is the default Backends.AuthCacheSize.
const DefaultAuthCacheSize = 10000

type authKey [sha256.Size]byte

type authEntry struct {
	key   authKey
	id    backends.Identity
	until time.Time
}

// authWaiter is a hello waiting for a call, and where to answer it.
type authWaiter struct {
	it   *item
	mbox *mailbox
}

// lookupResult says what lookup did.
type lookupResult uint8

const (
	authMiss   lookupResult = iota // the caller must call the hook, then settle
	authHit                        // answered from the cache
	authJoined                     // a call for the same credentials is in flight: settle answers w
)

func newAuthCache(ttl time.Duration, max int, set *metrics.Set, now func() time.Time) *authCache {
	c := &authCache{
		ttl:        ttl,
		refusalTTL: min(ttl, RefusalTTL),
		max:        max,
		now:        now,
		entries:    make(map[authKey]*list.Element),
		flights:    make(map[authKey][]authWaiter),
	}
	_, _ = rand.Read(c.key[:])
	c.hits = set.NewCounter(`unigate_broker_hook_auth_cache_total{result="hit"}`)
	c.misses = set.NewCounter(`unigate_broker_hook_auth_cache_total{result="miss"}`)
	c.shared = set.NewCounter(`unigate_broker_hook_auth_cache_total{result="shared"}`)
	set.NewGauge("unigate_broker_hook_auth_cache_entries", func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return float64(len(c.entries))
	})
	return c
}

// keyOf returns the cache key of cred.
func (c *authCache) keyOf(cred *backends.Credentials) authKey {
	m := hmac.New(sha256.New, c.key[:])
	var n [4]byte
	for _, f := range [...]string{cred.Tenant, cred.Role, cred.Username, cred.Password, cred.Token, string(cred.SSOAssertion), cred.RemoteAddr} {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		m.Write(n[:])
		m.Write([]byte(f))
	}
	var k authKey
	m.Sum(k[:0])
	return k
}

// lookup answers from the cache (authHit, with a copy of the identity),
// adds w to the call in flight for k (authJoined), or registers a call
// the caller must make and settle (authMiss).
func (c *authCache) lookup(k authKey, w authWaiter) (backends.Identity, lookupResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		e := el.Value.(*authEntry)
		if c.now().Before(e.until) {
			c.hits.Inc()
			return cloneIdentity(e.id), authHit
		}
		c.order.Remove(el)
		delete(c.entries, k)
	}
	if ws, ok := c.flights[k]; ok {
		c.flights[k] = append(ws, w)
		c.shared.Inc()
		return backends.Identity{}, authJoined
	}
	c.flights[k] = nil
	c.misses.Inc()
	return backends.Identity{}, authMiss
}

// settle records the answer of the call for k (when it may be kept) and
// returns the hellos that joined it.
func (c *authCache) settle(k authKey, id backends.Identity, err error) []authWaiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := c.flights[k]
	delete(c.flights, k)
	var ttl time.Duration
	switch {
	case err != nil, id.Fallback, id.OK && id.ID == "":
		return ws // not the hook's decision
	case id.OK:
		ttl = c.ttl
	default:
		ttl = c.refusalTTL
	}
	now := c.now()
	if el, ok := c.entries[k]; ok {
		c.order.Remove(el)
		delete(c.entries, k)
	}
	for len(c.entries) >= c.max {
		old := c.order.Front()
		c.order.Remove(old)
		delete(c.entries, old.Value.(*authEntry).key)
	}
	c.entries[k] = c.order.PushBack(&authEntry{key: k, id: cloneIdentity(id), until: now.Add(ttl)})
	return ws
}

// len returns the number of cached answers.
func (c *authCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func cloneIdentity(id backends.Identity) backends.Identity {
	id.Roles = slices.Clone(id.Roles)
	id.Skills = slices.Clone(id.Skills)
	return id
}
