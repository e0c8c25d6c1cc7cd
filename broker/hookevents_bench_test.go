package broker

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/broker/natsnode"
)

func benchEvent(i int) backends.Event {
	conv := "c_bench" + strconv.Itoa(i%64)
	return backends.Event{
		ID: conv + ":message:" + strconv.Itoa(i), Type: backends.EventMessageStored, Tenant: "acme",
		ConversationID: conv, VisitorID: "v_bench", MessageID: strconv.Itoa(i),
		Text: "where is my order? it was due yesterday", At: time.Now(),
		Attributes: map[string]string{"sender": "v_bench", "role": "ROLE_VISITOR"},
	}
}

// BenchmarkHookEventsPublish stores events in the embedded JetStream
// (file store) the way the spooler does: batches of spoolBatch, pipelined,
// each answered before the next batch. Reports events/s and allocations
// per event.
func BenchmarkHookEventsPublish(b *testing.B) {
	n, err := natsnode.Start(natsnode.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Shutdown()
	h := openHookEventsT(b, n.JetStream(), HookEventsOptions{MaxEvents: 1 << 30, DuplicateWindow: time.Second})
	evs := make([]backends.Event, spoolBatch)
	out := make([]pubOutcome, spoolBatch)
	errs := make([]error, spoolBatch)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += spoolBatch {
		m := min(spoolBatch, b.N-i)
		for j := range m {
			evs[j] = benchEvent(i + j)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h.publish(ctx, evs[:m], out[:m], errs[:m])
		cancel()
		for j := range m {
			if out[j] != pubStored {
				b.Fatalf("event %d: outcome %d: %v", i+j, out[j], errs[j])
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// nopHook takes every event.
type nopHook struct{ n atomic.Int64 }

func (h *nopHook) Event(context.Context, backends.Event) error { h.n.Add(1); return nil }
func (h *nopHook) Authenticate(context.Context, backends.Credentials) (backends.Identity, error) {
	return backends.Identity{}, nil
}

// BenchmarkHookEventsEndToEnd: events emitted into a broker's spool until
// an in-process hook took them all: store, fetch, call, ack, over the 8
// partitions (one event in flight per partition).
func BenchmarkHookEventsEndToEnd(b *testing.B) {
	n, err := natsnode.Start(natsnode.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Shutdown()
	h := &nopHook{}
	hev := openHookEventsT(b, n.JetStream(), HookEventsOptions{MaxEvents: 1 << 30, DuplicateWindow: time.Second})
	br, err := New(Options{Signer: testSigner(b), Backends: &Backends{Hook: h, Events: hev, EventQueue: 1 << 14}})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		for len(br.bk.events) > cap(br.bk.events)/2 {
			time.Sleep(100 * time.Microsecond) // the spooler's pace
		}
		br.emit(benchEvent(i))
	}
	for h.n.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if d := br.Metrics().GetOrCreateCounter("unigate_broker_hook_events_dropped_total").Get(); d != 0 {
		b.Fatalf("%d dropped", d)
	}
}

// BenchmarkAuthCacheHit: the shard's side of a cached password hello
// (key derivation and lookup).
func BenchmarkAuthCacheHit(b *testing.B) {
	c := newAuthCache(time.Hour, DefaultAuthCacheSize, metrics.NewSet(), time.Now)
	cred := backends.Credentials{Tenant: "acme", Username: "alice", Password: "correct horse battery staple", RemoteAddr: "192.0.2.7"}
	k := c.keyOf(&cred)
	c.lookup(k, authWaiter{})
	c.settle(k, backends.Identity{OK: true, ID: "alice", Roles: []string{"agent"}, Skills: []string{"billing"}}, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, res := c.lookup(c.keyOf(&cred), authWaiter{}); res != authHit {
			b.Fatal("miss")
		}
	}
}
