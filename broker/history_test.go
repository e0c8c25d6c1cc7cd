package broker

import (
	"slices"
	"testing"
	"unsafe"
)

func TestHistory(t *testing.T) {
	h := newHistory(3)
	var dropped []uint64
	for seq := uint64(1); seq <= 5; seq++ {
		if old, ok := h.push(message{seq: seq}); ok {
			dropped = append(dropped, old.seq)
		}
	}
	if !slices.Equal(dropped, []uint64{1, 2}) {
		t.Fatalf("dropped %v, want [1 2]", dropped)
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
	var empty history
	empty.after(0, func(*message) { t.Fatal("empty history replayed something") })
	if _, ok := empty.get(1); ok {
		t.Fatal("empty history found seq 1")
	}
}

func TestCloneTwoNeverAliases(t *testing.T) {
	buf := []byte("cmid-1hello")
	a, b := unsafe.String(&buf[0], 6), unsafe.String(&buf[6], 5)
	for _, tc := range [][2]string{{a, b}, {"", b}, {a, ""}} {
		x, y := cloneTwo(tc[0], tc[1])
		if x != tc[0] || y != tc[1] {
			t.Fatalf("cloneTwo(%q, %q) = %q, %q", tc[0], tc[1], x, y)
		}
		for _, s := range []string{x, y} {
			if s != "" && uintptr(unsafe.Pointer(unsafe.StringData(s))) >= uintptr(unsafe.Pointer(&buf[0])) &&
				uintptr(unsafe.Pointer(unsafe.StringData(s))) < uintptr(unsafe.Pointer(&buf[0]))+uintptr(len(buf)) {
				t.Fatalf("cloneTwo result %q aliases the input buffer", s)
			}
		}
	}
}
