package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var (
	buildOnce sync.Once
	binDir    string
	binErr    error
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(stormClientEnv); spec != "" {
		os.Exit(stormClient(spec)) // a client process of TestConnectionStormCap
	}
	if os.Getenv(testPluginEnv) != "" {
		serveTestPlugin() // a bot plugin process of TestBotPluginFaults
		os.Exit(0)
	}
	if os.Getenv(testRouterPluginEnv) != "" {
		serveTestRouter() // a router plugin process of TestRouterPlugin
		os.Exit(0)
	}
	if dir := os.Getenv(testHookEnv); dir != "" {
		serveTestHook(dir) // a hook plugin process (hooks_process_test.go)
		os.Exit(0)
	}
	if os.Getenv(testWebHookEnv) != "" {
		serveWebTestHook() // a hook plugin process of TestWeb/PasswordReload
		os.Exit(0)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildBinary builds cmd/unigate once per test run.
func buildBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	buildOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "unigate-test-"); binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "unigate"), ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "unigate")
}

var listeningRE = regexp.MustCompile(`netpoll listening.* addr=(\S+)`)

// TestServeDrainsOnSIGTERM runs the real binary: a client is connected,
// SIGTERM closes it with 1001 and the process exits within the drain bound.
func TestServeDrainsOnSIGTERM(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", dir)
	cmd.Env = append(cmd.Environ(), "UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=3s", "UNIGATE_BACKENDS_BOT=off")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	var addr string
	var logs strings.Builder
	for addr == "" && lines.Scan() {
		logs.WriteString(lines.Text() + "\n")
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("no listening line in:\n%s", logs.String())
	}
	go io.Copy(io.Discard, stderr)

	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("want close 1001 on SIGTERM, got %v", err)
	}
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	t.Logf("drained and exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}

func TestCommands(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return string(out), err
	}
	out, err := run("version")
	if err != nil || !strings.Contains(out, "unigate ") || !strings.Contains(out, "github.com/panjf2000/gnet/v2") {
		t.Fatalf("version: %v\n%s", err, out)
	}
	out, err = run("config", "check", "-data-dir", dir)
	if err != nil || !strings.Contains(out, "configuration ok") {
		t.Fatalf("config check: %v\n%s", err, out)
	}
	if out, err = run("config", "check", "-listen", "nonsense"); err == nil {
		t.Fatalf("config check accepted a bad listen address:\n%s", out)
	}
	tok, err := run("token", "agent", "-id", "a1", "-skills", "billing", "-data-dir", dir)
	if err != nil || strings.Count(strings.TrimSpace(tok), ".") != 1 {
		t.Fatalf("token: %v\n%s", err, tok)
	}
	if out, err = run("token", "agent", "-data-dir", dir); err == nil {
		t.Fatalf("token without -id succeeded:\n%s", out)
	}
}
