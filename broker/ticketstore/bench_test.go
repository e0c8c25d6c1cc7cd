package ticketstore

import (
	"encoding/binary"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchSeen is a SeenSet on an embedded NATS server with its file store,
// as in the gateway.
func benchSeen(b *testing.B) *SeenSet {
	b.Helper()
	n := startNATS(b, b.TempDir())
	_, js := connect(b, n)
	kv, err := OpenSeenSet(ctxT(b), js, SeenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return kv
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

// BenchmarkSeenSetUse is the single-use check alone, from 2 goroutines per
// GOMAXPROCS: "fresh" creates an entry per operation (one JetStream
// publish round trip), "reused" presents an id already used (the failed
// create and the read of the existing key: two round trips). The resumed
// handshake with it is BenchmarkResumedHandshake in package broker.
func BenchmarkSeenSetUse(b *testing.B) {
	for _, mode := range []string{"fresh", "reused"} {
		b.Run(mode, func(b *testing.B) {
			s := benchSeen(b)
			exp := time.Now().Add(time.Hour)
			used := []byte("used-ticket-id-0")
			if _, err := s.Use(used, exp); err != nil {
				b.Fatal(err)
			}
			var next atomic.Uint64
			b.ReportAllocs()
			b.SetParallelism(2)
			cpu := processCPU()
			defer reportCPU(b, cpu)
			b.RunParallel(func(pb *testing.PB) {
				id := make([]byte, 16)
				for pb.Next() {
					if mode == "reused" {
						if ok, err := s.Use(used, exp); ok || err != nil {
							b.Fatalf("fresh %v, %v", ok, err)
						}
						continue
					}
					binary.BigEndian.PutUint64(id, next.Add(1))
					if ok, err := s.Use(id, exp); !ok || err != nil {
						b.Fatalf("fresh %v, %v", ok, err)
					}
				}
			})
		})
	}
}
