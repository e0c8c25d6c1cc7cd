package builtin

import (
	"context"
	"strings"

	"github.com/unigate/unigate/backends"
)

// HandoffIntent is the intent of every answer from HandoffBot.
const HandoffIntent = "handoff"

// HandoffBot is the minimal default Bot: it always hands the conversation
// to a human, with a short holding reply in the visitor's language and the
// visitor's message as the summary for the agent.
type HandoffBot struct {
	// Reply overrides the holding reply, by language tag prefix ("zh",
	// "en"); "" is the default for other languages.
	Reply map[string]string
}

var _ backends.Bot = (*HandoffBot)(nil)

var defaultReplies = map[string]string{
	"":   "Connecting you to an agent, please wait a moment.",
	"zh": "正在为您转接人工客服，请稍候。",
}

// Answer implements backends.Bot and never fails.
func (b *HandoffBot) Answer(_ context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	return HandoffAnswer(req, b.reply(req.Language)), nil
}

// ReplyFor returns the holding reply for a language tag.
func (b *HandoffBot) ReplyFor(lang string) string { return b.reply(lang) }

func (b *HandoffBot) reply(lang string) string {
	primary, _, _ := strings.Cut(strings.ToLower(lang), "-")
	for _, m := range []map[string]string{b.Reply, defaultReplies} {
		if r, ok := m[primary]; ok {
			return r
		}
	}
	if r, ok := b.Reply[""]; ok {
		return r
	}
	return defaultReplies[""]
}

// maxSummary bounds the summary taken from the visitor's message, in runes.
const maxSummary = 200

// HandoffAnswer builds a hand-off answer for req with the given reply text;
// the supervisor uses it as the Bot fallback.
func HandoffAnswer(req backends.AnswerRequest, reply string) backends.Answer {
	if reply == "" {
		reply = (&HandoffBot{}).reply(req.Language)
	}
	summary := req.Text
	if r := []rune(summary); len(r) > maxSummary {
		summary = string(r[:maxSummary]) + "…"
	}
	return backends.Answer{
		Text:       reply,
		Intent:     HandoffIntent,
		Confidence: 0,
		Handoff:    true,
		Summary:    summary,
	}
}
