package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/unigate/unigate/backends"
)

// Errors returned by the Try methods (possibly wrapped).
var (
	// ErrBusy: MaxConcurrent calls are already in flight.
	ErrBusy = errors.New("supervisor: backend busy")
	// ErrOpen: the circuit breaker is open.
	ErrOpen = errors.New("supervisor: circuit open")
	// ErrClosed: the supervisor was closed.
	ErrClosed = errors.New("supervisor: closed")
)

// Config configures one supervised plugin. Zero values take the defaults
// in brackets.
type Config struct {
	// Name labels metrics and logs [the plugin kind: bot, router, hook].
	Name string `yaml:"name"`
	// Path is the plugin executable; required.
	Path string `yaml:"path"`
	// Args are passed to the plugin.
	Args []string `yaml:"args"`
	// Env is added to the plugin's environment ("KEY=value"; a later
	// entry wins over an earlier one and over an inherited variable). The
	// plugin inherits the gateway's environment except the variables
	// named UNIGATE_* (the gateway's own settings, which may carry
	// secrets: PluginEnviron); go-plugin adds its handshake cookie
	// (backends.Handshake) and PLUGIN_* variables, which Env must not set.
	Env []string `yaml:"env"`

	// CallTimeout bounds each call [2s].
	CallTimeout time.Duration `yaml:"call_timeout"`
	// MaxConcurrent bounds the calls in flight; one more gets ErrBusy [64].
	MaxConcurrent int `yaml:"max_concurrent"`
	// FailureThreshold consecutive failures open the breaker [5].
	FailureThreshold int `yaml:"failure_threshold"`
	// CoolDown is how long the breaker stays open before a trial call [10s].
	CoolDown time.Duration `yaml:"cool_down"`

	// StartTimeout bounds the plugin's start and handshake [10s].
	StartTimeout time.Duration `yaml:"start_timeout"`
	// RestartMin is the first restart delay, doubled per quick failure [100ms].
	RestartMin time.Duration `yaml:"restart_min"`
	// RestartMax caps the restart delay [30s].
	RestartMax time.Duration `yaml:"restart_max"`
	// StableAfter is the uptime after which the restart delay resets [1m].
	StableAfter time.Duration `yaml:"stable_after"`

	// FailOpen (hooks only): when the hook is down, Event succeeds (the
	// event is dropped and counted) and Authenticate admits the caller as
	// an anonymous identity. False (fail-closed): Event returns the error
	// (the caller retries: delivery is at least once) and Authenticate
	// refuses.
	FailOpen bool `yaml:"fail_open"`

	// Logger receives supervision events and the plugin's stderr [discard].
	Logger *slog.Logger `yaml:"-"`
	// Metrics receives the metrics [a new set, not registered globally].
	Metrics *metrics.Set `yaml:"-"`
	// Now is the breaker's clock [time.Now]; tests inject one.
	Now func() time.Time `yaml:"-"`
}

func (c *Config) setDefaults(kind string) {
	if c.Name == "" {
		c.Name = kind
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.CallTimeout, 2*time.Second)
	def(&c.CoolDown, 10*time.Second)
	def(&c.StartTimeout, 10*time.Second)
	def(&c.RestartMin, 100*time.Millisecond)
	def(&c.RestartMax, 30*time.Second)
	def(&c.StableAfter, time.Minute)
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 64
	}
	if c.FailureThreshold <= 0 {
		c.FailureThreshold = 5
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// instance is one running plugin process.
type instance struct {
	client  *plugin.Client
	raw     any // the dispensed client half: a backends.Bot, Router or Hook
	started time.Time
}

// supervisor runs one plugin process of one kind; Bot, Router and Hook wrap
// it.
type supervisor struct {
	cfg  Config
	kind string
	log  *slog.Logger

	cur   atomic.Pointer[instance]
	sem   chan struct{}
	br    breaker
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	ready chan struct{}
	once  sync.Once

	mOK, mErr, mTimeout, mBusy, mOpen, mUnavail *metrics.Counter
	mFallback, mRestarts                        *metrics.Counter
	mLatency                                    *metrics.Histogram
}

func newSupervisor(cfg Config, kind string) (*supervisor, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("supervisor: %s: no plugin path", kind)
	}
	if err := checkEnv(cfg.Env); err != nil {
		return nil, err
	}
	cfg.setDefaults(kind)
	s := &supervisor{
		cfg:   cfg,
		kind:  kind,
		log:   cfg.Logger.With("backend", cfg.Name),
		sem:   make(chan struct{}, cfg.MaxConcurrent),
		br:    breaker{threshold: cfg.FailureThreshold, coolDown: cfg.CoolDown, now: cfg.Now},
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		ready: make(chan struct{}),
	}
	set, name := cfg.Metrics, cfg.Name
	calls := func(result string) *metrics.Counter {
		return set.GetOrCreateCounter(fmt.Sprintf(`unigate_backend_calls_total{backend=%q,result=%q}`, name, result))
	}
	s.mOK, s.mErr, s.mTimeout = calls("ok"), calls("error"), calls("timeout")
	s.mBusy, s.mOpen, s.mUnavail = calls("busy"), calls("open"), calls("unavailable")
	s.mFallback = set.GetOrCreateCounter(fmt.Sprintf(`unigate_backend_fallbacks_total{backend=%q}`, name))
	s.mRestarts = set.GetOrCreateCounter(fmt.Sprintf(`unigate_backend_restarts_total{backend=%q}`, name))
	s.mLatency = set.GetOrCreateHistogram(fmt.Sprintf(`unigate_backend_call_duration_seconds{backend=%q}`, name))
	set.GetOrCreateGauge(fmt.Sprintf(`unigate_backend_up{backend=%q}`, name), func() float64 {
		if s.cur.Load() != nil {
			return 1
		}
		return 0
	})
	set.GetOrCreateGauge(fmt.Sprintf(`unigate_backend_breaker_state{backend=%q}`, name), func() float64 {
		return float64(s.br.current())
	})
	go s.run()
	return s, nil
}

// Ready waits until the plugin has started once, or ctx ends.
func (s *supervisor) Ready(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PID is the plugin's process id, 0 while none is running.
func (s *supervisor) PID() int {
	inst := s.cur.Load()
	if inst == nil {
		return 0
	}
	if rc := inst.client.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

// Close stops the plugin and the restart loop. Calls afterwards fail with
// ErrClosed (the interface methods fall back).
func (s *supervisor) Close() error {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

// run starts the plugin, watches it and restarts it with backoff until
// Close.
func (s *supervisor) run() {
	defer close(s.done)
	attempt := 0
	for {
		inst, err := s.start()
		if err == nil {
			s.cur.Store(inst)
			select {
			case <-s.ready:
			default:
				close(s.ready)
			}
			s.log.Info("backend plugin started", "pid", s.PID())
			closing := s.watch(inst)
			s.cur.Store(nil)
			inst.client.Kill()
			if closing {
				return
			}
			s.mRestarts.Inc()
			if time.Since(inst.started) >= s.cfg.StableAfter {
				attempt = 0
			}
			s.log.Warn("backend plugin exited; restarting")
		} else {
			s.log.Error("backend plugin failed to start", "err", err)
		}
		delay := s.cfg.RestartMin << min(attempt, 30)
		if delay <= 0 || delay > s.cfg.RestartMax {
			delay = s.cfg.RestartMax
		}
		attempt++
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return
		}
	}
}

// hiddenEnvPrefix names the gateway's variables a plugin does not inherit.
const hiddenEnvPrefix = "UNIGATE_"

// PluginEnviron returns the environment of a plugin process: the variables
// of host (as os.Environ returns them) except those named UNIGATE_*, then
// extra. Without the filter a plugin would see every setting the gateway
// took from its environment, the secrets among them; what a plugin needs
// of them its configuration passes explicitly (extra).
func PluginEnviron(host, extra []string) []string {
	env := make([]string, 0, len(host)+len(extra))
	for _, kv := range host {
		if !strings.HasPrefix(kv, hiddenEnvPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// checkEnv checks the entries of Config.Env: KEY=value, a name without
// '=' or NUL, not one go-plugin sets itself.
func checkEnv(env []string) error {
	for _, kv := range env {
		key, value, ok := strings.Cut(kv, "=")
		switch {
		case !ok || key == "" || strings.ContainsRune(key, 0) || strings.ContainsRune(value, 0):
			return fmt.Errorf("supervisor: plugin environment entry %q: want KEY=value", kv)
		case key == backends.Handshake.MagicCookieKey || strings.HasPrefix(key, "PLUGIN_"):
			return fmt.Errorf("supervisor: plugin environment entry %q: set by the plugin handshake", key)
		}
	}
	return nil
}

// start launches a fresh plugin process: go-plugin never restarts a
// Client, so each start is a new plugin.NewClient.
func (s *supervisor) start() (*instance, error) {
	cmd := exec.Command(s.cfg.Path, s.cfg.Args...)
	cmd.Env = PluginEnviron(os.Environ(), s.cfg.Env)
	client := plugin.NewClient(&plugin.ClientConfig{
		SkipHostEnv:      true, // cmd.Env has what it inherits
		HandshakeConfig:  backends.Handshake,
		Plugins:          backends.PluginMap,
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     s.cfg.StartTimeout,
		Logger:           s.hclogger(),
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		return nil, err
	}
	raw, err := rpc.Dispense(s.kind)
	if err != nil {
		client.Kill()
		return nil, err
	}
	return &instance{client: client, raw: raw, started: time.Now()}, nil
}

// watch returns when the process has exited (false) or on Close (true).
func (s *supervisor) watch(inst *instance) bool {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return true
		case <-s.kick:
		case <-tick.C:
		}
		if inst.client.Exited() {
			return false
		}
	}
}

// call runs f against the current plugin under the breaker, the
// concurrency limit and the timeout, and accounts for the result.
func (s *supervisor) call(ctx context.Context, f func(ctx context.Context, raw any) error) error {
	select {
	case <-s.stop:
		return ErrClosed
	default:
	}
	select {
	case s.sem <- struct{}{}:
	default:
		s.mBusy.Inc()
		return ErrBusy
	}
	defer func() { <-s.sem }()
	if !s.br.allow() {
		s.mOpen.Inc()
		return ErrOpen
	}
	inst := s.cur.Load()
	if inst == nil {
		s.mUnavail.Inc()
		s.br.done(false, true)
		return fmt.Errorf("%w: %s plugin not running", backends.ErrUnavailable, s.cfg.Name)
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	t0 := time.Now()
	err := f(cctx, inst.raw)
	s.mLatency.UpdateDuration(t0)
	switch {
	case err == nil:
		s.mOK.Inc()
		s.br.done(true, true)
	case ctx.Err() != nil:
		// The caller gave up: not the plugin's fault.
		s.br.done(true, false)
		return err
	case cctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded:
		s.mTimeout.Inc()
		s.br.done(false, true)
		return fmt.Errorf("supervisor: %s: call timed out after %v: %w", s.cfg.Name, s.cfg.CallTimeout, context.DeadlineExceeded)
	default:
		if status.Code(err) == codes.Unavailable {
			s.mUnavail.Inc()
			err = fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
		} else {
			s.mErr.Inc()
		}
		s.br.done(false, true)
		select { // let the watcher look at the process now
		case s.kick <- struct{}{}:
		default:
		}
	}
	return err
}

// fallback logs and counts a fallback. Logging is at debug: the metrics
// carry the rate, and an outage must not log once per call.
func (s *supervisor) fallback(err error) {
	s.mFallback.Inc()
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("backend call failed; using fallback", "err", err)
	}
}

// hclogger adapts the slog logger for go-plugin, which also forwards the
// plugin's stderr through it.
func (s *supervisor) hclogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   "plugin." + s.cfg.Name,
		Level:  hclog.Info,
		Output: slogWriter{s.log},
	})
}

// slogWriter re-logs each line hclog writes.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	if w.log.Enabled(context.Background(), slog.LevelInfo) {
		w.log.Info("plugin", "line", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
