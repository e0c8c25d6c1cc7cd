package limiter

import (
	"time"
	"unsafe"

	"golang.org/x/time/rate"
	"net/netip"
	"testing"
)

// BenchmarkAdmit is the cost of admitting and releasing one connection with
// every per-IP limit on, the work done per upgrade.
func BenchmarkAdmit(b *testing.B) {
	l, _ := mustNew(b, Settings{PerIPConnections: 1 << 20, PerIPRate: 1e9, PerIPBurst: 1 << 20, AcceptRate: 1e9, AcceptBurst: 1 << 20})
	b.Run("one-ip", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if ok, _, _, _ := l.Admit(ip1); !ok {
				b.Fatal("refused")
			}
			l.Release(ip1)
		}
	})
	b.Run("many-ips-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i++
				a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
				if ok, _, _, _ := l.Admit(a); ok {
					l.Release(a)
				}
			}
		})
	})
}

// BenchmarkBucketAllow is the per-message rate check netpoll makes.
func BenchmarkBucketAllow(b *testing.B) {
	r := NewRate(1e12, 1<<30)
	var bk Bucket
	now := Now()
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := bk.Allow(r, now, 1); !ok {
			b.Fatal("refused")
		}
	}
	b.ReportMetric(float64(unsafe.Sizeof(bk)), "bytes/limiter")
}

// BenchmarkXTimeRate is the same check with golang.org/x/time/rate, the
// standard bucket, for comparison: Bucket is kept because it is 8 bytes per
// connection (rate.Limiter is a mutex plus five fields, ~72 bytes, and two
// are needed per connection: messages and bytes) and skips the mutex, which
// on the per-message path of 100k connections is worth it. Compare:
//
//	go test -run '^$' -bench 'BucketAllow|XTimeRate' -benchmem ./limiter/
func BenchmarkXTimeRate(b *testing.B) {
	l := rate.NewLimiter(rate.Limit(1e12), 1<<30)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if !l.AllowN(now, 1) {
			b.Fatal("refused")
		}
	}
	b.ReportMetric(float64(unsafe.Sizeof(*l)), "bytes/limiter")
}

// BenchmarkAdmitRefused is the cost of refusing one connection at a full
// node: the work a connection storm beyond the cap makes per attempt
// (counted by reason, the sampled log line held back). It must not
// allocate: a storm's garbage would be collected on the cores that serve
// the live conversations.
func BenchmarkAdmitRefused(b *testing.B) {
	l, _ := mustNew(b, Settings{MaxConnections: 1})
	if ok, _, _, _ := l.Admit(ip1); !ok {
		b.Fatal("first connection refused")
	}
	l.Admit(ip1) // the first refusal writes the log line
	b.ReportAllocs()
	for b.Loop() {
		if ok, _, _, _ := l.Admit(ip1); ok {
			b.Fatal("admitted over the cap")
		}
	}
}
