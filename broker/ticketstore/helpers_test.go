package ticketstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
)

// startNATS starts an embedded NATS server with JetStream in dir.
func startNATS(t testing.TB, dir string) *natsnode.Node {
	t.Helper()
	n, err := natsnode.Start(natsnode.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	return n
}

// connect opens a connection of its own to n (one per simulated node, so
// that one node can lose NATS while the others keep it).
func connect(t testing.TB, n *natsnode.Node) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(n.Server()), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func newWrapper(t testing.TB) *atrest.MasterKey {
	t.Helper()
	material := make([]byte, atrest.MasterKeySize)
	rand.Read(material)
	w, err := atrest.NewMasterKey(material)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// clock is a settable clock shared by the rings of a test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Unix(1_800_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testRing is a Ring with its keyring, metrics and logs.
type testRing struct {
	*Ring
	set  *metrics.Set
	logs *logBuffer
}

func openTestRing(t testing.TB, js jetstream.JetStream, w atrest.KeyWrapper, aead crypto.AEAD, o RingOptions) *testRing {
	t.Helper()
	kr, err := crypto.NewTicketKeyring(aead, 2)
	if err != nil {
		t.Fatal(err)
	}
	tr := &testRing{set: metrics.NewSet(), logs: &logBuffer{}}
	o.Wrapper, o.Metrics = w, tr.set
	o.Logger = slog.New(slog.NewTextHandler(tr.logs, nil))
	r, err := OpenRing(ctxT(t), js, kr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	tr.Ring = r
	return tr
}

func (r *testRing) counter(name string) uint64 { return r.set.GetOrCreateCounter(name).Get() }

func sameIDs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
