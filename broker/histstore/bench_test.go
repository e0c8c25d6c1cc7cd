package histstore

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

var text256 = strings.Repeat("x", 256)

// BenchmarkAppend is the synchronous path: one conversation, each append
// waits for its ack (the file store's write plus an in-process round trip).
func BenchmarkAppend(b *testing.B) {
	s, _ := openStore(b, b.TempDir(), Options{})
	ctx := testCtx(b)
	m := &Message{Tenant: "t", Conversation: "bench", SenderID: "v", SenderRole: 1, Text: text256}
	var expect uint64
	b.SetBytes(int64(len(text256)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		m.Seq = uint64(i + 1)
		m.ClientMsgID = strconv.Itoa(i)
		seq, _, err := s.Append(ctx, m, expect)
		if err != nil {
			b.Fatal(err)
		}
		expect = seq
	}
}

// BenchmarkAppendAsync pipelines across 256 conversations, one append in
// flight per conversation (the expected-sequence check allows no more).
func BenchmarkAppendAsync(b *testing.B) {
	s, _ := openStore(b, b.TempDir(), Options{})
	const convs = 256
	per := b.N/convs + 1
	b.SetBytes(int64(len(text256)))
	b.ReportAllocs()
	b.ResetTimer()
	appendMany(b, s, convs, per, text256)
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(convs*per), "ns/append")
}

// BenchmarkRange100 replays the last 100 messages of one conversation of
// 1,000 among 100,000 messages in the stream.
func BenchmarkRange100(b *testing.B) {
	s, _ := openStore(b, b.TempDir(), Options{})
	appendMany(b, s, 100, 1000, text256)
	ctx := testCtx(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		conv := fmt.Sprintf("conv_%d", i%100)
		n := 0
		if err := s.Range(ctx, "t", conv, 900, 0, func(*Message) bool { n++; return true }); err != nil || n != 100 {
			b.Fatalf("n=%d err=%v", n, err)
		}
	}
}
