package supervisor

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
)

// checkFor polls cond until it returns nil or timeout passes.
func checkFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ready(t testing.TB, s interface{ Ready(context.Context) error }) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("plugin not ready: %v", err)
	}
}

func newTestBot(t testing.TB, cfg Config) *Bot {
	t.Helper()
	b, err := NewBot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ready(t, b)
	return b
}

func isHandoff(a backends.Answer) bool {
	return a.Handoff && a.Intent == builtin.HandoffIntent
}

func TestBotRoundTrip(t *testing.T) {
	b := newTestBot(t, helperConfig(t, "plugins"))
	ctx := context.Background()
	req := backends.AnswerRequest{
		ConversationID: "c1", Tenant: "acme", Text: "hello", Language: "en",
		History: []backends.HistoryMessage{{From: "visitor", Text: "hi", At: time.UnixMilli(1700000000000)}},
	}
	a, err := b.TryAnswer(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := backends.Answer{Text: "echo: hello", Intent: "echo", Confidence: 0.95, Summary: "c1/en/1"}
	if a.Text != want.Text || a.Intent != want.Intent || a.Confidence != want.Confidence || a.Summary != want.Summary || a.Handoff {
		t.Fatalf("got %+v, want %+v", a, want)
	}
	// Through the interface, with the plugin's error → hand-off.
	a, err = b.Answer(ctx, backends.AnswerRequest{Text: "fail"})
	if err != nil || !isHandoff(a) || a.Summary != "fail" {
		t.Fatalf("fallback: got %+v, %v", a, err)
	}
}

func TestRouterPlugin(t *testing.T) {
	r, err := NewRouter(helperConfig(t, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ready(t, r)
	req := backends.RankRequest{
		Conversation: backends.Conversation{ID: "c", Skills: []string{"billing"}},
		Candidates: []backends.Agent{
			{ID: "a", Skills: []string{"billing"}, Capacity: 5},
			{ID: "b", Capacity: 5},
		},
	}
	got, err := r.Rank(context.Background(), req)
	if err != nil || len(got.Agents) != 2 || got.Agents[0].AgentID != "b" || got.Explanation != "reversed by the test plugin" {
		t.Fatalf("plugin ranking: %+v, %v", got, err)
	}
	// Plugin gone → the built-in scorer ranks.
	r.Close()
	got, err = r.Rank(context.Background(), req)
	if err != nil || len(got.Agents) != 2 || got.Agents[0].AgentID != "a" || !strings.Contains(got.Explanation, "skill") {
		t.Fatalf("fallback ranking: %+v, %v", got, err)
	}
	// Without a Fallback, the error comes back (the caller falls back),
	// counted as a fallback.
	r.Fallback = nil
	if got, err = r.Rank(context.Background(), req); !errors.Is(err, ErrClosed) || len(got.Agents) != 0 {
		t.Fatalf("without a fallback: %+v, %v; want ErrClosed", got, err)
	}
	if n := r.mFallback.Get(); n != 2 {
		t.Fatalf("%d fallbacks counted, want 2", n)
	}
}

func TestKilledPluginRestarts(t *testing.T) {
	set := metrics.NewSet()
	cfg := helperConfig(t, "plugins")
	cfg.Metrics = set
	b := newTestBot(t, cfg)
	ctx := context.Background()
	if _, err := b.TryAnswer(ctx, backends.AnswerRequest{Text: "before"}); err != nil {
		t.Fatal(err)
	}
	pid := b.PID()
	if pid == 0 {
		t.Fatal("no pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// During the outage the visitor still gets an answer (a hand-off).
	a, _ := b.Answer(ctx, backends.AnswerRequest{Text: "during"})
	if !isHandoff(a) && a.Text != "echo: during" {
		t.Fatalf("answer during outage: %+v", a)
	}
	checkFor(t, 20*time.Second, func() error {
		if p := b.PID(); p == 0 || p == pid {
			return errors.New("not restarted yet")
		}
		_, err := b.TryAnswer(ctx, backends.AnswerRequest{Text: "after"})
		return err
	})
	a, err := b.TryAnswer(ctx, backends.AnswerRequest{Text: "after"})
	if err != nil || a.Text != "echo: after" {
		t.Fatalf("after restart: %+v, %v", a, err)
	}
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), `unigate_backend_restarts_total{backend="bot"} 1`) {
		t.Errorf("restart not counted:\n%s", buf.String())
	}
}

func TestPanickingPluginRestarts(t *testing.T) {
	b := newTestBot(t, helperConfig(t, "plugins"))
	ctx := context.Background()
	pid := b.PID()
	a, err := b.Answer(ctx, backends.AnswerRequest{Text: "panic"})
	if err != nil || !isHandoff(a) {
		t.Fatalf("panic: got %+v, %v; want a hand-off", a, err)
	}
	checkFor(t, 20*time.Second, func() error {
		if p := b.PID(); p == 0 || p == pid {
			return errors.New("not restarted yet")
		}
		_, err := b.TryAnswer(ctx, backends.AnswerRequest{Text: "again"})
		return err
	})
}

func TestHangingPluginTimesOut(t *testing.T) {
	cfg := helperConfig(t, "plugins")
	cfg.CallTimeout = 100 * time.Millisecond
	b := newTestBot(t, cfg)
	ctx := context.Background()
	start := time.Now()
	_, err := b.TryAnswer(ctx, backends.AnswerRequest{Text: "hang"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	a, err := b.Answer(ctx, backends.AnswerRequest{Text: "hang", Language: "zh-CN"})
	if err != nil || !isHandoff(a) || !strings.Contains(a.Text, "人工") {
		t.Fatalf("fallback: got %+v, %v", a, err)
	}
}

func TestPluginThatNeverStarts(t *testing.T) {
	b, err := NewBot(helperConfig(t, "exit"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.TryAnswer(context.Background(), backends.AnswerRequest{Text: "x"})
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: "x"})
	if !isHandoff(a) {
		t.Fatalf("got %+v, want a hand-off", a)
	}
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestCircuitBreaker(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1700000000, 0)}
	cfg := helperConfig(t, "plugins")
	cfg.FailureThreshold = 3
	cfg.CoolDown = 30 * time.Second
	cfg.Now = clock.Now
	b := newTestBot(t, cfg)
	ctx := context.Background()
	fail := backends.AnswerRequest{Text: "fail"}
	ok := backends.AnswerRequest{Text: "ok"}

	// Failures below the threshold, then a success, reset the count.
	for range 2 {
		if _, err := b.TryAnswer(ctx, fail); err == nil || errors.Is(err, ErrOpen) {
			t.Fatalf("want the plugin's error, got %v", err)
		}
	}
	if _, err := b.TryAnswer(ctx, ok); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := b.TryAnswer(ctx, fail); err == nil || errors.Is(err, ErrOpen) {
			t.Fatalf("failure %d: want the plugin's error, got %v", i, err)
		}
	}
	// Open: calls do not reach the plugin, the fallback answers.
	if _, err := b.TryAnswer(ctx, ok); !errors.Is(err, ErrOpen) {
		t.Fatalf("want ErrOpen, got %v", err)
	}
	if a, _ := b.Answer(ctx, ok); !isHandoff(a) {
		t.Fatalf("want a hand-off while open, got %+v", a)
	}
	clock.Advance(29 * time.Second)
	if _, err := b.TryAnswer(ctx, ok); !errors.Is(err, ErrOpen) {
		t.Fatalf("before cool-down: want ErrOpen, got %v", err)
	}
	// Half-open trial fails → open again for a full cool-down.
	clock.Advance(time.Second)
	if _, err := b.TryAnswer(ctx, fail); err == nil || errors.Is(err, ErrOpen) {
		t.Fatalf("trial: want the plugin's error, got %v", err)
	}
	if _, err := b.TryAnswer(ctx, ok); !errors.Is(err, ErrOpen) {
		t.Fatalf("after failed trial: want ErrOpen, got %v", err)
	}
	// Half-open trial succeeds → closed.
	clock.Advance(30 * time.Second)
	if _, err := b.TryAnswer(ctx, ok); err != nil {
		t.Fatalf("trial: %v", err)
	}
	if _, err := b.TryAnswer(ctx, ok); err != nil {
		t.Fatalf("closed again: %v", err)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	cfg := helperConfig(t, "plugins")
	cfg.MaxConcurrent = 2
	cfg.CallTimeout = 10 * time.Second
	b := newTestBot(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { b.TryAnswer(ctx, backends.AnswerRequest{Text: "slow"}) })
	}
	checkFor(t, 10*time.Second, func() error {
		if len(b.sem) != 2 {
			return errors.New("slow calls not in flight")
		}
		return nil
	})
	start := time.Now()
	_, err := b.TryAnswer(context.Background(), backends.AnswerRequest{Text: "third"})
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("want ErrBusy, got %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("ErrBusy took %v: it must not wait", d)
	}
	if a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: "third"}); !isHandoff(a) {
		t.Fatalf("want a hand-off when busy, got %+v", a)
	}
	cancel()
	wg.Wait()
	// Cancelled by the caller: not counted against the plugin.
	if s := b.br.current(); s != stateClosed {
		t.Fatalf("breaker state %d after caller cancellations", s)
	}
	if _, err := b.TryAnswer(context.Background(), backends.AnswerRequest{Text: "fourth"}); err != nil {
		t.Fatal(err)
	}
}

func TestHookAuthenticate(t *testing.T) {
	h, err := NewHook(helperConfig(t, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ready(t, h)
	ctx := context.Background()
	ok := []backends.Credentials{
		{Tenant: "acme", Role: "agent", Username: "alice", Password: "pw"},
		{Tenant: "acme", Role: "visitor", Token: "good"},
		{Tenant: "acme", Role: "agent", SSOAssertion: []byte("<saml/>")},
	}
	for _, c := range ok {
		id, err := h.Authenticate(ctx, c)
		if err != nil || !id.OK || id.ID == "" || id.Tenant != "acme" {
			t.Errorf("%+v: got %+v, %v", c, id, err)
		}
	}
	refused := []backends.Credentials{
		{Tenant: "acme", Role: "visitor", Username: "mallory", Password: "pw"},
		{Tenant: "acme", Role: "visitor", Token: "bad"},
	}
	for _, c := range refused {
		id, err := h.Authenticate(ctx, c)
		if err != nil || id.OK || id.Reason == "" {
			t.Errorf("%+v: got %+v, %v; want a refusal with a reason", c, id, err)
		}
	}
	if err := h.Event(ctx, backends.Event{ID: "e1", Type: backends.EventConversationOpened, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func TestHookFailOpenClosed(t *testing.T) {
	ctx := context.Background()
	cred := backends.Credentials{Tenant: "acme", Role: "visitor", Token: "good"}
	for _, failOpen := range []bool{true, false} {
		// A plugin that is up but fails an event.
		cfg := helperConfig(t, "plugins")
		cfg.FailOpen = failOpen
		h, err := NewHook(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ready(t, h)
		err = h.Event(ctx, backends.Event{ID: "fail", Type: backends.EventMessageStored})
		if failOpen && err != nil {
			t.Errorf("fail-open event: %v", err)
		}
		if !failOpen && err == nil {
			t.Errorf("fail-closed event: no error")
		}
		h.Close()

		// A plugin that never comes up.
		cfg = helperConfig(t, "exit")
		cfg.FailOpen = failOpen
		h, err = NewHook(cfg)
		if err != nil {
			t.Fatal(err)
		}
		id, err := h.Authenticate(ctx, cred)
		if err != nil {
			t.Fatal(err)
		}
		if !id.Fallback {
			t.Errorf("failOpen=%v: the fallback identity is not marked Fallback: %+v", failOpen, id)
		}
		if failOpen && (!id.OK || id.ID != "" || id.Reason != ReasonFailOpen || id.Tenant != "acme") {
			t.Errorf("fail-open: got %+v", id)
		}
		if !failOpen && (id.OK || id.Reason != ReasonFailClosed) {
			t.Errorf("fail-closed: got %+v", id)
		}
		err = h.Event(ctx, backends.Event{ID: "e2"})
		if failOpen != (err == nil) {
			t.Errorf("fail-open=%v: event error %v", failOpen, err)
		}
		if !failOpen && !errors.Is(err, backends.ErrUnavailable) {
			t.Errorf("fail-closed: got %v, want ErrUnavailable", err)
		}
		h.Close()
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := NewBot(Config{}); err == nil {
		t.Fatal("no path: want an error")
	}
}
