package netpoll

import (
	"bytes"
	"errors"
)

// Errors of the HTTP/1.1 request head parser. Each maps to one response
// status (see statusOf).
var (
	errNeedMore       = errors.New("netpoll: incomplete request head")
	errHeadTooLarge   = errors.New("netpoll: request head too large")
	errMalformed      = errors.New("netpoll: malformed request")
	errBadContentLen  = errors.New("netpoll: bad Content-Length")
	errBodyTooLarge   = errors.New("netpoll: request body too large")
	errChunked        = errors.New("netpoll: chunked request bodies are not supported")
	errVersion        = errors.New("netpoll: unsupported HTTP version")
	errTooManyHeaders = errors.New("netpoll: too many header fields")
)

// maxHeaderFields bounds the number of header lines in one request.
const maxHeaderFields = 100

// request is an HTTP/1.1 request head parsed in place: every slice points
// into the buffer given to parseRequest and is valid only as long as it.
type request struct {
	method, path, query []byte
	host, upgrade       []byte
	connection          []byte
	wsVersion           []byte
	wsProtocols         [4][]byte // the first Sec-WebSocket-Protocol header lines
	nProtocols          int
	origin              []byte
	xForwardedFor       []byte // the last X-Forwarded-For line
	xRealIP             []byte
	minor               byte // HTTP/1.<minor>
	contentLength       int64
	hasContentLength    bool
	headLen             int // bytes of the request line and header fields, CRLFCRLF included
	close               bool
}

// wantsUpgrade reports whether the request asks for a WebSocket upgrade.
func (r *request) wantsUpgrade() bool {
	return len(r.upgrade) > 0 && hasToken(r.upgrade, "websocket")
}

// keepAlive reports whether the connection stays open after the response.
func (r *request) keepAlive() bool {
	if r.close || hasToken(r.connection, "close") {
		return false
	}
	if r.minor == 0 {
		return hasToken(r.connection, "keep-alive")
	}
	return true
}

// parseRequest parses the request head at the start of b. maxHead bounds the
// head size (request line + header fields); maxBody bounds Content-Length.
// It returns errNeedMore while the head is incomplete and no larger than
// maxHead. It never retains b and never allocates.
func parseRequest(b []byte, maxHead int, maxBody int64) (r request, err error) {
	end := bytes.Index(limit(b, maxHead+4), crlfcrlf)
	if end < 0 {
		if len(b) >= maxHead+4 {
			return r, errHeadTooLarge
		}
		// A request head never contains a NUL or bare control bytes: fail
		// early on binary garbage instead of waiting for 8 KiB of it.
		if bytes.IndexByte(b, 0) >= 0 {
			return r, errMalformed
		}
		return r, errNeedMore
	}
	r.headLen = end + 4
	head := b[:end+2] // keep the CRLF of the last line

	// Request line: method SP request-target SP HTTP-version CRLF.
	i := bytes.Index(head, crlf)
	line := head[:i]
	head = head[i+2:]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return r, errMalformed
	}
	r.method = line[:sp1]
	if !isToken(r.method) {
		return r, errMalformed
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return r, errMalformed
	}
	target, version := rest[:sp2], rest[sp2+1:]
	if target[0] != '/' || !isTargetChars(target) {
		return r, errMalformed
	}
	if len(version) != 8 || string(version[:7]) != "HTTP/1." {
		if len(version) == 8 && string(version[:5]) == "HTTP/" {
			return r, errVersion
		}
		return r, errMalformed
	}
	switch version[7] {
	case '0', '1':
		r.minor = version[7] - '0'
	default:
		return r, errVersion
	}
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		r.path, r.query = target[:q], target[q+1:]
	} else {
		r.path = target
	}

	// Header fields: name ":" OWS value OWS CRLF.
	var chunked bool
	fields := 0
	for len(head) > 0 {
		i := bytes.Index(head, crlf)
		if i < 0 {
			return r, errMalformed
		}
		line := head[:i]
		head = head[i+2:]
		if fields++; fields > maxHeaderFields {
			return r, errTooManyHeaders
		}
		c := bytes.IndexByte(line, ':')
		if c <= 0 { // also rejects obs-fold lines, which start with SP or HTAB
			return r, errMalformed
		}
		name := line[:c]
		if !isToken(name) {
			return r, errMalformed
		}
		value := trimOWS(line[c+1:])
		if !isFieldValue(value) {
			return r, errMalformed
		}
		switch {
		case equalFold(name, "host"):
			if r.host != nil {
				return r, errMalformed
			}
			r.host = value
		case equalFold(name, "upgrade"):
			r.upgrade = value
		case equalFold(name, "connection"):
			if r.connection != nil && !bytes.Equal(r.connection, value) {
				r.close = r.close || hasToken(value, "close")
			} else {
				r.connection = value
			}
		case equalFold(name, "sec-websocket-version"):
			r.wsVersion = value
		case equalFold(name, "sec-websocket-protocol"):
			if r.nProtocols < len(r.wsProtocols) {
				r.wsProtocols[r.nProtocols] = value
				r.nProtocols++
			}
		case equalFold(name, "origin"):
			r.origin = value
		case equalFold(name, "x-forwarded-for"):
			r.xForwardedFor = value
		case equalFold(name, "x-real-ip"):
			r.xRealIP = value
		case equalFold(name, "content-length"):
			n, ok := parseDecimal(value)
			if !ok || (r.hasContentLength && n != r.contentLength) {
				return r, errBadContentLen
			}
			r.contentLength, r.hasContentLength = n, true
		case equalFold(name, "transfer-encoding"):
			chunked = true
		}
	}
	if r.minor == 1 && r.host == nil {
		return r, errMalformed
	}
	if chunked {
		if r.hasContentLength {
			return r, errMalformed // request smuggling guard (RFC 9112 6.1)
		}
		return r, errChunked
	}
	if r.contentLength > maxBody {
		return r, errBodyTooLarge
	}
	return r, nil
}

// offersProtocol reports whether any Sec-WebSocket-Protocol header lists name.
func (r *request) offersProtocol(name string) bool {
	for _, v := range r.wsProtocols[:r.nProtocols] {
		if hasToken(v, name) {
			return true
		}
	}
	return false
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
)

func limit(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// tchar per RFC 9110 5.6.2.
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-32] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

// isTargetChars accepts the visible ASCII of an origin-form request target.
func isTargetChars(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// isFieldValue rejects control bytes (CR, LF, NUL, ...) in a field value;
// HTAB and obs-text (>= 0x80) are allowed.
func isFieldValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b to the lower-case ASCII string s case-insensitively.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v contains tok
// (case-insensitive, surrounding whitespace ignored).
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var item []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, nil
		}
		if equalFold(trimOWS(item), tok) {
			return true
		}
	}
	return false
}

func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// queryValue returns the value of key in a raw query string, percent-decoded
// if needed. It allocates only for a match.
func queryValue(query []byte, key string) (string, bool) {
	for len(query) > 0 {
		var kv []byte
		if i := bytes.IndexByte(query, '&'); i >= 0 {
			kv, query = query[:i], query[i+1:]
		} else {
			kv, query = query, nil
		}
		k, v := kv, []byte(nil)
		if i := bytes.IndexByte(kv, '='); i >= 0 {
			k, v = kv[:i], kv[i+1:]
		}
		if string(k) == key {
			return unescapeQuery(v)
		}
	}
	return "", false
}

func unescapeQuery(v []byte) (string, bool) {
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '+':
			out = append(out, ' ')
		case '%':
			if i+2 >= len(v) {
				return "", false
			}
			h, ok1 := unhex(v[i+1])
			l, ok2 := unhex(v[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			out = append(out, h<<4|l)
			i += 2
		default:
			out = append(out, c)
		}
	}
	return string(out), true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
