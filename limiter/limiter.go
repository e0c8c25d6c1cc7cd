package limiter

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"
)

// Reasons of refusals: the label of unigate_limiter_refused_total and the
// reason Admit returns.
const (
	// ReasonFull: the node holds its maximum of connections (503).
	ReasonFull = "full"
	// ReasonAcceptRate: the node accepts new connections faster than its
	// global rate (503).
	ReasonAcceptRate = "accept_rate"
	// ReasonIPConnections: the client IP holds its maximum of concurrent
	// connections (429).
	ReasonIPConnections = "ip_connections"
	// ReasonIPRate: the client IP opens connections faster than its rate (429).
	ReasonIPRate = "ip_rate"
	// ReasonIdentityConnections: the token subject holds its maximum of
	// concurrent connections (429).
	ReasonIdentityConnections = "identity_connections"
	// ReasonIdentityRate: the token subject connects faster than its rate (429).
	ReasonIdentityRate = "identity_rate"
	// ReasonAnonymousConnections: the client IP holds its maximum of
	// concurrent anonymous (token-less) sessions (close 1008).
	ReasonAnonymousConnections = "anonymous_connections"
	// ReasonAnonymousRate: the client IP starts anonymous sessions faster
	// than its rate (close 1013).
	ReasonAnonymousRate = "anonymous_rate"
	// ReasonMessageRate and ReasonByteRate are counted by netpoll when a
	// connection goes over its message or byte rate (close 1008).
	ReasonMessageRate = "message_rate"
	ReasonByteRate    = "byte_rate"
)

// Retry-After given when no bucket says when to come back: a client that
// holds its maximum of connections, or a full node.
const (
	RetryConcurrent = 10 * time.Second
	RetryFull       = 5 * time.Second
)

// Defaults of Settings fields left at zero where zero cannot mean "off".
const (
	DefaultFDReserve        = 256
	DefaultHighWaterPercent = 90
	DefaultMaxKeys          = 1 << 16
)

// ErrSettings: a Settings field is out of range.
var ErrSettings = errors.New("limiter: bad settings")

// Settings are the limits. For every limit, 0 means off unless said
// otherwise; rates are per second, bursts in the same unit (at least 1 when
// the rate is set; 0 then means the rate rounded up).
type Settings struct {
	// MaxConnections caps admitted connections. 0 means the process's
	// RLIMIT_NOFILE minus FDReserve; a larger value is lowered to that.
	MaxConnections int
	// FDReserve is the number of file descriptors kept free for everything
	// that is not a client (listeners, files, NATS, plugins). 0 means
	// DefaultFDReserve.
	FDReserve int
	// HighWaterPercent is the share of MaxConnections above which
	// Overloaded reports true (readiness fails so a load balancer drains
	// the node). 0 means DefaultHighWaterPercent.
	HighWaterPercent int

	// AcceptRate and AcceptBurst bound new connections per second on the
	// whole node.
	AcceptRate  float64
	AcceptBurst int

	// PerIPConnections caps the concurrent connections of one client IP
	// (IPv6: one /64).
	PerIPConnections int
	// PerIPRate and PerIPBurst bound new connections per second per IP.
	PerIPRate  float64
	PerIPBurst int
	// AllowList holds the networks exempt from the per-IP limits (known
	// NAT egress addresses, offices). They still count against the node's
	// cap and accept rate.
	AllowList []netip.Prefix

	// IdentityConnections caps the concurrent connections of one token
	// subject; IdentityRate and IdentityBurst bound its new connections
	// per second. See AdmitIdentity.
	IdentityConnections int
	IdentityRate        float64
	IdentityBurst       int

	// AnonymousPerIPConnections caps the concurrent anonymous sessions
	// (a hello without a token) of one client IP; AnonymousPerIPRate and
	// AnonymousPerIPBurst bound how fast it starts them. With generous
	// per-IP limits and strict anonymous ones, a NAT in front of many
	// identified users is not starved while one address cannot open
	// unbounded anonymous sessions. See AdmitAnonymous. The allow list
	// exempts from these too.
	AnonymousPerIPConnections int
	AnonymousPerIPRate        float64
	AnonymousPerIPBurst       int

	// MaxKeys bounds the idle IPs (and, separately, identities) tracked;
	// 0 means DefaultMaxKeys. See the package doc.
	MaxKeys int
}

// compiled is Settings with the derived values, swapped atomically.
type compiled struct {
	s         Settings
	cap       int64
	highWater int64
	accept    Rate
	perIP     Rate
	identity  Rate
	anonymous Rate
	maxKeys   int
}

// Limiter admits connections; see the package doc. A nil *Limiter admits
// everything.
type Limiter struct {
	cfg    atomic.Pointer[compiled]
	total  atomic.Int64
	ips    *keyed[netip.Addr]
	ids    *keyed[string]
	anon   *keyed[netip.Addr]
	accept struct {
		mu sync.Mutex
		b  Bucket
	}
	log     *slog.Logger
	refused map[string]*reasonStats
}

// reasonStats counts refusals of one reason and throttles their log line.
type reasonStats struct {
	name    string
	counter *metrics.Counter
	sampler Sampler
	logArgs []any // "reason", name: boxed once, so a refusal allocates nothing
}

// New returns a Limiter with settings s. Its counters are created on set
// (which the caller registers; nil means a private set), and the sampled
// refusal lines go to log (nil: discard).
func New(s Settings, set *metrics.Set, log *slog.Logger) (*Limiter, error) {
	if set == nil {
		set = metrics.NewSet()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{
		ips:     newKeyed(hashAddr),
		ids:     newKeyed(maphash.String),
		anon:    newKeyed(hashAddr),
		log:     log,
		refused: map[string]*reasonStats{},
	}
	for _, r := range []string{ReasonFull, ReasonAcceptRate, ReasonIPConnections, ReasonIPRate,
		ReasonIdentityConnections, ReasonIdentityRate, ReasonAnonymousConnections, ReasonAnonymousRate} {
		l.refused[r] = &reasonStats{name: r, counter: set.NewCounter(`unigate_limiter_refused_total{reason="` + r + `"}`), logArgs: []any{"reason", r}}
	}
	set.NewGauge(`unigate_limiter_connections`, func() float64 { return float64(l.total.Load()) })
	set.NewGauge(`unigate_limiter_max_connections`, func() float64 { return float64(l.cfg.Load().cap) })
	set.NewGauge(`unigate_limiter_tracked_keys{kind="ip"}`, func() float64 { return float64(l.ips.len()) })
	set.NewGauge(`unigate_limiter_tracked_keys{kind="identity"}`, func() float64 { return float64(l.ids.len()) })
	set.NewGauge(`unigate_limiter_tracked_keys{kind="anonymous"}`, func() float64 { return float64(l.anon.len()) })
	if err := l.Update(s); err != nil {
		return nil, err
	}
	return l, nil
}

// Update replaces the settings; open connections and buckets are kept. A
// cap lowered below the connections already open refuses new ones until
// enough have closed; none is dropped.
func (l *Limiter) Update(s Settings) error {
	if l == nil {
		return nil
	}
	c, err := compile(s)
	if err != nil {
		return err
	}
	l.cfg.Store(c)
	return nil
}

func compile(s Settings) (*compiled, error) {
	for _, v := range []struct {
		name string
		n    int
	}{
		{"MaxConnections", s.MaxConnections}, {"FDReserve", s.FDReserve}, {"AcceptBurst", s.AcceptBurst},
		{"PerIPConnections", s.PerIPConnections}, {"PerIPBurst", s.PerIPBurst},
		{"IdentityConnections", s.IdentityConnections}, {"IdentityBurst", s.IdentityBurst}, {"MaxKeys", s.MaxKeys},
		{"AnonymousPerIPConnections", s.AnonymousPerIPConnections}, {"AnonymousPerIPBurst", s.AnonymousPerIPBurst},
	} {
		if v.n < 0 {
			return nil, fmt.Errorf("%w: %s is negative (%d)", ErrSettings, v.name, v.n)
		}
	}
	if s.HighWaterPercent < 0 || s.HighWaterPercent > 100 {
		return nil, fmt.Errorf("%w: HighWaterPercent must be 0 to 100, got %d", ErrSettings, s.HighWaterPercent)
	}
	if s.FDReserve == 0 {
		s.FDReserve = DefaultFDReserve
	}
	if s.HighWaterPercent == 0 {
		s.HighWaterPercent = DefaultHighWaterPercent
	}
	if s.MaxKeys == 0 {
		s.MaxKeys = DefaultMaxKeys
	}
	s.AllowList = append([]netip.Prefix(nil), s.AllowList...)
	for i, p := range s.AllowList {
		s.AllowList[i] = p.Masked()
	}
	c := &compiled{
		s:         s,
		accept:    NewRate(s.AcceptRate, burstOf(s.AcceptRate, s.AcceptBurst)),
		perIP:     NewRate(s.PerIPRate, burstOf(s.PerIPRate, s.PerIPBurst)),
		identity:  NewRate(s.IdentityRate, burstOf(s.IdentityRate, s.IdentityBurst)),
		anonymous: NewRate(s.AnonymousPerIPRate, burstOf(s.AnonymousPerIPRate, s.AnonymousPerIPBurst)),
		maxKeys:   s.MaxKeys,
	}
	c.cap = int64(FDCap(s.FDReserve))
	if s.MaxConnections > 0 && int64(s.MaxConnections) < c.cap {
		c.cap = int64(s.MaxConnections)
	}
	c.highWater = max(c.cap*int64(s.HighWaterPercent)/100, 1)
	return c, nil
}

// burstOf is burst, or the rate rounded up when burst is 0.
func burstOf(rate float64, burst int) int {
	if burst > 0 || rate <= 0 {
		return burst
	}
	return int(rate + 0.999999)
}

// FDCap returns the process's soft RLIMIT_NOFILE minus reserve (at least
// 1), the most client connections the process can hold. Go raises the soft
// limit to the hard one at start-up.
func FDCap(reserve int) int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > 1<<30 {
		return 1 << 30
	}
	return max(int(rl.Cur)-reserve, 1)
}

// Admit decides whether a new connection from ip may be served. When ok,
// the connection is counted until Release(ip). When not, status is 429 (the
// client is over its own limits) or 503 (the node is full or over its
// accept rate), retryAfter says when to come back (whole seconds, at least
// 1 s) and reason names the limit. Its signature is netpoll.Admission's.
func (l *Limiter) Admit(ip netip.Addr) (ok bool, status int, retryAfter time.Duration, reason string) {
	if l == nil {
		return true, 0, 0, ""
	}
	c := l.cfg.Load()
	if n := l.total.Add(1); n > c.cap {
		l.total.Add(-1)
		return l.refuse(ReasonFull, 503, RetryFull)
	}
	now := Now()
	key := ipKey(ip)
	exempt := c.allowed(ip)
	switch r, wait := l.ips.acquire(key, now, c.s.PerIPConnections, c.perIP, exempt, c.maxKeys); r {
	case refusedConcurrent:
		l.total.Add(-1)
		return l.refuse(ReasonIPConnections, 429, RetryConcurrent)
	case refusedRate:
		l.total.Add(-1)
		return l.refuse(ReasonIPRate, 429, wait)
	}
	if !c.accept.Unlimited() {
		l.accept.mu.Lock()
		ok, wait := l.accept.b.Allow(c.accept, now, 1)
		l.accept.mu.Unlock()
		if !ok {
			l.ips.release(key, now)
			l.total.Add(-1)
			return l.refuse(ReasonAcceptRate, 503, wait)
		}
	}
	return true, 0, 0, ""
}

// Release ends a connection admitted by Admit(ip).
func (l *Limiter) Release(ip netip.Addr) {
	if l == nil {
		return
	}
	l.ips.release(ipKey(ip), Now())
	l.total.Add(-1)
}

// AdmitIdentity decides whether one more connection of the verified
// identity sub (a token subject, scoped by the caller, e.g. tenant+"/"+sub)
// may proceed; call it once the token is verified. When ok, call
// ReleaseIdentity(sub) when that connection ends. When not, the caller
// closes the connection (close code 1008, or 1013 with retryAfter).
func (l *Limiter) AdmitIdentity(sub string) (ok bool, retryAfter time.Duration, reason string) {
	if l == nil {
		return true, 0, ""
	}
	c := l.cfg.Load()
	switch r, wait := l.ids.acquire(sub, Now(), c.s.IdentityConnections, c.identity, false, c.maxKeys); r {
	case refusedConcurrent:
		ok, _, retryAfter, reason = l.refuse(ReasonIdentityConnections, 429, RetryConcurrent)
		return ok, retryAfter, reason
	case refusedRate:
		ok, _, retryAfter, reason = l.refuse(ReasonIdentityRate, 429, wait)
		return ok, retryAfter, reason
	}
	return true, 0, ""
}

// ReleaseIdentity ends a connection admitted by AdmitIdentity(sub).
func (l *Limiter) ReleaseIdentity(sub string) {
	if l == nil {
		return
	}
	l.ids.release(sub, Now())
}

// AdmitAnonymous decides whether one more anonymous session (a hello
// without a token) may start from ip; call it when such a hello arrives.
// When ok, call ReleaseAnonymous(ip) when that connection ends. When not,
// the caller closes the connection: 1008 for ReasonAnonymousConnections,
// 1013 with retryAfter for ReasonAnonymousRate. Allow-listed networks are
// counted but never refused.
func (l *Limiter) AdmitAnonymous(ip netip.Addr) (ok bool, retryAfter time.Duration, reason string) {
	if l == nil {
		return true, 0, ""
	}
	c := l.cfg.Load()
	switch r, wait := l.anon.acquire(ipKey(ip), Now(), c.s.AnonymousPerIPConnections, c.anonymous, c.allowed(ip), c.maxKeys); r {
	case refusedConcurrent:
		ok, _, retryAfter, reason = l.refuse(ReasonAnonymousConnections, 429, RetryConcurrent)
		return ok, retryAfter, reason
	case refusedRate:
		ok, _, retryAfter, reason = l.refuse(ReasonAnonymousRate, 429, wait)
		return ok, retryAfter, reason
	}
	return true, 0, ""
}

// ReleaseAnonymous ends a session admitted by AdmitAnonymous(ip).
func (l *Limiter) ReleaseAnonymous(ip netip.Addr) {
	if l == nil {
		return
	}
	l.anon.release(ipKey(ip), Now())
}

// Connections returns the admitted connections open now.
func (l *Limiter) Connections() int {
	if l == nil {
		return 0
	}
	return int(l.total.Load())
}

// MaxConnections returns the cap in force (see Settings.MaxConnections).
func (l *Limiter) MaxConnections() int {
	if l == nil {
		return 0
	}
	return int(l.cfg.Load().cap)
}

// Overloaded reports whether the admitted connections are at or above the
// high-water mark of the cap: the node should stop receiving new clients
// (its readiness check fails) while it keeps serving those it has.
func (l *Limiter) Overloaded() bool {
	if l == nil {
		return false
	}
	return l.total.Load() >= l.cfg.Load().highWater
}

// allowed reports whether ip is in the allow list.
func (c *compiled) allowed(ip netip.Addr) bool {
	if len(c.s.AllowList) == 0 {
		return false
	}
	ip = ip.Unmap()
	for _, p := range c.s.AllowList {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refuse counts a refusal and returns Admit's answer for it, with
// retryAfter rounded up to whole seconds (Retry-After has no fractions).
func (l *Limiter) refuse(reason string, status int, retryAfter time.Duration) (bool, int, time.Duration, string) {
	st := l.refused[reason]
	st.counter.Inc()
	st.sampler.Note(l.log, "limiter refused connections", st.logArgs...)
	return false, status, RoundRetry(retryAfter), reason
}

// RoundRetry rounds d up to whole seconds, at least 1 s.
func RoundRetry(d time.Duration) time.Duration {
	s := (d + time.Second - 1) / time.Second
	return max(s, 1) * time.Second
}
