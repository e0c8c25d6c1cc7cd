package limiter

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

func mustNew(tb testing.TB, s Settings) (*Limiter, *metrics.Set) {
	tb.Helper()
	set := metrics.NewSet()
	l, err := New(s, set, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return l, set
}

func counter(set *metrics.Set, reason string) uint64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for line := range strings.Lines(b.String()) {
		prefix := `unigate_limiter_refused_total{reason="` + reason + `"} `
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			var n uint64
			for _, c := range v {
				n = n*10 + uint64(c-'0')
			}
			return n
		}
	}
	return 0
}

var (
	ip1 = netip.MustParseAddr("192.0.2.1")
	ip2 = netip.MustParseAddr("192.0.2.2")
)

func TestNilLimiterAdmitsEverything(t *testing.T) {
	var l *Limiter
	if ok, _, _, _ := l.Admit(ip1); !ok {
		t.Fatal("nil limiter refused")
	}
	l.Release(ip1)
	if ok, _, _ := l.AdmitIdentity("a"); !ok {
		t.Fatal("nil limiter refused an identity")
	}
	l.ReleaseIdentity("a")
	if l.Overloaded() || l.Connections() != 0 || l.Update(Settings{}) != nil {
		t.Fatal("nil limiter state")
	}
}

func TestBucket(t *testing.T) {
	r := NewRate(10, 3) // one token per 100ms, 3 at once
	var b Bucket
	now := int64(time.Hour)
	for i := range 3 {
		if ok, _ := b.Allow(r, now, 1); !ok {
			t.Fatalf("token %d refused", i)
		}
	}
	ok, wait := b.Allow(r, now, 1)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("4th: ok=%v wait=%v, want refused for 100ms", ok, wait)
	}
	if ok, _ := b.Allow(r, now+int64(100*time.Millisecond), 1); !ok {
		t.Fatal("refill after 100ms refused")
	}
	if ok, _ := b.Allow(r, now+int64(10*time.Second), 4); ok {
		t.Fatal("4 tokens fit a bucket of 3")
	}
	if !b.full(now + int64(10*time.Second)) {
		t.Fatal("bucket not full after 10s")
	}
	var u Bucket
	for range 1000 {
		if ok, _ := u.Allow(Rate{}, now, 1<<20); !ok {
			t.Fatal("unlimited refused")
		}
	}
}

func TestAdmitPerIPConnections(t *testing.T) {
	l, set := mustNew(t, Settings{PerIPConnections: 2})
	for range 2 {
		if ok, _, _, _ := l.Admit(ip1); !ok {
			t.Fatal("refused under the cap")
		}
	}
	ok, status, retry, reason := l.Admit(ip1)
	if ok || status != 429 || retry != RetryConcurrent || reason != ReasonIPConnections {
		t.Fatalf("3rd: %v %d %v %q", ok, status, retry, reason)
	}
	if ok, _, _, _ := l.Admit(ip2); !ok {
		t.Fatal("another IP refused")
	}
	l.Release(ip1)
	if ok, _, _, _ := l.Admit(ip1); !ok {
		t.Fatal("refused after a release")
	}
	if got := counter(set, ReasonIPConnections); got != 1 {
		t.Fatalf("counter %d, want 1", got)
	}
	if l.Connections() != 3 {
		t.Fatalf("connections %d, want 3", l.Connections())
	}
}

func TestAdmitPerIPRate(t *testing.T) {
	l, set := mustNew(t, Settings{PerIPRate: 1, PerIPBurst: 2})
	for range 2 {
		if ok, _, _, _ := l.Admit(ip1); !ok {
			t.Fatal("refused within the burst")
		}
	}
	ok, status, retry, reason := l.Admit(ip1)
	if ok || status != 429 || retry < time.Second || retry > 2*time.Second || reason != ReasonIPRate {
		t.Fatalf("over the rate: %v %d %v %q", ok, status, retry, reason)
	}
	if counter(set, ReasonIPRate) != 1 {
		t.Fatal("not counted")
	}
}

func TestAllowListExempt(t *testing.T) {
	l, _ := mustNew(t, Settings{PerIPConnections: 1, PerIPRate: 1, PerIPBurst: 1,
		AllowList: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/31")}})
	for range 10 {
		if ok, _, _, reason := l.Admit(ip1); !ok {
			t.Fatalf("allow-listed IP refused: %s", reason)
		}
	}
	if ok, _, _, _ := l.Admit(ip2); !ok {
		t.Fatal("first connection of an unlisted IP refused")
	}
	if ok, _, _, _ := l.Admit(ip2); ok {
		t.Fatal("unlisted IP not limited")
	}
	// A reload that removes the exemption keeps the counts right.
	if err := l.Update(Settings{PerIPConnections: 1}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		l.Release(ip1)
	}
	if ok, _, _, _ := l.Admit(ip1); !ok {
		t.Fatal("refused after every connection was released")
	}
}

func TestAdmitFullAndOverloaded(t *testing.T) {
	l, set := mustNew(t, Settings{MaxConnections: 10, HighWaterPercent: 80})
	for i := range 10 {
		if i == 8 && !l.Overloaded() {
			t.Fatal("not overloaded at 80%")
		}
		if i < 8 && l.Overloaded() {
			t.Fatalf("overloaded at %d", i)
		}
		if ok, _, _, _ := l.Admit(ip1); !ok {
			t.Fatal("refused under the cap")
		}
	}
	ok, status, retry, reason := l.Admit(ip2)
	if ok || status != 503 || retry != RetryFull || reason != ReasonFull {
		t.Fatalf("full: %v %d %v %q", ok, status, retry, reason)
	}
	if counter(set, ReasonFull) != 1 || l.Connections() != 10 {
		t.Fatal("count")
	}
}

func TestMaxConnectionsBoundedByFDs(t *testing.T) {
	l, _ := mustNew(t, Settings{MaxConnections: 1 << 30})
	if got, want := l.MaxConnections(), FDCap(DefaultFDReserve); got != want {
		t.Fatalf("cap %d, want the fd cap %d", got, want)
	}
}

func TestAcceptRate(t *testing.T) {
	l, set := mustNew(t, Settings{AcceptRate: 1, AcceptBurst: 3, PerIPConnections: 100})
	for i := range 3 {
		if ok, _, _, _ := l.Admit(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})); !ok {
			t.Fatal("refused within the burst")
		}
	}
	ok, status, _, reason := l.Admit(ip1)
	if ok || status != 503 || reason != ReasonAcceptRate {
		t.Fatalf("over the accept rate: %v %d %q", ok, status, reason)
	}
	if l.Connections() != 3 || counter(set, ReasonAcceptRate) != 1 {
		t.Fatal("a refused connection is counted as open")
	}
}

func TestIdentity(t *testing.T) {
	l, _ := mustNew(t, Settings{IdentityConnections: 1})
	if ok, _, _ := l.AdmitIdentity("t/a"); !ok {
		t.Fatal("first refused")
	}
	if ok, retry, reason := l.AdmitIdentity("t/a"); ok || reason != ReasonIdentityConnections || retry <= 0 {
		t.Fatal("second not refused")
	}
	l.ReleaseIdentity("t/a")
	if ok, _, _ := l.AdmitIdentity("t/a"); !ok {
		t.Fatal("refused after release")
	}
}

// TestAnonymous: anonymous sessions are capped and rate limited per IP
// (IPv6 per /64), separately from the connection limits; the allow list
// exempts; a reload changes the cap without forgetting the open sessions.
func TestAnonymous(t *testing.T) {
	nat := netip.MustParseAddr("192.0.2.1")
	l, _ := mustNew(t, Settings{AnonymousPerIPConnections: 2, AnonymousPerIPRate: 1, AnonymousPerIPBurst: 3,
		AllowList: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}})
	for i := range 2 {
		if ok, _, _ := l.AdmitAnonymous(nat); !ok {
			t.Fatalf("anonymous %d refused", i)
		}
	}
	if ok, retry, reason := l.AdmitAnonymous(nat); ok || reason != ReasonAnonymousConnections || retry != RetryConcurrent {
		t.Fatalf("third: ok=%v reason=%q retry=%v", ok, reason, retry)
	}
	// The other connection limits are untouched by anonymous sessions.
	if ok, _, _, _ := l.Admit(nat); !ok {
		t.Fatal("Admit refused")
	}
	l.ReleaseAnonymous(nat)
	if ok, _, _ := l.AdmitAnonymous(nat); !ok {
		t.Fatal("refused after release")
	}
	l.ReleaseAnonymous(nat)
	// The burst of 3 is spent: the rate refuses with a wait of about a second.
	if ok, retry, reason := l.AdmitAnonymous(nat); ok || reason != ReasonAnonymousRate || retry != time.Second {
		t.Fatalf("rate: ok=%v reason=%q retry=%v", ok, reason, retry)
	}
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2::ffff")
	if err := l.Update(Settings{AnonymousPerIPConnections: 1}); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := l.AdmitAnonymous(v6a); !ok {
		t.Fatal("v6 refused")
	}
	if ok, _, reason := l.AdmitAnonymous(v6b); ok || reason != ReasonAnonymousConnections {
		t.Fatal("the same /64 was not counted together")
	}
	allowed := netip.MustParseAddr("198.51.100.7")
	if err := l.Update(Settings{AnonymousPerIPConnections: 1, AllowList: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if ok, _, _ := l.AdmitAnonymous(allowed); !ok {
			t.Fatal("allow-listed address refused")
		}
	}
	if err := l.Update(Settings{AnonymousPerIPBurst: -1}); err == nil {
		t.Fatal("negative burst accepted")
	}
}

// TestKeysBoundedUnderSpraying opens and closes connections from a million
// distinct addresses: the keys held stay under MaxKeys.
func TestKeysBoundedUnderSpraying(t *testing.T) {
	const maxKeys = 4096
	l, _ := mustNew(t, Settings{PerIPRate: 1, PerIPBurst: 1, MaxKeys: maxKeys})
	// Some long-lived connections must survive the eviction.
	held := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}
	for _, a := range held {
		if ok, _, _, _ := l.Admit(a); !ok {
			t.Fatal("refused")
		}
	}
	for i := range 1 << 20 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if ok, _, _, _ := l.Admit(a); ok {
			l.Release(a) // the bucket is empty: the key stays until evicted
		}
		if i%65536 == 0 {
			if n := l.ips.len(); n > maxKeys+len(held) {
				t.Fatalf("%d keys held after %d addresses, bound %d", n, i, maxKeys)
			}
		}
	}
	for _, a := range held {
		if l.ips.conns(ipKey(a)) != 1 {
			t.Fatalf("the count of %v was evicted", a)
		}
	}
}

func TestIPv6KeyedBy64(t *testing.T) {
	l, _ := mustNew(t, Settings{PerIPConnections: 1})
	if ok, _, _, _ := l.Admit(netip.MustParseAddr("2001:db8::1")); !ok {
		t.Fatal("refused")
	}
	if ok, _, _, _ := l.Admit(netip.MustParseAddr("2001:db8::2")); ok {
		t.Fatal("another address of the same /64 admitted")
	}
	if ok, _, _, _ := l.Admit(netip.MustParseAddr("2001:db8:0:1::1")); !ok {
		t.Fatal("another /64 refused")
	}
	// IPv4-mapped is the IPv4 address.
	if ok, _, _, _ := l.Admit(netip.MustParseAddr("::ffff:192.0.2.1")); !ok {
		t.Fatal("refused")
	}
	if ok, _, _, _ := l.Admit(ip1); ok {
		t.Fatal("mapped and plain IPv4 are different keys")
	}
}

func TestConcurrentAdmitRelease(t *testing.T) {
	l, _ := mustNew(t, Settings{PerIPConnections: 5, MaxConnections: 50})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			a := netip.AddrFrom4([4]byte{10, 0, 0, byte(g % 3)})
			for range 2000 {
				if ok, _, _, _ := l.Admit(a); ok {
					l.Release(a)
				}
			}
		})
	}
	wg.Wait()
	if l.Connections() != 0 || l.ips.len() != 0 {
		t.Fatalf("left %d connections, %d keys", l.Connections(), l.ips.len())
	}
}

func TestUpdateRejectsBadSettings(t *testing.T) {
	l, _ := mustNew(t, Settings{})
	for _, s := range []Settings{{MaxConnections: -1}, {HighWaterPercent: 101}, {PerIPBurst: -1}} {
		if err := l.Update(s); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRefusalsLogSampled(t *testing.T) {
	var buf syncBuffer
	l, err := New(Settings{PerIPConnections: 1}, nil, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l.Admit(ip1)
	for range 1000 {
		l.Admit(ip1)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "reason=ip_connections") {
		if time.Now().After(deadline) {
			t.Fatal("no log line")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Fatalf("%d log lines for 1000 refusals, want 1:\n%s", n, buf.String())
	}
}

func TestRoundRetry(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{0, time.Second}, {time.Millisecond, time.Second}, {time.Second, time.Second}, {1500 * time.Millisecond, 2 * time.Second},
	} {
		if got := RoundRetry(c.in); got != c.want {
			t.Errorf("RoundRetry(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
