package token

import (
	"encoding/json"
	"testing"
	"time"
)

// BenchmarkVerify is the cost of authenticating one hello.
func BenchmarkVerify(b *testing.B) {
	s := newTestSigner(b, testKey)
	tok := mustSign(b, s, agentClaims())
	b.ReportAllocs()
	b.SetBytes(int64(len(tok)))
	for b.Loop() {
		if _, err := s.Verify(tok, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyParallel checks that the scratch pool does not contend.
func BenchmarkVerifyParallel(b *testing.B) {
	s := newTestSigner(b, testKey)
	tok := mustSign(b, s, agentClaims())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Verify(tok, t0); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkVerifyBadSignature is the cost of refusing a forged token: the
// MAC is checked before anything is decoded.
func BenchmarkVerifyBadSignature(b *testing.B) {
	s := newTestSigner(b, testKey)
	tok := mustSign(b, s, agentClaims())
	forged := tok[:len(tok)-2] + "AA"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Verify(forged, t0); err == nil {
			b.Fatal("accepted")
		}
	}
}

func BenchmarkSign(b *testing.B) {
	s := newTestSigner(b, testKey)
	c := agentClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResume(b *testing.B) {
	s := newTestSigner(b, testKey)
	exp := t0.Add(10 * time.Minute)
	b.Run("sign", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.SignResume("sess-0123456789abcdef", exp)
		}
	})
	tok := s.SignResume("sess-0123456789abcdef", exp)
	b.Run("verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.VerifyResume(tok, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPayload compares the payload reader with encoding/json on the
// same bytes; it is the reason payload.go exists.
func BenchmarkPayload(b *testing.B) {
	payload := []byte(`{"v":1,"sub":"a1","role":"agent","ten":"acme","skills":["billing","returns"],"name":"Ann Agent","iat":1700000000,"exp":1700086400,"kid":"630dcd2966c43366"}`)
	b.Run("reader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := parsePayload(string(payload)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var p wirePayload
			if err := json.Unmarshal(payload, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
