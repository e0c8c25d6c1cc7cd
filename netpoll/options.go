package netpoll

import (
	"log/slog"
	"net/http"
	"net/netip"
	"time"
)

// Option configures a Server.
type Option func(*options)

type options struct {
	addr             string
	eventLoops       int
	reusePort        bool
	maxMessage       int
	maxHead          int
	maxBody          int64
	handshakeTimeout time.Duration
	idleTimeout      time.Duration
	pingInterval     time.Duration
	maxOutbound      int
	subprotocols     []string
	wsPath           string
	httpHandler      http.Handler
	httpConcurrency  int
	ready            func() bool
	maxConns         int
	originAllowed    func(origin string) bool
	logger           *slog.Logger
	admission        Admission
	connRates        ConnRates
	trusted          []netip.Prefix
	proxyProtocol    bool
	sealerIdle       time.Duration
}

func defaultOptions() options {
	return options{
		addr:             ":8080",
		maxMessage:       64 << 10,
		maxHead:          8 << 10,
		maxBody:          1 << 20,
		handshakeTimeout: 10 * time.Second,
		idleTimeout:      90 * time.Second,
		pingInterval:     30 * time.Second,
		maxOutbound:      1 << 20,
		subprotocols:     []string{"unigate.v1.proto", "unigate.v1.json"},
		wsPath:           "/ws",
		httpConcurrency:  64,
		logger:           slog.New(slog.DiscardHandler),
		sealerIdle:       DefaultSealerIdle,
	}
}

// WithAddr sets the listen address (host:port; port 0 picks a free port,
// see Server.Addr). Default ":8080".
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithEventLoops sets the number of gnet event loops; 0 (default) means one
// per CPU core.
func WithEventLoops(n int) Option { return func(o *options) { o.eventLoops = n } }

// WithReusePort sets SO_REUSEPORT on the listener, so several processes can
// share one port; each event loop then accepts on a listener of its own
// (no acceptor goroutine). With port 0, one free port is chosen for all of
// them.
func WithReusePort(on bool) Option { return func(o *options) { o.reusePort = on } }

// WithMaxMessageBytes bounds a WebSocket message (all its fragments); a
// larger one closes the connection with 1009. Default 64 KiB.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessage = n } }

// WithMaxHeaderBytes bounds an HTTP request head; a larger one gets 431.
// Default 8 KiB.
func WithMaxHeaderBytes(n int) Option { return func(o *options) { o.maxHead = n } }

// WithMaxBodyBytes bounds the body of a plain HTTP request; a larger one
// gets 413. Default 1 MiB.
func WithMaxBodyBytes(n int64) Option { return func(o *options) { o.maxBody = n } }

// WithHandshakeTimeout bounds the time from accepting a connection (or
// finishing an HTTP response on a keep-alive connection) to a complete
// request, and from the WebSocket upgrade to Conn.MarkEstablished (the
// application handshake; three times as long once Conn.HandshakeReceived
// says the client's handshake message arrived); a WebSocket over it is
// closed with 1008. Default 10s.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(o *options) { o.handshakeTimeout = d }
}

// WithIdleTimeout closes a WebSocket that sent nothing (not even a pong)
// for d, with 1001. Default 90s.
func WithIdleTimeout(d time.Duration) Option { return func(o *options) { o.idleTimeout = d } }

// WithPingInterval sets how often an otherwise quiet WebSocket is pinged, to
// keep NAT mappings alive and detect dead peers. Default 30s.
func WithPingInterval(d time.Duration) Option { return func(o *options) { o.pingInterval = d } }

// WithMaxOutboundBytes bounds the bytes queued for one connection (frames
// not yet handed to the kernel); a connection over it is a slow consumer
// and is closed with 1013. Default 1 MiB.
func WithMaxOutboundBytes(n int) Option { return func(o *options) { o.maxOutbound = n } }

// WithSubprotocols sets the accepted WebSocket subprotocols. A client that
// offers none of them is refused with 400. Default unigate.v1.proto and
// unigate.v1.json.
func WithSubprotocols(p ...string) Option {
	return func(o *options) { o.subprotocols = append([]string(nil), p...) }
}

// WithHTTPHandler serves plain HTTP requests for paths other than the
// WebSocket path, /healthz and /readyz. The handler runs on its own
// goroutine, never on an event loop; the request body is fully read before
// it is called.
func WithHTTPHandler(h http.Handler) Option { return func(o *options) { o.httpHandler = h } }

// WithHTTPConcurrency bounds the HTTP handler calls in flight; requests over
// it get 503. Default 64.
func WithHTTPConcurrency(n int) Option { return func(o *options) { o.httpConcurrency = n } }

// WithReady sets the readiness check behind /readyz (200 when it returns
// true, 503 otherwise). The server also reports unready while draining.
func WithReady(f func() bool) Option { return func(o *options) { o.ready = f } }

// WithLogger sets the logger. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithMaxConnections caps open connections; a connection accepted over the
// cap gets 503 and is closed. 0 (default) means no cap.
func WithMaxConnections(n int) Option { return func(o *options) { o.maxConns = n } }

// WithOriginCheck sets the check of a WebSocket upgrade's Origin header
// ("" when absent); a refused origin gets 403. Default: every origin.
func WithOriginCheck(f func(origin string) bool) Option {
	return func(o *options) { o.originAllowed = f }
}
