package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func TestEchoPayload(t *testing.T) {
	for _, text := range []bool{false, true} {
		n := echoHeaderSize(text)
		for _, size := range []int{n, n + 1, 256, 4096} {
			m := echoMsg{seq: 1<<40 + 7, due: 123456789012, sent: 123456789999}
			p := make([]byte, size)
			putEchoPayload(p, m, text)
			got, ok := parseEchoPayload(p, size, text)
			if !ok || got != m {
				t.Fatalf("text %v size %d: parse = %+v, %v; want %+v", text, size, got, ok, m)
			}
			if text && !isASCII(p) {
				t.Errorf("size %d: text payload is not ASCII", size)
			}
			// Any changed byte, a short or a long payload is refused.
			for _, i := range []int{0, n - 1, size - 1} {
				q := bytes.Clone(p)
				q[i] ^= 0x40
				if got, ok := parseEchoPayload(q, size, text); ok && got == m {
					t.Errorf("text %v size %d: byte %d changed, still parsed as the original", text, size, i)
				}
			}
			if _, ok := parseEchoPayload(p[:size-1], size, text); ok {
				t.Errorf("text %v size %d: a truncated payload parses", text, size)
			}
			if _, ok := parseEchoPayload(append(bytes.Clone(p), 'a'), size, text); ok {
				t.Errorf("text %v size %d: a longer payload parses", text, size)
			}
		}
	}
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// TestClientFrame checks the client frames against gobwas/ws's reader
// (as a server reads them) and readServerFrame against its writer.
func TestClientFrame(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		b, at := appendClientFrame([]byte("junk"), ws.OpBinary, n)
		b = b[4:]
		at -= 4
		for i := range n {
			b[at+i] = byte(i)
		}
		maskFrame(b, at, 0xdeadbeef)
		f, err := ws.ReadFrame(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if !f.Header.Fin || !f.Header.Masked || f.Header.OpCode != ws.OpBinary || int(f.Header.Length) != n {
			t.Fatalf("n=%d: header %+v", n, f.Header)
		}
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		for i, c := range f.Payload {
			if c != byte(i) {
				t.Fatalf("n=%d: payload byte %d = %d", n, i, c)
			}
		}
		var w bytes.Buffer
		if err := ws.WriteFrame(&w, ws.NewBinaryFrame(f.Payload)); err != nil {
			t.Fatal(err)
		}
		h, p, err := readServerFrame(bufio.NewReader(&w), make([]byte, ws.MaxHeaderSize), nil, 1<<20)
		if err != nil || int(h.Length) != n || !bytes.Equal(p, f.Payload) {
			t.Fatalf("n=%d: readServerFrame: %+v, %d bytes, %v", n, h, len(p), err)
		}
	}
	// A masked server frame and an oversized one are errors.
	var w bytes.Buffer
	_ = ws.WriteFrame(&w, ws.MaskFrame(ws.NewTextFrame([]byte("hi"))))
	if _, _, err := readServerFrame(bufio.NewReader(&w), make([]byte, ws.MaxHeaderSize), nil, 10); !errors.Is(err, errMaskedServerFrame) {
		t.Errorf("masked server frame: %v", err)
	}
	w.Reset()
	_ = ws.WriteFrame(&w, ws.NewBinaryFrame(make([]byte, 11)))
	if _, _, err := readServerFrame(bufio.NewReader(&w), make([]byte, ws.MaxHeaderSize), nil, 10); err == nil {
		t.Error("an 11-byte frame passed a 10-byte bound")
	}
}

func TestEchoConfigErrors(t *testing.T) {
	u := Common{URL: "ws://127.0.0.1:1/ws"}
	for i, c := range []EchoConfig{
		{},
		{Common: u, Size: 10},
		{Common: u, Size: 30, Text: true},
		{Common: u, Rates: []float64{2000, 1000}},
		{Common: Common{URL: u.URL, Procs: 3}, Conns: 2},
		{Common: u, Conns: 1, Rates: []float64{20000}},
		{Common: u, Window: 5000},
	} {
		if err := c.setDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("config %d: err %v, want ErrConfig", i, err)
		}
	}
	c := EchoConfig{Common: Common{URL: "ws://127.0.0.1:1/ws", Subprotocol: "anything"}}
	if err := c.setDefaults(); err != nil || len(c.Rates) != 1 || c.Subprotocol != "anything" {
		t.Errorf("defaults: %v, rates %v, subprotocol %q", err, c.Rates, c.Subprotocol)
	}
}

// builds holds the commands built by buildCommand, once per test binary.
var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
}

// buildCommand builds the main package at pkg (relative to bench/) once
// and returns the binary.
func buildCommand(t testing.TB, pkg string) string {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if bin, ok := builds.bins[pkg]; ok {
		return bin
	}
	if builds.dir == "" {
		d, err := os.MkdirTemp("", "unigate-bench-cmds-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.bins = d, map[string]string{}
	}
	bin := filepath.Join(builds.dir, strings.NewReplacer("/", "_", ".", "_").Replace(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	builds.bins[pkg] = bin
	return bin
}

var echoListening = regexp.MustCompile(`listening on (ws://\S+)`)

// startEchoServer runs an echo server binary on a free loopback port and
// returns its URL and process.
func startEchoServer(t *testing.T, bin string) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(bin, "-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	url := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := echoListening.FindStringSubmatch(sc.Text()); m != nil {
				url <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case u := <-url:
		return u, cmd
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not print its address within 20s", bin)
		return "", nil
	}
}

// TestEndToEndEcho runs the echo scenario (two open-loop steps and the
// closed loop, two worker processes) against Unigate's netpoll echo and
// both baselines, built from this tree, and checks that every report adds
// up and that they compare figure by figure.
func TestEndToEndEcho(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three echo servers; skipped with -short")
	}
	servers := []struct{ name, pkg string }{
		{"netpoll", "../netpoll/examples/echo"},
		{"gorilla", "./baselines/gorilla"},
		{"nbio", "./baselines/nbio"},
	}
	const conns = 20
	rates := []float64{200, 400}
	warmup, duration := 300*time.Millisecond, time.Second
	reports := map[string][]byte{}
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			url, cmd := startEchoServer(t, buildCommand(t, s.pkg))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			text := s.name == "gorilla" // one server gets text messages (UTF-8 checked by the others' paths too)
			rep, err := RunEcho(ctx, EchoConfig{
				Common: Common{URL: url, Subprotocol: "echo", Procs: 2, ServerPID: cmd.Process.Pid, Worker: testWorker(), WorkerEnv: []string{workerEnv}},
				Label:  s.name, Conns: conns, Size: 128, Text: text, Rates: rates, Warmup: warmup, Duration: duration,
				// The machine may be shared: only the bookkeeping is
				// checked, so every step runs whatever its verdict.
				Continue: true, Window: 2, ClosedWarmup: 200 * time.Millisecond, ClosedDuration: time.Second,
				Pause: 100 * time.Millisecond, ConnectRate: 2000,
			})
			if rep != nil && (testing.Verbose() || err != nil) {
				var sb strings.Builder
				rep.WriteSummary(&sb)
				t.Log("\n" + sb.String())
			}
			if err != nil {
				t.Fatal(err)
			}
			if rep.Connected != conns || rep.ClosedClean != conns || rep.ConnectLatency.Count != conns || len(rep.Drops.Counts) != 0 {
				t.Errorf("connected %d, closed cleanly %d, connect latencies %d, drops %v", rep.Connected, rep.ClosedClean, rep.ConnectLatency.Count, rep.Drops.Counts)
			}
			if len(rep.Steps) != len(rates) {
				t.Fatalf("%d steps, want %d", len(rep.Steps), len(rates))
			}
			for i, st := range rep.Steps {
				// The schedule: rate × (warmup + duration) sent, rate ×
				// duration measured, every one echoed once.
				want, measured := int64(rates[i]*(warmup+duration).Seconds()), int64(rates[i]*duration.Seconds())
				if st.Rate != rates[i] || st.Sent != want || st.EchoedTotal != want || st.Measured != measured || st.Latency.Count != measured {
					t.Errorf("step %v: sent %d, echoed %d, measured %d, histogram %d; want %d and %d",
						st.Rate, st.Sent, st.EchoedTotal, st.Measured, st.Latency.Count, want, measured)
				}
				if math.Abs(st.Offered-rates[i]) > 1e-9 || st.InWindow > st.EchoedTotal || st.Echoed != float64(st.InWindow)/duration.Seconds() {
					t.Errorf("step %v: offered %v/s, echoed %v/s, in window %d", st.Rate, st.Offered, st.Echoed, st.InWindow)
				}
				if st.Lost+st.Duplicates+st.OutOfOrder+st.Corrupt+st.Unexpected+st.Late != 0 {
					t.Errorf("step %v: %+v", st.Rate, st)
				}
				if l := st.Latency; l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max || st.SendLag.Count != measured || st.FromWrite.Count != measured {
					t.Errorf("step %v: latency %+v, send lag %d, from write %d", st.Rate, l, st.SendLag.Count, st.FromWrite.Count)
				}
				if st.ServerCPUCores <= 0 || st.ServerRSSEnd <= 0 || st.Saturated != (st.EchoedFrac < 0.98) {
					t.Errorf("step %v: server %.3f cores, RSS %d, saturated %v at %.3f", st.Rate, st.ServerCPUCores, st.ServerRSSEnd, st.Saturated, st.EchoedFrac)
				}
			}
			cl := rep.ClosedLoop
			if cl == nil {
				t.Fatal("no closed-loop step")
			}
			if cl.Sent == 0 || cl.EchoedTotal != cl.Sent || cl.Lost != 0 || cl.OutOfOrder != 0 || cl.Duplicates != 0 ||
				cl.Measured != cl.InWindow || cl.Latency.Count != cl.InWindow || cl.InWindow == 0 ||
				cl.Echoed != float64(cl.InWindow) || cl.Sent < cl.InWindow+conns*2 {
				t.Errorf("closed loop: %+v", cl)
			}
			if len(rep.Integrity) != 0 {
				t.Errorf("integrity %v", rep.Integrity)
			}
			b, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			reports[s.name] = b
			var h bytes.Buffer
			if err := RenderHTML(&h, rep); err != nil {
				t.Fatal(err)
			}
			if p := selfContainedProblems(h.String()); len(p) > 0 {
				t.Errorf("HTML: %v", p)
			}
		})
	}
	// The reports compare figure by figure: no figure is missing.
	for _, other := range []string{"gorilla", "nbio"} {
		a, b := reports[other], reports["netpoll"]
		if a == nil || b == nil {
			continue
		}
		scenario, rs, err := Compare(a, b)
		if err != nil || scenario != "echo" {
			t.Fatalf("compare %s: %q, %v", other, scenario, err)
		}
		var sb strings.Builder
		WriteRatios(&sb, scenario, other, "netpoll", rs)
		if testing.Verbose() {
			t.Log("\n" + sb.String())
		}
		for _, r := range rs {
			if r.Missing {
				t.Errorf("compare %s: %s missing", other, r.Figure)
			}
		}
		if want := 2 + len(rates)*8 + 8; len(rs) != want {
			t.Errorf("compare %s: %d figures, want %d:\n%s", other, len(rs), want, sb.String())
		}
	}
}

// BenchmarkEchoMessage is the echo client's own work per message besides
// the socket: build and mask a frame, parse and check the echoed payload,
// record the latency. It must not allocate (the load generator shares the
// CPUs with the server it measures).
func BenchmarkEchoMessage(b *testing.B) {
	for _, size := range []int{64, 256, 4096} {
		for _, text := range []bool{false, true} {
			b.Run(strconv.Itoa(size)+map[bool]string{false: "/binary", true: "/text"}[text], func(b *testing.B) {
				h := newLatencyHist()
				var buf []byte
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for i := range b.N {
					var at int
					buf, at = appendClientFrame(buf[:0], ws.OpBinary, size)
					m := echoMsg{seq: uint64(i), due: time.Duration(i), sent: time.Duration(i) + 1}
					putEchoPayload(buf[at:at+size], m, text)
					p := buf[at : at+size] // what the server echoes, unmasked
					maskFrame(buf, at, uint32(i)|1)
					ws.Cipher(p, [4]byte(buf[at-4:at]), 0)
					got, ok := parseEchoPayload(p, size, text)
					if !ok || got != m {
						b.Fatal("parse failed")
					}
					h.record(got.sent - got.due)
				}
			})
		}
	}
}
