package crypto

import (
	"testing"
	"time"
)

// alwaysFresh lets a benchmark resume from one ticket repeatedly; it measures the
// server's cost, not the single-use policy.
type alwaysFresh struct{}

func (alwaysFresh) Use([]byte, time.Time) (bool, error) { return true, nil }

// BenchmarkServerHandshake measures the server side of a handshake (ClientHello in,
// ServerHello out, client Finished in, Conn and ticket out). The client runs in the
// same loop; the server's share is timed separately and reported as server-ns/op
// (StopTimer would add a stop-the-world per call and distort the figure).
func BenchmarkServerHandshake(b *testing.B) {
	for _, suite := range allSuites {
		for _, mode := range []string{"full", "resumed", "chain"} {
			if mode == "chain" && suite.Signature != SigSM2 {
				continue
			}
			b.Run(suite.Name+"/"+mode, func(b *testing.B) {
				f := newFixture(b)
				f.server.Seen = alwaysFresh{}
				cfg := f.client(suite)
				switch mode {
				case "resumed":
					cfg.Session = handshake(b, f.client(suite), f.server).session
				case "chain": // SM2 chain (leaf + intermediate) verified against a root
					var p *pki
					f, p, _ = certFixture(b)
					f.server.Seen = alwaysFresh{}
					cfg = f.rootsClient(p, "chat.example", suite)
				}
				var server time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c, err := NewClientHandshake(cfg)
					if err != nil {
						b.Fatal(err)
					}
					t0 := time.Now()
					s := NewServerHandshake(f.server)
					sh, err := s.HandleClientHello(c.Hello())
					if err != nil {
						b.Fatal(err)
					}
					server += time.Since(t0)
					fin, _, err := c.HandleServerHello(sh)
					if err != nil {
						b.Fatal(err)
					}
					t0 = time.Now()
					if _, _, err := s.HandleClientFinished(fin); err != nil {
						b.Fatal(err)
					}
					server += time.Since(t0)
					if mode == "resumed" && !s.resumed {
						b.Fatal("not resumed")
					}
				}
				b.ReportMetric(float64(server.Nanoseconds())/float64(b.N), "server-ns/op")
			})
		}
	}
}

// BenchmarkHandshake is a complete handshake, both sides, in one goroutine;
// "chain" has the client verify an SM2 certificate chain instead of a pinned key.
func BenchmarkHandshake(b *testing.B) {
	for _, suite := range allSuites {
		b.Run(suite.Name, func(b *testing.B) {
			f := newFixture(b)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				handshake(b, f.client(suite), f.server)
			}
		})
	}
	b.Run("GM/chain", func(b *testing.B) {
		f, p, _ := certFixture(b)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			handshake(b, f.rootsClient(p, "chat.example", GM), f.server)
		}
	})
}

// BenchmarkRecord256 seals and opens one 256-byte message; "plain" is a copy, the
// baseline for the overhead ratio.
func BenchmarkRecord256(b *testing.B) {
	msg := make([]byte, 256)
	b.Run("plain", func(b *testing.B) {
		dst := make([]byte, 0, 256)
		b.SetBytes(256)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			dst = append(dst[:0], msg...)
		}
	})
	// "compacted" drops both Conns' expanded AEADs after every record, the worst
	// case of Compact-when-idle (a batch of one frame): it prices the rebuild.
	for _, suite := range allSuites {
		for _, mode := range []string{"warm", "compacted"} {
			b.Run(suite.Name+"/"+mode, func(b *testing.B) {
				f := newFixture(b)
				r := handshake(b, f.client(suite), f.server)
				rec := make([]byte, 0, 256+RecordOverhead)
				pt := make([]byte, 0, 256)
				b.SetBytes(256)
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					rec, _ = r.client.Seal(rec[:0], msg)
					var err error
					if pt, err = r.server.Open(pt[:0], rec); err != nil {
						b.Fatal(err)
					}
					if mode == "compacted" {
						r.client.Compact()
						r.server.Compact()
					}
				}
			})
		}
	}
}

// BenchmarkGCM16K compares raw SM4-GCM and AES-256-GCM throughput.
func BenchmarkGCM16K(b *testing.B) { benchGCM(b, 16<<10) }

// BenchmarkGCM256 is BenchmarkGCM16K for a chat-sized message: per-call
// costs (the tag, GHASH of the additional data, the mode's setup) weigh
// more than the bulk rate.
func BenchmarkGCM256(b *testing.B) { benchGCM(b, 256) }

func benchGCM(b *testing.B, size int) {
	for _, a := range []AEAD{SM4GCM, AES256GCM} {
		b.Run(a.Name(), func(b *testing.B) {
			c, _ := a.New(make([]byte, a.KeySize()))
			buf := make([]byte, size)
			out := make([]byte, 0, len(buf)+16)
			nonce := make([]byte, 12)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				out = c.Seal(out[:0], nonce, buf, nil)
			}
		})
	}
}
