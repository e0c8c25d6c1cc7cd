package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/internal/config"
)

func dialStatus(t *testing.T, addr string) (*websocket.Conn, int) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.json"}, HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		if resp == nil {
			t.Fatal(err)
		}
		return nil, resp.StatusCode
	}
	t.Cleanup(func() { c.Close() })
	return c, http.StatusSwitchingProtocols
}

// TestGatewayLimitsAndReload: the wired gateway refuses a client over its
// per-IP cap with 429, and a reload raises the cap without dropping the
// connection already open.
func TestGatewayLimitsAndReload(t *testing.T) {
	g := startGateway(t, func(c *config.Config) { c.Limits.PerIPConnections = 1 })
	first, st := dialStatus(t, g.srv.Addr())
	if st != 101 {
		t.Fatalf("first: %d", st)
	}
	if _, st := dialStatus(t, g.srv.Addr()); st != 429 {
		t.Fatalf("second: %d, want 429", st)
	}
	next := g.cfg
	next.Limits.PerIPConnections = 2
	if err := g.reload(next); err != nil {
		t.Fatal(err)
	}
	if _, st := dialStatus(t, g.srv.Addr()); st != 101 {
		t.Fatalf("after reload: %d, want 101", st)
	}
	// The first connection survived the reload.
	if err := first.WriteMessage(websocket.PingMessage, nil); err != nil {
		t.Fatal(err)
	}
	if g.limiter.Connections() != 2 {
		t.Fatalf("limiter counts %d", g.limiter.Connections())
	}
}

// serveConfig runs `unigate serve` with the configuration file cfgPath and
// the data directory dir, and returns it with its public address and a
// function that counts its log lines containing a string; it is stopped
// (SIGTERM) when the test ends.
func serveConfig(t *testing.T, bin, cfgPath, dir string) (*exec.Cmd, string, func(string) int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cmd := exec.CommandContext(ctx, bin, "serve", "-config", cfgPath, "-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		cancel()
	})
	lines := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && lines.Scan() {
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatal("no listening line")
	}
	var mu sync.Mutex
	var logged []string
	go func() {
		for lines.Scan() {
			mu.Lock()
			logged = append(logged, lines.Text())
			mu.Unlock()
		}
	}()
	count := func(sub string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, l := range logged {
			if strings.Contains(l, sub) {
				n++
			}
		}
		return n
	}
	return cmd, addr, count
}

// TestServeReloadsAPIKeysOnSIGHUP runs the binary: an API key rotated in
// its key_file is taken at the next SIGHUP (the old key gets 401, the
// new one 200); a key file that cannot be read leaves the keys as they
// were.
func TestServeReloadsAPIKeysOnSIGHUP(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "api.key")
	cfgPath := filepath.Join(dir, "unigate.yaml")
	cfg := fmt.Sprintf("api:\n  keys:\n    - key_file: %s\n      tenant: default\n      scopes: [read]\n", keyPath)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	const oldKey, newKey = "old-key-0123456789abcdef", "new-key-0123456789abcdef"
	writeKey := func(k string) {
		if err := os.WriteFile(keyPath, []byte(k+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKey(oldKey)
	cmd, addr, logged := serveConfig(t, bin, cfgPath, dir)
	status := func(key string) int {
		req, err := http.NewRequest("GET", "http://"+addr+"/api/v1/agents", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if o, n := status(oldKey), status(newKey); o != 200 || n != 401 {
		t.Fatalf("before the rotation: old key %d, new key %d; want 200, 401", o, n)
	}
	writeKey(newKey)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the new key after SIGHUP", func() bool { return status(newKey) == 200 })
	if o := status(oldKey); o != 401 {
		t.Fatalf("after the rotation the old key gets %d, want 401", o)
	}
	// A key file gone: the reload is refused whole, the keys stay.
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the reload with the key file missing to be refused", func() bool {
		return logged("reload: configuration not applied") > 0
	})
	if n := status(newKey); n != 200 {
		t.Fatalf("after a reload with the key file missing the key gets %d, want 200", n)
	}
}

// TestServeReloadsLimitsOnSIGHUP runs the binary: a SIGHUP after the file
// changed raises the per-IP cap, and the open connection stays up.
func TestServeReloadsLimitsOnSIGHUP(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "unigate.yaml")
	writeCfg := func(perIP int) {
		body := fmt.Sprintf("limits:\n  per_ip_connections: %d\n", perIP)
		if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(1)
	cmd, addr, _ := serveConfig(t, bin, cfgPath, dir)

	first, st := dialStatus(t, addr)
	if st != 101 {
		t.Fatalf("first: %d", st)
	}
	if _, st := dialStatus(t, addr); st != 429 {
		t.Fatalf("second: %d, want 429", st)
	}
	writeCfg(2)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, st := dialStatus(t, addr); st == 101 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not raise the cap")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := first.WriteMessage(websocket.PingMessage, nil); err != nil {
		t.Fatalf("first connection dropped by the reload: %v", err)
	}
}
