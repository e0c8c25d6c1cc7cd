package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
	"github.com/unigate/unigate/backends/supervisor"
	"github.com/unigate/unigate/internal/config"
)

// testPluginEnv makes this test binary serve a bot plugin instead of
// running tests (go-plugin's re-exec pattern; see TestMain), so the
// gateway supervises a real plugin process.
const testPluginEnv = "UNIGATE_TEST_BOT_PLUGIN"

// faultBot answers "echo: TEXT" with confidence 0.95, and misbehaves on
// cue: "panic" panics (the process dies), "hang" ignores its deadline,
// "slow" takes 3 s (time to SIGKILL it mid-call), "fail" errors.
type faultBot struct{}

func (faultBot) Answer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	switch req.Text {
	case "panic":
		panic("fault bot panics")
	case "hang":
		time.Sleep(time.Hour)
	case "slow":
		time.Sleep(3 * time.Second)
	case "fail":
		return backends.Answer{}, errors.New("fault bot fails")
	}
	return backends.Answer{Text: "echo: " + req.Text, Intent: "echo", Confidence: 0.95, Summary: req.Text}, nil
}

func serveTestPlugin() { sdk.ServeBot(faultBot{}) }

// chatter is a visitor of TestBotPluginFaults: it opens, says its line,
// and reports what came back.
type chatter struct {
	j    *jsonClient
	conv string
}

func newChatter(t *testing.T, addr string) *chatter {
	t.Helper()
	j := dialJSON(t, addr)
	j.send(map[string]any{"hello": map[string]any{}})
	j.next("welcome")
	j.send(map[string]any{"open": map[string]any{}})
	c := j.next("conversation")
	if c["state"] != "STATE_BOT" {
		t.Fatalf("open: %v, want STATE_BOT", c)
	}
	return &chatter{j: j, conv: c["conversationId"].(string)}
}

func (c *chatter) say(text string) {
	c.j.send(map[string]any{"send": map[string]any{"conversationId": c.conv, "clientMsgId": "m-" + text, "text": text}})
}

// waitBot returns the text of the next message from the bot.
func (c *chatter) waitBot() string {
	c.j.t.Helper()
	for {
		d := c.j.next("deliver")
		if d["senderRole"] == "ROLE_BOT" {
			return d["text"].(string)
		}
	}
}

// waitState waits for the conversation event of state st.
func (c *chatter) waitState(st string) map[string]any {
	c.j.t.Helper()
	for {
		if ev := c.j.next("conversation"); ev["state"] == st {
			return ev
		}
	}
}

// TestBotPluginFaults runs the gateway with a bot plugin process that
// panics, hangs and is killed with SIGKILL during conversations: each
// visitor concerned still reaches the human agent with every message it
// sent, the plugin is restarted and answers the next visitor, and the
// circuit breaker opens after the configured failures and closes after
// its cool-down.
func TestBotPluginFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs plugin processes; skipped with -short")
	}
	g := startGateway(t, func(c *config.Config) {
		c.Backends.Bot = "plugin"
		c.Backends.BotPlugin = os.Args[0]
		// A plugin does not inherit the gateway's UNIGATE_* variables:
		// configured for it.
		c.Backends.BotPluginEnv = []string{testPluginEnv + "=1"}
		c.Backends.CallTimeout = 500 * time.Millisecond
		c.Backends.FailureThreshold = 3
		c.Backends.CoolDown = 2 * time.Second
		c.Backends.RestartMax = 200 * time.Millisecond
		c.Limits.AnonymousPerIPRate, c.Limits.AnonymousPerIPBurst = 1000, 1000
	})
	addr := g.srv.Addr()
	bot := g.backends.closers[0].(*supervisor.Bot)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bot.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	agent := dialJSON(t, addr)
	agent.send(map[string]any{"hello": map[string]any{"token": agentToken(t, g, "a1")}})
	agent.next("welcome")
	agent.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 100}})
	agent.next("presence")

	// handedOff checks that a visitor's conversation reached the agent
	// with the visitor's messages in it.
	handedOff := func(c *chatter, texts ...string) {
		t.Helper()
		c.waitState("STATE_QUEUED")
		for {
			ev := agent.next("conversation")
			if ev["conversationId"] == c.conv && ev["state"] == "STATE_ASSIGNED" {
				break
			}
		}
		got := map[string]bool{}
		for len(got) < len(texts) {
			d := agent.next("deliver")
			if d["conversationId"] == c.conv {
				got[d["text"].(string)] = true
			}
		}
		for _, want := range texts {
			if !got[want] {
				t.Fatalf("agent did not get %q of %s: %v", want, c.conv, got)
			}
		}
	}
	answers := func(what string) {
		t.Helper()
		c := newChatter(t, addr)
		c.say(what)
		deadline := time.Now().Add(20 * time.Second)
		for {
			// Right after a crash the plugin may still be restarting: the
			// fallback hands off; a new visitor tries again.
			text := c.waitBot()
			if text == "echo: "+what {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the bot never came back: last answer %q", text)
			}
			c.waitState("STATE_QUEUED")
			c.j.c.Close()
			time.Sleep(100 * time.Millisecond)
			c = newChatter(t, addr)
			c.say(what)
		}
	}

	answers("hello")
	pid := bot.PID()

	// 1. A panic in the plugin kills its process during the call.
	v := newChatter(t, addr)
	v.say("panic")
	handedOff(v, "panic")
	answers("after the panic")
	if bot.PID() == pid {
		t.Fatal("the plugin process was not restarted after its panic")
	}

	// 2. A hang: the call times out (call_timeout) and the visitor is
	// handed off; the process stays up.
	v = newChatter(t, addr)
	v.say("hang")
	handedOff(v, "hang")

	// 3. SIGKILL while a call is in flight.
	pid = bot.PID()
	v = newChatter(t, addr)
	v.say("slow")
	time.Sleep(300 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	handedOff(v, "slow")
	answers("after the kill")

	// 4. The breaker: failure_threshold failures in a row open it; while
	// open every visitor is handed off at once without a call; after
	// cool_down a trial call closes it again.
	for range 3 {
		v = newChatter(t, addr)
		v.say("fail")
		handedOff(v, "fail")
	}
	if s := breakerState(t, g); s != 1 {
		t.Fatalf("breaker state %d after 3 failures, want 1 (open)", s)
	}
	v = newChatter(t, addr)
	v.say("hello while open")
	handedOff(v, "hello while open")
	time.Sleep(2500 * time.Millisecond) // cool_down
	answers("after the cool-down")
	if s := breakerState(t, g); s != 0 {
		t.Fatalf("breaker state %d after a successful trial, want 0 (closed)", s)
	}
}

// breakerState reads unigate_backend_breaker_state{backend="bot"}.
func breakerState(t *testing.T, g *gateway) int {
	t.Helper()
	var b bytes.Buffer
	g.backends.metrics.WritePrometheus(&b)
	for line := range strings.SplitSeq(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, `unigate_backend_breaker_state{backend="bot"} `); ok {
			var s int
			if _, err := fmt.Sscan(rest, &s); err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	t.Fatalf("no breaker metric in:\n%s", b.String())
	return -1
}
