package protocol

import (
	"encoding/base64"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// The JSON decoder: a recursive-descent scanner over the message that
// accepts exactly what protojson's tokenizer and unmarshaler accept for
// unigate.proto (google.golang.org/protobuf/internal/encoding/json and
// encoding/protojson/decode.go; the number and string rules below are
// ported from there). It allocates only for strings that hold escapes,
// for Secure.Data, and when a repeated field outgrows the envelope's
// capacity.

// jsonSkipLimit is how deep an unknown field's value may nest at the
// envelope level: protojson's default recursion limit (10000) less the one
// level the envelope itself uses; each message level below takes one more.
const jsonSkipLimit = 9999

type jsonDecoder struct {
	data []byte
	pos  int
	env  *Envelope

	// Limits checked once the whole message is read, as fromPB checks
	// them after protojson: a syntax error anywhere wins over them.
	tooMany    bool
	outOfRange bool

	msg string // what went wrong, for the error
}

func (jsonCodec) Decode(data []byte, env *Envelope) error {
	env.Reset()
	if !utf8.Valid(data) {
		return NewError(CodeInvalidUTF8, "json: invalid UTF-8")
	}
	d := jsonDecoder{data: data, env: env}
	if !d.envelope() {
		return NewError(CodeMalformed, "json: "+d.msg+" at offset "+strconv.Itoa(d.pos))
	}
	switch {
	case env.Kind == KindNone:
		return NewError(CodeMissingField, "envelope: no body")
	case d.tooMany:
		return tooMany(env.Kind)
	case d.outOfRange:
		return outOfRange(env.Kind)
	}
	return nil
}

func (d *jsonDecoder) fail(msg string) bool {
	if d.msg == "" {
		d.msg = msg
	}
	return false
}

// ws skips JSON whitespace.
func (d *jsonDecoder) ws() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\n', '\r', '\t':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace, 0 at the end.
func (d *jsonDecoder) peek() byte {
	d.ws()
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

// envelope reads the top-level object and checks that nothing follows it.
func (d *jsonDecoder) envelope() bool {
	if d.peek() != '{' {
		return d.fail("expected an object")
	}
	d.pos++
	var seenID, seenBody bool
	var seenKinds uint32
	if d.peek() == '}' {
		d.pos++
		return d.end()
	}
	for {
		name, ok := d.name()
		if !ok {
			return false
		}
		switch {
		case name == "id":
			if seenID {
				return d.fail("duplicate field id")
			}
			seenID = true
			if d.null() {
				break
			}
			if d.msg != "" {
				return false
			}
			if !d.uint(&d.env.ID, 64) {
				return false
			}
		default:
			k := bodyKind(name)
			if k == KindNone {
				if !d.skip(jsonSkipLimit) {
					return false
				}
				break
			}
			if seenKinds&(1<<k) != 0 {
				return d.fail("duplicate field " + k.String())
			}
			seenKinds |= 1 << k
			if d.null() {
				break
			}
			if d.msg != "" {
				return false
			}
			if seenBody {
				return d.fail("oneof body is already set")
			}
			seenBody = true
			d.env.Kind = k
			if !d.message(jsonBodies[k], bodyPtr(d.env, k), jsonSkipLimit-1) {
				return false
			}
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return d.end()
		default:
			return d.fail("expected , or }")
		}
	}
}

// end checks that only whitespace follows the envelope.
func (d *jsonDecoder) end() bool {
	if d.peek() != 0 || d.pos < len(d.data) {
		return d.fail("unexpected data after the envelope")
	}
	return true
}

// bodyKind returns the Kind whose body is named name, or KindNone. Body
// names are one word: the JSON and the schema name are the same.
func bodyKind(name string) Kind {
	for k := KindHello; k <= KindSecure; k++ {
		if kindNames[k] == name {
			return k
		}
	}
	return KindNone
}

// name reads a field name and the colon after it. The result aliases the
// data or, if the name held escapes, a new string.
func (d *jsonDecoder) name() (string, bool) {
	if d.peek() != '"' {
		return "", d.fail("expected a field name")
	}
	name, ok := d.str()
	if !ok {
		return "", false
	}
	if d.peek() != ':' {
		return "", d.fail("expected : after a field name")
	}
	d.pos++
	return name, true
}

// null consumes a null value. If the next value starts like null but is
// not one, it sets d.msg and returns false.
func (d *jsonDecoder) null() bool {
	if d.peek() != 'n' {
		return false
	}
	if !d.literal("null") {
		d.fail("invalid value")
		return false
	}
	return true
}

// literal consumes s (null, true, false) if the data holds it followed by
// a delimiter, as protojson's matchWithDelim.
func (d *jsonDecoder) literal(s string) bool {
	rest := d.data[d.pos:]
	if len(rest) < len(s) || string(rest[:len(s)]) != s {
		return false
	}
	if len(rest) > len(s) && isNotDelim(rest[len(s)]) {
		return false
	}
	d.pos += len(s)
	return true
}

// isNotDelim reports whether c may continue a literal or a number.
func isNotDelim(c byte) bool {
	return c == '-' || c == '+' || c == '.' || c == '_' ||
		('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

// message reads an object into the struct at p whose fields are given.
// limit is how deep an unknown field's value may nest at this level.
func (d *jsonDecoder) message(fields []jfield, p unsafe.Pointer, limit int) bool {
	if d.peek() != '{' {
		return d.fail("expected an object")
	}
	d.pos++
	if d.peek() == '}' {
		d.pos++
		return true
	}
	var seen uint32
	for {
		name, ok := d.name()
		if !ok {
			return false
		}
		i := fieldIndex(fields, name)
		if i < 0 {
			if !d.skip(limit) {
				return false
			}
		} else {
			if seen&(1<<i) != 0 {
				return d.fail("duplicate field " + name)
			}
			seen |= 1 << i
			if !d.null() {
				if d.msg != "" || !d.field(&fields[i], unsafe.Add(p, fields[i].off), limit) {
					return false
				}
			}
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return true
		default:
			return d.fail("expected , or }")
		}
	}
}

func fieldIndex(fields []jfield, name string) int {
	for i := range fields {
		if f := &fields[i]; f.json == name || f.proto == name {
			return i
		}
	}
	return -1
}

// field reads the value of one known field (not null) into fp.
func (d *jsonDecoder) field(f *jfield, fp unsafe.Pointer, limit int) bool {
	switch f.kind {
	case jString:
		if d.peek() != '"' {
			return d.fail("expected a string for " + f.json)
		}
		s, ok := d.str()
		*(*string)(fp) = s
		return ok
	case jUint64:
		return d.uint((*uint64)(fp), 64)
	case jInt64:
		return d.int((*int64)(fp))
	case jUint32:
		var v uint64
		ok := d.uint(&v, 32)
		*(*uint32)(fp) = uint32(v)
		return ok
	case jCode:
		var v uint64
		if !d.uint(&v, 32) {
			return false
		}
		if v > 0xffff {
			d.outOfRange = true
		}
		*(*Code)(fp) = Code(v)
		return true
	case jBool:
		switch d.peek() {
		case 't':
			if d.literal("true") {
				*(*bool)(fp) = true
				return true
			}
		case 'f':
			if d.literal("false") {
				return true
			}
		}
		return d.fail("expected true or false for " + f.json)
	case jRole, jState, jStatus:
		return d.enum(enumNames(f.kind), (*uint8)(fp))
	case jStrings:
		return d.strings((*[]string)(fp))
	case jCursors:
		return d.cursors((*[]Cursor)(fp), limit-1)
	case jBytes:
		return d.bytes((*[]byte)(fp))
	}
	return d.fail("unknown field kind") // unreachable
}

func (d *jsonDecoder) enum(names []string, dst *uint8) bool {
	switch c := d.peek(); {
	case c == '"':
		s, ok := d.str()
		if !ok {
			return false
		}
		for i, n := range names {
			if n == s {
				*dst = uint8(i)
				return true
			}
		}
		return true // an unknown name leaves the field unset
	case c == '-' || ('0' <= c && c <= '9'):
		raw, ok := d.number()
		if !ok {
			return false
		}
		var buf [24]byte
		s, ok := intString(&buf, raw)
		if !ok {
			return d.fail("invalid enum value")
		}
		v, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return d.fail("invalid enum value")
		}
		if v < 0 || v > 255 {
			d.outOfRange = true
		}
		*dst = uint8(v)
		return true
	}
	return d.fail("invalid enum value")
}

// intToken returns the integer token of a 64- or 32-bit field: a JSON
// number, or a string that holds exactly one (protojson's unmarshalInt).
// The result is normalized by intString; it may alias buf or the data.
func (d *jsonDecoder) intToken(buf *[24]byte) (string, bool) {
	var raw []byte
	switch c := d.peek(); {
	case c == '"':
		s, ok := d.str()
		if !ok {
			return "", false
		}
		if n, ok := parseNumber(s); !ok || n != len(s) {
			return "", d.fail("invalid integer")
		}
		raw = unsafe.Slice(unsafe.StringData(s), len(s))
	case c == '-' || ('0' <= c && c <= '9'):
		var ok bool
		if raw, ok = d.number(); !ok {
			return "", false
		}
	default:
		return "", d.fail("invalid integer")
	}
	s, ok := intString(buf, raw)
	if !ok {
		return "", d.fail("invalid integer")
	}
	return s, true
}

func (d *jsonDecoder) uint(dst *uint64, bits int) bool {
	var buf [24]byte
	s, ok := d.intToken(&buf)
	if !ok {
		return false
	}
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return d.fail("integer out of range")
	}
	*dst = v
	return true
}

func (d *jsonDecoder) int(dst *int64) bool {
	var buf [24]byte
	s, ok := d.intToken(&buf)
	if !ok {
		return false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return d.fail("integer out of range")
	}
	*dst = v
	return true
}

// number consumes a number token (protojson's parseNumber).
func (d *jsonDecoder) number() ([]byte, bool) {
	n, ok := parseNumber(d.data[d.pos:])
	if !ok {
		return nil, d.fail("invalid number")
	}
	raw := d.data[d.pos : d.pos+n]
	d.pos += n
	return raw, true
}

// strings reads an array of strings, appending up to MaxRepeated of them.
func (d *jsonDecoder) strings(dst *[]string) bool {
	if d.peek() != '[' {
		return d.fail("expected an array")
	}
	d.pos++
	if d.peek() == ']' {
		d.pos++
		return true
	}
	for n := 0; ; n++ {
		if d.peek() != '"' {
			return d.fail("expected a string")
		}
		s, ok := d.str()
		if !ok {
			return false
		}
		if n < MaxRepeated {
			*dst = append(*dst, s)
		} else {
			d.tooMany = true
		}
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return true
		default:
			return d.fail("expected , or ]")
		}
	}
}

// cursors reads an array of Cursor objects, appending up to MaxRepeated.
func (d *jsonDecoder) cursors(dst *[]Cursor, limit int) bool {
	if d.peek() != '[' {
		return d.fail("expected an array")
	}
	d.pos++
	if d.peek() == ']' {
		d.pos++
		return true
	}
	var spare Cursor
	for n := 0; ; n++ {
		c := &spare
		if n < MaxRepeated {
			*dst = append(*dst, Cursor{})
			c = &(*dst)[len(*dst)-1]
		} else {
			d.tooMany = true
		}
		if !d.message(jsonCursor, unsafe.Pointer(c), limit) {
			return false
		}
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return true
		default:
			return d.fail("expected , or ]")
		}
	}
}

// bytes reads base64 as protojson does: URL-safe if it holds - or _,
// unpadded if its length is not a multiple of 4.
func (d *jsonDecoder) bytes(dst *[]byte) bool {
	if d.peek() != '"' {
		return d.fail("expected a base64 string")
	}
	s, ok := d.str()
	if !ok {
		return false
	}
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	if len(s) == 0 {
		return true
	}
	b := make([]byte, enc.DecodedLen(len(s)))
	n, err := enc.Decode(b, unsafe.Slice(unsafe.StringData(s), len(s)))
	if err != nil {
		return d.fail("invalid base64")
	}
	if n > 0 {
		*dst = b[:n]
	}
	return true
}

// str reads a string token at d.pos (which holds '"'). Without escapes the
// result aliases the data; with escapes it is a new string.
func (d *jsonDecoder) str() (string, bool) {
	start := d.pos + 1
	end, esc, ok := d.scanString()
	if !ok {
		return "", false
	}
	raw := d.data[start:end]
	if len(raw) == 0 {
		return "", true
	}
	if !esc {
		return unsafe.String(&raw[0], len(raw)), true
	}
	b := unescape(make([]byte, 0, len(raw)), raw)
	return unsafe.String(unsafe.SliceData(b), len(b)), true
}

// scanString checks the string token at d.pos as protojson's parseString
// does (no raw control characters; only JSON's escapes; \u escapes of
// UTF-16 surrogates only as a valid pair) and moves past it. It returns the
// offset of the closing quote and whether the string held escapes. UTF-8
// was checked for the whole message already.
func (d *jsonDecoder) scanString() (end int, esc bool, ok bool) {
	data := d.data
	i := d.pos + 1
	for {
		i += plainLen(data[i:])
		if i >= len(data) {
			break
		}
		c := data[i]
		if jsonNoEscape[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			d.pos = i + 1
			return i, esc, true
		case c < ' ':
			d.pos = i
			return 0, false, d.fail("control character in string")
		}
		// A backslash.
		esc = true
		if i+1 >= len(data) {
			d.pos = i
			return 0, false, d.fail("unexpected end of data in string")
		}
		switch data[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			r, ok := hex4(data[i:])
			if !ok {
				d.pos = i
				return 0, false, d.fail("invalid escape in string")
			}
			i += 6
			if utf16.IsSurrogate(r) {
				r2, ok := hex4(data[i:])
				if !ok || utf16.DecodeRune(r, r2) == utf8.RuneError {
					d.pos = i
					return 0, false, d.fail("invalid surrogate escape in string")
				}
				i += 6
			}
		default:
			d.pos = i
			return 0, false, d.fail("invalid escape in string")
		}
	}
	d.pos = i
	return 0, false, d.fail("unexpected end of data in string")
}

// hex4 decodes the \uXXXX escape at the start of b.
func hex4(b []byte) (rune, bool) {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unescape appends the content of a string token that scanString accepted.
func unescape(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			j := i + 1
			for j < len(raw) && raw[j] != '\\' {
				j++
			}
			dst = append(dst, raw[i:j]...)
			i = j
			continue
		}
		switch e := raw[i+1]; e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(raw[i:])
			if utf16.IsSurrogate(r) {
				r2, _ := hex4(raw[i+6:])
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			dst = utf8.AppendRune(dst, r)
			i += 6
			continue
		default: // '"', '\\', '/'
			dst = append(dst, e)
		}
		i += 2
	}
	return dst
}

// skip skips one value of an unknown field, checking its syntax, with at
// most limit levels of nesting (protojson's skipJSONValue).
func (d *jsonDecoder) skip(limit int) bool {
	var stack [(jsonSkipLimit + 63) / 64]uint64 // bit set: object; clear: array
	depth := 0
	for {
		// A value.
		switch c := d.peek(); {
		case c == '{' || c == '[':
			d.pos++
			if depth >= limit {
				return d.fail("value nested too deep")
			}
			if c == '{' {
				stack[depth/64] |= 1 << (depth % 64)
			} else {
				stack[depth/64] &^= 1 << (depth % 64)
			}
			depth++
			if c2 := d.peek(); (c == '{' && c2 == '}') || (c == '[' && c2 == ']') {
				d.pos++
				depth--
				break
			}
			if c == '{' {
				if _, ok := d.skipName(); !ok {
					return false
				}
			}
			continue
		case c == '"':
			if _, _, ok := d.scanString(); !ok {
				return false
			}
		case c == 't':
			if !d.literal("true") {
				return d.fail("invalid value")
			}
		case c == 'f':
			if !d.literal("false") {
				return d.fail("invalid value")
			}
		case c == 'n':
			if !d.literal("null") {
				return d.fail("invalid value")
			}
		case c == '-' || ('0' <= c && c <= '9'):
			if _, ok := d.number(); !ok {
				return false
			}
		default:
			return d.fail("invalid value")
		}
		// After a value: close containers, or a comma and the next value.
		for {
			if depth == 0 {
				return true
			}
			inObject := stack[(depth-1)/64]&(1<<((depth-1)%64)) != 0
			c := d.peek()
			if c == ',' {
				d.pos++
				if inObject {
					if _, ok := d.skipName(); !ok {
						return false
					}
				}
				break
			}
			if (inObject && c == '}') || (!inObject && c == ']') {
				d.pos++
				depth--
				continue
			}
			return d.fail("expected , or a closing bracket")
		}
	}
}

// skipName checks a field name and its colon inside a skipped object.
func (d *jsonDecoder) skipName() (struct{}, bool) {
	if d.peek() != '"' {
		return struct{}{}, d.fail("expected a field name")
	}
	if _, _, ok := d.scanString(); !ok {
		return struct{}{}, false
	}
	if d.peek() != ':' {
		return struct{}{}, d.fail("expected : after a field name")
	}
	d.pos++
	return struct{}{}, true
}

// parseNumber returns the length of the number token at the start of s,
// exactly as protojson's tokenizer (internal/encoding/json parseNumber):
// JSON's number grammar, except that an exponent marker may be followed by
// no digits ("1e" reads as 1), and the token must end at a delimiter.
func parseNumber[T string | []byte](s T) (int, bool) {
	n := 0
	if len(s) == 0 {
		return 0, false
	}
	if s[0] == '-' {
		n++
		if n == len(s) {
			return 0, false
		}
	}
	switch {
	case s[n] == '0':
		n++
	case '1' <= s[n] && s[n] <= '9':
		n++
		for n < len(s) && '0' <= s[n] && s[n] <= '9' {
			n++
		}
	default:
		return 0, false
	}
	if len(s)-n >= 2 && s[n] == '.' && '0' <= s[n+1] && s[n+1] <= '9' {
		n += 2
		for n < len(s) && '0' <= s[n] && s[n] <= '9' {
			n++
		}
	}
	if len(s)-n >= 2 && (s[n] == 'e' || s[n] == 'E') {
		n++
		if s[n] == '+' || s[n] == '-' {
			n++
			if n == len(s) {
				return 0, false
			}
		}
		for n < len(s) && '0' <= s[n] && s[n] <= '9' {
			n++
		}
	}
	if n < len(s) && isNotDelim(s[n]) {
		return 0, false
	}
	return n, true
}

// intString returns the integer a number token denotes as a plain decimal
// string, or false if it is not an integer, exactly as protojson's
// parseNumberParts + normalizeToIntString (up to 20 digits after shifting
// by the exponent). The result aliases buf or raw; it is for
// strconv.Parse[U]Int.
func intString(buf *[24]byte, raw []byte) (string, bool) {
	s := raw
	neg := false
	if s[0] == '-' {
		neg = true
		s = s[1:]
	}
	// Integer part; a leading 0 is the whole integer part and is dropped.
	var intp []byte
	if s[0] == '0' {
		s = s[1:]
	} else {
		n := 1
		for n < len(s) && '0' <= s[n] && s[n] <= '9' {
			n++
		}
		intp, s = s[:n], s[n:]
	}
	var frac, exp []byte
	if len(s) >= 2 && s[0] == '.' && '0' <= s[1] && s[1] <= '9' {
		n := 2
		for n < len(s) && '0' <= s[n] && s[n] <= '9' {
			n++
		}
		frac, s = s[1:n], s[n:]
	}
	hasExp := false
	if len(s) >= 2 && (s[0] == 'e' || s[0] == 'E') {
		s = s[1:]
		n := 0
		if s[0] == '+' || s[0] == '-' {
			n++
			if len(s) == 1 {
				return "", false
			}
		}
		for n < len(s) && '0' <= s[n] && s[n] <= '9' {
			n++
		}
		exp, hasExp = s[:n], n > 0
	}
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}

	if len(intp) == 0 && len(frac) == 0 {
		return "0", true
	}
	e := 0
	if hasExp {
		v, err := strconv.ParseInt(unsafe.String(unsafe.SliceData(exp), len(exp)), 10, 32)
		if err != nil {
			return "", false
		}
		e = int(v)
	}
	var num []byte
	if e >= 0 {
		if len(frac) > e || len(intp)+e > 20 {
			return "", false
		}
		if len(frac) == 0 && e == 0 && !neg {
			return unsafe.String(unsafe.SliceData(intp), len(intp)), true
		}
		num = buf[:0]
		if neg {
			num = append(num, '-')
		}
		num = append(num, intp...)
		num = append(num, frac...)
		for range e - len(frac) {
			num = append(num, '0')
		}
	} else {
		if len(frac) > 0 {
			return "", false
		}
		index := len(intp) + e
		if index < 0 {
			return "", false
		}
		for _, c := range intp[index:] {
			if c != '0' {
				return "", false
			}
		}
		intp = intp[:index]
		if !neg {
			return unsafe.String(unsafe.SliceData(intp), len(intp)), true
		}
		if len(intp) > 20 {
			return "", false // more digits than any 64-bit integer
		}
		num = append(append(buf[:0], '-'), intp...)
	}
	return unsafe.String(unsafe.SliceData(num), len(num)), true
}
