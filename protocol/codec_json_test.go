package protocol

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/unigate/unigate/protocol/pb"
)

// The hand-written JSON codec is held to protojsonCodec, the protojson path
// it replaced (codec_protojson_test.go).
var refJSON Codec = protojsonCodec{}

// TestJSONTables checks the codec's field tables against the schema as
// the generated code describes it: every field, in number order, with its
// JSON name, schema name and type; and the enum names.
func TestJSONTables(t *testing.T) {
	envDesc := (&pb.Envelope{}).ProtoReflect().Descriptor()
	check := func(what string, fields []jfield, md protoreflect.MessageDescriptor) {
		t.Helper()
		fds := md.Fields()
		if len(fields) != fds.Len() {
			t.Errorf("%s: %d fields in the table, %d in the schema", what, len(fields), fds.Len())
			return
		}
		for i, f := range fields {
			fd := fds.Get(i)
			if i > 0 && fd.Number() <= fds.Get(i-1).Number() {
				t.Errorf("%s: schema fields not in number order", what)
			}
			if f.json != fd.JSONName() || f.proto != string(fd.TextName()) || f.key != `"`+fd.JSONName()+`":` {
				t.Errorf("%s field %d: names %q %q %q, schema %q %q", what, fd.Number(), f.json, f.proto, f.key, fd.JSONName(), fd.TextName())
			}
			if want := jkindOf(fd); f.kind != want {
				t.Errorf("%s.%s: kind %d, schema says %d", what, fd.Name(), f.kind, want)
			}
		}
	}
	for k := KindHello; k <= KindSecure; k++ {
		fd := envDesc.Fields().ByNumber(protoreflect.FieldNumber(k))
		check(k.String(), jsonBodies[k], fd.Message())
	}
	check("cursor", jsonCursor, (&pb.Cursor{}).ProtoReflect().Descriptor())
	if envDesc.Fields().Len() != 1+int(KindSecure-KindHello+1) {
		t.Errorf("Envelope has %d fields; the codec knows id and %d bodies", envDesc.Fields().Len(), KindSecure-KindHello+1)
	}
	for _, e := range []struct {
		names []string
		desc  protoreflect.EnumDescriptor
	}{
		{roleNames[:], pb.Role(0).Descriptor()},
		{stateNames[:], pb.State(0).Descriptor()},
		{statusNames[:], pb.Status(0).Descriptor()},
	} {
		if e.desc.Values().Len() != len(e.names) {
			t.Errorf("%s: %d values, the codec knows %d", e.desc.Name(), e.desc.Values().Len(), len(e.names))
		}
		for i, n := range e.names {
			if v := e.desc.Values().ByNumber(protoreflect.EnumNumber(i)); v == nil || string(v.Name()) != n {
				t.Errorf("%s %d: codec %q, schema %v", e.desc.Name(), i, n, v)
			}
		}
	}
}

func jkindOf(fd protoreflect.FieldDescriptor) jkind {
	if fd.IsList() {
		if fd.Kind() == protoreflect.MessageKind {
			return jCursors
		}
		return jStrings
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		return jString
	case protoreflect.Uint64Kind:
		return jUint64
	case protoreflect.Int64Kind:
		return jInt64
	case protoreflect.Uint32Kind:
		if fd.FullName() == "unigate.v1.Error.code" {
			return jCode
		}
		return jUint32
	case protoreflect.BoolKind:
		return jBool
	case protoreflect.BytesKind:
		return jBytes
	case protoreflect.EnumKind:
		switch fd.Enum().Name() {
		case "Role":
			return jRole
		case "State":
			return jState
		case "Status":
			return jStatus
		}
	}
	return 255
}

// jsonDiffCases are inputs where protojson has rules of its own: numbers in
// unusual forms, escapes, nulls, duplicates, unknown values, limits. The
// expected result is whatever the reference codec does; they also seed
// FuzzJSONDecode.
func jsonDiffCases() []string {
	deep := func(n int, open, close string) string {
		return strings.Repeat(open, n) + strings.Repeat(close, n)
	}
	manyCursors := `{"hello":{"cursors":[` + strings.Repeat(`{},`, MaxRepeated) + `{}]}}`
	manyConvs := `{"welcome":{"role":300,"conversations":[` + strings.Repeat(`"c",`, MaxRepeated) + `"c"]}}`
	exactly := `{"presence":{"skills":[` + strings.Repeat(`"s",`, MaxRepeated-1) + `"s"]}}`
	return []string{
		// Integers.
		`{"id":7,"send":{}}`,
		`{"id":"7","send":{}}`,
		`{"id":1e2,"send":{}}`,
		`{"id":"1e2","send":{}}`,
		`{"id":1E+2,"send":{}}`,
		`{"id":1.0,"send":{}}`,
		`{"id":1.5,"send":{}}`,
		`{"id":1.50e1,"send":{}}`,
		`{"id":0.5e1,"send":{}}`,
		`{"id":0.05e2,"send":{}}`,
		`{"id":1e,"send":{}}`,
		`{"id":1e}`,
		`{"id":1E+,"send":{}}`,
		`{"id":1e-,"send":{}}`,
		`{"id":"1e","send":{}}`,
		`{"id":-0,"send":{}}`,
		`{"id":"-0","send":{}}`,
		`{"id":-0.0e-5,"send":{}}`,
		`{"id":0e99999999999,"send":{}}`,
		`{"id":1e99999999999,"send":{}}`,
		`{"id":100e-2,"send":{}}`,
		`{"id":120e-1,"send":{}}`,
		`{"id":1200e-2,"send":{}}`,
		`{"id":-1,"send":{}}`,
		`{"id":01,"send":{}}`,
		`{"id":"01","send":{}}`,
		`{"id":+1,"send":{}}`,
		`{"id":.5,"send":{}}`,
		`{"id":1.,"send":{}}`,
		`{"id":" 7","send":{}}`,
		`{"id":"7 ","send":{}}`,
		`{"id":"\u0037","send":{}}`,
		`{"id":"0x10","send":{}}`,
		`{"id":"","send":{}}`,
		`{"id":true,"send":{}}`,
		`{"id":{},"send":{}}`,
		`{"id":18446744073709551615,"send":{}}`,
		`{"id":18446744073709551616,"send":{}}`,
		`{"id":1.8446744073709551615e19,"send":{}}`,
		`{"id":1e19,"send":{}}`,
		`{"id":1e20,"send":{}}`,
		`{"id":0.00000000000000000001e20,"send":{}}`,
		`{"id":0.000000000000000000001e21,"send":{}}`,
		`{"id":100000000000000000000000000e-7,"send":{}}`,
		`{"id":7,"send":{}}x`,
		`{"id":7x,"send":{}}`,
		`{"ack":{"timestampMilli":-9223372036854775808}}`,
		`{"ack":{"timestampMilli":"-9223372036854775809"}}`,
		`{"ack":{"timestampMilli":-5e0,"seq":"5e1"}}`,
		`{"ack":{"timestamp_milli":-10000000000000000000000e-3}}`,
		`{"ack":{"timestampMilli":"-1e-0"}}`,
		`{"queue":{"position":4294967295,"etaSeconds":4294967296}}`,
		`{"queue":{"position":"4294967295"}}`,
		`{"queue":{"position":-1}}`,
		`{"open":{"priority":2.0}}`,
		`{"error":{"code":65535}}`,
		`{"error":{"code":65536}}`,
		`{"error":{"code":"70000"}}`,
		`{"error":{"code":70000},"x":}`,
		// Enums.
		`{"deliver":{"senderRole":"ROLE_BOT"}}`,
		`{"deliver":{"senderRole":"ROLE_ALIEN"}}`,
		`{"deliver":{"senderRole":"2"}}`,
		`{"deliver":{"senderRole":2e0}}`,
		`{"deliver":{"senderRole":255}}`,
		`{"deliver":{"senderRole":256}}`,
		`{"deliver":{"senderRole":2147483648}}`,
		`{"deliver":{"senderRole":-2147483648}}`,
		`{"deliver":{"senderRole":true}}`,
		`{"deliver":{"sender_role":"ROLE_\u0041GENT"}}`,
		`{"conversation":{"state":"STATE_CLOSED"}}`,
		`{"presence":{"status":"status_online"}}`,
		`{"presence":{"status":4,"skills":[]}}`,
		`{"welcome":{"role":"ROLE_AGENT","resumed":true}}`,
		// Strings and escapes.
		`{"send":{"text":"\"\\\/\b\f\n\r\t"}}`,
		`{"send":{"text":"\u00e9\u4F60\ud83d\ude4f\uFFFD\u0000"}}`,
		`{"send":{"text":"\ud800"}}`,
		`{"send":{"text":"\udc00\ud800"}}`,
		`{"send":{"text":"\ud800\u0041"}}`,
		`{"send":{"text":"\ud800\ud800"}}`,
		`{"send":{"text":"\ud800x"}}`,
		`{"send":{"text":"\ud800\"}}`,
		`{"send":{"text":"\u12"}}`,
		`{"send":{"text":"\u12G4"}}`,
		`{"send":{"text":"\x41"}}`,
		`{"send":{"text":"\'"}}`,
		`{"send":{"text":"tab	raw"}}`,
		"{\"send\":{\"text\":\"nl\nraw\"}}",
		"{\"send\":{\"text\":\"del\x7f ok\"}}",
		`{"send":{"text":"<>&` + "\u2028\u2029" + `"}}`,
		`{"send":{"text":"unterminated}}`,
		`{"send":{"text":"\`,
		`{"send":{"text":5}}`,
		`{"send":{"text":["a"]}}`,
		`{"s\u0065nd":{"t\u0065xt":"hi"}}`,
		`{"send":{"conversation_id":"c","conversationId":"d"}}`,
		`{"send":{"conversation_id":"c","client_msg_id":"m"}}`,
		`{"send":{"text":"a","text":"b"}}`,
		`{"send":{"Text":"a"}}`,
		`{"send":{"clientMsgID":"a"}}`,
		// Bytes.
		`{"secure":{"data":"AQID"}}`,
		`{"secure":{"data":"AQI="}}`,
		`{"secure":{"data":"AQI"}}`,
		`{"secure":{"data":"AQ=="}}`,
		`{"secure":{"data":"AQ"}}`,
		`{"secure":{"data":"A"}}`,
		`{"secure":{"data":"-_-_"}}`,
		`{"secure":{"data":"+/+/"}}`,
		`{"secure":{"data":"-_8"}}`,
		`{"secure":{"data":"-_8="}}`,
		`{"secure":{"data":"+/8"}}`,
		`{"secure":{"data":"AQ\nID"}}`,
		`{"secure":{"data":"AQ\r\nID=="}}`,
		`{"secure":{"data":"AQ ID"}}`,
		`{"secure":{"data":"AR=="}}`,
		`{"secure":{"data":""}}`,
		`{"secure":{"data":"===="}}`,
		`{"secure":{"data":5}}`,
		// null.
		`{"id":null,"send":{"text":null,"conversationId":"c"}}`,
		`{"send":null}`,
		`{"send":null,"ack":{}}`,
		`{"send":{},"ack":null}`,
		`{"send":null,"send":{}}`,
		`{"id":null,"id":1,"send":{}}`,
		`{"hello":{"cursors":null}}`,
		`{"hello":{"cursors":[null]}}`,
		`{"hello":{"cursors":[{"lastSeq":null,"conversationId":"c"}]}}`,
		`{"presence":{"skills":["a",null]}}`,
		`{"presence":{"skills":null,"status":null}}`,
		`{"typing":{"on":null}}`,
		`{"send":nul}`,
		`{"send":nullx}`,
		`{"send":{"text":nul}}`,
		`null`,
		// Literals and delimiters.
		`{"typing":{"on":true}}`,
		`{"typing":{"on":false}}`,
		`{"typing":{"on":truex}}`,
		`{"typing":{"on":"true"}}`,
		`{"typing":{"on":1}}`,
		`{"typing":{"x":true1}}`,
		`{"typing":{"x":[true,false,null,1,"s",{},[]]}}`,
		`{"typing":{"x":[true"x"]}}`,
		`{"typing":{"x":1e}}`,
		`{"typing":{"x":1E+}}`,
		`{"typing":{"x":-}}`,
		// Unknown fields.
		`{"trace":{"a":[1,{"b":null}],"c":"\u00e9"},"send":{"x":{"y":[[]]}}}`,
		`{"trace":{"a":1,"a":2},"send":{}}`,
		`{"trace":{"a" 1},"send":{}}`,
		`{"trace":{"a":1,},"send":{}}`,
		`{"trace":[1,],"send":{}}`,
		`{"trace":[1 2],"send":{}}`,
		`{"trace":{1:2},"send":{}}`,
		`{"trace":{"a":1]},"send":{}}`,
		`{"trace":[1},"send":{}}`,
		`{"trace":"\ud800","send":{}}`,
		`{"trace":"a":1,"send":{}}`,
		`{"[foo.bar]":1,"send":{}}`,
		`{"snooze":{}}`,
		`{"@type":"x","send":{}}`,
		`{"trace":` + deep(9999, "[", "]") + `,"send":{}}`,
		`{"trace":` + deep(10000, "[", "]") + `,"send":{}}`,
		`{"send":{"x":` + deep(9998, "[", "]") + `}}`,
		`{"send":{"x":` + deep(9999, "[", "]") + `}}`,
		`{"hello":{"cursors":[{"x":` + deep(9997, "[", "]") + `}]}}`,
		`{"hello":{"cursors":[{"x":` + deep(9998, "[", "]") + `}]}}`,
		`{"trace":` + strings.Repeat(`{"a":`, 9999) + `1` + strings.Repeat(`}`, 9999) + `,"send":{}}`,
		`{"trace":` + strings.Repeat(`{"a":`, 10000) + `1` + strings.Repeat(`}`, 10000) + `,"send":{}}`,
		`{"trace":` + deep(200, "[", "]") + `x,"send":{}}`,
		// Structure and whitespace.
		" \t\r\n{ \"id\" : \"7\" , \"send\" : { \"text\" : \"hi\" } } \n",
		`{"send":{}} {}`,
		`{"send":{}}}`,
		`{"send":{},}`,
		`{,"send":{}}`,
		`{"send" {}}`,
		`{"send":{}`,
		`{"send":[]}`,
		`{"send":"x"}`,
		`{'send':{}}`,
		`{send:{}}`,
		"\ufeff{\"send\":{}}",
		"{\"send\":{}}\x00",
		`[{"send":{}}]`,
		`{"send":{"text":"a"},"ack":{"seq":1}}`,
		`{"send":{},"send":{}}`,
		// Invalid UTF-8 anywhere wins over everything.
		"{\"trace\":\"\xff\",\"send\":{}}",
		"{\"trace\":[\"a\",{\"\xc0\x80\":1}],\"send\":{}}",
		"{\"send\":{}}\xff",
		"{\"send\":{\"te\xffxt\":1}}",
		"{\"send\":{\"text\":\"ok\"}\xed\xa0\x80}",
		"{\"send\":{\"text\":\"\\n\xf4\x90\x80\x80\"}}",
		"{\"send\":{\"text\":\"\xe4\xbd\"}}",
		"{\"send\":{\"text\":\"\xe4\xbd\xa0\"}}",
		"\xff",
		strings.Replace(manyConvs, `[`, "[\"\xff\",", 1),
		// Limits: a syntax error after them wins.
		manyCursors,
		manyCursors[:len(manyCursors)-2],
		manyConvs,
		exactly,
		`{"welcome":{"role":256,"conversations":["a"]}}`,
		`{"welcome":{"role":256,"conversations":["a"]},"x":tru}`,
		`{"presence":{"status":-1}}`,
	}
}

// jsonDiff decodes data with JSON and with the reference, and fails the
// test unless both refuse it with the same code or both accept it as the
// same envelope. The one documented exception: a field name in brackets
// (protojson's extension syntax) that names a type registered in the
// binary is refused by protojson and skipped as unknown by JSON.
func jsonDiff(t *testing.T, data []byte) {
	t.Helper()
	var got, want Envelope
	err := JSON.Decode(data, &got)
	refErr := refJSON.Decode(data, &want)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e.Code < 1000 || e.Code > 1999 || e.Temporary || e.Message == "" {
			t.Fatalf("Decode(%q): error %v (%T) is not a 1xxx *Error", data, err, err)
		}
	}
	switch {
	case err == nil && refErr == nil:
		assertSame(t, &got, &want)
		if !onlyActiveBody(&got) {
			t.Fatalf("Decode(%q) left other bodies set", data)
		}
	case err != nil && refErr != nil:
		if codeOf(err) != codeOf(refErr) {
			t.Fatalf("Decode(%q):\n JSON      %v\n protojson %v", data, err, refErr)
		}
	case err == nil && bracketName(refErr):
		// The documented exception.
	default:
		t.Fatalf("Decode(%q):\n JSON      %v (%s %+v)\n protojson %v (%s %+v)", data, err, got.Kind, activeBody(&got), refErr, want.Kind, activeBody(&want))
	}
}

func codeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// bracketName reports whether protojson refused a [name] field because
// the name resolved in its registry.
func bracketName(err error) bool {
	return err != nil && (strings.Contains(err.Error(), `unable to resolve "[`) || strings.Contains(err.Error(), "cannot be extended by"))
}

func TestJSONDecodeMatchesProtojson(t *testing.T) {
	for i, c := range jsonDiffCases() {
		name := c
		if len(name) > 60 {
			name = name[:60]
		}
		t.Run(name, func(t *testing.T) {
			jsonDiff(t, []byte(c))
			_ = i
		})
	}
	for _, c := range jsonErrorCases() {
		t.Run("error/"+c.name, func(t *testing.T) { jsonDiff(t, []byte(c.data)) })
	}
	for _, s := range samples() {
		t.Run("sample/"+s.name, func(t *testing.T) {
			js, err := protojson.Marshal(s.pb)
			if err != nil {
				t.Fatal(err)
			}
			jsonDiff(t, js)
			indented, err := protojson.MarshalOptions{Multiline: true, Indent: "\t", UseProtoNames: true, UseEnumNumbers: true}.Marshal(s.pb)
			if err != nil {
				t.Fatal(err)
			}
			jsonDiff(t, indented)
		})
	}
}

// TestJSONBracketName pins down the documented exception: protojson
// resolves "[name]" in the global registry and fails when it finds a type
// there; the codec skips it as an unknown field, as protojson does for a
// name it does not find.
func TestJSONBracketName(t *testing.T) {
	data := []byte(`{"[unigate.v1.Send]":1,"id":"3","send":{}}`)
	var env Envelope
	if err := JSON.Decode(data, &env); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	assertSame(t, &env, &Envelope{Kind: KindSend, ID: 3})
	if err := refJSON.Decode(data, &env); !bracketName(err) {
		t.Fatalf("protojson no longer refuses a registered [name] (%v): drop the exception", err)
	}
	jsonDiff(t, []byte(`{"[unigate.v1.NoSuchType]":1,"id":"3","send":{}}`))
}

// jsonEncodeCases are envelopes whose JSON form needs care: escapes,
// characters JSON leaves alone, values without enum names, extremes.
func jsonEncodeCases() []Envelope {
	var ctl strings.Builder
	for c := range 0x20 {
		ctl.WriteByte(byte(c))
	}
	return []Envelope{
		{Kind: KindSend, ID: 1<<64 - 1, Send: Send{ConversationID: `q"uo\te/`, ClientMsgID: ctl.String(), Text: "<script>&amp;\u2028\u2029\x7f\ufffd\U0001F64F"}},
		{Kind: KindDeliver, Deliver: Deliver{SenderRole: 255, Seq: 1<<64 - 1, TimestampMilli: -1 << 63}},
		{Kind: KindAck, Ack: Ack{TimestampMilli: 1<<63 - 1}},
		{Kind: KindConversation, Conversation: Conversation{State: 6, LastSeq: 1}},
		{Kind: KindPresence, Presence: Presence{Status: 5, Skills: []string{"", "\x00"}, Capacity: 1<<32 - 1}},
		{Kind: KindWelcome, Welcome: Welcome{Role: RoleSystem, Conversations: []string{""}}},
		{Kind: KindHello, Hello: Hello{Cursors: []Cursor{{}, {LastSeq: 1<<64 - 1}}}},
		{Kind: KindError, Error: Error{Code: 65535, Temporary: true}},
		{Kind: KindSecure, Secure: Secure{Data: []byte{0xfb, 0xff}}},
		{Kind: KindSecure, Secure: Secure{Data: []byte{0xfb, 0xff, 0xfe}}},
		{Kind: KindSecure, Secure: Secure{Data: []byte{0}}},
		{Kind: KindQueue},
	}
}

// TestJSONEncodeMatchesProtojson: protojson reads what JSON writes as the
// same message, JSON reads what protojson writes, and both refuse the same
// envelopes with the same code.
func TestJSONEncodeMatchesProtojson(t *testing.T) {
	envs := jsonEncodeCases()
	for _, s := range samples() {
		envs = append(envs, s.env)
	}
	for _, env := range envs {
		jsonEncodeDiff(t, &env)
	}
	for _, env := range []Envelope{
		{},
		{Kind: 99},
		{Kind: KindSend, Send: Send{ConversationID: "ok", Text: "a\xffb"}},
		{Kind: KindHello, Hello: Hello{Token: "\xc0", Cursors: make([]Cursor, MaxRepeated+1)}},
		{Kind: KindHello, Hello: Hello{Cursors: []Cursor{{ConversationID: "\xed\xa0\x80"}}}},
		{Kind: KindPresence, Presence: Presence{Skills: make([]string, MaxRepeated+1)}},
		{Kind: KindWelcome, Welcome: Welcome{Conversations: append(make([]string, MaxRepeated), "\xff")}},
	} {
		jsonEncodeDiff(t, &env)
	}
}

// jsonEncodeDiff checks one envelope both ways (see
// TestJSONEncodeMatchesProtojson).
func jsonEncodeDiff(t *testing.T, env *Envelope) {
	t.Helper()
	prefix := []byte("pre")
	out, err := JSON.AppendEncode(prefix, env)
	refOut, refErr := refJSON.AppendEncode(nil, env)
	if err != nil || refErr != nil {
		if codeOf(err) == 0 || codeOf(err) != codeOf(refErr) {
			t.Fatalf("AppendEncode(%s %+v):\n JSON      %v\n protojson %v", env.Kind, activeBody(env), err, refErr)
		}
		if string(out) != "pre" || unsafe.SliceData(out) != unsafe.SliceData(prefix) {
			t.Fatalf("AppendEncode failed but did not return dst unchanged: %q", out)
		}
		return
	}
	if !bytes.HasPrefix(out, prefix) {
		t.Fatalf("AppendEncode lost the prefix: %q", out)
	}
	out = out[len(prefix):]
	if !json.Valid(out) {
		t.Fatalf("AppendEncode wrote invalid JSON: %q", out)
	}
	var m pb.Envelope
	if err := (protojson.UnmarshalOptions{}).Unmarshal(out, &m); err != nil {
		t.Fatalf("protojson.Unmarshal(%s): %v", out, err)
	}
	if want := toPB(env); !proto.Equal(&m, want) {
		t.Fatalf("protojson reads %s as %v, want %v", out, &m, want)
	}
	var back Envelope
	if err := JSON.Decode(refOut, &back); err != nil {
		t.Fatalf("Decode(protojson's %s): %v", refOut, err)
	}
	assertSame(t, &back, env)
	if err := JSON.Decode(out, &back); err != nil {
		t.Fatalf("Decode(%s): %v", out, err)
	}
	assertSame(t, &back, env)
	// Equal bytes after compacting protojson's randomized whitespace.
	var compact bytes.Buffer
	if err := json.Compact(&compact, refOut); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, compact.Bytes()) {
		t.Fatalf("AppendEncode = %s\n protojson  = %s", out, compact.Bytes())
	}
}

// TestJSONEncodeNode has JavaScript's JSON.parse (Node, what the web
// client runs) read the codec's output: it must see the same values as
// encoding/json does. Skipped where node is not installed.
func TestJSONEncodeNode(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	var in bytes.Buffer
	var lines [][]byte
	envs := jsonEncodeCases()
	for _, s := range samples() {
		envs = append(envs, s.env)
	}
	for _, env := range envs {
		out, err := JSON.AppendEncode(nil, &env)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, out)
		in.Write(out)
		in.WriteByte('\n')
	}
	// JSON.stringify escapes lone surrogates and nothing else outside
	// ASCII; encoding/json compares decoded values, not bytes.
	const script = `const rl = require("readline").createInterface({input: process.stdin});
rl.on("line", (l) => process.stdout.write(JSON.stringify(JSON.parse(l)) + "\n"));`
	cmd := exec.Command(node, "-e", script)
	cmd.Stdin = &in
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	sc.Buffer(nil, 1<<20)
	for i := 0; sc.Scan(); i++ {
		if i >= len(lines) {
			t.Fatalf("node printed more lines than it got")
		}
		var fromNode, fromGo any
		if err := json.Unmarshal(sc.Bytes(), &fromNode); err != nil {
			t.Fatalf("node's output %q: %v", sc.Bytes(), err)
		}
		if err := json.Unmarshal(lines[i], &fromGo); err != nil {
			t.Fatalf("%q: %v", lines[i], err)
		}
		a, _ := json.Marshal(fromNode)
		b, _ := json.Marshal(fromGo)
		if !bytes.Equal(a, b) {
			t.Fatalf("JSON.parse reads %s as %s", lines[i], sc.Bytes())
		}
		if !utf8.Valid(sc.Bytes()) {
			t.Fatalf("node output not UTF-8")
		}
	}
}

// TestJSONDecodeAliases pins down the ownership contract: strings without
// escapes alias the input, strings with escapes do not.
func TestJSONDecodeAliases(t *testing.T) {
	data := []byte(`{"send":{"conversationId":"c1","text":"a\nb"}}`)
	var env Envelope
	if err := JSON.Decode(data, &env); err != nil {
		t.Fatal(err)
	}
	if !aliases(env.Send.ConversationID, data) {
		t.Error("conversationId does not alias the input")
	}
	if aliases(env.Send.Text, data) || env.Send.Text != "a\nb" {
		t.Errorf("text with an escape: %q, aliases %v", env.Send.Text, aliases(env.Send.Text, data))
	}
}

// TestJSONZeroAllocs: chat traffic without escapes decodes and encodes
// without allocating once the envelope and the buffer are warm.
func TestJSONZeroAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	for _, name := range []string{"send", "deliver", "ack", "typing", "read", "hello", "presence"} {
		t.Run(name, func(t *testing.T) {
			s := sampleEnv(t, name)
			data, err := JSON.AppendEncode(nil, &s.env)
			if err != nil {
				t.Fatal(err)
			}
			var env Envelope
			buf := make([]byte, 0, 1024)
			if err := JSON.Decode(data, &env); err != nil {
				t.Fatal(err)
			}
			allocs := testing.AllocsPerRun(100, func() {
				if err := JSON.Decode(data, &env); err != nil {
					t.Fatal(err)
				}
				buf, err = JSON.AppendEncode(buf[:0], &env)
				if err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per decode+encode, want 0", allocs)
			}
			if !bytes.Equal(buf, data) {
				t.Fatalf("re-encoding differs: %s, want %s", buf, data)
			}
		})
	}
}

// aliases reports whether s points into data.
func aliases(s string, data []byte) bool {
	if s == "" || len(data) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
	start := uintptr(unsafe.Pointer(&data[0]))
	return p >= start && p < start+uintptr(len(data))
}

// TestJSONScanStringPositions puts each kind of byte a string scanner must
// tell apart at every offset of the 8-byte words plainLen reads at once,
// for the decoder and for the encoder.
func TestJSONScanStringPositions(t *testing.T) {
	specials := []string{`"`, `\n`, `\"`, `\\`, `\u00e9`, `\ud83d\ude4f`, "\x01", "\x1f", " ", "\x7f", "é", "€", "🙏", "!", "#", "[", "]", "\\", "\xff", "\xe2\x82"}
	for _, sp := range specials {
		for p := range 18 {
			for _, tail := range []string{"", "abcdefghijklmnop", `"`, "\x00xyz"} {
				text := strings.Repeat("a", p) + sp + tail
				jsonDiff(t, []byte(`{"send":{"text":"`+text+`"}}`))
				jsonDiff(t, []byte(`{"trace":"`+text+`","send":{"text":"`+text+`"}}`))
				jsonDiff(t, []byte(`{"send":{"text":"`+text))
				jsonEncodeDiff(t, &Envelope{Kind: KindSend, Send: Send{Text: text, ClientMsgID: sp}})
			}
		}
	}
}
