package supervisor

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
)

// BenchmarkBotCall measures a unary Bot call through a real plugin process
// (this test binary re-executed), with 1 and 64 concurrent callers, and
// reports p50/p99 per call and calls/s.
func BenchmarkBotCall(b *testing.B) {
	cfg := helperConfig(b, "plugins")
	cfg.MaxConcurrent = 128
	bot := newTestBot(b, cfg)
	req := backends.AnswerRequest{ConversationID: "c1", Tenant: "acme", Text: "hello", Language: "en"}
	ctx := context.Background()
	for _, callers := range []int{1, 64} {
		b.Run(map[int]string{1: "callers=1", 64: "callers=64"}[callers], func(b *testing.B) {
			var mu sync.Mutex
			lat := make([]time.Duration, 0, 1<<16)
			b.ReportAllocs()
			// RunParallel starts parallelism × GOMAXPROCS goroutines.
			b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
			start := time.Now()
			if callers == 1 {
				for b.Loop() {
					t0 := time.Now()
					if _, err := bot.TryAnswer(ctx, req); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(t0))
				}
			} else {
				b.RunParallel(func(pb *testing.PB) {
					local := make([]time.Duration, 0, 1024)
					for pb.Next() {
						t0 := time.Now()
						if _, err := bot.TryAnswer(ctx, req); err != nil {
							b.Error(err)
							return
						}
						local = append(local, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, local...)
					mu.Unlock()
				})
			}
			elapsed := time.Since(start)
			if len(lat) == 0 {
				return
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
		})
	}
}
