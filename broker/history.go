package broker

import "github.com/unigate/unigate/protocol"

// message is one stored chat message. Its strings are owned by the broker
// (never aliasing a request buffer): cmid and text share one allocation.
type message struct {
	seq        uint64
	senderID   string
	senderRole protocol.Role
	cmid       string
	text       string
	ts         int64 // unix milliseconds
}

// history is a ring of the last messages of a conversation, in sequence
// order with no gaps. It grows up to max entries, then overwrites the
// oldest. The durable broker replaces it with a JetStream stream; it is
// owned by the conversation's shard.
type history struct {
	buf   []message
	start int // index of the oldest message when the ring is full
	max   int
}

func newHistory(max int) history {
	return history{max: max}
}

// len returns the number of stored messages.
func (h *history) len() int { return len(h.buf) }

// push appends m, whose seq must be one more than the last one's. When
// the ring is full it returns the dropped oldest message and true.
func (h *history) push(m message) (message, bool) {
	if len(h.buf) < h.max {
		h.buf = append(h.buf, m)
		return message{}, false
	}
	old := h.buf[h.start]
	h.buf[h.start] = m
	h.start++
	if h.start == len(h.buf) {
		h.start = 0
	}
	return old, true
}

// at returns the i-th oldest stored message.
func (h *history) at(i int) *message {
	j := h.start + i
	if j >= len(h.buf) {
		j -= len(h.buf)
	}
	return &h.buf[j]
}

// firstSeq returns the seq of the oldest stored message, 0 if none.
func (h *history) firstSeq() uint64 {
	if len(h.buf) == 0 {
		return 0
	}
	return h.at(0).seq
}

// get returns the message with sequence number seq, if still stored.
func (h *history) get(seq uint64) (*message, bool) {
	first := h.firstSeq()
	if len(h.buf) == 0 || seq < first || seq-first >= uint64(len(h.buf)) {
		return nil, false
	}
	return h.at(int(seq - first)), true
}

// after calls fn for every stored message with seq > after, oldest first.
// Messages already dropped from the ring are skipped silently: the
// in-memory broker cannot replay them.
func (h *history) after(after uint64, fn func(*message)) {
	first := h.firstSeq()
	i := 0
	if after >= first {
		if after-first >= uint64(len(h.buf)) {
			return
		}
		i = int(after-first) + 1
	}
	for ; i < len(h.buf); i++ {
		fn(h.at(i))
	}
}

// reset drops every message and the buffer.
func (h *history) reset() {
	h.buf = nil
	h.start = 0
}
