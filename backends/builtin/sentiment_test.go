package builtin

import "testing"

func TestSentiment(t *testing.T) {
	tests := []struct {
		texts []string
		want  func(float64) bool
		desc  string
	}{
		{[]string{"你好，请问营业时间"}, func(s float64) bool { return s == 0 }, "no cue: 0"},
		{[]string{"谢谢，问题解决了"}, func(s float64) bool { return s > 0.5 }, "zh thanks: positive"},
		{[]string{"我要投诉！你们太差了，骗子"}, func(s float64) bool { return s < -0.7 }, "zh complaint: very negative"},
		{[]string{"我不满意"}, func(s float64) bool { return s < 0 }, "zh negated positive: negative"},
		{[]string{"This is TERRIBLE, I want a refund!"}, func(s float64) bool { return s < -0.7 }, "en shouting complaint"},
		{[]string{"not good at all"}, func(s float64) bool { return s < 0 }, "en negated positive"},
		{[]string{"thanks, great help"}, func(s float64) bool { return s > 0.5 }, "en thanks"},
		{[]string{"谢谢", "我要投诉"}, func(s float64) bool { return s > -0.5 && s < 0.5 }, "mixed texts average"},
		{nil, func(s float64) bool { return s == 0 }, "nothing: 0"},
	}
	for _, tt := range tests {
		if got := Sentiment(tt.texts...); !tt.want(got) || got < -1 || got > 1 {
			t.Errorf("%s: Sentiment(%q) = %.3f", tt.desc, tt.texts, got)
		}
	}
}
