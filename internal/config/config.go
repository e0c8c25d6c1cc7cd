package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Errors returned by Load and Validate. Each is wrapped with the file,
// line, variable or field it is about; test with errors.Is.
var (
	// ErrUnknownKey: the YAML file has a key that names no field.
	ErrUnknownKey = errors.New("unknown key")
	// ErrBadValue: a YAML value, environment variable or flag cannot be
	// converted to its field's type.
	ErrBadValue = errors.New("bad value")
	// ErrUnknownEnv: an UNIGATE_* environment variable names no field.
	ErrUnknownEnv = errors.New("unknown environment variable")
	// ErrInvalid: a field has a value Validate rejects.
	ErrInvalid = errors.New("invalid configuration")
)

// EnvPrefix starts every environment variable Load reads.
const EnvPrefix = "UNIGATE_"

// EnvConfigFile is reserved for the caller to pass the configuration file
// path; Load ignores it instead of reporting it as unknown.
const EnvConfigFile = EnvPrefix + "CONFIG"

// Config is the whole application configuration. Start from Default; a
// zero Config is not valid.
type Config struct {
	// Listen is the public listener for WebSocket clients, host:port.
	// ":8080" listens on every interface.
	Listen string `yaml:"listen"`
	// ReusePort opens the public listener with SO_REUSEPORT, so several
	// processes (or event loops) can accept on the same port.
	ReusePort bool `yaml:"reuse_port"`
	// EventLoops is the number of event loops polling client sockets.
	// 0 means one per core available to the process (GOMAXPROCS); see
	// EventLoopCount.
	EventLoops int `yaml:"event_loops"`
	// MaxConnections caps simultaneous WebSocket clients; an upgrade
	// beyond it gets 503. 0 (and any value above it) means the process's
	// open-file limit minus Limits.FDReserve. Sockets accepted but not yet
	// upgraded are capped at that open-file bound.
	MaxConnections int `yaml:"max_connections"`
	// DataDir is the directory for state kept across restarts: the HMAC
	// key. Relative paths are relative to the working directory.
	DataDir string `yaml:"data_dir"`

	// Admin is the private HTTP server for operators.
	Admin AdminConfig `yaml:"admin"`
	// Log configures the process logger; see Logger.
	Log LogConfig `yaml:"log"`
	// WebSocket bounds each client connection.
	WebSocket WebSocketConfig `yaml:"websocket"`
	// Auth configures tokens and anonymous access.
	Auth AuthConfig `yaml:"auth"`
	// Broker configures conversation routing.
	Broker BrokerConfig `yaml:"broker"`
	// NATS configures the NATS server that stores history and
	// conversation state: embedded (default) or external.
	NATS NATSConfig `yaml:"nats"`
	// Cluster joins this node's embedded NATS server to other nodes'
	// through routes, so several Unigate nodes form one system.
	Cluster ClusterConfig `yaml:"cluster"`
	// History configures the durable conversation history.
	History HistoryConfig `yaml:"history"`
	// Sessions configures the resumable-session cache.
	Sessions SessionsConfig `yaml:"sessions"`
	// Shutdown configures a graceful stop.
	Shutdown ShutdownConfig `yaml:"shutdown"`
	// Limits configures admission control, per-connection rates and
	// trusted proxies; see docs/limits.md.
	Limits LimitsConfig `yaml:"limits"`
	// API configures the integrator REST API under /api/v1 on the public
	// listener; see docs/api.md.
	API APIConfig `yaml:"api"`
	// Web configures the agent console and the visitor widget served under
	// /console/ and /widget/; see docs/web.md.
	Web WebConfig `yaml:"web"`
	// Crypto configures the application-layer secure channel inside the
	// WebSocket (SM2/SM3/SM4 and post-quantum suites); see docs/crypto.md.
	Crypto CryptoConfig `yaml:"crypto"`
	// Backends connects the bot, the router and the hook; see
	// docs/backends.md.
	Backends BackendsConfig `yaml:"backends"`
}

// BackendsConfig chooses the bot, the router and the hook: built in
// (in-process, the defaults) or plugin processes under supervision
// (docs/backends.md).
type BackendsConfig struct {
	// Bot answers visitors before a human: "faq" (the built-in FAQ bot on
	// BotKnowledgeBase), "plugin" (the executable BotPlugin), or "off"
	// (conversations are queued for an agent at once).
	Bot string `yaml:"bot"`
	// BotKnowledgeBase is the FAQ bot's knowledge base (YAML); empty: the
	// embedded sample.
	BotKnowledgeBase string `yaml:"bot_knowledge_base"`
	// BotPlugin is the bot plugin executable (bot: plugin).
	BotPlugin string `yaml:"bot_plugin"`
	// BotPluginArgs are the bot plugin's command-line arguments.
	BotPluginArgs []string `yaml:"bot_plugin_args"`
	// BotPluginEnv adds "KEY=value" variables to the bot plugin's
	// environment. A plugin inherits the gateway's environment except its
	// UNIGATE_* variables (the gateway's settings, secrets among them);
	// what it needs of them is passed here (docs/backends.md, "Arguments
	// and environment").
	BotPluginEnv []string `yaml:"bot_plugin_env"`
	// BotThreshold is the confidence (0..1) at which the bot answers;
	// below it the conversation goes to an agent with the bot's intent
	// and summary.
	BotThreshold float64 `yaml:"bot_threshold"`
	// Router ranks the agents for a waiting conversation: "builtin" (the
	// weighted scorer below), "plugin" (the executable RouterPlugin,
	// asked off the dispatcher's lock, with the built-in scorer as its
	// fallback) or "off" (least loaded first).
	Router string `yaml:"router"`
	// RouterPlugin is the router plugin executable (router: plugin).
	RouterPlugin string `yaml:"router_plugin"`
	// RouterPluginArgs and RouterPluginEnv: as BotPluginArgs and
	// BotPluginEnv, for the router plugin.
	RouterPluginArgs []string `yaml:"router_plugin_args"`
	RouterPluginEnv  []string `yaml:"router_plugin_env"`
	// RouterSkill, RouterGeo and RouterSentiment weigh the scorer's
	// components (load breaks ties, capacity is a hard limit).
	RouterSkill     float64 `yaml:"router_skill"`
	RouterGeo       float64 `yaml:"router_geo"`
	RouterSentiment float64 `yaml:"router_sentiment"`
	// Regions maps client networks to regions for the router's geography
	// when a visitor declares none: "CIDR=region" entries, the longest
	// prefix wins.
	Regions []string `yaml:"regions"`
	// HookPlugin is the hook plugin executable (events and password
	// authentication); empty: no hook.
	HookPlugin string `yaml:"hook_plugin"`
	// HookPluginArgs and HookPluginEnv: as BotPluginArgs and
	// BotPluginEnv, for the hook plugin.
	HookPluginArgs []string `yaml:"hook_plugin_args"`
	HookPluginEnv  []string `yaml:"hook_plugin_env"`
	// HookFailOpen: while the hook is down, events are dropped (and
	// counted) and a password hello continues as an anonymous visitor
	// (when auth.allow_anonymous). False (fail-closed): events are
	// retried until the hook takes them and password hellos are refused.
	HookFailOpen bool `yaml:"hook_fail_open"`
	// HookMessages also sends every stored message to the hook.
	HookMessages bool `yaml:"hook_messages"`
	// HookEventQueue bounds the hook events waiting for delivery: stored
	// in JetStream (the stream UNIGATE_HOOK_EVENTS) until the hook takes
	// them. Beyond it new events are dropped and counted.
	HookEventQueue int `yaml:"hook_event_queue"`
	// HookAuthCacheTTL keeps the hook's sign-in answers for this long, by
	// a keyed hash of tenant, username, password and client address
	// (refusals for at most 5s); 0: every password hello asks the hook.
	HookAuthCacheTTL time.Duration `yaml:"hook_auth_cache_ttl"`
	// HookAuthCacheSize bounds the cached sign-in answers.
	HookAuthCacheSize int `yaml:"hook_auth_cache_size"`
	// CallTimeout bounds each plugin call.
	CallTimeout time.Duration `yaml:"call_timeout"`
	// MaxConcurrent bounds the calls in flight per plugin.
	MaxConcurrent int `yaml:"max_concurrent"`
	// FailureThreshold consecutive failures open a plugin's circuit
	// breaker for CoolDown.
	FailureThreshold int           `yaml:"failure_threshold"`
	CoolDown         time.Duration `yaml:"cool_down"`
	// RestartMax caps the delay before a crashed plugin is started again
	// (the delay doubles from 100ms per quick crash).
	RestartMax time.Duration `yaml:"restart_max"`
}

// CryptoConfig is the application-layer secure channel (package crypto,
// docs/crypto.md; on the wire: docs/protocol.md, "Encrypted
// connections"). Off by default: clients then talk plaintext inside the
// WebSocket (use TLS in a proxy in front).
type CryptoConfig struct {
	// Enabled accepts the secure channel on every connection. A client
	// that does not start it stays plaintext unless Required or
	// RequiredTenants say otherwise.
	Enabled bool `yaml:"enabled"`
	// IdentityKeys are the server identity key files written by
	// "unigate keygen" (PKCS#8 PEM): an SM2 key serves the GM and GM-PQ
	// suites, an Ed25519 key INTL-PQ. Clients pin their public keys.
	IdentityKeys []string `yaml:"identity_keys"`
	// CertificateChain, optional, is a PEM file with the certificate chain
	// (leaf first) of one of the identity keys ("unigate keygen -cert");
	// for its suites the server then sends the chain instead of the key id.
	CertificateChain string `yaml:"certificate_chain"`
	// Suites are the suites accepted, in the server's preference order:
	// GM-PQ, GM, INTL-PQ. A suite needs an identity key of its algorithm.
	Suites []string `yaml:"suites"`
	// Required refuses plaintext connections (error 2003, close 1008).
	Required bool `yaml:"required"`
	// RequiredTenants refuses a plaintext hello for these tenants (error
	// 2003, close 1008); other tenants may stay plaintext.
	RequiredTenants []string `yaml:"required_tenants"`
	// RekeyAfter is the number of records per key and direction after
	// which both sides move to the next key.
	RekeyAfter int `yaml:"rekey_after"`
	// Tickets lets clients resume (no server signature on a reconnect)
	// with a single-use ticket. The ticket keys and the tickets already
	// used are kept in JetStream (docs/crypto.md, "Resumption across the
	// cluster"): a ticket resumes once, on any node that shares the ticket
	// key wrapper (TicketKeyFile, or the at-rest master key), across
	// restarts.
	Tickets bool `yaml:"tickets"`
	// TicketTTL is the lifetime of a ticket.
	TicketTTL time.Duration `yaml:"ticket_ttl"`
	// TicketRotation is how long a ticket key seals before the cluster
	// moves to the next one; older keys stay until their tickets expire.
	// 0 means TicketTTL (at least a minute); otherwise at least a minute
	// and TicketTTL/32. See TicketRotationPeriod.
	TicketRotation time.Duration `yaml:"ticket_rotation"`
	// TicketKeyFile holds the key that wraps the ticket keys kept in
	// JetStream when this node has no at-rest master key file (with one,
	// the master key wraps them): one hex line, mode 0600, created on the
	// first start. Every node of a cluster needs the same file, or nodes
	// do not resume each other's tickets. Empty: <data_dir>/ticket.key.
	TicketKeyFile string `yaml:"ticket_key_file"`
	// AtRest is encryption at rest of the history and the session
	// snapshot (crypto/atrest); independent of Enabled.
	AtRest AtRestConfig `yaml:"at_rest"`
}

// AtRestConfig is encryption at rest (crypto/atrest, docs/crypto.md
// "Encryption at rest"): message texts in the history and the session
// snapshot's key are sealed with SM4-GCM data keys wrapped by a master key.
type AtRestConfig struct {
	// Enabled seals the text of every new history message and keeps the
	// session snapshot's key wrapped by the master key. Messages stored
	// before stay readable; turned off again, sealed messages stay
	// readable as long as the master key file is there.
	Enabled bool `yaml:"enabled"`
	// MasterKeyFile holds the master key (hex, one key per line, the
	// current one first), created with mode 0600 on the first start with
	// Enabled; refused when group or others can access it. Every node of
	// a cluster needs the same file. Empty: <data_dir>/master.key.
	MasterKeyFile string `yaml:"master_key_file"`
}

// TicketKeyPath returns Crypto.TicketKeyFile, or ticket.key in DataDir
// when it is empty.
func (c Config) TicketKeyPath() string {
	if c.Crypto.TicketKeyFile != "" {
		return c.Crypto.TicketKeyFile
	}
	return filepath.Join(c.DataDir, "ticket.key")
}

// MinTicketRotation is the shortest ticket key rotation period.
const MinTicketRotation = time.Minute

// TicketRotationPeriod returns TicketRotation, or TicketTTL (at least
// MinTicketRotation) when it is 0.
func (c CryptoConfig) TicketRotationPeriod() time.Duration {
	if c.TicketRotation > 0 {
		return c.TicketRotation
	}
	return max(c.TicketTTL, MinTicketRotation)
}

// MasterKeyPath returns Crypto.AtRest.MasterKeyFile, or master.key in
// DataDir when it is empty.
func (c Config) MasterKeyPath() string {
	if c.Crypto.AtRest.MasterKeyFile != "" {
		return c.Crypto.AtRest.MasterKeyFile
	}
	return filepath.Join(c.DataDir, "master.key")
}

// WebConfig is what the gateway's own pages (docs/web.md) get from the
// configuration.
type WebConfig struct {
	// CannedReplies are offered to every agent in the console (before the
	// ones an agent saves in its browser); "{me}" is replaced by the
	// agent's id. The console fetches them from /console/config.json, which
	// anyone can read: no secrets. In the environment the list is
	// comma-separated, so a reply with a comma needs the file.
	CannedReplies []string `yaml:"canned_replies"`
}

// Bounds of web.canned_replies.
const (
	MaxCannedReplies    = 200
	MaxCannedReplyBytes = 2000
)

// APIConfig is the integrator REST API (/api/v1 on the public listener).
// With no keys every /api/v1 request gets 401.
type APIConfig struct {
	// Keys are the API keys, each scoped to one tenant.
	Keys APIKeys `yaml:"keys"`
}

// APIKeys is the list of API keys. In the environment (UNIGATE_API_KEYS)
// it is written as a YAML or JSON flow list:
// [{key_file: /run/secrets/acme, tenant: acme, scopes: [read, write]}].
type APIKeys []APIKey

// APIKey is one integrator API key. Exactly one of Key and KeyFile is set.
type APIKey struct {
	// Key is the secret itself (at least 16 characters). Prefer KeyFile:
	// a key written here is in the configuration file.
	Key string `yaml:"key"`
	// KeyFile names a file holding the key (surrounding white space is
	// ignored); it is read at start-up and again on SIGHUP (rotation).
	KeyFile string `yaml:"key_file"`
	// Tenant is the only tenant the key gives access to.
	Tenant string `yaml:"tenant"`
	// Scopes are what the key may do: "read" (list and get conversations,
	// history, agents) and "write" (post messages, transfer, close).
	Scopes []string `yaml:"scopes"`
}

// API key scopes.
const (
	ScopeRead  = "read"
	ScopeWrite = "write"
)

// String describes k without its secret, so a Config can be logged.
func (k APIKey) String() string {
	secret := "key_file=" + k.KeyFile
	if k.Key != "" {
		secret = "key=<redacted>"
	}
	return "{" + secret + " tenant=" + k.Tenant + " scopes=" + strings.Join(k.Scopes, ",") + "}"
}

// GoString is String, for %#v.
func (k APIKey) GoString() string { return k.String() }

// LimitsConfig is admission control (package limiter) and the trusted
// proxies in front of the gateway. Every limit is 0 for "off" unless said
// otherwise. The defaults are generous per IP, because many visitors can
// share one address behind a corporate or carrier NAT. A SIGHUP reloads
// every field except trusted_proxies and proxy_protocol.
type LimitsConfig struct {
	// FDReserve is the number of file descriptors kept for everything that
	// is not a client; the connection cap is the process's open-file limit
	// minus this (or max_connections when that is lower).
	FDReserve int `yaml:"fd_reserve"`
	// ReadyHighWater is the percentage of the connection cap above which
	// /readyz answers 503, so a load balancer sends new clients elsewhere.
	ReadyHighWater int `yaml:"ready_high_water"`
	// AcceptRate is the new WebSocket connections per second the node
	// admits; AcceptBurst how many may come at once. Over it: 503.
	AcceptRate  int `yaml:"accept_rate"`
	AcceptBurst int `yaml:"accept_burst"`
	// PerIPConnections caps the concurrent connections of one client IP
	// (IPv6: one /64). Over it: 429.
	PerIPConnections int `yaml:"per_ip_connections"`
	// PerIPRate is the new connections per second one client IP may open;
	// PerIPBurst how many at once. Over it: 429.
	PerIPRate  int `yaml:"per_ip_rate"`
	PerIPBurst int `yaml:"per_ip_burst"`
	// IdentityConnections caps the concurrent connections of one token
	// subject; IdentityRate and IdentityBurst bound its new connections
	// per second. Checked at the hello, once the token is verified; over
	// the cap: close 1008; over the rate: close 1013.
	IdentityConnections int `yaml:"identity_connections"`
	IdentityRate        int `yaml:"identity_rate"`
	IdentityBurst       int `yaml:"identity_burst"`
	// AnonymousPerIPConnections caps the concurrent anonymous sessions (a
	// hello without a token) of one client IP; AnonymousPerIPRate and
	// AnonymousPerIPBurst bound how fast it starts them. Over the cap:
	// close 1008; over the rate: close 1013. Identified users behind the
	// same NAT are limited by identity instead.
	AnonymousPerIPConnections int `yaml:"anonymous_per_ip_connections"`
	AnonymousPerIPRate        int `yaml:"anonymous_per_ip_rate"`
	AnonymousPerIPBurst       int `yaml:"anonymous_per_ip_burst"`
	// TypingRate is the typing and read-receipt updates per second one
	// connection may send, TypingBurst how many at once; PresenceRate and
	// PresenceBurst the same for presence updates. Updates over the rate
	// are dropped; a flood of twice the rate closes with 1008.
	TypingRate    int `yaml:"typing_rate"`
	TypingBurst   int `yaml:"typing_burst"`
	PresenceRate  int `yaml:"presence_rate"`
	PresenceBurst int `yaml:"presence_burst"`
	// MaxTrackedKeys bounds the idle client IPs (and identities) whose
	// rate state is remembered, so memory stays bounded under an attack
	// from many addresses.
	MaxTrackedKeys int `yaml:"max_tracked_keys"`
	// MessageRate is the messages (and pings) per second one connection
	// may send; MessageBurst how many at once. Over it: close 1008.
	MessageRate  int `yaml:"message_rate"`
	MessageBurst int `yaml:"message_burst"`
	// ByteRate is the bytes per second one connection may send;
	// ByteBurst how many at once (raised to one maximal message if lower).
	// Over it: close 1008.
	ByteRate  int `yaml:"byte_rate"`
	ByteBurst int `yaml:"byte_burst"`
	// AllowList holds CIDRs (or single addresses) exempt from the per-IP
	// limits: known NAT egress addresses, offices.
	AllowList []string `yaml:"allow_list"`
	// TrustedProxies holds the CIDRs (or addresses) of the load balancers
	// in front of the gateway: only they may send a PROXY protocol header
	// or have X-Forwarded-For / X-Real-IP believed.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ProxyProtocol accepts a PROXY protocol (v1 or v2) header from
	// trusted proxies.
	ProxyProtocol bool `yaml:"proxy_protocol"`
}

// Prefixes parses a list of CIDRs or single addresses (a single address is
// its /32 or /128).
func Prefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("want a CIDR such as 203.0.113.0/24 or an address, got %q", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// AdminConfig is the private HTTP server: Prometheus metrics at /metrics
// and, when Pprof is set, Go profiles at /debug/pprof/.
type AdminConfig struct {
	// Listen is the admin listener, host:port. Keep it on a private
	// interface. Empty disables the admin server.
	Listen string `yaml:"listen"`
	// Pprof serves the Go profiling endpoints under /debug/pprof/.
	Pprof bool `yaml:"pprof"`
}

// LogConfig configures the process logger.
type LogConfig struct {
	// Level is the minimum level logged: debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text (logfmt-like key=value) or json (one object per line).
	Format string `yaml:"format"`
}

// WebSocketConfig bounds each client connection.
type WebSocketConfig struct {
	// MaxMessageBytes is the largest message a client may send, after
	// reassembling fragments; a bigger one closes the connection with
	// status 1009. It is announced to clients in Welcome.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxHeaderBytes caps the HTTP upgrade request (request line and
	// headers).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// HandshakeTimeout is how long a new connection has to complete the
	// HTTP upgrade request, and then to send Hello (from the upgrade; three
	// times as long once the Hello arrived and waits for an answer).
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// IdleTimeout closes a connection from which nothing (not even a pong)
	// arrived for this long. It must exceed PingInterval.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// PingInterval is how often the server pings an otherwise quiet
	// connection; announced to clients as the heartbeat.
	PingInterval time.Duration `yaml:"ping_interval"`
	// MaxOutboundBytes caps the bytes queued for one slow client; when a
	// send would exceed it the connection is closed instead of buffering
	// without bound. It must be at least MaxMessageBytes. (A byte bound
	// already bounds the frame count, so there is no separate frame limit.)
	MaxOutboundBytes int `yaml:"max_outbound_bytes"`
	// AllowedOrigins lists the web origins ("https://shop.example.com",
	// or "https://*.example.com" for any subdomain) whose browser pages may
	// connect. Empty allows every origin. Requests without an Origin
	// header (native apps, servers) are always allowed. See OriginAllowed.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// TenantOrigins narrows the origins per tenant: entries
	// "tenant=origin" (origin written as in AllowedOrigins). A browser
	// connection whose hello names a tenant with entries (through its
	// token, its resumed session or, anonymously, the hello's tenant)
	// must come from one of them, or it gets error 2003 and close 1008.
	// Tenants without entries accept what AllowedOrigins accepts.
	TenantOrigins []string `yaml:"tenant_origins"`
}

// AuthConfig configures tokens (see package token) and anonymous access.
type AuthConfig struct {
	// KeyFile holds the HMAC key that signs and verifies tokens, hex
	// encoded; it is created on first start. Empty means
	// <data_dir>/hmac.key; see Config.KeyPath.
	KeyFile string `yaml:"key_file"`
	// AllowAnonymous lets a visitor connect without a token; it gets a
	// generated visitor id.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// VisitorTokenTTL is the lifetime of visitor tokens the gateway issues
	// (to anonymous visitors and with "unigate token visitor").
	VisitorTokenTTL time.Duration `yaml:"visitor_token_ttl"`
	// AgentTokenTTL is the lifetime of agent tokens issued with
	// "unigate token agent".
	AgentTokenTTL time.Duration `yaml:"agent_token_ttl"`
	// ResumeTTL is how long a disconnected session is kept so the client
	// can resume it (and the lifetime of the resume token it holds).
	ResumeTTL time.Duration `yaml:"resume_ttl"`
}

// BrokerConfig configures conversation routing.
type BrokerConfig struct {
	// Shards is the number of independent broker shards conversations are
	// hashed onto. 0 means 4 × GOMAXPROCS; see ShardCount.
	Shards int `yaml:"shards"`
	// DefaultAgentCapacity is how many conversations an agent handles at
	// once unless its token or presence says otherwise.
	DefaultAgentCapacity int `yaml:"default_agent_capacity"`
	// QueueSize bounds the pending operations of one shard; when it is
	// full, new requests get a retryable "busy" error.
	QueueSize int `yaml:"queue_size"`
	// MaxQueue bounds the conversations waiting for an agent over all
	// tenants; one more open is refused with 4001 (queue full).
	MaxQueue int `yaml:"max_queue"`
	// PositionExact and PositionStep decide which queue position updates
	// are sent as a queue moves: every change of the first PositionExact
	// places, beyond them only places that are multiples of PositionStep.
	// PositionStep 1 tells every waiting visitor every move (a departure
	// from a queue of L sends L−1 updates).
	PositionExact int `yaml:"position_exact"`
	PositionStep  int `yaml:"position_step"`
}

// NATSConfig selects the NATS server. By default an embedded server with
// JetStream on local disk runs in the process (no TCP listener).
type NATSConfig struct {
	// URL, when set, connects to an external NATS server or cluster
	// (comma-separated URLs) instead of embedding one.
	URL string `yaml:"url"`
	// StoreDir is the embedded server's JetStream directory. Empty means
	// <data_dir>/nats; see Config.NATSStoreDir.
	StoreDir string `yaml:"store_dir"`
	// SyncAlways fsyncs every message before it is acknowledged (survives
	// power loss, not only a crash of the process; slower).
	SyncAlways bool `yaml:"sync_always"`
	// Replicas is the JetStream replication factor of the history stream
	// and the key-value buckets: 1 on a single node, 3 in a cluster of 3
	// or more NATS servers (a quorum of 2 survives one failure). It is
	// fixed when a stream is created; changing it later needs a
	// migration.
	Replicas int `yaml:"replicas"`
}

// ClusterConfig makes several Unigate nodes one system. With Listen set
// the embedded NATS server listens for routes and joins Routes; with
// nats.url set every node uses that external NATS instead (Listen must
// then be empty). Either way the broker runs in cluster mode (see
// Clustered and docs/broker.md).
type ClusterConfig struct {
	// Name is the NATS cluster name, the same on every node.
	Name string `yaml:"name"`
	// NodeName names this node, unique in the cluster and stable across
	// restarts (JetStream's RAFT groups know peers by it). Required with
	// Listen; with nats.url empty means a random name per process.
	NodeName string `yaml:"node_name"`
	// Listen is the host:port the embedded NATS server accepts routes
	// from other nodes on. Empty: standalone (no cluster).
	Listen string `yaml:"listen"`
	// Routes are the other nodes' route addresses, host:port (a node may
	// list itself).
	Routes []string `yaml:"routes"`
}

// Clustered reports whether the broker runs in cluster mode: the
// embedded server is routed to others, or NATS is external (other
// Unigate nodes may share it).
func (c Config) Clustered() bool {
	return c.Cluster.Listen != "" || c.NATS.URL != ""
}

// HistoryConfig is the retention and flow control of the durable history
// (one JetStream stream for all conversations).
type HistoryConfig struct {
	// MaxAge discards messages older than this; 0 keeps them forever.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes caps the whole history; the oldest messages are discarded
	// to make room. 0: no cap (JetStream's store limit applies).
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxMsgsPerConversation keeps at most this many messages of one
	// conversation, discarding its oldest. 0: no cap.
	MaxMsgsPerConversation int64 `yaml:"max_msgs_per_conversation"`
	// DuplicateWindow is how long a re-sent client message id is
	// recognised by the store across restarts.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	// MaxPendingPerConversation bounds the messages of one conversation
	// waiting for their durable write; more get "overloaded".
	MaxPendingPerConversation int `yaml:"max_pending_per_conversation"`
	// ReplayLimit caps the messages one resume replays after the client's
	// cursor.
	ReplayLimit int `yaml:"replay_limit"`
	// CacheMessages and CacheBytes bound the newest messages each open
	// conversation keeps in memory (a ring next to the stream): a resume
	// within them replays from memory, an older cursor reads the stream.
	// They bound the broker's memory per conversation.
	CacheMessages int `yaml:"cache_messages"`
	CacheBytes    int `yaml:"cache_bytes"`
}

// SessionsConfig is the resumable-session cache (in memory, snapshotted
// encrypted to <data_dir>/sessions.snap on SIGTERM).
type SessionsConfig struct {
	// MaxBytes is the cache's memory; old sessions are evicted beyond it.
	MaxBytes int `yaml:"max_bytes"`
	// Snapshot saves the cache on a graceful stop and restores it on start.
	Snapshot bool `yaml:"snapshot"`
}

// NATSStoreDir returns NATS.StoreDir, or nats in DataDir when it is empty.
func (c Config) NATSStoreDir() string {
	if c.NATS.StoreDir != "" {
		return c.NATS.StoreDir
	}
	return filepath.Join(c.DataDir, "nats")
}

// ShutdownConfig configures a graceful stop (SIGINT, SIGTERM).
type ShutdownConfig struct {
	// DrainTimeout is how long to wait, after the listener stops
	// accepting, for queued messages to be flushed before connections are
	// closed. 0 closes them at once.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// Default returns the defaults: every service on one machine, no network
// access needed.
func Default() Config {
	return Config{
		Listen:  ":8080",
		DataDir: "./data",
		Admin: AdminConfig{
			Listen: "127.0.0.1:9090",
			Pprof:  true,
		},
		Log: LogConfig{
			Level:  "info",
			Format: "text",
		},
		WebSocket: WebSocketConfig{
			MaxMessageBytes:  64 << 10,
			MaxHeaderBytes:   8 << 10,
			HandshakeTimeout: 10 * time.Second,
			IdleTimeout:      90 * time.Second,
			PingInterval:     30 * time.Second,
			MaxOutboundBytes: 1 << 20,
		},
		Auth: AuthConfig{
			AllowAnonymous:  true,
			VisitorTokenTTL: 24 * time.Hour,
			AgentTokenTTL:   24 * time.Hour,
			ResumeTTL:       10 * time.Minute,
		},
		Broker: BrokerConfig{
			DefaultAgentCapacity: 5,
			QueueSize:            4096,
			MaxQueue:             10000,
			PositionExact:        100,
			PositionStep:         10,
		},
		NATS: NATSConfig{
			Replicas: 1,
		},
		Cluster: ClusterConfig{
			Name: "unigate",
		},
		History: HistoryConfig{
			MaxAge:                    30 * 24 * time.Hour,
			MaxMsgsPerConversation:    10000,
			DuplicateWindow:           2 * time.Minute,
			MaxPendingPerConversation: 64,
			ReplayLimit:               256,
			CacheMessages:             64,
			CacheBytes:                64 << 10,
		},
		Sessions: SessionsConfig{
			MaxBytes: 64 << 20,
			Snapshot: true,
		},
		Shutdown: ShutdownConfig{
			DrainTimeout: 10 * time.Second,
		},
		Backends: BackendsConfig{
			Bot:               "faq",
			BotThreshold:      0.8,
			Router:            "builtin",
			RouterSkill:       0.5,
			RouterGeo:         0.3,
			RouterSentiment:   0.2,
			HookEventQueue:    10000,
			HookAuthCacheTTL:  time.Minute,
			HookAuthCacheSize: 10000,
			CallTimeout:       2 * time.Second,
			MaxConcurrent:     64,
			FailureThreshold:  5,
			CoolDown:          10 * time.Second,
			RestartMax:        30 * time.Second,
		},
		Crypto: CryptoConfig{
			Suites:     []string{"GM-PQ", "GM", "INTL-PQ"},
			RekeyAfter: 1 << 24,
			Tickets:    true,
			TicketTTL:  12 * time.Hour,
		},
		Limits: LimitsConfig{
			FDReserve:                 256,
			ReadyHighWater:            90,
			AcceptRate:                1000,
			AcceptBurst:               2000,
			PerIPConnections:          1000,
			PerIPRate:                 50,
			PerIPBurst:                200,
			IdentityConnections:       20,
			IdentityRate:              5,
			IdentityBurst:             20,
			AnonymousPerIPConnections: 200,
			AnonymousPerIPRate:        10,
			AnonymousPerIPBurst:       100,
			TypingRate:                10,
			TypingBurst:               20,
			PresenceRate:              2,
			PresenceBurst:             10,
			MaxTrackedKeys:            65536,
			MessageRate:               50,
			MessageBurst:              200,
			ByteRate:                  262144,
			ByteBurst:                 1048576,
		},
	}
}

// KeyPath returns the HMAC key file: Auth.KeyFile, or hmac.key in DataDir
// when it is empty.
func (c Config) KeyPath() string {
	if c.Auth.KeyFile != "" {
		return c.Auth.KeyFile
	}
	return filepath.Join(c.DataDir, "hmac.key")
}

// EventLoopCount returns EventLoops, or GOMAXPROCS when it is 0.
func (c Config) EventLoopCount() int {
	if c.EventLoops > 0 {
		return c.EventLoops
	}
	return runtime.GOMAXPROCS(0)
}

// ShardCount returns Shards, or 4 × GOMAXPROCS when it is 0.
func (b BrokerConfig) ShardCount() int {
	if b.Shards > 0 {
		return b.Shards
	}
	return 4 * runtime.GOMAXPROCS(0)
}

// OriginAllowed reports whether a WebSocket upgrade carrying this Origin
// header may proceed. An empty origin (no header: not a browser) and an
// empty AllowedOrigins list allow everything. Matching ignores case; an
// entry "https://*.example.com" matches any subdomain of example.com over
// https, but not example.com itself.
func (w WebSocketConfig) OriginAllowed(origin string) bool {
	return origin == "" || len(w.AllowedOrigins) == 0 || originMatches(w.AllowedOrigins, origin)
}

// TenantOriginCheck compiles TenantOrigins into the check done at a
// hello: whether a browser page of origin may act for tenant. An empty
// origin, or a tenant without entries, is allowed (the upgrade already
// passed OriginAllowed). It returns nil when TenantOrigins is empty.
// Entries that Validate refuses are skipped.
func (w WebSocketConfig) TenantOriginCheck() func(tenant, origin string) bool {
	if len(w.TenantOrigins) == 0 {
		return nil
	}
	byTenant := map[string][]string{}
	for _, e := range w.TenantOrigins {
		tenant, origin, ok := splitTenantOrigin(e)
		if ok {
			byTenant[tenant] = append(byTenant[tenant], origin)
		}
	}
	return func(tenant, origin string) bool {
		list, restricted := byTenant[tenant]
		return origin == "" || !restricted || originMatches(list, origin)
	}
}

// splitTenantOrigin splits a TenantOrigins entry "tenant=origin".
func splitTenantOrigin(e string) (tenant, origin string, ok bool) {
	tenant, origin, ok = strings.Cut(strings.TrimSpace(e), "=")
	tenant, origin = strings.TrimSpace(tenant), strings.TrimSpace(origin)
	return tenant, origin, ok && tenant != "" && validOrigin(origin)
}

// originMatches reports whether origin matches an entry of list (see
// OriginAllowed for the wildcard form).
func originMatches(list []string, origin string) bool {
	for _, allowed := range list {
		if strings.EqualFold(origin, allowed) {
			return true
		}
		scheme, host, ok := strings.Cut(allowed, "://*.")
		if !ok {
			continue
		}
		prefix := scheme + "://"
		suffix := "." + host
		if len(origin) > len(prefix)+len(suffix) &&
			strings.EqualFold(origin[:len(prefix)], prefix) &&
			strings.EqualFold(origin[len(origin)-len(suffix):], suffix) &&
			!strings.ContainsAny(origin[len(prefix):len(origin)-len(suffix)], "/@?#") {
			return true
		}
	}
	return false
}

// Logger returns a logger writing to w at Log.Level in Log.Format. An
// invalid level or format (which Validate reports) falls back to info and
// text.
func (c Config) Logger(w io.Writer) *slog.Logger {
	level, ok := parseLevel(c.Log.Level)
	if !ok {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if strings.EqualFold(c.Log.Format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// parseLevel accepts the four level names, in any case.
func parseLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

// validOrigin reports whether s is an AllowedOrigins entry:
// scheme://host[:port] with scheme http or https, optionally with "*." in
// front of the host.
func validOrigin(s string) bool {
	u, err := url.Parse(strings.Replace(s, "://*.", "://wildcard.", 1))
	if err != nil || u.Opaque != "" || u.User != nil || u.Host == "" ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return false
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return false
	}
	return !strings.Contains(u.Host, "*") && strings.Count(s, "*") <= 1
}

// ParseRegion splits a backends.regions entry, "CIDR=region".
func ParseRegion(e string) (netip.Prefix, string, error) {
	cidr, region, ok := strings.Cut(e, "=")
	if !ok || strings.TrimSpace(region) == "" {
		return netip.Prefix{}, "", fmt.Errorf("want CIDR=region, got %q", e)
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
	if err != nil {
		return netip.Prefix{}, "", fmt.Errorf("bad CIDR in %q: %v", e, err)
	}
	return p.Masked(), strings.TrimSpace(region), nil
}
