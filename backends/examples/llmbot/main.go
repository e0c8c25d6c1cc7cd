// Command llmbot is an example Unigate bot plugin that answers visitors
// with a large language model behind an OpenAI-compatible chat-completions
// endpoint: a llama.cpp server, vLLM or Ollama running inside the
// deployment's own network. See README.md.
//
//	LLMBOT_API_KEY=... llmbot -base-url http://127.0.0.1:8080 -model qwen2.5-7b-instruct
//
// Each Answer is one POST {base}/v1/chat/completions with a system prompt
// (the business's, from -system-prompt-file, plus a fixed JSON contract),
// the newest conversation history that fits and the visitor's message. The
// model must reply with {"answer", "intent", "confidence", "handoff",
// "summary"}. Anything else — an HTTP error, a timeout, a refusal, a reply
// that is not that JSON — becomes a hand-off with a holding reply and a
// summary saying why: Answer never returns an error. A visitor asking for
// a human is handed off without asking the model.
//
// Every flag has an environment variable (flag wins). The API key is only
// read from the environment or a file, never a flag (arguments are visible
// in ps), and is never logged. Logs are JSON lines on stderr.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/unigate/unigate/backends/sdk"
)

// options are the command line, after the environment.
type options struct {
	cfg          Config
	keyFile      string
	promptFile   string
	responseForm string
	logLevel     string
}

func parseOptions(args []string, getenv func(string) string) (options, error) {
	var o options
	var errs []string
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	envDur := func(name string, def time.Duration) time.Duration {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			}
			return d
		}
		return def
	}
	envInt := func(name string, def int) int {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			}
			return n
		}
		return def
	}
	envFloat := func(name string, def float64) float64 {
		if v := getenv(name); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			}
			return f
		}
		return def
	}
	fs := flag.NewFlagSet("llmbot", flag.ContinueOnError)
	c := &o.cfg
	fs.StringVar(&c.BaseURL, "base-url", env("LLMBOT_BASE_URL", ""),
		"`URL` of the OpenAI-compatible server; requests go to URL/v1/chat/completions (LLMBOT_BASE_URL)")
	fs.StringVar(&c.Model, "model", env("LLMBOT_MODEL", ""), "model `name` sent with each request (LLMBOT_MODEL)")
	fs.StringVar(&o.keyFile, "api-key-file", env("LLMBOT_API_KEY_FILE", ""),
		"`file` holding the API key; or LLMBOT_API_KEY (LLMBOT_API_KEY_FILE)")
	fs.DurationVar(&c.Timeout, "timeout", envDur("LLMBOT_TIMEOUT", 15*time.Second),
		"bound of one completion; keep it below the gateway's call_timeout (LLMBOT_TIMEOUT)")
	fs.IntVar(&c.MaxTokens, "max-tokens", envInt("LLMBOT_MAX_TOKENS", 512), "max_tokens of each request (LLMBOT_MAX_TOKENS)")
	fs.Float64Var(&c.Temperature, "temperature", envFloat("LLMBOT_TEMPERATURE", 0.2),
		"temperature of each request; negative: not sent (LLMBOT_TEMPERATURE)")
	fs.StringVar(&o.promptFile, "system-prompt-file", env("LLMBOT_SYSTEM_PROMPT_FILE", ""),
		"`file` describing the business and the assistant, at most 16 KiB; the JSON contract is appended (LLMBOT_SYSTEM_PROMPT_FILE)")
	fs.IntVar(&c.MaxHistory, "max-history", envInt("LLMBOT_MAX_HISTORY", 20),
		"earlier messages sent, newest first (LLMBOT_MAX_HISTORY)")
	fs.IntVar(&c.MaxPromptBytes, "max-prompt-bytes", envInt("LLMBOT_MAX_PROMPT_BYTES", 32<<10),
		"bytes of text of all messages of one request; the oldest history goes first (LLMBOT_MAX_PROMPT_BYTES)")
	fs.StringVar(&o.responseForm, "response-format", env("LLMBOT_RESPONSE_FORMAT", responseFormatJSONObj),
		"json_object: ask for JSON mode; none: do not (LLMBOT_RESPONSE_FORMAT)")
	fs.StringVar(&o.logLevel, "log-level", env("LLMBOT_LOG_LEVEL", "info"), "debug, info, warn or error (LLMBOT_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	c.ResponseFormat = o.responseForm
	c.APIKey = strings.TrimSpace(getenv("LLMBOT_API_KEY"))
	if o.keyFile != "" {
		b, err := os.ReadFile(o.keyFile)
		if err != nil {
			errs = append(errs, fmt.Sprintf("API key file: %v", err))
		}
		c.APIKey = strings.TrimSpace(string(b))
	}
	if o.promptFile != "" {
		b, err := os.ReadFile(o.promptFile)
		if err != nil {
			errs = append(errs, fmt.Sprintf("system prompt file: %v", err))
		}
		c.SystemPrompt = string(b)
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return o, nil
}

// newLogger writes JSON lines to stderr with hclog's key names, so that
// go-plugin on the gateway's side re-logs them at their level.
func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{
		Level: l,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
			case slog.LevelKey:
				return slog.String("@level", strings.ToLower(a.Value.String()))
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			}
			return a
		},
	}))
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Getenv)
	log := newLogger(o.logLevel)
	if err != nil {
		log.Error("bad configuration", "err", err)
		os.Exit(2)
	}
	o.cfg.Logger = log
	bot, err := newBot(o.cfg)
	if err != nil {
		log.Error("bad configuration", "err", err)
		os.Exit(2)
	}
	log.Info("llmbot starting", "endpoint", redactURL(bot.endpoint), "model", bot.cfg.Model,
		"api_key_set", bot.cfg.APIKey != "", "timeout", bot.cfg.Timeout.String(),
		"max_tokens", bot.cfg.MaxTokens, "max_history", bot.cfg.MaxHistory,
		"max_prompt_bytes", bot.cfg.MaxPromptBytes, "response_format", bot.cfg.ResponseFormat,
		"system_prompt_bytes", len(bot.system))
	sdk.ServeBot(bot)
}

// redactURL hides a password in a URL's user info.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
