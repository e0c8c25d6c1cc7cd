package broker

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/protocol"
)

// secureFast runs the fast path of codec c on b.
func secureFast(c protocol.Codec, b []byte) ([]byte, bool) {
	if c.Binary() {
		return secureRecordProto(b)
	}
	return secureRecordJSON(nil, b)
}

// checkSecureFast fails when the fast path accepts b but the codec does
// not, or they disagree on the data.
func checkSecureFast(t *testing.T, c protocol.Codec, b []byte) (ok bool) {
	t.Helper()
	data, ok := secureFast(c, b)
	if !ok {
		return false
	}
	var env protocol.Envelope
	if err := c.Decode(b, &env); err != nil {
		t.Fatalf("%s: fast path accepted %q, the codec refuses it: %v", c.Subprotocol(), b, err)
	}
	if env.Kind != protocol.KindSecure || env.ID != 0 {
		t.Fatalf("%s: fast path accepted %q, the codec decodes %s id %d", c.Subprotocol(), b, env.Kind, env.ID)
	}
	if !bytes.Equal(data, env.Secure.Data) {
		t.Fatalf("%s: %q: fast path data %x, codec %x", c.Subprotocol(), b, data, env.Secure.Data)
	}
	return true
}

var secureCodecs = []protocol.Codec{protocol.ForSubprotocol(pbProto), protocol.ForSubprotocol(jsonProto)}

// TestSecureRecordFastPath: what the codecs encode (and the browser's
// JSON.stringify shape) takes the fast path with the same data; the
// shapes it leaves to the codec do not.
func TestSecureRecordFastPath(t *testing.T) {
	for _, c := range secureCodecs {
		for _, n := range []int{1, 2, 3, 17, 100, 127, 128, 300, 16 << 10, 70 << 10} {
			data := make([]byte, n)
			_, _ = rand.Read(data)
			for range 5 { // protojson varies its whitespace
				b, err := c.AppendEncode(nil, &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: data}})
				if err != nil {
					t.Fatal(err)
				}
				if !checkSecureFast(t, c, b) {
					t.Fatalf("%s: the codec's own encoding of %d bytes missed the fast path: %q", c.Subprotocol(), n, b)
				}
			}
		}
	}
	json := protocol.ForSubprotocol(jsonProto)
	for _, b := range []string{
		`{"secure":{"data":"AAEC"}}`, // web/src/core.js: JSON.stringify({secure: {data: btoa(...)}})
		" {\t\"secure\" :\n{ \"data\" : \"AAEC\" }\r} ",
		`{"secure":{"data":""}}`,
	} {
		if !checkSecureFast(t, json, []byte(b)) {
			t.Errorf("%q missed the fast path", b)
		}
	}
	for _, b := range []string{
		`{"id":"1","secure":{"data":"AAEC"}}`,
		`{"secure":{"data":"AAEC"},"id":"1"}`,
		`{"secure":{"data":"AAEC","x":1}}`,
		`{"secure":{"data":"AAE"}}`,  // unpadded: the codec accepts it
		`{"secure":{"data":"_-8="}}`, // URL-safe: the codec accepts it
		`{"secure":{"data":"AA\u0041C"}}`,
		"{\"secure\":{\"data\":\"AA\nEC\"}}", // a raw newline: base64 would skip it, JSON refuses it
		`{"secure":{"data":"AAEC"}}x`,
		`{"secure":{"data":"AAEC"}`,
		`{"secure":{"data":null}}`,
		`{"Secure":{"data":"AAEC"}}`,
		`{"secure":{"data":"AAEC"}}}`,
	} {
		if _, ok := secureRecordJSON(nil, []byte(b)); ok {
			t.Errorf("%q took the fast path", b)
		}
		checkSecureFast(t, json, []byte(b))
	}
	pb := protocol.ForSubprotocol(pbProto)
	good := encode(t, pb, protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: []byte{1, 2, 3}}})
	for name, b := range map[string][]byte{
		"with id":           encode(t, pb, protocol.Envelope{Kind: protocol.KindSecure, ID: 7, Secure: protocol.Secure{Data: []byte{1, 2, 3}}}),
		"empty secure":      encode(t, pb, protocol.Envelope{Kind: protocol.KindSecure}),
		"trailing byte":     append(bytes.Clone(good), 0),
		"truncated":         good[:len(good)-1],
		"long outer len":    {0xc2, 0x01, 0x06, 0x0a, 0x03, 1, 2, 3},
		"long inner len":    {0xc2, 0x01, 0x05, 0x0a, 0x04, 1, 2, 3},
		"other field":       {0xc2, 0x01, 0x05, 0x12, 0x03, 1, 2, 3},
		"two data fields":   {0xc2, 0x01, 0x07, 0x0a, 0x01, 1, 0x0a, 0x01, 2},
		"hello, not secure": encode(t, pb, protocol.Envelope{Kind: protocol.KindHello, ID: 1}),
	} {
		if _, ok := secureRecordProto(b); ok {
			t.Errorf("%s: took the fast path", name)
		}
		checkSecureFast(t, pb, b)
	}
	// Non-minimal varints are protobuf: the codec accepts them, so may the fast path.
	checkSecureFast(t, pb, []byte{0xc2, 0x01, 0x85, 0x00, 0x0a, 0x03, 1, 2, 3})
}

// TestSecureRecordJSONKeepsDst: a miss leaves dst's contents and length.
func TestSecureRecordJSONKeepsDst(t *testing.T) {
	dst := []byte("keep")
	out, ok := secureRecordJSON(dst, []byte(`{"secure":{"data":"A==="}}`))
	if ok || string(out) != "keep" {
		t.Fatalf("got %q %v", out, ok)
	}
	out, ok = secureRecordJSON(dst, []byte(`{"secure":{"data":"AAEC"}}`))
	if !ok || !bytes.Equal(out, []byte("keep\x00\x01\x02")) {
		t.Fatalf("got %q %v", out, ok)
	}
}

// FuzzSecureRecord: whatever the fast paths accept, the codecs accept as
// secure{data} with the same data (testdata/fuzz/FuzzSecureRecord holds
// the malformed seeds).
func FuzzSecureRecord(f *testing.F) {
	for _, c := range secureCodecs {
		for _, n := range []int{0, 1, 16, 200} {
			b, err := c.AppendEncode(nil, &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: bytes.Repeat([]byte{0xa5}, n)}})
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte(`{"secure":{"data":"` + strings.Repeat("QUJD", 40) + `"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, c := range secureCodecs {
			checkSecureFast(t, c, b)
		}
	})
}

// BenchmarkSecureOuter prices reading the record out of an inbound
// secure envelope of a ~130-byte record: "codec" is the codec's full
// Decode (what the gateway did for every record before the fast path),
// "fast" the fast path (securewire.go).
func BenchmarkSecureOuter(b *testing.B) {
	data := bytes.Repeat([]byte{0xa5}, 130)
	for _, c := range secureCodecs {
		msg, err := c.AppendEncode(nil, &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: data}})
		if err != nil {
			b.Fatal(err)
		}
		if !c.Binary() { // the browser's shape
			msg = []byte(`{"secure":{"data":"` + base64.StdEncoding.EncodeToString(data) + `"}}`)
		}
		b.Run(c.Subprotocol()+"/codec", func(b *testing.B) {
			var env protocol.Envelope
			b.ReportAllocs()
			for range b.N {
				if err := c.Decode(msg, &env); err != nil || len(env.Secure.Data) != len(data) {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.Subprotocol()+"/fast", func(b *testing.B) {
			scratch := make([]byte, 0, 512)
			b.ReportAllocs()
			for range b.N {
				var rec []byte
				var ok bool
				if c.Binary() {
					rec, ok = secureRecordProto(msg)
				} else {
					rec, ok = secureRecordJSON(scratch[:0], msg)
				}
				if !ok || len(rec) != len(data) {
					b.Fatal("missed the fast path")
				}
			}
		})
	}
}

// TestSecureRecordCodecFallback: records in secure envelopes the fast
// path leaves to the codec (an id, URL-safe or unpadded base64, escapes,
// proto fields it does not expect) still open and chat, interleaved with
// records that take the fast path.
func TestSecureRecordCodecFallback(t *testing.T) {
	keys := newSecureKeys(t)
	e := startEnv(t, Options{AllowAnonymous: true, Secure: &SecureOptions{Server: keys.server()}})
	t.Run("json", func(t *testing.T) {
		r := e.dialSecure(jsonProto, keys.client(crypto.GM))
		r.t = t
		odd := func(rec []byte) []byte {
			b64 := base64.RawURLEncoding.EncodeToString(rec)
			return []byte(`{"id":"77", "secure": {"data": "` + strings.ReplaceAll(b64, "A", `\u0041`) + `"}}`)
		}
		if _, ok := secureRecordJSON(nil, odd(bytes.Repeat([]byte{0xfb}, 40))); ok {
			t.Fatal("the odd shape takes the fast path")
		}
		r.write(odd(r.seal(protocol.Envelope{Kind: protocol.KindHello})))
		if w := r.next(); w.Kind != protocol.KindWelcome {
			t.Fatalf("hello: %s %+v", w.Kind, w.Error)
		}
		if c := r.request(protocol.Envelope{Kind: protocol.KindOpen, Open: protocol.Open{Text: "fast"}}); c.Kind != protocol.KindConversation {
			t.Fatalf("open: %s %+v", c.Kind, c.Error)
		}
	})
	t.Run("proto", func(t *testing.T) {
		r := e.dialSecure(pbProto, keys.client(crypto.IntlPQ))
		r.t = t
		rec := r.seal(protocol.Envelope{Kind: protocol.KindHello})
		odd := encode(t, r.codec, protocol.Envelope{Kind: protocol.KindSecure, ID: 5, Secure: protocol.Secure{Data: rec}})
		if _, ok := secureRecordProto(odd); ok {
			t.Fatal("an envelope with an id takes the fast path")
		}
		r.write(odd)
		if w := r.next(); w.Kind != protocol.KindWelcome {
			t.Fatalf("hello: %s %+v", w.Kind, w.Error)
		}
		if c := r.request(protocol.Envelope{Kind: protocol.KindOpen, Open: protocol.Open{Text: "fast"}}); c.Kind != protocol.KindConversation {
			t.Fatalf("open: %s %+v", c.Kind, c.Error)
		}
	})
}
