package faq

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// heldOut loads the sample held-out set shipped with the knowledge base.
func heldOut(t testing.TB) []Labelled {
	t.Helper()
	f, err := os.Open("kb/sample-heldout.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	items, err := ParseLabelled(f)
	if err != nil {
		t.Fatal(err)
	}
	return items
}

// TestHeldOutIsHeldOut: the held-out set has at least 200 utterances, in
// both languages, none of them a knowledge-base example or out-of-scope
// utterance (after normalisation), and only known labels.
func TestHeldOutIsHeldOut(t *testing.T) {
	b := testBot(t)
	items := heldOut(t)
	if len(items) < 200 {
		t.Fatalf("%d utterances, want >= 200", len(items))
	}
	if err := b.CheckLabels(items); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, in := range b.kb.Intents {
		for _, exs := range in.Examples {
			for _, e := range exs {
				seen[normalizePhrase(e)] = in.ID
			}
		}
	}
	for _, exs := range b.kb.OutOfScope {
		for _, e := range exs {
			seen[normalizePhrase(e)] = "out_of_scope"
		}
	}
	langs := map[string]int{}
	for _, it := range items {
		if id, ok := seen[normalizePhrase(it.Text)]; ok {
			t.Errorf("line %d: %q is a knowledge-base example of %s", it.Line, it.Text, id)
		}
		seen[normalizePhrase(it.Text)] = "held-out"
		langs[it.Lang]++
	}
	if langs["zh"] < 80 || langs["en"] < 80 {
		t.Errorf("languages %v, want >= 80 each of zh and en", langs)
	}
}

// TestHeldOutAccuracy guards the figures published in docs/backends.md
// against regressions (they are deterministic: no randomness in training).
func TestHeldOutAccuracy(t *testing.T) {
	b := testBot(t)
	r := b.Evaluate(heldOut(t), DefaultThreshold)
	t.Logf("accuracy %.3f, at threshold %.3f (%d answered), handoff rate %.3f, ECE %.3f",
		r.Accuracy, r.AccuracyAtThreshold, r.Answered, r.HandoffRate, r.ECE)
	if r.Accuracy < 0.88 {
		t.Errorf("accuracy %.3f, want >= 0.88", r.Accuracy)
	}
	if r.AccuracyAtThreshold < 0.95 {
		t.Errorf("accuracy at threshold %.3f, want >= 0.95", r.AccuracyAtThreshold)
	}
	if r.HandoffRate > 0.6 {
		t.Errorf("handoff rate %.3f, want <= 0.6", r.HandoffRate)
	}
	if r.ECE > 0.15 {
		t.Errorf("calibration error %.3f, want <= 0.15", r.ECE)
	}
	for _, ls := range r.PerLabel {
		if ls.Label == LabelHandoff && ls.Right != ls.N {
			t.Errorf("only %d of %d requests for a human handed off", ls.Right, ls.N)
		}
	}
	var out bytes.Buffer
	if err := r.WriteText(&out, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"accuracy at threshold", "handoff rate", "reliability", "billing/refund", "wrong decisions"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
