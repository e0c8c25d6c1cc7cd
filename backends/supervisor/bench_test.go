package supervisor

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
)

// benchCalls runs call b.N times from callers goroutines (1: the
// benchmark's own) and reports p50/p99 per call and calls/s.
func benchCalls(b *testing.B, callers int, call func() error) {
	var mu sync.Mutex
	lat := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	// RunParallel starts parallelism × GOMAXPROCS goroutines.
	b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
	start := time.Now()
	if callers == 1 {
		for b.Loop() {
			t0 := time.Now()
			if err := call(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
	} else {
		b.RunParallel(func(pb *testing.PB) {
			local := make([]time.Duration, 0, 1024)
			for pb.Next() {
				t0 := time.Now()
				if err := call(); err != nil {
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
}

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
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			benchCalls(b, callers, func() error {
				_, err := bot.TryAnswer(ctx, req)
				return err
			})
		})
	}
}

// BenchmarkRouterCall measures a Rank call through a real router plugin
// process (the test router returns every candidate, reversed), with 10
// and 1,000 candidates and 1 and 64 concurrent callers: the cost of one
// remote routing decision of the gateway's two-phase assignment, which
// runs off the dispatcher's lock.
func BenchmarkRouterCall(b *testing.B) {
	cfg := helperConfig(b, "plugins")
	cfg.MaxConcurrent = 128
	r, err := NewRouter(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	ready(b, r)
	ctx := context.Background()
	for _, n := range []int{10, 1000} {
		req := backends.RankRequest{
			Conversation: backends.Conversation{ID: "c1", Tenant: "acme", Skills: []string{"billing/refund"}, Region: "cn-east", Sentiment: -0.3},
			Candidates:   make([]backends.Agent, n),
		}
		for i := range req.Candidates {
			req.Candidates[i] = backends.Agent{ID: fmt.Sprintf("agent-%04d", i), Skills: []string{"billing", "sales"}, Load: i % 5, Capacity: 5, Region: "cn-north"}
		}
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("candidates=%d/callers=%d", n, callers), func(b *testing.B) {
				benchCalls(b, callers, func() error {
					rk, err := r.TryRank(ctx, req)
					if err == nil && len(rk.Agents) != n {
						err = fmt.Errorf("%d agents ranked, want %d", len(rk.Agents), n)
					}
					return err
				})
			})
		}
	}
}
