package atrest

import (
	"bytes"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSealOpen256 is the cost added to one stored and one read
// history message of 256 bytes: Seal (budget counter, random nonce,
// SM4-GCM) and Open (parse, key lookup, SM4-GCM), with a history-sized
// additional data. The targets are a few microseconds and no allocation
// with reused buffers: small next to a JetStream append (~15-60 µs).
func BenchmarkSealOpen256(b *testing.B) {
	js := startJS(b)
	k := openRing(b, js, newMasters(b), Options{})
	plain := bytes.Repeat([]byte("x"), 256)
	aad := bytes.Repeat([]byte("a"), 48)
	sealed := make([]byte, 0, 512)
	opened := make([]byte, 0, 512)
	b.Run("seal", func(b *testing.B) {
		b.SetBytes(256)
		b.ReportAllocs()
		defer reportCPU(b, processCPU())
		for b.Loop() {
			var err error
			if sealed, err = k.Seal(sealed[:0], plain, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open", func(b *testing.B) {
		b.SetBytes(256)
		b.ReportAllocs()
		defer reportCPU(b, processCPU())
		for b.Loop() {
			var err error
			if opened, err = k.Open(opened[:0], sealed, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("seal+open", func(b *testing.B) {
		b.SetBytes(256)
		b.ReportAllocs()
		defer reportCPU(b, processCPU())
		for b.Loop() {
			var err error
			if sealed, err = k.Seal(sealed[:0], plain, aad); err != nil {
				b.Fatal(err)
			}
			if opened, err = k.Open(opened[:0], sealed, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// processCPU is the process's user+system CPU time. The benchmarks report
// it per operation ("cpu-ns/op") next to wall time: on a machine shared
// with other work, wall time mostly measures the waits for a core, CPU
// time the cost (here including the embedded NATS server's share).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time since start per operation.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
}
