package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/gobwas/ws"
)

// An echo message carries its sequence number on the connection, its due
// time and its write time (nanoseconds since the worker's clock base),
// padded to the configured size with a fixed pattern, so the echo can be
// timed and checked byte for byte. Binary messages hold the three numbers
// as 8-byte big-endian integers (24 bytes); text messages as 16 hex digits
// each (48 bytes), so the text is ASCII.
const (
	echoHeaderBinary = 24
	echoHeaderText   = 48
	// echoMaxSize bounds -size: every server under test accepts 64 KiB.
	echoMaxSize = 64 << 10
)

// echoPad is the padding pattern: "abc…z" repeated.
var echoPad = func() []byte {
	b := make([]byte, echoMaxSize)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

// echoHeaderSize is the size of the header of a message.
func echoHeaderSize(text bool) int {
	if text {
		return echoHeaderText
	}
	return echoHeaderBinary
}

// echoMsg is the header of one echo message.
type echoMsg struct {
	seq       uint64
	due, sent time.Duration
}

const hexDigits = "0123456789abcdef"

// putEchoPayload writes the payload of m into p (len(p) is the message
// size, at least the header size).
func putEchoPayload(p []byte, m echoMsg, text bool) {
	n := echoHeaderSize(text)
	if text {
		for i, v := range [3]uint64{m.seq, uint64(m.due), uint64(m.sent)} {
			for j := range 16 {
				p[i*16+j] = hexDigits[(v>>(60-4*j))&0xf]
			}
		}
	} else {
		binary.BigEndian.PutUint64(p[0:], m.seq)
		binary.BigEndian.PutUint64(p[8:], uint64(m.due))
		binary.BigEndian.PutUint64(p[16:], uint64(m.sent))
	}
	copy(p[n:], echoPad)
}

// parseEchoPayload reverses putEchoPayload; ok is false when the length,
// a digit or a byte of the padding is wrong.
func parseEchoPayload(p []byte, size int, text bool) (m echoMsg, ok bool) {
	n := echoHeaderSize(text)
	if len(p) != size || size < n || !bytes.Equal(p[n:], echoPad[:size-n]) {
		return m, false
	}
	if !text {
		m.seq = binary.BigEndian.Uint64(p[0:])
		m.due = time.Duration(binary.BigEndian.Uint64(p[8:]))
		m.sent = time.Duration(binary.BigEndian.Uint64(p[16:]))
		return m, true
	}
	var v [3]uint64
	for i := range v {
		for j := range 16 {
			c := p[i*16+j]
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c >= 'a' && c <= 'f':
				d = c - 'a' + 10
			default:
				return m, false
			}
			v[i] = v[i]<<4 | uint64(d)
		}
	}
	return echoMsg{seq: v[0], due: time.Duration(v[1]), sent: time.Duration(v[2])}, true
}

// appendClientFrame appends one complete, masked client frame of op with
// a payload of n bytes and returns the buffer and the payload's offset in
// it. The caller fills the payload and then calls maskFrame.
func appendClientFrame(dst []byte, op ws.OpCode, n int) (out []byte, at int) {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, 0, 0, 0, 0) // mask key, set by maskFrame
	at = len(dst)
	for range n {
		dst = append(dst, 0)
	}
	return dst, at
}

// maskFrame sets the mask key of the frame whose payload starts at at and
// masks the payload in place.
func maskFrame(b []byte, at int, key uint32) {
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], key)
	copy(b[at-4:at], mask[:])
	ws.Cipher(b[at:], mask, 0)
}

// errMaskedServerFrame: RFC 6455 §5.1 forbids a server to mask its frames.
var errMaskedServerFrame = errors.New("masked frame from the server")

// readServerFrame reads one frame from the server into buf (reused) and
// returns its header and payload. hdr is scratch space of at least
// ws.MaxHeaderSize bytes (no allocation per frame).
func readServerFrame(br *bufio.Reader, hdr, buf []byte, max int) (ws.Header, []byte, error) {
	h, err := ws.ReadHeaderBuffer(br, hdr[:0:ws.MaxHeaderSize-2])
	if err != nil {
		return h, buf, err
	}
	if h.Masked {
		return h, buf, errMaskedServerFrame
	}
	if h.Length > int64(max) {
		return h, buf, fmt.Errorf("frame of %d bytes, more than %d", h.Length, max)
	}
	n := int(h.Length)
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(br, buf); err != nil {
		return h, buf, err
	}
	return h, buf, nil
}
