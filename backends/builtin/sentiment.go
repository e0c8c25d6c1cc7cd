package builtin

import (
	"strings"
	"unicode"
)

// Sentiment scores texts (a visitor's recent messages) from -1 (angry) to
// 1 (happy) with a small Chinese and English lexicon: each text counts
// its positive and negative cues (a negation just before a cue flips
// it, "不满意", "not happy"; an exclamation mark or a word in capitals
// strengthens a negative text), and the score is (pos-neg)/(pos+neg+1),
// averaged over the texts that have a cue. It is a routing hint, not an
// analysis: the router sends unhappy visitors to agents with spare
// attention. No cue at all scores 0.
func Sentiment(texts ...string) float64 {
	var sum float64
	n := 0
	for _, t := range texts {
		pos, neg := cues(t)
		if pos == 0 && neg == 0 {
			continue
		}
		sum += (pos - neg) / (pos + neg + 1)
		n++
	}
	if n == 0 {
		return 0
	}
	return max(-1, min(1, sum/float64(n)))
}

var (
	positiveCues = []string{
		"谢谢", "感谢", "满意", "很好", "不错", "太好了", "好的", "解决了", "辛苦了", "赞", "棒",
		"thank", "great", "good", "perfect", "awesome", "excellent", "helpful", "solved", "love", "nice",
	}
	negativeCues = []string{
		"投诉", "生气", "愤怒", "太差", "垃圾", "骗子", "骗人", "失望", "退款", "举报", "不满", "恶心", "离谱", "坑",
		"怎么还没", "到底", "差评", "烦", "糟糕", "无语",
		"angry", "terrible", "awful", "worst", "scam", "complain", "complaint", "refund", "useless",
		"ridiculous", "disappointed", "unacceptable", "furious", "hate", "broken", "still waiting",
	}
	negations = []string{"不", "没", "别", "not ", "no ", "never ", "n't "}
)

// cues counts the positive and negative cues of t.
func cues(t string) (pos, neg float64) {
	lower := strings.ToLower(t)
	count := func(words []string) (plain, negated float64) {
		for _, w := range words {
			for i := 0; ; {
				j := strings.Index(lower[i:], w)
				if j < 0 {
					break
				}
				at := i + j
				if negatedAt(lower, at) {
					negated++
				} else {
					plain++
				}
				i = at + len(w)
			}
		}
		return plain, negated
	}
	p, pn := count(positiveCues)
	n, nn := count(negativeCues)
	pos, neg = p+nn, n+pn
	if neg > pos {
		if strings.Contains(t, "!") || strings.Contains(t, "！") {
			neg++
		}
		if shouting(t) {
			neg++
		}
	}
	return pos, neg
}

// negatedAt reports whether a negation ends right before byte at.
func negatedAt(s string, at int) bool {
	for _, n := range negations {
		if at >= len(n) && s[at-len(n):at] == n {
			return true
		}
	}
	return false
}

// shouting reports a Latin word of four or more capitals.
func shouting(t string) bool {
	run := 0
	for _, r := range t {
		switch {
		case unicode.IsUpper(r) && r < unicode.MaxASCII:
			run++
			if run >= 4 {
				return true
			}
		default:
			run = 0
		}
	}
	return false
}
