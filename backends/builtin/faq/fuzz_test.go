package faq

import (
	"bytes"
	"math"
	"testing"
)

// The seed corpora live in testdata/fuzz/<target>/ (go test runs them as
// regression cases); these f.Add seeds cover the basics.

func FuzzParseKB(f *testing.F) {
	f.Add(sampleKB)
	f.Add([]byte("intents:\n  - id: a\n    answers: {en: A}\n    examples: {en: [x y, z]}\n"))
	f.Add([]byte("intents: [{id: a, answers: {zh: 甲}, examples: {zh: [一, 二]}}]"))
	f.Add([]byte("version: -1\nintents: {}\n"))
	f.Add([]byte("&a [*a, *a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kb, err := ParseKB(data)
		if err != nil {
			return
		}
		if len(kb.Intents) == 0 || kb.Version != 1 {
			t.Fatalf("accepted a KB with %d intents, version %d", len(kb.Intents), kb.Version)
		}
		if len(data) > 4096 { // training is cheap but keep the fuzzer fast
			return
		}
		b, err := New(kb)
		if err != nil {
			t.Fatal(err)
		}
		for _, text := range []string{"hello", "退款", ""} {
			r := b.Classify(text)
			if math.IsNaN(r.Confidence) || r.Confidence < 0 || r.Confidence > 1 {
				t.Fatalf("confidence %v", r.Confidence)
			}
		}
	})
}

func FuzzParseLabelled(f *testing.F) {
	f.Add([]byte(`{"text": "hi", "lang": "en", "expect": "greeting"}`))
	f.Add([]byte("# comment\n\n{\"text\": \"你好\", \"expect\": \"none\"}\n"))
	f.Add([]byte(`{"text": "a", "expect": "b"}{"text": "c"}`))
	f.Add([]byte("{\"text\": \"\xc3\x28\", \"expect\": \"x\"}"))
	f.Add([]byte(`{"text": "a", "expect": 1e999}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		items, err := ParseLabelled(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, it := range items {
			if it.Text == "" || it.Expect == "" || it.Line <= 0 {
				t.Fatalf("accepted %+v", it)
			}
		}
	})
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"我要退款", "human please", "ＡＢＣ１２３", "人工智能", "don't", "a\u0301", "\xff\xfe", "🙂🙂", "退 款 refund 123"} {
		f.Add(s)
	}
	b, err := New(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r := b.Classify(text)
		if math.IsNaN(r.Confidence) || r.Confidence < 0 || r.Confidence > 1 {
			t.Fatalf("%q: confidence %v", text, r.Confidence)
		}
		if r.Intent == "" {
			t.Fatalf("%q: empty intent", text)
		}
	})
}
