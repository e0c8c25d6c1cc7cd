package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"
)

// Validate reports every field with an unusable value, each error naming
// the field by its YAML path; the errors are joined with errors.Join and
// each wraps ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalid, path, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(path, addr string) {
		if err := checkListenAddr(addr); err != nil {
			bad(path, "%v", err)
		}
	}
	positive := func(path string, d time.Duration) {
		if d <= 0 {
			bad(path, "must be positive, got %v", d)
		}
	}

	checkAddr("listen", c.Listen)
	if c.EventLoops < 0 {
		bad("event_loops", "must be 0 (one per core) or more, got %d", c.EventLoops)
	}
	if c.MaxConnections < 0 {
		bad("max_connections", "must be 0 (no cap) or more, got %d", c.MaxConnections)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		bad("data_dir", "must not be empty")
	}

	if c.Admin.Listen != "" {
		checkAddr("admin.listen", c.Admin.Listen)
		if c.Admin.Listen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
			bad("admin.listen", "must differ from listen (%s)", c.Listen)
		}
	}

	if _, ok := parseLevel(c.Log.Level); !ok {
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if f := strings.ToLower(c.Log.Format); f != "text" && f != "json" {
		bad("log.format", "must be text or json, got %q", c.Log.Format)
	}

	ws := c.WebSocket
	// Welcome announces the limit as a uint32.
	if ws.MaxMessageBytes < 1 || uint64(ws.MaxMessageBytes) > math.MaxUint32 {
		bad("websocket.max_message_bytes", "must be between 1 and %d, got %d", uint32(math.MaxUint32), ws.MaxMessageBytes)
	}
	if ws.MaxHeaderBytes < 512 {
		bad("websocket.max_header_bytes", "must be at least 512 (a browser's upgrade request does not fit in less), got %d", ws.MaxHeaderBytes)
	}
	positive("websocket.handshake_timeout", ws.HandshakeTimeout)
	positive("websocket.idle_timeout", ws.IdleTimeout)
	positive("websocket.ping_interval", ws.PingInterval)
	if ws.PingInterval > 0 && ws.IdleTimeout > 0 && ws.PingInterval >= ws.IdleTimeout {
		bad("websocket.ping_interval", "must be shorter than websocket.idle_timeout (%v), or healthy quiet connections are closed; got %v", ws.IdleTimeout, ws.PingInterval)
	}
	if ws.MaxOutboundBytes < ws.MaxMessageBytes || ws.MaxOutboundBytes < 1 {
		bad("websocket.max_outbound_bytes", "must be at least websocket.max_message_bytes (%d) so one message fits, got %d", ws.MaxMessageBytes, ws.MaxOutboundBytes)
	}
	for i, o := range ws.AllowedOrigins {
		if !validOrigin(o) {
			bad(fmt.Sprintf("websocket.allowed_origins[%d]", i), "must look like https://example.com or https://*.example.com (scheme and host, no path), got %q", o)
		}
	}
	for i, e := range ws.TenantOrigins {
		if _, _, ok := splitTenantOrigin(e); !ok {
			bad(fmt.Sprintf("websocket.tenant_origins[%d]", i), "must look like acme=https://shop.example.com (a tenant, '=', an origin as in allowed_origins), got %q", e)
		}
	}

	positive("auth.visitor_token_ttl", c.Auth.VisitorTokenTTL)
	positive("auth.agent_token_ttl", c.Auth.AgentTokenTTL)
	positive("auth.resume_ttl", c.Auth.ResumeTTL)

	if c.Broker.Shards < 0 {
		bad("broker.shards", "must be 0 (4 × GOMAXPROCS) or more, got %d", c.Broker.Shards)
	}
	if c.Broker.DefaultAgentCapacity < 1 {
		bad("broker.default_agent_capacity", "must be at least 1, got %d", c.Broker.DefaultAgentCapacity)
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		bad("nats.replicas", "must be from 1 to 5 (JetStream's limit), got %d", c.NATS.Replicas)
	}
	if cl := c.Cluster; cl.Listen != "" {
		checkAddr("cluster.listen", cl.Listen)
		if c.NATS.URL != "" {
			bad("cluster.listen", "must be empty with nats.url: an external NATS cluster does its own routing")
		}
		if strings.TrimSpace(cl.NodeName) == "" {
			bad("cluster.node_name", "must name this node (unique, stable across restarts) when cluster.listen is set")
		}
		if strings.TrimSpace(cl.Name) == "" {
			bad("cluster.name", "must not be empty when cluster.listen is set")
		}
		for i, r := range cl.Routes {
			if _, _, err := net.SplitHostPort(strings.TrimPrefix(r, "nats-route://")); err != nil {
				bad(fmt.Sprintf("cluster.routes[%d]", i), "want host:port, got %q", r)
			}
		}
	} else if len(c.Cluster.Routes) > 0 {
		bad("cluster.routes", "needs cluster.listen (this node must accept routes too)")
	}
	if c.Cluster.NodeName != "" && strings.ContainsAny(c.Cluster.NodeName, " \t\r\n.*>") {
		bad("cluster.node_name", "must not contain white space, '.', '*' or '>', got %q", c.Cluster.NodeName)
	}
	if c.History.MaxAge < 0 {
		bad("history.max_age", "must be 0 (no limit) or more, got %s", c.History.MaxAge)
	}
	if c.History.MaxBytes < 0 {
		bad("history.max_bytes", "must be 0 (no limit) or more, got %d", c.History.MaxBytes)
	}
	if c.History.MaxMsgsPerConversation < 0 {
		bad("history.max_msgs_per_conversation", "must be 0 (no limit) or more, got %d", c.History.MaxMsgsPerConversation)
	}
	if c.History.DuplicateWindow <= 0 {
		bad("history.duplicate_window", "must be positive, got %s", c.History.DuplicateWindow)
	}
	if c.History.MaxPendingPerConversation < 1 {
		bad("history.max_pending_per_conversation", "must be at least 1, got %d", c.History.MaxPendingPerConversation)
	}
	if c.History.ReplayLimit < 1 {
		bad("history.replay_limit", "must be at least 1, got %d", c.History.ReplayLimit)
	}
	if c.History.CacheMessages < 1 {
		bad("history.cache_messages", "must be at least 1, got %d", c.History.CacheMessages)
	}
	if c.History.CacheBytes < 1024 {
		bad("history.cache_bytes", "must be at least 1024, got %d", c.History.CacheBytes)
	}
	if c.Sessions.MaxBytes < 1<<20 {
		bad("sessions.max_bytes", "must be at least 1048576, got %d", c.Sessions.MaxBytes)
	}
	if c.Broker.QueueSize < 1 {
		bad("broker.queue_size", "must be at least 1, got %d", c.Broker.QueueSize)
	}
	if c.Broker.MaxQueue < 1 {
		bad("broker.max_queue", "must be at least 1, got %d", c.Broker.MaxQueue)
	}
	if c.Broker.PositionExact < 1 {
		bad("broker.position_exact", "must be at least 1, got %d", c.Broker.PositionExact)
	}
	if c.Broker.PositionStep < 1 {
		bad("broker.position_step", "must be at least 1, got %d", c.Broker.PositionStep)
	}

	l := c.Limits
	for _, f := range []struct {
		path string
		v    int
	}{
		{"limits.fd_reserve", l.FDReserve}, {"limits.accept_rate", l.AcceptRate}, {"limits.accept_burst", l.AcceptBurst},
		{"limits.per_ip_connections", l.PerIPConnections}, {"limits.per_ip_rate", l.PerIPRate}, {"limits.per_ip_burst", l.PerIPBurst},
		{"limits.identity_connections", l.IdentityConnections}, {"limits.identity_rate", l.IdentityRate},
		{"limits.identity_burst", l.IdentityBurst}, {"limits.message_rate", l.MessageRate},
		{"limits.message_burst", l.MessageBurst}, {"limits.byte_rate", l.ByteRate}, {"limits.byte_burst", l.ByteBurst},
		{"limits.anonymous_per_ip_connections", l.AnonymousPerIPConnections}, {"limits.anonymous_per_ip_rate", l.AnonymousPerIPRate},
		{"limits.anonymous_per_ip_burst", l.AnonymousPerIPBurst}, {"limits.typing_rate", l.TypingRate},
		{"limits.typing_burst", l.TypingBurst}, {"limits.presence_rate", l.PresenceRate}, {"limits.presence_burst", l.PresenceBurst},
	} {
		if f.v < 0 {
			bad(f.path, "must be 0 (no limit) or more, got %d", f.v)
		}
	}
	if l.ReadyHighWater < 1 || l.ReadyHighWater > 100 {
		bad("limits.ready_high_water", "must be a percentage from 1 to 100, got %d", l.ReadyHighWater)
	}
	if l.MaxTrackedKeys < 64 {
		bad("limits.max_tracked_keys", "must be at least 64, got %d", l.MaxTrackedKeys)
	}
	for _, r := range []struct {
		rate, burst string
		r, b        int
	}{
		{"limits.accept_rate", "limits.accept_burst", l.AcceptRate, l.AcceptBurst},
		{"limits.per_ip_rate", "limits.per_ip_burst", l.PerIPRate, l.PerIPBurst},
		{"limits.identity_rate", "limits.identity_burst", l.IdentityRate, l.IdentityBurst},
		{"limits.message_rate", "limits.message_burst", l.MessageRate, l.MessageBurst},
		{"limits.anonymous_per_ip_rate", "limits.anonymous_per_ip_burst", l.AnonymousPerIPRate, l.AnonymousPerIPBurst},
		{"limits.typing_rate", "limits.typing_burst", l.TypingRate, l.TypingBurst},
		{"limits.presence_rate", "limits.presence_burst", l.PresenceRate, l.PresenceBurst},
	} {
		if r.r > 0 && r.b > 0 && r.b < r.r {
			bad(r.burst, "must be 0 (= %s) or at least %s (%d), got %d", r.rate, r.rate, r.r, r.b)
		}
	}
	if _, err := Prefixes(l.AllowList); err != nil {
		bad("limits.allow_list", "%v", err)
	}
	if _, err := Prefixes(l.TrustedProxies); err != nil {
		bad("limits.trusted_proxies", "%v", err)
	}
	if l.ProxyProtocol && len(l.TrustedProxies) == 0 {
		bad("limits.proxy_protocol", "needs limits.trusted_proxies: a PROXY header is only accepted from them")
	}

	inline := map[string]int{}
	for i, k := range c.API.Keys {
		path := fmt.Sprintf("api.keys[%d]", i)
		switch {
		case (k.Key == "") == (k.KeyFile == ""):
			bad(path, "set exactly one of key and key_file")
		case k.Key != "" && len(strings.TrimSpace(k.Key)) < MinAPIKeyLen:
			bad(path+".key", "must be at least %d characters (use a random secret)", MinAPIKeyLen)
		case k.Key != "":
			if j, dup := inline[strings.TrimSpace(k.Key)]; dup {
				bad(path+".key", "same key as api.keys[%d]", j)
			}
			inline[strings.TrimSpace(k.Key)] = i
		}
		if strings.TrimSpace(k.Tenant) == "" || len(k.Tenant) > 128 {
			bad(path+".tenant", "must name a tenant (1 to 128 bytes), got %q", k.Tenant)
		}
		if len(k.Scopes) == 0 {
			bad(path+".scopes", "must list at least one of %s, %s", ScopeRead, ScopeWrite)
		}
		for _, s := range k.Scopes {
			if s != ScopeRead && s != ScopeWrite {
				bad(path+".scopes", "unknown scope %q (want %s or %s)", s, ScopeRead, ScopeWrite)
			}
		}
	}

	if n := len(c.Web.CannedReplies); n > MaxCannedReplies {
		bad("web.canned_replies", "at most %d replies, got %d", MaxCannedReplies, n)
	}
	for i, r := range c.Web.CannedReplies {
		if strings.TrimSpace(r) == "" || len(r) > MaxCannedReplyBytes {
			bad(fmt.Sprintf("web.canned_replies[%d]", i), "must be 1 to %d bytes of text, got %d", MaxCannedReplyBytes, len(r))
		}
	}

	cr := c.Crypto
	knownSuite := map[string]bool{"GM": true, "GM-PQ": true, "INTL-PQ": true}
	if cr.Enabled && len(cr.IdentityKeys) == 0 {
		bad("crypto.identity_keys", "must name at least one key file (unigate keygen) when crypto.enabled is set")
	}
	if cr.Enabled && len(cr.Suites) == 0 {
		bad("crypto.suites", "must list at least one of GM-PQ, GM, INTL-PQ when crypto.enabled is set")
	}
	for i, s := range cr.Suites {
		if !knownSuite[s] {
			bad(fmt.Sprintf("crypto.suites[%d]", i), "unknown suite %q (want GM-PQ, GM or INTL-PQ)", s)
		}
	}
	if (cr.Required || len(cr.RequiredTenants) > 0) && !cr.Enabled {
		bad("crypto.required", "crypto.required and crypto.required_tenants need crypto.enabled")
	}
	if cr.RekeyAfter < 1 || uint64(cr.RekeyAfter) > math.MaxUint32 {
		bad("crypto.rekey_after", "must be between 1 and %d records, got %d", uint32(math.MaxUint32), cr.RekeyAfter)
	}
	if cr.Tickets && cr.TicketTTL <= 0 {
		bad("crypto.ticket_ttl", "must be positive when crypto.tickets is set, got %v", cr.TicketTTL)
	}
	if r := cr.TicketRotation; r < 0 || r > 0 && (r < MinTicketRotation || r < cr.TicketTTL/32) {
		bad("crypto.ticket_rotation", "must be 0 (= crypto.ticket_ttl) or at least %v and crypto.ticket_ttl/32 (%v), got %v",
			MinTicketRotation, cr.TicketTTL/32, r)
	}

	bk := c.Backends
	switch bk.Bot {
	case "faq", "off":
	case "plugin":
		if bk.BotPlugin == "" {
			bad("backends.bot_plugin", "must name the bot plugin executable when backends.bot is plugin")
		}
	default:
		bad("backends.bot", "must be faq, plugin or off, got %q", bk.Bot)
	}
	if bk.BotThreshold < 0 || bk.BotThreshold > 1 {
		bad("backends.bot_threshold", "must be between 0 and 1, got %v", bk.BotThreshold)
	}
	switch bk.Router {
	case "builtin", "off":
	case "plugin":
		if bk.RouterPlugin == "" {
			bad("backends.router_plugin", "must name the router plugin executable when backends.router is plugin")
		}
	default:
		bad("backends.router", "must be builtin, plugin or off, got %q", bk.Router)
	}
	for _, pl := range []struct {
		name      string
		args, env []string
	}{
		{"bot", bk.BotPluginArgs, bk.BotPluginEnv},
		{"router", bk.RouterPluginArgs, bk.RouterPluginEnv},
		{"hook", bk.HookPluginArgs, bk.HookPluginEnv},
	} {
		for i, a := range pl.args {
			if strings.IndexByte(a, 0) >= 0 {
				bad(fmt.Sprintf("backends.%s_plugin_args[%d]", pl.name, i), "must not contain a NUL byte")
			}
		}
		seen := map[string]bool{}
		for i, kv := range pl.env {
			field := fmt.Sprintf("backends.%s_plugin_env[%d]", pl.name, i)
			key, err := CheckPluginEnv(kv)
			switch {
			case err != nil:
				bad(field, "%v", err)
			case seen[key]:
				bad(field, "sets %s a second time", key)
			}
			seen[key] = true
		}
	}
	if bk.RouterSkill < 0 || bk.RouterGeo < 0 || bk.RouterSentiment < 0 {
		bad("backends.router_skill", "router weights must not be negative")
	}
	for i, r := range bk.Regions {
		if _, _, err := ParseRegion(r); err != nil {
			bad(fmt.Sprintf("backends.regions[%d]", i), "%v", err)
		}
	}
	if bk.CallTimeout <= 0 || bk.CoolDown <= 0 || bk.RestartMax <= 0 {
		bad("backends.call_timeout", "call_timeout, cool_down and restart_max must be positive")
	}
	if bk.HookEventQueue < 1 {
		bad("backends.hook_event_queue", "must be at least 1, got %d", bk.HookEventQueue)
	}
	if bk.HookAuthCacheTTL < 0 {
		bad("backends.hook_auth_cache_ttl", "must be 0 (off) or more, got %v", bk.HookAuthCacheTTL)
	}
	if bk.HookAuthCacheSize < 1 {
		bad("backends.hook_auth_cache_size", "must be at least 1, got %d", bk.HookAuthCacheSize)
	}
	if bk.MaxConcurrent < 1 || bk.FailureThreshold < 1 {
		bad("backends.max_concurrent", "max_concurrent and failure_threshold must be at least 1")
	}

	if c.Shutdown.DrainTimeout < 0 {
		bad("shutdown.drain_timeout", "must be 0 (no wait) or more, got %v", c.Shutdown.DrainTimeout)
	}
	return errors.Join(errs...)
}

// MinAPIKeyLen is the shortest API key Validate accepts.
const MinAPIKeyLen = 16

// checkListenAddr accepts host:port with a numeric port; the host may be
// empty (all interfaces).
func checkListenAddr(addr string) error {
	if addr == "" {
		return errors.New("must not be empty (host:port, e.g. :8080)")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port such as :8080 or 127.0.0.1:9090, got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port must be a number from 0 to 65535, got %q", port)
	}
	return nil
}

// pluginCookie is the variable go-plugin's handshake sets for a plugin
// (backends.Handshake.MagicCookieKey; cmd/unigate's tests check they
// agree).
const pluginCookie = "UNIGATE_BACKEND_PLUGIN"

// maxEnvKey bounds the name of a plugin's environment variable.
const maxEnvKey = 256

// CheckPluginEnv checks one entry of a plugin's environment
// (backends.*_plugin_env) and returns its name: "KEY=value" with a
// portable name (letters, digits and '_', not starting with a digit, at
// most 256 bytes), no NUL byte, and not a variable go-plugin sets itself
// (its handshake cookie UNIGATE_BACKEND_PLUGIN, PLUGIN_*), which the plugin
// could not start without.
func CheckPluginEnv(kv string) (string, error) {
	key, value, ok := strings.Cut(kv, "=")
	switch {
	case !ok:
		return "", fmt.Errorf("want KEY=value, got %q", kv)
	case key == "" || len(key) > maxEnvKey:
		return "", fmt.Errorf("the variable's name must be 1 to %d bytes, got %q", maxEnvKey, kv)
	case key[0] >= '0' && key[0] <= '9':
		return "", fmt.Errorf("the variable's name %q starts with a digit", key)
	case strings.IndexByte(value, 0) >= 0:
		return "", fmt.Errorf("the value of %s contains a NUL byte", key)
	case key == pluginCookie || strings.HasPrefix(key, "PLUGIN_"):
		return "", fmt.Errorf("%s is set by the plugin handshake itself", key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return "", fmt.Errorf("the variable's name %q may hold letters, digits and '_' only", key)
		}
	}
	return key, nil
}
