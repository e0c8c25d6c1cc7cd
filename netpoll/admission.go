package netpoll

import (
	"bytes"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/unigate/unigate/limiter"
)

// Admission decides whether a WebSocket upgrade may proceed. The limiter
// package's *Limiter implements it. Both methods run on event loops and
// must not block.
type Admission interface {
	// Admit is called once per upgrade request, when its head is complete
	// and the client's address is known (after PROXY protocol and
	// X-Forwarded-For from trusted proxies). A refusal is answered with
	// status (429 or 503), a Retry-After of retryAfter rounded up to whole
	// seconds, and a short body naming reason; the connection is closed.
	Admit(ip netip.Addr) (ok bool, status int, retryAfter time.Duration, reason string)
	// Release is called once when a connection that Admit accepted closes,
	// with the same address.
	Release(ip netip.Addr)
}

// Overloader is an optional interface of an Admission: while Overloaded
// returns true, /readyz answers 503 so that a load balancer sends new
// clients elsewhere; connections already open are not affected.
type Overloader interface {
	Overloaded() bool
}

// WithAdmission sets the admission check of WebSocket upgrades. Default:
// none (only WithMaxConnections applies). Health and readiness checks and
// plain HTTP requests are not subject to it.
func WithAdmission(a Admission) Option { return func(o *options) { o.admission = a } }

// ConnRates are the per-connection rates of a WebSocket client, enforced on
// the event loop before the handler sees a message. A connection over
// either rate is closed with 1008 "rate limit". A zero rate is no limit.
type ConnRates struct {
	// MessagesPerSecond and MessageBurst bound complete messages and pings.
	MessagesPerSecond float64
	MessageBurst      int
	// BytesPerSecond and ByteBurst bound frame bytes (headers included) of
	// every frame. ByteBurst below the largest frame (the message bound
	// plus 14 bytes) is raised to it, so any legal frame can pass.
	BytesPerSecond float64
	ByteBurst      int
}

// connRates is ConnRates compiled, swapped atomically by SetConnRates.
type connRates struct {
	messages, bytes limiter.Rate
}

func (s *Server) compileRates(r ConnRates) *connRates {
	byteBurst := max(r.ByteBurst, s.opts.maxMessage+14)
	return &connRates{
		messages: limiter.NewRate(r.MessagesPerSecond, r.MessageBurst),
		bytes:    limiter.NewRate(r.BytesPerSecond, byteBurst),
	}
}

// WithConnRates sets the per-connection message and byte rates. Default:
// no limit.
func WithConnRates(r ConnRates) Option { return func(o *options) { o.connRates = r } }

// SetConnRates replaces the per-connection rates of every connection, open
// or future (a configuration reload). Safe from any goroutine.
func (s *Server) SetConnRates(r ConnRates) { s.rates.Store(s.compileRates(r)) }

// WithTrustedProxies sets the networks of the proxies and load balancers in
// front of the server. Only a connection from one of them may send a PROXY
// protocol header (when WithProxyProtocol is on) and have its
// X-Forwarded-For or X-Real-IP header believed. Default: none.
func WithTrustedProxies(p ...netip.Prefix) Option {
	return func(o *options) {
		o.trusted = o.trusted[:0]
		for _, pr := range p {
			o.trusted = append(o.trusted, pr.Masked())
		}
	}
}

// WithProxyProtocol accepts a PROXY protocol header (v1 text or v2 binary)
// at the start of connections from trusted proxies; the source address it
// carries becomes the connection's RemoteAddr. A trusted proxy may also
// connect without one (the TCP peer is then the address). A PROXY header
// from any other peer, or when this is off, is answered with 400.
func WithProxyProtocol(on bool) Option { return func(o *options) { o.proxyProtocol = on } }

func (s *Server) isTrusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.opts.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// readProxyHeader handles the first bytes of a connection: a PROXY header
// from a trusted proxy sets c.remote and is consumed. It returns done=false
// while it needs more bytes, and gnet.Close when the connection was refused.
func (s *Server) readProxyHeader(c *Conn) (done bool, act gnet.Action) {
	buf, _ := c.gc.Peek(-1)
	isProxy, needMore := proxySniff(buf)
	switch {
	case needMore:
		return false, gnet.None
	case !isProxy:
		c.proxyChecked = true
		return true, gnet.None
	case !s.opts.proxyProtocol || !s.isTrusted(c.peer):
		s.metrics.proxyRefused.Inc()
		s.writeHTTP(c, 400, "text/plain; charset=utf-8", "PROXY protocol header not accepted from this address\n", false)
		return false, gnet.Close
	}
	src, n, err := parseProxyHeader(buf)
	switch {
	case err == errProxyNeedMore:
		return false, gnet.None
	case err != nil:
		s.metrics.proxyRefused.Inc()
		s.writeHTTP(c, 400, "text/plain; charset=utf-8", "malformed PROXY protocol header\n", false)
		return false, gnet.Close
	}
	_, _ = c.gc.Discard(n)
	if src.IsValid() {
		c.remote = src
	}
	c.proxyChecked = true
	return true, gnet.None
}

// clientAddr returns the address of the client behind a request: the
// connection's address (the TCP peer, or what a PROXY header said), unless
// that is a trusted proxy, in which case the right-most address of
// X-Forwarded-For that is not a trusted proxy (or, with no such header,
// X-Real-IP).
func (s *Server) clientAddr(c *Conn, req *request) netip.Addr {
	addr := c.remote
	if len(s.opts.trusted) == 0 || !s.isTrusted(addr) {
		return addr
	}
	if v := req.xForwardedFor; len(v) > 0 {
		for len(v) > 0 {
			i := bytes.LastIndexByte(v, ',')
			item := trimOWS(v[i+1:])
			v = v[:max(i, 0)]
			a, ok := parseForwarded(item)
			if !ok {
				break // garbage: keep the last good hop
			}
			addr = a
			if !s.isTrusted(a) {
				break
			}
		}
		return addr
	}
	if a, ok := parseForwarded(trimOWS(req.xRealIP)); ok {
		return a
	}
	return addr
}

// parseForwarded parses one X-Forwarded-For hop: an IP, optionally with a
// port ("192.0.2.1:1234", "[2001:db8::1]:443").
func parseForwarded(b []byte) (netip.Addr, bool) {
	if len(b) == 0 || len(b) > 64 {
		return netip.Addr{}, false
	}
	s := string(b)
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// admit runs the admission check of an upgrade; on refusal it answers and
// returns false.
func (s *Server) admit(c *Conn) bool {
	if s.opts.admission == nil {
		return true
	}
	ok, status, retry, reason := s.opts.admission.Admit(c.remote)
	if ok {
		c.admitted = true
		c.admittedAddr = c.remote
		return true
	}
	if status != 429 && status != 503 {
		status = 503
	}
	resp := s.refusalResponse(status, int64(limiter.RoundRetry(retry)/time.Second), reason)
	s.countStatus(resp)
	_, _ = c.gc.Write(resp) // copies
	return false
}

// refusalKey names one refusal response: its status, Retry-After seconds
// and reason.
type refusalKey struct {
	status int
	secs   int64
	reason string
}

// maxCachedRefusals bounds the refusal responses kept: a reason comes with
// one status and few Retry-After values, so a handful is the usual count.
const maxCachedRefusals = 64

// refusalResponse returns the complete HTTP response refusing an upgrade.
// A storm answers the same few responses thousands of times a second:
// each is built once and kept (copy on write, read without a lock), so a
// refusal formats nothing and allocates nothing. The slice is shared:
// never modify it.
func (s *Server) refusalResponse(status int, secs int64, reason string) []byte {
	k := refusalKey{status, secs, reason}
	m := s.refusals.Load()
	if m != nil {
		if b, ok := (*m)[k]; ok {
			return b
		}
	}
	body := "too many connections, retry later (" + reason + ")\n"
	if status == 503 {
		body = "server is at capacity, retry later (" + reason + ")\n"
	}
	b := appendResponse(nil, status, "text/plain; charset=utf-8",
		http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}}, []byte(body), false, false)
	if m == nil || len(*m) < maxCachedRefusals {
		nm := make(map[refusalKey][]byte, 1+lenOf(m))
		if m != nil {
			for k, v := range *m {
				nm[k] = v
			}
		}
		nm[k] = b
		s.refusals.CompareAndSwap(m, &nm) // lost to another loop: built again next time
	}
	return b
}

func lenOf(m *map[refusalKey][]byte) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// overRate charges a complete frame of n bytes (a message end or a ping
// when msg) to the connection's buckets; over either rate it closes the
// connection with 1008 and returns true.
func (s *Server) overRate(c *Conn, r *connRates, now int64, n int, msg bool) bool {
	if ok, _ := c.byteBucket.Allow(r.bytes, now, n); !ok {
		s.metrics.byteRate.Inc()
		s.rateLog.Note(s.opts.logger, "connections closed over their rate", "reason", limiter.ReasonByteRate)
		s.closeRate(c)
		return true
	}
	if msg {
		if ok, _ := c.msgBucket.Allow(r.messages, now, 1); !ok {
			s.metrics.messageRate.Inc()
			s.rateLog.Note(s.opts.logger, "connections closed over their rate", "reason", limiter.ReasonMessageRate)
			s.closeRate(c)
			return true
		}
	}
	return false
}

func (s *Server) closeRate(c *Conn) {
	c.Close(ws.StatusPolicyViolation, "rate limit")
	c.state = stateClosing
	c.frag, c.fragBuf = nil, nil
}
