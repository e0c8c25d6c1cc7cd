package faq

import (
	"context"
	"testing"

	"github.com/unigate/unigate/backends"
)

// BenchmarkClassify is the bot's hot path. English text allocates nothing
// (pooled scratch, arena-built feature keys, map lookups by []byte); for
// Chinese, gse's segmentation allocates (runes, its DAG maps, the words).
func BenchmarkClassify(b *testing.B) {
	bot := testBot(b)
	for _, bc := range []struct{ name, text string }{
		{"en", "Hi, I was charged twice for my order, how do I get a refund?"},
		{"zh", "你好，我的订单重复付款了，请问怎么申请退款？"},
		{"handoff", "我要退款，转人工"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.text)))
			for b.Loop() {
				bot.Classify(bc.text)
			}
		})
	}
}

// BenchmarkAnswer adds the reply choice and the agent summary.
func BenchmarkAnswer(b *testing.B) {
	bot := testBot(b)
	req := backends.AnswerRequest{Text: "你好，我的订单重复付款了，请问怎么申请退款？", Language: "zh-CN",
		History: []backends.HistoryMessage{{From: "visitor", Text: "在吗"}}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bot.Answer(context.Background(), req)
		}
	})
}

// BenchmarkTrain is New on the sample knowledge base (dictionary already
// loaded): features, IDF, leave-one-out, calibration.
func BenchmarkTrain(b *testing.B) {
	testBot(b)
	kb := SampleKB()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(kb); err != nil {
			b.Fatal(err)
		}
	}
}
