package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// reply is the JSON object the model is asked for.
type reply struct {
	Answer     string
	Intent     string
	Confidence float64 // clamped to [0, 1]
	Handoff    bool
	Summary    string
}

var errNoObject = errors.New("no JSON object in the reply")

// parseReply finds the JSON object in a model's reply and reads it
// leniently: a reasoning model's <think> block, code fences and text around
// the object are ignored; confidence and handoff may be strings; answer
// may be called reply or text. It fails when there is no object, or the
// object has neither an answer nor a handoff.
func parseReply(content string) (reply, error) {
	s := strings.TrimSpace(stripThink(content))
	var obj map[string]json.RawMessage
	var err error
	if strings.HasPrefix(s, "{") { // a bare object, even one with ``` inside a string
		obj, err = firstObject(s)
	}
	if obj == nil {
		if obj, err = firstObject(stripFences(s)); err != nil {
			return reply{}, err
		}
	}
	var r reply
	var haveAnswer, haveHandoff bool
	for _, k := range []string{"answer", "reply", "text"} {
		if v, ok := obj[k]; ok {
			if r.Answer, err = asString(v); err != nil {
				return reply{}, fmt.Errorf("%s: %w", k, err)
			}
			haveAnswer = true
			break
		}
	}
	if v, ok := obj["handoff"]; ok {
		if r.Handoff, err = asBool(v); err != nil {
			return reply{}, fmt.Errorf("handoff: %w", err)
		}
		haveHandoff = true
	}
	if !haveAnswer && !haveHandoff {
		return reply{}, errors.New("the object has no answer and no handoff")
	}
	if v, ok := obj["intent"]; ok {
		r.Intent, _ = asString(v) // a wrong type is no intent
	}
	if v, ok := obj["summary"]; ok {
		r.Summary, _ = asString(v)
	}
	if v, ok := obj["confidence"]; ok {
		r.Confidence, _ = asFloat(v) // missing or wrong: 0, the gateway hands off
	}
	r.Confidence = clamp01(r.Confidence)
	return r, nil
}

// stripThink removes <think>…</think> blocks (DeepSeek-R1, Qwen3 and other
// reasoning models served by llama.cpp or Ollama emit them in the content).
// An unterminated block removes everything after it.
func stripThink(s string) string {
	for {
		i := strings.Index(s, "<think>")
		if i < 0 {
			return s
		}
		j := strings.Index(s[i:], "</think>")
		if j < 0 {
			return s[:i]
		}
		s = s[:i] + s[i+j+len("</think>"):]
	}
}

// stripFences returns the inside of the first ``` fenced block, if any.
func stripFences(s string) string {
	i := strings.Index(s, "```")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	// Drop the info string ("json") up to the end of the line.
	if nl := strings.IndexByte(rest, '\n'); nl >= 0 && !strings.Contains(rest[:nl], "{") {
		rest = rest[nl+1:]
	}
	if j := strings.Index(rest, "```"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// firstObject decodes the first JSON object in s, ignoring text before and
// after it. At most 16 candidate '{' are tried.
func firstObject(s string) (map[string]json.RawMessage, error) {
	var first error
	for off, tries := 0, 0; off < len(s) && tries < 16; off, tries = off+1, tries+1 {
		i := strings.IndexByte(s[off:], '{')
		if i < 0 {
			break
		}
		off += i
		var obj map[string]json.RawMessage
		err := json.NewDecoder(strings.NewReader(s[off:])).Decode(&obj)
		if err == nil {
			return obj, nil
		}
		if first == nil {
			first = err
		}
	}
	if first != nil {
		return nil, fmt.Errorf("%w: %v", errNoObject, first)
	}
	return nil, errNoObject
}

func asString(v json.RawMessage) (string, error) {
	v = bytes.TrimSpace(v)
	if string(v) == "null" {
		return "", nil
	}
	var s string
	err := json.Unmarshal(v, &s)
	return s, err
}

func asBool(v json.RawMessage) (bool, error) {
	var b bool
	if err := json.Unmarshal(v, &b); err == nil {
		return b, nil
	}
	if s, err := asString(v); err == nil {
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "true", "yes", "1":
			return true, nil
		case "false", "no", "0", "":
			return false, nil
		}
	}
	var f float64
	if err := json.Unmarshal(v, &f); err == nil {
		return f != 0, nil
	}
	return false, fmt.Errorf("not a boolean: %.40s", v)
}

func asFloat(v json.RawMessage) (float64, error) {
	var f float64
	if err := json.Unmarshal(v, &f); err == nil {
		return f, nil
	}
	s, err := asString(v)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.TrimSpace(s), 64)
}

// clamp01 clamps f to [0, 1]; NaN is 0.
func clamp01(f float64) float64 {
	switch {
	case math.IsNaN(f) || f < 0:
		return 0
	case f > 1:
		return 1
	}
	return f
}

// cleanIntent turns the model's intent into an id like the gateway's
// (lowercase, slash-separated, [a-z0-9_-] and non-ASCII letters), at most
// maxIntentBytes; "" becomes "unknown".
func cleanIntent(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(strings.TrimSpace(s)) {
		switch {
		case c == '/' || c == '_' || c == '-' || c == '.':
			b.WriteRune(c)
		case c == ' ':
			b.WriteByte('_')
		case unicode.IsLetter(c) || unicode.IsDigit(c):
			b.WriteRune(c)
		}
	}
	out := strings.Trim(cutBytes(b.String(), maxIntentBytes), "/_-.")
	if out == "" {
		return "unknown"
	}
	return out
}

// "Human please" phrases (those of the built-in FAQ bot): Chinese phrases
// match anywhere, English ones as whole words. A phrase inside an except
// phrase does not count.
var (
	humanZH = []string{"人工", "真人", "转接客服", "客服人员", "工作人员", "活人", "找个人", "接线员", "客服经理", "值班经理"}
	humanEN = []string{"human", "humans", "real person", "live person", "a person", "live agent", "an agent",
		"agent please", "representative", "operator", "speak to someone", "talk to someone",
		"speak with someone", "talk with someone", "someone real", "staff member", "customer service agent"}
	exceptZH = []string{"人工智能", "人工费", "非人工", "不要人工", "不用人工", "不需要人工"}
	exceptEN = []string{"no human", "not a human", "dont need a human", "dont need an agent", "no need for a human",
		"user agent", "travel agent"}
)

// askedForHuman returns the phrase by which text asks for a human, or "".
func askedForHuman(text string) string {
	if len(text) > maxMessageBytes {
		text = cutBytes(text, maxMessageBytes)
	}
	zh := text
	for _, e := range exceptZH {
		zh = strings.ReplaceAll(zh, e, "|")
	}
	for _, p := range humanZH {
		if strings.Contains(zh, p) {
			return p
		}
	}
	// English: lower-case words separated by single spaces, apostrophes
	// dropped ("don't" → "dont"), padded so " phrase " matches whole words.
	var b strings.Builder
	b.WriteByte(' ')
	space := true
	for _, c := range strings.ToLower(text) {
		switch {
		case c == '\'' || c == '’':
		case unicode.IsLetter(c) || unicode.IsDigit(c):
			b.WriteRune(c)
			space = false
		case !space:
			b.WriteByte(' ')
			space = true
		}
	}
	if !space {
		b.WriteByte(' ')
	}
	en := b.String()
	for _, e := range exceptEN {
		en = strings.ReplaceAll(en, " "+e+" ", " | ")
	}
	for _, p := range humanEN {
		if strings.Contains(en, " "+p+" ") {
			return p
		}
	}
	return ""
}
