package netpoll

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/limiter"
)

// addrReporter is an echo handler whose first message on every connection
// is the connection's RemoteAddr.
type addrReporter struct{ echo }

func (a *addrReporter) OnOpen(c *Conn) {
	a.echo.OnOpen(c)
	f := AcquireFrame()
	f.B = append(f.B, c.RemoteAddr().String()...)
	f.Seal(ws.OpText)
	_ = c.Send(f)
}

func newLimiter(tb testing.TB, s limiter.Settings) *limiter.Limiter {
	tb.Helper()
	l, err := limiter.New(s, metrics.NewSet(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// dialerFrom returns a net.Dialer bound to the source address src
// (127.0.0.x simulates distinct clients).
func dialerFrom(src string) *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
}

// wsDialFrom opens a gorilla WebSocket from src; the connection (if any) is
// closed when the test ends.
func wsDialFrom(t *testing.T, src, addr string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{
		Subprotocols:     []string{"unigate.v1.json"},
		HandshakeTimeout: 5 * time.Second,
		NetDialContext:   dialerFrom(src).DialContext,
	}
	c, resp, err := d.Dial("ws://"+addr+"/ws", hdr)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, resp, err
}

func mustDialFrom(t *testing.T, src, addr string) *websocket.Conn {
	t.Helper()
	c, resp, err := wsDialFrom(t, src, addr, nil)
	if err != nil {
		t.Fatalf("dial from %s: %v (resp %v)", src, err, resp)
	}
	return c
}

// expectRefused dials from src and checks the refusal's status and
// Retry-After.
func expectRefused(t *testing.T, src, addr string, status int) (retryAfter int) {
	t.Helper()
	_, resp, err := wsDialFrom(t, src, addr, nil)
	if err == nil {
		t.Fatalf("dial from %s admitted, want %d", src, status)
	}
	if resp == nil || resp.StatusCode != status {
		t.Fatalf("dial from %s: %v (resp %v), want %d", src, err, resp, status)
	}
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || ra < 1 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	return ra
}

func echoOnce(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, got, err := c.ReadMessage()
	if err != nil || string(got) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}

func TestAdmissionPerIPConnections(t *testing.T) {
	s := startServer(t, &echo{}, WithAdmission(newLimiter(t, limiter.Settings{PerIPConnections: 2})))
	a := mustDialFrom(t, "127.0.0.2", s.Addr())
	b := mustDialFrom(t, "127.0.0.2", s.Addr())
	if ra := expectRefused(t, "127.0.0.2", s.Addr(), 429); ra != 10 {
		t.Fatalf("Retry-After %d, want 10", ra)
	}
	// The connections already open keep working; other IPs are not affected.
	echoOnce(t, a, "still here")
	echoOnce(t, b, "me too")
	echoOnce(t, mustDialFrom(t, "127.0.0.3", s.Addr()), "other ip")
	// A closed connection frees its slot.
	a.Close()
	waitFor(t, 5*time.Second, "a free slot", func() bool {
		c, _, err := wsDialFrom(t, "127.0.0.2", s.Addr(), nil)
		if c != nil {
			echoOnce(t, c, "new")
		}
		return err == nil
	})
}

func TestAdmissionPerIPRate(t *testing.T) {
	s := startServer(t, &echo{}, WithAdmission(newLimiter(t, limiter.Settings{PerIPRate: 0.1, PerIPBurst: 2})))
	mustDialFrom(t, "127.0.0.2", s.Addr())
	mustDialFrom(t, "127.0.0.2", s.Addr())
	if ra := expectRefused(t, "127.0.0.2", s.Addr(), 429); ra < 9 || ra > 10 {
		t.Fatalf("Retry-After %d, want about 10 (one token per 10s)", ra)
	}
	mustDialFrom(t, "127.0.0.3", s.Addr())
}

func TestAdmissionAllowList(t *testing.T) {
	lim := newLimiter(t, limiter.Settings{PerIPConnections: 1, PerIPRate: 1, PerIPBurst: 1,
		AllowList: []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}})
	s := startServer(t, &echo{}, WithAdmission(lim))
	for range 5 {
		echoOnce(t, mustDialFrom(t, "127.0.0.4", s.Addr()), "exempt")
	}
	mustDialFrom(t, "127.0.0.5", s.Addr())
	expectRefused(t, "127.0.0.5", s.Addr(), 429)
}

func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdmissionNodeFull(t *testing.T) {
	lim := newLimiter(t, limiter.Settings{MaxConnections: 2, HighWaterPercent: 50})
	s := startServer(t, &echo{}, WithAdmission(lim))
	if st, _ := httpGet(t, s.Addr(), "/readyz"); st != 200 {
		t.Fatalf("readyz %d with no client", st)
	}
	a := mustDialFrom(t, "127.0.0.2", s.Addr())
	if st, body := httpGet(t, s.Addr(), "/readyz"); st != 503 || body != "overloaded\n" {
		t.Fatalf("readyz %d %q over the high-water mark", st, body)
	}
	mustDialFrom(t, "127.0.0.3", s.Addr())
	if ra := expectRefused(t, "127.0.0.4", s.Addr(), 503); ra != 5 {
		t.Fatalf("Retry-After %d, want 5", ra)
	}
	if st, _ := httpGet(t, s.Addr(), "/healthz"); st != 200 {
		t.Fatalf("healthz %d on a full node", st)
	}
	echoOnce(t, a, "serving")
	if lim.Connections() != 2 {
		t.Fatalf("limiter counts %d connections", lim.Connections())
	}
}

// TestMessageFlood: a client over its message rate is closed with 1008
// "rate limit"; a well-behaved client on the same server is not affected.
func TestMessageFlood(t *testing.T) {
	s := startServer(t, &echo{}, WithConnRates(ConnRates{MessagesPerSecond: 10, MessageBurst: 20}))
	good := mustDialFrom(t, "127.0.0.2", s.Addr())
	bad := mustDialFrom(t, "127.0.0.3", s.Addr())
	for i := range 200 {
		if err := bad.WriteMessage(websocket.TextMessage, []byte("flood")); err != nil {
			break // closed under us: fine
		}
		if i%50 == 0 {
			echoOnce(t, good, fmt.Sprint("good ", i))
		}
	}
	_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	var err error
	for err == nil {
		_, _, err = bad.ReadMessage()
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || ce.Text != "rate limit" {
		t.Fatalf("flooder: %v, want close 1008 rate limit", err)
	}
	echoOnce(t, good, "after the flood")
}

func TestByteRate(t *testing.T) {
	s := startServer(t, &echo{}, WithMaxMessageBytes(1024),
		WithConnRates(ConnRates{BytesPerSecond: 100, ByteBurst: 4096}))
	c := mustDialFrom(t, "127.0.0.2", s.Addr())
	msg := strings.Repeat("x", 1000)
	for range 4 {
		echoOnce(t, c, msg) // 4 × 1006 bytes fit the burst
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("want close 1008, got %v", err)
	}
}

func TestSetConnRatesReload(t *testing.T) {
	s := startServer(t, &echo{}, WithConnRates(ConnRates{MessagesPerSecond: 1, MessageBurst: 1}))
	c := mustDialFrom(t, "127.0.0.2", s.Addr())
	echoOnce(t, c, "one")
	s.SetConnRates(ConnRates{}) // lifted, for the open connection too
	for i := range 50 {
		echoOnce(t, c, fmt.Sprint(i))
	}
}

// rawFrom connects from src without upgrading.
func rawFrom(t *testing.T, src, addr string) *rawClient {
	t.Helper()
	c, err := dialerFrom(src).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func proxyV2(cmd byte, fam byte, addr []byte, tlvs []byte) []byte {
	b := append([]byte(nil), proxyV2Sig...)
	b = append(b, 0x20|cmd, fam<<4|1)
	body := append(append([]byte(nil), addr...), tlvs...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

func v2Inet(src, dst string) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	var b []byte
	if s.Is4() {
		s4, d4 := s.As4(), d.As4()
		b = append(append(b, s4[:]...), d4[:]...)
	} else {
		s16, d16 := s.As16(), d.As16()
		b = append(append(b, s16[:]...), d16[:]...)
	}
	return append(b, 0x15, 0xb3, 0x00, 0x50) // ports 5555, 80
}

func TestProxyProtocolTrusted(t *testing.T) {
	s := startServer(t, &addrReporter{}, WithTrustedProxies(netip.MustParsePrefix("127.0.0.0/8")), WithProxyProtocol(true))
	cases := []struct {
		name   string
		header []byte
		want   string
	}{
		{"v1 tcp4", []byte("PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"), "203.0.113.7"},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 ::1 5555 80\r\n"), "2001:db8::7"},
		{"v1 unknown", []byte("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), "127.0.0.2"},
		{"v2 inet", proxyV2(1, 1, v2Inet("198.51.100.7", "127.0.0.1"), nil), "198.51.100.7"},
		{"v2 inet6 with TLVs", proxyV2(1, 2, v2Inet("2001:db8::9", "::1"), []byte{0x01, 0, 2, 'h', '2', 0x04, 0, 0}), "2001:db8::9"},
		{"v2 local", proxyV2(0, 0, nil, nil), "127.0.0.2"},
		{"none", nil, "127.0.0.2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawFrom(t, "127.0.0.2", s.Addr())
			// Header and request in two writes: the header may arrive alone.
			if len(tc.header) > 0 {
				r.write(tc.header[:len(tc.header)/2])
				r.write(tc.header[len(tc.header)/2:])
			}
			r.write([]byte(upgradeRequest))
			if st, body := r.readResponse(); st != 101 {
				t.Fatalf("status %d %q", st, body)
			}
			r.expectMessage(ws.OpText, tc.want)
		})
	}
}

func TestProxyProtocolRefused(t *testing.T) {
	v1 := []byte("PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n")
	v2 := proxyV2(1, 1, v2Inet("198.51.100.7", "127.0.0.1"), nil)
	untrusted := startServer(t, &addrReporter{}, WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8")), WithProxyProtocol(true))
	off := startServer(t, &addrReporter{}, WithTrustedProxies(netip.MustParsePrefix("127.0.0.0/8")))
	plain := startServer(t, &addrReporter{})
	trusted := startServer(t, &addrReporter{}, WithTrustedProxies(netip.MustParsePrefix("127.0.0.0/8")), WithProxyProtocol(true))
	cases := []struct {
		name   string
		s      *Server
		header []byte
	}{
		{"untrusted peer v1", untrusted, v1},
		{"untrusted peer v2", untrusted, v2},
		{"proxy protocol off v1", off, v1},
		{"proxy protocol off v2", off, v2},
		{"no proxies configured v1", plain, v1},
		{"no proxies configured v2", plain, v2},
		{"malformed v1", trusted, []byte("PROXY TCP4 203.0.113.7 nope 5555 80\r\n")},
		{"v1 too long", trusted, []byte("PROXY TCP4 " + strings.Repeat("1", 200))},
		{"v2 too long", trusted, proxyV2(1, 1, v2Inet("198.51.100.7", "127.0.0.1"), make([]byte, 4000))},
		{"v2 short address block", trusted, proxyV2(1, 2, make([]byte, 12), nil)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawFrom(t, "127.0.0.2", tc.s.Addr())
			r.write(append(append([]byte(nil), tc.header...), upgradeRequest...))
			if st, body := r.readResponse(); st != 400 {
				t.Fatalf("status %d %q, want 400", st, body)
			}
		})
	}
}

func TestForwardedFor(t *testing.T) {
	lim := newLimiter(t, limiter.Settings{PerIPConnections: 1})
	s := startServer(t, &addrReporter{}, WithTrustedProxies(netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")),
		WithAdmission(lim))
	cases := []struct {
		name, src string
		hdr       http.Header
		want      string
	}{
		{"trusted peer", "127.0.0.1", http.Header{"X-Forwarded-For": {"198.51.100.1"}}, "198.51.100.1"},
		{"right-most untrusted hop", "127.0.0.1", http.Header{"X-Forwarded-For": {"192.0.2.66, 198.51.100.2, 10.1.2.3"}}, "198.51.100.2"},
		{"hop with port", "127.0.0.1", http.Header{"X-Forwarded-For": {"[2001:db8::5]:443"}}, "2001:db8::5"},
		{"x-real-ip", "127.0.0.1", http.Header{"X-Real-Ip": {"198.51.100.3"}}, "198.51.100.3"},
		{"garbage keeps the peer", "127.0.0.1", http.Header{"X-Forwarded-For": {"not-an-ip"}}, "127.0.0.1"},
		{"untrusted peer", "127.0.0.2", http.Header{"X-Forwarded-For": {"198.51.100.4"}, "X-Real-Ip": {"198.51.100.4"}}, "127.0.0.2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := wsDialFrom(t, tc.src, s.Addr(), tc.hdr)
			if err != nil {
				t.Fatalf("dial: %v (%v)", err, resp)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, got, err := c.ReadMessage()
			if err != nil || string(got) != tc.want {
				t.Fatalf("RemoteAddr %q (%v), want %q", got, err, tc.want)
			}
		})
	}
	// Admission keys on the forwarded address: a second client behind the
	// proxy is admitted, the same client again is not.
	if _, _, err := wsDialFrom(t, "127.0.0.1", s.Addr(), http.Header{"X-Forwarded-For": {"198.51.100.1"}}); err != nil {
		t.Fatal(err)
	}
	_, resp, err := wsDialFrom(t, "127.0.0.1", s.Addr(), http.Header{"X-Forwarded-For": {"198.51.100.1"}})
	if err == nil || resp.StatusCode != 429 {
		t.Fatalf("same forwarded client twice: %v %v, want 429", err, resp)
	}
	if _, _, err := wsDialFrom(t, "127.0.0.1", s.Addr(), http.Header{"X-Forwarded-For": {"198.51.100.99"}}); err != nil {
		t.Fatalf("another forwarded client: %v", err)
	}
}

// rssBytes reads the process's resident set size.
func rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// TestConnectionStorm opens 2,000 connections as fast as a few goroutines
// can against a cap of 500: every client gets an answer (101, or 503 with
// Retry-After), and the server's goroutines and memory stay bounded.
func TestConnectionStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("storm: skipped with -short")
	}
	const total, capacity, workers = 2000, 500, 4
	lim := newLimiter(t, limiter.Settings{MaxConnections: capacity})
	s := startServer(t, &echo{}, WithAdmission(lim))
	runtime.GC()
	goroutines0, rss0 := runtime.NumGoroutine(), rssBytes(t)

	var upgraded, refused, other atomic.Int64
	var mu sync.Mutex
	var open []net.Conn
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			d := dialerFrom(fmt.Sprintf("127.0.0.%d", 2+w))
			for range total / workers {
				c, err := d.Dial("tcp", s.Addr())
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					other.Add(1)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err := c.Write([]byte(upgradeRequest)); err != nil {
					firstErr.CompareAndSwap(nil, err)
					other.Add(1)
					c.Close()
					continue
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				switch {
				case err != nil:
					firstErr.CompareAndSwap(nil, err)
					other.Add(1)
					c.Close()
				case resp.StatusCode == 101:
					upgraded.Add(1)
					mu.Lock()
					open = append(open, c)
					mu.Unlock()
				case (resp.StatusCode == 503 || resp.StatusCode == 429) && resp.Header.Get("Retry-After") != "":
					refused.Add(1)
					c.Close()
				default:
					firstErr.CompareAndSwap(nil, fmt.Errorf("status %d", resp.StatusCode))
					other.Add(1)
					c.Close()
				}
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	if other.Load() != 0 {
		t.Fatalf("%d clients got no proper answer; first: %v", other.Load(), firstErr.Load())
	}
	if upgraded.Load() != capacity || refused.Load() != total-capacity {
		t.Fatalf("upgraded %d, refused %d; want %d and %d", upgraded.Load(), refused.Load(), capacity, total-capacity)
	}
	if lim.Connections() != capacity {
		t.Fatalf("limiter counts %d", lim.Connections())
	}
	g, rss := runtime.NumGoroutine(), rssBytes(t)
	if g > goroutines0+20 {
		t.Errorf("goroutines %d → %d with %d connections open", goroutines0, g, capacity)
	}
	// Client and server share the process: allow 64 KiB per attempt, far
	// over the ~17 KiB an idle connection costs.
	if grow := rss - rss0; grow > total*64<<10 {
		t.Errorf("RSS grew by %d MiB", grow>>20)
	}
	t.Logf("goroutines %d → %d, RSS %d → %d MiB", goroutines0, g, rss0>>20, rss>>20)
	// The survivors still work and closing them frees the cap.
	for _, c := range open {
		c.Close()
	}
	waitFor(t, 10*time.Second, "released connections", func() bool { return lim.Connections() == 0 })
}

// TestRefusalResponses: a refusal's answer names its status, Retry-After
// and reason exactly; the same answer is reused rather than rebuilt, and
// the answers kept are bounded whatever Retry-After values the admission
// comes up with.
func TestRefusalResponses(t *testing.T) {
	s, err := New(&echo{}, WithAddr("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	for secs := int64(1); secs <= 3*maxCachedRefusals; secs++ {
		for _, st := range []int{429, 503} {
			got := s.refusalResponse(st, secs, limiter.ReasonIPRate)
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
			if err != nil {
				t.Fatalf("%d, %ds: %v\n%s", st, secs, err, got)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != st || resp.Header.Get("Retry-After") != strconv.FormatInt(secs, 10) ||
				!resp.Close || !strings.Contains(string(body), "("+limiter.ReasonIPRate+")") {
				t.Fatalf("%d, %ds: %q", st, secs, got)
			}
			if again := s.refusalResponse(st, secs, limiter.ReasonIPRate); !bytes.Equal(again, got) {
				t.Fatalf("%d, %ds: %q, then %q", st, secs, got, again)
			}
		}
	}
	first := s.refusalResponse(503, 1, limiter.ReasonIPRate)
	if again := s.refusalResponse(503, 1, limiter.ReasonIPRate); &again[0] != &first[0] {
		t.Error("the same refusal was built twice")
	}
	if n := len(*s.refusals.Load()); n != maxCachedRefusals {
		t.Errorf("%d refusal answers kept, want the bound %d", n, maxCachedRefusals)
	}
}
