package histstore

import (
	"encoding/json"
	"fmt"
	"testing"
)

const testAckPrefix = `{"stream":"UNIGATE_HISTORY","seq":`

// jsonAck is what outcome made of a PubAck before parsePlainAck: the
// reference the fast path must agree with whenever it answers.
func jsonAck(data []byte) (seq uint64, dup, ok bool) {
	var a pubAck
	if err := json.Unmarshal(data, &a); err != nil || a.Error != nil || a.Stream != "UNIGATE_HISTORY" || a.Seq == 0 {
		return 0, false, false
	}
	return a.Seq, a.Duplicate, true
}

func TestParsePlainAck(t *testing.T) {
	good := []struct {
		in  string
		seq uint64
		dup bool
	}{
		{testAckPrefix + `1}`, 1, false},
		{testAckPrefix + `9999999999999999999}`, 9999999999999999999, false}, // 19 digits; 20 go to encoding/json
		{testAckPrefix + `42,"duplicate": true}`, 42, true},
		{testAckPrefix + `42,"duplicate":true}`, 42, true},
	}
	for _, c := range good {
		seq, dup, ok := parsePlainAck([]byte(c.in), testAckPrefix)
		if !ok || seq != c.seq || dup != c.dup {
			t.Errorf("%s: got %d %v %v, want %d %v", c.in, seq, dup, ok, c.seq, c.dup)
		}
	}
	// Left to encoding/json (or refused by it): never a wrong answer.
	other := []string{
		``, `{}`, testAckPrefix, testAckPrefix + `}`, testAckPrefix + `0}`, testAckPrefix + `01}`,
		testAckPrefix + `18446744073709551615}`, testAckPrefix + `18446744073709551616}`, testAckPrefix + `99999999999999999999}`,
		testAckPrefix + `1`, testAckPrefix + `1 }`, testAckPrefix + `-1}`, testAckPrefix + `1,"duplicate": false}`,
		`{"stream":"OTHER","seq":1}`, `{"stream":"UNIGATE_HISTORY","domain":"d","seq":1}`,
		testAckPrefix + `7,"batch":"abc","count":2}`,
		`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},"stream":"UNIGATE_HISTORY","seq":0}`,
	}
	for _, in := range other {
		if _, _, ok := parsePlainAck([]byte(in), testAckPrefix); ok {
			t.Errorf("%q: taken by the fast path", in)
		}
	}
	if p := fmt.Sprintf("{%q:%q,%q:", "stream", "UNIGATE_HISTORY", "seq"); p != testAckPrefix {
		t.Fatalf("the Store's prefix would be %q", p)
	}
}

// FuzzParsePlainAck: whatever parsePlainAck accepts, encoding/json reads
// the same way; it never panics.
func FuzzParsePlainAck(f *testing.F) {
	for _, s := range []string{
		testAckPrefix + `1}`, testAckPrefix + `42,"duplicate": true}`, testAckPrefix + `18446744073709551615}`,
		testAckPrefix + `18446744073709551616}`, testAckPrefix + `01}`, testAckPrefix + `}`, `{}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		seq, dup, ok := parsePlainAck(data, testAckPrefix)
		if !ok {
			return
		}
		js, jd, jok := jsonAck(data)
		if !jok || js != seq || jd != dup {
			t.Fatalf("%q: fast path %d %v, encoding/json %d %v %v", data, seq, dup, js, jd, jok)
		}
	})
}

// BenchmarkParseAck is the PubAck of every append: the fast path against
// encoding/json.
func BenchmarkParseAck(b *testing.B) {
	data := []byte(testAckPrefix + `123456789}`)
	b.Run("plain", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok := parsePlainAck(data, testAckPrefix); !ok {
				b.Fatal("not parsed")
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok := jsonAck(data); !ok {
				b.Fatal("not parsed")
			}
		}
	})
}
