package faq

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
)

// DefaultThreshold is the gateway's default bot threshold: at or above it
// the bot answers, below it the conversation goes to a human.
const DefaultThreshold = 0.8

// handoffMinConfidence: when the visitor asks for a human, the classified
// intent is still attached (for the agent and the router) if its
// confidence reaches this; otherwise the intent is LabelHandoff.
const handoffMinConfidence = 0.5

// weakIntentConfidence: an intent marked handoff (a complaint) recognised
// below this confidence is not acted on (its reply, its skill): on the
// sample held-out set, intents below 0.4 are right less than a third of
// the time (unigate bot eval's reliability table).
const weakIntentConfidence = 0.4

// Built-in "human please" phrases, on top of the knowledge base's.
var (
	defaultHandoffPhrases = map[string][]string{
		"zh": {"人工", "真人", "转接客服", "客服人员", "工作人员", "活人", "找个人", "接线员", "客服经理", "值班经理"},
		"en": {"human", "humans", "real person", "live person", "a person", "live agent", "an agent",
			"agent please", "representative", "operator", "speak to someone", "talk to someone",
			"speak with someone", "talk with someone", "someone real", "staff member", "customer service agent"},
	}
	defaultHandoffExcept = map[string][]string{
		"zh": {"人工智能", "人工费", "非人工", "不要人工", "不用人工", "不需要人工"},
		"en": {"no human", "not a human", "dont need a human", "dont need an agent", "no need for a human",
			"user agent", "travel agent"},
	}
)

// Bot is the built-in FAQ bot: it classifies the visitor's message into
// one of the knowledge base's intents and answers from it, with a
// calibrated confidence the gateway compares with its threshold.
//
// It hands off (Answer.Handoff) when the visitor asks for a human, in
// Chinese or English, or when the best intent is marked handoff in the
// knowledge base; the intent, the skill and a short summary go with the
// conversation to the agent. Below the gateway's threshold the gateway
// hands off as well; the answer then still carries the best intent.
//
// Safe for concurrent use; Answer never blocks and never fails.
type Bot struct {
	kb   *KB
	m    *model
	hoff []phrase // normalised handoff phrases
	hexc [][]byte // normalised except phrases
}

type phrase struct {
	str   string
	text  []byte
	words bool // match whole words (not for Chinese or Japanese)
}

var _ backends.Bot = (*Bot)(nil)

// New trains a bot on kb (nil: SampleKB). Training takes milliseconds;
// the first bot of a process also loads the Chinese dictionary (~0.3 s).
func New(kb *KB) (*Bot, error) {
	if kb == nil {
		kb = SampleKB()
	}
	sg, err := segmenter()
	if err != nil {
		return nil, err
	}
	b := &Bot{kb: kb}
	for _, src := range []map[string][]string{defaultHandoffPhrases, kb.Handoff.Phrases} {
		for _, lang := range sortedKeys(src) {
			for _, p := range src[lang] {
				if np := normalizePhrase(p); np != "" {
					b.hoff = append(b.hoff, phrase{str: np, text: []byte(np), words: lang != "zh" && lang != "ja"})
				}
			}
		}
	}
	for _, src := range []map[string][]string{defaultHandoffExcept, kb.Handoff.Except} {
		for _, lang := range sortedKeys(src) {
			for _, p := range src[lang] {
				if np := normalizePhrase(p); np != "" {
					b.hexc = append(b.hexc, []byte(np))
				}
			}
		}
	}
	b.m = buildModel(kb, sg)
	return b, nil
}

// KB returns the bot's knowledge base; do not modify it.
func (b *Bot) KB() *KB { return b.kb }

// Result is a classification.
type Result struct {
	// Intent is the best intent's id, LabelNone when the text shares
	// nothing with the knowledge base.
	Intent string
	// Confidence is the calibrated probability that Intent is right.
	Confidence float64
	// Score and Margin are the raw similarity of Intent and its lead over
	// Second, the inputs of the calibration.
	Score, Margin float64
	// Second is the runner-up intent ("" if none).
	Second string
	// Lang is the language detected from the text ("zh", "en"), "" when
	// the text has no letters.
	Lang string
	// Handoff: the visitor asked for a human (HandoffPhrase says how) or
	// Intent is marked handoff in the knowledge base.
	Handoff       bool
	HandoffPhrase string
}

// Classify classifies text. It allocates nothing for text without
// Chinese characters (gse allocates while segmenting Chinese).
func (b *Bot) Classify(text string) Result {
	s := b.m.getScratch()
	defer b.m.pool.Put(s)
	sc := b.m.scoreWith(s, text)
	r := Result{Intent: LabelNone, Lang: detectLang(sc.han, sc.latin)}
	if sc.best >= 0 {
		in := &b.kb.Intents[sc.best]
		r.Intent = in.ID
		r.Handoff = in.Handoff
		r.Score, r.Margin = sc.s1, sc.s1-sc.s2
		r.Confidence = b.m.cal.prob(sc.s1, sc.s2, r.Lang == "zh")
		if sc.second >= 0 {
			r.Second = b.kb.Intents[sc.second].ID
		}
	}
	// s.norm still holds the normalised text: run the detector on it.
	if p := b.detect(s.norm); p != "" {
		r.Handoff, r.HandoffPhrase = true, p
	}
	return r
}

// detect returns the handoff phrase found in norm, or "". It masks the
// except phrases in norm (which it may modify).
func (b *Bot) detect(norm []byte) string {
	for _, e := range b.hexc {
		mask(norm, e)
	}
	for _, p := range b.hoff {
		if containsPhrase(norm, p.text, p.words) {
			return p.str
		}
	}
	return ""
}

// Answer implements backends.Bot and never fails.
func (b *Bot) Answer(_ context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	r := b.Classify(req.Text)
	lang := r.Lang
	if lang == "" {
		lang = langKey(req.Language)
	}
	a := backends.Answer{Intent: r.Intent, Confidence: r.Confidence, Handoff: r.Handoff}
	in := b.kb.intent(r.Intent)
	if in != nil {
		a.Skill = in.Skill
	}
	switch {
	case r.HandoffPhrase != "":
		if in == nil || in.Handoff || r.Confidence < handoffMinConfidence {
			a.Intent, a.Skill = LabelHandoff, ""
			if in != nil && in.Handoff {
				a.Intent, a.Skill = in.ID, in.Skill
			}
		}
		a.Text = b.handoffReply(lang, req.Language)
	case in != nil && in.Handoff && r.Confidence < weakIntentConfidence:
		// An intent that always goes to a human (a complaint), recognised
		// too weakly to act on: not its reply nor its skill; the
		// conversation is handed off for its low confidence, unrouted.
		a.Handoff, a.Skill = false, ""
		a.Text = b.handoffReply(lang, req.Language)
	case in != nil:
		a.Text = b.pick(in.Answers, lang, req.Language)
	default:
		a.Text = b.handoffReply(lang, req.Language)
	}
	a.Summary = b.summary(req, a, lang)
	return a, nil
}

// pick returns m's text in lang, else the request's language, else the
// default language, else any.
func (b *Bot) pick(m map[string]string, lang, reqLang string) string {
	for _, l := range []string{lang, langKey(reqLang), b.kb.DefaultLanguage} {
		if t, ok := m[l]; ok && l != "" {
			return t
		}
	}
	for _, l := range sortedKeys(m) {
		return m[l]
	}
	return ""
}

func (b *Bot) handoffReply(lang, reqLang string) string {
	if len(b.kb.HandoffReply) > 0 {
		if t := b.pick(b.kb.HandoffReply, lang, reqLang); t != "" {
			return t
		}
	}
	if lang == "" {
		lang = langKey(reqLang)
	}
	return (&builtin.HandoffBot{}).ReplyFor(lang)
}

// maxSummary bounds the summary, in runes.
const maxSummary = 200

// summary is what the agent sees on hand-off: the intent's title, the
// confidence, why it was handed off, and the visitor's recent messages.
func (b *Bot) summary(req backends.AnswerRequest, a backends.Answer, lang string) string {
	var sb strings.Builder
	title := a.Intent
	if in := b.kb.intent(a.Intent); in != nil {
		if t := b.pick(in.Title, lang, req.Language); t != "" {
			title = t
		}
	}
	fmt.Fprintf(&sb, "%s (%s, %.0f%%)", title, a.Intent, a.Confidence*100)
	if a.Handoff {
		sb.WriteString(", asked for a human")
	}
	sb.WriteString(": ")
	// The last two earlier visitor messages, then this one.
	var prev []string
	for i := len(req.History) - 1; i >= 0 && len(prev) < 2; i-- {
		if h := req.History[i]; h.From == "visitor" && strings.TrimSpace(h.Text) != "" {
			prev = append(prev, strings.TrimSpace(h.Text))
		}
	}
	for i := len(prev) - 1; i >= 0; i-- {
		sb.WriteString(prev[i])
		sb.WriteString(" / ")
	}
	sb.WriteString(strings.TrimSpace(req.Text))
	return truncate(sb.String(), maxSummary)
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i := 0
	for k := range s {
		if i == n {
			return s[:k] + "…"
		}
		i++
	}
	return s
}
