package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/broker/histstore"
)

// HookEvents is the durable queue of hook events (Backends.Events): one
// JetStream stream with work-queue retention, split into partitions by
// conversation (visitor events by visitor), each read through its own
// durable pull consumer that lets one event at a time be unacknowledged
// (MaxAckPending 1). So:
//
//   - an event is stored (file storage, replicated like the history) a
//     moment after it happens, and survives a crash of the node;
//   - every node of a cluster pulls from the same consumers, and JetStream
//     hands each event to one of them: one node delivers it, and another
//     one only if the first did not acknowledge it in time (at least once);
//   - the events of one conversation are in one partition and are handed
//     out strictly in order: the next one only once the previous one was
//     acknowledged, a failed delivery is redelivered (after a back-off the
//     delivering node asks for) before anything behind it;
//   - the stream holds at most MaxEvents events; beyond that a new event is
//     refused (DiscardNew), dropped and counted by the broker.
//
// A HookEvents is safe for concurrent use. OpenHookEvents creates or
// updates the stream and its consumers.
type HookEvents struct {
	js      jetstream.JetStream // own publisher (its async window is ours)
	stream  string
	prefix  string // "<SubjectPrefix>."
	cons    []jetstream.Consumer
	sealer  histstore.Sealer
	seal    bool
	ackWait time.Duration
	// waits: the asynchronous publishes (publishAsync) waiting for their
	// PubAck, in order, for awaitPubs.
	waits chan asyncPub
}

// HookEventsOptions configures OpenHookEvents. Zero values select the
// defaults.
type HookEventsOptions struct {
	// Stream is the stream's name (default DefaultHookStream).
	Stream string
	// SubjectPrefix is the first subject token (default "hookev"): events
	// are stored on <prefix>.<partition>.
	SubjectPrefix string
	// Partitions is the number of partitions, each delivered in order,
	// one event at a time (default DefaultHookPartitions). Every node of
	// a cluster must use the same number; events stored under a larger
	// number earlier are not delivered after it shrinks.
	Partitions int
	// MaxEvents bounds the events stored and not yet delivered (default
	// DefaultEventQueue); an event beyond it is refused.
	MaxEvents int64
	// Replicas is the stream's replication factor (default 1).
	Replicas int
	// AckWait is how long a node may hold an event before JetStream hands
	// it to another node (default DefaultHookAckWait). It must exceed a
	// hook call's timeout.
	AckWait time.Duration
	// DuplicateWindow is how long the stream drops a re-published event
	// id (default 2 minutes).
	DuplicateWindow time.Duration
	// Sealer and SealText: with both, message texts in events are stored
	// sealed (encryption at rest, as in the history); with only Sealer,
	// sealed events written earlier stay readable.
	Sealer   histstore.Sealer
	SealText bool
}

// Defaults of HookEventsOptions.
const (
	DefaultHookStream     = "UNIGATE_HOOK_EVENTS"
	DefaultHookPartitions = 8
	DefaultHookAckWait    = 30 * time.Second
)

// Bounds of a stored event, checked when it is read back.
const (
	maxHookField = 1024    // ids, tenant, attribute keys and values
	maxHookText  = 1 << 20 // the message text
	maxHookAttrs = 32
	// hookEventVersion is the record's format ("v").
	hookEventVersion = 1
)

// ErrBadHookEvent is returned (wrapped) for a stored event that cannot be
// read: not one of ours, truncated, or out of bounds.
var ErrBadHookEvent = errors.New("broker: malformed hook event record")

// maxAsyncPubs bounds the events published and not answered yet (the
// spooler's batches and publishAsync's).
const maxAsyncPubs = 4096

// errHookFull: the stream holds MaxEvents events.
var errHookFull = errors.New("broker: hook event stream full")

// OpenHookEvents creates (or updates) the stream and one durable consumer
// per partition.
func OpenHookEvents(ctx context.Context, js jetstream.JetStream, o HookEventsOptions) (*HookEvents, error) {
	if o.Stream == "" {
		o.Stream = DefaultHookStream
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = "hookev"
	}
	if o.Partitions <= 0 {
		o.Partitions = DefaultHookPartitions
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = DefaultEventQueue
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultHookAckWait
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = 2 * time.Minute
	}
	if o.SealText && o.Sealer == nil {
		return nil, errors.New("broker: hook events: SealText without a Sealer")
	}
	own, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncMaxPending(maxAsyncPubs))
	if err != nil {
		return nil, err
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        o.Stream,
		Description: "Unigate hook events waiting for delivery",
		Subjects:    []string{o.SubjectPrefix + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     o.MaxEvents,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
	})
	if err != nil {
		return nil, fmt.Errorf("broker: hook event stream %s: %w", o.Stream, err)
	}
	h := &HookEvents{
		js: own, stream: o.Stream, prefix: o.SubjectPrefix + ".",
		sealer: o.Sealer, seal: o.SealText, ackWait: o.AckWait,
		waits: make(chan asyncPub, maxAsyncPubs),
	}
	for p := range o.Partitions {
		c, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable:       "hook-" + strconv.Itoa(p),
			Description:   "Unigate hook event delivery, partition " + strconv.Itoa(p),
			FilterSubject: h.prefix + strconv.Itoa(p),
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       o.AckWait,
			MaxAckPending: 1, // in order: the next event once this one is acked
			MaxDeliver:    -1,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return nil, fmt.Errorf("broker: hook event consumer %d: %w", p, err)
		}
		h.cons = append(h.cons, c)
	}
	return h, nil
}

// Partitions returns the number of partitions.
func (h *HookEvents) Partitions() int { return len(h.cons) }

// partition returns the partition of ev: its conversation's, else its
// visitor's.
func (h *HookEvents) partition(ev *backends.Event) int {
	key := ev.ConversationID
	if key == "" {
		key = ev.VisitorID
	}
	return int(hashString(key) % uint32(len(h.cons)))
}

// hookRecord is an event as stored: JSON, the text sealed when encryption
// at rest is on.
type hookRecord struct {
	V       int               `json:"v"`
	ID      string            `json:"id"`
	Type    string            `json:"type"`
	Tenant  string            `json:"tenant,omitempty"`
	Conv    string            `json:"conv,omitempty"`
	Visitor string            `json:"visitor,omitempty"`
	Agent   string            `json:"agent,omitempty"`
	From    string            `json:"from,omitempty"`
	Msg     string            `json:"msg,omitempty"`
	Text    string            `json:"text,omitempty"`
	Sealed  []byte            `json:"sealed,omitempty"`
	At      int64             `json:"at"` // unix milliseconds
	Attrs   map[string]string `json:"attrs,omitempty"`
}

// hookTextAAD binds a sealed text to its event id.
func hookTextAAD(id string) []byte {
	return append([]byte("unigate/hookev/v1/text\x00"), id...)
}

// encode returns the stored form of ev.
func (h *HookEvents) encode(ev *backends.Event) ([]byte, error) {
	r := hookRecord{
		V: hookEventVersion, ID: ev.ID, Type: ev.Type.String(), Tenant: ev.Tenant,
		Conv: ev.ConversationID, Visitor: ev.VisitorID, Agent: ev.AgentID, From: ev.FromAgentID,
		Msg: ev.MessageID, At: ev.At.UnixMilli(), Attrs: ev.Attributes,
	}
	if ev.Text != "" {
		if h.seal {
			sealed, err := h.sealer.Seal(nil, []byte(ev.Text), hookTextAAD(ev.ID))
			if err != nil {
				return nil, fmt.Errorf("broker: hook event %s: seal: %w", ev.ID, err)
			}
			r.Sealed = sealed
		} else {
			r.Text = ev.Text
		}
	}
	return json.Marshal(&r)
}

// decode reads a stored event back. Anything malformed, out of bounds or
// sealed without a Sealer is an error wrapping ErrBadHookEvent.
func (h *HookEvents) decode(data []byte) (backends.Event, error) {
	return decodeHookEvent(data, h.sealer)
}

func decodeHookEvent(data []byte, sealer histstore.Sealer) (backends.Event, error) {
	var r hookRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return backends.Event{}, fmt.Errorf("%w: %v", ErrBadHookEvent, err)
	}
	bad := func(what string) (backends.Event, error) {
		return backends.Event{}, fmt.Errorf("%w: %s", ErrBadHookEvent, what)
	}
	if r.V != hookEventVersion {
		return bad("unknown version " + strconv.Itoa(r.V))
	}
	t, ok := backends.ParseEventType(r.Type)
	if !ok {
		return bad("unknown type")
	}
	if r.ID == "" {
		return bad("no id")
	}
	for _, f := range [...]string{r.ID, r.Tenant, r.Conv, r.Visitor, r.Agent, r.From, r.Msg} {
		if len(f) > maxHookField || !utf8.ValidString(f) {
			return bad("a field is too long or not UTF-8")
		}
	}
	if len(r.Attrs) > maxHookAttrs {
		return bad("too many attributes")
	}
	for k, v := range r.Attrs {
		if len(k) > maxHookField || len(v) > maxHookField {
			return bad("an attribute is too long")
		}
	}
	if len(r.Text) > maxHookText || len(r.Sealed) > maxHookText+1024 {
		return bad("text too long")
	}
	ev := backends.Event{
		ID: r.ID, Type: t, Tenant: r.Tenant, ConversationID: r.Conv, VisitorID: r.Visitor,
		AgentID: r.Agent, FromAgentID: r.From, MessageID: r.Msg, Text: r.Text,
		At: time.UnixMilli(r.At), Attributes: r.Attrs,
	}
	if len(r.Sealed) > 0 {
		if r.Text != "" {
			return bad("both a text and a sealed text")
		}
		if sealer == nil {
			return bad("sealed text and no keyring")
		}
		plain, err := sealer.Open(nil, r.Sealed, hookTextAAD(r.ID))
		if err != nil {
			return bad("sealed text does not open: " + err.Error())
		}
		ev.Text = string(plain)
	}
	if !utf8.ValidString(ev.Text) {
		return bad("text not UTF-8")
	}
	return ev, nil
}

// pubOutcome is what became of one event of a publish.
type pubOutcome uint8

const (
	pubStored pubOutcome = iota // stored now
	pubDup                      // stored before (the same id within the duplicate window)
	pubFull                     // refused: the stream holds MaxEvents
	pubBad                      // cannot be encoded: never will be
	pubRetry                    // not stored (timeout, no stream leader, connection down): again
)

// publish stores evs, pipelined, and waits for every answer (or ctx). The
// event id is the JetStream message id, so publishing an event again
// within DuplicateWindow stores nothing new. out[i] is the outcome of
// evs[i]; errs[i] the error behind pubFull, pubBad and pubRetry.
func (h *HookEvents) publish(ctx context.Context, evs []backends.Event, out []pubOutcome, errs []error) {
	futs := make([]jetstream.PubAckFuture, len(evs))
	for i := range evs {
		ev := &evs[i]
		out[i], errs[i] = pubStored, nil
		data, err := h.encode(ev)
		if err != nil {
			out[i], errs[i] = pubBad, err
			continue
		}
		m := nats.NewMsg(h.prefix + strconv.Itoa(h.partition(ev)))
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, ev.ID)
		if futs[i], err = h.js.PublishMsgAsync(m); err != nil {
			out[i], errs[i] = pubRetry, err
			if errors.Is(err, nats.ErrMaxPayload) {
				out[i] = pubBad // larger than the server takes
			}
		}
	}
	for i, f := range futs {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				out[i] = pubDup
			}
		case err := <-f.Err():
			out[i], errs[i] = pubRetry, err
			var ae *jetstream.APIError
			switch {
			case streamFull(err):
				out[i] = pubFull
			case errors.As(err, &ae) && ae.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
				out[i] = pubBad
			}
		case <-ctx.Done():
			out[i], errs[i] = pubRetry, ctx.Err()
		}
	}
}

// streamFull reports whether err is the stream refusing a message at its
// limits (DiscardNew): "maximum messages exceeded".
func streamFull(err error) bool {
	var ae *jetstream.APIError
	return errors.As(err, &ae) && ae.ErrorCode == 10077 && // JSStreamStoreFailedF
		(ae.Description == "maximum messages exceeded" || ae.Description == "maximum bytes exceeded")
}

// Pending returns the events stored and not yet acknowledged (a JetStream
// request: for tests and tools, not for the hot path).
func (h *HookEvents) Pending(ctx context.Context) (uint64, error) {
	st, err := h.js.Stream(ctx, h.stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// The broker's side of HookEvents: a spooler that stores emitted events,
// and one deliverer per partition.
const (
	// spoolBatch bounds the events published in one pipelined round.
	spoolBatch = 256
	// spoolFlush bounds the last flush of the spool at Close.
	spoolFlush = 5 * time.Second
	// hookFetchWait is how long one pull waits for an event.
	hookFetchWait = 10 * time.Second
	// maxEventRetry caps the back-off between deliveries of one event.
	maxEventRetry = time.Minute
)

// spool stores the emitted events in the stream, in emission order,
// batched: whatever waits in the queue when a round starts goes in it.
// An event JetStream refuses at its limit (or that cannot be encoded) is
// dropped and counted; one that failed otherwise (timeout, no leader) is
// published again, with its id, until it is stored. At Close the queue is
// flushed (for at most spoolFlush).
func (r *backendRun) spool(b *Broker) {
	defer b.wg.Done()
	batch := make([]backends.Event, 0, spoolBatch)
	for {
		select {
		case <-b.done:
			r.flushSpool(b, batch[:0])
			return
		case ev := <-r.events:
			batch = append(batch[:0], ev)
		}
		batch = r.fill(batch)
		r.storeEvents(b, batch, time.Time{})
	}
}

// fill adds the queued events to batch, up to spoolBatch, without waiting.
func (r *backendRun) fill(batch []backends.Event) []backends.Event {
	for len(batch) < spoolBatch {
		select {
		case ev := <-r.events:
			batch = append(batch, ev)
		default:
			return batch
		}
	}
	return batch
}

// flushSpool stores what is queued at Close, until the queue stayed empty
// for a moment (a shard may still be finishing its last request) or
// spoolFlush passed; what remains is dropped and counted.
func (r *backendRun) flushSpool(b *Broker, batch []backends.Event) {
	deadline := time.Now().Add(spoolFlush)
	for idle := 0; idle < 3 && time.Now().Before(deadline); {
		if batch = r.fill(batch[:0]); len(batch) == 0 {
			idle++
			time.Sleep(10 * time.Millisecond)
			continue
		}
		idle = 0
		r.storeEvents(b, batch, deadline)
	}
	lost := 0
	for {
		select {
		case <-r.events:
			lost++
			continue
		default:
		}
		break
	}
	if lost > 0 {
		r.evDropped.Add(lost)
		b.log.Error("broker: hook events not stored at shutdown", "events", lost)
	}
}

// storeEvents publishes evs until each is stored or dropped. deadline,
// when set (Close), bounds the attempts; without it they go on until the
// broker closes, then for spoolFlush more.
func (r *backendRun) storeEvents(b *Broker, evs []backends.Event, deadline time.Time) {
	out := make([]pubOutcome, len(evs))
	errs := make([]error, len(evs))
	delay := 50 * time.Millisecond
	for {
		timeout := ioTimeout
		if !deadline.IsZero() {
			if timeout = time.Until(deadline); timeout <= 0 {
				r.evDropped.Add(len(evs))
				b.log.Error("broker: hook events not stored before shutdown", "events", len(evs))
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		r.hev.publish(ctx, evs, out[:len(evs)], errs[:len(evs)])
		cancel()
		// Keep the events to publish again, in order. (Events after a
		// failed one may have been stored meanwhile: they stay ahead of
		// it, the one case where a conversation's events can swap.)
		n := 0
		var lastErr error
		for i := range evs {
			switch out[i] {
			case pubStored:
				r.evStored.Inc()
			case pubDup:
			case pubFull, pubBad:
				r.evDropped.Inc()
				r.dropLog.log(b.log, "broker: hook event dropped", "event", evs[i].ID, "type", evs[i].Type.String(), "err", errs[i])
			case pubRetry:
				evs[n] = evs[i]
				n++
				lastErr = errs[i]
			}
		}
		if n == 0 {
			return
		}
		evs = evs[:n]
		r.storeLog.log(b.log, "broker: hook events not stored, retrying", "events", n, "err", lastErr, "in", delay)
		if deadline.IsZero() {
			select {
			case <-b.done:
				deadline = time.Now().Add(spoolFlush)
			case <-time.After(delay):
			}
		} else {
			time.Sleep(max(0, min(delay, time.Until(deadline))))
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// consume delivers the events of partition p, one at a time, for as long
// as the broker runs. Every node runs one per partition; JetStream hands
// each event to one of them. One Fetch per event rather than a standing
// Messages() pull: with one-message batches the latter stalled a
// partition until its pull expired (30 s) in one run of four here, Fetch
// never did (and was faster in BenchmarkHookEventsEndToEnd).
func (r *backendRun) consume(b *Broker, p int) {
	defer b.wg.Done()
	cons := r.hev.cons[p]
	pause := 100 * time.Millisecond
	for {
		select {
		case <-b.done:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(b.ctx, hookFetchWait)
		batch, err := cons.Fetch(1, jetstream.FetchContext(ctx))
		if err == nil {
			for msg := range batch.Messages() {
				r.handle(b, p, msg)
			}
			err = batch.Error()
		}
		cancel()
		if err == nil || b.ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) ||
			errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
			pause = 100 * time.Millisecond
			continue
		}
		r.fetchLog.log(b.log, "broker: hook events cannot be fetched", "partition", p, "err", err)
		select {
		case <-b.done:
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// handle delivers one stored event: acked once the hook took it (and the
// ack confirmed), else handed back to JetStream for redelivery after a
// back-off that doubles with every delivery (EventRetry up to a minute),
// before anything behind it in the partition. At Close it is handed back
// at once, for another node or the next start.
func (r *backendRun) handle(b *Broker, p int, msg jetstream.Msg) {
	ev, err := r.hev.decode(msg.Data())
	if err != nil {
		_ = msg.TermWithReason("undecodable")
		r.evDropped.Inc()
		r.dropLog.log(b.log, "broker: undecodable hook event dropped", "err", err)
		return
	}
	var delivered, pending uint64 = 1, 0
	if meta, err := msg.Metadata(); err == nil {
		delivered, pending = meta.NumDelivered, meta.NumPending
	}
	r.backlog[p].Store(int64(pending) + 1)
	ctx, cancel := context.WithTimeout(b.ctx, r.o.CallTimeout)
	err = r.o.Hook.Event(ctx, ev)
	cancel()
	if err == nil {
		actx, acancel := context.WithTimeout(context.Background(), ioTimeout)
		if aerr := msg.DoubleAck(actx); aerr != nil {
			// Delivered, but JetStream may hand it out again after
			// AckWait: a duplicate the hook drops by its id.
			b.log.Warn("broker: hook event delivered, ack not confirmed", "event", ev.ID, "err", aerr)
		}
		acancel()
		r.evDelivered.Inc()
		r.backlog[p].Store(int64(pending))
		return
	}
	if b.ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	r.evRetried.Inc()
	delay := r.retryDelay(delivered)
	b.log.Warn("broker: hook event not delivered, retrying", "event", ev.ID, "type", ev.Type.String(), "err", err, "in", delay)
	_ = msg.NakWithDelay(delay)
}

// retryDelay is the back-off before delivery n+1 of an event.
func (r *backendRun) retryDelay(n uint64) time.Duration {
	d := r.o.EventRetry
	for i := uint64(1); i < n && d < maxEventRetry; i++ {
		d *= 2
	}
	return min(d, maxEventRetry)
}

// logEvery logs one line per interval and counts the rest.
type logEvery struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const logInterval = 10 * time.Second

func (l *logEvery) log(log *slog.Logger, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.last) < logInterval {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}
