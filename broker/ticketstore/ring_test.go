package ticketstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
)

const (
	testRotation = time.Hour
	testLifetime = 3 * time.Hour
	testLead     = time.Minute
)

func ringOpts(c *clock) RingOptions {
	return RingOptions{Rotation: testRotation, Lifetime: testLifetime, Lead: testLead, Margin: time.Minute,
		Check: time.Hour, Now: c.Now} // the tests run the periodic check themselves
}

// readEntry returns the ring entry in the bucket.
func readEntry(t testing.TB, js jetstream.JetStream, name string) (*ringEntry, uint64) {
	t.Helper()
	kv, err := js.KeyValue(ctxT(t), DefaultKeysBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	var re ringEntry
	if err := json.Unmarshal(e.Value(), &re); err != nil {
		t.Fatal(err)
	}
	return &re, e.Revision()
}

// TestRingSharedAndRotated: the first node creates the ring, the second
// takes it; when the newest key is due both check at once and one
// rotation happens; the new key reaches the other node through the watch
// before it seals, seals from its activation on, and the old key keeps
// opening.
func TestRingSharedAndRotated(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, jsA := connect(t, n)
	_, jsB := connect(t, n)
	c := newClock()
	w := newWrapper(t)
	a := openTestRing(t, jsA, w, crypto.SM4GCM, ringOpts(c))
	b := openTestRing(t, jsB, w, crypto.SM4GCM, ringOpts(c))
	first := a.Keyring().KeyIDs()
	if len(first) != 1 || !slices.Equal(b.Keyring().KeyIDs(), first) {
		t.Fatalf("rings %08x and %08x, want one shared key", first, b.Keyring().KeyIDs())
	}
	if a.Name() != "ring.v1."+w.ID()+".SM4-GCM" {
		t.Fatalf("entry %s", a.Name())
	}

	// Not due yet: nothing is written.
	c.add(testRotation - testLead - time.Second)
	a.checkNow()
	b.checkNow()
	if got := a.counter("unigate_ticketstore_ring_rotations_total") + b.counter("unigate_ticketstore_ring_rotations_total"); got != 1 {
		t.Fatalf("%d rings written before the newest key was due, want only the first", got)
	}

	// Due: both check concurrently, one wins.
	c.add(time.Second)
	var wg sync.WaitGroup
	wg.Go(a.checkNow)
	wg.Go(b.checkNow)
	wg.Wait()
	if got := a.counter("unigate_ticketstore_ring_rotations_total") + b.counter("unigate_ticketstore_ring_rotations_total"); got != 2 {
		t.Fatalf("%d rings written in all, want the first and one rotation", got)
	}
	waitFor(t, 5*time.Second, "both nodes to hold the rotated ring", func() bool {
		return len(a.Keyring().KeyIDs()) == 2 && slices.Equal(a.Keyring().KeyIDs(), b.Keyring().KeyIDs())
	})
	ids := a.Keyring().KeyIDs()
	if ids[1] != first[0] {
		t.Fatalf("ring %08x does not keep the first key %08x", ids, first[0])
	}
	now := c.Now()
	for _, r := range []*testRing{a, b} {
		if got := r.Keyring().SealingKeyID(now); got != first[0] {
			t.Fatalf("sealing with %08x before the new key's activation", got)
		}
		if got := r.Keyring().SealingKeyID(now.Add(testLead)); got != ids[0] {
			t.Fatalf("sealing with %08x after the new key's activation, want %08x", got, ids[0])
		}
	}
	e, _ := readEntry(t, jsA, a.Name())
	if got := e.Keys[0].activeTime().Sub(e.Keys[1].activeTime()); got != testRotation {
		t.Fatalf("the new key activates %v after the old one, want the rotation period %v", got, testRotation)
	}
}

// TestRingForcedRotationAfterPublication: a forced rotation while the next
// key is published but not active yet puts the new key after it (the
// ring stays newest first and readable).
func TestRingForcedRotationAfterPublication(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	c := newClock()
	r := openTestRing(t, js, newWrapper(t), crypto.SM4GCM, ringOpts(c))
	c.add(testRotation - testLead) // due: the next key activates a lead from now
	r.checkNow()
	if err := r.Rotate(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	e, _ := readEntry(t, js, r.Name())
	if len(e.Keys) != 3 || e.Keys[0].Active <= e.Keys[1].Active {
		t.Fatalf("ring after a forced rotation: %+v", e.Keys)
	}
	if got := r.counter("unigate_ticketstore_ring_errors_total"); got != 0 {
		t.Fatalf("%d errors: the node could not read its own ring", got)
	}
	if !slices.Equal(r.Keyring().KeyIDs(), entryIDs(e)) {
		t.Fatal("the keyring is not the bucket's ring")
	}
}

// TestRingKeepsKeysForLiveTickets: a key stays on the ring until every
// ticket it sealed has expired (its successor's activation + lifetime +
// margin), and no longer; the ring stays bounded.
func TestRingKeepsKeysForLiveTickets(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	c := newClock()
	r := openTestRing(t, js, newWrapper(t), crypto.AES256GCM, ringOpts(c))
	for range 10 {
		c.add(testRotation)
		r.checkNow()
	}
	e, _ := readEntry(t, js, r.Name())
	now := c.Now()
	for i, k := range e.Keys {
		if i == 0 {
			continue
		}
		sealedUntil := e.Keys[i-1].activeTime()
		if now.After(sealedUntil.Add(testLifetime + time.Minute)) {
			t.Errorf("key %s kept although its last ticket expired at %v", k.ID, sealedUntil.Add(testLifetime))
		}
	}
	// Rotation every hour, tickets for 3 h (+1 min margin): the next key,
	// the sealing one, and those of the last 3 h + the margin.
	if len(e.Keys) != 5 {
		t.Fatalf("ring of %d keys, want 5", len(e.Keys))
	}
	if !slices.Equal(r.Keyring().KeyIDs(), entryIDs(e)) {
		t.Fatal("the keyring is not the bucket's ring")
	}
}

func entryIDs(e *ringEntry) []uint32 {
	var ids []uint32
	for _, k := range e.Keys {
		id, _ := parseKeyID(k.ID)
		ids = append(ids, id)
	}
	return ids
}

// TestRingSurvivesRestart: a node that restarts, and a NATS server that
// restarts from its store, come back with the same ring.
func TestRingSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	n := startNATS(t, dir)
	_, js := connect(t, n)
	c := newClock()
	w := newWrapper(t)
	a := openTestRing(t, js, w, crypto.SM4GCM, ringOpts(c))
	c.add(testRotation)
	a.checkNow()
	want := a.Keyring().KeyIDs()
	if len(want) != 2 {
		t.Fatalf("ring %08x", want)
	}
	_ = a.Close()
	again := openTestRing(t, js, w, crypto.SM4GCM, ringOpts(c))
	if got := again.Keyring().KeyIDs(); !slices.Equal(got, want) {
		t.Fatalf("after the node's restart: %08x, want %08x", got, want)
	}
	_ = again.Close()
	n.Shutdown()
	n2 := startNATS(t, dir)
	_, js2 := connect(t, n2)
	third := openTestRing(t, js2, w, crypto.SM4GCM, ringOpts(c))
	if got := third.Keyring().KeyIDs(); !slices.Equal(got, want) {
		t.Fatalf("after NATS's restart: %08x, want %08x", got, want)
	}
	if got := third.counter("unigate_ticketstore_ring_rotations_total"); got != 0 {
		t.Fatalf("a restart wrote %d rings", got)
	}
}

// TestRingWrappersApart: nodes with different wrappers (another master key
// file) or ciphers keep separate rings and never overwrite each other.
func TestRingWrappersApart(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	c := newClock()
	a := openTestRing(t, js, newWrapper(t), crypto.SM4GCM, ringOpts(c))
	b := openTestRing(t, js, newWrapper(t), crypto.SM4GCM, ringOpts(c))
	g := openTestRing(t, js, a.o.Wrapper, crypto.AES256GCM, ringOpts(c))
	names := map[string]bool{a.Name(): true, b.Name(): true, g.Name(): true}
	if len(names) != 3 {
		t.Fatalf("entries %v", names)
	}
	for _, r := range []*testRing{a, b, g} {
		c.add(testRotation)
		r.checkNow()
	}
	for _, r := range []*testRing{a, b, g} {
		e, _ := readEntry(t, js, r.Name())
		if !slices.Equal(entryIDs(e), r.Keyring().KeyIDs()) {
			t.Fatalf("%s: bucket %08x, keyring %08x", r.Name(), entryIDs(e), r.Keyring().KeyIDs())
		}
	}
	if slices.Equal(a.Keyring().KeyIDs(), b.Keyring().KeyIDs()) {
		t.Fatal("two wrappers share keys")
	}
}

// TestRingUnreadableReplaced: an entry that does not parse, or whose key
// does not unwrap (altered), is logged and replaced by a new ring, which
// every node of the wrapper takes; the keys in place keep working until
// then.
func TestRingUnreadableReplaced(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, jsA := connect(t, n)
	_, jsB := connect(t, n)
	c := newClock()
	w := newWrapper(t)
	a := openTestRing(t, jsA, w, crypto.SM4GCM, ringOpts(c))
	b := openTestRing(t, jsB, w, crypto.SM4GCM, ringOpts(c))
	kv, err := jsA.KeyValue(ctxT(t), DefaultKeysBucket)
	if err != nil {
		t.Fatal(err)
	}
	tamper := map[string]func(e *ringEntry) []byte{
		"garbage": func(*ringEntry) []byte { return []byte("{not json") },
		"flipped wrapped key": func(e *ringEntry) []byte {
			e.Keys[0].Wrapped[len(e.Keys[0].Wrapped)-1] ^= 1
			data, _ := json.Marshal(e)
			return data
		},
		"moved activation": func(e *ringEntry) []byte {
			e.Keys[0].Active--
			data, _ := json.Marshal(e)
			return data
		},
	}
	for name, bend := range tamper {
		before := a.Keyring().KeyIDs()
		e, _ := readEntry(t, jsA, a.Name())
		if _, err := kv.Put(ctxT(t), a.Name(), bend(e)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, name+": node B to see the unreadable ring", func() bool {
			return b.counter("unigate_ticketstore_ring_errors_total") > 0 && strings.Contains(b.logs.String(), "unreadable")
		})
		if got := b.Keyring().KeyIDs(); !slices.Equal(got, before) {
			t.Fatalf("%s: node B dropped its keys for an unreadable ring: %08x", name, got)
		}
		a.checkNow()
		waitFor(t, 5*time.Second, name+": both nodes on the new ring", func() bool {
			ids := a.Keyring().KeyIDs()
			return len(ids) == 1 && ids[0] != before[0] && slices.Equal(ids, b.Keyring().KeyIDs())
		})
		b.set.GetOrCreateCounter("unigate_ticketstore_ring_errors_total").Set(0)
	}
}

// TestRingLogsNoKeyMaterial: rotations and failures log key ids, never a
// key, wrapped or not.
func TestRingLogsNoKeyMaterial(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	c := newClock()
	w := newWrapper(t)
	r := openTestRing(t, js, w, crypto.AES256GCM, ringOpts(c))
	for range 3 {
		c.add(testRotation)
		r.checkNow()
	}
	if err := r.Rotate(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctxT(t), DefaultKeysBucket)
	e, _ := readEntry(t, js, r.Name())
	data, _ := json.Marshal(e)
	_, secrets, err := parseEntry(data, w, crypto.AES256GCM)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = kv.Put(ctxT(t), r.Name(), []byte(`{"v":1}`)) // an unreadable ring: logged
	r.checkNow()
	logs := r.logs.String()
	if !strings.Contains(logs, "rotated") || !strings.Contains(logs, "unreadable") {
		t.Fatalf("logs lack the rotation or the failure:\n%s", logs)
	}
	for i, k := range e.Keys {
		for _, form := range []string{
			hex.EncodeToString(secrets[i].Secret), base64.StdEncoding.EncodeToString(secrets[i].Secret),
			base64.StdEncoding.EncodeToString(k.Wrapped), string(secrets[i].Secret),
		} {
			if strings.Contains(logs, form) {
				t.Fatalf("key %s appears in the logs", k.ID)
			}
		}
	}
	wipeKeys(secrets)
}

// TestRingOptions: missing or inconsistent options are refused.
func TestRingOptions(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	kr, _ := crypto.NewTicketKeyring(nil, 2)
	w := newWrapper(t)
	for name, o := range map[string]RingOptions{
		"no wrapper":        {Rotation: time.Hour, Lifetime: time.Hour},
		"no rotation":       {Wrapper: w, Lifetime: time.Hour},
		"no lifetime":       {Wrapper: w, Rotation: time.Hour},
		"lead too long":     {Wrapper: w, Rotation: time.Hour, Lifetime: time.Hour, Lead: time.Hour},
		"too many keys":     {Wrapper: w, Rotation: time.Minute, Lifetime: 2 * time.Hour},
		"negative lifetime": {Wrapper: w, Rotation: time.Hour, Lifetime: -time.Hour},
	} {
		if _, err := OpenRing(context.Background(), js, kr, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := OpenRing(context.Background(), js, kr, RingOptions{Wrapper: w, Rotation: time.Hour, Lifetime: 12 * time.Hour}); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// TestRingClosed: Rotate after Close fails with ErrClosed; Close twice is
// fine.
func TestRingClosed(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	r := openTestRing(t, js, newWrapper(t), crypto.SM4GCM, ringOpts(newClock()))
	_ = r.Close()
	_ = r.Close()
	if err := r.Rotate(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Rotate after Close: %v", err)
	}
}

// TestParseEntryRefusals: every rule of the entry format is enforced.
func TestParseEntryRefusals(t *testing.T) {
	w := newWrapper(t)
	aead := crypto.SM4GCM
	valid := func() *ringEntry {
		e := &ringEntry{V: 1, Alg: aead.Name(), Wrapper: w.ID()}
		for i, active := range []int64{3000, 2000} {
			secret := bytes.Repeat([]byte{byte(i + 1)}, aead.KeySize())
			id := crypto.TicketKeyID(secret)
			wrapped, err := w.Wrap(secret, keyAAD(id, aead.Name(), active))
			if err != nil {
				t.Fatal(err)
			}
			e.Keys = append(e.Keys, ringKey{ID: formatKeyID(id), Active: active, Wrapped: wrapped})
		}
		return e
	}
	enc := func(e *ringEntry) []byte { b, _ := json.Marshal(e); return b }
	if _, keys, err := parseEntry(enc(valid()), w, aead); err != nil || len(keys) != 2 {
		t.Fatalf("valid entry: %v", err)
	}
	other := newWrapper(t)
	for name, c := range map[string]struct {
		data []byte
		want error
	}{
		"not JSON":        {[]byte("{"), ErrMalformed},
		"too big":         {make([]byte, maxEntryBytes+1), ErrMalformed},
		"version":         {enc(func() *ringEntry { e := valid(); e.V = 2; return e }()), ErrMalformed},
		"algorithm":       {enc(func() *ringEntry { e := valid(); e.Alg = "AES-256-GCM"; return e }()), ErrMalformed},
		"wrapper":         {enc(func() *ringEntry { e := valid(); e.Wrapper = other.ID(); return e }()), ErrMalformed},
		"no key":          {enc(func() *ringEntry { e := valid(); e.Keys = nil; return e }()), ErrMalformed},
		"bad id":          {enc(func() *ringEntry { e := valid(); e.Keys[0].ID = "xyz"; return e }()), ErrMalformed},
		"duplicate id":    {enc(func() *ringEntry { e := valid(); e.Keys[1].ID = e.Keys[0].ID; return e }()), ErrMalformed},
		"out of order":    {enc(func() *ringEntry { e := valid(); e.Keys[1].Active = 4000; return e }()), ErrMalformed},
		"no activation":   {enc(func() *ringEntry { e := valid(); e.Keys[1].Active = 0; return e }()), ErrMalformed},
		"swapped ids":     {enc(func() *ringEntry { e := valid(); e.Keys[0].ID, e.Keys[1].ID = e.Keys[1].ID, e.Keys[0].ID; return e }()), ErrUnwrap},
		"flipped":         {enc(func() *ringEntry { e := valid(); e.Keys[1].Wrapped[3] ^= 1; return e }()), ErrUnwrap},
		"other wrapper's": {enc(func() *ringEntry { e := valid(); e.Wrapper = other.ID(); return e }()), ErrMalformed},
		"too many keys": {enc(func() *ringEntry {
			e := valid()
			for len(e.Keys) <= MaxRingKeys {
				e.Keys = append(e.Keys, e.Keys[1])
			}
			return e
		}()), ErrMalformed},
	} {
		_, keys, err := parseEntry(c.data, w, aead)
		if !errors.Is(err, c.want) || keys != nil {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// A key wrapped by another wrapper under this wrapper's name.
	e := valid()
	secret := bytes.Repeat([]byte{9}, aead.KeySize())
	id := crypto.TicketKeyID(secret)
	e.Keys[0].ID = formatKeyID(id)
	e.Keys[0].Wrapped, _ = other.Wrap(secret, keyAAD(id, aead.Name(), e.Keys[0].Active))
	if _, _, err := parseEntry(enc(e), w, aead); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("a key wrapped by another wrapper: %v", err)
	}
	var _ atrest.KeyWrapper = w
}

// TestRingCarriedOverToNewMaster: a node restarted with a rotated master
// key file (a new current key, the old one kept as previous) finds no ring
// for the new key and carries the old one over: the same keys, so the
// tickets they sealed resume, now wrapped by the new key; the old entry is
// left as it was. A second node with the same file takes the carried
// ring; a node whose previous key has no ring, or an unreadable one,
// starts a new ring as before.
func TestRingCarriedOverToNewMaster(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	c := newClock()
	oldKey, newKey := newWrapper(t), newWrapper(t)
	a := openTestRing(t, js, oldKey, crypto.SM4GCM, ringOpts(c))
	c.add(testRotation)
	a.checkNow()
	want := a.Keyring().KeyIDs()
	if len(want) != 2 {
		t.Fatalf("ring %08x", want)
	}
	oldEntry, oldRev := readEntry(t, js, a.Name())
	_ = a.Close()

	o := ringOpts(c)
	o.Previous = []atrest.KeyWrapper{newWrapper(t), oldKey} // the first has no ring: skipped
	b := openTestRing(t, js, newKey, crypto.SM4GCM, o)
	if b.Name() == a.Name() {
		t.Fatalf("same entry %s for two master keys", b.Name())
	}
	if got := b.Keyring().KeyIDs(); !slices.Equal(got, want) {
		t.Fatalf("carried ring %08x, want %08x", got, want)
	}
	if !strings.Contains(b.logs.String(), "carried over") {
		t.Fatalf("no log line for the carry-over: %s", b.logs)
	}
	e, _ := readEntry(t, js, b.Name())
	if e.Wrapper != newKey.ID() || !slices.Equal(entryIDs(e), want) {
		t.Fatalf("entry %s: wrapper %s keys %08x", b.Name(), e.Wrapper, entryIDs(e))
	}
	if _, _, err := parseEntry(mustJSON(t, e), oldKey, crypto.SM4GCM); err == nil {
		t.Fatal("the carried entry opens with the old master key")
	}
	if again, rev := readEntry(t, js, a.Name()); rev != oldRev || !slices.Equal(entryIDs(again), entryIDs(oldEntry)) {
		t.Fatalf("the old entry changed: revision %d → %d", oldRev, rev)
	}

	// A second node of the rotated cluster takes the ring, writes nothing.
	b2 := openTestRing(t, js, newKey, crypto.SM4GCM, o)
	if got := b2.Keyring().KeyIDs(); !slices.Equal(got, want) {
		t.Fatalf("second node %08x, want %08x", got, want)
	}
	if got := b2.counter("unigate_ticketstore_ring_rotations_total"); got != 0 {
		t.Fatalf("second node wrote %d rings", got)
	}
	// Rotation goes on from the carried keys.
	c.add(testRotation)
	b.checkNow()
	if got := b.Keyring().KeyIDs(); len(got) != 3 || !slices.Equal(got[1:], want) {
		t.Fatalf("after a rotation %08x, carried %08x", got, want)
	}

	// No readable previous ring: a new one, as without Previous.
	o2 := ringOpts(c)
	o2.Previous = []atrest.KeyWrapper{newWrapper(t)}
	fresh := openTestRing(t, js, newWrapper(t), crypto.SM4GCM, o2)
	if got := fresh.Keyring().KeyIDs(); len(got) != 1 || slices.Contains(want, got[0]) {
		t.Fatalf("fresh ring %08x", got)
	}
	kv, err := js.KeyValue(ctxT(t), DefaultKeysBucket)
	if err != nil {
		t.Fatal(err)
	}
	third := newWrapper(t)
	if _, err := kv.Put(ctxT(t), entryName(third.ID(), crypto.SM4GCM.Name()), []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	o3 := ringOpts(c)
	o3.Previous = []atrest.KeyWrapper{third}
	bad := openTestRing(t, js, newWrapper(t), crypto.SM4GCM, o3)
	if got := bad.Keyring().KeyIDs(); len(got) != 1 || slices.Contains(want, got[0]) {
		t.Fatalf("ring after an unreadable previous one %08x", got)
	}
	if !strings.Contains(bad.logs.String(), "not carried over") {
		t.Fatalf("no warning for the unreadable previous ring: %s", bad.logs)
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
