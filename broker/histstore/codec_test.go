package histstore

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestCodecRoundTrip(t *testing.T) {
	cases := []Message{
		{Seq: 1},
		{Seq: 1<<64 - 1, SenderID: "agent:7", SenderRole: 255, ClientMsgID: "a-b-c", Text: "你好\x00", TimeMilli: -5},
		{Seq: 42, Text: strings.Repeat("x", MaxTextBytes), SenderID: strings.Repeat("s", MaxIDBytes)},
	}
	for i, m := range cases {
		b := appendMessage(nil, &m)
		if len(b) != encodedSize(&m) {
			t.Errorf("case %d: size %d, encodedSize %d", i, len(b), encodedSize(&m))
		}
		var got Message
		if err := decodeMessage(b, &got); err != nil || got != m {
			t.Errorf("case %d: got %+v, %v", i, got, err)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	long := func(f protowire.Number, n int) []byte {
		b := protowire.AppendTag(nil, fieldSeq, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
		b = protowire.AppendTag(b, f, protowire.BytesType)
		return protowire.AppendBytes(b, make([]byte, n))
	}
	cases := map[string][]byte{
		"empty":                 {},
		"no seq":                {0x2a, 0x01, 'x'},
		"bad tag":               {0xff},
		"truncated len":         {0x08, 0x01, 0x2a, 0x05, 'x'},
		"huge len":              {0x08, 0x01, 0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"bad varint":            {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"role too big":          {0x08, 0x01, 0x18, 0x80, 0x02},
		"field zero":            {0x00, 0x01},
		"long sender":           long(fieldSenderID, MaxIDBytes+1),
		"long cmid":             long(fieldClientMsgID, MaxIDBytes+1),
		"long text":             long(fieldText, MaxTextBytes+1),
		"bad group":             {0x08, 0x01, 0x7b},
		"unknown broken":        {0x08, 0x01, 0x3a, 0x09},
		"plain and sealed text": {0x08, 0x01, 0x2a, 0x01, 'x', 0x3a, 0x01, 'y'},
		"sealed, no keyring":    {0x08, 0x01, 0x3a, 0x01, 'y'},
		"long sealed":           long(fieldSealedText, MaxTextBytes+maxSealOverhead+1),
	}
	for name, b := range cases {
		var m Message
		if err := decodeMessage(b, &m); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
	var m0 Message
	if err := decodeMessage([]byte{0x08, 0x01, 0x3a, 0x01, 'y'}, &m0); !errors.Is(err, ErrEncrypted) {
		t.Errorf("sealed text without a keyring: %v", err)
	}
	// Unknown well-formed fields are skipped.
	b := appendMessage(nil, &Message{Seq: 3, Text: "t"})
	b = protowire.AppendTag(b, 99, protowire.BytesType)
	b = protowire.AppendString(b, "future")
	var m Message
	if err := decodeMessage(b, &m); err != nil || m.Seq != 3 || m.Text != "t" {
		t.Fatalf("unknown field: %+v %v", m, err)
	}
}

func TestTokens(t *testing.T) {
	seen := map[string]string{}
	for _, s := range []string{"", "a", "abc_123", "ABC", "a.b", "a b", "-", "~", "a*", ">", "中", "\r\n", strings.Repeat("z", 128), "a-b"} {
		st := subjectToken(s)
		if st == "" || strings.ContainsAny(st, ". \t\r\n*>") {
			t.Errorf("subjectToken(%q) = %q", s, st)
		}
		if prev, ok := seen[st]; ok {
			t.Errorf("subjectToken(%q) == subjectToken(%q)", s, prev)
		}
		seen[st] = s
		ht := headerToken(s)
		for _, c := range []byte(ht) {
			if c <= ' ' || c >= 0x7f || c == '/' {
				t.Errorf("headerToken(%q) = %q", s, ht)
			}
		}
	}
	if subjectToken("c_1") != "c_1" || headerToken("A-b.c:1") != "A-b.c:1" {
		t.Error("plain tokens are not kept")
	}
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add(appendMessage(nil, &Message{Seq: 1, SenderID: "v", SenderRole: 1, ClientMsgID: "c", Text: "hi", TimeMilli: 1}))
	f.Add([]byte{0x08, 0x01, 0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{0x08, 0x01, 0x18, 0x80, 0x02})
	f.Add([]byte{0x08, 0x01, 0x3a, 0x21, 0x01, 0xde, 0xad, 0xbe, 0xef}) // sealed text, truncated
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		if err := decodeMessage(b, &m); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if len(m.SenderID) > MaxIDBytes || len(m.ClientMsgID) > MaxIDBytes || len(m.Text) > MaxTextBytes || m.Seq == 0 {
			t.Fatalf("out of bounds: %+v", m)
		}
		// What decodes re-encodes to something that decodes the same.
		var again Message
		if err := decodeMessage(appendMessage(nil, &m), &again); err != nil || again != m {
			t.Fatalf("re-encode: %+v vs %+v (%v)", again, m, err)
		}
	})
}
