package protocol

import (
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/unigate/unigate/protocol/pb"
)

// Benchmarks compare the hand-written Proto codec with the generated code
// (BenchmarkGenerated*) on the same messages; the Proto codec exists
// because the generated code allocates a message tree per envelope, and a
// gateway decodes and encodes every chat message.
//
//	go test -run '^$' -bench . -benchmem ./protocol

var benchNames = []string{"send", "deliver", "hello"}

func BenchmarkProtoDecode(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			data, _ := Proto.AppendEncode(nil, &s.env)
			var env Envelope
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := Proto.Decode(data, &env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkProtoEncode(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			buf, _ := Proto.AppendEncode(nil, &s.env)
			b.ReportAllocs()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				var err error
				if buf, err = Proto.AppendEncode(buf[:0], &s.env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkJSONDecode(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			data, _ := JSON.AppendEncode(nil, &s.env)
			var env Envelope
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := JSON.Decode(data, &env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkJSONEncode(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			buf, _ := JSON.AppendEncode(nil, &s.env)
			b.ReportAllocs()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				var err error
				if buf, err = JSON.AppendEncode(buf[:0], &s.env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGeneratedUnmarshal is proto.Unmarshal into the generated type,
// reusing the message (proto.Reset), for comparison with ProtoDecode.
func BenchmarkGeneratedUnmarshal(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			data, _ := deterministic.Marshal(s.pb)
			var m pb.Envelope
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				proto.Reset(&m)
				if err := proto.Unmarshal(data, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGeneratedMarshal is deterministic proto.MarshalAppend of the
// generated type into a reused buffer, for comparison with ProtoEncode.
func BenchmarkGeneratedMarshal(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			buf, _ := deterministic.Marshal(s.pb)
			b.ReportAllocs()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				var err error
				if buf, err = deterministic.MarshalAppend(buf[:0], s.pb); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGeneratedJSONUnmarshal is protojson.Unmarshal alone, to show
// what the JSON codec's conversion adds.
func BenchmarkGeneratedJSONUnmarshal(b *testing.B) {
	for _, name := range benchNames {
		b.Run(name, func(b *testing.B) {
			s := sampleEnv(b, name)
			data, _ := protojson.Marshal(s.pb)
			var m pb.Envelope
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				proto.Reset(&m)
				if err := jsonUnmarshal.Unmarshal(data, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
