package limiter

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

const (
	keyShards     = 64
	sweepInterval = int64(10 * time.Second)
)

// keyState is what is kept per key: open connections and the bucket of new
// connections.
type keyState struct {
	conns  int32
	bucket Bucket
}

type keyShard[K comparable] struct {
	mu        sync.Mutex
	m         map[K]keyState
	lastSweep int64
	_         [32]byte // keep shards on separate cache lines
}

// keyed is a bounded map of per-key limits, split into shards by a seeded
// hash (so an attacker cannot aim at one shard).
type keyed[K comparable] struct {
	seed   maphash.Seed
	hash   func(maphash.Seed, K) uint64
	shards [keyShards]keyShard[K]
}

func newKeyed[K comparable](hash func(maphash.Seed, K) uint64) *keyed[K] {
	k := &keyed[K]{seed: maphash.MakeSeed(), hash: hash}
	for i := range k.shards {
		k.shards[i].m = make(map[K]keyState)
	}
	return k
}

func (k *keyed[K]) shard(key K) *keyShard[K] {
	return &k.shards[k.hash(k.seed, key)%keyShards]
}

// refusal is why acquire said no.
type refusal uint8

const (
	refusedNone refusal = iota
	refusedConcurrent
	refusedRate
)

// acquire counts one more connection for key unless it is over maxConns
// (0: no cap) or its rate; exempt keys are counted but never refused.
// maxKeys bounds the keys held by the whole map (see the package doc).
func (k *keyed[K]) acquire(key K, now int64, maxConns int, rate Rate, exempt bool, maxKeys int) (refusal, time.Duration) {
	sh := k.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st, found := sh.m[key]
	if !found {
		sh.makeRoom(now, max(maxKeys/keyShards, 1))
	} else if now-sh.lastSweep >= sweepInterval {
		sh.sweep(now)
	}
	if !exempt {
		if maxConns > 0 && int(st.conns) >= maxConns {
			return refusedConcurrent, 0
		}
		if ok, wait := st.bucket.Allow(rate, now, 1); !ok {
			return refusedRate, wait
		}
	}
	st.conns++
	sh.m[key] = st
	return refusedNone, 0
}

// release undoes one successful acquire.
func (k *keyed[K]) release(key K, now int64) {
	sh := k.shard(key)
	sh.mu.Lock()
	st, found := sh.m[key]
	if found {
		st.conns--
		if st.conns <= 0 && st.bucket.full(now) {
			delete(sh.m, key)
		} else {
			st.conns = max(st.conns, 0)
			sh.m[key] = st
		}
	}
	sh.mu.Unlock()
}

// makeRoom runs before a new key is added: a periodic sweep, and when the
// shard is at its bound, eviction of idle keys down to three quarters of it.
func (sh *keyShard[K]) makeRoom(now int64, bound int) {
	if now-sh.lastSweep >= sweepInterval {
		sh.sweep(now)
	}
	if len(sh.m) < bound {
		return
	}
	sh.sweep(now)
	target := bound * 3 / 4
	for key, st := range sh.m {
		if len(sh.m) <= target {
			break
		}
		if st.conns <= 0 {
			delete(sh.m, key)
		}
	}
}

// sweep drops the keys that carry no state: no connection, full bucket.
func (sh *keyShard[K]) sweep(now int64) {
	sh.lastSweep = now
	for key, st := range sh.m {
		if st.conns <= 0 && st.bucket.full(now) {
			delete(sh.m, key)
		}
	}
}

// len returns the number of keys held.
func (k *keyed[K]) len() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// conns returns the connections counted for key.
func (k *keyed[K]) conns(key K) int {
	sh := k.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return int(sh.m[key].conns)
}

func hashAddr(seed maphash.Seed, a netip.Addr) uint64 {
	b := a.As16()
	return maphash.Bytes(seed, b[:])
}

// ipKey is the key of a client address: IPv4 as is, IPv6 by its /64 (one
// subscriber's allocation, so an IPv6 client cannot dodge per-IP limits by
// changing its interface identifier).
func ipKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
