package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
)

// The re-exec trick (go-plugin's plugin_test.go): the test binary, started
// with UNIGATE_SUPERVISOR_HELPER=1, serves a test plugin instead of running
// tests, so the tests supervise real plugin processes.

const helperEnv = "UNIGATE_SUPERVISOR_HELPER"

// helperConfig returns a Config that starts this test binary as a plugin
// serving mode ("plugins": bot, router and hook).
func helperConfig(t testing.TB, mode string) Config {
	t.Helper()
	return Config{
		Path:       os.Args[0],
		Args:       []string{"-test.run=^TestHelperProcess$", "--", mode},
		Env:        []string{helperEnv + "=1"},
		RestartMin: 10 * time.Millisecond,
		RestartMax: 200 * time.Millisecond,
	}
}

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	mode := os.Args[len(os.Args)-1]
	switch mode {
	case "plugins":
		sdk.Serve(sdk.Plugins{Bot: testBot{}, Router: testRouter{}, Hook: testHook{}})
	case "exit":
		os.Exit(3)
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		os.Exit(2)
	}
}

// testBot answers "echo: TEXT"; some texts trigger faults.
type testBot struct{}

func (testBot) Answer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	switch req.Text {
	case "hang": // ignores its context, like a stuck plugin
		time.Sleep(time.Hour)
	case "slow":
		select {
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
			return backends.Answer{}, ctx.Err()
		}
	case "panic":
		panic("test bot panics")
	case "fail":
		return backends.Answer{}, errors.New("test bot fails")
	}
	return backends.Answer{
		Text: "echo: " + req.Text, Intent: "echo", Confidence: 0.95,
		Summary: fmt.Sprintf("%s/%s/%d", req.ConversationID, req.Language, len(req.History)),
	}, nil
}

// testRouter ranks candidates in reverse order.
type testRouter struct{}

func (testRouter) Rank(_ context.Context, req backends.RankRequest) (backends.Ranking, error) {
	out := backends.Ranking{Explanation: "reversed by the test plugin"}
	for _, a := range slices.Backward(req.Candidates) {
		out.Agents = append(out.Agents, backends.Ranked{AgentID: a.ID, Score: 1})
	}
	return out, nil
}

// testHook fails events with ID "fail" and refuses user "mallory".
type testHook struct{}

func (testHook) Event(_ context.Context, ev backends.Event) error {
	if ev.ID == "fail" {
		return errors.New("test hook fails")
	}
	return nil
}

func (testHook) Authenticate(_ context.Context, c backends.Credentials) (backends.Identity, error) {
	switch {
	case c.Username == "mallory":
		return backends.Identity{Reason: "unknown user"}, nil
	case c.Username != "":
		return backends.Identity{OK: true, ID: c.Username, Tenant: c.Tenant, Roles: []string{c.Role}, Skills: []string{"billing"}}, nil
	case c.Token == "good":
		return backends.Identity{OK: true, ID: "token-user", Tenant: c.Tenant}, nil
	case string(c.SSOAssertion) == "<saml/>":
		return backends.Identity{OK: true, ID: "sso-user", Tenant: c.Tenant}, nil
	}
	return backends.Identity{Reason: "bad credentials"}, nil
}
