package histstore

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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

// BenchmarkAtRest is the cost of encryption at rest (crypto/atrest,
// SM4-GCM under a data key of the KV keyring) on the history: a
// synchronous append of a 256-byte message, and a replay of a
// conversation's 100 messages, with the text sealed ("on") and in clear
// ("off"). The target: sealing adds a few µs per message, small against
// the JetStream round trip, and no allocation.
func BenchmarkAtRest(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		open := func(b *testing.B) *Store {
			a := startAtRest(b)
			o := Options{}
			if on {
				o.Sealer, o.SealText = a.ring, true
			}
			return a.open(b, o)
		}
		b.Run(name+"/append", func(b *testing.B) {
			s := open(b)
			ctx := testCtx(b)
			m := &Message{Tenant: "t", Conversation: "bench", SenderID: "v", SenderRole: 1, Text: text256, TimeMilli: 1}
			var expect uint64
			b.SetBytes(int64(len(text256)))
			b.ReportAllocs()
			defer reportCPU(b, processCPU())
			i := 0
			for b.Loop() {
				i++
				m.Seq = uint64(i)
				m.ClientMsgID = strconv.Itoa(i)
				seq, _, err := s.Append(ctx, m, expect)
				if err != nil {
					b.Fatal(err)
				}
				expect = seq
			}
		})
		b.Run(name+"/replay100", func(b *testing.B) {
			s := open(b)
			appendMany(b, s, 1, 100, text256)
			ctx := testCtx(b)
			b.SetBytes(100 * int64(len(text256)))
			b.ReportAllocs()
			defer reportCPU(b, processCPU())
			for b.Loop() {
				n := 0
				if err := s.Range(ctx, "t", "conv_0", 0, 0, func(m *Message) bool { n++; return len(m.Text) == len(text256) }); err != nil || n != 100 {
					b.Fatalf("n=%d err=%v", n, err)
				}
			}
		})
	}
}

// BenchmarkCodecAtRest isolates what encryption at rest adds to one
// message on the store's CPU path, without NATS: encoding its body for
// an append and decoding it in a replay (plain vs sealed text, 256 bytes).
func BenchmarkCodecAtRest(b *testing.B) {
	a := startAtRest(b)
	m := &Message{Tenant: "acme", Conversation: "c_0123456789abcdef", Seq: 42, SenderID: "visitor-1", SenderRole: 1,
		ClientMsgID: "c7f3a9e2-5b1d-4c8e-9f2a-6d4b8e1c3a5f", Text: text256, TimeMilli: 1700000000000}
	buf := make([]byte, 0, 1024)
	for _, sealed := range []bool{false, true} {
		name := "plain"
		if sealed {
			name = "sealed"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(text256)))
			b.ReportAllocs()
			out := Message{Tenant: m.Tenant, Conversation: m.Conversation}
			defer reportCPU(b, processCPU())
			for b.Loop() {
				var err error
				if sealed {
					buf, err = appendSealedMessage(buf[:0], m, a.ring)
				} else {
					buf = appendMessage(buf[:0], m)
				}
				if err != nil {
					b.Fatal(err)
				}
				if err := decode(buf, &out, a.ring, true); err != nil || len(out.Text) != len(text256) {
					b.Fatal(err)
				}
			}
		})
	}
}

// processCPU is the process's user+system CPU time. The benchmarks report
// it per operation ("cpu-ns/op") next to wall time: on a machine shared
// with other work, wall time mostly measures the waits for a core, CPU
// time the cost (here including the embedded NATS server's share).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time since start per operation.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
}
