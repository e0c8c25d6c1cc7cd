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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "-config", cfgPath, "-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
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
	go io.Copy(io.Discard, stderr)

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
