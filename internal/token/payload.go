package token

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A small JSON reader for the payload of a chat token. It exists for two
// reasons, both measured or tested:
//   - strictness: encoding/json silently keeps the last of duplicate members
//     and accepts "tenant" for "ten" only if told to reject unknown fields
//     through a Decoder; a token must mean exactly one thing to every
//     reader, so duplicates, unknown members and fractional numbers are
//     errors here;
//   - cost: the strings it returns are substrings of the one payload string
//     (unless they contain escapes), so Verify allocates that string and
//     the skills slice and nothing else (BenchmarkPayload compares it with
//     encoding/json).
//
// FuzzParsePayload checks it against encoding/json on every input.

// Members of the payload, as bits for duplicate and presence checks.
const (
	memberV uint16 = 1 << iota
	memberSub
	memberRole
	memberTen
	memberSkills
	memberName
	memberIat
	memberExp
	memberKid

	memberRequired = memberV | memberSub | memberRole | memberIat | memberExp
)

var requiredNames = []struct {
	bit  uint16
	name string
}{{memberV, "v"}, {memberSub, "sub"}, {memberRole, "role"}, {memberIat, "iat"}, {memberExp, "exp"}}

// parsePayload decodes a chat token payload. The returned strings may
// alias s. It checks syntax and types only; Signer.check applies the
// rules on values.
func parsePayload(s string) (wirePayload, error) {
	var p wirePayload
	r := reader{s: s}
	var seen uint16
	r.space()
	if !r.consume('{') {
		return p, r.fail("want a JSON object")
	}
	r.space()
	if !r.consume('}') {
		for {
			r.space()
			key, err := r.str()
			if err != nil {
				return p, err
			}
			r.space()
			if !r.consume(':') {
				return p, r.fail("want : after a member name")
			}
			r.space()
			bit, err := r.member(&p, key)
			if err != nil {
				return p, err
			}
			if seen&bit != 0 {
				return p, r.fail(fmt.Sprintf("member %q repeated", key))
			}
			seen |= bit
			r.space()
			if r.consume(',') {
				continue
			}
			if r.consume('}') {
				break
			}
			return p, r.fail("want , or } after a member")
		}
	}
	r.space()
	if r.i != len(s) {
		return p, r.fail("data after the object")
	}
	if missing := memberRequired &^ seen; missing != 0 {
		for _, m := range requiredNames {
			if missing&m.bit != 0 {
				return p, fmt.Errorf("%w: payload lacks %q", ErrMalformed, m.name)
			}
		}
	}
	return p, nil
}

// reader walks a JSON text.
type reader struct {
	s string
	i int
}

func (r *reader) fail(msg string) error {
	return fmt.Errorf("%w: payload offset %d: %s", ErrMalformed, r.i, msg)
}

func (r *reader) space() {
	for r.i < len(r.s) {
		switch r.s[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

func (r *reader) consume(c byte) bool {
	if r.i < len(r.s) && r.s[r.i] == c {
		r.i++
		return true
	}
	return false
}

// null consumes a JSON null.
func (r *reader) null() bool {
	if strings.HasPrefix(r.s[r.i:], "null") {
		r.i += 4
		return true
	}
	return false
}

// member reads the value of member key into p and returns key's bit.
func (r *reader) member(p *wirePayload, key string) (uint16, error) {
	var err error
	switch key {
	case "v":
		var n int64
		if n, err = r.integer(); err == nil && n != Version {
			err = fmt.Errorf("%w: unsupported version %d", ErrMalformed, n)
		}
		p.V = Version
		return memberV, err
	case "sub":
		p.Sub, err = r.str()
		return memberSub, err
	case "role":
		p.Role, err = r.str()
		switch p.Role { // share the constants rather than the payload
		case RoleVisitor:
			p.Role = RoleVisitor
		case RoleAgent:
			p.Role = RoleAgent
		}
		return memberRole, err
	case "ten":
		p.Ten, err = r.optStr()
		return memberTen, err
	case "name":
		p.Name, err = r.optStr()
		return memberName, err
	case "kid":
		p.Kid, err = r.optStr()
		return memberKid, err
	case "iat":
		p.Iat, err = r.integer()
		return memberIat, err
	case "exp":
		p.Exp, err = r.integer()
		return memberExp, err
	case "skills":
		p.Skills, err = r.strList()
		return memberSkills, err
	}
	return 0, r.fail(fmt.Sprintf("unknown member %q", key))
}

// integer reads a JSON number that must be a whole int64.
func (r *reader) integer() (int64, error) {
	start := r.i
	r.consume('-')
	digits := r.i
	for r.i < len(r.s) && '0' <= r.s[r.i] && r.s[r.i] <= '9' {
		r.i++
	}
	switch {
	case r.i == digits:
		return 0, r.fail("want an integer")
	case r.s[digits] == '0' && r.i-digits > 1:
		return 0, r.fail("leading zero in a number")
	case r.i < len(r.s) && (r.s[r.i] == '.' || r.s[r.i] == 'e' || r.s[r.i] == 'E'):
		return 0, r.fail("want a whole number of seconds")
	}
	n, err := strconv.ParseInt(r.s[start:r.i], 10, 64)
	if err != nil {
		return 0, r.fail("number out of range")
	}
	return n, nil
}

// optStr reads a string or null ("").
func (r *reader) optStr() (string, error) {
	if r.null() {
		return "", nil
	}
	return r.str()
}

// strList reads an array of strings, or null. The result is nil when
// empty and otherwise exactly as long as the array.
func (r *reader) strList() ([]string, error) {
	if r.null() {
		return nil, nil
	}
	if !r.consume('[') {
		return nil, r.fail("want an array of strings")
	}
	var small [8]string
	list := small[:0]
	r.space()
	if !r.consume(']') {
		for {
			r.space()
			v, err := r.str()
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			r.space()
			if r.consume(',') {
				continue
			}
			if r.consume(']') {
				break
			}
			return nil, r.fail("want , or ] in an array")
		}
	}
	if len(list) == 0 {
		return nil, nil
	}
	return append([]string(nil), list...), nil
}

// str reads a JSON string. Without escapes it is a substring of r.s.
func (r *reader) str() (string, error) {
	if !r.consume('"') {
		return "", r.fail("want a string")
	}
	start := r.i
	for r.i < len(r.s) {
		switch c := r.s[r.i]; {
		case c == '"':
			v := r.s[start:r.i]
			r.i++
			if !utf8.ValidString(v) {
				return "", r.fail("string is not valid UTF-8")
			}
			return v, nil
		case c == '\\':
			return r.strEscaped(start)
		case c < 0x20:
			return "", r.fail("control character in a string")
		}
		r.i++
	}
	return "", r.fail("unterminated string")
}

// strEscaped finishes a string that has escapes, from the first
// backslash; start is the first byte after the opening quote.
func (r *reader) strEscaped(start int) (string, error) {
	buf := make([]byte, 0, 2*(r.i-start)+16)
	buf = append(buf, r.s[start:r.i]...)
	for r.i < len(r.s) {
		c := r.s[r.i]
		switch {
		case c == '"':
			r.i++
			if !utf8.Valid(buf) {
				return "", r.fail("string is not valid UTF-8")
			}
			return string(buf), nil
		case c < 0x20:
			return "", r.fail("control character in a string")
		case c != '\\':
			buf = append(buf, c)
			r.i++
			continue
		}
		if r.i+1 >= len(r.s) {
			break
		}
		e := r.s[r.i+1]
		r.i += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			ru, ok := r.hex4()
			if !ok {
				return "", r.fail(`bad \u escape`)
			}
			if utf16.IsSurrogate(ru) {
				if ru >= 0xdc00 || !strings.HasPrefix(r.s[r.i:], `\u`) {
					return "", r.fail("unpaired UTF-16 surrogate")
				}
				r.i += 2
				lo, ok := r.hex4()
				if !ok {
					return "", r.fail(`bad \u escape`)
				}
				if ru = utf16.DecodeRune(ru, lo); ru == utf8.RuneError {
					return "", r.fail("unpaired UTF-16 surrogate")
				}
			}
			buf = utf8.AppendRune(buf, ru)
		default:
			return "", r.fail(fmt.Sprintf("bad escape \\%c", e))
		}
	}
	return "", r.fail("unterminated string")
}

// hex4 reads four hex digits.
func (r *reader) hex4() (rune, bool) {
	if len(r.s)-r.i < 4 {
		return 0, false
	}
	var v rune
	for _, c := range []byte(r.s[r.i : r.i+4]) {
		v <<= 4
		switch {
		case '0' <= c && c <= '9':
			v |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			v |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			v |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	r.i += 4
	return v, true
}
