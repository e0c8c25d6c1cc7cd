package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

var testRules = []positionRule{{Exact: 100, Step: 10}, {Exact: 7, Step: 3}, {Exact: 1, Step: 1}, {Exact: 1000, Step: 1000}}

func TestPositionsSent(t *testing.T) {
	for _, r := range testRules {
		for lo := -2; lo < 260; lo += 3 {
			for hi := lo - 2; hi < 400; hi += 7 {
				want, first := 0, 0
				for q := lo; q <= hi; q++ {
					if r.sent(q) {
						want++
						if first == 0 {
							first = q
						}
					}
				}
				if got := r.count(lo, hi); got != want {
					t.Fatalf("%+v: count(%d, %d) = %d, want %d", r, lo, hi, got, want)
				}
				if got := r.first(lo, hi); got != first {
					t.Fatalf("%+v: first(%d, %d) = %d, want %d", r, lo, hi, got, first)
				}
			}
		}
	}
	// A queue of 10,000 losing its head: the first 100 places, then every
	// 10th of the 9,899 behind; with step 1 everybody behind.
	def := positionRule{Exact: 100, Step: 10}
	if got := def.updatesAfter(10000); got != 100+989 {
		t.Errorf("updatesAfter(10000) = %d, want 1089", got)
	}
	if def.updatesAfter(1) != 0 || def.updatesAfter(2) != 1 {
		t.Errorf("updatesAfter(1), (2) = %d, %d", def.updatesAfter(1), def.updatesAfter(2))
	}
	if got := (positionRule{Exact: 1, Step: 1}).updatesAfter(10000); got != 9999 {
		t.Errorf("every place: updatesAfter(10000) = %d, want 9999", got)
	}
}

// TestFanoutAccounting: what the visitors expect one by one (a worker's
// view) adds up to what the schedule makes the broker send (the
// coordinator's view), for any queue and number of triggers.
func TestFanoutAccounting(t *testing.T) {
	for _, tc := range []struct {
		visitors, triggers int
		rule               positionRule
	}{
		{2, 1, testRules[0]}, {50, 49, testRules[0]}, {300, 125, testRules[0]}, {1000, 10, testRules[0]},
		{5000, 3000, testRules[0]}, {10000, 9999, testRules[0]},
		{300, 125, testRules[1]}, {1000, 10, testRules[2]}, {5000, 3000, testRules[3]},
	} {
		w := &fanoutWorker{job: &fanoutJob{fanoutSchedule: fanoutSchedule{Triggers: tc.triggers}, Rule: tc.rule}}
		for p := 1; p <= tc.visitors; p++ {
			w.visitors = append(w.visitors, &fanVisitor{p0: p})
		}
		w.prepare()
		var perVisitor, perTrigger int64
		for _, v := range w.visitors {
			perVisitor += int64(w.expected(v))
			if v.leaver != (v.p0 <= tc.triggers) {
				t.Fatalf("%+v: visitor %d leaver %v", tc, v.p0, v.leaver)
			}
			if !v.leaver && v.final != 0 && (!tc.rule.sent(v.final) || v.final < v.p0-tc.triggers || v.final >= v.p0) {
				t.Fatalf("%+v: visitor %d final position %d", tc, v.p0, v.final)
			}
		}
		for s := 1; s <= tc.triggers; s++ {
			perTrigger += int64(tc.rule.updatesAfter(tc.visitors - s + 1))
		}
		if perVisitor != perTrigger {
			t.Errorf("%+v: visitors expect %d updates, the triggers cause %d", tc, perVisitor, perTrigger)
		}
	}
}

func TestFanoutSchedule(t *testing.T) {
	c := FanoutConfig{Common: Common{URL: "ws://127.0.0.1:1/ws"}, Visitors: 1000, Rate: 100, Duration: 2 * time.Second, Warmup: 500 * time.Millisecond}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	s := c.schedule()
	if s.Triggers != 250 {
		t.Fatalf("%d triggers, want 250", s.Triggers)
	}
	measured := 0
	for i := 1; i <= s.Triggers; i++ {
		if s.measured(i) {
			measured++
		}
		if i > 1 && s.due(i)-s.due(i-1) != 10*time.Millisecond {
			t.Fatalf("trigger %d due %v after %v", i, s.due(i), s.due(i-1))
		}
	}
	if measured != 200 || s.measured(50) || !s.measured(51) || !s.measured(250) {
		t.Errorf("%d measured triggers, want 200 (51..250)", measured)
	}
	if c.Tenant == "" || c.Tenant == (&FanoutConfig{}).Tenant {
		t.Errorf("tenant %q", c.Tenant)
	}
}

func TestFanoutConfigErrors(t *testing.T) {
	for i, c := range []FanoutConfig{
		{},
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, Visitors: 100, Rate: 100, Duration: time.Second},           // 300 triggers
		{Common: Common{URL: "ws://127.0.0.1:1/ws", Procs: 5}, Visitors: 4},                                     // procs > visitors
		{Common: Common{URL: "ws://127.0.0.1:1/ws"}, Visitors: 100, Rate: 1, Tenant: string(make([]byte, 129))}, // tenant
	} {
		if err := c.setDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("config %d: err %v, want ErrConfig", i, err)
		}
	}
}

// TestFanoutDrainAfterSchedule: a worker none of whose visitors leave
// (they all joined behind the leavers, on other workers) still waits for
// the whole schedule before its drain starts; its drain used to start at
// once, so with a drain shorter than the schedule it reported every later
// trigger's updates as gaps.
func TestFanoutDrainAfterSchedule(t *testing.T) {
	sch := fanoutSchedule{Rate: 20, Triggers: 6}
	w := &fanoutWorker{
		job:     &fanoutJob{fanoutSchedule: sch, Drain: 30 * time.Millisecond, Rule: testRules[0]},
		base:    time.Now(),
		errs:    newReasonCounter(),
		last:    make([]atomic.Int64, sch.Triggers),
		sendLag: newLatencyHist(),
	}
	for p := 10; p < 14; p++ {
		w.visitors = append(w.visitors, &fanVisitor{p0: p})
	}
	w.prepare()
	t0 := w.now()
	w.tl.Store(&fanTimeline{t0: t0, wStart: t0, wEnd: t0 + time.Second})
	w.run(context.Background())
	if end, now := t0+sch.due(sch.Triggers), w.now(); now < end+w.job.Drain {
		t.Fatalf("the drain ended %v after the start, before the schedule's last trigger (%v) plus the drain (%v)", now-t0, end-t0, w.job.Drain)
	}
}
