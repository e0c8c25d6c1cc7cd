package bench

import "testing"

func TestLiveProgress(t *testing.T) {
	l := newLiveProgress[chatProgress](3)
	if n, _, _ := l.takeInterval(); n != 0 {
		t.Fatalf("empty interval: %d values", n)
	}
	l.set(0, chatProgress{Phase: "run", Sent: 5, Acked: 4}, sparseHist{{1000, 2}})
	l.set(1, chatProgress{Phase: "setup", Sent: 7}, sparseHist{{3000, 1}})
	l.set(2, chatProgress{Sent: 1, Errors: 1}, nil)
	l.set(1, chatProgress{Phase: "run", Sent: 8}, nil) // the newest report replaces the older
	s := l.sum()
	if s.Phase != "run" || s.Sent != 14 || s.Acked != 4 || s.Errors != 1 {
		t.Fatalf("sum %+v, want phase run, sent 14, acked 4, errors 1", s)
	}
	if n, p50, p99 := l.takeInterval(); n != 3 || p50 < 0.99 || p50 > 1.01 || p99 < 2.99 || p99 > 3.01 { // HDR buckets: within 1 %
		t.Fatalf("interval: %d values, p50 %v ms, p99 %v ms; want 3, ~1, ~3", n, p50, p99)
	}
	if n, _, _ := l.takeInterval(); n != 0 {
		t.Fatalf("after a take: %d values", n)
	}
}
