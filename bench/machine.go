package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where a benchmark ran; published figures must say.
type Machine struct {
	NumCPU        int    `json:"nproc"`
	CPUModel      string `json:"cpu_model"`
	Kernel        string `json:"kernel"`
	GoVersion     string `json:"go_version"`
	OSArch        string `json:"os_arch"`
	MemTotalBytes int64  `json:"mem_total_bytes"`
	PortRange     string `json:"ip_local_port_range"`
	SoMaxConn     string `json:"somaxconn"`
	OpenFiles     string `json:"open_files_limit"`
	// LoadAvg is /proc/loadavg when the run started: anything above zero
	// means other work shared the CPUs.
	LoadAvg string `json:"loadavg"`
	// ServerGOMAXPROCS is GOMAXPROCS from the server's environment, when
	// readable (/proc/PID/environ); empty when unset or unknown.
	ServerGOMAXPROCS string `json:"server_gomaxprocs,omitempty"`
}

// DescribeMachine collects Machine from /proc; missing files leave fields
// empty. serverPID, when not 0, is read for its GOMAXPROCS.
func DescribeMachine(serverPID int) Machine {
	m := Machine{
		NumCPU:    runtime.NumCPU(),
		GoVersion: runtime.Version(),
		OSArch:    runtime.GOOS + "/" + runtime.GOARCH,
		Kernel:    readTrim("/proc/sys/kernel/osrelease"),
		PortRange: strings.Join(strings.Fields(readTrim("/proc/sys/net/ipv4/ip_local_port_range")), "-"),
		SoMaxConn: readTrim("/proc/sys/net/core/somaxconn"),
		LoadAvg:   readTrim("/proc/loadavg"),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if kb, err := procField("/proc/meminfo", "MemTotal:"); err == nil {
		m.MemTotalBytes = kb * 1024
	}
	if b, err := os.ReadFile("/proc/self/limits"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(line, "Max open files") {
				f := strings.Fields(line)
				if len(f) >= 5 {
					m.OpenFiles = f[3] + "/" + f[4]
				}
			}
		}
	}
	if serverPID > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", serverPID)); err == nil {
			for kv := range bytes.SplitSeq(b, []byte{0}) {
				if v, ok := bytes.CutPrefix(kv, []byte("GOMAXPROCS=")); ok {
					m.ServerGOMAXPROCS = string(v)
				}
			}
		}
	}
	return m
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procField returns the first number after key in a /proc file of
// "Key:   123 kB" lines.
func procField(path, key string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, key); ok {
			fs := strings.Fields(rest)
			if len(fs) == 0 {
				break
			}
			return strconv.ParseInt(fs[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// ProcessRSS returns the resident set size of process pid in bytes.
func ProcessRSS(pid int) (int64, error) {
	kb, err := procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	return kb * 1024, err
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// ProcessCPU returns the user+system CPU time process pid has used.
func ProcessCPU(pid int) (time.Duration, error) {
	user, sys, err := ProcessCPUSplit(pid)
	return user + sys, err
}

// ProcessCPUSplit returns the user and the system CPU time process pid has
// used.
func ProcessCPUSplit(pid int) (user, sys time.Duration, _ error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may contain spaces: fields count from the
	// last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')': state(3) ppid(4) ... utime(14) stime(15) → indexes 11, 12.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return time.Duration(ut) * time.Second / clockTicks, time.Duration(st) * time.Second / clockTicks, nil
}

// SockStat is the TCP line of /proc/net/sockstat.
type SockStat struct {
	InUse    int64 `json:"inuse"`
	Orphan   int64 `json:"orphan"`
	TimeWait int64 `json:"tw"`
	Alloc    int64 `json:"alloc"`
	// MemBytes is the "mem" field (pages) times the page size: the memory
	// the kernel charges to TCP socket buffers, all sockets together.
	MemBytes int64 `json:"mem_bytes"`
}

// ReadSockStat reads /proc/net/sockstat.
func ReadSockStat() (SockStat, error) {
	var s SockStat
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseInt(f[i+1], 10, 64)
			if err != nil {
				continue
			}
			switch f[i] {
			case "inuse":
				s.InUse = v
			case "orphan":
				s.Orphan = v
			case "tw":
				s.TimeWait = v
			case "alloc":
				s.Alloc = v
			case "mem":
				s.MemBytes = v * int64(os.Getpagesize())
			}
		}
		return s, nil
	}
	return s, errors.New("/proc/net/sockstat: no TCP line")
}

// TCPCounters are kernel TCP counters (/proc/net/netstat TcpExt) that show
// a server that does not accept or answer fast enough.
type TCPCounters struct {
	ListenOverflows int64 `json:"listen_overflows"` // accept queue full
	ListenDrops     int64 `json:"listen_drops"`
	SynRetrans      int64 `json:"syn_retrans"` // SYNs sent again (1s, 3s, ... delays)
	Timeouts        int64 `json:"timeouts"`    // retransmission timeouts
}

// ReadTCPCounters reads /proc/net/netstat.
func ReadTCPCounters() (TCPCounters, error) {
	var c TCPCounters
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return c, err
	}
	var keys []string
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "TcpExt:")
		if !ok {
			continue
		}
		if keys == nil {
			keys = strings.Fields(rest)
			continue
		}
		for i, v := range strings.Fields(rest) {
			if i >= len(keys) {
				break
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			switch keys[i] {
			case "ListenOverflows":
				c.ListenOverflows = n
			case "ListenDrops":
				c.ListenDrops = n
			case "TCPSynRetrans":
				c.SynRetrans = n
			case "TCPTimeouts":
				c.Timeouts = n
			}
		}
		return c, nil
	}
	return c, errors.New("/proc/net/netstat: no TcpExt lines")
}

func (c TCPCounters) sub(o TCPCounters) TCPCounters {
	return TCPCounters{c.ListenOverflows - o.ListenOverflows, c.ListenDrops - o.ListenDrops, c.SynRetrans - o.SynRetrans, c.Timeouts - o.Timeouts}
}

// ScrapeMetrics fetches a Prometheus text endpoint and returns every
// sample whose name starts with prefix, keyed by name with labels
// (`unigate_netpoll_ws_closed_total{code="1002"}`).
func ScrapeMetrics(ctx context.Context, url, prefix string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(io.LimitReader(resp.Body, 16<<20), prefix)
}

// parseMetrics parses Prometheus text exposition lines "name{labels} value
// [timestamp]", skipping comments.
func parseMetrics(r io.Reader, prefix string) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, prefix) {
			continue
		}
		// The value follows the name, or the closing brace of the labels.
		nameEnd := strings.IndexByte(line, ' ')
		if j := strings.LastIndexByte(line, '}'); j >= 0 {
			nameEnd = j + 1
		}
		if nameEnd <= 0 || nameEnd >= len(line) {
			continue
		}
		fs := strings.Fields(line[nameEnd:])
		if len(fs) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			continue
		}
		out[line[:nameEnd]] = v
	}
	return out, sc.Err()
}

// metricsDelta returns after−before for every series that changed.
func metricsDelta(before, after map[string]float64) map[string]float64 {
	if after == nil {
		return nil
	}
	d := make(map[string]float64)
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
