package faq

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// sampleKB is the knowledge base used when none is configured.
//
//go:embed kb/sample.yaml
var sampleKB []byte

// SampleKB returns the embedded sample knowledge base (a generic customer
// service in Chinese and English), the default of New.
func SampleKB() *KB {
	kb, err := ParseKB(sampleKB)
	if err != nil {
		panic("faq: the embedded sample knowledge base is invalid: " + err.Error()) // a build bug
	}
	return kb
}

// SampleKBYAML returns the YAML source of SampleKB, a starting point for
// a deployment's own knowledge base.
func SampleKBYAML() []byte { return slices.Clone(sampleKB) }

// KB is a knowledge base: the intents the FAQ bot knows, with their
// answers and example utterances, per language. Languages are keyed by
// their primary BCP 47 subtag ("zh", "en"); "zh-CN" in the file is read
// as "zh".
type KB struct {
	// Version of the format; 1.
	Version int `yaml:"version"`
	// DefaultLanguage answers a visitor whose language cannot be told
	// from the text or the request ["the first language of the first
	// intent's answers"].
	DefaultLanguage string `yaml:"default_language"`
	// HandoffReply is the holding reply on a hand-off, per language
	// [builtin.HandoffBot's replies].
	HandoffReply map[string]string `yaml:"handoff_reply"`
	// Handoff configures the "human please" detector, on top of its
	// built-in phrases.
	Handoff HandoffConfig `yaml:"handoff"`
	// Words are domain phrases (product names, "电子发票") that count as
	// one feature each wherever they occur in a visitor's text.
	Words []string `yaml:"words"`
	// OutOfScope are utterances that belong to no intent, per language:
	// they teach the confidence calibration what not to answer.
	OutOfScope map[string][]string `yaml:"out_of_scope"`
	// Intents, at least one.
	Intents []Intent `yaml:"intents"`
}

// HandoffConfig configures the "human please" detector.
type HandoffConfig struct {
	// Phrases that ask for a human, per language. Chinese phrases match
	// anywhere; phrases of other languages match whole words.
	Phrases map[string][]string `yaml:"phrases"`
	// Except are phrases inside which a handoff phrase does not count
	// ("人工智能" contains "人工").
	Except map[string][]string `yaml:"except"`
}

// Intent is one thing a visitor may want.
type Intent struct {
	// ID names the intent, hierarchical with "/" like skills
	// ("billing/refund"); "handoff" and "none" are reserved.
	ID string `yaml:"id"`
	// Title is a short human name per language, for agent summaries [ID].
	Title map[string]string `yaml:"title"`
	// Skill an agent needs when this intent is handed off ["" : the
	// gateway derives it from the intent].
	Skill string `yaml:"skill"`
	// Handoff: the bot never answers this intent itself; it replies with
	// Answers (a holding message) and hands the conversation to a human.
	Handoff bool `yaml:"handoff"`
	// Answers per language; at least one.
	Answers map[string]string `yaml:"answers"`
	// Examples are utterances per language, at least two in all.
	Examples map[string][]string `yaml:"examples"`
}

// Reserved labels.
const (
	// LabelHandoff is the intent of a hand-off that no KB intent explains,
	// and the label of a labelled utterance that must be handed off.
	LabelHandoff = "handoff"
	// LabelNone is the intent when nothing matches, and the label of an
	// out-of-scope labelled utterance.
	LabelNone = "none"
)

// Bounds that keep a hostile or broken file from exhausting memory.
const (
	maxKBBytes   = 8 << 20
	maxTextBytes = 4 << 10 // one example, answer or phrase
	maxIntents   = 10000
)

// ErrKB wraps every knowledge-base validation error.
var ErrKB = errors.New("faq: invalid knowledge base")

// LoadKB reads and validates a knowledge-base file.
func LoadKB(path string) (*KB, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kb, err := ParseKB(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return kb, nil
}

// ParseKB parses and validates a knowledge base. Unknown fields are
// errors, so a misspelt key is reported rather than ignored.
func ParseKB(data []byte) (*KB, error) {
	if len(data) > maxKBBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrKB, maxKBBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var kb KB
	if err := dec.Decode(&kb); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKB, err)
	}
	if err := kb.normalize(); err != nil {
		return nil, err
	}
	return &kb, nil
}

func kbErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrKB}, args...)...)
}

// langKey reduces a language tag to its lower-cased primary subtag.
func langKey(tag string) string {
	p, _, _ := strings.Cut(strings.ToLower(strings.TrimSpace(tag)), "-")
	p, _, _ = strings.Cut(p, "_")
	return p
}

func validText(s string) bool { return utf8.ValidString(s) && len(s) <= maxTextBytes }

// normLangMap re-keys m by langKey, merging lists.
func normLangList(what string, m map[string][]string) (map[string][]string, error) {
	out := make(map[string][]string, len(m))
	for k, v := range m {
		lk := langKey(k)
		if lk == "" {
			return nil, kbErr("%s: empty language key", what)
		}
		for _, s := range v {
			if !validText(s) {
				return nil, kbErr("%s.%s: text longer than %d bytes or not UTF-8", what, k, maxTextBytes)
			}
		}
		out[lk] = append(out[lk], v...)
	}
	return out, nil
}

func normLangText(what string, m map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(m))
	for k, v := range m {
		lk := langKey(k)
		if lk == "" {
			return nil, kbErr("%s: empty language key", what)
		}
		if !validText(v) {
			return nil, kbErr("%s.%s: text longer than %d bytes or not UTF-8", what, k, maxTextBytes)
		}
		out[lk] = v
	}
	return out, nil
}

func (kb *KB) normalize() error {
	var err error
	if kb.Version == 0 {
		kb.Version = 1
	}
	if kb.Version != 1 {
		return kbErr("version %d not supported (1 is)", kb.Version)
	}
	if len(kb.Intents) == 0 {
		return kbErr("no intents")
	}
	if len(kb.Intents) > maxIntents {
		return kbErr("more than %d intents", maxIntents)
	}
	kb.DefaultLanguage = langKey(kb.DefaultLanguage)
	if kb.HandoffReply, err = normLangText("handoff_reply", kb.HandoffReply); err != nil {
		return err
	}
	if kb.Handoff.Phrases, err = normLangList("handoff.phrases", kb.Handoff.Phrases); err != nil {
		return err
	}
	if kb.Handoff.Except, err = normLangList("handoff.except", kb.Handoff.Except); err != nil {
		return err
	}
	if kb.OutOfScope, err = normLangList("out_of_scope", kb.OutOfScope); err != nil {
		return err
	}
	for _, w := range kb.Words {
		if !validText(w) || normalizePhrase(w) == "" {
			return kbErr("words: %q is empty after normalisation, too long or not UTF-8", w)
		}
	}
	seen := make(map[string]bool, len(kb.Intents))
	for i := range kb.Intents {
		in := &kb.Intents[i]
		in.ID = strings.TrimSpace(in.ID)
		where := fmt.Sprintf("intents[%d] (%s)", i, in.ID)
		switch {
		case in.ID == "":
			return kbErr("intents[%d]: no id", i)
		case in.ID == LabelNone:
			return kbErr("%s: the id %q is reserved", where, in.ID)
		case !validText(in.ID) || strings.ContainsAny(in.ID, " \t\n"):
			return kbErr("%s: an id has no spaces", where)
		case seen[in.ID]:
			return kbErr("%s: duplicate id", where)
		}
		seen[in.ID] = true
		if in.Title, err = normLangText(where+".title", in.Title); err != nil {
			return err
		}
		if in.Answers, err = normLangText(where+".answers", in.Answers); err != nil {
			return err
		}
		if len(in.Answers) == 0 {
			return kbErr("%s: no answers", where)
		}
		if in.Examples, err = normLangList(where+".examples", in.Examples); err != nil {
			return err
		}
		n := 0
		for _, ex := range in.Examples {
			for _, e := range ex {
				if normalizePhrase(e) != "" {
					n++
				}
			}
		}
		if n < 2 {
			return kbErr("%s: fewer than 2 examples with words in them", where)
		}
		if kb.DefaultLanguage == "" {
			for _, l := range []string{"zh", "en"} {
				if _, ok := in.Answers[l]; ok {
					kb.DefaultLanguage = l
					break
				}
			}
			if kb.DefaultLanguage == "" {
				kb.DefaultLanguage = sortedKeys(in.Answers)[0]
			}
		}
	}
	return nil
}

// intent returns the intent with the given id, or nil.
func (kb *KB) intent(id string) *Intent {
	for i := range kb.Intents {
		if kb.Intents[i].ID == id {
			return &kb.Intents[i]
		}
	}
	return nil
}

// HasLabel reports whether label is an intent of kb or one of the
// reserved labels LabelHandoff and LabelNone.
func (kb *KB) HasLabel(label string) bool {
	return label == LabelHandoff || label == LabelNone || kb.intent(label) != nil
}
