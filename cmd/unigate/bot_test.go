package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const heldOutSet = "../../backends/builtin/faq/kb/sample-heldout.jsonl"

func runBot(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"bot"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestBotEval(t *testing.T) {
	code, out, errs := runBot(t, "eval", heldOutSet, "--threshold", "0.8", "-errors")
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	for _, want := range []string{
		"utterances             262", "accuracy", "accuracy at threshold", "handoff rate",
		"threshold              0.80", "reliability", "billing/refund", "wrong decisions",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("\n%s", out[:strings.Index(out, "expected ")])
}

func TestBotEvalJSONAndKB(t *testing.T) {
	dir := t.TempDir()
	kb := filepath.Join(dir, "kb.yaml")
	if err := os.WriteFile(kb, []byte(`
intents:
  - id: greeting
    answers: {en: Hi}
    examples: {en: [hello, hi there, good morning]}
  - id: bye
    answers: {en: Bye}
    examples: {en: [goodbye, see you later, bye bye]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	set := filepath.Join(dir, "set.jsonl")
	if err := os.WriteFile(set, []byte(`{"text": "hello", "lang": "en", "expect": "greeting"}
{"text": "bye now", "lang": "en", "expect": "bye"}
{"text": "talk to a human", "lang": "en", "expect": "handoff"}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runBot(t, "eval", "-json", set, "-kb", kb, "-threshold", "0.5")
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	var rep struct {
		N         int
		Accuracy  float64
		Threshold float64
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.N != 3 || rep.Threshold != 0.5 || rep.Accuracy != 1 {
		t.Errorf("report %+v", rep)
	}
}

func TestBotEvalBadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"not json", []string{"eval", write("a.jsonl", "{\"text\": \"hi\", \"expect\": \"greeting\"}\nnot json\n")}, 1, "line 2"},
		{"missing expect", []string{"eval", write("b.jsonl", `{"text": "hi"}`)}, 1, `line 1: "expect" is missing`},
		{"unknown intent", []string{"eval", write("c.jsonl", `{"text": "hi", "expect": "no/such"}`)}, 1, `line 1: "no/such"`},
		{"empty", []string{"eval", write("d.jsonl", "")}, 1, "no utterances"},
		{"missing file", []string{"eval", filepath.Join(dir, "nope.jsonl")}, 1, "no such file"},
		{"bad kb", []string{"eval", heldOutSet, "-kb", write("kb.yaml", "intents: []\n")}, 1, "no intents"},
		{"bad threshold", []string{"eval", heldOutSet, "-threshold", "2"}, 1, "0..1"},
		{"no file", []string{"eval"}, 2, "exactly one"},
		{"two files", []string{"eval", "a", "b"}, 2, "exactly one"},
		{"no subcommand", nil, 2, "usage"},
		{"unknown subcommand", []string{"train"}, 2, "unknown subcommand"},
	}
	for _, tc := range tests {
		code, _, errs := runBot(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d containing %q", tc.name, code, errs, tc.code, tc.want)
		}
	}
}

func TestBotKB(t *testing.T) {
	code, out, _ := runBot(t, "kb")
	if code != 0 || !strings.Contains(out, "billing/refund") {
		t.Errorf("exit %d, output %.200q", code, out)
	}
}
