package natsnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for zero-valued Options fields.
const (
	DefaultMaxMemory    = 256 << 20
	DefaultMaxStore     = 16 << 30
	DefaultClusterName  = "unigate"
	DefaultStartTimeout = 10 * time.Second
	DefaultDrainTimeout = 5 * time.Second
)

// Errors returned by Start.
var (
	// ErrOptions reports an invalid Options value.
	ErrOptions = errors.New("natsnode: invalid options")
	// ErrNotReady reports a server that did not become ready in StartTimeout.
	ErrNotReady = errors.New("natsnode: server not ready")
)

// Options configures Start. The zero value is invalid only because an
// embedded server needs StoreDir.
type Options struct {
	// StoreDir is the JetStream file store directory of the embedded
	// server. Required unless ExternalURL is set. It must not be shared by
	// two running servers.
	StoreDir string
	// ExternalURL, when set, makes Start connect to that NATS server or
	// cluster (comma-separated URLs) instead of embedding one; every
	// server-side field below is then ignored.
	ExternalURL string
	// ClusterName names the NATS cluster (default "unigate" when
	// ClusterListen is set). All nodes of one cluster use the same name.
	ClusterName string
	// ClusterListen is the host:port the embedded server listens on for
	// routes from other nodes (port -1 or 0: random). Empty: standalone.
	ClusterListen string
	// Routes are the other nodes' route addresses, "host:port" or
	// "nats-route://host:port". A node may list itself (it is ignored).
	Routes []string
	// ServerName is the server's name, unique in the cluster and stable
	// across restarts. Default: nats-server's generated id (standalone
	// only; a cluster requires names).
	ServerName string
	// ClientListen is the host:port the embedded server accepts NATS
	// clients on (port -1: random). Empty: no client listener (in-process
	// connections only), except that a clustered node then listens on
	// 127.0.0.1 with a random port (see the package doc).
	ClientListen string
	// MaxMemory caps JetStream memory storage in bytes (default 256 MiB).
	MaxMemory int64
	// MaxStore caps JetStream file storage in bytes (default 16 GiB).
	MaxStore int64
	// SyncAlways makes the file store fsync every write before the ack
	// (slower; survives power loss, not only process crashes).
	SyncAlways bool
	// StartTimeout bounds the wait for the embedded server to be ready
	// and for the first connection (default 10s).
	StartTimeout time.Duration
	// Logger receives the server's and the connection's logs. Nil: silent.
	Logger *slog.Logger
}

// Node is a started NATS server (or external connection) with one client
// connection and its JetStream context.
type Node struct {
	srv    *server.Server // nil when external
	nc     *nats.Conn
	js     jetstream.JetStream
	closed chan struct{}
	log    *slog.Logger
	once   sync.Once
}

// Start starts an embedded server (or connects to ExternalURL) and returns
// the node once the connection is established and JetStream is enabled.
func Start(o Options) (*Node, error) {
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	n := &Node{closed: make(chan struct{}), log: o.Logger}
	copts := []nats.Option{
		nats.Name("unigate"),
		nats.DrainTimeout(DefaultDrainTimeout),
		nats.ClosedHandler(func(*nats.Conn) { close(n.closed) }),
		nats.Timeout(o.StartTimeout),
	}
	if o.Logger != nil {
		l := o.Logger
		copts = append(copts,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					l.Warn("nats: disconnected", "err", err)
				}
			}),
			nats.ReconnectHandler(func(c *nats.Conn) { l.Info("nats: reconnected", "url", c.ConnectedUrlRedacted()) }),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { l.Warn("nats: async error", "err", err) }),
		)
	}
	if o.ExternalURL != "" {
		copts = append(copts, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false))
		nc, err := nats.Connect(o.ExternalURL, copts...)
		if err != nil {
			return nil, fmt.Errorf("natsnode: connect %s: %w", redact(o.ExternalURL), err)
		}
		n.nc = nc
	} else {
		sopts, err := serverOptions(&o)
		if err != nil {
			return nil, err
		}
		ns, err := server.NewServer(sopts)
		if err != nil {
			return nil, fmt.Errorf("natsnode: %w", err)
		}
		if o.Logger != nil {
			ns.SetLoggerV2(&slogAdapter{l: o.Logger}, o.Logger.Enabled(context.Background(), slog.LevelDebug), false, false)
		}
		ns.Start()
		if !ns.ReadyForConnections(o.StartTimeout) {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, fmt.Errorf("%w after %s", ErrNotReady, o.StartTimeout)
		}
		n.srv = ns
		copts = append(copts, nats.InProcessServer(ns))
		nc, err := nats.Connect("", copts...)
		if err != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, fmt.Errorf("natsnode: in-process connect: %w", err)
		}
		n.nc = nc
	}
	js, err := jetstream.New(n.nc)
	if err != nil {
		n.Shutdown()
		return nil, fmt.Errorf("natsnode: jetstream: %w", err)
	}
	n.js = js
	return n, nil
}

func serverOptions(o *Options) (*server.Options, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("%w: StoreDir is required for an embedded server", ErrOptions)
	}
	so := &server.Options{
		ServerName:             o.ServerName,
		JetStream:              true,
		StoreDir:               o.StoreDir,
		JetStreamMaxMemory:     o.MaxMemory,
		JetStreamMaxStore:      o.MaxStore,
		SyncAlways:             o.SyncAlways,
		NoSigs:                 true,
		NoLog:                  o.Logger == nil,
		DisableJetStreamBanner: true,
	}
	if so.JetStreamMaxMemory <= 0 {
		so.JetStreamMaxMemory = DefaultMaxMemory
	}
	if so.JetStreamMaxStore <= 0 {
		so.JetStreamMaxStore = DefaultMaxStore
	}
	clientListen := o.ClientListen
	if o.ClusterListen != "" {
		if o.ServerName == "" {
			return nil, fmt.Errorf("%w: a clustered node needs a ServerName", ErrOptions)
		}
		host, port, err := splitHostPort(o.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("%w: ClusterListen: %v", ErrOptions, err)
		}
		so.Cluster.Name = o.ClusterName
		if so.Cluster.Name == "" {
			so.Cluster.Name = DefaultClusterName
		}
		so.Cluster.Host, so.Cluster.Port = host, port
		for _, r := range o.Routes {
			u, err := routeURL(r)
			if err != nil {
				return nil, fmt.Errorf("%w: route %q: %v", ErrOptions, r, err)
			}
			so.Routes = append(so.Routes, u)
		}
		if clientListen == "" {
			// Routing starts only after the client accept loop (see doc).
			clientListen = "127.0.0.1:-1"
		}
	} else if len(o.Routes) > 0 {
		return nil, fmt.Errorf("%w: Routes without ClusterListen", ErrOptions)
	}
	if clientListen == "" {
		so.DontListen = true
	} else {
		host, port, err := splitHostPort(clientListen)
		if err != nil {
			return nil, fmt.Errorf("%w: ClientListen: %v", ErrOptions, err)
		}
		so.Host, so.Port = host, port
	}
	return so, nil
}

// splitHostPort parses host:port; port 0 or -1 both mean a random port.
func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < -1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

func routeURL(r string) (*url.URL, error) {
	if !strings.Contains(r, "://") {
		r = "nats-route://" + r
	}
	u, err := url.Parse(r)
	if err != nil {
		return nil, err
	}
	if u.Host == "" || u.Port() == "" {
		return nil, errors.New("want host:port")
	}
	return u, nil
}

// redact drops credentials from a URL list for error messages.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = nil
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// Conn returns the node's NATS connection (in-process when embedded).
func (n *Node) Conn() *nats.Conn { return n.nc }

// JetStream returns the JetStream context of Conn.
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// Server returns the embedded server, or nil when connected to an
// external one.
func (n *Node) Server() *server.Server { return n.srv }

// ClientURL returns the URL NATS clients can connect to ("" when the
// embedded server does not listen for clients).
func (n *Node) ClientURL() string {
	if n.srv == nil {
		return n.nc.ConnectedUrlRedacted()
	}
	if n.srv.Addr() == nil {
		return ""
	}
	return n.srv.ClientURL()
}

// ClusterAddr returns the route listener's address, or nil.
func (n *Node) ClusterAddr() net.Addr {
	if n.srv == nil {
		return nil
	}
	if a := n.srv.ClusterAddr(); a != nil {
		return a
	}
	return nil
}

// Shutdown drains the connection (pending publishes are flushed, their
// acks awaited up to DefaultDrainTimeout), then shuts the embedded server
// down and waits for it to stop. It is idempotent.
func (n *Node) Shutdown() {
	n.once.Do(func() {
		if n.nc != nil {
			if err := n.nc.Drain(); err != nil {
				n.nc.Close()
			}
			select {
			case <-n.closed:
			case <-time.After(DefaultDrainTimeout + time.Second):
				n.nc.Close()
			}
		}
		if n.srv != nil {
			n.srv.Shutdown()
			n.srv.WaitForShutdown()
		}
	})
}

// slogAdapter is a server.Logger over slog. nats-server gates Debugf and
// Tracef itself (SetLoggerV2's flags), so formatting happens only for
// enabled levels.
type slogAdapter struct{ l *slog.Logger }

func (a *slogAdapter) Noticef(f string, v ...any) { a.l.Info(fmt.Sprintf(f, v...), "src", "nats") }
func (a *slogAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...), "src", "nats") }
func (a *slogAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...), "src", "nats") }
func (a *slogAdapter) Errorf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...), "src", "nats") }
func (a *slogAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...), "src", "nats") }
func (a *slogAdapter) Tracef(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...), "src", "nats") }
