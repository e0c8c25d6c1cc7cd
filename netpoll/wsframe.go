package netpoll

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// errFrameTooLarge reports a frame whose declared length can never be
// accepted (over the message limit, or a 64-bit length with the top bit set).
var errFrameTooLarge = errors.New("netpoll: frame too large")

// parseFrameHeader parses a WebSocket frame header from the start of b
// without blocking and without allocating. ok is false when b holds only
// part of the header (the caller waits for more bytes). n is the header size.
func parseFrameHeader(b []byte) (h ws.Header, n int, ok bool, err error) {
	if len(b) < 2 {
		return h, 0, false, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, false, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, false, nil
		}
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return h, 0, false, errFrameTooLarge
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, false, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, true, nil
}

// utf8Stream validates UTF-8 incrementally across the fragments of one text
// message: it keeps at most 3 bytes of a rune split between fragments.
type utf8Stream struct {
	tail  [utf8.UTFMax]byte
	ntail uint8
}

// write validates p as the continuation of the stream. It returns false as
// soon as the bytes seen so far cannot be the prefix of valid UTF-8.
func (s *utf8Stream) write(p []byte) bool {
	if s.ntail > 0 {
		// Complete the split rune with bytes from p.
		var buf [utf8.UTFMax]byte
		n := copy(buf[:], s.tail[:s.ntail])
		need := 0
		for need = 1; n+need <= utf8.UTFMax && need <= len(p); need++ {
			copy(buf[n:], p[:need])
			if utf8.FullRune(buf[:n+need]) {
				break
			}
		}
		if need > len(p) {
			// Still incomplete: p is entirely part of the split rune.
			copy(s.tail[s.ntail:], p)
			s.ntail += uint8(len(p))
			return validPrefix(s.tail[:s.ntail])
		}
		r, size := utf8.DecodeRune(buf[:n+need])
		if r == utf8.RuneError && size <= 1 {
			return false
		}
		p = p[size-n:]
		s.ntail = 0
	}
	// Find where the last, possibly incomplete, rune starts.
	cut := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(p[:cut]) {
		return false
	}
	s.ntail = uint8(copy(s.tail[:], p[cut:]))
	return validPrefix(s.tail[:s.ntail])
}

// done reports whether the stream ended on a rune boundary.
func (s *utf8Stream) done() bool { return s.ntail == 0 }

func (s *utf8Stream) reset() { s.ntail = 0 }

// validPrefix reports whether p (shorter than a full rune) can start a valid
// UTF-8 encoding.
func validPrefix(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	// Pad with the smallest continuation byte and ask whether some
	// completion is valid: try the range of the second byte allowed by
	// RFC 3629 for the lead byte.
	var buf [utf8.UTFMax]byte
	for second := byte(0x80); second <= 0xBF; second++ {
		n := copy(buf[:], p)
		if n == 1 {
			buf[1] = second
			n = 2
		}
		for ; n < utf8.UTFMax; n++ {
			buf[n] = 0x80
		}
		if len(p) >= 2 {
			// The second byte is fixed: only one completion to try.
			r, _ := utf8.DecodeRune(buf[:])
			return r != utf8.RuneError
		}
		if r, _ := utf8.DecodeRune(buf[:]); r != utf8.RuneError {
			return true
		}
	}
	return false
}
