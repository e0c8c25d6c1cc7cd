package broker

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

func seqs(h *history) []uint64 {
	var s []uint64
	h.after(0, func(m *message) { s = append(s, m.seq) })
	return s
}

func TestHistoryRing(t *testing.T) {
	h := newHistory(3, 1<<20)
	dedupe := map[dedupeKey]uint64{}
	for seq := uint64(1); seq <= 5; seq++ {
		m := message{seq: seq, senderID: "u", cmid: string(rune('a' + seq)), text: "x"}
		h.push(m, dedupe)
		dedupe[dedupeKey{"u", m.cmid}] = seq
	}
	if got := seqs(&h); !slices.Equal(got, []uint64{3, 4, 5}) {
		t.Fatalf("stored %v, want [3 4 5]", got)
	}
	if len(dedupe) != 3 {
		t.Fatalf("dedupe holds %d ids, want the 3 stored ones", len(dedupe))
	}
	if h.len() != 3 || h.firstSeq() != 3 {
		t.Fatalf("len %d first %d, want 3 and 3", h.len(), h.firstSeq())
	}
	tests := []struct {
		after uint64
		want  []uint64
	}{
		{0, []uint64{3, 4, 5}}, // older ones are gone: replay what is left
		{2, []uint64{3, 4, 5}},
		{3, []uint64{4, 5}},
		{4, []uint64{5}},
		{5, nil},
		{99, nil},
	}
	for _, tt := range tests {
		var got []uint64
		h.after(tt.after, func(m *message) { got = append(got, m.seq) })
		if !slices.Equal(got, tt.want) {
			t.Errorf("after(%d) = %v, want %v", tt.after, got, tt.want)
		}
	}
	for _, seq := range []uint64{3, 4, 5} {
		if m, ok := h.get(seq); !ok || m.seq != seq {
			t.Errorf("get(%d) = %v, %v", seq, m, ok)
		}
	}
	for _, seq := range []uint64{0, 1, 2, 6} {
		if _, ok := h.get(seq); ok {
			t.Errorf("get(%d) found a message", seq)
		}
	}
}

func TestHistoryBytes(t *testing.T) {
	h := newHistory(100, 10)
	for seq := uint64(1); seq <= 4; seq++ {
		h.push(message{seq: seq, text: "abcd"}, nil) // 4 bytes each: two fit
	}
	if got := seqs(&h); !slices.Equal(got, []uint64{3, 4}) || h.bytes != 8 {
		t.Fatalf("stored %v (%d bytes), want [3 4] (8 bytes)", got, h.bytes)
	}
	// A message over the whole budget is still kept, alone.
	h.push(message{seq: 5, text: strings.Repeat("x", 50)}, nil)
	if got := seqs(&h); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("stored %v, want [5]", got)
	}
}

func TestHistoryEmpty(t *testing.T) {
	var h history
	h.after(0, func(*message) { t.Fatal("empty history replayed something") })
	if _, ok := h.get(1); ok {
		t.Fatal("empty history found seq 1")
	}
	h = newHistory(2, 100)
	h.push(message{seq: 1}, nil)
	h.reset()
	if h.len() != 0 || seqs(&h) != nil {
		t.Fatal("reset kept messages")
	}
}

func TestCloneTwoNeverAliases(t *testing.T) {
	buf := []byte("cmid-1hello")
	a, b := unsafe.String(&buf[0], 6), unsafe.String(&buf[6], 5)
	lo, hi := uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&buf[0]))+uintptr(len(buf))
	for _, tc := range [][2]string{{a, b}, {"", b}, {a, ""}} {
		x, y := cloneTwo(tc[0], tc[1])
		if x != tc[0] || y != tc[1] {
			t.Fatalf("cloneTwo(%q, %q) = %q, %q", tc[0], tc[1], x, y)
		}
		for _, s := range []string{x, y} {
			if p := uintptr(unsafe.Pointer(unsafe.StringData(s))); s != "" && p >= lo && p < hi {
				t.Fatalf("cloneTwo result %q aliases the input buffer", s)
			}
		}
	}
}

// TestHistoryRunOfSeqs: the ring holds one run of consecutive seqs, which
// get relies on. A message at or before the newest is ignored; one after a
// gap starts the ring again (and its dropped ids leave dedupe).
func TestHistoryRunOfSeqs(t *testing.T) {
	h := newHistory(10, 1<<20)
	dedupe := map[dedupeKey]uint64{}
	push := func(seq uint64) {
		h.push(message{seq: seq, senderID: "u", cmid: fmt.Sprint("m", seq)}, dedupe)
	}
	for _, seq := range []uint64{1, 2, 3, 2, 3} {
		push(seq)
	}
	if got := seqs(&h); !slices.Equal(got, []uint64{1, 2, 3}) || len(dedupe) != 3 {
		t.Fatalf("after repeats: %v, dedupe %v; want [1 2 3] and 3 ids", got, dedupe)
	}
	push(7)
	if got := seqs(&h); !slices.Equal(got, []uint64{7}) {
		t.Fatalf("after a gap: %v, want [7]", got)
	}
	if len(dedupe) != 1 || dedupe[dedupeKey{"u", "m7"}] != 7 {
		t.Fatalf("dedupe after a gap: %v, want only m7", dedupe)
	}
	push(8)
	for _, seq := range []uint64{7, 8} {
		if m, ok := h.get(seq); !ok || m.seq != seq {
			t.Fatalf("get(%d) = %v, %v", seq, m, ok)
		}
	}
	if _, ok := h.get(3); ok {
		t.Fatal("get(3) found a message dropped by the gap")
	}
}
