package netpoll

import (
	"testing"

	"github.com/gobwas/ws"
)

// TestLoopYieldPolicy: a loop yields (and writes what is queued) only
// after loopSlice of back-to-back callbacks; a gap of loopIdleGap starts
// a new stretch.
func TestLoopYieldPolicy(t *testing.T) {
	s, err := New(&echo{})
	if err != nil {
		t.Fatal(err)
	}
	l := &loopFlusher{}
	// A connection with a frame queued on this loop (gone: flush drops it).
	c := &Conn{srv: s, loop: l, gone: true}
	f := AcquireFrame()
	f.Seal(ws.OpText)
	c.pending, c.scheduled = []*Frame{f}, true
	l.conns, l.scheduled = []*Conn{c}, true

	us := int64(1000)
	step := func(start, end int64) {
		l.enter(s, start)
		l.lastExit = end
	}
	// Callbacks of 100 µs, back to back, from t=1ms: the first starts the
	// stretch; the one starting 500 µs into it yields.
	base := 1000 * us
	for i := range int64(5) {
		step(base+i*100*us, base+(i+1)*100*us)
	}
	if n := s.metrics.loopYields.Get(); n != 0 {
		t.Fatalf("%d yields after 500 µs of callbacks, want 0", n)
	}
	if len(l.conns) != 1 {
		t.Fatal("the queued connection was flushed before the slice was over")
	}
	l.enter(s, base+500*us)
	if n := s.metrics.loopYields.Get(); n != 1 {
		t.Fatalf("%d yields at 500 µs, want 1", n)
	}
	if len(l.conns) != 0 || len(c.pending) != 0 || l.scheduled {
		t.Fatalf("the yield did not write the queued frames: %d conns, %d frames", len(l.conns), len(c.pending))
	}
	// After an idle gap a new stretch starts: no yield however late.
	l.lastExit = base + 600*us
	l.enter(s, base+600*us+2*int64(loopIdleGap))
	if n := s.metrics.loopYields.Get(); n != 1 {
		t.Fatalf("%d yields after an idle gap, want still 1", n)
	}
}
