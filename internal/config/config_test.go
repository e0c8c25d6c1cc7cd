package config

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func TestDefaultValidates(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestLoadWithoutFileIsDefault(t *testing.T) {
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(\"\", nil) = %+v, want Default()", c)
	}
}

func TestKeyPath(t *testing.T) {
	c := Default()
	if got, want := c.KeyPath(), filepath.Join("data", "hmac.key"); got != want {
		t.Errorf("default KeyPath = %q, want %q", got, want)
	}
	c.DataDir = "/var/lib/unigate"
	if got, want := c.KeyPath(), filepath.Join("/var/lib/unigate", "hmac.key"); got != want {
		t.Errorf("KeyPath follows data_dir: got %q, want %q", got, want)
	}
	c.Auth.KeyFile = "/etc/unigate/key"
	if got := c.KeyPath(); got != "/etc/unigate/key" {
		t.Errorf("explicit key_file: got %q", got)
	}
}

func TestAutomaticCounts(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	c := Default()
	if got := c.EventLoopCount(); got != procs {
		t.Errorf("EventLoopCount() = %d, want GOMAXPROCS %d", got, procs)
	}
	if got := c.Broker.ShardCount(); got != 4*procs {
		t.Errorf("ShardCount() = %d, want %d", got, 4*procs)
	}
	c.EventLoops, c.Broker.Shards = 3, 7
	if c.EventLoopCount() != 3 || c.Broker.ShardCount() != 7 {
		t.Errorf("explicit counts ignored: %d, %d", c.EventLoopCount(), c.Broker.ShardCount())
	}
}

var originList = []string{"https://shop.example.com", "http://localhost:3000", "https://*.example.org"}

func TestOriginAllowed(t *testing.T) {
	tests := []struct {
		name, origin string
		list         []string
	}{
		{"empty list allows all", "https://evil.test", nil},
		{"no Origin header", "", originList},
		{"exact", "https://shop.example.com", originList},
		{"case-insensitive", "HTTPS://Shop.Example.COM", originList},
		{"with port", "http://localhost:3000", originList},
		{"wildcard subdomain", "https://a.example.org", originList},
		{"wildcard deep subdomain", "https://a.b.example.org", originList},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := WebSocketConfig{AllowedOrigins: tt.list}
			if !w.OriginAllowed(tt.origin) {
				t.Errorf("OriginAllowed(%q) = false", tt.origin)
			}
		})
	}
}

func TestOriginDenied(t *testing.T) {
	tests := []struct{ name, origin string }{
		{"other host", "https://evil.test"},
		{"other scheme", "http://shop.example.com"},
		{"other port", "http://localhost:3001"},
		{"suffix trick", "https://shop.example.com.evil.test"},
		{"wildcard apex", "https://example.org"},
		{"wildcard other scheme", "http://a.example.org"},
		{"wildcard lookalike", "https://aexample.org"},
		{"wildcard with userinfo", "https://evil.test@a.example.org"},
		{"null origin", "null"},
	}
	w := WebSocketConfig{AllowedOrigins: originList}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if w.OriginAllowed(tt.origin) {
				t.Errorf("OriginAllowed(%q) = true", tt.origin)
			}
		})
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	c := Default()
	c.Log.Format = "json"
	c.Log.Level = "warn"
	log := c.Logger(&buf)
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON record: %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["level"] != "WARN" {
		t.Errorf("record = %v", rec)
	}

	buf.Reset()
	c.Log.Format = "text"
	c.Log.Level = "DEBUG"
	c.Logger(&buf).Debug("dbg")
	if !strings.Contains(buf.String(), "level=DEBUG msg=dbg") {
		t.Errorf("text debug record = %q", buf.String())
	}

	buf.Reset()
	c.Log.Level = "bogus" // Validate rejects it; Logger falls back to info
	c.Logger(&buf).Debug("dbg")
	c.Logger(&buf).Info("inf")
	if got := buf.String(); strings.Contains(got, "dbg") || !strings.Contains(got, "inf") {
		t.Errorf("fallback level: %q", got)
	}
}

func TestTenantOriginCheck(t *testing.T) {
	if (WebSocketConfig{}).TenantOriginCheck() != nil {
		t.Fatal("no entries must mean no check")
	}
	check := WebSocketConfig{TenantOrigins: []string{" acme = https://shop.acme.test", "acme=https://*.cdn.test", "gov=http://intra.gov.test:8080"}}.TenantOriginCheck()
	for _, c := range []struct {
		tenant, origin string
		want           bool
	}{
		{"acme", "https://shop.acme.test", true},
		{"acme", "HTTPS://SHOP.ACME.TEST", true},
		{"acme", "https://eu.cdn.test", true},
		{"acme", "https://cdn.test", false},
		{"acme", "https://evil.test", false},
		{"acme", "http://shop.acme.test", false},
		{"acme", "", true}, // not a browser
		{"gov", "http://intra.gov.test:8080", true},
		{"gov", "https://shop.acme.test", false},
		{"other", "https://evil.test", true}, // no entries for the tenant
	} {
		if got := check(c.tenant, c.origin); got != c.want {
			t.Errorf("check(%q, %q) = %v, want %v", c.tenant, c.origin, got, c.want)
		}
	}
}
