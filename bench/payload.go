package bench

import (
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// A chat message text is "ugb1 <k> <due> <sent> " padded with '.' to the
// configured size: k is the message number within its conversation and
// direction, due the time the schedule wanted it sent and sent the time
// the client wrote it, both in nanoseconds since the worker's clock base.
// The receiver, in the same process, computes latency from them and checks
// loss, duplicates and order by k.
const payloadMagic = "ugb1 "

// payload is the header of a message text.
type payload struct {
	k         int
	due, sent time.Duration
}

// appendPayload appends the text of p, padded to size bytes (never
// truncated: a too small size gives the bare header).
func appendPayload(dst []byte, p payload, size int) []byte {
	start := len(dst)
	dst = append(dst, payloadMagic...)
	dst = strconv.AppendInt(dst, int64(p.k), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(p.due), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(p.sent), 10)
	dst = append(dst, ' ')
	for n := size - (len(dst) - start); n > 0; n -= len(padding) {
		dst = append(dst, padding[:min(n, len(padding))]...)
	}
	return dst
}

var padding = strings.Repeat(".", 1024)

// parsePayload reverses appendPayload and checks the length and the
// padding.
func parsePayload(s string, size int) (payload, bool) {
	var p payload
	rest, found := strings.CutPrefix(s, payloadMagic)
	if !found {
		return p, false
	}
	var f [3]int64
	for i := range f {
		var field string
		field, rest, found = strings.Cut(rest, " ")
		if !found {
			return p, false
		}
		v, err := strconv.ParseInt(field, 10, 64)
		if err != nil || v < 0 {
			return p, false
		}
		f[i] = v
	}
	if strings.Trim(rest, ".") != "" || !(len(s) == size || (rest == "" && len(s) > size)) {
		return p, false
	}
	p.k, p.due, p.sent = int(f[0]), time.Duration(f[1]), time.Duration(f[2])
	return p, true
}

// replyTo reports whether an agent answers visitor message k when it
// answers the fraction f of them: exactly ⌊n·f⌋ of the first n messages,
// evenly spread.
func replyTo(k int, f float64) bool {
	if f <= 0 {
		return false
	}
	if f >= 1 {
		return true
	}
	return int(float64(k+1)*f) > int(float64(k)*f)
}

// bitset is a fixed-size set of message numbers 0..n-1.
type bitset struct {
	w []uint64
	n int
}

func newBitset(n int) bitset { return bitset{w: make([]uint64, (n+63)/64), n: n} }

// set adds i; false if i is out of range.
func (b bitset) set(i int) bool {
	if i < 0 || i >= b.n {
		return false
	}
	b.w[i/64] |= 1 << (i % 64)
	return true
}

func (b bitset) has(i int) bool {
	return i >= 0 && i < b.n && b.w[i/64]&(1<<(i%64)) != 0
}

func (b bitset) count() int {
	n := 0
	for _, w := range b.w {
		n += bits.OnesCount64(w)
	}
	return n
}

// or returns b ∪ o as a new set.
func (b bitset) or(o bitset) bitset {
	r := newBitset(b.n)
	for i := range r.w {
		r.w[i] = b.w[i]
		if i < len(o.w) {
			r.w[i] |= o.w[i]
		}
	}
	return r
}

// andNotCount returns |b \ o|.
func (b bitset) andNotCount(o bitset) int {
	n := 0
	for i, w := range b.w {
		if i < len(o.w) {
			w &^= o.w[i]
		}
		n += bits.OnesCount64(w)
	}
	return n
}

// andCount returns |b ∩ o|.
func (b bitset) andCount(o bitset) int {
	n := 0
	for i, w := range b.w {
		if i < len(o.w) {
			n += bits.OnesCount64(w & o.w[i])
		}
	}
	return n
}
