package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// sampler takes Samples of the server and the kernel; it keeps the last
// scrape of the server's metrics.
type sampler struct {
	c       *Common
	start   time.Time
	metrics map[string]float64
}

// take returns a Sample; fields it could not read are left at their zero
// value (ServerConns at -1) and the errors are returned joined.
func (s *sampler) take(ctx context.Context, clientConns int64) (Sample, error) {
	smp := Sample{At: time.Since(s.start).Seconds(), ClientConns: clientConns, ServerConns: -1}
	var errs []error
	pids := s.c.serverPIDs()
	for _, pid := range pids {
		rss, err := ProcessRSS(pid)
		smp.ServerRSSBytes += rss
		if len(pids) > 1 {
			smp.ServerRSSPerProc = append(smp.ServerRSSPerProc, rss)
		}
		errs = append(errs, err)
	}
	ss, err := ReadSockStat()
	smp.SockStat = ss
	errs = append(errs, err)
	slab, err := procField("/proc/meminfo", "Slab:")
	smp.SlabBytes = slab * 1024
	errs = append(errs, err)
	smp.TCP, err = ReadTCPCounters()
	errs = append(errs, err)
	if s.c.MetricsURL != "" {
		m, err := ScrapeMetrics(ctx, s.c.MetricsURL, "unigate_")
		errs = append(errs, err)
		if err == nil {
			s.metrics = m
			if v, ok := m["unigate_netpoll_connections"]; ok {
				smp.ServerConns = v
			}
		}
	}
	return smp, errors.Join(errs...)
}

// conns is the connection count a sample stands for: the server's own
// gauge when known, else the clients' count.
func conns(s Sample) float64 {
	if s.ServerConns >= 0 {
		return s.ServerConns
	}
	return float64(s.ClientConns)
}

// fitSlopes fills the RSS and kernel slopes of rep from its steps.
func fitSlopes(rep *IdleReport) {
	var xs, rss, kx, kmem, slab []float64
	for _, st := range rep.Steps {
		x := conns(st.Sample)
		if st.Sample.ServerRSSBytes > 0 {
			xs = append(xs, x)
			rss = append(rss, float64(st.Sample.ServerRSSBytes))
		}
		kx = append(kx, x)
		kmem = append(kmem, float64(st.Sample.SockStat.MemBytes))
		slab = append(slab, float64(st.Sample.SlabBytes))
	}
	rep.RSSSlope = leastSquares(xs, rss)
	rep.KernelSlope = leastSquares(kx, kmem)
	rep.SlabSlope = leastSquares(kx, slab)
}

// startProgressLine calls line() every second until stop is called (line
// may record a timeline point) and prints what it returns to w, unless w
// is nil.
func startProgressLine(w io.Writer, start time.Time, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				l := line()
				if w != nil {
					fmt.Fprintf(w, "[%4.0fs] %s\n", time.Since(start).Seconds(), l)
				}
			}
		}
	})
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// WriteJSON writes v, indented, to path ("-" is stdout).
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func fmtBytes(b float64) string {
	neg := b < 0
	if neg {
		b = -b
	}
	unit := "B"
	for _, u := range []string{"KiB", "MiB", "GiB"} {
		if b < 1024 {
			break
		}
		b /= 1024
		unit = u
	}
	s := fmt.Sprintf("%.1f %s", b, unit)
	if unit == "B" {
		s = fmt.Sprintf("%.0f B", b)
	}
	if neg {
		s = "-" + s
	}
	return s
}

func fmtServerConns(v float64) string {
	if v < 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f", v)
}

func writeMachine(w io.Writer, m Machine) {
	fmt.Fprintf(w, "machine: %d × %s, kernel %s, %s, %s RAM, ports %s, somaxconn %s, open files %s",
		m.NumCPU, m.CPUModel, m.Kernel, m.GoVersion, fmtBytes(float64(m.MemTotalBytes)), m.PortRange, m.SoMaxConn, m.OpenFiles)
	if f := strings.Fields(m.LoadAvg); len(f) >= 3 {
		fmt.Fprintf(w, ", load %s %s %s", f[0], f[1], f[2])
	}
	if m.ServerGOMAXPROCS != "" {
		fmt.Fprintf(w, ", server GOMAXPROCS=%s", m.ServerGOMAXPROCS)
	}
	fmt.Fprintln(w)
}

func writeReasons(w io.Writer, title string, r Reasons) {
	if len(r.Counts) == 0 {
		fmt.Fprintf(w, "%s: none\n", title)
		return
	}
	keys := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Fprintf(w, "%s:\n", title)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-28s %8d  e.g. %s\n", k, r.Counts[k], r.Samples[k])
	}
}

func writeMetrics(w io.Writer, title string, m map[string]float64) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Fprintf(w, "%s:\n", title)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-60s %+.0f\n", k, m[k])
	}
}

// WriteSummary writes a readable summary of the report.
func (r *IdleReport) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "unigate-bench idle: %d connections at %.0f/s over %d workers, %s, %s\n",
		r.Config.Conns, r.Config.Rate, r.Config.Procs, r.Config.channelLabel(), r.Config.URL)
	writeMachine(w, r.Machine)
	fmt.Fprintf(w, "baseline: server RSS %s, kernel TCP mem %s, server conns %s\n",
		fmtBytes(float64(r.Baseline.ServerRSSBytes)), fmtBytes(float64(r.Baseline.SockStat.MemBytes)), fmtServerConns(r.Baseline.ServerConns))
	fmt.Fprintf(w, "%8s %8s %8s %9s %12s %12s %12s %12s %12s\n",
		"target", "client", "server", "rate/s", "server RSS", "RSS/conn", "TCP mem", "TCP/conn", "slab/conn")
	for _, s := range r.Steps {
		fmt.Fprintf(w, "%8d %8d %8s %9.0f %12s %12s %12s %12s %12s\n",
			s.Target, s.Sample.ClientConns, fmtServerConns(s.Sample.ServerConns), s.ConnectRate,
			fmtBytes(float64(s.Sample.ServerRSSBytes)), fmtBytes(s.RSSPerConn),
			fmtBytes(float64(s.Sample.SockStat.MemBytes)), fmtBytes(s.KernelPerConn), fmtBytes(s.SlabPerConn))
	}
	if n := len(r.Steps); n > 0 && len(r.Steps[n-1].Sample.ServerRSSPerProc) > 0 {
		fmt.Fprintf(w, "server RSS per process at the last step:")
		for _, v := range r.Steps[n-1].Sample.ServerRSSPerProc {
			fmt.Fprintf(w, " %s", fmtBytes(float64(v)))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "server RSS slope: %s per connection (least squares over %d steps, R²=%.4f)\n",
		fmtBytes(r.RSSSlope.Slope), r.RSSSlope.Points, r.RSSSlope.R2)
	fmt.Fprintf(w, "kernel TCP memory (sockstat mem) slope: %s per connection (buffers of both ends, R²=%.4f)\n",
		fmtBytes(r.KernelSlope.Slope), r.KernelSlope.R2)
	fmt.Fprintf(w, "kernel slab slope: %s per connection (socket structures of both ends, whole machine, R²=%.4f)\n",
		fmtBytes(r.SlabSlope.Slope), r.SlabSlope.R2)
	fmt.Fprintf(w, "connect rate: %.0f/s; attempts %d, established %d, open at last step %d, closed cleanly %d; server pings answered %d (pong errors %d)\n",
		r.ConnectRate, r.Attempts, r.Established, r.Reached, r.ClosedClean, r.Pings, r.PongErrors)
	l := r.ConnectLatency
	fmt.Fprintf(w, "connect+hello latency: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n",
		l.P50, l.P90, l.P99, l.P999, l.Max)
	if t := r.TCP; t != (TCPCounters{}) {
		fmt.Fprintf(w, "kernel TCP counters during the ramp: listen overflows %d, listen drops %d, SYN retransmits %d, timeouts %d\n",
			t.ListenOverflows, t.ListenDrops, t.SynRetrans, t.Timeouts)
	}
	writeReasons(w, "failures", r.Failures)
	writeReasons(w, "dropped by the server", r.Drops)
	if a := r.AfterClose; a != nil {
		fmt.Fprintf(w, "after close: server RSS %s, server conns %s, kernel TCP mem %s, TIME_WAIT %d\n",
			fmtBytes(float64(a.ServerRSSBytes)), fmtServerConns(a.ServerConns), fmtBytes(float64(a.SockStat.MemBytes)), a.SockStat.TimeWait)
	}
	writeMetrics(w, "server metrics, baseline → last step", r.ServerMetrics)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}
