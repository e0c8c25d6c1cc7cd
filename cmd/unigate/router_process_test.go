package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
	"github.com/unigate/unigate/backends/supervisor"
	"github.com/unigate/unigate/internal/config"
)

// testRouterPluginEnv makes this test binary serve a router plugin
// instead of running tests (see TestMain), so the gateway supervises a
// real router process.
const testRouterPluginEnv = "UNIGATE_TEST_ROUTER_PLUGIN"

// reverseRouter ranks the candidates by ID, last first, and misbehaves on
// cue of the visitor's declared region: "panic" kills the process,
// "hang" ignores its deadline, "fail" errors.
type reverseRouter struct{}

func (reverseRouter) Rank(_ context.Context, req backends.RankRequest) (backends.Ranking, error) {
	switch req.Conversation.Region {
	case "panic":
		panic("test router panics")
	case "hang":
		time.Sleep(time.Hour)
	case "fail":
		return backends.Ranking{}, errors.New("test router fails")
	}
	ids := make([]string, 0, len(req.Candidates))
	for _, a := range req.Candidates {
		ids = append(ids, a.ID)
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	out := backends.Ranking{Explanation: "reverse order: " + strings.Join(ids, ", ")}
	for i, id := range ids {
		out.Agents = append(out.Agents, backends.Ranked{AgentID: id, Score: 1 / float64(i+1)})
	}
	return out, nil
}

func serveTestRouter() { sdk.ServeRouter(reverseRouter{}) }

// TestRouterPlugin runs the gateway with a router plugin process: the
// conversation goes to the agent the plugin ranks first although the
// built-in scorer would pick another (same region as the visitor); a
// plugin that panics (its process dies), hangs past call_timeout or
// fails falls back to the built-in scorer, the visitor is assigned all
// the same and the agent is told why; the plugin is restarted; the
// breaker opens after failure_threshold failures (the visitor is routed
// by the scorer without a call) and closes after its cool-down.
func TestRouterPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("runs plugin processes; skipped with -short")
	}
	g := startGateway(t, func(c *config.Config) {
		c.Backends.Router = "plugin"
		c.Backends.RouterPlugin = os.Args[0]
		// A plugin does not inherit the gateway's UNIGATE_* variables:
		// configured for it.
		c.Backends.RouterPluginEnv = []string{testRouterPluginEnv + "=1"}
		c.Backends.CallTimeout = 500 * time.Millisecond
		c.Backends.FailureThreshold = 3
		c.Backends.CoolDown = 2 * time.Second
		c.Backends.RestartMax = 200 * time.Millisecond
		c.Limits.AnonymousPerIPRate, c.Limits.AnonymousPerIPBurst = 1000, 1000
	})
	addr := g.srv.Addr()
	var router *supervisor.Router
	for _, c := range g.backends.closers {
		if r, ok := c.(*supervisor.Router); ok {
			router = r
		}
	}
	if router == nil {
		t.Fatal("no supervised router")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := router.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	agents := map[string]*jsonClient{}
	for _, a := range []struct{ id, region string }{{"a-east", "cn-east"}, {"z-west", "us-west"}} {
		j := dialJSON(t, addr)
		j.send(map[string]any{"hello": map[string]any{"token": agentToken(t, g, a.id)}})
		j.next("welcome")
		j.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 100, "region": a.region}})
		j.next("presence")
		agents[a.id] = j
	}
	// visit opens a conversation from region and returns the agent it
	// was assigned to and the explanation that agent got.
	visit := func(region string) (agent, routing string) {
		t.Helper()
		v := dialJSON(t, addr)
		v.send(map[string]any{"hello": map[string]any{}})
		v.next("welcome")
		v.send(map[string]any{"open": map[string]any{"region": region}})
		conv := v.next("conversation")["conversationId"].(string)
		for {
			c := v.next("conversation")
			if c["state"] != "STATE_ASSIGNED" {
				continue
			}
			agent, _ = c["agentId"].(string)
			break
		}
		a := agents[agent]
		if a == nil {
			t.Fatalf("%s assigned to unknown agent %q", conv, agent)
		}
		for {
			if c := a.next("conversation"); c["conversationId"] == conv && c["state"] == "STATE_ASSIGNED" {
				return agent, fmt.Sprint(c["routing"])
			}
		}
	}
	pluginChoice := func(what string) {
		t.Helper()
		agent, routing := visit("cn-east")
		if agent != "z-west" || !strings.HasPrefix(routing, "reverse order: z-west, a-east") {
			t.Fatalf("%s: assigned to %s (%q), want z-west by the plugin", what, agent, routing)
		}
	}
	fellBack := func(what, region string) string {
		t.Helper()
		agent, routing := visit(region)
		if agent == "" || !strings.HasPrefix(routing, "router plugin failed") || !strings.Contains(routing, "weights skill") {
			t.Fatalf("%s: assigned to %q (%q), want a fallback to the built-in scorer", what, agent, routing)
		}
		return agent
	}

	// The built-in scorer would give a cn-east visitor to a-east.
	pluginChoice("healthy plugin")
	pid := router.PID()

	// 1. The plugin panics: its process dies during the call.
	fellBack("panic", "panic")
	waitRestart(t, router, pid)
	pluginChoice("after the panic")

	// 2. It hangs: the call times out after call_timeout.
	fellBack("hang", "hang")
	if n := backendMetric(t, g, `unigate_backend_calls_total{backend="router",result="timeout"}`); n != 1 {
		t.Fatalf("%v timed-out calls, want 1", n)
	}

	// 3. The breaker: with the hang, two more failures make three in a
	// row; while open, visitors are routed by the scorer without a call.
	fellBack("fail 1", "fail")
	fellBack("fail 2", "fail")
	if s := backendMetric(t, g, `unigate_backend_breaker_state{backend="router"}`); s != 1 {
		t.Fatalf("breaker state %v after 3 failures, want 1 (open)", s)
	}
	open := backendMetric(t, g, `unigate_backend_calls_total{backend="router",result="open"}`)
	if agent := fellBack("while open", "cn-east"); agent != "a-east" {
		t.Fatalf("the built-in scorer gave a cn-east visitor to %s, want a-east (same region)", agent)
	}
	if n := backendMetric(t, g, `unigate_backend_calls_total{backend="router",result="open"}`); n != open+1 {
		t.Fatalf("calls refused by the open breaker %v, want %v", n, open+1)
	}
	time.Sleep(2500 * time.Millisecond) // cool_down
	pluginChoice("after the cool-down")
	if s := backendMetric(t, g, `unigate_backend_breaker_state{backend="router"}`); s != 0 {
		t.Fatalf("breaker state %v after a successful trial, want 0 (closed)", s)
	}
	if n := backendMetric(t, g, `unigate_backend_fallbacks_total{backend="router"}`); n != 5 {
		t.Fatalf("%v fallbacks counted, want 5 (panic, hang, two failures, open)", n)
	}
}

// waitRestart waits until the supervisor runs a new plugin process.
func waitRestart(t *testing.T, s interface{ PID() int }, old int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p := s.PID(); p != 0 && p != old {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the plugin was not restarted")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// backendMetric reads one sample of the supervised plugins' metrics.
func backendMetric(t *testing.T, g *gateway, name string) float64 {
	t.Helper()
	var b bytes.Buffer
	g.backends.metrics.WritePrometheus(&b)
	for line := range strings.SplitSeq(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in:\n%s", name, b.String())
	return -1
}
