package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		name, in string
		want     reply
	}{
		{"plain", `{"answer":"hi","intent":"greeting","confidence":0.9,"handoff":false,"summary":"s"}`,
			reply{Answer: "hi", Intent: "greeting", Confidence: 0.9, Summary: "s"}},
		{"fenced", "```json\n{\"answer\":\"hi\",\"confidence\":0.5}\n```", reply{Answer: "hi", Confidence: 0.5}},
		{"fenced without info string", "```\n{\"answer\":\"hi\"}\n```", reply{Answer: "hi"}},
		{"fence on one line", "```{\"answer\":\"hi\"}```", reply{Answer: "hi"}},
		{"text around", "Here you go:\n{\"answer\":\"hi\",\"handoff\":true}\nHope this helps {", reply{Answer: "hi", Handoff: true}},
		{"think block", "<think>maybe {x}</think>{\"answer\":\"hi\"}", reply{Answer: "hi"}},
		{"strings", `{"answer":"hi","confidence":" 0.7 ","handoff":"yes"}`, reply{Answer: "hi", Confidence: 0.7, Handoff: true}},
		{"handoff as number", `{"answer":"","handoff":1}`, reply{Handoff: true}},
		{"clamped high", `{"answer":"hi","confidence":85}`, reply{Answer: "hi", Confidence: 1}},
		{"clamped low", `{"answer":"hi","confidence":-1}`, reply{Answer: "hi"}},
		{"NaN string", `{"answer":"hi","confidence":"NaN"}`, reply{Answer: "hi"}},
		{"wrong confidence type", `{"answer":"hi","confidence":[1]}`, reply{Answer: "hi"}},
		{"reply key", `{"reply":"hi"}`, reply{Answer: "hi"}},
		{"only handoff", `{"handoff":true,"summary":"x"}`, reply{Handoff: true, Summary: "x"}},
		{"null answer", `{"answer":null,"handoff":true}`, reply{Handoff: true}},
		{"fence inside a string", "{\"answer\":\"type ```ls``` here\"}", reply{Answer: "type ```ls``` here"}},
		{"nested braces in strings", `{"answer":"use {curly} braces","intent":"x"}`, reply{Answer: "use {curly} braces", Intent: "x"}},
	}
	for _, tc := range tests {
		got, err := parseReply(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

func TestParseReplyRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":              "",
		"prose":              "I think you should restart the router.",
		"truncated":          `{"answer":"We are open from 9`,
		"unquoted":           `{answer: yes}`,
		"no answer field":    `{"intent":"x","confidence":0.9}`,
		"answer not string":  `{"answer":42}`,
		"handoff not bool":   `{"answer":"a","handoff":"perhaps"}`,
		"unterminated think": `<think>{"answer":"hi"}`,
	} {
		if r, err := parseReply(in); err == nil {
			t.Errorf("%s: accepted as %+v", name, r)
		}
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		`{"answer":"hi","intent":"a/b","confidence":0.9,"handoff":false,"summary":"s"}`,
		"```json\n{\"answer\":\"hi\"}\n```", "<think></think>{}", "{{{{", "```", `{"confidence":1e999}`,
		`{"answer":"\ud800"}`, "<think>", `{"handoff":"1","answer":null}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseReply(s)
		if err == nil && (r.Confidence < 0 || r.Confidence > 1 || r.Confidence != r.Confidence) {
			t.Errorf("confidence %v", r.Confidence)
		}
		if in := cleanIntent(r.Intent); in == "" || len(in) > maxIntentBytes {
			t.Errorf("intent %q", in)
		}
	})
}

func TestAskedForHuman(t *testing.T) {
	for _, s := range []string{"human please", "I want to talk to a HUMAN!", "get me an agent", "REPRESENTATIVE",
		"can I speak to someone", "转人工", "我要人工客服", "能不能找个真人", "let me talk to a real person about my refund"} {
		if askedForHuman(s) == "" {
			t.Errorf("%q: not detected", s)
		}
	}
	for _, s := range []string{"what is your user agent", "humane treatment", "the agency sent it", "人工智能是什么",
		"我不需要人工", "I don't need a human, thanks", "hours?", ""} {
		if p := askedForHuman(s); p != "" {
			t.Errorf("%q: detected %q", s, p)
		}
	}
}

func TestEndpointURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":            "http://127.0.0.1:8080/v1/chat/completions",
		"http://127.0.0.1:8080/":           "http://127.0.0.1:8080/v1/chat/completions",
		"http://localhost:11434/v1":        "http://localhost:11434/v1/chat/completions",
		"https://llm.internal/vllm/v1/":    "https://llm.internal/vllm/v1/chat/completions",
		"https://llm.internal/openai-gate": "https://llm.internal/openai-gate/v1/chat/completions",
	} {
		got, err := endpointURL(in)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "127.0.0.1:8080", "ftp://x", "http://", "http://x/?key=1", "http://x/#a"} {
		if got, err := endpointURL(in); err == nil {
			t.Errorf("%q: accepted as %q", in, got)
		}
	}
}

func TestCleanIntent(t *testing.T) {
	for in, want := range map[string]string{
		"billing/refund": "billing/refund", " Opening Hours ": "opening_hours", "": "unknown",
		"!!!": "unknown", "/a/b/": "a/b", "退款": "退款", strings.Repeat("a", 100): strings.Repeat("a", maxIntentBytes),
	} {
		if got := cleanIntent(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestBudgetLeavesTimeToAnswer(t *testing.T) {
	b, err := newBot(Config{BaseURL: "http://127.0.0.1:1", Model: "m", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, c2, d := b.budget(ctx)
	c2()
	if d <= 0 || d > 2*time.Second-200*time.Millisecond {
		t.Errorf("budget %v under a 2s deadline: want it to end at least 200ms early", d)
	}
	_, c3, d := b.budget(context.Background())
	c3()
	if d != time.Minute {
		t.Errorf("budget %v without a deadline, want the timeout", d)
	}
	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, c4, d := b.budget(past)
	c4()
	if d > 0 {
		t.Errorf("budget %v after the deadline", d)
	}
}

func TestParseOptions(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	prompt := filepath.Join(dir, "prompt.txt")
	os.WriteFile(keyFile, []byte("sk-from-file\n"), 0o600)
	os.WriteFile(prompt, []byte("You answer for ACME."), 0o600)
	env := map[string]string{
		"LLMBOT_BASE_URL": "http://env:1", "LLMBOT_MODEL": "env-model", "LLMBOT_API_KEY": "sk-env",
		"LLMBOT_TIMEOUT": "7s", "LLMBOT_MAX_TOKENS": "99",
	}
	o, err := parseOptions([]string{"-base-url", "http://flag:2", "-system-prompt-file", prompt}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.BaseURL != "http://flag:2" || c.Model != "env-model" || c.APIKey != "sk-env" || c.Timeout != 7*time.Second ||
		c.MaxTokens != 99 || c.SystemPrompt != "You answer for ACME." || c.ResponseFormat != "json_object" {
		t.Errorf("got %+v", c)
	}
	o, err = parseOptions([]string{"-api-key-file", keyFile}, func(k string) string { return env[k] })
	if err != nil || o.cfg.APIKey != "sk-from-file" {
		t.Errorf("key file: %q, %v", o.cfg.APIKey, err)
	}
	for _, args := range [][]string{{"-api-key", "x"}, {"extra"}, {"-system-prompt-file", filepath.Join(dir, "missing")}} {
		if _, err := parseOptions(args, func(string) string { return "" }); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
	if _, err := parseOptions(nil, func(k string) string {
		if k == "LLMBOT_TIMEOUT" {
			return "soon"
		}
		return ""
	}); err == nil {
		t.Error("LLMBOT_TIMEOUT=soon accepted")
	}
}

func TestNewBotRejects(t *testing.T) {
	ok := Config{BaseURL: "http://127.0.0.1:8080", Model: "m"}
	for name, mut := range map[string]func(*Config){
		"no model":       func(c *Config) { c.Model = " " },
		"bad URL":        func(c *Config) { c.BaseURL = "localhost:8080" },
		"huge prompt":    func(c *Config) { c.SystemPrompt = strings.Repeat("p", maxSystemPromptBytes+1) },
		"tiny budget":    func(c *Config) { c.MaxPromptBytes = 100 },
		"format":         func(c *Config) { c.ResponseFormat = "json_schema" },
		"key with a CR":  func(c *Config) { c.APIKey = "a\rb" },
		"prompt > limit": func(c *Config) { c.SystemPrompt = strings.Repeat("é", maxSystemPromptBytes/2+1) },
	} {
		c := ok
		mut(&c)
		if _, err := newBot(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := newBot(ok); err != nil {
		t.Errorf("a good config: %v", err)
	}
}
