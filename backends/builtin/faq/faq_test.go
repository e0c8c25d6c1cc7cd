package faq

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/unigate/unigate/backends"
)

var (
	sampleOnce sync.Once
	sampleBot  *Bot
	sampleErr  error
)

// testBot returns a bot on the sample knowledge base, trained once.
func testBot(t testing.TB) *Bot {
	t.Helper()
	sampleOnce.Do(func() { sampleBot, sampleErr = New(nil) })
	if sampleErr != nil {
		t.Fatal(sampleErr)
	}
	return sampleBot
}

func TestBotAnswers(t *testing.T) {
	b := testBot(t)
	tests := []struct {
		text, lang string
		intent     string
		handoff    bool
		replyZh    bool // the reply is in Chinese
		minConf    float64
	}{
		{"我忘记密码了怎么办", "", "account/password_reset", false, true, 0.8},
		{"How do I reset my password?", "zh-CN", "account/password_reset", false, false, 0.8},
		{"发票怎么开", "en", "billing/invoice", false, true, 0.8},
		{"ＲＥＦＵＮＤ please", "", "billing/refund", false, false, 0.5}, // full-width letters
		{"我要退款", "zh", "billing/refund", false, true, 0.8},
		{"你们几点开门", "zh", "opening_hours", false, true, 0.8},
		{"where is my package", "en", "order/tracking", false, false, 0.8},
		// Intents marked handoff answer with a holding message and hand off.
		{"我要投诉你们的快递员", "zh", "complaint", true, true, 0},
		{"I want to make a complaint", "en", "complaint", true, false, 0},
	}
	for _, tc := range tests {
		a, err := b.Answer(context.Background(), backends.AnswerRequest{Text: tc.text, Language: tc.lang})
		if err != nil {
			t.Fatal(err)
		}
		if a.Intent != tc.intent || a.Handoff != tc.handoff {
			t.Errorf("%q: intent %q handoff %v, want %q %v", tc.text, a.Intent, a.Handoff, tc.intent, tc.handoff)
		}
		if a.Confidence < tc.minConf || a.Confidence > 1 {
			t.Errorf("%q: confidence %.3f, want >= %.2f", tc.text, a.Confidence, tc.minConf)
		}
		if got := hasHan(a.Text); got != tc.replyZh {
			t.Errorf("%q: reply %q in Chinese = %v, want %v", tc.text, a.Text, got, tc.replyZh)
		}
		if a.Summary == "" || !strings.Contains(a.Summary, strings.TrimSpace(tc.text)) {
			t.Errorf("%q: summary %q lacks the message", tc.text, a.Summary)
		}
	}
}

func hasHan(s string) bool {
	for _, r := range s {
		if isHan(r) {
			return true
		}
	}
	return false
}

func TestBotSkill(t *testing.T) {
	b := testBot(t)
	a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: "我要退款"})
	if a.Skill != "billing/refund" {
		t.Errorf("skill %q, want billing/refund", a.Skill)
	}
	a, _ = b.Answer(context.Background(), backends.AnswerRequest{Text: "hello"})
	if a.Intent != "greeting" || a.Skill != "" {
		t.Errorf("greeting: intent %q skill %q, want greeting and no skill", a.Intent, a.Skill)
	}
}

// TestHandoffDetector: a visitor asking for a human is always handed off,
// in either language, with the topic attached when the bot is sure of it.
func TestHandoffDetector(t *testing.T) {
	b := testBot(t)
	hands := []string{
		"转人工", "人工", "我要人工客服", "能不能找个真人", "叫你们工作人员来",
		"human please", "I want to talk to a human", "can I speak to someone", "get me an agent",
		"REPRESENTATIVE!", "let me talk to a real person about my refund", "我要退款，转人工",
	}
	for _, text := range hands {
		r := b.Classify(text)
		if !r.Handoff || r.HandoffPhrase == "" {
			t.Errorf("%q: not detected (%+v)", text, r)
		}
		a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: text})
		if !a.Handoff || a.Text == "" {
			t.Errorf("%q: answer %+v, want a hand-off with a holding reply", text, a)
		}
	}
	// Words that contain a phrase but do not ask for a human.
	for _, text := range []string{"人工智能是什么", "我不需要人工，自己搞定了", "what is a user agent", "humane treatment", "the agency sent it"} {
		if r := b.Classify(text); r.HandoffPhrase != "" {
			t.Errorf("%q: detected %q, want nothing", text, r.HandoffPhrase)
		}
	}
}

func TestBotOutOfScope(t *testing.T) {
	b := testBot(t)
	for _, text := range []string{"", "   ", "！？", "asdkjh qwpoei", "the quick brown fox jumps over the lazy dog", "量子力学的基本原理"} {
		a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: text, Language: "en"})
		if !a.Handoff && a.Confidence >= DefaultThreshold {
			t.Errorf("%q: answered %q with confidence %.2f", text, a.Intent, a.Confidence)
		}
		if a.Text == "" {
			t.Errorf("%q: empty reply", text)
		}
	}
	if r := b.Classify(""); r.Intent != LabelNone || r.Confidence != 0 {
		t.Errorf("empty text: %+v", r)
	}
	// Gibberish whose nearest intent is one that always goes to a human:
	// not that intent's reply and skill (a complaint desk for "asdf"), a
	// hand-off for low confidence.
	for _, text := range []string{"asdf qwerty", "asdkjh qwpoei"} {
		a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: text, Language: "en"})
		if r := b.Classify(text); r.Handoff && r.Confidence < weakIntentConfidence && (a.Handoff || a.Skill != "") {
			t.Errorf("%q (%s at %.2f): handoff %v skill %q, want a low-confidence hand-off without a skill", text, r.Intent, r.Confidence, a.Handoff, a.Skill)
		}
	}
	if r := b.Classify("asdf qwerty"); !r.Handoff || r.Confidence >= weakIntentConfidence {
		t.Errorf("precondition: %q classifies as %s at %.2f (handoff %v), no longer a weak hand-off intent: pick another text", "asdf qwerty", r.Intent, r.Confidence, r.Handoff)
	}
}

func TestBotSummary(t *testing.T) {
	b := testBot(t)
	req := backends.AnswerRequest{
		Text: "还是没收到退款", Language: "zh-CN",
		History: []backends.HistoryMessage{
			{From: "visitor", Text: "你好"},
			{From: "bot", Text: "您好！"},
			{From: "visitor", Text: "订单 A123 申请了退款"},
			{From: "agent", Text: "ignored"},
		},
	}
	a, _ := b.Answer(context.Background(), req)
	for _, want := range []string{"退款", "billing/refund", "你好 / 订单 A123 申请了退款 / 还是没收到退款"} {
		if !strings.Contains(a.Summary, want) {
			t.Errorf("summary %q lacks %q", a.Summary, want)
		}
	}
	req.Text = strings.Repeat("退款", 300)
	a, _ = b.Answer(context.Background(), req)
	if n := utf8.RuneCountInString(a.Summary); n > maxSummary+1 || !strings.HasSuffix(a.Summary, "…") {
		t.Errorf("long summary: %d runes, %q", n, a.Summary[len(a.Summary)-10:])
	}
}

// TestCalibration checks the fitted calibration is monotonic: a higher
// score or margin never lowers the confidence.
func TestCalibration(t *testing.T) {
	b := testBot(t)
	c := b.m.cal
	for _, zh := range []bool{false, true} {
		prev := 0.0
		for s := 0.05; s <= 1; s += 0.05 {
			p := c.prob(s, s/2, zh)
			if p < prev || p < 0 || p > 1 {
				t.Fatalf("zh=%v: prob(%.2f) = %.3f after %.3f", zh, s, p, prev)
			}
			prev = p
		}
	}
	if b.m.looAccuracy < 0.6 {
		t.Errorf("leave-one-out accuracy %.3f, want >= 0.6", b.m.looAccuracy)
	}
	// The fit also works with no out-of-scope examples and only positives.
	c = fitCalibration([][calFeatures]float64{calX(0.5, 0.1, false), calX(0.6, 0.2, true)}, []float64{1, 1})
	if p := c.prob(0.5, 0.1, false); p <= 0.5 || p >= 1 {
		t.Errorf("all-positive fit: prob %.3f", p)
	}
}

func TestBotConcurrent(t *testing.T) {
	b := testBot(t)
	texts := []string{"我要退款", "where is my package", "转人工", "发票", "hello", "怎么注销账号"}
	want := make([]backends.Answer, len(texts))
	for i, s := range texts {
		want[i], _ = b.Answer(context.Background(), backends.AnswerRequest{Text: s})
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 50; k++ {
				i := (g + k) % len(texts)
				a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: texts[i]})
				if a != want[i] {
					t.Errorf("%q: %+v, want %+v", texts[i], a, want[i])
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestClassifyAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts differ under -cover and -race")
	}
	b := testBot(t)
	b.Classify("warm up the pool")
	n := testing.AllocsPerRun(100, func() {
		b.Classify("Hi, I was charged twice for my order, how do I get a refund?")
	})
	if n != 0 {
		t.Errorf("Classify of English text: %v allocations, want 0", n)
	}
}

func TestCustomKB(t *testing.T) {
	kb, err := ParseKB([]byte(`
version: 1
words: [云盘套餐]
handoff:
  phrases: {en: [escalate]}
intents:
  - id: storage/plan
    skill: sales
    answers: {zh: 云盘套餐见官网。, en: See our storage plans.}
    examples:
      zh: [云盘套餐多少钱, 怎么升级云盘套餐, 云盘容量不够]
      en: [how much is more storage, upgrade my storage plan]
  - id: greeting
    answers: {en: Hi!}
    examples: {en: [hello, hi there, good morning]}
`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(kb)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := b.Answer(context.Background(), backends.AnswerRequest{Text: "我想买云盘套餐"})
	if a.Intent != "storage/plan" || a.Skill != "sales" || a.Text != "云盘套餐见官网。" {
		t.Errorf("custom KB: %+v", a)
	}
	// Only an English answer: a Chinese greeting still gets it.
	a, _ = b.Answer(context.Background(), backends.AnswerRequest{Text: "hello 你好"})
	if a.Intent != "greeting" || a.Text != "Hi!" {
		t.Errorf("fallback language: %+v", a)
	}
	if r := b.Classify("please escalate this"); !r.Handoff {
		t.Errorf("KB handoff phrase not detected: %+v", r)
	}
}

func TestParseKBErrors(t *testing.T) {
	const intent = "  - id: a\n    answers: {en: A}\n    examples: {en: [one thing, another thing]}\n"
	tests := []struct{ name, yaml, want string }{
		{"not yaml", "intents: [", "yaml"},
		{"unknown field", "intent:\n" + intent, "field intent not found"},
		{"no intents", "version: 1\n", "no intents"},
		{"version", "version: 2\nintents:\n" + intent, "version 2"},
		{"duplicate", "intents:\n" + intent + intent, "duplicate id"},
		{"reserved", "intents:\n  - id: none\n    answers: {en: A}\n    examples: {en: [x y, z w]}\n", "reserved"},
		{"no id", "intents:\n  - answers: {en: A}\n    examples: {en: [x, y]}\n", "no id"},
		{"space in id", "intents:\n  - id: a b\n    answers: {en: A}\n    examples: {en: [x, y]}\n", "no spaces"},
		{"no answers", "intents:\n  - id: a\n    examples: {en: [x, y]}\n", "no answers"},
		{"one example", "intents:\n  - id: a\n    answers: {en: A}\n    examples: {en: [x, '!!!']}\n", "fewer than 2"},
		{"empty lang", "intents:\n  - id: a\n    answers: {'': A}\n    examples: {en: [x, y]}\n", "empty language"},
		{"empty word", "words: ['...']\nintents:\n" + intent, "words"},
		{"long text", "intents:\n  - id: a\n    answers: {en: " + strings.Repeat("x", maxTextBytes+1) + "}\n    examples: {en: [x, y]}\n", "longer than"},
	}
	for _, tc := range tests {
		_, err := ParseKB([]byte(tc.yaml))
		if err == nil || !errors.Is(err, ErrKB) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrKB containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseKB([]byte("intents:\n" + intent)); err != nil {
		t.Errorf("minimal KB: %v", err)
	}
	if _, err := LoadKB("testdata/does-not-exist.yaml"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseLabelledErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "no utterances"},
		{"only comments", "# x\n\n", "no utterances"},
		{"not json", "{\"text\": \"a\", \"expect\": \"b\"}\nnope\n", "line 2"},
		{"no text", `{"expect": "greeting"}`, `"text" is missing`},
		{"no expect", `{"text": "hi"}`, `"expect" is missing`},
		{"unknown field", `{"text": "hi", "expect": "greeting", "label": "x"}`, `unknown field "label"`},
		{"two values", `{"text": "hi", "expect": "greeting"} {}`, "more than one"},
		{"wrong type", `{"text": 3, "expect": "greeting"}`, "line 1"},
		{"not utf8", "{\"text\": \"\xff\", \"expect\": \"x\"}", "UTF-8"},
		{"too long", `{"text": "` + strings.Repeat("a", maxLabelledLine) + `", "expect": "x"}`, "longer than"},
	}
	for _, tc := range tests {
		_, err := ParseLabelled(strings.NewReader(tc.in))
		if err == nil || !errors.Is(err, ErrLabelled) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrLabelled containing %q", tc.name, err, tc.want)
		}
	}
	items, err := ParseLabelled(strings.NewReader("# c\n\n{\"text\": \" hi \", \"lang\": \"en\", \"expect\": \"greeting\"}\n"))
	if err != nil || len(items) != 1 || items[0].Text != "hi" || items[0].Line != 3 {
		t.Fatalf("valid set: %+v, %v", items, err)
	}
	b := testBot(t)
	items = append(items, Labelled{Text: "x", Expect: "no/such", Line: 9})
	if err := b.CheckLabels(items); err == nil || !strings.Contains(err.Error(), `line 9: "no/such"`) {
		t.Errorf("CheckLabels: %v", err)
	}
}
