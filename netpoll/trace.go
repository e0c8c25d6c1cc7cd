package netpoll

import (
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// epoch is the origin of Nanotime. One second back, so that no stamp is 0
// (a zero Trace.Read means "not traced").
var epoch = time.Now().Add(-time.Second)

// Nanotime returns the monotonic time in nanoseconds that Trace stamps
// hold. It reads the clock (a vDSO call, tens of ns) and never allocates.
func Nanotime() int64 { return int64(time.Since(epoch)) }

// Trace is the relay timing of the message a Frame delivers, as
// monotonic stamps (Nanotime) carried from the sender's event loop
// through the handler's workers to the recipient's. A zero Read means the
// frame is not traced. The handler fills it before Send and does not
// change it afterwards (a frame shared by several connections carries one
// Trace); the recipient's event loop adds the last two stamps when it
// writes the frame and observes every stage in
// unigate_relay_stage_seconds (see RelayStages).
type Trace struct {
	// Read: the sender's event loop began the read pass (OnTraffic) that
	// carried the message (Conn.ReadAt).
	Read int64
	// Picked: a worker (the broker's shard) took the message from its
	// queue.
	Picked int64
	// Stored: the message was stored (durable: the append's completion
	// ran, on the store's goroutine).
	Stored int64
	// Handled: the worker took up the stored message again (durable: the
	// completion came out of its mailbox).
	Handled int64
	// Queued: the frame was handed to Conn.Send.
	Queued int64
}

// RelayStages are the stages of unigate_relay_stage_seconds, in the
// order a message goes through them. Each traced frame written to a
// connection observes every stage once:
//
//	inbox     Read → Picked: decode on the loop, the worker's queue
//	store     Picked → Stored: the worker's handling, and with durable
//	          history the conversation's append queue and the append
//	appended  Stored → Handled: the completion's wait in the worker's mailbox
//	handoff   Queued → the recipient's loop began writing the connection
//	          (its task queue, the other connections flushed before it)
//	write     the writev of the connection's queued frames
//	total     Read → written
//
// The stages add up to at most total (Handled → Queued, encoding the
// delivery, is not a stage of its own).
var RelayStages = [...]string{"inbox", "store", "appended", "handoff", "write", "total"}

// relayBuckets are the upper bounds of the stage histograms: 1-2-5 steps
// from 5 µs to 5 s.
var relayBuckets = []float64{
	5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6,
	1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3,
	1, 2, 5,
}

// relayMetrics are the stage histograms, in the order of RelayStages.
type relayMetrics [len(RelayStages)]*metrics.PrometheusHistogram

func newRelayMetrics(set *metrics.Set) relayMetrics {
	var r relayMetrics
	for i, st := range RelayStages {
		r[i] = set.NewPrometheusHistogramExt(`unigate_relay_stage_seconds{stage="`+st+`"}`, relayBuckets)
	}
	return r
}

// traced reports whether every stamp of t is set.
func (t *Trace) traced() bool {
	return t.Read != 0 && t.Picked != 0 && t.Stored != 0 && t.Handled != 0 && t.Queued != 0
}

// observe records the stages of one traced frame that the loop began
// writing at flushAt and finished at wrote.
func (r *relayMetrics) observe(t *Trace, flushAt, wrote int64) {
	stamps := [...]int64{t.Picked - t.Read, t.Stored - t.Picked, t.Handled - t.Stored, flushAt - t.Queued, wrote - flushAt, wrote - t.Read}
	for i, d := range stamps {
		r[i].Update(float64(max(d, 0)) / 1e9)
	}
}
