package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
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
)

// workerEnv makes the test binary act as a bench worker (see TestMain):
// the coordinator re-executes it exactly as cmd/unigate-bench re-executes
// itself.
const workerEnv = "UNIGATE_BENCH_TEST_WORKER=1"

func TestMain(m *testing.M) {
	if os.Getenv("UNIGATE_BENCH_TEST_WORKER") == "1" {
		if err := RunWorker(context.Background(), os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if gatewayBuild.dir != "" {
		_ = os.RemoveAll(gatewayBuild.dir)
	}
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// gatewayBuild is ./cmd/unigate built once per test binary: every
// end-to-end test runs its own gateway process from it.
var gatewayBuild struct {
	once     sync.Once
	dir, bin string
	err      error
}

func gatewayBinary(t testing.TB) string {
	t.Helper()
	b := &gatewayBuild
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "unigate-bench-test-"); b.err != nil {
			return
		}
		b.bin = filepath.Join(b.dir, "unigate")
		if out, err := exec.Command("go", "build", "-o", b.bin, "../cmd/unigate").CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/unigate: %v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}

func testWorker() []string { return []string{os.Args[0], "-test.run=^$"} }

func TestParseAddrRange(t *testing.T) {
	good := []struct {
		in   string
		want []string
	}{
		{"127.0.0.2", []string{"127.0.0.2"}},
		{"127.0.0.2-127.0.0.4", []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}},
		{"127.0.0.2, 127.0.1.9-127.0.1.10", []string{"127.0.0.2", "127.0.1.9", "127.0.1.10"}},
		{"", nil},
	}
	for _, tc := range good {
		got, err := ParseAddrRange(tc.in)
		if err != nil {
			t.Errorf("ParseAddrRange(%q): %v", tc.in, err)
			continue
		}
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		if strings.Join(s, " ") != strings.Join(tc.want, " ") {
			t.Errorf("ParseAddrRange(%q) = %v, want %v", tc.in, s, tc.want)
		}
	}
}

func TestParseAddrRangeErrors(t *testing.T) {
	for _, in := range []string{"127.0.0.9-127.0.0.2", "127.0.0.2-127.0.1.3", "::1", "localhost", "127.0.0.2-x", "10.0.0.0-10.0.1.0"} {
		if _, err := ParseAddrRange(in); !errors.Is(err, ErrConfig) {
			t.Errorf("ParseAddrRange(%q): err %v, want ErrConfig", in, err)
		}
	}
}

func TestLeastSquares(t *testing.T) {
	f := leastSquares([]float64{1000, 2000, 3000, 4000}, []float64{5e6 + 17e3, 5e6 + 34e3, 5e6 + 51e3, 5e6 + 68e3})
	if math.Abs(f.Slope-17) > 1e-9 || math.Abs(f.Intercept-5e6) > 1e-3 || math.Abs(f.R2-1) > 1e-12 || f.Points != 4 {
		t.Errorf("fit = %+v, want slope 17, intercept 5e6, R² 1", f)
	}
	if f := leastSquares([]float64{1, 1}, []float64{2, 3}); f.Slope != 0 || f.Points != 2 {
		t.Errorf("degenerate fit = %+v", f)
	}
	if f := leastSquares(nil, nil); f.Points != 0 {
		t.Errorf("empty fit = %+v", f)
	}
}

func TestPayload(t *testing.T) {
	for _, size := range []int{0, 10, 40, 256, 4096} {
		p := payload{k: 12345, due: 987654321012, sent: 987654322000}
		text := string(appendPayload(nil, p, size))
		if len(text) < size {
			t.Fatalf("size %d: text of %d bytes", size, len(text))
		}
		got, ok := parsePayload(text, size)
		if !ok || got != p {
			t.Errorf("size %d: parse(%q) = %+v, %v", size, text, got, ok)
		}
		if len(text) > 40 {
			if _, ok := parsePayload(text[:len(text)-1], size); ok {
				t.Errorf("size %d: a truncated text parses", size)
			}
			if _, ok := parsePayload(text[:len(text)-1]+"x", size); ok {
				t.Errorf("size %d: a corrupted padding parses", size)
			}
		}
	}
	for _, bad := range []string{"", "ugb1 ", "ugb1 1 2", "ugb1 -1 2 3 ", "xgb1 1 2 3 ", "ugb1 a 2 3 "} {
		if _, ok := parsePayload(bad, 0); ok {
			t.Errorf("parsePayload(%q) accepted", bad)
		}
	}
}

func TestReplyTo(t *testing.T) {
	for _, f := range []float64{0, 0.1, 0.25, 1 / 3.0, 0.5, 1} {
		n := 0
		for k := range 1000 {
			if replyTo(k, f) {
				n++
			}
		}
		if want := int(1000 * f); n != want {
			t.Errorf("replyTo fraction %v: %d of 1000, want %d", f, n, want)
		}
	}
}

func TestShare(t *testing.T) {
	for _, tc := range []struct{ n, procs int }{{1000, 1}, {1000, 3}, {19900, 2}, {7, 7}, {5, 3}} {
		total := 0
		for i := range tc.procs {
			if offset(tc.n, tc.procs, i) != total {
				t.Errorf("offset(%d,%d,%d) = %d, want %d", tc.n, tc.procs, i, offset(tc.n, tc.procs, i), total)
			}
			total += share(tc.n, tc.procs, i)
		}
		if total != tc.n {
			t.Errorf("shares of %d over %d sum to %d", tc.n, tc.procs, total)
		}
	}
}

func TestMsgID(t *testing.T) {
	for _, tc := range []struct{ conv, k int }{{0, 0}, {999, 700}, {5, 1<<32 - 1}} {
		c, k, ok := splitMsgID(msgID(tc.conv, tc.k))
		if !ok || c != tc.conv || k != tc.k {
			t.Errorf("splitMsgID(msgID(%d, %d)) = %d, %d, %v", tc.conv, tc.k, c, k, ok)
		}
	}
	for _, id := range []uint64{0, 7, helloID, openID, closeID, staleID} {
		if _, _, ok := splitMsgID(id); ok {
			t.Errorf("splitMsgID(%#x) accepted", id)
		}
	}
}

func TestBitset(t *testing.T) {
	a, b := newBitset(130), newBitset(130)
	for _, i := range []int{0, 63, 64, 129} {
		a.set(i)
	}
	b.set(64)
	b.set(100)
	if a.set(130) || a.set(-1) {
		t.Error("set out of range succeeded")
	}
	if a.count() != 4 || a.andNotCount(b) != 3 || a.andCount(b) != 1 || !a.has(129) || a.has(1) {
		t.Errorf("bitset ops: count %d andNot %d and %d", a.count(), a.andNotCount(b), a.andCount(b))
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP x
unigate_netpoll_connections 19900
unigate_netpoll_ws_closed_total{code="1002"} 3
unigate_broker_latency_bucket{vmrange="1.000e-03...1.136e-03"} 7 1700000000
go_goroutines 12
unigate_bad value
`
	m, err := parseMetrics(strings.NewReader(in), "unigate_")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"unigate_netpoll_connections":                                    19900,
		`unigate_netpoll_ws_closed_total{code="1002"}`:                   3,
		`unigate_broker_latency_bucket{vmrange="1.000e-03...1.136e-03"}`: 7,
	}
	if len(m) != len(want) {
		t.Errorf("parsed %v, want %v", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	d := metricsDelta(map[string]float64{"a": 1, "b": 2}, map[string]float64{"a": 1, "b": 5, "c": 1})
	if len(d) != 2 || d["b"] != 3 || d["c"] != 1 {
		t.Errorf("delta = %v", d)
	}
}

func TestConfigErrors(t *testing.T) {
	bad := []IdleConfig{
		{},
		{Common: Common{URL: "http://x/ws"}, Conns: 1},
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}},
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, Conns: 10, Steps: []int{5, 5}},
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, Conns: 10, Steps: []int{20}},
		{Common: Common{URL: "ws://127.0.0.1:1/ws", Subprotocol: "x"}, Conns: 10},
	}
	for i, c := range bad {
		if err := c.setDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("idle config %d: err %v, want ErrConfig", i, err)
		}
	}
	badChat := []ChatConfig{
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}},                                                        // no tokens
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, TokenCmd: []string{"x"}, Agents: 10, AgentCapacity: 5}, // 50 < 1000
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, TokenCmd: []string{"x"}, Reply: 2},
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, Tokens: []string{"a"}, Agents: 2},
	}
	for i, c := range badChat {
		if err := c.setDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("chat config %d: err %v, want ErrConfig", i, err)
		}
	}
	c := ChatConfig{Common: Common{URL: "ws://127.0.0.1:1/ws", Procs: 2}, TokenCmd: []string{"x"}}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.skillFor(0) == c.skillFor(1) || c.skillFor(0) == "" {
		t.Errorf("workers share skill %q", c.skillFor(0))
	}
}

// gateway is a unigate process started by a test.
type gateway struct {
	bin, dataDir, url string
	cmd               *exec.Cmd
	admin             string // admin listener address, when turned on (under mu)

	mu     sync.Mutex
	log    []string // the last gatewayLogLines lines of its stderr
	exited error    // set when it exits; nil while it runs
	done   chan struct{}
}

// adminRE finds the admin listener's address in the gateway's log.
var adminRE = regexp.MustCompile(`msg="admin listening".* addr=(\S+)`)

// gatewayLogLines is how much of a gateway's log a failed test prints.
const gatewayLogLines = 200

func (g *gateway) logLine(l string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.log) == gatewayLogLines {
		g.log = append(g.log[:0], g.log[1:]...)
	}
	g.log = append(g.log, l)
}

// report prints, for a failed test, whether the gateway is still running
// and the end of its log: a test that sees "connection refused" learns
// whether the process died and why.
func (g *gateway) report(t *testing.T) {
	g.mu.Lock()
	defer g.mu.Unlock()
	state := "still running"
	select {
	case <-g.done:
		state = fmt.Sprintf("exited: %v", g.exited)
	default:
	}
	t.Logf("unigate (pid %d) %s; the last %d lines of its log:\n%s", g.cmd.Process.Pid, state, len(g.log), strings.Join(g.log, "\n"))
}

// startGateway runs ./cmd/unigate (built once, see gatewayBinary) on a
// free loopback port (admin server disabled), with env added to its
// environment, parsing the port from its log.
func startGateway(t *testing.T, env ...string) *gateway {
	t.Helper()
	return startGatewayArgs(t, nil, env...)
}

// startGatewayArgs is startGateway with more command-line arguments
// (later flags override the defaults: "-admin-listen", "127.0.0.1:0"
// turns the admin listener on, whose address lands in admin).
func startGatewayArgs(t *testing.T, args []string, env ...string) *gateway {
	t.Helper()
	dir := t.TempDir()
	g := &gateway{bin: gatewayBinary(t), dataDir: filepath.Join(dir, "data"), done: make(chan struct{})}
	// The benchmark configuration turns the admission limits off: every
	// client comes from 127.0.0.1, faster than a single visitor would.
	g.cmd = exec.Command(g.bin, append([]string{"-config", "testdata/unigate-bench.yaml",
		"-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", g.dataDir, "-log-level", "info"}, args...)...)
	g.cmd.Env = append(append(os.Environ(), "GOMAXPROCS=2"), env...)
	// A test binary killed by -timeout runs no cleanup: take the gateway
	// with it.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	re := regexp.MustCompile(`msg="netpoll listening".* addr=(\S+)`)
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := adminRE.FindStringSubmatch(sc.Text()); m != nil {
				g.mu.Lock()
				g.admin = m[1]
				g.mu.Unlock()
			}
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
			g.logLine(sc.Text())
			if testing.Verbose() {
				t.Logf("unigate: %s", sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-logged // Wait closes the pipe: read it to the end first
		err := g.cmd.Wait()
		g.mu.Lock()
		g.exited = err
		if err == nil {
			g.exited = errors.New("exit status 0")
		}
		g.mu.Unlock()
		close(g.done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			g.report(t)
		}
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.done:
		case <-time.After(15 * time.Second):
			_ = g.cmd.Process.Kill()
			select {
			case <-g.done:
			case <-time.After(10 * time.Second):
				t.Logf("unigate (pid %d) killed, its log still open: a child holds it", g.cmd.Process.Pid)
			}
		}
	})
	select {
	case a := <-addr:
		if _, err := netip.ParseAddrPort(a); err != nil {
			t.Fatalf("unigate logged listen address %q: %v", a, err)
		}
		g.url = "ws://" + a + "/ws"
	case <-time.After(20 * time.Second):
		t.Fatal("unigate did not log its listen address within 20s")
	}
	return g
}

// TestEndToEnd runs both scenarios, with worker processes, against a real
// gateway and checks that the reports add up.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the gateway; skipped with -short")
	}
	g := startGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	common := Common{
		URL:       g.url,
		Procs:     2,
		ServerPID: g.cmd.Process.Pid,
		Worker:    testWorker(),
		WorkerEnv: []string{workerEnv},
	}

	t.Run("idle", func(t *testing.T) {
		rep, err := RunIdle(ctx, IdleConfig{Common: common, Conns: 200, Rate: 2000, Steps: []int{100}, Settle: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Steps) != 2 || rep.Steps[1].Target != 200 {
			t.Fatalf("steps %+v, want 100 and 200", rep.Steps)
		}
		for _, s := range rep.Steps {
			if s.Sample.ClientConns != int64(s.Target) || s.Established != int64(s.Target) {
				t.Errorf("step %d: %d client conns, %d established", s.Target, s.Sample.ClientConns, s.Established)
			}
			if s.Sample.ServerRSSBytes <= 0 {
				t.Errorf("step %d: server RSS %d", s.Target, s.Sample.ServerRSSBytes)
			}
		}
		if rep.Reached != 200 || rep.Established != 200 || rep.Attempts != 200 {
			t.Errorf("reached %d, established %d, attempts %d; want 200", rep.Reached, rep.Established, rep.Attempts)
		}
		if rep.Failures.total() != 0 || rep.Drops.total() != 0 {
			t.Errorf("failures %v, drops %v", rep.Failures.Counts, rep.Drops.Counts)
		}
		if rep.ConnectLatency.Count != 200 || rep.ConnectLatency.P50 <= 0 || rep.ConnectLatency.Max < rep.ConnectLatency.P99 {
			t.Errorf("connect latency %+v", rep.ConnectLatency)
		}
		if rep.ClosedClean != 200 {
			t.Errorf("%d of 200 connections closed with a clean close handshake", rep.ClosedClean)
		}
		if rep.RSSSlope.Points != 2 || rep.ConnectRate <= 0 {
			t.Errorf("slope %+v, connect rate %v", rep.RSSSlope, rep.ConnectRate)
		}
		if rep.AfterClose == nil || rep.AfterClose.ClientConns != 0 {
			t.Errorf("after close: %+v", rep.AfterClose)
		}
		var sb strings.Builder
		rep.WriteSummary(&sb)
		if testing.Verbose() {
			t.Log("\n" + sb.String())
		}
	})

	t.Run("chat", func(t *testing.T) {
		const convs, rate = 20, 500
		dur, warm := 3*time.Second, time.Second
		rep, err := RunChat(ctx, ChatConfig{
			Common:        common,
			Conversations: convs,
			Agents:        4,
			AgentCapacity: 10,
			Rate:          rate,
			Duration:      dur,
			Warmup:        warm,
			Size:          128,
			Reply:         0.2,
			TokenCmd:      []string{g.bin, "token", "agent", "-data-dir", g.dataDir},
		})
		if rep != nil && testing.Verbose() {
			var sb strings.Builder
			rep.WriteSummary(&sb)
			t.Log("\n" + sb.String())
		}
		if err != nil {
			t.Fatal(err)
		}
		s := rep.Setup
		if s.Agents != 4 || s.Visitors != convs || s.Assigned != convs || s.Closed != convs || s.Foreign != 0 {
			t.Errorf("setup %+v", s)
		}
		// The schedule: rate × (warmup + duration) messages, rate × duration measured.
		if want := int64(rate * (dur + warm).Seconds()); rep.V2A.Sent != want {
			t.Errorf("sent %d, want %d", rep.V2A.Sent, want)
		}
		if want := int64(rate * dur.Seconds()); rep.V2A.Offered != want || rep.V2A.DeliveredMeasured != want {
			t.Errorf("offered %d, measured deliveries %d, want %d", rep.V2A.Offered, rep.V2A.DeliveredMeasured, want)
		}
		for _, f := range []FlowResult{rep.V2A, rep.A2V} {
			if f.Sent == 0 || f.Acked != f.Sent || f.Delivered != f.Acked || f.Refused != 0 || f.violations() != 0 {
				t.Errorf("flow %+v", f)
			}
		}
		if want := rep.V2A.Delivered / 5; rep.A2V.Sent != want {
			t.Errorf("agents replied %d times to %d messages at 0.2", rep.A2V.Sent, rep.V2A.Delivered)
		}
		if rep.V2ALatency.Count != rep.V2A.DeliveredMeasured || rep.A2VLatency.Count != rep.A2V.DeliveredMeasured {
			t.Errorf("histograms hold %d and %d values for %d and %d measured deliveries",
				rep.V2ALatency.Count, rep.A2VLatency.Count, rep.V2A.DeliveredMeasured, rep.A2V.DeliveredMeasured)
		}
		if l := rep.V2ALatency; l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max {
			t.Errorf("latency %+v", l)
		}
		// Rates are not checked against the schedule: the machine may be
		// shared. Only their consistency is.
		if math.Abs(rep.OfferedRate-rate) > 1 || rep.V2ARate <= 0 || rep.V2A.DeliveredInWindow > rep.V2A.Delivered ||
			rep.DeliveredRate != rep.V2ARate+rep.A2VRate {
			t.Errorf("offered %.0f/s (want %d), delivered %.0f/s = %.0f + %.0f", rep.OfferedRate, rate, rep.DeliveredRate, rep.V2ARate, rep.A2VRate)
		}
		if len(rep.Errors.Counts) != 0 || len(rep.Drops.Counts) != 0 || len(rep.Integrity) != 0 {
			t.Errorf("errors %v, drops %v, integrity %v", rep.Errors.Counts, rep.Drops.Counts, rep.Integrity)
		}
	})
}

// BenchmarkPayload is the client's per-message work besides the codec and
// the socket: build a text, parse it, record its latency. It bounds how
// much of a core the load generator spends per message on its own.
func BenchmarkPayload(b *testing.B) {
	for _, size := range []int{64, 256, 4096} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			h := newLatencyHist()
			var buf []byte
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for i := range b.N {
				buf = appendPayload(buf[:0], payload{k: i, due: time.Duration(i) * time.Millisecond, sent: time.Duration(i)*time.Millisecond + 1}, size)
				p, ok := parsePayload(string(buf), size)
				if !ok {
					b.Fatal("parse failed")
				}
				h.record(p.sent - p.due)
			}
		})
	}
}

func TestParsePIDs(t *testing.T) {
	for _, tc := range []struct {
		in    string
		first int
		all   []int
	}{{"", 0, nil}, {"42", 42, nil}, {"1, 2,3", 1, []int{1, 2, 3}}} {
		first, all, err := ParsePIDs(tc.in)
		if err != nil || first != tc.first || fmt.Sprint(all) != fmt.Sprint(tc.all) {
			t.Errorf("ParsePIDs(%q) = %d, %v, %v", tc.in, first, all, err)
		}
	}
	for _, bad := range []string{"x", "1,-2", "0"} {
		if _, _, err := ParsePIDs(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("ParsePIDs(%q): %v", bad, err)
		}
	}
	c := Common{ServerPID: 7}
	if got := c.serverPIDs(); len(got) != 1 || got[0] != 7 {
		t.Errorf("serverPIDs = %v", got)
	}
}
