package config

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadFile(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(*Config)
	}{
		{"empty file", "", func(*Config) {}},
		{"comments only", "# nothing\n", func(*Config) {}},
		{"explicit document", "---\nlisten: :1\n...\n", func(c *Config) { c.Listen = ":1" }},
		{"top level", "listen: 0.0.0.0:80\nreuse_port: true\nevent_loops: 3\n", func(c *Config) {
			c.Listen, c.ReusePort, c.EventLoops = "0.0.0.0:80", true, 3
		}},
		{"nested", "admin:\n  pprof: false\nwebsocket:\n  idle_timeout: 2m\n  ping_interval: 1m30s\n", func(c *Config) {
			c.Admin.Pprof = false
			c.WebSocket.IdleTimeout = 2 * time.Minute
			c.WebSocket.PingInterval = 90 * time.Second
		}},
		{"flow style", "log: {level: debug, format: json}\n", func(c *Config) {
			c.Log = LogConfig{Level: "debug", Format: "json"}
		}},
		{"unset keeps sibling defaults", "admin:\n  listen: \"\"\n", func(c *Config) { c.Admin.Listen = "" }},
		{"number as string field", "listen: 8080\n", func(c *Config) { c.Listen = "8080" }},
		{"null keeps default", "listen:\nadmin:\nwebsocket: ~\n", func(*Config) {}},
		{"list", "websocket:\n  allowed_origins: [https://a.test, \"https://*.b.test\"]\n", func(c *Config) {
			c.WebSocket.AllowedOrigins = []string{"https://a.test", "https://*.b.test"}
		}},
		{"empty list is nil", "websocket:\n  allowed_origins: []\n", func(*Config) {}},
		{"yaml 1.1 boolean", "reuse_port: yes\n", func(c *Config) { c.ReusePort = true }},
		{"hex integer", "broker:\n  queue_size: 0x100\n", func(c *Config) { c.Broker.QueueSize = 256 }},
		{"zero duration", "shutdown:\n  drain_timeout: 0s\n", func(c *Config) { c.Shutdown.DrainTimeout = 0 }},
		{"anchors and merge keys", "" +
			"websocket: &ws\n  idle_timeout: 3m\n  ping_interval: 1m\n" +
			"shutdown:\n  <<: {drain_timeout: 1s}\n" +
			"auth:\n  <<: [{resume_ttl: 1m}, {agent_token_ttl: 2h}]\n  resume_ttl: 5m\n",
			func(c *Config) {
				c.WebSocket.IdleTimeout = 3 * time.Minute
				c.WebSocket.PingInterval = time.Minute
				c.Shutdown.DrainTimeout = time.Second
				c.Auth.ResumeTTL = 5 * time.Minute // explicit key beats the merge
				c.Auth.AgentTokenTTL = 2 * time.Hour
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustLoad(t, tt.yaml+"\n")
			want := Default()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		target    error
		fragments []string
	}{
		{"unknown top-level key", "listen: :1\nlisten_addr: :2\n", ErrUnknownKey,
			[]string{":2:1:", `"listen_addr"`, "at the top level"}},
		{"unknown nested key with hint", "admin:\n  pprof: true\n  lisen: :9\n", ErrUnknownKey,
			[]string{":3:3:", `"lisen"`, "in admin", `did you mean "listen"`}},
		{"bad duration", "websocket:\n  idle_timeout: 90\n", ErrBadValue,
			[]string{":2:17:", "websocket.idle_timeout", "duration", `"90"`}},
		{"bad duration unit", "auth:\n  resume_ttl: 10 minutes\n", ErrBadValue,
			[]string{"auth.resume_ttl", `"10 minutes"`}},
		{"bad integer", "broker:\n  shards: many\n", ErrBadValue,
			[]string{":2:11:", "broker.shards", "integer"}},
		{"integer overflow", "event_loops: 99999999999999999999\n", ErrBadValue,
			[]string{"event_loops"}},
		{"bad boolean", "admin:\n  pprof: perhaps\n", ErrBadValue,
			[]string{"admin.pprof", "true or false"}},
		{"mapping for leaf", "listen: {a: b}\n", ErrBadValue, []string{"listen", "single value"}},
		{"scalar for section", "websocket: fast\n", ErrBadValue, []string{"websocket must be a mapping"}},
		{"scalar for list", "websocket:\n  allowed_origins: https://a.test\n", ErrBadValue,
			[]string{"websocket.allowed_origins", "list"}},
		{"list of mappings", "websocket:\n  allowed_origins: [{a: b}]\n", ErrBadValue,
			[]string{"websocket.allowed_origins", "strings"}},
		{"top level list", "- listen\n", ErrBadValue, []string{"top level must be a mapping"}},
		{"duplicate key", "listen: :1\nlisten: :2\n", ErrBadValue, []string{":2:1:", "repeated", "line 1"}},
		{"two documents", "listen: :1\n---\nlisten: :2\n", ErrBadValue, []string{"second YAML document"}},
		{"self-referencing merge", "admin: &a\n  <<: *a\n", ErrBadValue, nil},
		{"every error reported", "bogus: 1\nwebsocket:\n  ping_interval: x\n", ErrUnknownKey,
			[]string{"bogus", "websocket.ping_interval"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tt.yaml), nil)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if tt.name == "self-referencing merge" && !errors.Is(err, ErrBadValue) {
				// The YAML parser may refuse the document itself; any
				// error without a hang or crash is right.
				return
			}
			wantErr(t, err, tt.target, append(tt.fragments, "unigate.yaml")...)
		})
	}
}

func TestLoadSyntaxError(t *testing.T) {
	_, err := Load(writeConfig(t, "listen: [\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "unigate.yaml") {
		t.Errorf("syntax error = %v, want one naming the file", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"), nil)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestLoadTooLarge(t *testing.T) {
	big := "# " + strings.Repeat("x", maxFileBytes) + "\n"
	_, err := Load(writeConfig(t, big), nil)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("err = %v", err)
	}
}

func TestAliasBomb(t *testing.T) {
	// Each level merges the previous one ten times: 10^6 mappings if
	// expanded. The walk gives up after a bounded number of steps.
	var b strings.Builder
	b.WriteString("x0: &l0 {}\n")
	for i := 1; i <= 6; i++ {
		prev := "*l" + string(rune('0'+i-1))
		b.WriteString("x" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + "\n  <<: [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(prev)
		}
		b.WriteString("]\n")
	}
	b.WriteString("admin:\n  <<: *l6\n")
	_, err := Load(writeConfig(t, b.String()), nil)
	if err == nil {
		t.Fatal("Load succeeded")
	}
}

// TestLoadPluginArgsEnv reads a plugin's arguments and environment from
// the file: lists kept verbatim (spaces, commas, '=' in values), empty
// lists as nil like the defaults; a malformed entry is refused with its
// field named.
func TestLoadPluginArgsEnv(t *testing.T) {
	got := mustLoad(t, `backends:
  bot: plugin
  bot_plugin: /usr/lib/unigate/llm-bot
  bot_plugin_args: ["--model", "qwen 7b, chat", "-v"]
  bot_plugin_env:
    - LLM_URL=http://127.0.0.1:8000/v1?a=b
    - LLM_KEY_FILE=/run/secrets/llm
  router_plugin_args: []
  hook_plugin_env: []
`)
	bk := got.Backends
	if !reflect.DeepEqual(bk.BotPluginArgs, []string{"--model", "qwen 7b, chat", "-v"}) ||
		!reflect.DeepEqual(bk.BotPluginEnv, []string{"LLM_URL=http://127.0.0.1:8000/v1?a=b", "LLM_KEY_FILE=/run/secrets/llm"}) ||
		bk.RouterPluginArgs != nil || bk.HookPluginEnv != nil {
		t.Fatalf("loaded %+v", bk)
	}
	bad := mustLoad(t, "backends:\n  hook_plugin_env: [\"NO_VALUE\", \"OK=1\", \"OK=2\"]\n")
	err := bad.Validate()
	wantErr(t, err, ErrInvalid, "backends.hook_plugin_env[0]", "KEY=value", "backends.hook_plugin_env[2]", "second time")
}

func TestEnv(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    func(*Config)
	}{
		{"none", nil, func(*Config) {}},
		{"unrelated variables", []string{"HOME=/root", "PATH=/bin", "UNIGATEX=1", "noequals"}, func(*Config) {}},
		{"reserved config path", []string{"UNIGATE_CONFIG=/etc/unigate.yaml"}, func(*Config) {}},
		{"string", []string{"UNIGATE_LISTEN=:9000"}, func(c *Config) { c.Listen = ":9000" }},
		{"nested string", []string{"UNIGATE_ADMIN_LISTEN="}, func(c *Config) { c.Admin.Listen = "" }},
		{"int", []string{"UNIGATE_WEBSOCKET_MAX_MESSAGE_BYTES=1024"}, func(c *Config) { c.WebSocket.MaxMessageBytes = 1024 }},
		{"bool", []string{"UNIGATE_AUTH_ALLOW_ANONYMOUS=0", "UNIGATE_REUSE_PORT=true"}, func(c *Config) {
			c.Auth.AllowAnonymous, c.ReusePort = false, true
		}},
		{"duration", []string{"UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=1m30s"}, func(c *Config) { c.Shutdown.DrainTimeout = 90 * time.Second }},
		{"list", []string{"UNIGATE_WEBSOCKET_ALLOWED_ORIGINS= https://a.test, https://b.test ,"}, func(c *Config) {
			c.WebSocket.AllowedOrigins = []string{"https://a.test", "https://b.test"}
		}},
		{"first occurrence wins", []string{"UNIGATE_LISTEN=:1", "UNIGATE_LISTEN=:2"}, func(c *Config) { c.Listen = ":1" }},
		{"value containing equals", []string{"UNIGATE_DATA_DIR=/a=b"}, func(c *Config) { c.DataDir = "/a=b" }},
		{"plugin args and env", []string{"UNIGATE_BACKENDS_HOOK_PLUGIN_ARGS=--crm, https://crm.test", "UNIGATE_BACKENDS_HOOK_PLUGIN_ENV=CRM_TOKEN_FILE=/run/t,MODE=fast"}, func(c *Config) {
			c.Backends.HookPluginArgs = []string{"--crm", "https://crm.test"}
			c.Backends.HookPluginEnv = []string{"CRM_TOKEN_FILE=/run/t", "MODE=fast"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustLoad(t, "", tt.environ...)
			want := Default()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	tests := []struct {
		name      string
		environ   []string
		target    error
		fragments []string
	}{
		{"bad int", []string{"UNIGATE_EVENT_LOOPS=four"}, ErrBadValue, []string{"UNIGATE_EVENT_LOOPS", "event_loops", `"four"`}},
		{"empty int", []string{"UNIGATE_BROKER_SHARDS="}, ErrBadValue, []string{"UNIGATE_BROKER_SHARDS"}},
		{"bad duration", []string{"UNIGATE_WEBSOCKET_IDLE_TIMEOUT=90"}, ErrBadValue, []string{"UNIGATE_WEBSOCKET_IDLE_TIMEOUT", "duration"}},
		{"bad bool", []string{"UNIGATE_ADMIN_PPROF=yes please"}, ErrBadValue, []string{"UNIGATE_ADMIN_PPROF"}},
		{"unknown with hint", []string{"UNIGATE_LISEN=:1"}, ErrUnknownEnv, []string{"UNIGATE_LISEN", "did you mean UNIGATE_LISTEN"}},
		{"section is not a variable", []string{"UNIGATE_ADMIN=x"}, ErrUnknownEnv, []string{"UNIGATE_ADMIN"}},
		{"all reported", []string{"UNIGATE_EVENT_LOOPS=x", "UNIGATE_LOG_LEVEL=debug", "UNIGATE_NOPE=1"}, ErrBadValue,
			[]string{"UNIGATE_EVENT_LOOPS", "UNIGATE_NOPE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load("", tt.environ)
			wantErr(t, err, tt.target, tt.fragments...)
		})
	}
}

// envProbe exercises the field types Config does not use today.
type envProbe struct {
	U32   uint32        `yaml:"u32"`
	I8    int8          `yaml:"i8"`
	U64   uint64        `yaml:"u64"`
	List  []string      `yaml:"list"`
	Wait  time.Duration `yaml:"wait"`
	Inner struct {
		Name string `yaml:"name"`
	} `yaml:"inner"`
	Skipped string `yaml:"-"`
	private int
}

func TestEnvFieldTypes(t *testing.T) {
	var p envProbe
	err := applyEnv(&p, []string{
		"UNIGATE_U32=4294967295", "UNIGATE_I8=-128", "UNIGATE_U64=18446744073709551615",
		"UNIGATE_LIST=a,b", "UNIGATE_WAIT=250ms", "UNIGATE_INNER_NAME=x",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.U32 != 4294967295 || p.I8 != -128 || p.U64 != 18446744073709551615 ||
		!reflect.DeepEqual(p.List, []string{"a", "b"}) || p.Wait != 250*time.Millisecond || p.Inner.Name != "x" {
		t.Errorf("probe = %+v", p)
	}
	_ = p.private
}

func TestEnvFieldTypeErrors(t *testing.T) {
	tests := []struct{ name, kv string }{
		{"uint32 overflow", "UNIGATE_U32=4294967296"},
		{"uint32 negative", "UNIGATE_U32=-1"},
		{"int8 overflow", "UNIGATE_I8=128"},
		{"skipped field", "UNIGATE_SKIPPED=x"},
		{"unexported field", "UNIGATE_PRIVATE=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p envProbe
			if err := applyEnv(&p, []string{tt.kv}); err == nil {
				t.Errorf("applyEnv(%s) succeeded: %+v", tt.kv, p)
			}
		})
	}
}

// TestPrecedence sets listen in every layer and log.level in all but
// flags, data_dir in file only, and checks that each field comes from the
// highest layer that sets it.
func TestPrecedence(t *testing.T) {
	path := writeConfig(t, "listen: :1001\nlog:\n  level: warn\ndata_dir: /from/file\n")
	env := []string{"UNIGATE_LISTEN=:1002", "UNIGATE_LOG_LEVEL=error"}

	// The documented order: register and parse flags, load, apply flags.
	cfg := Default()
	fs := newFlagSet()
	configPath := fs.String("config", "", "")
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-config", path, "-listen", ":1003"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(*configPath, env)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		t.Fatal(err)
	}

	if cfg.Listen != ":1003" {
		t.Errorf("listen = %q, want the flag's :1003", cfg.Listen)
	}
	if cfg.Log.Level != "error" {
		t.Errorf("log.level = %q, want the environment's error", cfg.Log.Level)
	}
	if cfg.DataDir != "/from/file" {
		t.Errorf("data_dir = %q, want the file's /from/file", cfg.DataDir)
	}
	if cfg.Admin.Listen != Default().Admin.Listen {
		t.Errorf("admin.listen = %q, want the default", cfg.Admin.Listen)
	}
}
