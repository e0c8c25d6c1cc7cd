package faq

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/unigate/unigate/backends"
)

// Labelled is one utterance of a labelled evaluation set.
type Labelled struct {
	Text string `json:"text"`
	// Lang is the utterance's BCP 47 language, passed to the bot as the
	// visitor's declared language; "" when unknown.
	Lang string `json:"lang"`
	// Expect is the right outcome: an intent id (the bot should answer
	// with it, or for an intent marked handoff, hand off with it),
	// LabelHandoff (the bot must hand off, whatever the intent) or
	// LabelNone (out of scope: the bot must not answer).
	Expect string `json:"expect"`
	// Line is the item's line in its file.
	Line int `json:"-"`
}

// ErrLabelled wraps every error of ParseLabelled.
var ErrLabelled = errors.New("faq: invalid labelled set")

const maxLabelledLine = 64 << 10

// ParseLabelled reads a labelled set: one JSON object per line with the
// fields text, lang and expect; blank lines and lines starting with '#'
// are skipped. Unknown fields, empty text or expect, invalid UTF-8 and
// lines over 64 KiB are errors naming the line.
func ParseLabelled(r io.Reader) ([]Labelled, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLabelledLine)
	var out []Labelled
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		if !utf8.Valid(b) {
			return nil, fmt.Errorf("%w: line %d: not UTF-8", ErrLabelled, line)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var it Labelled
		if err := dec.Decode(&it); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrLabelled, line, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("%w: line %d: more than one JSON value", ErrLabelled, line)
		}
		it.Text = strings.TrimSpace(it.Text)
		it.Expect = strings.TrimSpace(it.Expect)
		switch {
		case it.Text == "":
			return nil, fmt.Errorf("%w: line %d: \"text\" is missing or empty", ErrLabelled, line)
		case it.Expect == "":
			return nil, fmt.Errorf("%w: line %d: \"expect\" is missing or empty", ErrLabelled, line)
		}
		it.Line = line
		out = append(out, it)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: line %d: longer than %d bytes", ErrLabelled, line+1, maxLabelledLine)
		}
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no utterances", ErrLabelled)
	}
	return out, nil
}

// CheckLabels returns an error naming every item whose Expect is neither
// an intent of the bot's knowledge base nor a reserved label.
func (b *Bot) CheckLabels(items []Labelled) error {
	var bad []string
	for _, it := range items {
		if !b.kb.HasLabel(it.Expect) {
			bad = append(bad, fmt.Sprintf("line %d: %q", it.Line, it.Expect))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	if len(bad) > 10 {
		bad = append(bad[:10], fmt.Sprintf("and %d more", len(bad)-10))
	}
	return fmt.Errorf("%w: unknown intent (not in the knowledge base, nor %q or %q): %s",
		ErrLabelled, LabelHandoff, LabelNone, strings.Join(bad, "; "))
}

// Outcome is what the bot did with one labelled utterance at the
// threshold.
type Outcome struct {
	Item       Labelled
	Intent     string  // the bot's intent
	Confidence float64 // its calibrated confidence
	Handoff    bool    // the bot itself asked for a human
	Answered   bool    // not Handoff and Confidence >= threshold
	// IntentOK: the intent is right (Expect is the intent; for
	// LabelHandoff, the bot handed off; for LabelNone, never).
	IntentOK bool
	// DecisionOK: the right thing happened at the threshold: answered
	// with the expected intent, or handed off when Expect is LabelHandoff,
	// LabelNone or an intent marked handoff.
	DecisionOK bool
}

// Report summarises an evaluation.
type Report struct {
	Threshold float64
	Outcomes  []Outcome

	N, InScope                int     // all items; items expecting an intent or a hand-off
	Accuracy                  float64 // IntentOK over InScope items, ignoring the threshold
	Answered, AnsweredOK      int     // answered at the threshold; of them, with the right intent
	AccuracyAtThreshold       float64 // AnsweredOK / Answered
	HandoffRate               float64 // (N − Answered) / N
	DecisionAccuracy          float64 // DecisionOK over N
	Coverage                  float64 // answered right over items expecting a non-handoff intent
	ECE                       float64 // expected calibration error, 10 bins
	Reliability               []Bin
	Sweep                     []SweepPoint
	PerLabel                  []LabelStats
	answerableOK, answerableN int
}

// Bin is one confidence bin of the reliability table.
type Bin struct {
	Lo, Hi         float64
	N              int
	MeanConfidence float64
	Accuracy       float64 // fraction with IntentOK
}

// SweepPoint is the outcome at another threshold, to help choose one.
type SweepPoint struct {
	Threshold           float64
	Answered            int
	AccuracyAtThreshold float64
	HandoffRate         float64
	DecisionAccuracy    float64
}

// LabelStats is one expected label's row of the confusion summary.
type LabelStats struct {
	Label                        string
	N, IntentOK, Answered, Right int // Right: DecisionOK
	Confused                     map[string]int
}

// Evaluate classifies every item and scores the outcomes at threshold.
func (b *Bot) Evaluate(items []Labelled, threshold float64) *Report {
	rep := &Report{Threshold: threshold, N: len(items)}
	per := map[string]*LabelStats{}
	var bins [10]struct {
		n        int
		conf, ok float64
	}
	for _, it := range items {
		a, _ := b.Answer(context.Background(), answerRequest(it))
		o := Outcome{Item: it, Intent: a.Intent, Confidence: a.Confidence, Handoff: a.Handoff}
		o.Answered = !a.Handoff && a.Confidence >= threshold
		expIn := b.kb.intent(it.Expect)
		switch {
		case it.Expect == LabelHandoff:
			o.IntentOK = a.Handoff
			o.DecisionOK = !o.Answered
		case it.Expect == LabelNone:
			o.DecisionOK = !o.Answered
		case expIn != nil && expIn.Handoff:
			o.IntentOK = a.Intent == it.Expect
			o.DecisionOK = o.IntentOK && a.Handoff
		default:
			o.IntentOK = a.Intent == it.Expect
			o.DecisionOK = o.Answered && o.IntentOK
			rep.answerableN++
			if o.DecisionOK {
				rep.answerableOK++
			}
		}
		if it.Expect != LabelNone {
			rep.InScope++
			if o.IntentOK {
				rep.Accuracy++
			}
		}
		if o.Answered {
			rep.Answered++
			if o.IntentOK {
				rep.AnsweredOK++
			}
		}
		if o.DecisionOK {
			rep.DecisionAccuracy++
		}
		if !a.Handoff { // the confidence is what the threshold judges
			k := min(int(a.Confidence*10), 9)
			bins[k].n++
			bins[k].conf += a.Confidence
			bins[k].ok += b2f(o.IntentOK)
		}
		ls := per[it.Expect]
		if ls == nil {
			ls = &LabelStats{Label: it.Expect, Confused: map[string]int{}}
			per[it.Expect] = ls
		}
		ls.N++
		if o.IntentOK {
			ls.IntentOK++
		} else {
			got := a.Intent
			if a.Handoff && it.Expect != LabelHandoff {
				got += " (handoff)"
			}
			ls.Confused[got]++
		}
		if o.Answered {
			ls.Answered++
		}
		if o.DecisionOK {
			ls.Right++
		}
		rep.Outcomes = append(rep.Outcomes, o)
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	rep.Accuracy = div(rep.Accuracy, float64(rep.InScope))
	rep.AccuracyAtThreshold = div(float64(rep.AnsweredOK), float64(rep.Answered))
	rep.HandoffRate = div(float64(rep.N-rep.Answered), float64(rep.N))
	rep.DecisionAccuracy = div(rep.DecisionAccuracy, float64(rep.N))
	rep.Coverage = div(float64(rep.answerableOK), float64(rep.answerableN))
	total := 0
	for _, bn := range bins {
		total += bn.n
	}
	for k, bn := range bins {
		bin := Bin{Lo: float64(k) / 10, Hi: float64(k+1) / 10, N: bn.n}
		if bn.n > 0 {
			bin.MeanConfidence = bn.conf / float64(bn.n)
			bin.Accuracy = bn.ok / float64(bn.n)
			rep.ECE += float64(bn.n) / float64(total) * math.Abs(bin.MeanConfidence-bin.Accuracy)
		}
		rep.Reliability = append(rep.Reliability, bin)
	}
	for _, t := range []float64{0.5, 0.6, 0.7, 0.8, 0.9, 0.95} {
		p := SweepPoint{Threshold: t}
		var ok, right int
		for _, o := range rep.Outcomes {
			answered := !o.Handoff && o.Confidence >= t
			exp := b.kb.intent(o.Item.Expect)
			if answered {
				p.Answered++
				if o.IntentOK {
					ok++
				}
			}
			switch {
			case o.Item.Expect == LabelHandoff || o.Item.Expect == LabelNone:
				right += int(b2f(!answered))
			case exp != nil && exp.Handoff:
				right += int(b2f(o.IntentOK && o.Handoff))
			default:
				right += int(b2f(answered && o.IntentOK))
			}
		}
		p.AccuracyAtThreshold = div(float64(ok), float64(p.Answered))
		p.HandoffRate = div(float64(rep.N-p.Answered), float64(rep.N))
		p.DecisionAccuracy = div(float64(right), float64(rep.N))
		rep.Sweep = append(rep.Sweep, p)
	}
	for _, ls := range per {
		rep.PerLabel = append(rep.PerLabel, *ls)
	}
	slices.SortFunc(rep.PerLabel, func(x, y LabelStats) int { return strings.Compare(x.Label, y.Label) })
	return rep
}

func answerRequest(it Labelled) backends.AnswerRequest {
	return backends.AnswerRequest{Text: it.Text, Language: it.Lang}
}

// WriteText prints the report for a terminal. With listErrors set it also
// lists every utterance whose decision was wrong.
func (r *Report) WriteText(w io.Writer, listErrors bool) error {
	bw := bufio.NewWriter(w)
	pct := func(f float64) string { return fmt.Sprintf("%5.1f%%", 100*f) }
	fmt.Fprintf(bw, "utterances             %d (%d in scope, %d out of scope)\n", r.N, r.InScope, r.N-r.InScope)
	fmt.Fprintf(bw, "accuracy               %s  intent right, in-scope utterances, no threshold\n", pct(r.Accuracy))
	fmt.Fprintf(bw, "threshold              %.2f\n", r.Threshold)
	fmt.Fprintf(bw, "accuracy at threshold  %s  of the %d answered (confidence >= threshold, no hand-off)\n", pct(r.AccuracyAtThreshold), r.Answered)
	fmt.Fprintf(bw, "handoff rate           %s  handed to a human (asked, handoff intent, or below the threshold)\n", pct(r.HandoffRate))
	fmt.Fprintf(bw, "coverage               %s  answerable utterances answered right\n", pct(r.Coverage))
	fmt.Fprintf(bw, "decision accuracy      %s  right answer or right hand-off\n", pct(r.DecisionAccuracy))
	fmt.Fprintf(bw, "calibration error      %.3f  ECE over 10 confidence bins (bot's own hand-offs excluded)\n", r.ECE)
	fmt.Fprintf(bw, "\nreliability  %-9s %5s %9s %9s\n", "bin", "n", "mean conf", "accuracy")
	for _, b := range r.Reliability {
		if b.N == 0 {
			continue
		}
		fmt.Fprintf(bw, "             %.1f-%.1f   %5d %9.2f %9.2f\n", b.Lo, b.Hi, b.N, b.MeanConfidence, b.Accuracy)
	}
	fmt.Fprintf(bw, "\nthreshold  answered  accuracy  handoff rate  decision accuracy\n")
	for _, p := range r.Sweep {
		fmt.Fprintf(bw, "     %.2f  %8d    %s        %s             %s\n", p.Threshold, p.Answered,
			pct(p.AccuracyAtThreshold), pct(p.HandoffRate), pct(p.DecisionAccuracy))
	}
	fmt.Fprintf(bw, "\n%-24s %4s %7s %9s %7s  %s\n", "expected", "n", "intent", "answered", "right", "confused with")
	for _, ls := range r.PerLabel {
		var conf []string
		for _, k := range sortedKeys(ls.Confused) {
			conf = append(conf, fmt.Sprintf("%s×%d", k, ls.Confused[k]))
		}
		fmt.Fprintf(bw, "%-24s %4d %7s %9d %7s  %s\n", ls.Label, ls.N,
			pct(float64(ls.IntentOK)/float64(ls.N)), ls.Answered, pct(float64(ls.Right)/float64(ls.N)), strings.Join(conf, ", "))
	}
	if listErrors {
		fmt.Fprintf(bw, "\nwrong decisions at the threshold:\n")
		for _, o := range r.Outcomes {
			if o.DecisionOK {
				continue
			}
			what := "handed off"
			if o.Answered {
				what = "answered"
			}
			fmt.Fprintf(bw, "  line %d: %q expected %s, got %s %.2f (%s)\n", o.Item.Line, o.Item.Text, o.Item.Expect, o.Intent, o.Confidence, what)
		}
	}
	return bw.Flush()
}
