package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// qemuUser names Debian's qemu-user emulator of each release architecture
// other than the host's.
var qemuUser = map[string]string{"arm64": "qemu-aarch64", "loong64": "qemu-loongarch64"}

var crossBuilds sync.Map // arch -> func() (string, error)

// crossBinary builds cmd/unigate for linux/arch with the release flags of
// make dist (static, -trimpath), once per test run.
func crossBinary(t *testing.T, arch string) string {
	t.Helper()
	dir := filepath.Dir(buildBinary(t)) // removed by TestMain
	f, _ := crossBuilds.LoadOrStore(arch, sync.OnceValues(func() (string, error) {
		out := filepath.Join(dir, "linux-"+arch, "unigate")
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
			"-ldflags", "-s -w -X main.version=qemu-smoke", "-o", out, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build for linux/%s: %v\n%s", arch, err, b)
		}
		return out, nil
	}))
	bin, err := f.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// underQEMU returns a command that runs the linux/arch binary under
// qemu-user: a two-line script, so that the helpers that start and talk to
// the host binary work unchanged. Without qemu it skips loudly, or fails
// under CI.
func underQEMU(t *testing.T, arch string) string {
	t.Helper()
	emu, err := exec.LookPath(qemuUser[arch])
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing under CI (apt-get install qemu-user; .ci/run installs it)", qemuUser[arch])
		}
		t.Skipf("SKIPPED LOUDLY: %s not installed (apt-get install qemu-user): linux/%s not tested", qemuUser[arch], arch)
	}
	bin := crossBinary(t, arch)
	script := filepath.Join(t.TempDir(), "unigate-"+arch)
	// exec: signals reach qemu, which delivers them to the guest.
	body := fmt.Sprintf("#!/bin/sh\nexec %s %s \"$@\"\n", emu, bin)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

// TestQEMUSmoke runs the arm64 and loong64 release binaries under
// qemu-user: version, config check, then serve with embedded NATS, a real
// visitor and agent chatting over WebSocket, and a SIGTERM drain.
func TestQEMUSmoke(t *testing.T) {
	for _, arch := range []string{"arm64", "loong64"} {
		t.Run(arch, func(t *testing.T) {
			bin := underQEMU(t, arch)
			dir := t.TempDir()
			out, err := exec.Command(bin, "version").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "unigate qemu-smoke") || !strings.Contains(string(out), "linux/"+arch) ||
				!strings.Contains(string(out), "CGO_ENABLED=0") {
				t.Fatalf("version under qemu: %v\n%s", err, out)
			}
			out, err = exec.Command(bin, "config", "check", "-data-dir", dir).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "configuration ok") {
				t.Fatalf("config check under qemu: %v\n%s", err, out)
			}

			start := time.Now()
			n := startNode(t, bin, dir)
			listening := time.Since(start)
			readyz(t, n.addr)
			v, a := chatPair(t, bin, dir, n)
			exchange(v, a, 0, 5, nil)
			v.waitUntil("acks", func() bool { return len(v.acked) == 5 })
			a.waitUntil("acks", func() bool { return len(a.acked) == 5 })
			v.waitUntil("all", func() bool { return lastOf(v.seen) == 10 })
			a.waitUntil("all", func() bool { return lastOf(a.seen) == 10 })
			checkOnceInOrder(t, v, 10)
			checkOnceInOrder(t, a, 10)
			n.term()
			for _, c := range []*chatClient{v, a} {
				select {
				case <-c.gone:
				case <-time.After(10 * time.Second):
					t.Fatalf("%s still connected after the drain", c.name)
				}
			}
			if !strings.Contains(n.logs.String(), "session snapshot saved") {
				t.Fatalf("no snapshot saved on SIGTERM:\n%s", n.logs.String())
			}
			t.Logf("linux/%s under %s: listening %v after start (emulated), 10 messages relayed, drained", arch, qemuUser[arch], listening.Round(time.Millisecond))
		})
	}
}

func readyz(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNoOutboundConnections runs the gateway with every proxy variable
// pointing at a listener that counts connections: start, a chat and a
// drain must not make one (no update check, no telemetry, nothing
// fetched). The embedded NATS server has no listener and dials nothing.
func TestNoOutboundConnections(t *testing.T) {
	bin := buildBinary(t)
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	var dialed atomic.Int32
	var from []string
	var mu sync.Mutex
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			mu.Lock()
			from = append(from, c.RemoteAddr().String())
			mu.Unlock()
			c.Close()
		}
	}()
	proxy := "http://" + trap.Addr().String()
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"} {
		t.Setenv(k, proxy)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	dir := t.TempDir()
	n := startNode(t, bin, dir)
	v, a := chatPair(t, bin, dir, n)
	exchange(v, a, 0, 3, nil)
	v.waitUntil("acks", func() bool { return len(v.acked) == 3 })
	n.term()
	if d := dialed.Load(); d != 0 {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("the gateway made %d outbound connection(s) through the proxy: %v", d, slices.Clone(from))
	}
}
