package broker

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/protocol"
)

// TestAuthCacheKeys: keys separate every field (no ambiguity between
// "ab"+"c" and "a"+"bc"), and two processes (caches) derive different
// keys for the same credentials.
func TestAuthCacheKeys(t *testing.T) {
	c := newAuthCache(time.Minute, 10, metrics.NewSet(), time.Now)
	other := newAuthCache(time.Minute, 10, metrics.NewSet(), time.Now)
	base := backends.Credentials{Tenant: "acme", Username: "alice", Password: "secret"}
	k := c.keyOf(&base)
	for name, cred := range map[string]backends.Credentials{
		"tenant":   {Tenant: "acme2", Username: "alice", Password: "secret"},
		"username": {Tenant: "acme", Username: "alic", Password: "esecret"},
		"password": {Tenant: "acme", Username: "alice", Password: "secret2"},
		"shifted":  {Tenant: "acmealice", Username: "", Password: "secret"},
		"token":    {Tenant: "acme", Token: "alicesecret"},
		"address":  {Tenant: "acme", Username: "alice", Password: "secret", RemoteAddr: "192.0.2.1"},
	} {
		if c.keyOf(&cred) == k {
			t.Errorf("%s: same key as the base credentials", name)
		}
	}
	if c.keyOf(&base) != k {
		t.Fatal("the key is not stable")
	}
	if other.keyOf(&base) == k {
		t.Fatal("two caches derive the same key: the key is not per process")
	}
}

// TestAuthCacheEntries: identities are kept for the TTL, refusals for at
// most RefusalTTL, errors and fallbacks never; a full cache evicts the
// oldest; a joined lookup gets the answer of the call in flight.
func TestAuthCacheEntries(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	advance := func(d time.Duration) { now.Add(int64(d)) }
	set := metrics.NewSet()
	c := newAuthCache(time.Minute, 3, set, clock)
	key := func(user string) authKey { return c.keyOf(&backends.Credentials{Username: user, Password: "pw"}) }
	miss := func(user string) {
		t.Helper()
		if _, res := c.lookup(key(user), authWaiter{}); res != authMiss {
			t.Fatalf("%s: %v, want a miss", user, res)
		}
	}
	hit := func(user string) backends.Identity {
		t.Helper()
		id, res := c.lookup(key(user), authWaiter{})
		if res != authHit {
			t.Fatalf("%s: %v, want a hit", user, res)
		}
		return id
	}

	miss("alice")
	w := authWaiter{it: &item{}}
	if _, res := c.lookup(key("alice"), w); res != authJoined {
		t.Fatalf("a second lookup during the call: %v, want joined", res)
	}
	ws := c.settle(key("alice"), backends.Identity{OK: true, ID: "alice", Skills: []string{"billing"}}, nil)
	if len(ws) != 1 || ws[0].it != w.it {
		t.Fatalf("settle returned waiters %v, want the joined one", ws)
	}
	id := hit("alice")
	id.Skills[0] = "changed" // the caller's copy
	if hit("alice").Skills[0] != "billing" {
		t.Fatal("a caller changed the cached identity")
	}

	miss("mallory")
	c.settle(key("mallory"), backends.Identity{Reason: "invalid credentials"}, nil)
	if hit("mallory").OK {
		t.Fatal("the cached refusal admits")
	}
	advance(RefusalTTL + time.Millisecond)
	miss("mallory") // the refusal expired, the identity did not
	c.settle(key("mallory"), backends.Identity{Reason: "invalid credentials"}, nil)
	hit("alice")

	for name, res := range map[string]struct {
		id  backends.Identity
		err error
	}{
		"error":              {err: errors.New("ldap down")},
		"fail-closed":        {id: backends.Identity{Reason: "authentication backend unavailable", Fallback: true}},
		"fail-open":          {id: backends.Identity{OK: true, Fallback: true}},
		"anonymous identity": {id: backends.Identity{OK: true}},
	} {
		miss(name)
		c.settle(key(name), res.id, res.err)
		miss(name) // not kept
		c.settle(key(name), res.id, res.err)
	}

	advance(time.Minute)
	miss("alice") // expired
	c.settle(key("alice"), backends.Identity{OK: true, ID: "alice"}, nil)

	// Bounded: 3 entries; the oldest goes first.
	for _, u := range []string{"u1", "u2", "u3"} {
		miss(u)
		c.settle(key(u), backends.Identity{OK: true, ID: u}, nil)
	}
	if n := c.len(); n != 3 {
		t.Fatalf("%d entries, want the bound 3", n)
	}
	miss("alice") // evicted by u3
	hit("u3")
	if h := set.GetOrCreateCounter(`unigate_broker_hook_auth_cache_total{result="hit"}`).Get(); h == 0 {
		t.Fatal("hits not counted")
	}
	if s := set.GetOrCreateCounter(`unigate_broker_hook_auth_cache_total{result="shared"}`).Get(); s != 1 {
		t.Fatalf("shared %d, want 1", s)
	}
}

// countHook authenticates like recHook, counting the calls; while hold is
// set each call waits for release to be closed.
type countHook struct {
	recHook
	calls   atomic.Int64
	hold    atomic.Bool
	release chan struct{}
}

func (h *countHook) Authenticate(ctx context.Context, c backends.Credentials) (backends.Identity, error) {
	h.calls.Add(1)
	if h.hold.Load() {
		select {
		case <-h.release:
		case <-ctx.Done():
			return backends.Identity{}, ctx.Err()
		}
	}
	return h.recHook.Authenticate(ctx, c)
}

// TestPasswordHelloCache: through the broker, a reconnect with the same
// credentials is answered from the cache (welcome, the same identity and
// skills) without calling the hook; a wrong password still calls it, and
// its refusal is cached only briefly; an answer expires after the TTL; a
// hook error is never cached; hellos arriving together with the same
// credentials share one call.
func TestPasswordHelloCache(t *testing.T) {
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	h := &countHook{release: make(chan struct{})}
	e := startEnv(t, Options{AllowAnonymous: true, Now: clock, Backends: &Backends{Hook: h, AuthCacheTTL: time.Minute}})
	signIn := func(name, user, pw string) *protocol.Welcome {
		t.Helper()
		c := e.dial(name, protocol.SubprotocolJSON)
		return c.hello(protocol.Hello{Username: user, Password: pw})
	}
	refused := func(name, user, pw string, code protocol.Code) {
		t.Helper()
		c := e.dial(name, protocol.SubprotocolJSON)
		id := c.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Username: user, Password: pw}})
		c.waitError(id, code)
	}
	calls := func(want int64) {
		t.Helper()
		if n := h.calls.Load(); n != want {
			t.Fatalf("hook called %d times, want %d", n, want)
		}
	}

	if w := signIn("alice 1", "alice", "secret"); w.Role != protocol.RoleAgent || w.UserID != "alice" {
		t.Fatalf("welcome %+v", w)
	}
	calls(1)
	a := e.dial("alice 2", protocol.SubprotocolJSON)
	if w := a.hello(protocol.Hello{Username: "alice", Password: "secret"}); w.Role != protocol.RoleAgent || w.UserID != "alice" {
		t.Fatalf("cached welcome %+v", w)
	}
	if p := a.online(1); len(p.Skills) != 1 || p.Skills[0] != "billing" {
		t.Fatalf("skills from the cache %v, want [billing]", p.Skills)
	}
	calls(1)

	refused("mallory 1", "alice", "guess", protocol.CodeBadToken)
	calls(2)
	refused("mallory 2", "alice", "guess", protocol.CodeBadToken)
	calls(2) // the refusal is cached ...
	offset.Add(int64(RefusalTTL + time.Second))
	refused("mallory 3", "alice", "guess", protocol.CodeBadToken)
	calls(3) // ... for RefusalTTL only
	signIn("alice 3", "alice", "secret")
	calls(3)

	offset.Add(int64(time.Minute))
	signIn("alice 4", "alice", "secret")
	calls(4) // expired after the TTL

	refused("broken 1", "broken", "x", protocol.CodeUnavailable)
	refused("broken 2", "broken", "x", protocol.CodeUnavailable)
	calls(6) // errors are not cached

	// A storm: hellos with the same new credentials while the first call
	// is in flight share it.
	h.hold.Store(true)
	offset.Add(int64(2 * time.Minute))
	clients := make([]*tclient, 4)
	ids := make([]uint64, 4)
	for i := range clients {
		clients[i] = e.dial("storm", protocol.SubprotocolJSON)
		ids[i] = clients[i].send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Username: "alice", Password: "secret"}})
	}
	if !waitFor(t, waitTimeout, func() bool {
		return h.calls.Load() == 7 && counter(e.b, `unigate_broker_hook_auth_cache_total{result="shared"}`) == 3
	}) {
		t.Fatalf("calls %d, shared %d: want 1 call for 4 hellos", h.calls.Load(), counter(e.b, `unigate_broker_hook_auth_cache_total{result="shared"}`))
	}
	close(h.release)
	for i, c := range clients {
		c.waitFor("storm welcome", func(e *protocol.Envelope) bool { return e.ID == ids[i] && e.Kind == protocol.KindWelcome })
	}
	calls(7)
}
