package broker

import (
	"bytes"
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/broker/ticketstore"
	"github.com/unigate/unigate/crypto"
)

// processCPU is the process's user+system CPU time: on a machine shared
// with other work, wall time mostly measures the waits for a core, CPU
// time the cost (here the client's side of the handshake and the embedded
// NATS server's share included).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchSeenSets builds the single-use checks compared: "cache" (the node's
// session cache alone: single use per node, what the gateway did before
// tickets went to JetStream), "kv" (the cluster's bucket alone) and
// "cache+kv" (the gateway now: the cache as a fast negative path, then the
// bucket).
func benchSeenSets(b *testing.B, mode string) crypto.SeenSet {
	if mode == "full" {
		mode = "cache"
	}
	b.Helper()
	sess, err := sessionstore.New(sessionstore.Options{}, bytes.Repeat([]byte{3}, sessionstore.KeySize))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(sess.Close)
	cache := &cacheSeenSet{c: sess, now: time.Now}
	if mode == "cache" {
		return cache
	}
	n, err := natsnode.Start(natsnode.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(n.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := ticketstore.OpenSeenSet(ctx, n.JetStream(), ticketstore.SeenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if mode == "kv" {
		return kv
	}
	return &localFirstSeen{local: cache, shared: kv}
}

// resumer is a client that resumes again and again, each time with the
// ticket of its previous connection (tickets are single use).
type resumer struct {
	cfg  crypto.ClientConfig
	srv  *crypto.ServerConfig
	sess *crypto.Session
}

func newResumer(tb testing.TB, suite *crypto.Suite, signer crypto.Signer, srv *crypto.ServerConfig) *resumer {
	tb.Helper()
	r := &resumer{cfg: crypto.ClientConfig{Suites: []*crypto.Suite{suite}, ServerKeys: []crypto.Verifier{signer.Public()}}, srv: srv}
	r.round(tb, false)
	return r
}

// round runs one handshake, both sides, keeps the new ticket and returns
// the time the server's part took.
func (r *resumer) round(tb testing.TB, resumed bool) time.Duration {
	cfg := r.cfg
	cfg.Session = r.sess
	c, err := crypto.NewClientHandshake(&cfg)
	if err != nil {
		tb.Fatal(err)
	}
	t0 := time.Now()
	s := crypto.NewServerHandshake(r.srv)
	sh, err := s.HandleClientHello(c.Hello())
	if err != nil {
		tb.Fatal(err)
	}
	server := time.Since(t0)
	fin, conn, err := c.HandleServerHello(sh)
	if err != nil {
		tb.Fatal(err)
	}
	t0 = time.Now()
	_, nst, err := s.HandleClientFinished(fin)
	if err != nil {
		tb.Fatal(err)
	}
	server += time.Since(t0)
	if conn.Resumed() != resumed {
		tb.Fatalf("resumed %v, want %v (%v)", conn.Resumed(), resumed, s.TicketError())
	}
	if r.sess, err = c.HandleNewSessionTicket(nst); err != nil {
		tb.Fatal(err)
	}
	return server
}

// BenchmarkResumedHandshake is the server's side of a resumed handshake
// (ClientHello with a ticket in, ServerHello out, Finished in, the next
// ticket out) with each single-use check (benchSeenSets), and "full" (no
// ticket offered: the signed handshake resumption saves). The client runs
// in the same loop; the server's share is reported as server-ns/op and
// handshakes/s (one handshake worker), the process's CPU as cpu-ns/op.
// "parallel" runs 8 clients per GOMAXPROCS at once, as the gateway's
// handshake workers do, and reports complete rounds (client and server on
// the same cores) per second: whether the bucket's round trip is hidden
// by concurrency.
func BenchmarkResumedHandshake(b *testing.B) {
	sm2, err := crypto.GenerateSigner(crypto.SigSM2)
	if err != nil {
		b.Fatal(err)
	}
	ed, err := crypto.GenerateSigner(crypto.SigEd25519)
	if err != nil {
		b.Fatal(err)
	}
	for _, suite := range []*crypto.Suite{crypto.GM, crypto.IntlPQ} {
		signer := sm2
		if suite.Signature == crypto.SigEd25519 {
			signer = ed
		}
		for _, seen := range []string{"full", "cache", "kv", "cache+kv"} {
			newServer := func(b *testing.B) *crypto.ServerConfig {
				ring, err := crypto.NewTicketKeyring(suite.AEAD, 2)
				if err != nil {
					b.Fatal(err)
				}
				return &crypto.ServerConfig{Suites: []*crypto.Suite{suite}, Identities: []crypto.Signer{signer},
					Tickets: ring, Seen: benchSeenSets(b, seen)}
			}
			resumed := seen != "full" // "full": no ticket offered, a signed handshake each time
			b.Run(suite.Name+"/"+seen, func(b *testing.B) {
				r := newResumer(b, suite, signer, newServer(b))
				var server time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU()
				for range b.N {
					if !resumed {
						r.sess = nil
					}
					server += r.round(b, resumed)
				}
				b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
				perOp := float64(server.Nanoseconds()) / float64(b.N)
				b.ReportMetric(perOp, "server-ns/op")
				b.ReportMetric(1e9/perOp, "handshakes/s")
			})
			if seen == "kv" || seen == "full" {
				continue
			}
			b.Run(suite.Name+"/"+seen+"/parallel", func(b *testing.B) {
				srv := newServer(b)
				b.SetParallelism(8)
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU()
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					r := newResumer(b, suite, signer, srv)
					for pb.Next() {
						r.round(b, true)
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "rounds/s")
				b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}
