package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/unigate/unigate/protocol/pb"
)

// FuzzProtoDecode is a differential fuzzer: the generated code is the
// reference. For any input
//   - Proto.Decode never panics and fails only with a 1xxx *Error;
//   - whatever Proto accepts, proto.Unmarshal accepts too;
//   - whatever both accept means the same thing: re-encoding with Proto is
//     byte-identical to deterministic proto.Marshal, and decodes again to
//     the same envelope;
//   - whatever proto.Unmarshal accepts and Proto refuses is one of the
//     documented exceptions (see protoCodec), checked by refusals.
//
// Seeds: testdata/fuzz/FuzzProtoDecode, plus the samples.
func FuzzProtoDecode(f *testing.F) {
	for _, s := range samples() {
		data, err := Proto.AppendEncode(nil, &s.env)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var env Envelope
		err := Proto.Decode(data, &env)
		var m pb.Envelope
		refErr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, &m)

		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code < 1000 || e.Code > 1999 || e.Temporary {
				t.Fatalf("Decode error %v (%T) is not a 1xxx *Error", err, err)
			}
			if refErr == nil {
				if allowed := refusals(data); !allowed[e.Code] {
					t.Fatalf("Decode refused with %v what proto.Unmarshal accepts (%v); allowed: %v", err, &m, allowed)
				}
			}
			return
		}
		if refErr != nil {
			t.Fatalf("Decode accepted what proto.Unmarshal refuses (%v): %s %+v", refErr, env.Kind, activeBody(&env))
		}

		want, err := deterministic.Marshal(&m)
		if err != nil {
			t.Fatalf("proto.Marshal: %v", err)
		}
		got, err := Proto.AppendEncode(nil, &env)
		if err != nil {
			t.Fatalf("AppendEncode after Decode: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("re-encoding differs\n Proto %x\n proto %x", got, want)
		}
		var ref Envelope
		if err := fromPB(&m, &ref); err != nil {
			t.Fatalf("fromPB: %v", err)
		}
		assertSame(t, &env, &ref)
		var again Envelope
		if err := Proto.Decode(got, &again); err != nil {
			t.Fatalf("Decode(AppendEncode): %v", err)
		}
		assertSame(t, &again, &env)
		if !onlyActiveBody(&env) {
			t.Fatalf("Decode left other bodies set")
		}
	})
}

// refusals returns the codes with which Proto.Decode may refuse data that
// proto.Unmarshal accepts, by walking data independently of the codec:
// a missing body, a body of the wrong wire type, a value the Go types cannot
// hold, or too many elements in a repeated field (merged bodies add up).
func refusals(data []byte) map[Code]bool {
	r := map[Code]bool{}
	var kind Kind
	var repeated int
	unknownBody := false
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return r
		}
		data = data[n:]
		isBody := num >= protowire.Number(KindHello) && num <= protowire.Number(KindSecure)
		if isBody && typ != protowire.BytesType {
			r[CodeMalformed] = true
		}
		if !isBody || typ != protowire.BytesType {
			if num > protowire.Number(KindSecure) && typ == protowire.BytesType {
				unknownBody = true
			}
			n = protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return r
			}
			data = data[n:]
			continue
		}
		b, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return r
		}
		data = data[n:]
		if k := Kind(num); k != kind {
			kind, repeated = k, 0
		}
		// Walk the body's fields: every occurrence counts, even one a later
		// occurrence overrides, because Proto refuses at the first bad one.
		md := (&pb.Envelope{}).ProtoReflect().Descriptor().Fields().ByNumber(num).Message()
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				break
			}
			b = b[n:]
			if fd := md.Fields().ByNumber(num); fd != nil {
				v, _ := protowire.ConsumeVarint(b)
				switch {
				case fd.IsList() && typ == protowire.BytesType:
					repeated++
				case fd.Kind() == protoreflect.EnumKind && typ == protowire.VarintType:
					if e := int32(v); e < 0 || e > 255 {
						r[CodeMalformed] = true
					}
				case fd.Name() == "code" && typ == protowire.VarintType:
					if uint32(v) > 0xffff {
						r[CodeMalformed] = true
					}
				}
			}
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				break
			}
			b = b[n:]
		}
		if repeated > MaxRepeated {
			r[CodeTooMany] = true
		}
	}
	if kind == KindNone {
		r[CodeMissingField] = true
		if unknownBody {
			r[CodeUnknownKind] = true
		}
	}
	return r
}

// FuzzJSONDecode is a differential fuzzer with the protojson path
// (protojsonCodec) as the reference. For any input
//   - JSON.Decode never panics and fails only with a 1xxx *Error;
//   - both refuse it with the same code, or both accept it as the same
//     envelope (jsonDiff; one documented exception, see TestJSONBracketName);
//   - whatever JSON accepts survives re-encoding with both codecs.
//
// Seeds: testdata/fuzz/FuzzJSONDecode, plus the samples.
func FuzzJSONDecode(f *testing.F) {
	for _, s := range samples() {
		data, err := JSON.AppendEncode(nil, &s.env)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		jsonDiff(t, data)
		var env Envelope
		if JSON.Decode(data, &env) != nil {
			return
		}
		for _, c := range []Codec{JSON, Proto} {
			enc, err := c.AppendEncode(nil, &env)
			if err != nil {
				t.Fatalf("%s AppendEncode after JSON.Decode: %v", c.Subprotocol(), err)
			}
			var again Envelope
			if err := c.Decode(enc, &again); err != nil {
				t.Fatalf("%s Decode(%q): %v", c.Subprotocol(), enc, err)
			}
			assertSame(t, &again, &env)
		}
	})
}

// FuzzJSONEncode is the encoding half of the differential check. The
// envelope comes from the fuzzer's bytes through Proto.Decode (so every
// kind, value and repeated length is reachable); s then replaces one of
// its string fields (picked by s's length), so invalid UTF-8 and every
// character that needs escaping reach the encoder. Then (jsonEncodeDiff)
// JSON and protojson refuse it with the same code, or protojson reads
// JSON's output as the same message, JSON reads protojson's output as the
// same envelope, and the two outputs are equal once protojson's
// whitespace is compacted.
//
// Seeds: testdata/fuzz/FuzzJSONEncode.
func FuzzJSONEncode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, s string) {
		var env Envelope
		if Proto.Decode(data, &env) != nil {
			return
		}
		if s != "" {
			setStringField(&env, len(s), s)
		}
		jsonEncodeDiff(t, &env)
	})
}

// setStringField sets the i-th string of env's body (counted over its
// string fields, repeated elements and cursor ids, modulo their number).
func setStringField(env *Envelope, i int, s string) {
	var slots []*string
	p := bodyPtr(env, env.Kind)
	for _, f := range jsonBodies[env.Kind] {
		fp := unsafe.Add(p, f.off)
		switch f.kind {
		case jString:
			slots = append(slots, (*string)(fp))
		case jStrings:
			ss := *(*[]string)(fp)
			for j := range ss {
				slots = append(slots, &ss[j])
			}
		case jCursors:
			cs := *(*[]Cursor)(fp)
			for j := range cs {
				slots = append(slots, &cs[j].ConversationID)
			}
		}
	}
	if len(slots) > 0 {
		*slots[i%len(slots)] = s
	}
}

// fuzzArgs are the two arguments of FuzzJSONEncode.
type fuzzArgs struct {
	data []byte
	s    string
}

// TestWriteFuzzSeeds regenerates testdata/fuzz from the samples and the
// error tables when UNIGATE_WRITE_FUZZ_SEEDS=1; otherwise it checks that
// the committed seeds are there. Seeds found by fuzzing are added by hand
// (they keep their hash names) and are left alone.
func TestWriteFuzzSeeds(t *testing.T) {
	seeds := map[string]map[string][]byte{"FuzzProtoDecode": {}, "FuzzJSONDecode": {}}
	encodeSeeds := map[string]fuzzArgs{}
	for _, s := range samples() {
		bin, err := deterministic.Marshal(s.pb)
		if err != nil {
			t.Fatal(err)
		}
		js, err := protojson.Marshal(s.pb)
		if err != nil {
			t.Fatal(err)
		}
		// protojson varies whitespace from build to build; compact it so
		// the seed files are stable.
		var compact bytes.Buffer
		if err := json.Compact(&compact, js); err != nil {
			t.Fatal(err)
		}
		js = compact.Bytes()
		seeds["FuzzProtoDecode"]["sample-"+s.name] = bin
		seeds["FuzzJSONDecode"]["sample-"+s.name] = js
	}
	for i, c := range protoErrorCases() {
		seeds["FuzzProtoDecode"][fmt.Sprintf("error-%02d", i)] = c.data
	}
	for i, c := range jsonErrorCases() {
		seeds["FuzzJSONDecode"][fmt.Sprintf("error-%02d", i)] = []byte(c.data)
	}
	for i, c := range jsonDiffCases() {
		if len(c) <= 4096 { // the deep-nesting cases stay in the table
			seeds["FuzzJSONDecode"][fmt.Sprintf("diff-%03d", i)] = []byte(c)
		}
	}
	for _, s := range samples() {
		bin, err := deterministic.Marshal(s.pb)
		if err != nil {
			t.Fatal(err)
		}
		encodeSeeds["sample-"+s.name] = fuzzArgs{bin, ""}
	}
	for i, env := range jsonEncodeCases() {
		bin, err := Proto.AppendEncode(nil, &env)
		if err != nil {
			t.Fatal(err)
		}
		encodeSeeds[fmt.Sprintf("case-%02d", i)] = fuzzArgs{bin, ""}
	}
	for i, s := range []string{"a\xffb", "\xed\xa0\x80", "\\\"\x00\x1f\u2028<&>", "\U0001F64F\ufffd", "\xc0"} {
		sample := sampleEnv(t, []string{"send", "hello", "welcome", "deliver", "presence"}[i])
		bin, err := deterministic.Marshal(sample.pb)
		if err != nil {
			t.Fatal(err)
		}
		encodeSeeds[fmt.Sprintf("string-%02d", i)] = fuzzArgs{bin, s}
	}
	write := os.Getenv("UNIGATE_WRITE_FUZZ_SEEDS") == "1"
	seeds["FuzzJSONEncode"] = map[string][]byte{}
	for name, a := range encodeSeeds {
		seeds["FuzzJSONEncode"][name] = fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\nstring(%q)\n", a.data, a.s)
	}
	for target, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for name, data := range files {
			path := filepath.Join(dir, name)
			content := fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data)
			if target == "FuzzJSONEncode" {
				content = data // already a whole seed file
			}
			if write {
				if err := os.WriteFile(path, content, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			have, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(have, content) {
				t.Errorf("%s is missing or stale; run UNIGATE_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds ./protocol", path)
			}
		}
	}
}
