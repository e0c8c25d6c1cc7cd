package ticketstore

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/crypto"
)

// Errors. Each is wrapped with what failed; test with errors.Is.
var (
	// ErrUnavailable: the bucket could not be reached (NATS disconnected,
	// JetStream not answering within the timeout, or failing shortly
	// before). The ticket must be refused.
	ErrUnavailable = errors.New("ticketstore: unavailable")
	// ErrBadID: a ticket id that is empty or longer than MaxIDSize.
	ErrBadID = errors.New("ticketstore: bad ticket id")
	// ErrMalformed: a ring entry that does not parse or breaks a rule of
	// its format (docs/crypto.md).
	ErrMalformed = errors.New("ticketstore: malformed ring entry")
	// ErrUnwrap: a key of a ring entry that does not unwrap with the
	// wrapper, or is not the key its id names: the entry was altered.
	ErrUnwrap = errors.New("ticketstore: ticket key does not unwrap")
	// ErrClosed: the Ring was closed.
	ErrClosed = errors.New("ticketstore: closed")
)

// Defaults of SeenOptions.
const (
	// DefaultSeenBucket is the bucket of used ticket ids.
	DefaultSeenBucket = "UNIGATE_TICKETS_SEEN"
	// DefaultSeenTimeout bounds one Use: a healthy bucket answers in
	// milliseconds, and a handshake worker waits this long at most.
	DefaultSeenTimeout = 500 * time.Millisecond
	// DefaultBackoff is how long Use fails at once after a failure; it
	// doubles with each failure in a row, up to DefaultMaxBackoff.
	DefaultBackoff = time.Second
	// DefaultMaxBackoff caps the backoff.
	DefaultMaxBackoff = 30 * time.Second
	// DefaultMargin is kept beyond a ticket's expiry: nodes' clocks may
	// differ by up to this much.
	DefaultMargin = time.Minute
	// MaxIDSize bounds a ticket id (the crypto package's are 16 bytes).
	MaxIDSize = 64
)

// SeenOptions configures OpenSeenSet. Zero values select the defaults.
type SeenOptions struct {
	// Bucket is the key-value bucket (default DefaultSeenBucket).
	Bucket string
	// Replicas is the bucket's replication factor (default 1; the same as
	// the history stream's in a cluster).
	Replicas int
	// Timeout bounds one Use (default DefaultSeenTimeout).
	Timeout time.Duration
	// Backoff: after a failure, Use fails at once for this long, doubled
	// for each failure in a row up to MaxBackoff (default DefaultBackoff;
	// negative: never).
	Backoff time.Duration
	// MaxBackoff caps the backoff (default DefaultMaxBackoff).
	MaxBackoff time.Duration
	// Margin is added to each entry's lifetime, for clock skew between
	// nodes (default DefaultMargin; negative: none).
	Margin time.Duration
	// Now is the clock tickets' expiries are compared with (tests); nil
	// means time.Now.
	Now func() time.Time
	// Metrics, when set, receives unigate_ticketstore_seen_total{result}
	// and unigate_ticketstore_seen_duration_seconds.
	Metrics *metrics.Set
}

// SeenSet is a crypto.SeenSet in a JetStream key-value bucket, shared by
// every node of the cluster. See the package documentation.
type SeenSet struct {
	kv        jetstream.KeyValue
	nc        *nats.Conn
	o         SeenOptions
	downUntil atomic.Int64 // unix nanoseconds (wall clock): fail at once until then
	failures  atomic.Int64 // in a row

	fresh, reused, unavailable *metrics.Counter
	duration                   *metrics.Histogram
}

var _ crypto.SeenSet = (*SeenSet)(nil)

// OpenSeenSet opens (or creates) the bucket of used ticket ids. The
// bucket needs per-key TTLs (nats-server 2.11 or later).
func OpenSeenSet(ctx context.Context, js jetstream.JetStream, o SeenOptions) (*SeenSet, error) {
	if o.Bucket == "" {
		o.Bucket = DefaultSeenBucket
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultSeenTimeout
	}
	if o.Backoff == 0 {
		o.Backoff = DefaultBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.Margin == 0 {
		o.Margin = DefaultMargin
	}
	o.Margin = max(o.Margin, 0)
	if o.Now == nil {
		o.Now = time.Now
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "Unigate: resumption tickets already used (single use across the cluster)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		// Enables per-key TTLs; an expired key leaves a marker for a second.
		LimitMarkerTTL: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("ticketstore: bucket %s: %w", o.Bucket, err)
	}
	s := &SeenSet{kv: kv, nc: js.Conn(), o: o}
	set := o.Metrics
	if set == nil {
		set = metrics.NewSet() // counted, not exported
	}
	s.fresh = set.NewCounter(`unigate_ticketstore_seen_total{result="fresh"}`)
	s.reused = set.NewCounter(`unigate_ticketstore_seen_total{result="reused"}`)
	s.unavailable = set.NewCounter(`unigate_ticketstore_seen_total{result="unavailable"}`)
	s.duration = set.NewHistogram(`unigate_ticketstore_seen_duration_seconds`)
	return s, nil
}

// Use implements crypto.SeenSet: it marks id used until expiry (plus the
// margin) and reports whether it was unused before, cluster-wide. An
// error wraps ErrUnavailable (or ErrBadID); the caller must then refuse
// the ticket. An expiry already past reports "used" without a round trip.
func (s *SeenSet) Use(id []byte, expiry time.Time) (bool, error) {
	if len(id) == 0 || len(id) > MaxIDSize {
		return false, fmt.Errorf("%w: %d bytes", ErrBadID, len(id))
	}
	life := expiry.Sub(s.o.Now())
	if life <= 0 {
		return false, nil
	}
	wall := time.Now()
	if until := s.downUntil.Load(); until != 0 && wall.UnixNano() < until {
		s.unavailable.Inc()
		return false, fmt.Errorf("%w: bucket %s failed, next try in %v", ErrUnavailable, s.o.Bucket, time.Duration(until-wall.UnixNano()).Round(time.Millisecond))
	}
	if st := s.nc.Status(); st != nats.CONNECTED {
		s.down(wall)
		return false, fmt.Errorf("%w: NATS connection %s", ErrUnavailable, st)
	}
	// Whole seconds (the server's TTL resolution), rounded up.
	ttl := (life + s.o.Margin + time.Second - 1).Truncate(time.Second)
	var val [8]byte
	binary.BigEndian.PutUint64(val[:], uint64(expiry.Unix()))
	ctx, cancel := context.WithTimeout(context.Background(), s.o.Timeout)
	_, err := s.kv.Create(ctx, hex.EncodeToString(id), val[:], jetstream.KeyTTL(ttl))
	cancel()
	s.duration.UpdateDuration(wall)
	switch {
	case err == nil:
		s.failures.Store(0)
		s.fresh.Inc()
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists):
		s.failures.Store(0)
		s.reused.Inc()
		return false, nil
	}
	s.down(wall)
	return false, fmt.Errorf("%w: bucket %s: %w", ErrUnavailable, s.o.Bucket, err)
}

func (s *SeenSet) down(now time.Time) {
	s.unavailable.Inc()
	if s.o.Backoff <= 0 {
		return
	}
	d := s.o.Backoff
	for n := s.failures.Add(1); n > 1 && d < s.o.MaxBackoff; n-- {
		d *= 2
	}
	s.downUntil.Store(now.Add(min(d, s.o.MaxBackoff)).UnixNano())
}
