package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/api"
	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/limiter"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
	"github.com/unigate/unigate/web"
)

// loadConfig parses the common flags (-config and the config's own flags)
// and returns the validated configuration. extra registers command flags.
func loadConfig(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (config.Config, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("unigate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv(config.EnvConfigFile), "YAML configuration `file` (env UNIGATE_CONFIG)")
	flagCfg := config.Default()
	flagCfg.RegisterFlags(fs)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config.Config{}, nil, err
		}
		return config.Config{}, nil, errUsage
	}
	cfg, err := config.Load(*path, os.Environ())
	if err != nil {
		return cfg, fs, err
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		return cfg, fs, err
	}
	return cfg, fs, cfg.Validate()
}

func serve(args []string, stderr io.Writer) error {
	cfg, _, err := loadConfig("serve", args, stderr, nil)
	if err != nil {
		return err
	}
	log := cfg.Logger(stderr)
	slog.SetDefault(log)
	// Taken from now on: a signal that came while the gateway starts (its
	// port is open before start returns) would otherwise have its default
	// action, and a SIGHUP (log rotation, a reload) would kill it. One
	// that comes before the gateway serves is handled once it does.
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sig)
	g, err := newGateway(cfg, log)
	if err != nil {
		return err
	}
	if err := g.start(); err != nil {
		return err
	}
	log.Info("unigate serving", "listen", g.srv.Addr(), "admin", cfg.Admin.Listen, "version", version,
		"websocket", "ws://"+g.srv.Addr()+"/ws")

	var s os.Signal
	for s = <-sig; s == syscall.SIGHUP; s = <-sig {
		// Reload the limits, origin checks and API keys; everything else
		// needs a restart.
		next, _, err := loadConfig("serve", args, stderr, nil)
		if err != nil {
			log.Error("reload: configuration not applied", "err", err)
			continue
		}
		if err := g.reload(next); err != nil {
			log.Error("reload: configuration not applied", "err", err)
			continue
		}
		log.Info("reloaded limits, origins and API keys", "max_connections", g.limiter.MaxConnections(), "api_keys", len(next.API.Keys))
	}
	signal.Ignore(syscall.SIGHUP) // no reload while draining
	log.Info("draining", "signal", s.String(), "timeout", cfg.Shutdown.DrainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.DrainTimeout)
	defer cancel()
	go func() {
		// A second signal skips the drain.
		<-sig
		log.Warn("second signal: exiting now")
		cancel()
	}()
	err = g.stop(ctx)
	log.Info("stopped", "err", err)
	return nil
}

// gateway is the wired process: broker behind the netpoll server, plus the
// admin listener.
type gateway struct {
	cfg    config.Config
	log    *slog.Logger
	signer *token.Signer
	broker *broker.Broker
	srv    *netpoll.Server
	node   *natsnode.Node
	hist   *histstore.Store
	sess   *sessionstore.Store
	atRest *atRest
	admin  *http.Server

	tickets    *tickets // the secure channel's tickets in JetStream; nil when off
	limiter    *limiter.Limiter
	limiterSet *metrics.Set
	origins    *atomic.Pointer[originPolicy] // swapped by reload
	api        *api.Handler                  // its keys are replaced by reload
	backends   *backendSet
}

// originPolicy is the reloadable part of the origin checks: the upgrade's
// (websocket.allowed_origins) and the hello's (websocket.tenant_origins).
type originPolicy struct {
	ws     config.WebSocketConfig
	tenant func(tenant, origin string) bool // nil: no per-tenant entries
}

func newOriginPolicy(ws config.WebSocketConfig) *originPolicy {
	return &originPolicy{ws: ws, tenant: ws.TenantOriginCheck()}
}

// limitSettings maps the configuration to the limiter's settings.
func limitSettings(cfg config.Config) (limiter.Settings, error) {
	l := cfg.Limits
	allow, err := config.Prefixes(l.AllowList)
	if err != nil {
		return limiter.Settings{}, fmt.Errorf("limits.allow_list: %w", err)
	}
	return limiter.Settings{
		MaxConnections:            cfg.MaxConnections,
		FDReserve:                 l.FDReserve,
		HighWaterPercent:          l.ReadyHighWater,
		AcceptRate:                float64(l.AcceptRate),
		AcceptBurst:               l.AcceptBurst,
		PerIPConnections:          l.PerIPConnections,
		PerIPRate:                 float64(l.PerIPRate),
		PerIPBurst:                l.PerIPBurst,
		AllowList:                 allow,
		IdentityConnections:       l.IdentityConnections,
		IdentityRate:              float64(l.IdentityRate),
		IdentityBurst:             l.IdentityBurst,
		AnonymousPerIPConnections: l.AnonymousPerIPConnections,
		AnonymousPerIPRate:        float64(l.AnonymousPerIPRate),
		AnonymousPerIPBurst:       l.AnonymousPerIPBurst,
		MaxKeys:                   l.MaxTrackedKeys,
	}, nil
}

// offIfZero maps a configured rate, where 0 means no limit, to the
// broker's, where 0 means the default and a negative rate no limit.
func offIfZero(rate int) float64 {
	if rate == 0 {
		return -1
	}
	return float64(rate)
}

// connRates maps the configuration to netpoll's per-connection rates.
func connRates(l config.LimitsConfig) netpoll.ConnRates {
	return netpoll.ConnRates{
		MessagesPerSecond: float64(l.MessageRate),
		MessageBurst:      l.MessageBurst,
		BytesPerSecond:    float64(l.ByteRate),
		ByteBurst:         l.ByteBurst,
	}
}

// reload applies the limits and origin checks of cfg (SIGHUP) to the
// running gateway; open connections are kept.
func (g *gateway) reload(cfg config.Config) error {
	s, err := limitSettings(cfg)
	if err != nil {
		return err
	}
	apiKeys, err := api.LoadKeys(cfg.API.Keys) // key files are read again
	if err != nil {
		return err
	}
	if err := g.limiter.Update(s); err != nil {
		return err
	}
	g.api.SetKeys(apiKeys)
	g.srv.SetConnRates(connRates(cfg.Limits))
	g.broker.SetUpdateRates(offIfZero(cfg.Limits.TypingRate), cfg.Limits.TypingBurst,
		offIfZero(cfg.Limits.PresenceRate), cfg.Limits.PresenceBurst)
	g.origins.Store(newOriginPolicy(cfg.WebSocket))
	return nil
}

func newGateway(cfg config.Config, log *slog.Logger) (*gateway, error) {
	key, created, err := token.LoadOrCreateKey(cfg.KeyPath())
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created a new HMAC key for tokens", "file", cfg.KeyPath())
	}
	signer, err := token.NewSigner(key)
	if err != nil {
		return nil, err
	}
	ar, err := openAtRest(cfg, log)
	if err != nil {
		return nil, err
	}
	node, hist, convs, cluster, err := openStores(cfg, log, ar)
	if err != nil {
		return nil, err
	}
	sess, err := openSessions(cfg, log, ar)
	if err != nil {
		_ = hist.Close()
		ar.close()
		node.Shutdown()
		return nil, err
	}
	closeStores := func() {
		sess.Close()
		_ = hist.Close()
		ar.close()
		node.Shutdown()
	}
	settings, err := limitSettings(cfg)
	if err != nil {
		closeStores()
		return nil, err
	}
	sec, err := secureOptions(cfg.Crypto)
	if err != nil {
		closeStores()
		return nil, err
	}
	tks, err := openTickets(cfg, node.JetStream(), ar, sec, log)
	if err != nil {
		closeStores()
		return nil, err
	}
	closeStores = func(close func()) func() {
		return func() { tks.close(); close() }
	}(closeStores)
	origins := new(atomic.Pointer[originPolicy])
	origins.Store(newOriginPolicy(cfg.WebSocket))
	limSet := metrics.NewSet()
	lim, err := limiter.New(settings, limSet, log.With("component", "limiter"))
	if err != nil {
		closeStores()
		return nil, err
	}
	bks, err := buildBackends(cfg.Backends, log.With("component", "backends"))
	if err != nil {
		closeStores()
		return nil, err
	}
	closeStores = func(close func()) func() {
		return func() { close(); bks.Close() }
	}(closeStores)
	if bks.opts != nil && bks.opts.Hook != nil {
		// Hook events wait in JetStream (they survive a crash; in a
		// cluster one node delivers each).
		if bks.opts.Events, err = openHookEvents(cfg, log, node.JetStream(), ar); err != nil {
			closeStores()
			return nil, err
		}
	}
	b, err := broker.New(broker.Options{
		Logger:               log.With("component", "broker"),
		Signer:               signer,
		AllowAnonymous:       cfg.Auth.AllowAnonymous,
		Shards:               cfg.Broker.ShardCount(),
		QueueSize:            cfg.Broker.QueueSize,
		MaxQueue:             cfg.Broker.MaxQueue,
		PositionExact:        cfg.Broker.PositionExact,
		PositionStep:         cfg.Broker.PositionStep,
		DefaultAgentCapacity: cfg.Broker.DefaultAgentCapacity,
		ResumeTTL:            cfg.Auth.ResumeTTL,
		HeartbeatMillis:      uint32(cfg.WebSocket.PingInterval / time.Millisecond),
		MaxMessageBytes:      uint32(cfg.WebSocket.MaxMessageBytes),
		ServerVersion:        "unigate/" + version,

		History:                     hist,
		Conversations:               convs,
		Sessions:                    sess,
		MaxPendingPerConversation:   cfg.History.MaxPendingPerConversation,
		ReplayLimit:                 cfg.History.ReplayLimit,
		HistoryPerConversation:      cfg.History.CacheMessages,
		HistoryBytesPerConversation: cfg.History.CacheBytes,

		Limits: lim,
		OriginAllowed: func(tenant, origin string) bool {
			f := origins.Load().tenant
			return f == nil || f(tenant, origin)
		},
		TypingRate:    offIfZero(cfg.Limits.TypingRate),
		TypingBurst:   cfg.Limits.TypingBurst,
		PresenceRate:  offIfZero(cfg.Limits.PresenceRate),
		PresenceBurst: cfg.Limits.PresenceBurst,
		Cluster:       cluster,
		Secure:        sec,
		Backends:      bks.opts,
	})
	if err != nil {
		closeStores()
		return nil, err
	}
	stopBroker := func() {
		b.Close()
		closeStores()
	}
	trusted, err := config.Prefixes(cfg.Limits.TrustedProxies)
	if err != nil {
		stopBroker()
		return nil, fmt.Errorf("limits.trusted_proxies: %w", err)
	}
	apiKeys, err := api.LoadKeys(cfg.API.Keys)
	if err != nil {
		stopBroker()
		return nil, err
	}
	apiHandler := api.New(b, api.Options{Keys: apiKeys, Logger: log.With("component", "api")})
	srv, err := netpoll.New(b,
		netpoll.WithAddr(cfg.Listen),
		netpoll.WithReusePort(cfg.ReusePort),
		netpoll.WithEventLoops(cfg.EventLoopCount()),
		// Sockets, upgraded or not, never take the descriptors kept in
		// reserve; upgrades are capped lower by the limiter.
		netpoll.WithMaxConnections(limiter.FDCap(cfg.Limits.FDReserve)),
		netpoll.WithAdmission(lim),
		netpoll.WithConnRates(connRates(cfg.Limits)),
		netpoll.WithTrustedProxies(trusted...),
		netpoll.WithProxyProtocol(cfg.Limits.ProxyProtocol),
		netpoll.WithMaxMessageBytes(cfg.WebSocket.MaxMessageBytes),
		netpoll.WithMaxHeaderBytes(cfg.WebSocket.MaxHeaderBytes),
		netpoll.WithHandshakeTimeout(cfg.WebSocket.HandshakeTimeout),
		netpoll.WithIdleTimeout(cfg.WebSocket.IdleTimeout),
		netpoll.WithPingInterval(cfg.WebSocket.PingInterval),
		netpoll.WithMaxOutboundBytes(cfg.WebSocket.MaxOutboundBytes),
		netpoll.WithSubprotocols(protocol.Subprotocols()...),
		netpoll.WithOriginCheck(func(origin string) bool { return origins.Load().ws.OriginAllowed(origin) }),
		netpoll.WithLogger(log.With("component", "netpoll")),
		// The widget, console and demo pages (/widget/, /console/, /demo);
		// the integrator REST API (/api/v1) on every other path.
		netpoll.WithHTTPHandler(web.NewHandler(webOptions(cfg, sec), apiHandler)),
	)
	if err != nil {
		stopBroker()
		return nil, err
	}
	return &gateway{cfg: cfg, log: log, signer: signer, broker: b, srv: srv, node: node, hist: hist, sess: sess, atRest: ar, tickets: tks, limiter: lim, limiterSet: limSet, origins: origins, api: apiHandler, backends: bks}, nil
}

func (g *gateway) start() error {
	if err := g.srv.Start(); err != nil {
		g.closeBroker()
		return fmt.Errorf("listen %s: %w", g.cfg.Listen, err)
	}
	metrics.RegisterSet(g.srv.Metrics())
	metrics.RegisterSet(g.broker.Metrics())
	metrics.RegisterSet(g.limiterSet)
	metrics.RegisterSet(g.backends.metrics)
	if s := g.tickets.metrics(); s != nil {
		metrics.RegisterSet(s)
	}
	if g.cfg.Admin.Listen != "" {
		admin, err := startAdmin(g.cfg.Admin, g.log, adminRoute{"/keys", g.atRest.adminHandler()})
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = g.stop(ctx)
			return err
		}
		g.admin = admin
	}
	return nil
}

// stop drains clients (1001), then stops the broker and the admin server.
func (g *gateway) stop(ctx context.Context) error {
	err := g.srv.Stop(ctx)
	g.closeBroker()
	metrics.UnregisterSet(g.srv.Metrics(), false)
	metrics.UnregisterSet(g.broker.Metrics(), false)
	metrics.UnregisterSet(g.limiterSet, false)
	metrics.UnregisterSet(g.backends.metrics, false)
	if s := g.tickets.metrics(); s != nil {
		metrics.UnregisterSet(s, false)
	}
	if g.admin != nil {
		_ = g.admin.Close()
	}
	return err
}

// closeBroker stops the broker, then the history store (pending appends
// fail) and the NATS node (its connection is drained first).
func (g *gateway) closeBroker() {
	g.broker.Close()
	if g.cfg.Sessions.Snapshot {
		// After the broker: every connection's session was cached with
		// its ResumeTTL when netpoll closed it.
		path := filepath.Join(g.cfg.DataDir, sessionSnapshotFile)
		if err := g.sess.SaveSnapshot(path); err != nil {
			g.log.Error("session snapshot not saved", "file", path, "err", err)
		} else {
			g.log.Info("session snapshot saved", "file", path, "entries", g.sess.Stats().Entries)
		}
	}
	g.sess.Close()
	g.tickets.close()
	_ = g.hist.Close()
	g.atRest.close()
	g.node.Shutdown()
	g.backends.Close()
}

// Files in the data directory.
const (
	sessionSnapshotFile = "sessions.snap"
	sessionKeyFile      = "session.key"
)

// openSessions creates the session cache, restored from the encrypted
// snapshot of the last graceful stop when there is a usable one.
func openSessions(cfg config.Config, log *slog.Logger, ar *atRest) (*sessionstore.Store, error) {
	key, fresh, err := ar.sessionKey()
	if err != nil {
		return nil, err
	}
	o := sessionstore.Options{MaxBytes: cfg.Sessions.MaxBytes}
	if cfg.Sessions.Snapshot && !fresh {
		path := filepath.Join(cfg.DataDir, sessionSnapshotFile)
		s, err := sessionstore.LoadSnapshot(path, o, key)
		switch {
		case err == nil:
			log.Info("session snapshot restored", "file", path, "entries", s.Stats().Entries)
			return s, nil
		case errors.Is(err, fs.ErrNotExist):
		default:
			log.Error("session snapshot refused: starting with no sessions", "err", err)
		}
	}
	return sessionstore.New(o, key)
}

// openStores starts NATS (embedded in <data_dir>/nats, or nats.url) and
// opens the history stream and the conversation bucket, and in cluster
// mode the cluster's buckets; with encryption at rest, first the keyring.
func openStores(cfg config.Config, log *slog.Logger, ar *atRest) (*natsnode.Node, *histstore.Store, *broker.KVConvStore, *broker.Cluster, error) {
	no := natsnode.Options{
		ExternalURL: cfg.NATS.URL,
		SyncAlways:  cfg.NATS.SyncAlways,
		Logger:      log.With("component", "nats"),
	}
	if no.ExternalURL == "" {
		no.StoreDir = cfg.NATSStoreDir()
		if cl := cfg.Cluster; cl.Listen != "" {
			no.ClusterName = cl.Name
			no.ClusterListen = cl.Listen
			no.Routes = cl.Routes
			no.ServerName = cl.NodeName
		}
	}
	node, err := natsnode.Start(no)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	// A clustered JetStream accepts streams only once its meta leader is
	// elected (the other nodes may be starting too): retry until then.
	wait := 30 * time.Second
	if cfg.Clustered() {
		wait = 2 * time.Minute
	}
	deadline := time.Now().Add(wait)
	js := node.JetStream()
	var (
		hist    *histstore.Store
		convs   *broker.KVConvStore
		cluster *broker.Cluster
	)
	for {
		// Short attempts, repeated: in a freshly formed cluster a new
		// replicated stream's creation is often answered only once it
		// is asked for again (a create waited out its whole timeout,
		// 10 s or 20 s alike, and the stream's leader came right after
		// the retry), and creating the same stream again is harmless.
		// History and the conversation bucket are created
		// concurrently, like the cluster's two buckets.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var histErr, convErr error
		var wg sync.WaitGroup
		keysErr := ar.openKeyring(ctx, js) // the history needs it
		if hist == nil && keysErr == nil {
			wg.Go(func() {
				hist, histErr = histstore.Open(ctx, js, ar.histOptions(histstore.Options{
					MaxAge:            cfg.History.MaxAge,
					MaxBytes:          cfg.History.MaxBytes,
					MaxMsgsPerSubject: cfg.History.MaxMsgsPerConversation,
					DuplicateWindow:   cfg.History.DuplicateWindow,
					Replicas:          cfg.NATS.Replicas,
				}))
			})
		}
		if convs == nil {
			wg.Go(func() {
				convs, convErr = broker.OpenKVConvStore(ctx, js, broker.KVConvOptions{TTL: cfg.History.MaxAge, Replicas: cfg.NATS.Replicas})
			})
		}
		wg.Wait()
		err = errors.Join(keysErr, histErr, convErr)
		if err == nil && cfg.Clustered() {
			cluster, err = broker.OpenCluster(ctx, node.Conn(), js, broker.ClusterOptions{
				Node:          cfg.Cluster.NodeName,
				Replicas:      cfg.NATS.Replicas,
				Conversations: convs,
			})
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ar.fatal(err) {
			if hist != nil {
				_ = hist.Close()
			}
			ar.close()
			node.Shutdown()
			return nil, nil, nil, nil, err
		}
		log.Info("waiting for JetStream", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	if cluster != nil {
		log.Info("cluster mode", "node", cluster.Node(), "replicas", cfg.NATS.Replicas)
	}
	return node, hist, convs, cluster, nil
}

// adminRoute is one more handler on the admin listener.
type adminRoute struct {
	pattern string // subtree: pattern and pattern + "/"
	h       http.Handler
}

// startAdmin serves Prometheus metrics and, when enabled, pprof, and the
// extra routes (the keys commands).
func startAdmin(c config.AdminConfig, log *slog.Logger, extra ...adminRoute) (*http.Server, error) {
	mux := http.NewServeMux()
	for _, r := range extra {
		mux.Handle(r.pattern, r.h)
		mux.Handle(r.pattern+"/", r.h)
	}
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		metrics.WritePrometheus(w, true)
	})
	if c.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	log.Info("admin listening", "addr", ln.Addr().String())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server", "err", err)
		}
	}()
	return srv, nil
}
