package bench

import (
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/unigate/unigate/protocol"
)

// Common holds what both scenarios need. The zero value of every field
// means its default, except URL, which is required.
type Common struct {
	// URL is the gateway's WebSocket endpoint, ws://host:port/ws.
	URL string `json:"url"`
	// Subprotocol is offered in the upgrade: protocol.SubprotocolProto
	// (default, binary frames) or protocol.SubprotocolJSON (text frames).
	Subprotocol string `json:"subprotocol"`
	// Suite, when set (GM, GM-PQ or INTL-PQ), runs the secure channel
	// (docs/crypto.md) on every connection, offering this suite only;
	// empty: plaintext.
	Suite string `json:"suite,omitempty"`
	// ServerKeys are the files of the gateway's identity keys to pin
	// (required with Suite): PEM public keys, `unigate keygen` identity
	// key files, or hex public keys; see loadPins.
	ServerKeys []string `json:"server_keys,omitempty"`
	// Procs is the number of worker processes the connections are spread
	// over. Default 1.
	Procs int `json:"procs"`
	// Src lists the local addresses connections are bound to, round robin
	// (each worker uses all of them). Empty lets the kernel choose. Binding
	// several loopback addresses (127.0.0.2, 127.0.0.3, ...) multiplies the
	// ephemeral ports available towards one server address.
	Src []netip.Addr `json:"src,omitempty"`
	// Timeout bounds one connection attempt: dial, upgrade, Hello, Welcome.
	// Default 10s.
	Timeout time.Duration `json:"timeout_ns"`
	// ServerPID is the gateway's process id, for its RSS and CPU time from
	// /proc. 0 skips those samples.
	ServerPID int `json:"server_pid,omitempty"`
	// ServerPIDs, when it has more than one process, lists every process
	// of the server under test (several gateways sharing a port with
	// SO_REUSEPORT): RSS and CPU time are their sums, and each sample
	// also keeps the RSS of each. ServerPID is then the first of them.
	ServerPIDs []int `json:"server_pids,omitempty"`
	// MetricsURL is the gateway's Prometheus endpoint
	// (http://127.0.0.1:9090/metrics). Empty skips the server metrics.
	MetricsURL string `json:"metrics_url,omitempty"`

	// Progress receives one status line per second; nil: none.
	Progress io.Writer `json:"-"`
	// Worker is the command line that starts a worker process; its stdin
	// and stdout carry the coordinator protocol. Default: this executable
	// with the argument "worker" (cmd/unigate-bench handles it by calling
	// RunWorker).
	Worker []string `json:"-"`
	// WorkerEnv is appended to the environment of worker processes.
	WorkerEnv []string `json:"-"`
}

func (c *Common) setDefaults() error {
	if err := c.setTransportDefaults(); err != nil {
		return err
	}
	if c.Subprotocol == "" {
		c.Subprotocol = protocol.SubprotocolProto
	}
	if protocol.ForSubprotocol(c.Subprotocol) == nil {
		return fmt.Errorf("%w: unknown subprotocol %q", ErrConfig, c.Subprotocol)
	}
	_, err := c.secureConfig()
	return err
}

// setTransportDefaults is setDefaults without the check that Subprotocol
// is one of Unigate's: the echo scenario offers any subprotocol (or none).
func (c *Common) setTransportDefaults() error {
	if c.URL == "" {
		return fmt.Errorf("%w: the WebSocket URL is required", ErrConfig)
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return fmt.Errorf("%w: URL %q: want ws://host:port/path", ErrConfig, c.URL)
	}
	if c.Procs <= 0 {
		c.Procs = 1
	}
	if c.Procs > 64 {
		return fmt.Errorf("%w: -procs %d: at most 64 workers", ErrConfig, c.Procs)
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if len(c.Worker) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("%w: cannot find this executable to start workers: %v", ErrConfig, err)
		}
		c.Worker = []string{exe, "worker"}
	}
	return nil
}

// serverPIDs returns the processes of the server under test.
func (c *Common) serverPIDs() []int {
	if len(c.ServerPIDs) > 0 {
		return c.ServerPIDs
	}
	if c.ServerPID > 0 {
		return []int{c.ServerPID}
	}
	return nil
}

// ParsePIDs parses "123" or "123,456,789" (the -server-pid flag) into
// the first process id and, when there are several, all of them.
func ParsePIDs(s string) (first int, all []int, err error) {
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		pid, err := strconv.Atoi(part)
		if err != nil || pid <= 0 {
			return 0, nil, fmt.Errorf("%w: process id %q", ErrConfig, part)
		}
		all = append(all, pid)
	}
	if len(all) == 0 {
		return 0, nil, nil
	}
	if len(all) == 1 {
		return all[0], nil, nil
	}
	return all[0], all, nil
}

// IdleConfig configures RunIdle.
type IdleConfig struct {
	Common
	// Conns is the number of connections to reach. Required.
	Conns int `json:"conns"`
	// Rate is the total connection rate, connections per second over all
	// workers. Default 1000.
	Rate float64 `json:"rate"`
	// Steps are the connection counts at which the ramp pauses and the
	// server is sampled, increasing, the last one at most Conns. Default:
	// Conns alone. Conns is always the last step.
	Steps []int `json:"steps"`
	// Settle is the pause at each step before sampling (the server's GC
	// cannot be forced from outside). Default 5s.
	Settle time.Duration `json:"settle_ns"`
	// Hold keeps the connections open after the last step. Default 0.
	Hold time.Duration `json:"hold_ns"`
	// MaxInflight bounds the connection attempts in progress per worker.
	// Default 256.
	MaxInflight int `json:"max_inflight"`
	// MaxFailures is the failure budget of each worker: after that many
	// failed attempts it stops dialing. Default max(100, Conns/20).
	MaxFailures int `json:"max_failures"`
}

func (c *IdleConfig) setDefaults() error {
	if err := c.Common.setDefaults(); err != nil {
		return err
	}
	if c.Conns <= 0 {
		return fmt.Errorf("%w: -conns must be positive", ErrConfig)
	}
	if c.Rate <= 0 {
		c.Rate = 1000
	}
	if c.Settle <= 0 {
		c.Settle = 5 * time.Second
	}
	if c.Hold < 0 {
		c.Hold = 0
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 256
	}
	if c.MaxFailures <= 0 {
		c.MaxFailures = max(100, c.Conns/20)
	}
	steps := slices.Clone(c.Steps)
	if len(steps) == 0 || steps[len(steps)-1] < c.Conns {
		steps = append(steps, c.Conns)
	}
	prev := 0
	for _, s := range steps {
		if s <= prev || s > c.Conns {
			return fmt.Errorf("%w: -steps %v: want increasing counts up to -conns %d", ErrConfig, c.Steps, c.Conns)
		}
		prev = s
	}
	c.Steps = steps
	return nil
}

// ChatConfig configures RunChat.
type ChatConfig struct {
	Common
	// Conversations is the number of visitors, each with one conversation.
	// Default 1000.
	Conversations int `json:"conversations"`
	// Agents is the number of agent connections. Default 100.
	Agents int `json:"agents"`
	// AgentCapacity is the capacity each agent announces in its Presence.
	// Agents×AgentCapacity must cover Conversations (per worker). Default
	// 10.
	AgentCapacity int `json:"agent_capacity"`
	// Rate is the total visitor message rate, messages per second over all
	// conversations, on an open-loop schedule. Default 1000.
	Rate float64 `json:"rate"`
	// Duration is the measured part of the schedule, after Warmup.
	// Default 30s.
	Duration time.Duration `json:"duration_ns"`
	// Warmup is the first part of the schedule, sent but not recorded.
	// Default 5s; negative means none.
	Warmup time.Duration `json:"warmup_ns"`
	// Size is the length of each message text in bytes (it carries a
	// header of ~30 bytes: sequence and schedule time). Default 256.
	Size int `json:"size"`
	// Reply is the fraction (0..1) of visitor messages an agent answers;
	// 0 means none.
	Reply float64 `json:"reply"`
	// Tokens are the agent tokens, one per agent, in agent order. When
	// empty they are minted with TokenCmd.
	Tokens []string `json:"-"`
	// TokenCmd is the command that prints an agent token; "-id
	// <AgentPrefix><N>" is appended for agent N.
	TokenCmd []string `json:"token_cmd,omitempty"`
	// AgentPrefix starts every agent id. Default "bench-agent-".
	AgentPrefix string `json:"agent_prefix"`
	// Skill is the skill group visitors ask for and agents serve. With one
	// worker the default is "" (any agent); with several, worker i uses
	// Skill+"-p<i>" ("bench-p<i>" when Skill is empty) so that each
	// conversation is served by an agent of the same worker.
	Skill string `json:"skill"`
	// ConnectRate paces the setup connections, per second over all
	// workers. Default 1000.
	ConnectRate float64 `json:"connect_rate"`
	// SetupTimeout bounds the setup: connections, presence, assignment.
	// Default 60s.
	SetupTimeout time.Duration `json:"setup_timeout_ns"`
	// Drain is how long to wait after the schedule for outstanding acks and
	// deliveries. Default 10s.
	Drain time.Duration `json:"drain_ns"`
}

func (c *ChatConfig) setDefaults() error {
	if err := c.Common.setDefaults(); err != nil {
		return err
	}
	if c.Conversations <= 0 {
		c.Conversations = 1000
	}
	if c.Agents <= 0 {
		c.Agents = 100
	}
	if c.AgentCapacity <= 0 {
		c.AgentCapacity = 10
	}
	if c.Rate <= 0 {
		c.Rate = 1000
	}
	if c.Duration <= 0 {
		c.Duration = 30 * time.Second
	}
	switch {
	case c.Warmup == 0:
		c.Warmup = 5 * time.Second
	case c.Warmup < 0:
		c.Warmup = 0
	}
	if c.Size <= 0 {
		c.Size = 256
	}
	if c.Reply < 0 || c.Reply > 1 {
		return fmt.Errorf("%w: -reply %v: want 0..1", ErrConfig, c.Reply)
	}
	if c.AgentPrefix == "" {
		c.AgentPrefix = "bench-agent-"
	}
	if c.ConnectRate <= 0 {
		c.ConnectRate = 1000
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = 60 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 10 * time.Second
	}
	if len(c.Tokens) == 0 && len(c.TokenCmd) == 0 {
		return fmt.Errorf("%w: agents need tokens: give -tokens FILE or -token-cmd", ErrConfig)
	}
	if len(c.Tokens) > 0 && len(c.Tokens) < c.Agents {
		return fmt.Errorf("%w: %d tokens for %d agents", ErrConfig, len(c.Tokens), c.Agents)
	}
	if c.Procs > c.Conversations || c.Procs > c.Agents {
		return fmt.Errorf("%w: -procs %d exceeds conversations or agents", ErrConfig, c.Procs)
	}
	for i := range c.Procs {
		convs, agents := share(c.Conversations, c.Procs, i), share(c.Agents, c.Procs, i)
		if agents*c.AgentCapacity < convs {
			return fmt.Errorf("%w: worker %d has %d agents × capacity %d for %d conversations",
				ErrConfig, i, agents, c.AgentCapacity, convs)
		}
	}
	// A message per conversation more often than every 100µs is not a chat.
	if c.Rate/float64(c.Conversations) > 10000 {
		return fmt.Errorf("%w: %.0f msg/s over %d conversations is too many per conversation", ErrConfig, c.Rate, c.Conversations)
	}
	return nil
}

// skillFor returns the skill group of worker i.
func (c *ChatConfig) skillFor(i int) string {
	if c.Procs <= 1 {
		return c.Skill
	}
	base := c.Skill
	if base == "" {
		base = "bench"
	}
	return base + "-p" + strconv.Itoa(i)
}

// share returns worker i's share of n items split over procs workers:
// the first n%procs workers get one more.
func share(n, procs, i int) int {
	s := n / procs
	if i < n%procs {
		s++
	}
	return s
}

// offset returns the index of worker i's first item.
func offset(n, procs, i int) int {
	o := 0
	for j := range i {
		o += share(n, procs, j)
	}
	return o
}

// ParseAddrRange parses a list of local addresses: comma-separated IPv4
// addresses or ranges "127.0.0.2-127.0.0.9" (the last octet varies). At
// most 256 addresses.
func ParseAddrRange(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%w: source address %q: want IPv4", ErrConfig, lo)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil || !b.Is4() {
			return nil, fmt.Errorf("%w: source address %q: want IPv4", ErrConfig, hi)
		}
		a4, b4 := a.As4(), b.As4()
		if a4[0] != b4[0] || a4[1] != b4[1] || a4[2] != b4[2] || a4[3] > b4[3] {
			return nil, fmt.Errorf("%w: source range %q: only the last octet may vary, upwards", ErrConfig, part)
		}
		for x := int(a4[3]); x <= int(b4[3]); x++ {
			a4[3] = byte(x)
			out = append(out, netip.AddrFrom4(a4))
		}
	}
	if len(out) > 256 {
		return nil, fmt.Errorf("%w: %d source addresses: at most 256", ErrConfig, len(out))
	}
	return out, nil
}

// ParseSteps parses "5000,10000,15000".
func ParseSteps(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		n, err := strconv.Atoi(part)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%w: step %q: want a positive count", ErrConfig, part)
		}
		out = append(out, n)
	}
	return out, nil
}
