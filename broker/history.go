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

func (m *message) size() int { return len(m.cmid) + len(m.text) }

// history is a ring of the last messages of a conversation, in sequence
// order with no gaps, bounded both in messages (max) and in bytes of
// text and client message ids (maxBytes): the oldest messages are dropped
// to make room. The newest message is always kept. The durable broker
// replaces it with a JetStream stream; it is owned by the conversation's
// shard.
type history struct {
	buf      []message // ring storage; grows up to max entries
	start    int       // index of the oldest message
	n        int       // number of stored messages
	bytes    int
	max      int
	maxBytes int
}

func newHistory(max, maxBytes int) history {
	return history{max: max, maxBytes: maxBytes}
}

// len returns the number of stored messages.
func (h *history) len() int { return h.n }

// push appends m and records its client message id in dedupe, first
// dropping the oldest messages while the ring is full or m would not fit
// in the byte budget. The client message ids of dropped messages are
// deleted from dedupe (so it holds exactly the ids of stored messages). The ring holds one run of consecutive seqs, which
// get relies on: m at or before the newest is ignored (already stored),
// and m after a gap (messages this ring never saw, such as ones
// retention discarded before a resync read them) starts the ring again
// at m.
func (h *history) push(m message, dedupe map[dedupeKey]uint64) {
	if h.n > 0 {
		switch newest := h.at(h.n - 1).seq; {
		case m.seq <= newest:
			return
		case m.seq > newest+1:
			h.clear(dedupe)
		}
	}
	size := m.size()
	for h.n > 0 && (h.n == h.max || h.bytes+size > h.maxBytes) {
		old := &h.buf[h.start]
		if old.cmid != "" {
			delete(dedupe, dedupeKey{old.senderID, old.cmid})
		}
		h.bytes -= old.size()
		*old = message{}
		if h.start++; h.start == len(h.buf) {
			h.start = 0
		}
		h.n--
	}
	if h.n == len(h.buf) {
		h.grow()
	}
	h.buf[h.index(h.n)] = m
	h.n++
	h.bytes += size
	if m.cmid != "" {
		dedupe[dedupeKey{m.senderID, m.cmid}] = m.seq
	}
}

// grow doubles the ring (up to max), putting the messages in order at the
// start of the new buffer.
func (h *history) grow() {
	size := min(max(2*len(h.buf), 8), h.max)
	buf := make([]message, size)
	for i := range h.n {
		buf[i] = *h.at(i)
	}
	h.buf, h.start = buf, 0
}

func (h *history) index(i int) int {
	j := h.start + i
	if j >= len(h.buf) {
		j -= len(h.buf)
	}
	return j
}

// at returns the i-th oldest stored message.
func (h *history) at(i int) *message { return &h.buf[h.index(i)] }

// firstSeq returns the seq of the oldest stored message, 0 if none.
func (h *history) firstSeq() uint64 {
	if h.n == 0 {
		return 0
	}
	return h.at(0).seq
}

// get returns the message with sequence number seq, if still stored.
func (h *history) get(seq uint64) (*message, bool) {
	first := h.firstSeq()
	if h.n == 0 || seq < first || seq-first >= uint64(h.n) {
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
	if h.n > 0 && after >= first {
		if after-first >= uint64(h.n) {
			return
		}
		i = int(after-first) + 1
	}
	for ; i < h.n; i++ {
		fn(h.at(i))
	}
}

// clear drops every message, and their client message ids from dedupe,
// keeping the buffer.
func (h *history) clear(dedupe map[dedupeKey]uint64) {
	for i := range h.n {
		old := h.at(i)
		if old.cmid != "" {
			delete(dedupe, dedupeKey{old.senderID, old.cmid})
		}
		*old = message{}
	}
	h.start, h.n, h.bytes = 0, 0, 0
}

// reset drops every message and the buffer.
func (h *history) reset() {
	*h = history{max: h.max, maxBytes: h.maxBytes}
}
