package bench

import (
	"context"
	"testing"
	"time"
)

// TestPumpHoldsDrained: a chat worker's evDrained that arrives while the
// coordinator pumps for something else (the admission scenario waits for
// its storm workers' results meanwhile) is held for the pump that waits
// for the drain, also across a pump that re-offers held events and does
// not take it; other events a done does not take are dropped as before.
func TestPumpHoldsDrained(t *testing.T) {
	events := make(chan workerEvent, 8)
	co := &coordinator{pool: &workerPool{events: events}, progress: func(workerEvent) {}}
	ctx := context.Background()
	events <- workerEvent{idx: 0, w: wire{Ev: evDrained}}
	events <- workerEvent{idx: 1, w: wire{Ev: evReady}}
	events <- workerEvent{idx: 2, w: wire{Ev: evResult}}
	if err := co.pump(ctx, time.Second, func(ev workerEvent) bool { return ev.w.Ev == evResult }); err != nil {
		t.Fatal(err)
	}
	// A pump that takes nothing held: it re-offers the drained event.
	events <- workerEvent{idx: 3, w: wire{Ev: evReached}}
	if err := co.pump(ctx, time.Second, func(ev workerEvent) bool { return ev.w.Ev == evReached }); err != nil {
		t.Fatal(err)
	}
	var got []workerEvent
	err := co.pump(ctx, 100*time.Millisecond, func(ev workerEvent) bool {
		got = append(got, ev)
		return false
	})
	if err != errTimeout {
		t.Fatalf("pump: %v", err)
	}
	if len(got) != 1 || got[0].w.Ev != evDrained || got[0].idx != 0 {
		t.Fatalf("held for the last pump: %+v, want worker 0's drained only", got)
	}
}
