package main

import (
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/unigate/unigate/internal/config"
)

// TestAPIWired: the integrator API answers on the public listener with the
// keys of the configuration (here from a key file).
func TestAPIWired(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "acme.key")
	if err := os.WriteFile(keyFile, []byte("acme-key-from-a-file-0001\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, func(c *config.Config) {
		c.API.Keys = config.APIKeys{{KeyFile: keyFile, Tenant: "acme", Scopes: []string{"read"}}}
	})
	for _, tc := range []struct {
		key  string
		want int
	}{{"", 401}, {"wrong-key-0000000000000", 401}, {"acme-key-from-a-file-0001", 200}} {
		req, _ := http.NewRequest("GET", "http://"+g.srv.Addr()+"/api/v1/agents", nil)
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+tc.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("key %q: status %d, want %d", tc.key, resp.StatusCode, tc.want)
		}
	}
	// /healthz is still netpoll's own.
	resp, err := http.Get("http://" + g.srv.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
}

// TestAPIKeyFileMissing: a key file that cannot be read stops the start.
func TestAPIKeyFileMissing(t *testing.T) {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = ""
	cfg.DataDir = t.TempDir()
	cfg.API.Keys = config.APIKeys{{KeyFile: filepath.Join(cfg.DataDir, "missing"), Tenant: "acme", Scopes: []string{"read"}}}
	if _, err := newGateway(cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("started with an unreadable key file")
	}
}
