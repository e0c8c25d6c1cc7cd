package ticketstore

import (
	"encoding/binary"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/unigate/unigate/crypto"
)

// benchSeen returns the seen sets compared: "local" (crypto.MemorySeenSet,
// one process, what a node without JetStream uses) and "kv" (this
// package's bucket on an embedded NATS server with its file store, as in
// the gateway).
func benchSeen(b *testing.B) map[string]crypto.SeenSet {
	b.Helper()
	n := startNATS(b, b.TempDir())
	_, js := connect(b, n)
	kv, err := OpenSeenSet(ctxT(b), js, SeenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return map[string]crypto.SeenSet{"local": crypto.NewMemorySeenSet(nil), "kv": kv}
}

// processCPU is the process's user+system CPU time. The benchmarks report
// it per operation ("cpu-ns/op") next to wall time: on a machine shared
// with other work, wall time mostly measures the waits for a core, CPU
// time the cost (here including the client's side of the handshake and
// the embedded NATS server's share).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkSeenSetUse is the single-use check alone: one fresh ticket id
// per operation.
func BenchmarkSeenSetUse(b *testing.B) {
	for _, name := range []string{"local", "kv"} {
		b.Run(name, func(b *testing.B) {
			s := benchSeen(b)[name]
			exp := time.Now().Add(time.Hour)
			var next atomic.Uint64
			b.ReportAllocs()
			cpu := processCPU()
			defer reportCPU(b, cpu)
			b.RunParallel(func(pb *testing.PB) {
				id := make([]byte, 16)
				for pb.Next() {
					binary.BigEndian.PutUint64(id, next.Add(1))
					if ok, err := s.Use(id, exp); !ok || err != nil {
						b.Fatalf("fresh %v, %v", ok, err)
					}
				}
			})
		})
	}
}

// resumer is a client that resumes again and again, each time with the
// ticket of its previous connection (tickets are single use).
type resumer struct {
	cfg  *crypto.ClientConfig
	srv  *crypto.ServerConfig
	sess *crypto.Session
}

func newResumer(tb testing.TB, suite *crypto.Suite, signer crypto.Signer, srv *crypto.ServerConfig) *resumer {
	tb.Helper()
	r := &resumer{cfg: &crypto.ClientConfig{Suites: []*crypto.Suite{suite}, ServerKeys: []crypto.Verifier{signer.Public()}}, srv: srv}
	r.round(tb, false)
	return r
}

// round runs one handshake, both sides, and keeps the new ticket; it
// returns the time the server's part took.
func (r *resumer) round(tb testing.TB, resumed bool) time.Duration {
	cfg := *r.cfg
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
// ticket out) with the single-use check in the process ("local") or in the
// cluster's bucket ("kv": one JetStream round trip more). The client runs
// in the same loop; the server's share is reported as server-ns/op and as
// resumed/s for one handshake worker. "parallel" runs 8 clients per
// GOMAXPROCS at once, as the gateway's handshake workers do, and reports
// complete rounds (client and server, on the same cores) per second of the
// whole process: whether the bucket's round trip is hidden by concurrency.
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
		for _, seen := range []string{"local", "kv"} {
			newServer := func(b *testing.B) *crypto.ServerConfig {
				ring, err := crypto.NewTicketKeyring(suite.AEAD, 2)
				if err != nil {
					b.Fatal(err)
				}
				return &crypto.ServerConfig{Suites: []*crypto.Suite{suite}, Identities: []crypto.Signer{signer},
					Tickets: ring, Seen: benchSeen(b)[seen]}
			}
			b.Run(suite.Name+"/"+seen, func(b *testing.B) {
				r := newResumer(b, suite, signer, newServer(b))
				var server time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU()
				defer reportCPU(b, cpu)
				for range b.N {
					server += r.round(b, true)
				}
				perOp := float64(server.Nanoseconds()) / float64(b.N)
				b.ReportMetric(perOp, "server-ns/op")
				b.ReportMetric(1e9/perOp, "resumed/s")
			})
			b.Run(suite.Name+"/"+seen+"/parallel", func(b *testing.B) {
				srv := newServer(b)
				b.SetParallelism(8)
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU()
				defer reportCPU(b, cpu)
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					r := newResumer(b, suite, signer, srv)
					for pb.Next() {
						r.round(b, true)
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "rounds/s")
			})
		}
	}
}
