package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/supervisor"
)

const (
	testModel  = "test-model"
	testKey    = "sk-test-0123456789abcdef"
	testTokens = 200
	basePath   = "/llm" // the plugin is given URL + basePath
)

var tmpDir string // removed after all tests

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llmbot-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildPlugin builds the plugin once per test binary.
var buildPlugin = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(tmpDir, "llmbot")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func pluginBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs a plugin binary")
	}
	bin, err := buildPlugin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// received is one request the fake server saw.
type received struct {
	Method, Path, Auth string
	Body               chatRequestSeen
}

// chatRequestSeen is a chat-completions request as the server decodes it.
type chatRequestSeen struct {
	Model          string          `json:"model"`
	Messages       []chatMessage   `json:"messages"`
	MaxTokens      int             `json:"max_tokens"`
	Temperature    *float64        `json:"temperature"`
	ResponseFormat *responseFormat `json:"response_format"`
	Stream         bool            `json:"stream"`
}

// fakeLLM imitates an OpenAI-compatible chat-completions server. The first
// word of the last line of the last user message picks the reply.
type fakeLLM struct {
	key          string // the Authorization expected: "Bearer key", or none when ""
	rejectFormat bool   // answer 400 to requests with response_format, like servers without JSON mode
	elsewhere    string // where "redirect" points

	mu       sync.Mutex
	reqs     []received
	problems []string
	release  chan struct{} // closed when the test ends: frees "slow" handlers
}

func newFakeLLM(t *testing.T, key string) *fakeLLM {
	f := &fakeLLM{key: key, release: make(chan struct{})}
	t.Cleanup(func() { close(f.release) })
	return f
}

func (f *fakeLLM) problem(format string, args ...any) {
	f.mu.Lock()
	f.problems = append(f.problems, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

// check fails t with every protocol problem the server noticed.
func (f *fakeLLM) check(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.problems {
		t.Error("server: " + p)
	}
}

func (f *fakeLLM) requests() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.reqs...)
}

func (f *fakeLLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := received{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization")}
	err := json.Unmarshal(body, &rec.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, rec)
	f.mu.Unlock()

	if r.Method != http.MethodPost || r.URL.Path != basePath+"/v1/chat/completions" {
		f.problem("unexpected %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.problem("Content-Type %q", ct)
	}
	want := ""
	if f.key != "" {
		want = "Bearer " + f.key
	}
	if rec.Auth != want {
		f.problem("Authorization %q, want %q", rec.Auth, want)
	}
	if err != nil {
		f.problem("body: %v", err)
		http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	req := rec.Body
	if req.Model != testModel || req.MaxTokens != testTokens || req.Stream {
		f.problem("model %q max_tokens %d stream %v", req.Model, req.MaxTokens, req.Stream)
	}
	msgs := req.Messages
	if len(msgs) < 2 || msgs[0].Role != "system" || !strings.Contains(msgs[0].Content, `"confidence"`) {
		f.problem("messages must start with the system prompt and its JSON contract: %+v", msgs)
		http.Error(w, "bad messages", http.StatusBadRequest)
		return
	}
	for i := 1; i < len(msgs); i++ {
		if msgs[i].Role != "user" && msgs[i].Role != "assistant" {
			f.problem("message %d: role %q", i, msgs[i].Role)
		}
		if msgs[i].Role == msgs[i-1].Role {
			f.problem("messages %d and %d: both %q", i-1, i, msgs[i].Role)
		}
	}
	last := msgs[len(msgs)-1]
	if last.Role != "user" {
		f.problem("last message is %q, want user", last.Role)
	}
	if req.ResponseFormat != nil {
		if req.ResponseFormat.Type != "json_object" {
			f.problem("response_format %+v", req.ResponseFormat)
		}
		if f.rejectFormat {
			http.Error(w, `{"error":{"message":"response_format is not supported by this server"}}`, http.StatusBadRequest)
			return
		}
	}
	lines := strings.Split(last.Content, "\n")
	scenario, _, _ := strings.Cut(strings.TrimSpace(lines[len(lines)-1]), " ")
	ok := func(content string) { writeChat(w, content, nil, "stop") }
	switch scenario {
	case "confident", "history":
		ok(`{"answer":"We are open 9:00-18:00.","intent":"opening_hours","confidence":0.93,"handoff":false,"summary":"asks for opening hours"}`)
	case "low":
		ok(`{"answer":"Perhaps try restarting?","intent":"tech/router","confidence":0.35,"handoff":false,"summary":"router trouble"}`)
	case "clamp":
		ok(`{"answer":"Sure.","intent":"Shipping Tracking","confidence":"7","handoff":"false","summary":""}`)
	case "negative":
		ok(`{"answer":"Maybe.","intent":"x","confidence":-0.4,"handoff":false}`)
	case "handoff":
		ok(`{"answer":"","intent":"billing/refund","confidence":0.8,"handoff":true,"summary":"wants a refund for order 42"}`)
	case "garbage":
		ok(`Sure! Here is the answer: {answer: yes, confidence: high`)
	case "fenced":
		ok("```json\n{\"answer\":\"Refunds take 5 days.\",\"intent\":\"billing/refund\",\"confidence\":0.88,\"handoff\":false,\"summary\":\"refund delay\"}\n```")
	case "think":
		ok("<think>The visitor wants {hours}. I should answer.</think>\n{\"answer\":\"9 to 6.\",\"intent\":\"opening_hours\",\"confidence\":0.9,\"handoff\":false,\"summary\":\"hours\"}")
	case "refusal":
		refusal := "I'm sorry, I can't help with that."
		writeChat(w, "", &refusal, "stop")
	case "truncated":
		writeChat(w, "", nil, "length")
	case "error500":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":{"message":"CUDA out of memory"}}`)
	case "slow":
		select { // longer than the plugin's timeout: it gives up and hangs up
		case <-r.Context().Done():
		case <-f.release:
		}
	case "redirect":
		http.Redirect(w, r, f.elsewhere+"/v1/chat/completions", http.StatusTemporaryRedirect)
	default:
		f.problem("unexpected scenario %q (message %q)", scenario, last.Content)
		http.Error(w, "no such scenario", http.StatusBadRequest)
	}
}

func writeChat(w http.ResponseWriter, content string, refusal *string, finish string) {
	msg := map[string]any{"role": "assistant", "content": content}
	if content == "" {
		msg["content"] = nil
	}
	if refusal != nil {
		msg["refusal"] = *refusal
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"id": "chatcmpl-1", "object": "chat.completion", "model": testModel,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish}},
	})
}

// syncBuffer collects the supervisor's log, which includes the plugin's stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPlugin runs the plugin under the supervisor and waits for it.
func startPlugin(t *testing.T, args, env []string, logs io.Writer) *supervisor.Bot {
	t.Helper()
	bin := pluginBinary(t)
	if logs == nil {
		logs = io.Discard
	}
	bot, err := supervisor.NewBot(supervisor.Config{
		Path: bin, Args: args, Env: env,
		CallTimeout:  60 * time.Second, // generous: the plugin's own -timeout is what is tested
		StartTimeout: 60 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bot.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := bot.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return bot
}

func answer(t *testing.T, bot *supervisor.Bot, req backends.AnswerRequest) backends.Answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if req.ConversationID == "" {
		req.ConversationID = "c1"
	}
	a, err := bot.TryAnswer(ctx, req) // no fallback: an error here is the plugin's
	if err != nil {
		t.Fatalf("%q: %v", req.Text, err)
	}
	return a
}

func TestLLMBotAnswers(t *testing.T) {
	f := newFakeLLM(t, testKey)
	srv := httptest.NewServer(f)
	defer srv.Close()
	var logs syncBuffer
	bot := startPlugin(t, []string{"-base-url", srv.URL + basePath, "-model", testModel,
		"-max-tokens", fmt.Sprint(testTokens), "-timeout", "60s"},
		[]string{"LLMBOT_API_KEY=" + testKey}, &logs)

	handedOff := func(why string) func(*testing.T, backends.Answer) {
		return func(t *testing.T, a backends.Answer) {
			if !a.Handoff || a.Text == "" || a.Confidence != 0 || !strings.Contains(a.Summary, why) {
				t.Errorf("got %+v, want a hand-off with a holding reply and %q in the summary", a, why)
			}
		}
	}
	tests := []struct {
		name  string
		text  string
		check func(*testing.T, backends.Answer)
	}{
		{"confident", "confident when are you open?", func(t *testing.T, a backends.Answer) {
			want := backends.Answer{Text: "We are open 9:00-18:00.", Intent: "opening_hours", Confidence: 0.93, Summary: "asks for opening hours"}
			if a != want {
				t.Errorf("got %+v, want %+v", a, want)
			}
		}},
		{"low confidence", "low my router blinks", func(t *testing.T, a backends.Answer) {
			// Returned as is: the gateway compares 0.35 with its threshold and hands off.
			if a.Handoff || a.Confidence != 0.35 || a.Intent != "tech/router" || a.Text == "" {
				t.Errorf("got %+v", a)
			}
		}},
		{"confidence above 1, strings", "clamp where is my parcel", func(t *testing.T, a backends.Answer) {
			if a.Confidence != 1 || a.Handoff || a.Intent != "shipping_tracking" || a.Summary == "" {
				t.Errorf("got %+v, want confidence clamped to 1, intent cleaned, summary from the visitor", a)
			}
		}},
		{"confidence below 0", "negative hmm", func(t *testing.T, a backends.Answer) {
			if a.Confidence != 0 || a.Handoff {
				t.Errorf("got %+v, want confidence 0", a)
			}
		}},
		{"model hands off", "handoff I want my money back for order 42", func(t *testing.T, a backends.Answer) {
			if !a.Handoff || a.Intent != "billing/refund" || a.Summary != "wants a refund for order 42" || a.Text == "" {
				t.Errorf("got %+v, want a hand-off keeping intent and summary, with a holding reply", a)
			}
		}},
		{"garbage JSON", "garbage hello", handedOff("not the JSON asked for")},
		{"HTTP 500", "error500 hello", handedOff("HTTP 500")},
		{"code fences", "fenced how long do refunds take", func(t *testing.T, a backends.Answer) {
			if a.Handoff || a.Intent != "billing/refund" || a.Confidence != 0.88 || a.Text != "Refunds take 5 days." {
				t.Errorf("got %+v", a)
			}
		}},
		{"think block", "think hours?", func(t *testing.T, a backends.Answer) {
			if a.Handoff || a.Intent != "opening_hours" || a.Text != "9 to 6." {
				t.Errorf("got %+v", a)
			}
		}},
		{"refusal", "refusal do something bad", handedOff("refused")},
		{"empty at max tokens", "truncated tell me everything", handedOff("max tokens")},
		{"human please (en)", "human please, now", handedOff("asked for a human")},
		{"human please (zh)", "转人工", handedOff("asked for a human")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, answer(t, bot, backends.AnswerRequest{Text: tc.text, Language: "en"}))
		})
	}

	t.Run("history", func(t *testing.T) {
		before := len(f.requests())
		at := time.Unix(1767225600, 0)
		hist := []backends.HistoryMessage{
			{From: "bot", Text: "Hello! How can I help?", At: at},
			{From: "visitor", Text: "my order is late", At: at},
			{From: "visitor", Text: "order 42", At: at},
			{From: "agent", Text: "Let me check.", At: at},
			{From: "system", Text: "agent joined", At: at}, // not a chat role: skipped
			{From: "visitor", Text: "history and are you open on Sunday?", At: at},
		}
		a := answer(t, bot, backends.AnswerRequest{Text: "history and are you open on Sunday?", History: hist})
		if a.Intent != "opening_hours" || a.Handoff {
			t.Errorf("got %+v", a)
		}
		reqs := f.requests()[before:]
		if len(reqs) != 1 {
			t.Fatalf("%d requests, want 1", len(reqs))
		}
		var got []string
		for _, m := range reqs[0].Body.Messages[1:] {
			got = append(got, m.Role+": "+m.Content)
		}
		want := []string{
			"assistant: Hello! How can I help?",
			"user: my order is late\n\norder 42",
			"assistant: Let me check.",
			"user: history and are you open on Sunday?", // the current message, not repeated
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("messages\n%q\nwant\n%q", got, want)
		}
	})

	t.Run("history is bounded", func(t *testing.T) {
		before := len(f.requests())
		var hist []backends.HistoryMessage
		for i := range 200 {
			from := "visitor"
			if i%2 == 1 {
				from = "bot"
			}
			hist = append(hist, backends.HistoryMessage{From: from, Text: fmt.Sprintf("m%03d %s", i, strings.Repeat("x", 3000))})
		}
		answer(t, bot, backends.AnswerRequest{Text: "confident " + strings.Repeat("y", 10000), History: hist})
		reqs := f.requests()[before:]
		if len(reqs) != 1 {
			t.Fatalf("%d requests, want 1", len(reqs))
		}
		msgs := reqs[0].Body.Messages
		total := 0
		for _, m := range msgs {
			total += len(m.Content)
		}
		if total > 32<<10 || len(msgs) > 1+20+1 {
			t.Errorf("%d messages, %d bytes: want at most 22 and 32 KiB", len(msgs), total)
		}
		if n := len(msgs); n < 4 || !strings.HasPrefix(msgs[n-2].Content, "m199 ") {
			t.Errorf("the newest history message must be kept, before the visitor's: %d messages", n)
		}
		if last := msgs[len(msgs)-1].Content; len(last) > maxMessageBytes || !strings.HasPrefix(last, "confident ") {
			t.Errorf("visitor's message of %d bytes, want it cut to %d", len(last), maxMessageBytes)
		}
	})

	f.check(t)
	for _, r := range f.requests() {
		if strings.Contains(r.Body.Messages[len(r.Body.Messages)-1].Content, "human") {
			t.Errorf("the model was asked about a request for a human: %q", r.Body.Messages[len(r.Body.Messages)-1].Content)
		}
		if r.Body.ResponseFormat == nil {
			t.Errorf("a request without response_format (the server supports it)")
		}
	}
	out := logs.String()
	if strings.Contains(out, testKey) {
		t.Errorf("the API key appears in the log:\n%s", out)
	}
	if !strings.Contains(out, "llmbot starting") || !strings.Contains(out, "api_key_set") {
		t.Errorf("no start-up line in the log:\n%s", out)
	}
}

func TestLLMBotTimeout(t *testing.T) {
	f := newFakeLLM(t, "")
	srv := httptest.NewServer(f)
	defer srv.Close()
	bot := startPlugin(t, []string{"-base-url", srv.URL + basePath, "-model", testModel,
		"-max-tokens", fmt.Sprint(testTokens), "-timeout", "300ms"}, nil, nil)
	a := answer(t, bot, backends.AnswerRequest{Text: "slow tell me a long story", Language: "zh-CN"})
	if !a.Handoff || !strings.Contains(a.Summary, "timeout") || a.Text != "正在为您转接人工客服，请稍候。" {
		t.Errorf("got %+v, want a hand-off in Chinese whose summary says timeout", a)
	}
	f.check(t)
}

// nonLoopbackIP returns an address of this machine that is not loopback, so
// that proxy variables would apply to it (Go never proxies loopback), or ""
// when there is none.
func nonLoopbackIP() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil && !ipn.IP.IsLinkLocalUnicast() {
			return ipn.IP.String()
		}
	}
	return ""
}

func TestLLMBotContactsOnlyBaseURL(t *testing.T) {
	f := newFakeLLM(t, "") // no key configured: no Authorization header allowed
	f.rejectFormat = true
	srv := httptest.NewUnstartedServer(f)
	if ip := nonLoopbackIP(); ip != "" {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err == nil {
			srv.Listener.Close()
			srv.Listener = l
		}
	}
	srv.Start()
	defer srv.Close()
	t.Logf("model server at %s", srv.URL)

	// Every other address a plugin might be tempted to use points here.
	var mu sync.Mutex
	var stray []string
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		stray = append(stray, r.Method+" "+r.Host+r.URL.String())
		mu.Unlock()
		writeChat(w, `{"answer":"from elsewhere","intent":"stray","confidence":1,"handoff":false}`, nil, "stop")
	}))
	defer elsewhere.Close()
	f.elsewhere = elsewhere.URL

	env := []string{
		"LLMBOT_BASE_URL=" + elsewhere.URL, // the flag wins
		"OPENAI_BASE_URL=" + elsewhere.URL,
		"OPENAI_API_BASE=" + elsewhere.URL,
		"OPENAI_API_KEY=decoy-key",
		"HTTP_PROXY=" + elsewhere.URL, "HTTPS_PROXY=" + elsewhere.URL, "ALL_PROXY=" + elsewhere.URL,
		"http_proxy=" + elsewhere.URL, "https_proxy=" + elsewhere.URL, "NO_PROXY=", "no_proxy=",
	}
	bot := startPlugin(t, []string{"-base-url", srv.URL + basePath + "/v1/", "-model", testModel,
		"-max-tokens", fmt.Sprint(testTokens), "-timeout", "60s"}, env, nil)

	if n := len(f.requests()); n != 0 {
		t.Errorf("%d requests before the first question, want none", n)
	}
	// The server refuses response_format: the plugin asks again without it.
	a := answer(t, bot, backends.AnswerRequest{Text: "confident hours?"})
	if a.Handoff || a.Intent != "opening_hours" {
		t.Errorf("got %+v", a)
	}
	// A redirect is not followed.
	a = answer(t, bot, backends.AnswerRequest{Text: "redirect hours?"})
	if !a.Handoff || !strings.Contains(a.Summary, "HTTP 307") {
		t.Errorf("got %+v, want a hand-off saying HTTP 307", a)
	}
	a = answer(t, bot, backends.AnswerRequest{Text: "confident hours again?"})
	if a.Handoff || a.Intent != "opening_hours" {
		t.Errorf("got %+v", a)
	}

	f.check(t)
	reqs := f.requests()
	if len(reqs) != 4 {
		t.Errorf("%d requests, want 4 (one refused for response_format, then three)", len(reqs))
	}
	for i, r := range reqs {
		if withFormat := r.Body.ResponseFormat != nil; withFormat != (i == 0) {
			t.Errorf("request %d: response_format %v; want it only on the first", i, withFormat)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stray) > 0 {
		t.Errorf("the plugin contacted another server: %q", stray)
	}
}
