package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
)

// Limits that are not configuration.
const (
	maxSystemPromptBytes  = 16 << 10 // a larger -system-prompt-file is refused at start
	maxMessageBytes       = 4 << 10  // the visitor's message is cut to this
	maxHistoryMsgBytes    = 2 << 10  // each history message is cut to this
	minPromptBytes        = 8 << 10  // smallest accepted Config.MaxPromptBytes
	maxResponseBytes      = 1 << 20  // a larger HTTP reply is a failure
	maxAnswerRunes        = 4000     // the model's answer is cut to this
	maxSummaryRunes       = 300      // the summary for the agent is cut to this
	maxIntentBytes        = 64       // longer intents are cut
	failureLogEvery       = 10 * time.Second
	endpointPath          = "/v1/chat/completions"
	userAgent             = "unigate-llmbot/1"
	responseFormatJSONObj = "json_object"
)

// Config configures the bot. Zero values take the defaults in brackets;
// main fills it from flags and the environment.
type Config struct {
	// BaseURL of the OpenAI-compatible server; required. The bot POSTs to
	// BaseURL + "/v1/chat/completions" (a trailing "/v1" is accepted and
	// not doubled) and contacts nothing else.
	BaseURL string
	// Model is the "model" field of each request; required (llama.cpp's
	// server accepts any name, vLLM and Ollama need the served model's).
	Model string
	// APIKey, when set, is sent as "Authorization: Bearer APIKey". It is
	// never logged.
	APIKey string
	// Timeout bounds one completion [15s]. The bot also stops early enough
	// to answer before the gateway's own deadline for the call.
	Timeout time.Duration
	// MaxTokens is the "max_tokens" of each request [512].
	MaxTokens int
	// Temperature is the "temperature" of each request; negative: not sent.
	Temperature float64
	// SystemPrompt describes the business and the assistant's manner
	// [defaultPrompt]. The JSON contract is always appended to it.
	SystemPrompt string
	// MaxHistory is the number of earlier messages sent, newest first [20].
	MaxHistory int
	// MaxPromptBytes bounds the text of all messages of one request
	// together (system prompt, history, visitor's message); the oldest
	// history goes first [32768, at least 8192].
	MaxPromptBytes int
	// ResponseFormat "json_object" (the default) asks the server for JSON
	// mode; "none" does not. A server that answers 400 naming
	// response_format is asked again without it, and never again with it.
	ResponseFormat string
	// Logger receives the bot's logs [discard].
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Timeout <= 0 {
		c.Timeout = 15 * time.Second
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = 512
	}
	if strings.TrimSpace(c.SystemPrompt) == "" {
		c.SystemPrompt = defaultPrompt
	}
	if c.MaxHistory <= 0 {
		c.MaxHistory = 20
	}
	if c.MaxPromptBytes <= 0 {
		c.MaxPromptBytes = 32 << 10
	}
	if c.ResponseFormat == "" {
		c.ResponseFormat = responseFormatJSONObj
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// endpointURL returns the chat-completions URL for a base URL.
func endpointURL(base string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(base))
	if err != nil {
		return "", fmt.Errorf("base URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("base URL %q: want http(s)://host[:port][/path]", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("base URL %q: no query or fragment allowed", u.Redacted())
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/v1")
	u.Path, u.RawPath = p+endpointPath, ""
	return u.String(), nil
}

// The default description of the assistant; -system-prompt-file replaces it.
const defaultPrompt = `You are the customer-service assistant in a company's website chat.
Answer the visitor briefly, politely and in the language they write in.
You know nothing about this company beyond this conversation: do not make up
prices, policies, order details or opening hours.`

// contract is appended to every system prompt: it is what the bot parses.
const contract = `

Reply with one JSON object and nothing else (no code fences, no text around it), exactly:
{"answer": "<your reply to the visitor, in their language>", "intent": "<short lowercase id of what the visitor wants, slash-separated from general to specific, e.g. billing/refund, shipping/tracking, greeting>", "confidence": <number from 0 to 1: how likely your answer is correct and complete>, "handoff": <true or false>, "summary": "<one sentence for a human agent: what the visitor wants and what is known>"}
Set "handoff" to true, with a short holding "answer", when the visitor asks for a human,
is angry or complaining, or needs something you cannot do, check or know
(their account, an order, a payment). When unsure, give a low confidence rather than a guess.`

// llmBot is the Bot. Its methods are safe for concurrent use.
type llmBot struct {
	cfg      Config
	endpoint string
	system   string
	client   *http.Client
	jsonMode atomic.Bool // send response_format (cleared when the server refuses it)
	log      *slog.Logger
	thr      throttle
}

var _ backends.Bot = (*llmBot)(nil)

// newBot checks cfg and returns the bot.
func newBot(cfg Config) (*llmBot, error) {
	cfg.setDefaults()
	ep, err := endpointURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(cfg.Model) == "" {
		return nil, errors.New("no model: set -model (llama.cpp's server accepts any name)")
	}
	if len(cfg.SystemPrompt) > maxSystemPromptBytes {
		return nil, fmt.Errorf("system prompt of %d bytes: at most %d", len(cfg.SystemPrompt), maxSystemPromptBytes)
	}
	if cfg.MaxPromptBytes < minPromptBytes {
		return nil, fmt.Errorf("max prompt bytes %d: at least %d", cfg.MaxPromptBytes, minPromptBytes)
	}
	if cfg.ResponseFormat != responseFormatJSONObj && cfg.ResponseFormat != "none" {
		return nil, fmt.Errorf("response format %q: want json_object or none", cfg.ResponseFormat)
	}
	if strings.ContainsAny(cfg.APIKey, "\r\n") {
		return nil, errors.New("API key contains a line break")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the configured server and nothing else, whatever HTTP_PROXY says
	tr.MaxIdleConnsPerHost = 16
	b := &llmBot{
		cfg:      cfg,
		endpoint: ep,
		system:   strings.TrimSpace(cfg.SystemPrompt) + contract,
		client: &http.Client{
			Transport: tr,
			// Redirects are not followed: a 3xx is a failure like any non-2xx.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log: cfg.Logger,
		thr: throttle{every: failureLogEvery, last: map[string]time.Time{}, dropped: map[string]int{}},
	}
	b.jsonMode.Store(cfg.ResponseFormat == responseFormatJSONObj)
	return b, nil
}

// failure is why the bot hands off instead of answering. why goes into the
// summary the agent sees; detail (never the API key) only into the log.
type failure struct {
	kind   string // timeout, network, http, malformed, refusal, empty
	why    string
	detail string
}

func (f *failure) Error() string { return f.why }

// Answer implements backends.Bot. It never returns an error: whatever goes
// wrong, the visitor gets a holding reply and the conversation a human.
func (b *llmBot) Answer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	if p := askedForHuman(req.Text); p != "" {
		a := handoff(req, fmt.Sprintf("asked for a human (%q)", p))
		return a, nil
	}
	cctx, cancel, budget := b.budget(ctx)
	defer cancel()
	if budget <= 0 {
		return b.fail(req, &failure{kind: "timeout", why: "no time left before the gateway's deadline"}), nil
	}
	content, err := b.complete(cctx, b.messages(req), budget)
	if err != nil {
		return b.fail(req, err), nil
	}
	r, err := parseReply(content)
	if err != nil {
		return b.fail(req, &failure{kind: "malformed", why: "the model's reply was not the JSON asked for", detail: err.Error()}), nil
	}
	a := backends.Answer{
		Text:       cut(r.Answer, maxAnswerRunes),
		Intent:     cleanIntent(r.Intent),
		Confidence: r.Confidence,
		Handoff:    r.Handoff,
		Summary:    cut(r.Summary, maxSummaryRunes),
	}
	if a.Summary == "" {
		a.Summary = cut(req.Text, maxSummaryRunes)
	}
	switch {
	case a.Handoff && a.Text == "":
		a.Text = (&builtin.HandoffBot{}).ReplyFor(req.Language)
	case !a.Handoff && a.Text == "":
		return b.fail(req, &failure{kind: "empty", why: "the model gave an empty answer"}), nil
	}
	return a, nil
}

// budget derives the completion's context: Timeout, but ending early
// enough (a tenth of the time left, 50 ms to 500 ms) for the hand-off to
// reach the gateway before its own deadline for the call.
func (b *llmBot) budget(ctx context.Context) (context.Context, context.CancelFunc, time.Duration) {
	d := b.cfg.Timeout
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		margin := min(max(left/10, 50*time.Millisecond), 500*time.Millisecond)
		d = min(d, left-margin)
	}
	if d <= 0 {
		return ctx, func() {}, 0
	}
	c, cancel := context.WithTimeout(ctx, d)
	return c, cancel, d
}

// fail logs f (throttled per kind) and returns the hand-off answer.
func (b *llmBot) fail(req backends.AnswerRequest, err error) backends.Answer {
	var f *failure
	if !errors.As(err, &f) {
		f = &failure{kind: "error", why: "the model could not be asked", detail: err.Error()}
	}
	if ok, dropped := b.thr.allow(f.kind); ok {
		b.log.Warn("handing off", "kind", f.kind, "reason", f.why, "detail", b.redact(f.detail),
			"conversation", req.ConversationID, "suppressed_since_last", dropped)
	}
	return handoff(req, f.why)
}

// handoff is a hand-off answer whose summary says why.
func handoff(req backends.AnswerRequest, why string) backends.Answer {
	a := builtin.HandoffAnswer(req, "")
	a.Summary = cut("llmbot: "+why+". Visitor: "+req.Text, maxSummaryRunes)
	return a
}

// redact removes the API key from s, should a server echo it back.
func (b *llmBot) redact(s string) string {
	if b.cfg.APIKey == "" || s == "" {
		return s
	}
	return strings.ReplaceAll(s, b.cfg.APIKey, "[redacted]")
}

// chatMessage is one message of a chat-completions request.
type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// messages builds the request's messages: the system prompt, the newest
// history that fits (MaxHistory messages, MaxPromptBytes in all) mapped to
// user and assistant roles, and the visitor's message. Consecutive messages
// of one role are merged: several chat templates insist on alternation.
func (b *llmBot) messages(req backends.AnswerRequest) []chatMessage {
	sys := b.system
	if lang := cleanLanguage(req.Language); lang != "" {
		sys += "\nThe visitor's declared language: " + lang + "."
	}
	text := cutBytes(req.Text, maxMessageBytes)
	left := b.cfg.MaxPromptBytes - len(sys) - len(text)

	hist := req.History
	// The gateway may include the message being answered as the last
	// history entry: do not send it twice.
	if n := len(hist); n > 0 && hist[n-1].From == "visitor" && hist[n-1].Text == req.Text {
		hist = hist[:n-1]
	}
	var picked []chatMessage // newest first
	for i := len(hist) - 1; i >= 0 && len(picked) < b.cfg.MaxHistory; i-- {
		role := roleOf(hist[i].From)
		t := cutBytes(strings.TrimSpace(hist[i].Text), maxHistoryMsgBytes)
		if role == "" || t == "" {
			continue
		}
		if len(t) > left {
			break
		}
		left -= len(t)
		picked = append(picked, chatMessage{Role: role, Content: t})
	}
	out := make([]chatMessage, 0, len(picked)+2)
	out = append(out, chatMessage{Role: "system", Content: sys})
	add := func(m chatMessage) {
		if last := &out[len(out)-1]; last.Role == m.Role {
			last.Content += "\n\n" + m.Content
			return
		}
		out = append(out, m)
	}
	for i := len(picked) - 1; i >= 0; i-- {
		add(picked[i])
	}
	add(chatMessage{Role: "user", Content: text})
	return out
}

// roleOf maps a history sender to a chat role; "" skips the message.
func roleOf(from string) string {
	switch from {
	case "visitor":
		return "user"
	case "bot", "agent":
		return "assistant"
	}
	return ""
}

// chatRequest is the body of POST /v1/chat/completions.
type chatRequest struct {
	Model          string          `json:"model"`
	Messages       []chatMessage   `json:"messages"`
	MaxTokens      int             `json:"max_tokens"`
	Temperature    *float64        `json:"temperature,omitempty"`
	ResponseFormat *responseFormat `json:"response_format,omitempty"`
	Stream         bool            `json:"stream"`
}

type responseFormat struct {
	Type string `json:"type"`
}

// chatResponse is the part of the reply the bot reads.
type chatResponse struct {
	Choices []struct {
		Message struct {
			Content json.RawMessage `json:"content"` // a string, null, or an array of parts
			Refusal *string         `json:"refusal"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// complete asks the server and returns the first choice's content.
func (b *llmBot) complete(ctx context.Context, msgs []chatMessage, budget time.Duration) (string, error) {
	cr := chatRequest{Model: b.cfg.Model, Messages: msgs, MaxTokens: b.cfg.MaxTokens}
	if b.cfg.Temperature >= 0 {
		t := b.cfg.Temperature
		cr.Temperature = &t
	}
	for attempt := 0; ; attempt++ {
		jsonMode := b.jsonMode.Load()
		cr.ResponseFormat = nil
		if jsonMode {
			cr.ResponseFormat = &responseFormat{Type: responseFormatJSONObj}
		}
		code, data, err := b.post(ctx, cr, budget)
		if err != nil {
			return "", err
		}
		if code == http.StatusBadRequest && jsonMode && attempt == 0 &&
			bytes.Contains(bytes.ToLower(data), []byte("response_format")) {
			if b.jsonMode.CompareAndSwap(true, false) {
				b.log.Warn("the server refuses response_format; asking without it from now on",
					"detail", b.redact(snippet(data)))
			}
			continue
		}
		if code < 200 || code > 299 {
			return "", &failure{kind: "http", why: fmt.Sprintf("the model server answered HTTP %d", code),
				detail: snippet(data)}
		}
		return contentOf(data)
	}
}

// post sends one request and reads the reply, at most maxResponseBytes.
func (b *llmBot) post(ctx context.Context, cr chatRequest, budget time.Duration) (int, []byte, error) {
	body, err := json.Marshal(cr)
	if err != nil {
		return 0, nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, b.endpoint, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", userAgent)
	if b.cfg.APIKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+b.cfg.APIKey)
	}
	resp, err := b.client.Do(hreq)
	if err != nil {
		return 0, nil, b.transportFailure(ctx, err, budget)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return 0, nil, b.transportFailure(ctx, err, budget)
	}
	if len(data) > maxResponseBytes {
		return 0, nil, &failure{kind: "malformed", why: "the model server's reply was too large"}
	}
	return resp.StatusCode, data, nil
}

func (b *llmBot) transportFailure(ctx context.Context, err error, budget time.Duration) error {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return &failure{kind: "timeout", why: fmt.Sprintf("the model server did not answer within %v (timeout)", budget.Round(time.Millisecond)),
			detail: err.Error()}
	}
	return &failure{kind: "network", why: "the model server could not be reached", detail: err.Error()}
}

// contentOf extracts the first choice's text from a chat-completions reply.
func contentOf(data []byte) (string, error) {
	var r chatResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return "", &failure{kind: "malformed", why: "the model server's reply was not chat-completions JSON", detail: err.Error()}
	}
	if r.Error != nil {
		return "", &failure{kind: "http", why: "the model server reported an error", detail: r.Error.Message}
	}
	if len(r.Choices) == 0 {
		return "", &failure{kind: "malformed", why: "the model server's reply had no choices"}
	}
	c := r.Choices[0]
	if c.Message.Refusal != nil && strings.TrimSpace(*c.Message.Refusal) != "" {
		return "", &failure{kind: "refusal", why: "the model refused to answer", detail: *c.Message.Refusal}
	}
	if c.FinishReason == "content_filter" {
		return "", &failure{kind: "refusal", why: "the model's answer was withheld by its content filter"}
	}
	var text string
	switch raw := bytes.TrimSpace(c.Message.Content); {
	case len(raw) == 0 || string(raw) == "null":
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return "", &failure{kind: "malformed", why: "the model server's reply was not chat-completions JSON", detail: err.Error()}
		}
	case raw[0] == '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return "", &failure{kind: "malformed", why: "the model server's reply was not chat-completions JSON", detail: err.Error()}
		}
		for _, p := range parts {
			if p.Type == "text" || p.Type == "" {
				text += p.Text
			}
		}
	}
	if strings.TrimSpace(text) == "" {
		why := "the model gave an empty reply"
		if c.FinishReason == "length" {
			why += " (stopped at max tokens)"
		}
		return "", &failure{kind: "empty", why: why}
	}
	return text, nil
}

// snippet is the start of an error body, for the log.
func snippet(data []byte) string {
	return cutBytes(strings.TrimSpace(string(data)), 200)
}

// cut returns s trimmed and cut to n runes, with an ellipsis when cut.
func cut(s string, n int) string {
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// cutBytes cuts s to at most n bytes on a rune boundary.
func cutBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// cleanLanguage keeps a plausible BCP 47 tag and drops anything else: the
// tag is pasted into the system prompt.
func cleanLanguage(s string) string {
	if len(s) > 35 {
		return ""
	}
	for _, c := range s {
		if !(c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return ""
		}
	}
	return s
}

// throttle lets one log line per kind through every so often and counts
// the others.
type throttle struct {
	every   time.Duration
	mu      sync.Mutex
	last    map[string]time.Time
	dropped map[string]int
}

func (t *throttle) allow(kind string) (bool, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if l, ok := t.last[kind]; ok && now.Sub(l) < t.every {
		t.dropped[kind]++
		return false, 0
	}
	t.last[kind] = now
	n := t.dropped[kind]
	t.dropped[kind] = 0
	return true, n
}
