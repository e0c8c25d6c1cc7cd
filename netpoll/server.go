package netpoll

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/unigate/unigate/limiter"
)

// Server is a gnet/v2 server that speaks HTTP/1.1 and WebSocket on one port.
type Server struct {
	gnet.BuiltinEventEngine

	opts    options
	handler Handler

	eng      gnet.Engine
	boundTo  string
	started  chan error
	done     chan struct{}
	runErr   error
	draining atomic.Bool
	clock    atomic.Int64 // unix seconds, refreshed by the ticker
	nextID   atomic.Uint64

	loops sync.Map // gnet.EventLoop → *loopFlusher: read without a lock on every accept

	reg      registry
	refusals atomic.Pointer[map[refusalKey][]byte] // see refusalResponse
	rates    atomic.Pointer[connRates]
	rateLog  limiter.Sampler
	httpSem  chan struct{}
	upgrader ws.Upgrader
	ping     *Frame

	metrics serverMetrics
}

type serverMetrics struct {
	set                                 *metrics.Set
	open, upgraded                      *metrics.Counter
	closed                              *metrics.Counter
	http2xx, http4xx, http5xx           *metrics.Counter
	protocolErrors, tooBig, invalidUTF8 *metrics.Counter
	handshakeTimeouts, idleTimeouts     *metrics.Counter
	lingerTimeouts                      *metrics.Counter
	slowConsumers, refusedFull          *metrics.Counter
	messageRate, byteRate, proxyRefused *metrics.Counter
	messagesIn, bytesIn                 *metrics.Counter
	sealErrors, compactions             *metrics.Counter
	relay                               relayMetrics
	loopYields                          *metrics.Counter
}

// New builds a server that hands WebSocket events to h. Call Start to listen.
func New(h Handler, opts ...Option) (*Server, error) {
	s := &Server{opts: defaultOptions(), handler: h, started: make(chan error, 1), done: make(chan struct{})}
	for _, o := range opts {
		o(&s.opts)
	}
	switch {
	case h == nil:
		return nil, errors.New("netpoll: nil handler")
	case s.opts.maxMessage <= 0 || s.opts.maxHead <= 0 || s.opts.maxOutbound <= 0:
		return nil, errors.New("netpoll: size bounds must be positive")
	case s.opts.handshakeTimeout <= 0 || s.opts.idleTimeout <= 0 || s.opts.pingInterval <= 0:
		return nil, errors.New("netpoll: timeouts must be positive")
	case len(s.opts.subprotocols) == 0:
		return nil, errors.New("netpoll: no subprotocol")
	}
	s.httpSem = make(chan struct{}, max(1, s.opts.httpConcurrency))
	s.ping = NewStaticFrame(ws.OpPing, nil)
	s.clock.Store(time.Now().Unix())
	s.upgrader = ws.Upgrader{
		// The header lists the client's subprotocols in its order of
		// preference: pick the first we support. Returning ok=false would
		// make gobwas answer "malformed request", so "none" is ("", true) and
		// upgrade refuses it with a helpful 400.
		ProtocolCustom: func(v []byte) (string, bool) {
			for len(v) > 0 {
				var item []byte
				if i := bytes.IndexByte(v, ','); i >= 0 {
					item, v = v[:i], v[i+1:]
				} else {
					item, v = v, nil
				}
				item = trimOWS(item)
				for _, name := range s.opts.subprotocols {
					if string(item) == name {
						return name, true // the static string: no allocation
					}
				}
			}
			return "", true
		},
	}
	m := &s.metrics
	m.set = metrics.NewSet()
	m.open = m.set.NewCounter(`unigate_netpoll_connections_opened_total`)
	m.closed = m.set.NewCounter(`unigate_netpoll_connections_closed_total`)
	m.upgraded = m.set.NewCounter(`unigate_netpoll_upgrades_total`)
	m.http2xx = m.set.NewCounter(`unigate_netpoll_http_responses_total{class="2xx"}`)
	m.http4xx = m.set.NewCounter(`unigate_netpoll_http_responses_total{class="4xx"}`)
	m.http5xx = m.set.NewCounter(`unigate_netpoll_http_responses_total{class="5xx"}`)
	m.protocolErrors = m.set.NewCounter(`unigate_netpoll_ws_closed_total{code="1002"}`)
	m.invalidUTF8 = m.set.NewCounter(`unigate_netpoll_ws_closed_total{code="1007"}`)
	m.tooBig = m.set.NewCounter(`unigate_netpoll_ws_closed_total{code="1009"}`)
	m.slowConsumers = m.set.NewCounter(`unigate_netpoll_ws_closed_total{code="1013"}`)
	m.handshakeTimeouts = m.set.NewCounter(`unigate_netpoll_timeouts_total{kind="handshake"}`)
	m.idleTimeouts = m.set.NewCounter(`unigate_netpoll_timeouts_total{kind="idle"}`)
	m.lingerTimeouts = m.set.NewCounter(`unigate_netpoll_timeouts_total{kind="close"}`)
	m.refusedFull = m.set.NewCounter(`unigate_netpoll_refused_total{reason="full"}`)
	m.proxyRefused = m.set.NewCounter(`unigate_netpoll_refused_total{reason="proxy_header"}`)
	m.messageRate = m.set.NewCounter(`unigate_limiter_refused_total{reason="` + limiter.ReasonMessageRate + `"}`)
	m.byteRate = m.set.NewCounter(`unigate_limiter_refused_total{reason="` + limiter.ReasonByteRate + `"}`)
	s.rates.Store(s.compileRates(s.opts.connRates))
	m.messagesIn = m.set.NewCounter(`unigate_netpoll_ws_messages_received_total`)
	m.bytesIn = m.set.NewCounter(`unigate_netpoll_ws_bytes_received_total`)
	m.sealErrors = m.set.NewCounter(`unigate_netpoll_seal_errors_total`)
	m.compactions = m.set.NewCounter(`unigate_netpoll_sealer_compactions_total`)
	m.relay = newRelayMetrics(m.set)
	m.loopYields = m.set.NewCounter(`unigate_netpoll_loop_yields_total`)
	m.set.NewGauge(`unigate_netpoll_connections`, func() float64 { return float64(s.reg.count()) })
	return s, nil
}

// Metrics returns the server's metrics, to register with
// metrics.RegisterSet or write with WritePrometheus.
func (s *Server) Metrics() *metrics.Set { return s.metrics.set }

// Start listens and runs the event loops in the background. It returns once
// the listener is bound, or with the error that prevented it.
func (s *Server) Start() error {
	loops := s.opts.eventLoops
	gopts := []gnet.Option{
		gnet.WithMulticore(true),
		gnet.WithReusePort(s.opts.reusePort),
		// The server closes connections first (drain, timeouts), so its
		// side holds the TIME-WAIT entries: without SO_REUSEADDR a restart
		// cannot bind the port for a minute after a busy run.
		gnet.WithReuseAddr(true),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{s.opts.logger}),
		gnet.WithReadBufferCap(64 << 10),
		gnet.WithWriteBufferCap(4 << 10),
	}
	if loops > 0 {
		gopts = append(gopts, gnet.WithNumEventLoop(loops))
	}
	addr := s.opts.addr
	if s.opts.reusePort {
		// gnet binds each event loop's listener to the address as given:
		// port 0 would give every loop a port of its own, and all clients
		// would reach the first loop only. Choose the port once, and hold
		// it (bound, not listening) until gnet has bound its first
		// listener to it.
		a, release, err := reservePort(addr)
		if err != nil {
			return fmt.Errorf("netpoll: choosing a port for %s: %w", addr, err)
		}
		defer release()
		addr = a
	}
	go func() {
		err := gnet.Run(s, "tcp://"+addr, gopts...)
		s.runErr = err
		select {
		case s.started <- err: // failed before booting
		default:
		}
		close(s.done)
	}()
	return <-s.started
}

// reservePort returns addr unchanged when its port is not 0; otherwise
// addr with a free port the kernel chose, and a function that releases the
// socket (SO_REUSEPORT, bound, not listening: it receives no connection)
// holding that port meanwhile.
func reservePort(addr string) (string, func(), error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != "0" {
		return addr, func() {}, nil // gnet reports a malformed address
	}
	ip := net.IPv4zero
	if host != "" {
		if ip = net.ParseIP(host); ip == nil {
			ips, err := net.LookupIP(host)
			if err != nil || len(ips) == 0 {
				return "", nil, fmt.Errorf("resolving %q: %v", host, err)
			}
			ip = ips[0]
		}
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ip4 := ip.To4(); ip4 != nil {
		sa = &unix.SockaddrInet4{Addr: [4]byte(ip4)}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: [16]byte(ip.To16())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	release := func() { _ = unix.Close(fd) }
	if err := errors.Join(unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1), unix.Bind(fd, sa)); err != nil {
		release()
		return "", nil, err
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		release()
		return "", nil, err
	}
	var p int
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		p = b.Port
	case *unix.SockaddrInet6:
		p = b.Port
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), release, nil
}

// Addr returns the address the server listens on, with the real port when
// it was started on port 0.
func (s *Server) Addr() string { return s.boundTo }

// Connections returns the number of open connections (HTTP and WebSocket).
func (s *Server) Connections() int { return s.reg.count() }

// Draining reports whether Stop was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// Stop drains the server: new connections and requests are refused,
// WebSocket clients get a close frame with 1001 (going away), and Stop waits
// until they are gone or ctx is done, then stops the event loops.
func (s *Server) Stop(ctx context.Context) error {
	if s.draining.Swap(true) {
		<-s.done
		return nil
	}
	s.reg.each(func(c *Conn) {
		if c.upgraded.Load() {
			c.Close(ws.StatusGoingAway, "server shutting down")
			return
		}
		// A plain HTTP connection gets no WebSocket close frame: an idle
		// keep-alive one is closed on its loop; one with a request in
		// flight is closed after its response (see callHandler).
		_ = c.loop.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			switch c.state {
			case stateHTTP:
				_ = c.gc.Close()
			case stateWebSocket: // upgraded since the check above
				c.Close(ws.StatusGoingAway, "server shutting down")
			}
			return nil
		}))
	})
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
wait:
	for s.reg.count() > 0 {
		select {
		case <-ctx.Done():
			break wait
		case <-t.C:
		}
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.eng.Stop(stopCtx)
	<-s.done
	return err
}

// OnBoot implements gnet.EventHandler.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	s.boundTo = s.opts.addr
	if fd, err := eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				s.boundTo = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
			case *unix.SockaddrInet6:
				s.boundTo = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
			}
		}
		_ = unix.Close(fd)
	}
	s.opts.logger.Info("netpoll listening", "addr", s.boundTo)
	s.started <- nil
	return gnet.None
}

// OnOpen implements gnet.EventHandler.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	l := s.loopFor(gc.EventLoop())
	l.enter(s, Nanotime())
	out, act := s.open(gc, l)
	l.exit()
	return out, act
}

func (s *Server) open(gc gnet.Conn, l *loopFlusher) ([]byte, gnet.Action) {
	if s.draining.Load() {
		return nil, gnet.Close
	}
	if s.opts.maxConns > 0 && s.reg.count() >= s.opts.maxConns {
		s.metrics.refusedFull.Inc()
		return fullResponse, gnet.Close // gnet copies what it cannot write at once
	}
	now := s.clock.Load()
	c := &Conn{srv: s, gc: gc, id: s.nextID.Add(1), loop: l}
	if a, ok := gc.RemoteAddr().(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			c.peer = ip.Unmap()
		}
		c.peerPort = uint16(a.Port)
	}
	c.remote = c.peer
	// Only a trusted proxy may send a PROXY header; for everyone else the
	// check is the same as for any other malformed request.
	c.proxyChecked = len(s.opts.trusted) == 0 && !s.opts.proxyProtocol
	c.lastRead.Store(now)
	c.httpSince.Store(now)
	gc.SetContext(c)
	s.reg.add(c)
	s.metrics.open.Inc()
	return nil, gnet.None
}

func (s *Server) loopFor(el gnet.EventLoop) *loopFlusher {
	if l, ok := s.loops.Load(el); ok {
		return l.(*loopFlusher)
	}
	l, _ := s.loops.LoadOrStore(el, &loopFlusher{el: el})
	return l.(*loopFlusher)
}

// OnClose implements gnet.EventHandler.
func (s *Server) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, _ := gc.Context().(*Conn)
	if c == nil {
		return gnet.None
	}
	s.reg.remove(c)
	s.metrics.closed.Inc()
	if c.admitted {
		c.admitted = false
		s.opts.admission.Release(c.admittedAddr)
	}
	opened := c.handlerOpened
	c.markGone()
	if opened {
		if errors.Is(err, io.EOF) {
			err = nil
		}
		s.handler.OnClose(c, err)
	}
	return gnet.None
}

// OnTraffic implements gnet.EventHandler.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	c, _ := gc.Context().(*Conn)
	if c == nil {
		return gnet.Close
	}
	c.readAt = Nanotime()
	c.loop.enter(s, c.readAt)
	act := s.traffic(c)
	c.loop.exit()
	return act
}

func (s *Server) traffic(c *Conn) gnet.Action {
	gc := c.gc
	c.lastRead.Store(s.clock.Load())
	switch c.state {
	case stateHTTP:
		if !c.proxyChecked {
			if done, act := s.readProxyHeader(c); !done {
				return act
			}
		}
		return s.serveHTTP(c)
	case stateWebSocket:
		return s.readFrames(c)
	case stateClosing:
		_, _ = gc.Discard(-1)
	}
	// stateHTTPBusy: bytes wait in gnet's inbound buffer for the response.
	return gnet.None
}

// OnTick implements gnet.EventHandler. It runs on its own goroutine and
// sweeps deadlines: there is no timer per connection.
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	now := time.Now().Unix()
	s.clock.Store(now)
	hs := int64(s.opts.handshakeTimeout / time.Second)
	idle := int64(s.opts.idleTimeout / time.Second)
	ping := int64(s.opts.pingInterval / time.Second)
	s.reg.each(func(c *Conn) {
		if since := c.lingerSince.Load(); since != 0 {
			if now-since >= lingerTimeout {
				s.metrics.lingerTimeouts.Inc()
				_ = c.gc.Close()
			}
			return
		}
		if c.upgraded.Load() {
			last := c.lastRead.Load()
			switch {
			case !c.established.Load() && now-c.upgradedAt >= helloDeadline(hs, c.handshaking.Load()):
				s.metrics.handshakeTimeouts.Inc()
				c.Close(ws.StatusPolicyViolation, "handshake timeout: no hello")
			case now-last >= max(idle, 1):
				s.metrics.idleTimeouts.Inc()
				c.Close(ws.StatusGoingAway, "idle timeout")
			case now-max(last, c.lastPingAt.Load()) >= max(ping, 1)+int64(c.id%pingSpread(ping, idle)):
				c.lastPingAt.Store(now)
				_ = c.Send(s.ping)
			}
			if c.hasSealer.Load() {
				s.maybeCompact(c, now)
			}
			return
		}
		if now-c.httpSince.Load() >= max(hs, 1) {
			s.metrics.handshakeTimeouts.Inc()
			_ = c.gc.Close()
		}
	})
	return tickInterval(s.opts), gnet.None
}

// helloDeadline is the time an upgraded connection has to complete the
// application handshake (Conn.MarkEstablished): the handshake timeout, or
// three times it once the client's handshake message arrived
// (Conn.HandshakeReceived).
func helloDeadline(hs int64, received bool) int64 {
	if received {
		return 3 * max(hs, 1)
	}
	return max(hs, 1)
}

// pingSpread spreads the keep-alive pings of connections that went quiet at
// the same moment (a mass connect) over up to a quarter of the interval, by
// connection id, so one sweep does not ping them all at once; the last ping
// still comes a second before the idle deadline.
func pingSpread(ping, idle int64) uint64 { return uint64(max(min(ping/4, idle-ping-1), 1)) }

func tickInterval(o options) time.Duration {
	d := min(o.handshakeTimeout, o.idleTimeout, o.pingInterval) / 4
	return min(max(d, 100*time.Millisecond), time.Second)
}

// readFrames parses every complete frame in the inbound buffer. Partial
// frames stay in gnet's buffer until more bytes arrive.
func (s *Server) readFrames(c *Conn) gnet.Action {
	buf, _ := c.gc.Peek(-1)
	consumed := 0
	rates := s.rates.Load()
	limited := !rates.messages.Unlimited() || !rates.bytes.Unlimited()
	var now int64
	if limited {
		now = limiter.Now()
	}
	for c.state == stateWebSocket && !c.closeQueued() {
		h, hn, ok, err := parseFrameHeader(buf[consumed:])
		if err != nil {
			s.fail(c, ws.StatusProtocolError, "invalid frame length")
			break
		}
		if !ok {
			break
		}
		st := ws.StateServerSide
		if c.fragOp != 0 {
			st |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, st); err != nil {
			s.fail(c, ws.StatusProtocolError, err.Error())
			break
		}
		if h.Length > int64(s.opts.maxMessage-len(c.frag)) {
			s.metrics.tooBig.Inc()
			s.fail(c, ws.StatusMessageTooBig, "message too big")
			break
		}
		total := hn + int(h.Length)
		if len(buf)-consumed < total {
			break // wait for the rest of the frame
		}
		if limited && s.overRate(c, rates, now, total, h.Fin && h.OpCode != ws.OpPong && h.OpCode != ws.OpClose) {
			consumed += total
			break
		}
		payload := buf[consumed+hn : consumed+total]
		consumed += total
		// Unmask in place: these bytes are ours until Discard below.
		ws.Cipher(payload, h.Mask, 0)
		s.frame(c, h, payload)
	}
	switch {
	case c.state == stateClosing:
		_, _ = c.gc.Discard(-1)
	case consumed > 0:
		// Never Discard(0): gnet treats n <= 0 as "discard everything".
		_, _ = c.gc.Discard(consumed)
	}
	return gnet.None
}

// frame handles one validated, unmasked frame.
func (s *Server) frame(c *Conn, h ws.Header, p []byte) {
	switch h.OpCode {
	case ws.OpPing:
		f := AcquireFrame()
		f.B = append(f.B, p...)
		f.Seal(ws.OpPong)
		_ = c.Send(f)
	case ws.OpPong:
	case ws.OpClose:
		s.closeReceived(c, p)
	case ws.OpText, ws.OpBinary:
		if !h.Fin {
			c.fragOp = h.OpCode
			c.utf8.reset()
			if h.OpCode == ws.OpText && !c.utf8.write(p) {
				s.failUTF8(c)
				return
			}
			if c.fragBuf == nil {
				getFrag(c)
			}
			c.frag = append(c.frag[:0], p...)
			return
		}
		if h.OpCode == ws.OpText && !utf8.Valid(p) {
			s.failUTF8(c)
			return
		}
		s.deliver(c, h.OpCode, p)
	case ws.OpContinuation:
		if c.fragOp == ws.OpText && !c.utf8.write(p) {
			s.failUTF8(c)
			return
		}
		c.frag = append(c.frag, p...)
		if !h.Fin {
			return
		}
		if c.fragOp == ws.OpText && !c.utf8.done() {
			s.failUTF8(c)
			return
		}
		op := c.fragOp
		c.fragOp = 0
		s.deliver(c, op, c.frag)
		// The reassembly buffer goes back to a pool shared by the
		// connections: kept per connection, it cost every client that
		// once fragmented a message (an INTL-PQ ClientHello from a client
		// with a 1 KiB write buffer) up to 4 KiB for the connection's life.
		putFrag(c)
	}
}

// fragPool holds reassembly buffers: a fragmented message is rare
// (browsers send whole frames), so a connection takes one at a message's
// first fragment and gives it back after the delivery (or drops it when
// the connection fails or closes meanwhile). Buffers over maxPooledFrag
// are not kept.
var fragPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

const maxPooledFrag = 16 << 10

// getFrag gives c a reassembly buffer from the pool.
func getFrag(c *Conn) {
	c.fragBuf = fragPool.Get().(*[]byte)
	c.frag = (*c.fragBuf)[:0]
}

// putFrag gives c's reassembly buffer back.
func putFrag(c *Conn) {
	if bp := c.fragBuf; bp != nil && cap(c.frag) <= maxPooledFrag {
		*bp = c.frag[:0]
		fragPool.Put(bp)
	}
	c.fragBuf, c.frag = nil, nil
}

func (s *Server) deliver(c *Conn, op ws.OpCode, p []byte) {
	s.metrics.messagesIn.Inc()
	s.metrics.bytesIn.Add(len(p))
	s.handler.OnMessage(c, op, p)
}

// closeReceived answers a client's close frame: the code is echoed (or 1002
// for an invalid close payload) and the connection closed.
func (s *Server) closeReceived(c *Conn, p []byte) {
	switch {
	case len(p) == 0:
		c.Close(0, "")
	case len(p) == 1:
		s.fail(c, ws.StatusProtocolError, "invalid close payload")
	default:
		code, reason := ws.ParseCloseFrameDataUnsafe(p)
		if !validCloseCode(code) {
			s.fail(c, ws.StatusProtocolError, "invalid close code")
			return
		}
		if !utf8.ValidString(reason) {
			s.fail(c, ws.StatusProtocolError, "invalid UTF-8 in close reason")
			return
		}
		c.Close(code, "")
	}
	c.state = stateClosing
}

func (s *Server) failUTF8(c *Conn) {
	s.metrics.invalidUTF8.Inc()
	s.fail(c, ws.StatusInvalidFramePayloadData, "invalid UTF-8 in text message")
}

// fail closes the connection after a protocol violation.
func (s *Server) fail(c *Conn, code ws.StatusCode, reason string) {
	if code == ws.StatusProtocolError {
		s.metrics.protocolErrors.Inc()
	}
	c.Close(code, reason)
	c.state = stateClosing
	c.frag, c.fragBuf = nil, nil
}

// fullResponse answers a connection over the open-file bound, before
// reading anything. Shared by every such answer: never modify it.
var fullResponse = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Retry-After: 5\r\nContent-Length: 22\r\nConnection: close\r\n\r\nserver is at capacity\n")

// upgrade performs the WebSocket handshake over exactly the request head.
func (s *Server) upgrade(c *Conn, head []byte, req *request) gnet.Action {
	c.remote = s.clientAddr(c, req)
	if !s.admit(c) {
		return gnet.Close
	}
	if s.opts.originAllowed != nil && !s.opts.originAllowed(string(req.origin)) {
		s.writeHTTP(c, 403, "text/plain; charset=utf-8", "origin not allowed\n", false)
		return gnet.Close
	}
	up := &c.loop.up
	up.reset(head)
	out := &up.out // gnet's Write copies it
	hs, err := s.upgrader.Upgrade(up.rw)
	if err != nil {
		// gobwas wrote a rejection (400, 405, 426 with the supported version).
		s.countStatus(out.Bytes())
		_, _ = c.gc.Write(out.Bytes())
		return gnet.Close
	}
	if hs.Protocol == "" {
		s.writeHTTP(c, 400, "text/plain; charset=utf-8",
			"unsupported or missing Sec-WebSocket-Protocol; supported: "+joinComma(s.opts.subprotocols)+"\n", false)
		return gnet.Close
	}
	// Mark the connection upgraded before the 101 leaves: a Stop that
	// races with this upgrade must see a WebSocket (and send 1001), since
	// the client may act on the 101 at once.
	c.query = string(req.query)
	if len(req.origin) > 0 {
		c.origin = string(req.origin)
	}
	c.subprotocol = hs.Protocol
	c.state = stateWebSocket
	c.upgradedAt = s.clock.Load()
	c.upgraded.Store(true)
	if _, err := c.gc.Write(out.Bytes()); err != nil {
		return gnet.Close
	}
	_, _ = c.gc.Discard(req.headLen)
	s.metrics.upgraded.Inc()
	c.handlerOpened = true
	s.handler.OnOpen(c)
	// A client may pipeline its first frames with the request: they are
	// already in the buffer.
	return s.readFrames(c)
}

func joinComma(ss []string) string {
	var b []byte
	for i, s := range ss {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, s...)
	}
	return string(b)
}

func (s *Server) countStatus(resp []byte) {
	// "HTTP/1.1 NNN"
	if len(resp) < 12 {
		return
	}
	switch resp[9] {
	case '2':
		s.metrics.http2xx.Inc()
	case '4':
		s.metrics.http4xx.Inc()
	case '5':
		s.metrics.http5xx.Inc()
	}
}

// gnetLogger sends gnet's logs to slog, demoting its chatter to debug.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.log(slog.LevelDebug, f, a) }
func (g gnetLogger) Infof(f string, a ...any)  { g.log(slog.LevelDebug, f, a) }
func (g gnetLogger) Warnf(f string, a ...any)  { g.log(slog.LevelWarn, f, a) }
func (g gnetLogger) Errorf(f string, a ...any) { g.log(slog.LevelError, f, a) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.log(slog.LevelError, f, a) }

func (g gnetLogger) log(lvl slog.Level, f string, a []any) {
	if g.l.Enabled(context.Background(), lvl) {
		g.l.Log(context.Background(), lvl, "gnet: "+fmt.Sprintf(f, a...))
	}
}
