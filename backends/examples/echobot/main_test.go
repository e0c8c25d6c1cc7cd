package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/supervisor"
)

func TestEchobotProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a plugin binary")
	}
	bin := filepath.Join(t.TempDir(), "echobot")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bot, err := supervisor.NewBot(supervisor.Config{Path: bin})
	if err != nil {
		t.Fatal(err)
	}
	defer bot.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bot.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		text, intent string
		handoff      bool
	}{
		{"Hello there", "greeting", false},
		{"我要退款", "billing/refund", false},
		{"let me talk to a human", "handoff", true},
		{"qwerty", "unknown", false},
	}
	for _, c := range cases {
		a, err := bot.TryAnswer(ctx, backends.AnswerRequest{ConversationID: "c1", Text: c.text})
		if err != nil {
			t.Fatalf("%q: %v", c.text, err)
		}
		if a.Intent != c.intent || a.Handoff != c.handoff {
			t.Errorf("%q: got intent %q handoff %v, want %q %v", c.text, a.Intent, a.Handoff, c.intent, c.handoff)
		}
	}
}
