package ticketstore

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

func ticketID(i int) []byte {
	id := make([]byte, 16)
	binary.BigEndian.PutUint64(id[8:], uint64(i))
	copy(id, "ticket-0")
	return id
}

// TestSeenSetSingleUseAcrossNodes: two nodes (each its own NATS
// connection) present the same tickets at the same moment; for each ticket
// exactly one of them is told it is fresh, the other that it was used.
func TestSeenSetSingleUseAcrossNodes(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, jsA := connect(t, n)
	_, jsB := connect(t, n)
	a, err := OpenSeenSet(ctxT(t), jsA, SeenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenSeenSet(ctxT(t), jsB, SeenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const tickets = 200
	exp := time.Now().Add(time.Hour)
	var fresh [tickets][2]bool
	var wg sync.WaitGroup
	errc := make(chan error, 2*tickets)
	for node, s := range []*SeenSet{a, b} {
		wg.Go(func() {
			for i := range tickets {
				ok, err := s.Use(ticketID(i), exp)
				if err != nil {
					errc <- err
					return
				}
				fresh[i][node] = ok
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	for i, f := range fresh {
		if f[0] == f[1] {
			t.Fatalf("ticket %d: fresh on node A %v, on node B %v; want exactly one", i, f[0], f[1])
		}
	}
	// Later uses, on either node, are refused.
	for _, s := range []*SeenSet{a, b} {
		if ok, err := s.Use(ticketID(7), exp); ok || err != nil {
			t.Fatalf("a third use: fresh %v, %v", ok, err)
		}
	}
}

// TestSeenSetExpiry: an entry lives the ticket's remaining lifetime plus
// the margin (the bucket's per-key TTL), then the id may be used again;
// an already expired ticket is "used" without a round trip.
func TestSeenSetExpiry(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	set := metrics.NewSet()
	s, err := OpenSeenSet(ctxT(t), js, SeenOptions{Margin: -1, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	id := ticketID(1)
	if ok, err := s.Use(id, time.Now().Add(time.Second)); !ok || err != nil {
		t.Fatalf("first use: %v, %v", ok, err)
	}
	if ok, err := s.Use(id, time.Now().Add(time.Hour)); ok || err != nil {
		t.Fatalf("second use: %v, %v", ok, err)
	}
	// The entry expires with the ticket (a second, rounded up).
	waitFor(t, 15*time.Second, "the entry to expire", func() bool {
		ok, err := s.Use(id, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	before := set.GetOrCreateCounter(`unigate_ticketstore_seen_total{result="fresh"}`).Get() +
		set.GetOrCreateCounter(`unigate_ticketstore_seen_total{result="reused"}`).Get()
	if ok, err := s.Use(ticketID(2), time.Now().Add(-time.Second)); ok || err != nil {
		t.Fatalf("an expired ticket: fresh %v, %v", ok, err)
	}
	after := set.GetOrCreateCounter(`unigate_ticketstore_seen_total{result="fresh"}`).Get() +
		set.GetOrCreateCounter(`unigate_ticketstore_seen_total{result="reused"}`).Get()
	if after != before {
		t.Fatal("an expired ticket went to the bucket")
	}
}

// TestSeenSetUnavailable: with its NATS connection gone, or JetStream not
// answering, Use fails with ErrUnavailable (the caller refuses the ticket);
// within the backoff it fails at once, even if the bucket is back; and it
// works again once the bucket is.
func TestSeenSetUnavailable(t *testing.T) {
	n := startNATS(t, t.TempDir())
	ncA, jsA := connect(t, n)
	_, jsB := connect(t, n)
	set := metrics.NewSet()
	a, err := OpenSeenSet(ctxT(t), jsA, SeenOptions{Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenSeenSet(ctxT(t), jsB, SeenOptions{Backoff: -1, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	ncA.Close()
	for i := range 3 {
		if ok, err := a.Use(ticketID(i), exp); ok || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("use %d without NATS: fresh %v, %v; want ErrUnavailable", i, ok, err)
		}
	}
	if got := set.GetOrCreateCounter(`unigate_ticketstore_seen_total{result="unavailable"}`).Get(); got != 3 {
		t.Fatalf("unavailable counted %d times, want 3", got)
	}
	// The tickets A could not check are not burnt: B accepts them.
	if ok, err := b.Use(ticketID(0), exp); !ok || err != nil {
		t.Fatalf("node B: fresh %v, %v", ok, err)
	}

	// JetStream without the bucket (deleted by an operator): B fails, and
	// recovers once the bucket is back.
	if err := jsB.DeleteKeyValue(ctxT(t), DefaultSeenBucket); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Use(ticketID(1), exp); ok || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("without the bucket: fresh %v, %v; want ErrUnavailable", ok, err)
	}
	if _, err := OpenSeenSet(ctxT(t), jsB, SeenOptions{}); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Use(ticketID(1), exp); !ok || err != nil {
		t.Fatalf("after the bucket is back: fresh %v, %v", ok, err)
	}
}

// TestSeenSetBackoff: after a failure Use fails at once for the backoff
// even though the bucket answers again.
func TestSeenSetBackoff(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	s, err := OpenSeenSet(ctxT(t), js, SeenOptions{Backoff: time.Hour, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(context.Background(), DefaultSeenBucket); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	if _, err := s.Use(ticketID(1), exp); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("without the bucket: %v", err)
	}
	if _, err := OpenSeenSet(ctxT(t), js, SeenOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Use(ticketID(2), exp); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("within the backoff: %v, want ErrUnavailable", err)
	}
}

// TestSeenSetBadID: empty and oversized ids are refused with ErrBadID.
func TestSeenSetBadID(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	s, err := OpenSeenSet(ctxT(t), js, SeenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range [][]byte{nil, make([]byte, MaxIDSize+1)} {
		if ok, err := s.Use(id, time.Now().Add(time.Hour)); ok || !errors.Is(err, ErrBadID) {
			t.Fatalf("id of %d bytes: %v, %v", len(id), ok, err)
		}
	}
}

// TestSeenSetBackoffGrows: each failure in a row doubles the backoff up to
// MaxBackoff; a success starts again from Backoff.
func TestSeenSetBackoffGrows(t *testing.T) {
	n := startNATS(t, t.TempDir())
	_, js := connect(t, n)
	s, err := OpenSeenSet(ctxT(t), js, SeenOptions{Backoff: time.Second, MaxBackoff: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		s.down(now)
		if got := time.Duration(s.downUntil.Load() - now.UnixNano()); got != want {
			t.Fatalf("failure %d: backoff %v, want %v", i+1, got, want)
		}
	}
	s.downUntil.Store(0)
	if ok, err := s.Use(ticketID(1), time.Now().Add(time.Hour)); !ok || err != nil {
		t.Fatalf("after the outage: %v, %v", ok, err)
	}
	s.down(now)
	if got := time.Duration(s.downUntil.Load() - now.UnixNano()); got != time.Second {
		t.Fatalf("after a success the backoff starts at %v, want 1s", got)
	}
}
