package broker

import (
	"github.com/VictoriaMetrics/metrics"

	"github.com/unigate/unigate/protocol"
)

// knownCodes are the error codes with a pre-registered counter, so that
// counting an error is a map read and an atomic add.
var knownCodes = []protocol.Code{
	protocol.CodeMalformed, protocol.CodeUnknownKind, protocol.CodeMissingField,
	protocol.CodeTooLarge, protocol.CodeInvalidUTF8, protocol.CodeTooMany, protocol.CodeNotHello,
	protocol.CodeUnauthenticated, protocol.CodeBadToken, protocol.CodeTokenExpired,
	protocol.CodeForbidden, protocol.CodeBadResumeToken,
	protocol.CodeUnknownConversation, protocol.CodeConversationClosed, protocol.CodeNotParticipant,
	protocol.CodeSeqFromFuture, protocol.CodeNoAgent, protocol.CodeAlreadyOpen, protocol.CodeBadTransition,
	protocol.CodeRateLimited, protocol.CodeQueueFull, protocol.CodeOverloaded,
	protocol.CodeInternal, protocol.CodeUnavailable, protocol.CodeShuttingDown, protocol.CodeUnconfirmed,
}

// brokerMetrics are the broker's unigate_broker_* metrics, in a Set of its
// own (several brokers may live in one test binary).
type brokerMetrics struct {
	set             *metrics.Set
	relayed         *metrics.Counter
	overload        *metrics.Counter
	malformedCloses *metrics.Counter
	encodeErrors    *metrics.Counter
	updatesDropped  *metrics.Counter
	floodCloses     *metrics.Counter
	// Cluster mode.
	clusterNotices    *metrics.Counter                   // messages received from other nodes
	clusterGaps       *metrics.Counter                   // notices after a gap (resync)
	shortReads        *metrics.Counter                   // history reads continued: a replica behind the stream's last (readStream)
	clusterConflicts  *metrics.Counter                   // record updates lost to another node
	appendConflicts   *metrics.Counter                   // appends that met another writer (resynced)
	forwarded         *metrics.Counter                   // sends forwarded to another node's writer
	replayFailures    *metrics.Counter                   // replays from the stream that failed (connections closed with 1013)
	lateForwards      *metrics.Counter                   // forwards stored by the writer that this node could not read in time (5003)
	clusterSlotsOwed  *metrics.Counter                   // agent slots not given back at once (pruned later)
	clusterStaleSlots *metrics.Counter                   // stale agent slots dropped by the heartbeat's prunes
	batches           *metrics.Counter                   // atomic batch appends (several sends in one)
	batched           *metrics.Counter                   // sends appended in those batches
	errors            map[protocol.Code]*metrics.Counter // read-only after newMetrics
}

func newMetrics(b *Broker) *brokerMetrics {
	s := metrics.NewSet()
	m := &brokerMetrics{
		set:             s,
		relayed:         s.NewCounter("unigate_broker_messages_relayed_total"),
		overload:        s.NewCounter("unigate_broker_overload_drops_total"),
		malformedCloses: s.NewCounter("unigate_broker_malformed_closes_total"),
		encodeErrors:    s.NewCounter("unigate_broker_encode_errors_total"),
		updatesDropped:  s.NewCounter("unigate_broker_updates_dropped_total"),
		floodCloses:     s.NewCounter("unigate_broker_flood_closes_total"),

		clusterNotices:    s.NewCounter("unigate_broker_cluster_notices_total"),
		clusterGaps:       s.NewCounter("unigate_broker_cluster_gaps_total"),
		shortReads:        s.NewCounter("unigate_broker_history_short_reads_total"),
		clusterConflicts:  s.NewCounter("unigate_broker_cluster_conflicts_total"),
		appendConflicts:   s.NewCounter("unigate_broker_cluster_append_conflicts_total"),
		forwarded:         s.NewCounter("unigate_broker_cluster_forwarded_total"),
		lateForwards:      s.NewCounter("unigate_broker_cluster_late_forwards_total"),
		replayFailures:    s.NewCounter("unigate_broker_history_replay_failures_total"),
		clusterSlotsOwed:  s.NewCounter("unigate_broker_cluster_slots_owed_total"),
		clusterStaleSlots: s.NewCounter("unigate_broker_cluster_stale_slots_total"),
		batches:           s.NewCounter("unigate_broker_history_batches_total"),
		batched:           s.NewCounter("unigate_broker_history_batched_total"),
		errors:            make(map[protocol.Code]*metrics.Counter, len(knownCodes)),
	}
	for _, c := range knownCodes {
		m.errors[c] = s.NewCounter(errorMetric(c))
	}
	gauge := func(name string, f func() int64) {
		s.NewGauge(name, func() float64 { return float64(f()) })
	}
	gauge("unigate_broker_connections", b.conns.Load)
	gauge("unigate_broker_sessions", b.sessions.Load)
	gauge("unigate_broker_agents_online", b.disp.online.Load)
	gauge("unigate_broker_queue_length", b.disp.queueLen.Load)
	for _, st := range []protocol.State{protocol.StateQueued, protocol.StateAssigned, protocol.StateTransferred, protocol.StateClosed} {
		gauge(`unigate_broker_conversations{state="`+st.String()+`"}`, b.convStates[st].Load)
	}
	return m
}

func errorMetric(c protocol.Code) string {
	return `unigate_broker_errors_total{code="` + c.String() + `"}`
}

// countError counts one Error envelope sent with code c.
func (m *brokerMetrics) countError(c protocol.Code) {
	if ctr := m.errors[c]; ctr != nil {
		ctr.Inc()
		return
	}
	m.set.GetOrCreateCounter(errorMetric(c)).Inc()
}
