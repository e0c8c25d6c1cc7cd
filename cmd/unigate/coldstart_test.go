package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/sessionstore"
)

// BenchmarkColdStart measures process start to the first 200 from /readyz
// on the public port, with embedded NATS, and reports the idle RSS of the
// node once ready (rss-MiB):
//
//		go test -run '^$' -bench ColdStart -benchtime 5x ./cmd/unigate
//
//	  - fresh: an empty data directory (keys and the JetStream store are
//	    created);
//	  - restart/sessions=N: the store exists (as after a restart) and a
//	    session snapshot of N sessions is restored. Each session is a broker
//	    session record (user, role, tenant, one conversation: about 120
//	    bytes of JSON, sealed with SM4-GCM in the cache).
func BenchmarkColdStart(b *testing.B) {
	b.Run("fresh", func(b *testing.B) {
		bin := buildBinary(b)
		var rss int64
		for range b.N {
			b.StopTimer()
			dir, err := os.MkdirTemp(b.TempDir(), "fresh")
			if err != nil {
				b.Fatal(err)
			}
			rss = startToReady(b, bin, dir, true)
		}
		b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	})
	for _, sessions := range []int{0, 100_000} {
		b.Run(fmt.Sprintf("restart/sessions=%d", sessions), func(b *testing.B) {
			bin := buildBinary(b)
			dir := b.TempDir()
			if sessions > 0 {
				writeSessionSnapshot(b, dir, sessions)
			}
			// A first run creates the JetStream store; each stop saves the
			// restored sessions again for the next start.
			startToReady(b, bin, dir, false)
			b.ResetTimer()
			var rss int64
			for range b.N {
				rss = startToReady(b, bin, dir, true)
			}
			b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
		})
	}
}

// writeSessionSnapshot writes a snapshot of n sessions into dir where
// `unigate serve -data-dir dir` restores it from.
func writeSessionSnapshot(b *testing.B, dir string, n int) {
	b.Helper()
	key, err := sessionstore.LoadOrCreateKey(filepath.Join(dir, sessionKeyFile))
	if err != nil {
		b.Fatal(err)
	}
	s, err := sessionstore.New(sessionstore.Options{MaxBytes: 64 << 20}, key)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		v := fmt.Appendf(nil, `{"UserID":"v_%020d","Role":1,"Tenant":"default","Convs":["c_%024d"]}`, i, i)
		if err := s.Put(fmt.Sprintf("s_%024d", i), v, 24*time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	if got := s.Stats().Entries; got != uint64(n) {
		b.Fatalf("cache holds %d of %d sessions: size it larger", got, n)
	}
	if err := s.SaveSnapshot(filepath.Join(dir, sessionSnapshotFile)); err != nil {
		b.Fatal(err)
	}
}

// startToReady starts the binary on dir, waits for /readyz to answer 200,
// reads its RSS, stops it with SIGTERM and, when timed, counts only start
// → ready. It returns the RSS in bytes.
func startToReady(b *testing.B, bin, dir string, timed bool) int64 {
	b.Helper()
	if timed {
		b.StartTimer()
	}
	cmd := exec.Command(bin, "serve", "-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && lines.Scan() {
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()
	if addr == "" {
		_ = cmd.Process.Kill()
		b.Fatal("no listening line")
	}
	cl := &http.Client{Timeout: time.Second}
	for {
		resp, err := cl.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		time.Sleep(time.Millisecond)
	}
	if timed {
		b.StopTimer()
	}
	rss := rssOf(b, cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		b.Fatalf("exit after SIGTERM: %v", err)
	}
	return rss
}
