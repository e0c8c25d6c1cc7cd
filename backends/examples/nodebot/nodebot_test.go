// Package nodebot holds the Go test of the Node.js bot plugin in this
// directory (index.js): the plugin runs as a real process under
// backends/supervisor, exactly as the gateway would run it.
package nodebot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/supervisor"
)

// nodePlugin returns the node binary and the plugin script, skipping
// loudly when either node or `npm ci` is missing, and failing under CI.
func nodePlugin(t *testing.T) (node, script string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a Node.js plugin process")
	}
	node, err := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join("node_modules", "@grpc", "grpc-js", "package.json"))
	if err != nil || modErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("node or its modules are missing under CI (node: %v, node_modules: %v); .ci/run runs npm ci here", err, modErr)
		}
		t.Skip("SKIPPED LOUDLY: needs node and `npm ci` in backends/examples/nodebot (.ci/run installs both)")
	}
	script, err = filepath.Abs("index.js")
	if err != nil {
		t.Fatal(err)
	}
	return node, script
}

func TestNodebotProcess(t *testing.T) {
	node, script := nodePlugin(t)
	bot, err := supervisor.NewBot(supervisor.Config{
		Path:        node,
		Args:        []string{script},
		CallTimeout: 5 * time.Second,
		RestartMin:  10 * time.Millisecond,
		RestartMax:  200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bot.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := bot.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		text, lang, intent, skill string
		handoff                   bool
		minConf                   float64
	}{
		{"what are your opening hours?", "en", "opening_hours", "", false, 0.8},
		{"我要退款", "zh-CN", "billing/refund", "billing/refund", false, 0.8},
		{"转人工", "zh-CN", "handoff", "", true, 1},
		{"qwerty", "en", "unknown", "", false, 0},
	}
	for _, c := range cases {
		a, err := bot.TryAnswer(ctx, backends.AnswerRequest{ConversationID: "c1", Text: c.text, Language: c.lang})
		if err != nil {
			t.Fatalf("%q: %v", c.text, err)
		}
		if a.Intent != c.intent || a.Handoff != c.handoff || a.Skill != c.skill || a.Confidence < c.minConf || a.Summary != c.text {
			t.Errorf("%q: %+v; want intent %q skill %q handoff %v", c.text, a, c.intent, c.skill, c.handoff)
		}
	}

	// SIGKILL the Node process mid-conversation: the visitor is handed to
	// a human (fallback), and the supervisor starts a new process.
	pid := bot.PID()
	if pid == 0 {
		t.Fatal("no plugin pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a, _ := bot.Answer(ctx, backends.AnswerRequest{ConversationID: "c1", Text: "opening hours?", Language: "en"})
	if !a.Handoff && a.Intent != "opening_hours" {
		t.Errorf("during the restart: %+v, want the plugin's answer or a hand-off", a)
	}
	for {
		if p := bot.PID(); p != 0 && p != pid {
			if a, err := bot.TryAnswer(ctx, backends.AnswerRequest{Text: "refund"}); err == nil && a.Intent == "billing/refund" {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal("the Node plugin did not come back after SIGKILL")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
