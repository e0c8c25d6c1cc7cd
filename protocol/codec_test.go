package protocol

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/unigate/unigate/protocol/pb"
)

var deterministic = proto.MarshalOptions{Deterministic: true}

func TestSubprotocols(t *testing.T) {
	if got := Subprotocols(); !slices.Equal(got, []string{"unigate.v1.proto", "unigate.v1.json"}) {
		t.Fatalf("Subprotocols() = %q", got)
	}
	tests := []struct {
		name   string
		want   Codec
		binary bool
	}{
		{"unigate.v1.proto", Proto, true},
		{"unigate.v1.json", JSON, false},
		{"unigate.v1.PROTO", nil, false},
		{"unigate.v2.proto", nil, false},
		{"", nil, false},
	}
	for _, tt := range tests {
		c := ForSubprotocol(tt.name)
		if c != tt.want {
			t.Errorf("ForSubprotocol(%q) = %v, want %v", tt.name, c, tt.want)
			continue
		}
		if c != nil && (c.Subprotocol() != tt.name || c.Binary() != tt.binary) {
			t.Errorf("%q: Subprotocol() = %q, Binary() = %v", tt.name, c.Subprotocol(), c.Binary())
		}
	}
}

// TestRoundTrip encodes and decodes every sample with both codecs, into a
// reused envelope that held a different message before.
func TestRoundTrip(t *testing.T) {
	for _, c := range []Codec{Proto, JSON} {
		var env Envelope
		for _, s := range samples() {
			t.Run(c.Subprotocol()+"/"+s.name, func(t *testing.T) {
				data, err := c.AppendEncode(nil, &s.env)
				if err != nil {
					t.Fatalf("AppendEncode: %v", err)
				}
				if c == JSON && !jsonValid(data) {
					t.Fatalf("not JSON: %s", data)
				}
				if err := c.Decode(data, &env); err != nil {
					t.Fatalf("Decode(%q): %v", data, err)
				}
				assertSame(t, &env, &s.env)
				if !onlyActiveBody(&env) {
					t.Fatalf("Decode left other bodies set: %+v", env)
				}
				// Appending keeps the prefix.
				prefixed, err := c.AppendEncode([]byte("xyz"), &s.env)
				if err != nil || !bytes.Equal(prefixed[:3], []byte("xyz")) {
					t.Fatalf("AppendEncode with prefix: %q, %v", prefixed, err)
				}
				if c == Proto && !bytes.Equal(prefixed[3:], data) {
					t.Fatalf("AppendEncode with prefix: %x, want %x", prefixed[3:], data)
				}
			})
		}
	}
}

func jsonValid(b []byte) bool {
	var m pb.Envelope
	return protojson.Unmarshal(b, &m) == nil
}

// TestProtoDifferential checks the hand-written codec against the
// generated code: AppendEncode equals deterministic proto.Marshal, and
// Decode of proto.Marshal's output equals the Go envelope. JSON is checked
// against protojson the same way.
func TestProtoDifferential(t *testing.T) {
	for _, s := range samples() {
		t.Run(s.name, func(t *testing.T) {
			want, err := deterministic.Marshal(s.pb)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Proto.AppendEncode(nil, &s.env)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("AppendEncode = %x\n  proto.Marshal = %x", got, want)
			}
			var env Envelope
			if err := Proto.Decode(want, &env); err != nil {
				t.Fatal(err)
			}
			assertSame(t, &env, &s.env)

			js, err := protojson.Marshal(s.pb)
			if err != nil {
				t.Fatal(err)
			}
			if err := JSON.Decode(js, &env); err != nil {
				t.Fatalf("JSON.Decode(%s): %v", js, err)
			}
			assertSame(t, &env, &s.env)

			var m pb.Envelope
			ours, err := JSON.AppendEncode(nil, &s.env)
			if err != nil {
				t.Fatal(err)
			}
			if err := protojson.Unmarshal(ours, &m); err != nil {
				t.Fatalf("protojson.Unmarshal(%s): %v", ours, err)
			}
			if !proto.Equal(&m, s.pb) {
				t.Fatalf("JSON.AppendEncode = %s, protojson reads %v, want %v", ours, &m, s.pb)
			}
		})
	}
}

// wire builds protobuf bytes by hand for the cases the generated code
// would never produce.
type wire []byte

func (w wire) tag(num protowire.Number, typ protowire.Type) wire {
	return protowire.AppendTag(w, num, typ)
}
func (w wire) varint(num protowire.Number, v uint64) wire {
	return protowire.AppendVarint(w.tag(num, protowire.VarintType), v)
}
func (w wire) bytes(num protowire.Number, b []byte) wire {
	return protowire.AppendBytes(w.tag(num, protowire.BytesType), b)
}
func (w wire) str(num protowire.Number, s string) wire { return w.bytes(num, []byte(s)) }
func (w wire) raw(b ...byte) wire                      { return append(w, b...) }

func body(k Kind, fields wire) wire { return wire(nil).bytes(protowire.Number(k), fields) }

// TestProtoDecodeAccepts covers valid encodings that proto.Marshal never
// produces: each must decode like the generated code decodes it.
func TestProtoDecodeAccepts(t *testing.T) {
	manyCursors := wire(nil)
	for range MaxRepeated {
		manyCursors = manyCursors.bytes(3, wire(nil).str(1, "c"))
	}
	tests := []struct {
		name string
		data wire
		want Envelope
	}{
		{
			name: "body before id, fields reversed",
			data: body(KindSend, wire(nil).str(3, "hi").str(2, "m1").str(1, "c1")).varint(1, 7),
			want: Envelope{Kind: KindSend, ID: 7, Send: Send{ConversationID: "c1", ClientMsgID: "m1", Text: "hi"}},
		},
		{
			name: "unknown fields of every wire type skipped",
			data: wire(nil).
				varint(2, 5).
				raw(0x1d, 1, 2, 3, 4).             // field 3 fixed32
				raw(0x21, 1, 2, 3, 4, 5, 6, 7, 8). // field 4 fixed64
				str(5, "x").
				raw(0x33, 0x08, 0x01, 0x34). // field 6 group{1:1}
				bytes(14, wire(nil).str(3, "hi").varint(9, 1).str(10, "?")).
				varint(1000, 1),
			want: Envelope{Kind: KindSend, Send: Send{Text: "hi"}},
		},
		{
			name: "scalars: last one wins",
			data: body(KindAck, wire(nil).varint(3, 1).varint(3, 2).str(1, "a").str(1, "b")).varint(1, 1).varint(1, 2),
			want: Envelope{Kind: KindAck, ID: 2, Ack: Ack{ConversationID: "b", Seq: 2}},
		},
		{
			name: "same body twice merges",
			data: body(KindPresence, wire(nil).str(4, "a").varint(3, 2)).
				bytes(19, wire(nil).str(4, "b").varint(2, 1)),
			want: Envelope{Kind: KindPresence, Presence: Presence{Status: StatusOnline, Capacity: 2, Skills: []string{"a", "b"}}},
		},
		{
			name: "another body replaces the first",
			data: body(KindSend, wire(nil).str(3, "dropped")).bytes(16, wire(nil).varint(2, 4)),
			want: Envelope{Kind: KindDeliver, Deliver: Deliver{Seq: 4}},
		},
		{
			name: "body, other body, first body again starts afresh",
			data: body(KindSend, wire(nil).str(3, "dropped").str(1, "c1")).
				bytes(16, wire(nil).varint(2, 4)).
				bytes(14, wire(nil).str(2, "m2")),
			want: Envelope{Kind: KindSend, Send: Send{ClientMsgID: "m2"}},
		},
		{
			name: "known field with wrong wire type is skipped",
			data: body(KindDeliver, wire(nil).str(2, "not a varint").varint(3, 9).varint(2, 5)),
			want: Envelope{Kind: KindDeliver, Deliver: Deliver{Seq: 5}},
		},
		{
			name: "non-minimal varints",
			data: wire(nil).raw(0x08, 0x87, 0x80, 0x80, 0x00).bytes(15, wire(nil).raw(0x18, 0x81, 0x00)),
			want: Envelope{Kind: KindAck, ID: 7, Ack: Ack{Seq: 1}},
		},
		{
			name: "uint32 and enum truncate like proto",
			data: body(KindQueue, wire(nil).varint(2, 1<<32|3)).
				bytes(16, wire(nil).varint(4, 1<<32|2)),
			want: Envelope{Kind: KindDeliver, Deliver: Deliver{SenderRole: RoleAgent}},
		},
		{
			name: "bool from any non-zero varint",
			data: body(KindTyping, wire(nil).varint(2, 300)),
			want: Envelope{Kind: KindTyping, Typing: Typing{On: true}},
		},
		{
			name: "empty body",
			data: body(KindClose, nil),
			want: Envelope{Kind: KindClose},
		},
		{
			name: "exactly MaxRepeated cursors",
			data: body(KindHello, manyCursors),
			want: func() Envelope {
				e := Envelope{Kind: KindHello}
				for range MaxRepeated {
					e.Hello.Cursors = append(e.Hello.Cursors, Cursor{ConversationID: "c"})
				}
				return e
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env Envelope
			if err := Proto.Decode(tt.data, &env); err != nil {
				t.Fatalf("Decode(%x): %v", []byte(tt.data), err)
			}
			assertSame(t, &env, &tt.want)
			// The generated code must agree.
			var m pb.Envelope
			if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(tt.data, &m); err != nil {
				t.Fatalf("proto.Unmarshal: %v", err)
			}
			var fromGen Envelope
			if err := fromPB(&m, &fromGen); err != nil {
				t.Fatal(err)
			}
			assertSame(t, &fromGen, &tt.want)
		})
	}
}

type protoErrorCase struct {
	name string
	data wire
	code Code
}

// protoErrorCases are malformed or refused protobuf inputs and the code
// Proto.Decode must answer; they also seed FuzzProtoDecode.
func protoErrorCases() []protoErrorCase {
	tooManyCursors := wire(nil)
	for range MaxRepeated + 1 {
		tooManyCursors = tooManyCursors.bytes(3, nil)
	}
	tooManySkills := wire(nil)
	for range MaxRepeated + 1 {
		tooManySkills = tooManySkills.str(4, "s")
	}
	tooManyConvs := wire(nil)
	for range MaxRepeated + 1 {
		tooManyConvs = tooManyConvs.str(9, "c")
	}
	half := wire(nil)
	for range MaxRepeated/2 + 1 {
		half = half.bytes(3, nil)
	}
	return []protoErrorCase{
		{"empty", nil, CodeMissingField},
		{"id only", wire(nil).varint(1, 7), CodeMissingField},
		{"unknown body", wire(nil).varint(1, 7).str(40, "future"), CodeUnknownKind},
		{"truncated tag", wire{0x80}, CodeMalformed},
		{"truncated varint", wire{0x08, 0x80}, CodeMalformed},
		{"varint overflow", wire{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, CodeMalformed},
		{"field number 0", wire{0x00, 0x01}, CodeMalformed},
		{"field number above 2^29-1", wire(nil).raw(protowire.AppendVarint(nil, uint64(protowire.MaxValidNumber+1)<<3)...).raw(0), CodeMalformed},
		{"reserved wire type", wire{0x0e}, CodeMalformed},
		{"end group at top level", wire{0x0c}, CodeMalformed},
		{"unterminated group", wire{0x1b, 0x08, 0x01}, CodeMalformed},
		{"mismatched end group", wire{0x1b, 0x24}, CodeMalformed},
		{"length past end", wire{0x72, 0x05, 0x0a, 0x01}, CodeMalformed},
		{"length overflows int", wire{0x72, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, CodeMalformed},
		{"inner length past end", body(KindSend, wire{0x1a, 0x0a, 'h'}), CodeMalformed},
		{"inner truncated varint", body(KindAck, wire{0x18, 0xff}), CodeMalformed},
		{"inner unknown field truncated", body(KindSend, wire{0x4d, 1, 2}), CodeMalformed},
		{"body as varint", wire(nil).varint(14, 1), CodeMalformed},
		{"body as fixed64", wire(nil).raw(0x71, 1, 2, 3, 4, 5, 6, 7, 8), CodeMalformed},
		{"valid body then body of wrong wire type", body(KindSend, nil).varint(16, 1), CodeMalformed},
		{"invalid UTF-8 in text", body(KindSend, wire(nil).str(3, "a\xffb")), CodeInvalidUTF8},
		{"surrogate half in UTF-8", body(KindSend, wire(nil).str(3, "\xed\xa0\x80")), CodeInvalidUTF8},
		{"invalid UTF-8 in cursor", body(KindHello, wire(nil).bytes(3, wire(nil).str(1, "\xc0"))), CodeInvalidUTF8},
		{"invalid UTF-8 in skills", body(KindPresence, wire(nil).str(4, "\x80")), CodeInvalidUTF8},
		{"cursor truncated inside", body(KindHello, wire(nil).bytes(3, wire{0x10})), CodeMalformed},
		{"too many cursors", body(KindHello, tooManyCursors), CodeTooMany},
		{"too many skills", body(KindPresence, tooManySkills), CodeTooMany},
		{"too many conversations", body(KindWelcome, tooManyConvs), CodeTooMany},
		{"too many cursors across merged bodies", body(KindHello, half).bytes(10, half), CodeTooMany},
		{"role 256", body(KindDeliver, wire(nil).varint(4, 256)), CodeMalformed},
		{"negative role", body(KindTyping, wire(nil).varint(4, uint64(1<<64-1))), CodeMalformed},
		{"state out of range", body(KindConversation, wire(nil).varint(2, 1000)), CodeMalformed},
		{"status out of range", body(KindPresence, wire(nil).varint(2, 1<<31)), CodeMalformed},
		{"error code above 16 bits", body(KindError, wire(nil).varint(1, 70000)), CodeMalformed},
		{"secure data past end", body(KindSecure, wire{0x0a, 0x05, 0x17}), CodeMalformed},
		{"secure as varint", wire(nil).varint(24, 1), CodeMalformed},
	}
}

func TestProtoDecodeErrors(t *testing.T) {
	for _, tt := range protoErrorCases() {
		t.Run(tt.name, func(t *testing.T) {
			env := Envelope{Kind: KindSend, Send: Send{Text: "stale"}}
			err := Proto.Decode(tt.data, &env)
			checkCode(t, err, tt.code)
		})
	}
}

func checkCode(t *testing.T, err error, want Code) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want a *Error with code %d", err, err, want)
	}
	if e.Code != want {
		t.Fatalf("code %d (%v), want %d (%v)", e.Code, e, want, want)
	}
	if e.Temporary {
		t.Fatalf("decode error %v is Temporary", e)
	}
	if e.Message == "" {
		t.Fatalf("decode error without message")
	}
	if !errors.Is(err, &Error{Code: want}) {
		t.Fatalf("errors.Is(%v, code %d) = false", err, want)
	}
}

func TestJSONDecode(t *testing.T) {
	tests := []struct {
		name string
		data string
		want Envelope
	}{
		{
			name: "documented example",
			data: `{"id":"7","send":{"conversationId":"c1","clientMsgId":"m1","text":"hi"}}`,
			want: Envelope{Kind: KindSend, ID: 7, Send: Send{ConversationID: "c1", ClientMsgID: "m1", Text: "hi"}},
		},
		{
			name: "numbers for 64-bit ints, proto names, enum numbers",
			data: `{"id":7,"deliver":{"conversation_id":"c1","seq":43,"senderRole":2,"timestampMilli":-5}}`,
			want: Envelope{Kind: KindDeliver, ID: 7, Deliver: Deliver{ConversationID: "c1", Seq: 43, SenderRole: RoleAgent, TimestampMilli: -5}},
		},
		{
			name: "enum names",
			data: `{"presence":{"status":"STATUS_AWAY","skills":["a","b"]}}`,
			want: Envelope{Kind: KindPresence, Presence: Presence{Status: StatusAway, Skills: []string{"a", "b"}}},
		},
		{
			name: "unknown fields and enum names ignored",
			data: `{"id":"1","trace":{"x":[1,2]},"typing":{"on":true,"mood":"happy","senderRole":"ROLE_ALIEN"}}`,
			want: Envelope{Kind: KindTyping, ID: 1, Typing: Typing{On: true}},
		},
		{
			name: "empty body",
			data: `{"close":{}}`,
			want: Envelope{Kind: KindClose},
		},
		{
			name: "hello with cursors",
			data: `{"hello":{"token":"t","cursors":[{"conversationId":"c1","lastSeq":"42"},{}]}}`,
			want: Envelope{Kind: KindHello, Hello: Hello{Token: "t", Cursors: []Cursor{{ConversationID: "c1", LastSeq: 42}, {}}}},
		},
		{
			name: "escaped unicode",
			data: `{"send":{"text":"\u60a8\u597d \ud83d\ude4f"}}`,
			want: Envelope{Kind: KindSend, Send: Send{Text: "您好 🙏"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env Envelope
			if err := JSON.Decode([]byte(tt.data), &env); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			assertSame(t, &env, &tt.want)
		})
	}
}

type jsonErrorCase struct {
	name string
	data string
	code Code
}

// jsonErrorCases are bad JSON inputs and the code JSON.Decode must answer;
// they also seed FuzzJSONDecode.
func jsonErrorCases() []jsonErrorCase {
	many := `{"presence":{"skills":[` + strings.Repeat(`"s",`, MaxRepeated) + `"s"]}}`
	return []jsonErrorCase{
		{"empty", ``, CodeMalformed},
		{"garbage", `not json`, CodeMalformed},
		{"truncated", `{"send":{"text":"hi"`, CodeMalformed},
		{"array", `[]`, CodeMalformed},
		{"empty object", `{}`, CodeMissingField},
		{"id only", `{"id":"7"}`, CodeMissingField},
		{"unknown body", `{"snooze":{}}`, CodeMissingField},
		{"null body", `{"send":null}`, CodeMissingField},
		{"two bodies", `{"send":{},"ack":{}}`, CodeMalformed},
		{"negative id", `{"id":-1,"send":{}}`, CodeMalformed},
		{"wrong type", `{"send":{"text":5}}`, CodeMalformed},
		{"invalid UTF-8", "{\"send\":{\"text\":\"\xff\"}}", CodeInvalidUTF8},
		{"too many skills", many, CodeTooMany},
		{"role out of range", `{"deliver":{"senderRole":300}}`, CodeMalformed},
		{"negative enum", `{"deliver":{"senderRole":-1}}`, CodeMalformed},
		{"error code above 16 bits", `{"error":{"code":70000}}`, CodeMalformed},
	}
}

func TestJSONDecodeErrors(t *testing.T) {
	for _, tt := range jsonErrorCases() {
		t.Run(tt.name, func(t *testing.T) {
			var env Envelope
			checkCode(t, JSON.Decode([]byte(tt.data), &env), tt.code)
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	manyCursors := make([]Cursor, MaxRepeated+1)
	tests := []struct {
		name string
		env  Envelope
		code Code
	}{
		{"no kind", Envelope{ID: 1}, CodeUnknownKind},
		{"unknown kind", Envelope{Kind: 99}, CodeUnknownKind},
		{"invalid UTF-8", Envelope{Kind: KindSend, Send: Send{Text: "\xff"}}, CodeInvalidUTF8},
		{"invalid UTF-8 in cursor", Envelope{Kind: KindHello, Hello: Hello{Cursors: []Cursor{{ConversationID: "\xff"}}}}, CodeInvalidUTF8},
		{"invalid UTF-8 in repeated", Envelope{Kind: KindWelcome, Welcome: Welcome{Conversations: []string{"ok", "\xff"}}}, CodeInvalidUTF8},
		{"too many cursors", Envelope{Kind: KindHello, Hello: Hello{Cursors: manyCursors}}, CodeTooMany},
		{"too many skills", Envelope{Kind: KindPresence, Presence: Presence{Skills: make([]string, MaxRepeated+1)}}, CodeTooMany},
	}
	for _, c := range []Codec{Proto, JSON} {
		for _, tt := range tests {
			t.Run(c.Subprotocol()+"/"+tt.name, func(t *testing.T) {
				dst := []byte("keep")
				out, err := c.AppendEncode(dst, &tt.env)
				if string(out) != "keep" {
					t.Fatalf("dst changed to %q", out)
				}
				var e *Error
				if !errors.As(err, &e) || e.Code != tt.code {
					t.Fatalf("err = %v, want code %d", err, tt.code)
				}
				// The generated code refuses the same envelopes where
				// proto3 demands it (UTF-8).
				if tt.code == CodeInvalidUTF8 {
					if _, err := deterministic.Marshal(toPB(&tt.env)); err == nil {
						t.Fatalf("proto.Marshal accepted invalid UTF-8")
					}
				}
			})
		}
	}
}

// TestProtoDecodeAliases pins down the documented ownership contract:
// strings alias the input, and nothing else is allocated.
func TestProtoDecodeAliases(t *testing.T) {
	s := sampleEnv(t, "send")
	data, err := Proto.AppendEncode(nil, &s.env)
	if err != nil {
		t.Fatal(err)
	}
	var env Envelope
	if err := Proto.Decode(data, &env); err != nil {
		t.Fatal(err)
	}
	p := uintptr(unsafe.Pointer(unsafe.StringData(env.Send.Text)))
	start := uintptr(unsafe.Pointer(&data[0]))
	if p < start || p >= start+uintptr(len(data)) {
		t.Fatalf("Send.Text does not alias the input")
	}
}

func TestReset(t *testing.T) {
	env := Envelope{Kind: KindHello, ID: 3,
		Hello:    Hello{Token: "t", Cursors: make([]Cursor, 2, 8)},
		Welcome:  Welcome{Conversations: []string{"a"}},
		Presence: Presence{Skills: make([]string, 1, 4)},
		Send:     Send{Text: "x"},
		Error:    Error{Code: 1},
	}
	env.Hello.Cursors[1].ConversationID = "old"
	cursors := env.Hello.Cursors
	env.Reset()
	if env.Kind != 0 || env.ID != 0 || env.Hello.Token != "" || env.Send.Text != "" || env.Error.Code != 0 {
		t.Fatalf("Reset left fields: %+v", env)
	}
	if len(env.Hello.Cursors) != 0 || cap(env.Hello.Cursors) != 8 || cap(env.Presence.Skills) != 4 || cap(env.Welcome.Conversations) != 1 {
		t.Fatalf("Reset lost capacity: %d %d %d", cap(env.Hello.Cursors), cap(env.Presence.Skills), cap(env.Welcome.Conversations))
	}
	if cursors[1].ConversationID != "" {
		t.Fatalf("Reset kept a stale string in the backing array")
	}
}

func TestKindStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{KindSend.String(), "send"},
		{KindError.String(), "error"},
		{KindNone.String(), "none"},
		{Kind(9).String(), "kind(9)"},
		{KindSecure.String(), "secure"},
		{Kind(25).String(), "kind(25)"},
		{RoleBot.String(), "bot"},
		{Role(9).String(), "role(9)"},
		{StateQueued.String(), "queued"},
		{State(6).String(), "state(6)"},
		{StatusBusy.String(), "busy"},
		{Status(5).String(), "status(5)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	for k := KindHello; k <= KindSecure; k++ {
		if !k.Valid() || strings.HasPrefix(k.String(), "kind(") {
			t.Errorf("Kind %d: Valid %v, String %q", k, k.Valid(), k)
		}
		// Every Kind is a field of the oneof, under the same name.
		fd := (&pb.Envelope{}).ProtoReflect().Descriptor().Fields().ByNumber(protowire.Number(k))
		if fd == nil || string(fd.Name()) != k.String() || fd.ContainingOneof() == nil {
			t.Errorf("Kind %d (%s) is not the oneof field %v", k, k, fd)
		}
	}
	if Kind(9).Valid() || Kind(25).Valid() || Role(5).Valid() || !RoleSystem.Valid() || State(6).Valid() || Status(5).Valid() {
		t.Error("Valid accepts a value out of range")
	}
}

// TestEnumsMatchSchema checks the Go enum constants against the generated
// enum values.
func TestEnumsMatchSchema(t *testing.T) {
	tests := []struct {
		got  uint8
		want int32
	}{
		{uint8(RoleUnspecified), int32(pb.Role_ROLE_UNSPECIFIED)},
		{uint8(RoleVisitor), int32(pb.Role_ROLE_VISITOR)},
		{uint8(RoleAgent), int32(pb.Role_ROLE_AGENT)},
		{uint8(RoleBot), int32(pb.Role_ROLE_BOT)},
		{uint8(RoleSystem), int32(pb.Role_ROLE_SYSTEM)},
		{uint8(StateUnspecified), int32(pb.State_STATE_UNSPECIFIED)},
		{uint8(StateBot), int32(pb.State_STATE_BOT)},
		{uint8(StateQueued), int32(pb.State_STATE_QUEUED)},
		{uint8(StateAssigned), int32(pb.State_STATE_ASSIGNED)},
		{uint8(StateTransferred), int32(pb.State_STATE_TRANSFERRED)},
		{uint8(StateClosed), int32(pb.State_STATE_CLOSED)},
		{uint8(StatusUnspecified), int32(pb.Status_STATUS_UNSPECIFIED)},
		{uint8(StatusOnline), int32(pb.Status_STATUS_ONLINE)},
		{uint8(StatusAway), int32(pb.Status_STATUS_AWAY)},
		{uint8(StatusBusy), int32(pb.Status_STATUS_BUSY)},
		{uint8(StatusOffline), int32(pb.Status_STATUS_OFFLINE)},
	}
	for i, tt := range tests {
		if int32(tt.got) != tt.want {
			t.Errorf("%d: Go %d, schema %d", i, tt.got, tt.want)
		}
	}
	if n := len(pb.Role_name) + len(pb.State_name) + len(pb.Status_name); n != len(tests) {
		t.Errorf("schema has %d enum values, test knows %d", n, len(tests))
	}
}

// TestZeroAllocs: the Proto codec's hot path allocates nothing once the
// envelope and the output buffer are warm.
func TestZeroAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	for _, name := range []string{"send", "deliver", "ack", "typing", "read", "hello"} {
		t.Run(name, func(t *testing.T) {
			s := sampleEnv(t, name)
			data, err := Proto.AppendEncode(nil, &s.env)
			if err != nil {
				t.Fatal(err)
			}
			var env Envelope
			buf := make([]byte, 0, 1024)
			// Warm up: repeated fields grow once.
			if err := Proto.Decode(data, &env); err != nil {
				t.Fatal(err)
			}
			allocs := testing.AllocsPerRun(100, func() {
				if err := Proto.Decode(data, &env); err != nil {
					t.Fatal(err)
				}
				buf, err = Proto.AppendEncode(buf[:0], &env)
				if err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per decode+encode, want 0", allocs)
			}
			if !bytes.Equal(buf, data) {
				t.Fatalf("re-encoding differs")
			}
		})
	}
}
