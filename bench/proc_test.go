package bench

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestCoordinatorHoldsEarlyEvents: a worker may report its result while
// the coordinator is still waiting out its own timeline (a chat worker
// whose last message is due before the measured window ends). The wait
// must not swallow it: the next pump gets it. Swallowing it made the sweep
// end-to-end test hang at "collecting results".
func TestCoordinatorHoldsEarlyEvents(t *testing.T) {
	ctx := context.Background()
	pool := &workerPool{events: make(chan workerEvent, 8)}
	progress := 0
	co := &coordinator{pool: pool, progress: func(workerEvent) { progress++ }}
	pool.events <- workerEvent{idx: 0, w: wire{Ev: evProgress}}
	pool.events <- workerEvent{idx: 0, w: wire{Ev: evResult, ChatResult: &chatResult{}}}
	pool.events <- workerEvent{idx: 0, w: wire{Ev: evExit}} // after its result: expected
	pool.events <- workerEvent{idx: 1, w: wire{Ev: evProgress}}
	if err := co.wait(ctx, 50*time.Millisecond); err != nil {
		t.Fatalf("wait: %v", err)
	}
	pool.events <- workerEvent{idx: 1, w: wire{Ev: evResult, ChatResult: &chatResult{}}}
	var got []int
	err := co.pump(ctx, time.Minute, func(ev workerEvent) bool {
		if ev.w.Ev == evResult {
			got = append(got, ev.idx)
		}
		return len(got) == 2
	})
	if err != nil || len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("pump: %v, results from workers %v, want [0 1]", err, got)
	}
	if progress != 2 || len(co.held) != 0 {
		t.Errorf("%d progress events handled, %d events still held", progress, len(co.held))
	}
}

// TestCoordinatorFailsOnEarlyExit: a worker that exits without a result
// fails the run even while the coordinator only waits.
func TestCoordinatorFailsOnEarlyExit(t *testing.T) {
	pool := &workerPool{events: make(chan workerEvent, 2)}
	co := &coordinator{pool: pool, progress: func(workerEvent) {}}
	pool.events <- workerEvent{idx: 1, w: wire{Ev: evExit, Err: "killed"}}
	if err := co.wait(context.Background(), time.Minute); !errors.Is(err, ErrWorker) {
		t.Fatalf("wait: %v, want ErrWorker", err)
	}
}
