package atrest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestSealOpen(t *testing.T) {
	js := startJS(t)
	k := openRing(t, js, newMasters(t), Options{})
	aad := []byte("tenant/conv/7")
	for _, n := range []int{0, 1, 16, 256, 70000} {
		plain := bytes.Repeat([]byte{'x'}, n)
		sealed, err := k.Seal([]byte("prefix"), plain, aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != len("prefix")+n+Overhead || string(sealed[:6]) != "prefix" {
			t.Fatalf("%d bytes sealed to %d", n, len(sealed))
		}
		if n >= 16 && bytes.Contains(sealed, plain[:16]) {
			t.Fatal("plaintext visible in the sealed value")
		}
		got, err := k.Open([]byte("out:"), sealed[6:], aad)
		if err != nil || !bytes.Equal(got, append([]byte("out:"), plain...)) {
			t.Fatalf("open %d bytes: %v", n, err)
		}
	}
	// Two seals of one plaintext differ (random nonces).
	a, _ := k.Seal(nil, []byte("same"), aad)
	b, _ := k.Seal(nil, []byte("same"), aad)
	if bytes.Equal(a, b) {
		t.Fatal("two seals are identical")
	}
}

// TestOpenRefuses: every way of bending a sealed value gives a clear error
// (never garbage, never a panic).
func TestOpenRefuses(t *testing.T) {
	js := startJS(t)
	k := openRing(t, js, newMasters(t), Options{})
	aad := []byte("acme\x00c_1\x00seq=1")
	sealed, err := k.Seal(nil, []byte("the customer's address"), aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 0x01
		return b
	}
	other := bytes.Clone(sealed)
	other[1], other[2], other[3], other[4] = 0xde, 0xad, 0xbe, 0xef
	cases := []struct {
		name   string
		sealed []byte
		aad    []byte
		want   error
	}{
		{"flipped ciphertext", flip(len(sealed) - 20), aad, ErrAuth},
		{"flipped tag", flip(len(sealed) - 1), aad, ErrAuth},
		{"flipped nonce", flip(HeaderSize), aad, ErrAuth},
		{"moved to another conversation", sealed, []byte("acme\x00c_2\x00seq=1"), ErrAuth},
		{"moved to another sequence", sealed, []byte("acme\x00c_1\x00seq=2"), ErrAuth},
		{"no aad", sealed, nil, ErrAuth},
		{"truncated", sealed[:len(sealed)-1], aad, ErrAuth},
		{"too short", sealed[:Overhead-1], aad, ErrMalformed},
		{"empty", nil, aad, ErrMalformed},
		{"unknown version", func() []byte { b := bytes.Clone(sealed); b[0] = 2; return b }(), aad, ErrMalformed},
		{"key id 0", func() []byte { b := bytes.Clone(sealed); copy(b[1:5], []byte{0, 0, 0, 0}); return b }(), aad, ErrMalformed},
		{"unknown key id", other, aad, ErrUnknownKey},
	}
	for _, c := range cases {
		got, err := k.Open([]byte("dst"), c.sealed, c.aad)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
		if string(got) != "dst" {
			t.Errorf("%s: dst changed to %q", c.name, got)
		}
	}
	// Unknown ids are remembered: the second miss is answered without
	// the bucket (same error).
	_, err1 := k.Open(nil, other, aad)
	_, err2 := k.Open(nil, other, aad)
	if !errors.Is(err1, ErrUnknownKey) || err1.Error() != err2.Error() {
		t.Fatalf("repeated miss: %v / %v", err1, err2)
	}
}

func TestWrongMasterKey(t *testing.T) {
	js := startJS(t)
	k := openRing(t, js, newMasters(t), Options{})
	if _, err := k.Seal(nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	_, err := OpenKeyring(testCtx(t), js, newMasters(t), Options{})
	if !errors.Is(err, ErrWrongMasterKey) || !strings.Contains(err.Error(), "same master key file") {
		t.Fatalf("open with another master key: %v", err)
	}
	_, err = OpenKeyring(testCtx(t), js, newMasters(t), Options{ReadOnly: true})
	if !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("read-only open with another master key: %v", err)
	}
}

// TestWrappedEntryTampered: a data key entry altered in the bucket (its
// wrapped bytes, or copied under another id) refuses to unwrap.
func TestWrappedEntryTampered(t *testing.T) {
	js := startJS(t)
	m := newMasters(t)
	k := openRing(t, js, m, Options{})
	ctx := testCtx(t)
	id := k.active.Load().id
	e, err := k.kv.Get(ctx, kvDataKeyPrefix+id.String())
	if err != nil {
		t.Fatal(err)
	}
	// Copy the entry under another id (its id field changed with it).
	moved := strings.Replace(string(e.Value()), id.String(), "0badc0de", 1)
	if _, err := k.kv.Put(ctx, kvDataKeyPrefix+"0badc0de", []byte(moved)); err != nil {
		t.Fatal(err)
	}
	_, err = OpenKeyring(ctx, js, m, Options{})
	if !errors.Is(err, ErrWrongMasterKey) || !strings.Contains(err.Error(), "0badc0de") {
		t.Fatalf("entry moved to another id: %v", err)
	}
}

func TestReadOnly(t *testing.T) {
	js := startJS(t)
	m := newMasters(t)
	if _, err := OpenKeyring(testCtx(t), js, m, Options{ReadOnly: true}); !errors.Is(err, ErrNoKeyring) {
		t.Fatalf("read-only without a bucket: %v", err)
	}
	w := openRing(t, js, m, Options{})
	sealed, err := w.Seal(nil, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := openRing(t, js, m, Options{ReadOnly: true})
	if got, err := r.Open(nil, sealed, nil); err != nil || string(got) != "before" {
		t.Fatalf("read-only open: %q %v", got, err)
	}
	if _, err := r.Seal(nil, []byte("x"), nil); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only seal: %v", err)
	}
	if _, err := r.Rotate(testCtx(t)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only rotate: %v", err)
	}
}

// TestRotation: a rotation makes new values use the new key, keeps old ones
// readable, and reaches another node through the bucket.
func TestRotation(t *testing.T) {
	js := startJS(t)
	m := newMasters(t)
	a := openRing(t, js, m, Options{})
	b := openRing(t, js, m, Options{Bucket: DefaultBucket}) // a second node on the same bucket
	old, _ := a.Seal(nil, []byte("old"), nil)
	oldB, _ := b.Seal(nil, []byte("oldB"), nil)
	if keyOf(t, old) != keyOf(t, oldB) {
		t.Fatal("two nodes started with different active keys")
	}
	id, err := a.Rotate(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if id == keyOf(t, old) {
		t.Fatal("rotation kept the key")
	}
	fresh, _ := a.Seal(nil, []byte("new"), nil)
	if keyOf(t, fresh) != id {
		t.Fatalf("sealed with %s after rotating to %s", keyOf(t, fresh), id)
	}
	// b follows the rotation (watch) and reads a's new value (fetch).
	waitFor(t, "node b to follow the rotation", func() bool {
		v, err := b.Seal(nil, []byte("b"), nil)
		return err == nil && keyOf(t, v) == id
	})
	for _, v := range [][]byte{old, oldB, fresh} {
		for _, k := range []*Keyring{a, b} {
			if _, err := k.Open(nil, v, nil); err != nil {
				t.Fatalf("open after rotation: %v", err)
			}
		}
	}
	st, err := a.Status(testCtx(t))
	if err != nil || st.Active != id || len(st.Keys) != 2 || !st.Keys[1].Active || st.Keys[0].Active {
		t.Fatalf("status %+v %v", st, err)
	}
	// A node started later unwraps both keys at once.
	c := openRing(t, js, m, Options{})
	if len(*c.keys.Load()) != 2 {
		t.Fatalf("late node holds %d keys", len(*c.keys.Load()))
	}
}

// TestSealBudget: with a tiny budget per key, concurrent sealers on two
// nodes rotate on their own and no data key ever seals more than
// MaxSealsPerKey values.
func TestSealBudget(t *testing.T) {
	js := startJS(t)
	m := newMasters(t)
	o := Options{MaxSealsPerKey: 40, ReserveBlock: 8}
	nodes := []*Keyring{openRing(t, js, m, o), openRing(t, js, m, o)}
	const workers, each = 4, 60
	var (
		mu     sync.Mutex
		sealed [][]byte
		wg     sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			k := nodes[w%2]
			for i := range each {
				v, err := k.Seal(nil, fmt.Appendf(nil, "%d/%d", w, i), nil)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				sealed = append(sealed, v)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	perKey := map[KeyID]int{}
	for _, v := range sealed {
		perKey[keyOf(t, v)]++
		if _, err := nodes[0].Open(nil, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	for id, n := range perKey {
		if n > 40 {
			t.Errorf("data key %s sealed %d values, limit 40", id, n)
		}
	}
	if len(perKey) < workers*each/40 {
		t.Fatalf("%d values under %d keys", len(sealed), len(perKey))
	}
	t.Logf("%d values, %d data keys", len(sealed), len(perKey))
}

// TestMasterRotation: a new master key rewraps the data keys only; the old
// master key alone no longer opens the keyring, the new one does, and a
// node that still runs with the old file picks the new one up.
func TestMasterRotation(t *testing.T) {
	js := startJS(t)
	path, m1 := masterFile(t)
	a := openRing(t, js, m1, Options{MasterKeyFile: path})
	b := openRing(t, js, m1, Options{MasterKeyFile: path})
	v1, _ := a.Seal(nil, []byte("v1"), nil)

	m2, err := RotateMasterKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if ids := m2.IDs(); len(ids) != 2 || ids[1] != m1.Current().ID() {
		t.Fatalf("rotated file holds %v", ids)
	}
	n, err := a.Rewrap(testCtx(t), m2)
	if err != nil || n != 1 {
		t.Fatalf("rewrap: %d %v", n, err)
	}
	if n, err := a.Rewrap(testCtx(t), nil); err != nil || n != 0 {
		t.Fatalf("second rewrap: %d %v", n, err)
	}
	// A new data key is wrapped with the new master; b, still holding
	// only the old set in memory, reloads the file to read it.
	if _, err := a.Rotate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	v2, _ := a.Seal(nil, []byte("v2"), nil)
	if got, err := b.Open(nil, v2, nil); err != nil || string(got) != "v2" {
		t.Fatalf("node b after the master rotation: %q %v", got, err)
	}
	st, _ := a.Status(testCtx(t))
	for _, k := range st.Keys {
		if k.Master != m2.Current().ID() {
			t.Fatalf("data key %s still wrapped with %s", k.ID, k.Master)
		}
	}
	// The new master alone opens everything; the old one alone nothing.
	only2, _ := NewMasterKeys(m2.Current())
	c := openRing(t, js, only2, Options{})
	for _, v := range [][]byte{v1, v2} {
		if _, err := c.Open(nil, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OpenKeyring(testCtx(t), js, m1, Options{}); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("old master after rewrap: %v", err)
	}
}

func TestClosed(t *testing.T) {
	js := startJS(t)
	k, err := OpenKeyring(testCtx(t), js, newMasters(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := k.Seal(nil, []byte("x"), nil)
	k.Close()
	k.Close()
	if _, err := k.Seal(nil, []byte("x"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("seal after close: %v", err)
	}
	// Keys already unwrapped still open (nothing to fetch).
	if _, err := k.Open(nil, v, nil); err != nil {
		t.Fatalf("open after close: %v", err)
	}
}
