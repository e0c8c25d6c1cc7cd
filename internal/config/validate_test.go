package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateAccepts(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
	}{
		{"defaults", func(*Config) {}},
		{"admin disabled", func(c *Config) { c.Admin.Listen = "" }},
		{"ephemeral ports", func(c *Config) { c.Listen, c.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0" }},
		{"ipv6", func(c *Config) { c.Listen = "[::1]:8080" }},
		{"hostname", func(c *Config) { c.Admin.Listen = "localhost:9090" }},
		{"upper-case level and format", func(c *Config) { c.Log.Level, c.Log.Format = "WARN", "JSON" }},
		{"explicit counts", func(c *Config) { c.EventLoops, c.Broker.Shards, c.MaxConnections = 2, 8, 10000 }},
		{"outbound equals message", func(c *Config) { c.WebSocket.MaxOutboundBytes = c.WebSocket.MaxMessageBytes }},
		{"origins", func(c *Config) {
			c.WebSocket.AllowedOrigins = []string{"https://a.test", "http://localhost:3000", "https://*.b.test"}
		}},
		{"no drain", func(c *Config) { c.Shutdown.DrainTimeout = 0 }},
		{"auth cache off", func(c *Config) { c.Backends.HookAuthCacheTTL = 0 }},
		{"anonymous off", func(c *Config) { c.Auth.AllowAnonymous = false }},
		{"limits off", func(c *Config) {
			c.Limits.AcceptRate, c.Limits.PerIPConnections, c.Limits.PerIPRate, c.Limits.MessageRate, c.Limits.ByteRate = 0, 0, 0, 0, 0
		}},
		{"burst 0 means the rate", func(c *Config) { c.Limits.PerIPBurst, c.Limits.MessageBurst = 0, 0 }},
		{"proxies", func(c *Config) {
			c.Limits.TrustedProxies = []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32"}
			c.Limits.AllowList = []string{"203.0.113.0/24"}
			c.Limits.ProxyProtocol = true
		}},
		{"router plugin", func(c *Config) { c.Backends.Router, c.Backends.RouterPlugin = "plugin", "/usr/lib/unigate/router" }},
		{"plugin args and env", func(c *Config) {
			c.Backends.Bot, c.Backends.BotPlugin = "plugin", "/usr/lib/unigate/bot"
			c.Backends.BotPluginArgs = []string{"--model", "qwen 7b", ""}
			c.Backends.BotPluginEnv = []string{"LLM_URL=http://127.0.0.1:8000/v1", "EMPTY=", "_x1=a=b", "UNIGATE_PASSED=explicit"}
			c.Backends.HookPluginEnv = []string{"LLM_URL=another plugin, another value"}
		}},
		{"crypto required for a tenant", func(c *Config) {
			c.Crypto.Enabled, c.Crypto.IdentityKeys, c.Crypto.RequiredTenants = true, []string{"sm2.pem"}, []string{"bank"}
			c.Crypto.Suites = []string{"GM"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.modify(&c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v", err)
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		field  string // the path the only error must name
		modify func(*Config)
	}{
		{"listen", func(c *Config) { c.Listen = "" }},
		{"backends.router_plugin", func(c *Config) { c.Backends.Router = "plugin" }},
		{"backends.router", func(c *Config) { c.Backends.Router = "remote" }},
		{"backends.bot_plugin_args[1]", func(c *Config) { c.Backends.BotPluginArgs = []string{"ok", "nul\x00"} }},
		{"backends.bot_plugin_env[0]", func(c *Config) { c.Backends.BotPluginEnv = []string{"NOEQUALS"} }},
		{"backends.bot_plugin_env[0]", func(c *Config) { c.Backends.BotPluginEnv = []string{"=value"} }},
		{"backends.router_plugin_env[0]", func(c *Config) { c.Backends.RouterPluginEnv = []string{"1ST=x"} }},
		{"backends.router_plugin_env[0]", func(c *Config) { c.Backends.RouterPluginEnv = []string{"A-B=x"} }},
		{"backends.router_plugin_env[0]", func(c *Config) { c.Backends.RouterPluginEnv = []string{"A B=x"} }},
		{"backends.hook_plugin_env[0]", func(c *Config) { c.Backends.HookPluginEnv = []string{"K=nul\x00"} }},
		{"backends.hook_plugin_env[1]", func(c *Config) { c.Backends.HookPluginEnv = []string{"K=1", "K=2"} }},
		{"backends.hook_plugin_env[0]", func(c *Config) { c.Backends.HookPluginEnv = []string{"UNIGATE_BACKEND_PLUGIN=x"} }},
		{"backends.hook_plugin_env[0]", func(c *Config) { c.Backends.HookPluginEnv = []string{"PLUGIN_MIN_PORT=1"} }},
		{"backends.hook_plugin_env[0]", func(c *Config) { c.Backends.HookPluginEnv = []string{strings.Repeat("K", 257) + "=x"} }},
		{"backends.hook_plugin_args[0]", func(c *Config) { c.Backends.HookPluginArgs = []string{"\x00"} }},
		{"backends.hook_event_queue", func(c *Config) { c.Backends.HookEventQueue = 0 }},
		{"backends.hook_auth_cache_ttl", func(c *Config) { c.Backends.HookAuthCacheTTL = -time.Second }},
		{"backends.hook_auth_cache_size", func(c *Config) { c.Backends.HookAuthCacheSize = 0 }},
		{"listen", func(c *Config) { c.Listen = "8080" }},
		{"listen", func(c *Config) { c.Listen = ":http" }},
		{"listen", func(c *Config) { c.Listen = ":65536" }},
		{"event_loops", func(c *Config) { c.EventLoops = -1 }},
		{"crypto.identity_keys", func(c *Config) { c.Crypto.Enabled = true }},
		{"crypto.suites[1]", func(c *Config) { c.Crypto.Suites = []string{"GM", "RSA"} }},
		{"crypto.required", func(c *Config) { c.Crypto.Required = true }},
		{"crypto.rekey_after", func(c *Config) { c.Crypto.RekeyAfter = 0 }},
		{"crypto.ticket_ttl", func(c *Config) { c.Crypto.TicketTTL = 0 }},
		{"crypto.ticket_rotation", func(c *Config) { c.Crypto.TicketRotation = -time.Second }},
		{"crypto.ticket_rotation", func(c *Config) { c.Crypto.TicketRotation = 30 * time.Second }},
		{"crypto.ticket_rotation", func(c *Config) { c.Crypto.TicketTTL, c.Crypto.TicketRotation = 64*time.Hour, time.Hour }},
		{"max_connections", func(c *Config) { c.MaxConnections = -1 }},
		{"limits.per_ip_connections", func(c *Config) { c.Limits.PerIPConnections = -1 }},
		{"limits.per_ip_burst", func(c *Config) { c.Limits.PerIPBurst = c.Limits.PerIPRate - 1 }},
		{"limits.ready_high_water", func(c *Config) { c.Limits.ReadyHighWater = 0 }},
		{"limits.ready_high_water", func(c *Config) { c.Limits.ReadyHighWater = 101 }},
		{"limits.max_tracked_keys", func(c *Config) { c.Limits.MaxTrackedKeys = 10 }},
		{"limits.allow_list", func(c *Config) { c.Limits.AllowList = []string{"10.0.0.0/33"} }},
		{"limits.trusted_proxies", func(c *Config) { c.Limits.TrustedProxies = []string{"proxy.example.com"} }},
		{"limits.proxy_protocol", func(c *Config) { c.Limits.ProxyProtocol = true }},
		{"data_dir", func(c *Config) { c.DataDir = " " }},
		{"admin.listen", func(c *Config) { c.Admin.Listen = "localhost" }},
		{"admin.listen", func(c *Config) { c.Admin.Listen = c.Listen }},
		{"log.level", func(c *Config) { c.Log.Level = "verbose" }},
		{"log.level", func(c *Config) { c.Log.Level = "" }},
		{"log.format", func(c *Config) { c.Log.Format = "xml" }},
		{"websocket.max_message_bytes", func(c *Config) { c.WebSocket.MaxMessageBytes = 0 }},
		{"websocket.max_message_bytes", func(c *Config) {
			c.WebSocket.MaxMessageBytes = 1 << 32
			c.WebSocket.MaxOutboundBytes = 1 << 33
		}},
		{"websocket.max_header_bytes", func(c *Config) { c.WebSocket.MaxHeaderBytes = 100 }},
		{"websocket.handshake_timeout", func(c *Config) { c.WebSocket.HandshakeTimeout = 0 }},
		{"websocket.idle_timeout", func(c *Config) {
			c.WebSocket.IdleTimeout = -time.Second
		}},
		{"websocket.ping_interval", func(c *Config) { c.WebSocket.PingInterval = 0 }},
		{"websocket.ping_interval", func(c *Config) { c.WebSocket.PingInterval = c.WebSocket.IdleTimeout }},
		{"websocket.max_outbound_bytes", func(c *Config) { c.WebSocket.MaxOutboundBytes = c.WebSocket.MaxMessageBytes - 1 }},
		{"websocket.allowed_origins[1]", func(c *Config) {
			c.WebSocket.AllowedOrigins = []string{"https://ok.test", "https://bad.test/path"}
		}},
		{"websocket.allowed_origins[0]", func(c *Config) { c.WebSocket.AllowedOrigins = []string{"ok.test"} }},
		{"websocket.allowed_origins[0]", func(c *Config) { c.WebSocket.AllowedOrigins = []string{"ftp://ok.test"} }},
		{"websocket.tenant_origins[0]", func(c *Config) { c.WebSocket.TenantOrigins = []string{"https://ok.test"} }},
		{"websocket.tenant_origins[1]", func(c *Config) {
			c.WebSocket.TenantOrigins = []string{"acme=https://ok.test", "=https://ok.test"}
		}},
		{"websocket.tenant_origins[0]", func(c *Config) { c.WebSocket.TenantOrigins = []string{"acme=https://ok.test/path"} }},
		{"websocket.allowed_origins[0]", func(c *Config) { c.WebSocket.AllowedOrigins = []string{"https://a.*.test"} }},
		{"websocket.allowed_origins[0]", func(c *Config) { c.WebSocket.AllowedOrigins = []string{"*"} }},
		{"websocket.allowed_origins[0]", func(c *Config) { c.WebSocket.AllowedOrigins = []string{""} }},
		{"auth.visitor_token_ttl", func(c *Config) { c.Auth.VisitorTokenTTL = 0 }},
		{"auth.agent_token_ttl", func(c *Config) { c.Auth.AgentTokenTTL = -time.Hour }},
		{"auth.resume_ttl", func(c *Config) { c.Auth.ResumeTTL = 0 }},
		{"broker.shards", func(c *Config) { c.Broker.Shards = -4 }},
		{"broker.default_agent_capacity", func(c *Config) { c.Broker.DefaultAgentCapacity = 0 }},
		{"broker.queue_size", func(c *Config) { c.Broker.QueueSize = 0 }},
		{"broker.max_queue", func(c *Config) { c.Broker.MaxQueue = 0 }},
		{"broker.position_exact", func(c *Config) { c.Broker.PositionExact = 0 }},
		{"broker.position_step", func(c *Config) { c.Broker.PositionStep = -1 }},
		{"shutdown.drain_timeout", func(c *Config) { c.Shutdown.DrainTimeout = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			c := Default()
			tt.modify(&c)
			err := c.Validate()
			wantErr(t, err, ErrInvalid, tt.field+": ")
			if n := len(joined(err)); n != 1 {
				t.Errorf("%d errors, want exactly 1: %v", n, err)
			}
		})
	}
}

func TestValidateReportsAll(t *testing.T) {
	var zero Config
	err := zero.Validate()
	for _, field := range []string{"listen", "data_dir", "log.level", "log.format",
		"websocket.max_message_bytes", "auth.resume_ttl", "broker.queue_size"} {
		if !strings.Contains(err.Error(), field+": ") {
			t.Errorf("zero Config: no error for %s in\n%v", field, err)
		}
	}
}

// joined unwraps an errors.Join result.
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

func TestValidateCluster(t *testing.T) {
	ok := Default()
	ok.Cluster.Listen = "127.0.0.1:6222"
	ok.Cluster.NodeName = "n1"
	ok.Cluster.Routes = []string{"127.0.0.1:6223", "nats-route://10.0.0.3:6222"}
	ok.NATS.Replicas = 3
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid cluster config refused: %v", err)
	}
	if !ok.Clustered() || Default().Clustered() {
		t.Fatal("Clustered is wrong")
	}
	for name, edit := range map[string]func(*Config){
		"no node name":   func(c *Config) { c.Cluster.NodeName = "" },
		"bad node name":  func(c *Config) { c.Cluster.NodeName = "a.b" },
		"external too":   func(c *Config) { c.NATS.URL = "nats://x:4222" },
		"bad route":      func(c *Config) { c.Cluster.Routes = []string{"nohost"} },
		"replicas 0":     func(c *Config) { c.NATS.Replicas = 0 },
		"replicas 7":     func(c *Config) { c.NATS.Replicas = 7 },
		"routes only":    func(c *Config) { c.Cluster.Listen = "" },
		"bad listen":     func(c *Config) { c.Cluster.Listen = "nonsense" },
		"no clustername": func(c *Config) { c.Cluster.Name = " " },
	} {
		c := ok
		c.Cluster.Routes = append([]string(nil), ok.Cluster.Routes...)
		edit(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
}

// TestValidateCannedReplies: web.canned_replies are bounded in number and
// size, and none is blank.
func TestValidateCannedReplies(t *testing.T) {
	c := Default()
	c.Web.CannedReplies = []string{"您好，我是客服{me}。", "Your order ships within 2 working days."}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid replies refused: %v", err)
	}
	for _, tc := range []struct {
		name    string
		replies []string
		path    string
	}{
		{"blank", []string{"ok", "  "}, "web.canned_replies[1]"},
		{"too long", []string{strings.Repeat("x", MaxCannedReplyBytes+1)}, "web.canned_replies[0]"},
		{"too many", make([]string, MaxCannedReplies+1), "web.canned_replies:"},
	} {
		c := Default()
		c.Web.CannedReplies = tc.replies
		wantErr(t, c.Validate(), ErrInvalid, tc.path)
	}
}
