package crypto

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
	"time"
)

// ticketKeyID is the key id a ticket starts with (docs/crypto.md, Resumption).
func ticketKeyID(ticket []byte) uint32 { return binary.BigEndian.Uint32(ticket) }

// TestTicketSharedKeysActivation: a key published ahead of its activation opens
// tickets at once but seals only from its activation on; the key before it
// seals until then and keeps opening afterwards.
func TestTicketSharedKeysActivation(t *testing.T) {
	f := newFixture(t)
	oldSecret, newSecret := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	oldID, newID := TicketKeyID(oldSecret), TicketKeyID(newSecret)
	if err := f.tickets.SetSharedKeys([]TicketKey{{Secret: oldSecret, Active: f.now.Add(-time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	before := handshake(t, f.client(GM), f.server).session
	if got := ticketKeyID(before.Ticket); got != oldID {
		t.Fatalf("ticket sealed by key %08x, want %08x", got, oldID)
	}
	// The next key arrives a minute ahead of its activation.
	err := f.tickets.SetSharedKeys([]TicketKey{
		{Secret: newSecret, Active: f.now.Add(time.Minute)},
		{Secret: oldSecret, Active: f.now.Add(-time.Hour)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.tickets.KeyIDs(); len(got) != 2 || got[0] != newID || got[1] != oldID {
		t.Fatalf("ring %08x, want [%08x %08x]", got, newID, oldID)
	}
	if got := f.tickets.SealingKeyID(f.now); got != oldID {
		t.Fatalf("sealing with %08x before the new key's activation", got)
	}
	early := handshake(t, f.client(GM), f.server).session
	if got := ticketKeyID(early.Ticket); got != oldID {
		t.Fatalf("ticket sealed by key %08x before the activation, want %08x", got, oldID)
	}
	f.now = f.now.Add(time.Minute)
	late := handshake(t, f.client(GM), f.server).session
	if got := ticketKeyID(late.Ticket); got != newID {
		t.Fatalf("ticket sealed by key %08x after the activation, want %08x", got, newID)
	}
	for name, s := range map[string]*Session{"before": before, "early": early, "late": late} {
		if r := resumeWith(t, f, s, GM); !r.server.Resumed() {
			t.Fatalf("ticket %s: %v", name, r.sh.TicketError())
		}
	}
}

// TestTicketSharedKeysRefused: a ring that is empty, out of order, holds a
// key twice or a key of the wrong size is refused with CodeConfig and the
// ring in place stays.
func TestTicketSharedKeysRefused(t *testing.T) {
	f := newFixture(t)
	ring := f.tickets.KeyIDs()
	a, b := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	now := f.now
	for name, keys := range map[string][]TicketKey{
		"empty":        nil,
		"out of order": {{Secret: a, Active: now}, {Secret: b, Active: now.Add(time.Second)}},
		"duplicate":    {{Secret: a, Active: now}, {Secret: a, Active: now}},
		"short key":    {{Secret: a[:16]}},
		"long key":     {{Secret: append(a, 0)}},
	} {
		err := f.tickets.SetSharedKeys(keys)
		if CodeOf(err) != CodeConfig {
			t.Errorf("%s: %v, want CodeConfig", name, err)
		}
		if got := f.tickets.KeyIDs(); len(got) != len(ring) || got[0] != ring[0] {
			t.Errorf("%s: ring changed to %08x", name, got)
		}
	}
}

// TestTicketKeyIDStable: the key id is the documented derivation, the same on
// every node for the same secret.
func TestTicketKeyIDStable(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 16)
	r1, _ := NewTicketKeyring(SM4GCM, 2)
	r2, _ := NewTicketKeyring(SM4GCM, 2)
	for _, r := range []*TicketKeyring{r1, r2} {
		if err := r.SetSharedKeys([]TicketKey{{Secret: secret}}); err != nil {
			t.Fatal(err)
		}
	}
	if r1.KeyIDs()[0] != r2.KeyIDs()[0] || r1.KeyIDs()[0] != TicketKeyID(secret) {
		t.Fatalf("ids %08x %08x %08x", r1.KeyIDs(), r2.KeyIDs(), TicketKeyID(secret))
	}
	// The documented derivation: SHA-256("unigate ticket key id" ‖ 0x00 ‖ secret)[:4].
	sum := sha256.Sum256(append([]byte("unigate ticket key id\x00"), secret...))
	if got, want := TicketKeyID(secret), binary.BigEndian.Uint32(sum[:4]); got != want {
		t.Fatalf("TicketKeyID = %08x, want %08x", got, want)
	}
	if r1.AEAD().Name() != SM4GCM.Name() {
		t.Fatalf("AEAD %s", r1.AEAD().Name())
	}
}

// failingSeen is a SeenSet whose store is unreachable.
type failingSeen struct{ calls int }

func (f *failingSeen) Use([]byte, time.Time) (bool, error) {
	f.calls++
	return false, errors.New("store unreachable")
}

// TestTicketSeenUnavailable: when the single-use check cannot be made the
// ticket is refused (CodeTicketUnavailable), the handshake completes as a
// full one, and the ticket still resumes once the check works again.
func TestTicketSeenUnavailable(t *testing.T) {
	f := newFixture(t)
	sess := handshake(t, f.client(GM), f.server).session
	down := &failingSeen{}
	f.server.Seen = down
	r := resumeWith(t, f, sess, GM)
	if r.server.Resumed() || r.client.Resumed() || down.calls != 1 {
		t.Fatalf("resumed %v with the seen set down (%d calls)", r.server.Resumed(), down.calls)
	}
	wantCode(t, r.sh.TicketError(), CodeTicketUnavailable)
	if !errors.Is(r.sh.TicketError(), ErrTicketUnavailable) {
		t.Fatal("errors.Is(ErrTicketUnavailable) fails")
	}
	exchange(t, r.client, r.server, "full handshake while the seen set is down")
	f.server.Seen = f.seen
	if r := resumeWith(t, f, sess, GM); !r.server.Resumed() {
		t.Fatalf("after the outage: %v", r.sh.TicketError())
	}
}

// BenchmarkMemorySeenSet: one fresh id per call into a set that keeps
// growing (ids live an hour); the sweep of expired ids must stay amortized
// O(1), whatever the set's size.
func BenchmarkMemorySeenSet(b *testing.B) {
	s := NewMemorySeenSet(nil)
	exp := time.Now().Add(time.Hour)
	id := make([]byte, 16)
	b.ReportAllocs()
	for i := range b.N {
		binary.BigEndian.PutUint64(id, uint64(i))
		if ok, _ := s.Use(id, exp); !ok {
			b.Fatal("not fresh")
		}
	}
}

// TestMemorySeenSetSweeps: expired ids leave the set.
func TestMemorySeenSetSweeps(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := NewMemorySeenSet(func() time.Time { return now })
	id := make([]byte, 16)
	for i := range 3000 {
		binary.BigEndian.PutUint64(id, uint64(i))
		s.Use(id, now.Add(time.Minute))
	}
	now = now.Add(2 * time.Minute)
	for i := range 3000 {
		binary.BigEndian.PutUint64(id, uint64(1_000_000+i))
		s.Use(id, now.Add(time.Minute))
	}
	if got := s.Len(); got >= 6000 {
		t.Fatalf("%d ids held: the expired ones were never swept", got)
	}
}
