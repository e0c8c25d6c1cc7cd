package histstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxMsgSize is the stream's MaxMsgSize: the largest body plus headers
// (JetStream counts both) and slack.
const maxMsgSize = MaxTextBytes + 64<<10

// Defaults for zero-valued Options fields.
const (
	DefaultStream          = "UNIGATE_HISTORY"
	DefaultSubjectPrefix   = "hist"
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultMaxPending      = 4096
	DefaultAckTimeout      = 5 * time.Second
)

// Errors. Wrapped errors carry details; test with errors.Is.
var (
	// ErrConflict: the conversation's last stored message is not the one
	// the writer expected (another writer appended, or retention removed
	// messages). Returned as a *ConflictError.
	ErrConflict = errors.New("histstore: conflicting append")
	// ErrInvalid: a Message or argument is out of bounds.
	ErrInvalid = errors.New("histstore: invalid message")
	// ErrCorrupt: a stored body could not be decoded.
	ErrCorrupt = errors.New("histstore: corrupt message")
	// ErrTimeout: no ack within Options.AckTimeout. The outcome is unknown:
	// the message may or may not be stored; retry it unchanged (same
	// ClientMsgID, same expected sequence) to find out.
	ErrTimeout = errors.New("histstore: ack timeout")
	// ErrBackpressure: Options.MaxPending asynchronous appends are in
	// flight; nothing was sent.
	ErrBackpressure = errors.New("histstore: too many pending appends")
	// ErrUnavailable: no JetStream server answered for the stream (no
	// responders), or it answered with an error. For an append this is
	// definitive: the message was not stored.
	ErrUnavailable = errors.New("histstore: stream unavailable")
	// ErrBadAck: the answer to an append is not a PubAck this package
	// can read. The outcome is unknown, as with ErrTimeout.
	ErrBadAck = errors.New("histstore: unreadable ack")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("histstore: closed")
	// ErrBatch: the server refused an atomic batch as a batch (batches
	// disabled, too many in flight, a duplicate message id inside): none
	// of its messages was stored; append them one by one.
	ErrBatch = errors.New("histstore: batch refused")
)

// ConflictError is the ErrConflict returned by Append and AppendAsync.
type ConflictError struct {
	// Expected is the stream sequence the writer expected.
	Expected uint64
	// Last is the stream sequence of the conversation's last stored
	// message according to the server (0: none).
	Last uint64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("histstore: conflicting append: expected last stream sequence %d, stream has %d", e.Expected, e.Last)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Message is one stored chat message.
type Message struct {
	Tenant       string // up to MaxTenantBytes, any bytes
	Conversation string // 1..MaxConversationBytes, normally [a-z0-9_]
	Seq          uint64 // per-conversation sequence, from 1, assigned by the single writer
	SenderID     string // up to MaxIDBytes
	SenderRole   uint8
	ClientMsgID  string // up to MaxIDBytes; empty: no deduplication
	Text         string // up to MaxTextBytes
	TimeMilli    int64  // unix milliseconds
}

// Options configures Open. Zero values select the defaults.
type Options struct {
	// Stream is the JetStream stream name (default "UNIGATE_HISTORY").
	Stream string
	// SubjectPrefix is the first subject token (default "hist"): messages
	// are stored on <prefix>.<tenant>.<conversation>.
	SubjectPrefix string
	// Replicas is the stream's replication factor (default 1; 3 in a
	// 3-node cluster).
	Replicas int
	// MaxAge discards messages older than this (0: no age limit).
	MaxAge time.Duration
	// MaxBytes caps the stream's size; the oldest messages of the whole
	// stream are discarded to make room (0: no limit).
	MaxBytes int64
	// MaxMsgsPerSubject keeps at most this many messages per conversation,
	// discarding its oldest (0: no limit).
	MaxMsgsPerSubject int64
	// DuplicateWindow is how long JetStream remembers Nats-Msg-Id values
	// for deduplication (default 2 minutes; at most MaxAge when set).
	DuplicateWindow time.Duration
	// MaxPending bounds the asynchronous appends in flight (default 4096).
	MaxPending int
	// AckTimeout bounds the wait for a publish ack (default 5s).
	AckTimeout time.Duration
	// Sealer, when set, opens message texts stored encrypted at rest
	// (crypto/atrest.Keyring). Without one, reading a sealed text fails
	// with ErrEncrypted.
	Sealer Sealer
	// SealText seals the text of every new message with Sealer (which
	// it requires). Plain messages written before stay readable.
	SealText bool
	// AtomicBatches lets AppendBatchAsync store several messages of one
	// conversation as one atomic batch (JetStream atomic batch publish,
	// nats-server 2.12+). 0 (default): on for a replicated stream
	// (Replicas > 1), where every append costs a RAFT round trip; off for
	// R1, where the server stages each batch in a file store of its own
	// and the plain appends are cheaper. 1: on; -1: off. It is on only if
	// the server confirms the stream setting.
	AtomicBatches int
}

// Store is the history of all conversations in one JetStream stream. It
// is safe for concurrent use.
type Store struct {
	js         jetstream.JetStream
	nc         *nats.Conn
	stream     jetstream.Stream
	name       string
	prefix     string // "<SubjectPrefix>."
	directSubj string // $JS.API.DIRECT.GET.<name>
	maxPending int
	ackTimeout time.Duration
	sealer     Sealer // opens sealed texts; nil: none
	sealText   bool   // seal new texts with sealer
	atomic     bool   // AppendBatchAsync sends atomic batches

	inbox  string // "<inbox>." ; replies go to inbox + token
	sub    *nats.Subscription
	ackPfx string // `{"stream":"<name>","seq":`: a plain PubAck starts so

	mu      sync.Mutex
	pending map[uint64]pending
	nextID  uint64
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// pending is an append awaiting its ack. It keeps the message's key
// strings (the caller's, not copies) and rebuilds the subject and the
// message id only on the rare paths that need them (resolveConflict).
type pending struct {
	tenant, conv     string
	sender, clientID string
	expect           uint64
	deadline         time.Time
	done             func(uint64, bool, error)
}

func (p *pending) subject(s *Store) string { return s.Subject(p.tenant, p.conv) }

func (p *pending) msgID() string {
	return msgID(&Message{Tenant: p.tenant, Conversation: p.conv, SenderID: p.sender, ClientMsgID: p.clientID})
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// pubScratch is what one publish of AppendAsync needs besides the body:
// the nats.Msg, its header map (built once) and the bytes behind the
// subject, the reply subject and the header values. PublishMsg copies all
// of them into the connection's buffer before it returns (nats.go
// Conn.publish), so the strings over buf (bytesString) are dead by the
// time the scratch goes back to the pool: nothing per append is allocated
// here.
type pubScratch struct {
	msg    nats.Msg
	hdr    nats.Header
	expect [1]string
	id     [1]string
	buf    []byte
}

var scratchPool = sync.Pool{New: func() any {
	sc := &pubScratch{hdr: make(nats.Header, 2), buf: make([]byte, 0, 256)}
	return sc
}}

// bytesString is b as a string without a copy. The caller guarantees that
// b is not modified while the string is in use.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// Open creates the stream or updates its configuration (limits may be
// changed on a live stream; name, subjects and storage may not) and
// returns a Store. Close it to stop its background goroutine.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Store, error) {
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = DefaultSubjectPrefix
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
	if o.MaxAge > 0 && o.DuplicateWindow > o.MaxAge {
		// JetStream refuses a duplicate window longer than MaxAge.
		o.DuplicateWindow = o.MaxAge
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.SealText && o.Sealer == nil {
		return nil, fmt.Errorf("%w: SealText without a Sealer", ErrInvalid)
	}
	if strings.ContainsAny(o.SubjectPrefix, " \t\r\n*>") {
		return nil, fmt.Errorf("%w: subject prefix %q", ErrInvalid, o.SubjectPrefix)
	}
	cfg := jetstream.StreamConfig{
		Name:              o.Stream,
		Description:       "Unigate conversation history",
		Subjects:          []string{o.SubjectPrefix + ".>"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            o.MaxAge,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: -1,
		MaxMsgSize:        maxMsgSize,
		Duplicates:        o.DuplicateWindow,
		Replicas:          o.Replicas,
		AllowDirect:       true,
	}
	wantBatches := o.AtomicBatches > 0 || (o.AtomicBatches == 0 && o.Replicas > 1)
	// Once on, atomic publish stays on (turning it off would abandon the
	// batches of another node in flight).
	if wantBatches {
		cfg.AllowAtomicPublish = true
	} else if cur, err := js.Stream(ctx, o.Stream); err == nil && cur.CachedInfo().Config.AllowAtomicPublish {
		cfg.AllowAtomicPublish = true
	}
	if o.MaxBytes > 0 {
		cfg.MaxBytes = o.MaxBytes
	}
	if o.MaxMsgsPerSubject > 0 {
		cfg.MaxMsgsPerSubject = o.MaxMsgsPerSubject
	}
	st, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("histstore: stream %s: %w", o.Stream, err)
	}
	jo := js.Options()
	api := jetstream.DefaultAPIPrefix
	switch {
	case jo.APIPrefix != "":
		api = jo.APIPrefix
		if !strings.HasSuffix(api, ".") {
			api += "."
		}
	case jo.Domain != "":
		api = "$JS." + jo.Domain + ".API."
	}
	s := &Store{
		js:         js,
		nc:         js.Conn(),
		stream:     st,
		name:       o.Stream,
		prefix:     o.SubjectPrefix + ".",
		directSubj: api + "DIRECT.GET." + o.Stream,
		maxPending: o.MaxPending,
		ackTimeout: o.AckTimeout,
		sealer:     o.Sealer,
		sealText:   o.SealText,
		// An older server ignores the setting: it must say it has it.
		atomic:  wantBatches && st.CachedInfo().Config.AllowAtomicPublish,
		inbox:   nats.NewInbox() + ".",
		ackPfx:  fmt.Sprintf("{%q:%q,%q:", "stream", o.Stream, "seq"),
		pending: make(map[uint64]pending),
		stop:    make(chan struct{}),
	}
	s.sub, err = s.nc.Subscribe(s.inbox+"*", s.handleAck)
	if err != nil {
		return nil, fmt.Errorf("histstore: ack subscription: %w", err)
	}
	// Acks are tiny; a pending limit above MaxPending never drops one.
	_ = s.sub.SetPendingLimits(4*o.MaxPending+1024, -1)
	s.wg.Add(1)
	go s.sweep()
	return s, nil
}

// Close fails every pending append with ErrClosed and stops the Store.
// It does not close the NATS connection.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	failed := s.pending
	s.pending = nil
	s.mu.Unlock()
	err := s.sub.Unsubscribe()
	s.wg.Wait()
	for _, p := range failed {
		p.done(0, false, ErrClosed)
	}
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionDraining) || errors.Is(err, nats.ErrBadSubscription) {
		err = nil
	}
	return err
}

// Subject returns the subject a conversation's messages are stored on.
func (s *Store) Subject(tenant, conv string) string {
	return s.prefix + subjectToken(tenant) + "." + subjectToken(conv)
}

// appendSubject is Subject appended to b.
func (s *Store) appendSubject(b []byte, tenant, conv string) []byte {
	b = append(b, s.prefix...)
	b = appendSubjectToken(b, tenant)
	b = append(b, '.')
	return appendSubjectToken(b, conv)
}

func checkKey(tenant, conv string) error {
	if len(tenant) > MaxTenantBytes {
		return fmt.Errorf("%w: tenant of %d bytes", ErrInvalid, len(tenant))
	}
	if conv == "" || len(conv) > MaxConversationBytes {
		return fmt.Errorf("%w: conversation id of %d bytes", ErrInvalid, len(conv))
	}
	return nil
}

func check(m *Message) error {
	if err := checkKey(m.Tenant, m.Conversation); err != nil {
		return err
	}
	switch {
	case m.Seq == 0:
		return fmt.Errorf("%w: sequence 0", ErrInvalid)
	case len(m.SenderID) > MaxIDBytes:
		return fmt.Errorf("%w: sender id of %d bytes", ErrInvalid, len(m.SenderID))
	case len(m.ClientMsgID) > MaxIDBytes:
		return fmt.Errorf("%w: client message id of %d bytes", ErrInvalid, len(m.ClientMsgID))
	case len(m.Text) > MaxTextBytes:
		return fmt.Errorf("%w: text of %d bytes", ErrInvalid, len(m.Text))
	}
	return nil
}

// msgID is the Nats-Msg-Id of m ("" when it has no ClientMsgID).
func msgID(m *Message) string {
	if m.ClientMsgID == "" {
		return ""
	}
	return headerToken(m.Tenant) + "/" + headerToken(m.Conversation) + "/" + headerToken(m.SenderID) + "/" + headerToken(m.ClientMsgID)
}

// appendMsgID is msgID appended to b (m has a ClientMsgID).
func appendMsgID(b []byte, m *Message) []byte {
	b = appendHeaderToken(b, m.Tenant)
	b = append(b, '/')
	b = appendHeaderToken(b, m.Conversation)
	b = append(b, '/')
	b = appendHeaderToken(b, m.SenderID)
	b = append(b, '/')
	return appendHeaderToken(b, m.ClientMsgID)
}

// Append stores m durably: it returns after the JetStream PubAck, i.e.
// once the message is written to the stream's file store (R1) or to a
// quorum of replicas (R3). m.Seq is assigned by the caller, the
// conversation's single writer.
//
// The publish carries Nats-Msg-Id = tenant/conversation/sender/clientMsgID
// (each part escaped), so a retry within the duplicate window is not
// stored twice: it returns dup=true and the original stream sequence. It
// also carries Nats-Expected-Last-Subject-Sequence = expectLastStreamSeq,
// the stream sequence of the conversation's previous message (0 for the
// first), so two writers of one conversation can never interleave: the
// loser gets a *ConflictError (errors.Is ErrConflict).
//
// Because of that check, a conversation can have only one append in
// flight: the next one needs this one's stream sequence. Pipeline across
// conversations.
func (s *Store) Append(ctx context.Context, m *Message, expectLastStreamSeq uint64) (streamSeq uint64, dup bool, err error) {
	type result struct {
		seq uint64
		dup bool
		err error
	}
	ch := make(chan result, 1)
	err = s.AppendAsync(m, expectLastStreamSeq, func(seq uint64, dup bool, err error) {
		ch <- result{seq, dup, err}
	})
	if err != nil {
		return 0, false, err
	}
	select {
	case r := <-ch:
		return r.seq, r.dup, r.err
	case <-ctx.Done():
		// The outcome is unknown, as with ErrTimeout; done still runs later.
		return 0, false, ctx.Err()
	}
}

// AppendAsync is Append without waiting: it returns once the message is
// handed to the connection, and done is called exactly once, later, with
// the outcome: from the NATS goroutine that delivers acks (acks arrive in
// stream order, so done calls for one conversation come in order), or
// from the Store's timeout goroutine with ErrTimeout, or from Close with
// ErrClosed. done must not block; it may call AppendAsync. An error
// returned by AppendAsync itself (ErrInvalid, ErrBackpressure, ErrClosed,
// a connection error, a failed seal) means nothing was sent and done
// will not be called.
//
// With Options.SealText the text is sealed (encryption at rest) before
// anything is sent; the client message id, which JetStream needs in
// clear for deduplication, is not (docs/crypto.md, "Encryption at rest").
func (s *Store) AppendAsync(m *Message, expectLastStreamSeq uint64, done func(streamSeq uint64, dup bool, err error)) error {
	if err := check(m); err != nil {
		return err
	}
	bp := bufPool.Get().(*[]byte)
	body, err := s.encode((*bp)[:0], m)
	if err != nil {
		putBuf(bp, body)
		return fmt.Errorf("histstore: seal: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		putBuf(bp, body)
		return ErrClosed
	}
	if len(s.pending) >= s.maxPending {
		s.mu.Unlock()
		putBuf(bp, body)
		return ErrBackpressure
	}
	s.nextID++
	id := s.nextID
	s.pending[id] = pending{
		tenant:   m.Tenant,
		conv:     m.Conversation,
		sender:   m.SenderID,
		clientID: m.ClientMsgID,
		expect:   expectLastStreamSeq,
		deadline: time.Now().Add(s.ackTimeout),
		done:     done,
	}
	s.mu.Unlock()

	// Subject, reply subject and header values in one scratch buffer.
	// Appending never rewrites bytes a string already covers (a grown
	// buffer leaves the earlier strings on the old array, unchanged).
	sc := scratchPool.Get().(*pubScratch)
	b := sc.buf[:0]
	b = s.appendSubject(b, m.Tenant, m.Conversation)
	subj := bytesString(b)
	n := len(b)
	b = strconv.AppendUint(append(b, s.inbox...), id, 10)
	reply := bytesString(b[n:])
	n = len(b)
	b = strconv.AppendUint(b, expectLastStreamSeq, 10)
	sc.expect[0] = bytesString(b[n:])
	sc.hdr[jetstream.ExpectedLastSubjSeqHeader] = sc.expect[:]
	if m.ClientMsgID != "" {
		n = len(b)
		b = appendMsgID(b, m)
		sc.id[0] = bytesString(b[n:])
		sc.hdr[jetstream.MsgIDHeader] = sc.id[:]
	} else {
		delete(sc.hdr, jetstream.MsgIDHeader)
	}
	sc.msg = nats.Msg{Subject: subj, Reply: reply, Header: sc.hdr, Data: body}
	err = s.nc.PublishMsg(&sc.msg)
	// PublishMsg copied the body, the subjects and the headers into the
	// connection's buffer.
	putBuf(bp, body)
	sc.msg = nats.Msg{}
	sc.expect[0], sc.id[0] = "", ""
	if cap(b) <= 4<<10 {
		sc.buf = b[:0]
		scratchPool.Put(sc)
	}
	return s.publishFailed(id, err)
}

// encode appends m's body to b, its text sealed when the Store seals.
func (s *Store) encode(b []byte, m *Message) ([]byte, error) {
	if s.sealText {
		return appendSealedMessage(b, m, s.sealer)
	}
	return appendMessage(b, m), nil
}

func putBuf(bp *[]byte, body []byte) {
	if cap(body) <= 64<<10 {
		*bp = body[:0]
		bufPool.Put(bp)
	}
}

// MaxBatch is the most messages AppendBatchAsync takes at once (the
// server's limit is 1000).
const MaxBatch = 100

// Batches reports whether AppendBatchAsync sends atomic batches; when it
// does not, it takes one message at a time.
func (s *Store) Batches() bool { return s.atomic }

// AppendBatchAsync stores ms, consecutive messages of one conversation
// (Seq n, n+1, ...), atomically: all of them or none. The first carries
// expectLastStreamSeq (Nats-Expected-Last-Subject-Sequence), checked by
// the server when it commits the batch, so a batch conflicts with another
// writer exactly like one Append. Each carries its Nats-Msg-Id. done is
// called once, as for AppendAsync, with the stream sequence of the LAST
// message (the others are the ones just before it, in order): or dup=true
// if this very batch was stored before (a retry), or an error. ErrBatch:
// the server did not take it as a batch (nothing stored; append the
// messages one by one). Without Batches, or with one message, it is
// AppendAsync.
func (s *Store) AppendBatchAsync(ms []*Message, expectLastStreamSeq uint64, done func(lastStreamSeq uint64, dup bool, err error)) error {
	if len(ms) == 1 || (len(ms) > 1 && !s.atomic) {
		if len(ms) > 1 {
			return fmt.Errorf("%w: atomic batches are off", ErrBatch)
		}
		return s.AppendAsync(ms[0], expectLastStreamSeq, done)
	}
	if len(ms) == 0 || len(ms) > MaxBatch {
		return fmt.Errorf("%w: batch of %d messages", ErrInvalid, len(ms))
	}
	for i, m := range ms {
		if err := check(m); err != nil {
			return err
		}
		if m.Tenant != ms[0].Tenant || m.Conversation != ms[0].Conversation || m.Seq != ms[0].Seq+uint64(i) {
			return fmt.Errorf("%w: batch of more than one conversation or a seq gap", ErrInvalid)
		}
	}
	last := ms[len(ms)-1]
	p := pending{
		tenant:   last.Tenant,
		conv:     last.Conversation,
		sender:   last.SenderID,
		clientID: last.ClientMsgID,
		expect:   expectLastStreamSeq,
		deadline: time.Now().Add(s.ackTimeout),
		done:     done,
	}
	subj := p.subject(s)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if len(s.pending) >= s.maxPending {
		s.mu.Unlock()
		return ErrBackpressure
	}
	s.nextID++
	id := s.nextID
	s.pending[id] = p
	s.mu.Unlock()

	batchID := nats.NewInbox()[len(nats.InboxPrefix):] // a NUID: 22 characters
	bp := bufPool.Get().(*[]byte)
	var err error
	for i, m := range ms {
		hdr := nats.Header{
			"Nats-Batch-Id":       {batchID},
			"Nats-Batch-Sequence": {strconv.Itoa(i + 1)},
		}
		if i == 0 {
			hdr[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(expectLastStreamSeq, 10)}
		}
		if id := msgID(m); id != "" {
			hdr[jetstream.MsgIDHeader] = []string{id}
		}
		var data []byte
		if data, err = s.encode((*bp)[:0], m); err != nil {
			break
		}
		msg := &nats.Msg{Subject: subj, Header: hdr, Data: data}
		if m == last {
			// Only the commit is answered: the PubAck of the batch.
			hdr["Nats-Batch-Commit"] = []string{"1"}
			msg.Reply = s.inbox + strconv.FormatUint(id, 10)
		}
		err = s.nc.PublishMsg(msg)
		if cap(msg.Data) <= 64<<10 {
			*bp = msg.Data
		}
		if err != nil {
			break // an unfinished batch is abandoned by the server
		}
	}
	bufPool.Put(bp)
	return s.publishFailed(id, err)
}

// publishFailed takes the pending append id back after its publish failed
// with err (nil: it did not) and returns the error for the caller; nil
// when Close or the sweeper already failed it (done was called).
func (s *Store) publishFailed(id uint64, err error) error {
	if err == nil {
		return nil
	}
	s.mu.Lock()
	_, mine := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if !mine {
		return nil
	}
	return fmt.Errorf("histstore: publish: %w", err)
}

// batchErrCodes are the JetStream errors that refuse an atomic batch as a
// batch (disabled, missing sequence, incomplete, unsupported header,
// invalid id, too large, invalid commit, duplicate message id inside,
// too many in flight).
var batchErrCodes = map[uint16]bool{10174: true, 10175: true, 10176: true, 10177: true, 10179: true, 10199: true, 10200: true, 10201: true, 10210: true}

// pubAck is a JetStream publish response.
type pubAck struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
	Error     *struct {
		Code        int    `json:"code"`
		ErrCode     uint16 `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

const (
	errCodeWrongLastSeq         = 10071
	errCodeWrongLastSeqConstant = 10164
	errCodeBatchDuplicate       = 10201
)

// handleAck runs on the ack subscription's goroutine, one ack at a time.
func (s *Store) handleAck(msg *nats.Msg) {
	id, err := strconv.ParseUint(msg.Subject[len(s.inbox):], 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	p, ok := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if !ok {
		return // timed out or closed: done already called
	}
	p.done(s.outcome(&p, msg))
}

// parsePlainAck reads the PubAck of a stored message as nats-server
// writes it for this stream (stream.go: the stream's pubAck template, the
// sequence, then "}" or `,"duplicate": true}`). ok=false: anything else
// (an error, a domain, batch fields, other spacing), for encoding/json.
func parsePlainAck(data []byte, prefix string) (seq uint64, dup, ok bool) {
	if len(data) <= len(prefix) || string(data[:len(prefix)]) != prefix {
		return 0, false, false
	}
	rest := data[len(prefix):]
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		if i == 19 || (rest[0] == '0' && i > 0) {
			return 0, false, false // 20 digits may overflow; a leading zero is not JSON
		}
		seq = seq*10 + uint64(rest[i]-'0')
		i++
	}
	if i == 0 || seq == 0 {
		return 0, false, false
	}
	switch string(rest[i:]) {
	case "}":
		return seq, false, true
	case `,"duplicate": true}`, `,"duplicate":true}`:
		return seq, true, true
	}
	return 0, false, false
}

func (s *Store) outcome(p *pending, msg *nats.Msg) (uint64, bool, error) {
	if len(msg.Data) == 0 {
		if st := msg.Header.Get("Status"); st != "" {
			return 0, false, fmt.Errorf("%w: status %s %s", ErrUnavailable, st, msg.Header.Get("Description"))
		}
	}
	if seq, dup, ok := parsePlainAck(msg.Data, s.ackPfx); ok {
		return seq, dup, nil
	}
	var a pubAck
	if err := json.Unmarshal(msg.Data, &a); err != nil {
		return 0, false, fmt.Errorf("%w: %v", ErrBadAck, err)
	}
	if a.Error != nil {
		if a.Error.ErrCode == errCodeWrongLastSeq || a.Error.ErrCode == errCodeWrongLastSeqConstant {
			return s.resolveConflict(p)
		}
		if a.Error.ErrCode == errCodeBatchDuplicate {
			// A retry of a stored batch is refused for its message ids:
			// it is a duplicate if the conversation ends with its last.
			if seq, dup, err := s.resolveConflict(p); err == nil && dup {
				return seq, true, nil
			}
		}
		if batchErrCodes[a.Error.ErrCode] {
			return 0, false, fmt.Errorf("%w: %d %s", ErrBatch, a.Error.ErrCode, a.Error.Description)
		}
		return 0, false, fmt.Errorf("%w: %d %s", ErrUnavailable, a.Error.ErrCode, a.Error.Description)
	}
	if a.Stream == "" || a.Seq == 0 {
		return 0, false, fmt.Errorf("%w: empty", ErrBadAck)
	}
	return a.Seq, a.Duplicate, nil
}

// resolveConflict turns a wrong-last-sequence answer into dup=true when
// the conversation's last stored message is this very message. A
// standalone (R1) server checks Nats-Expected-Last-Subject-Sequence before
// Nats-Msg-Id, so a retry of a stored message is rejected as a conflict
// instead of being reported as a duplicate; this lookup restores the
// documented outcome. It blocks the ack goroutine for one direct get, on
// this rare path only.
func (s *Store) resolveConflict(p *pending) (uint64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.ackTimeout)
	defer cancel()
	last, err := s.stream.GetLastMsgForSubject(ctx, p.subject(s))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, &ConflictError{Expected: p.expect}
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w (and the lookup failed: %v)", &ConflictError{Expected: p.expect}, err)
	}
	if p.clientID != "" && last.Header.Get(jetstream.MsgIDHeader) == p.msgID() {
		return last.Sequence, true, nil
	}
	return 0, false, &ConflictError{Expected: p.expect, Last: last.Sequence}
}

// sweep fails appends whose ack did not come within AckTimeout.
func (s *Store) sweep() {
	defer s.wg.Done()
	tick := min(max(s.ackTimeout/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var expired []pending
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			for id, p := range s.pending {
				if now.After(p.deadline) {
					expired = append(expired, p)
					delete(s.pending, id)
				}
			}
			s.mu.Unlock()
			for i, p := range expired {
				p.done(0, false, ErrTimeout)
				expired[i] = pending{}
			}
			expired = expired[:0]
		}
	}
}

// Pending returns the number of asynchronous appends awaiting their ack.
func (s *Store) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// Last returns the last stored message of a conversation and its stream
// sequence (what the next Append expects), or ok=false when the
// conversation has no stored message (never written, or all of it
// discarded by retention).
func (s *Store) Last(ctx context.Context, tenant, conv string) (m *Message, streamSeq uint64, ok bool, err error) {
	if err := checkKey(tenant, conv); err != nil {
		return nil, 0, false, err
	}
	raw, err := s.stream.GetLastMsgForSubject(ctx, s.Subject(tenant, conv))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("histstore: last: %w", err)
	}
	m = &Message{Tenant: tenant, Conversation: conv}
	if err := decode(raw.Data, m, s.sealer, true); err != nil {
		return nil, 0, false, fmt.Errorf("stream sequence %d: %w", raw.Sequence, err)
	}
	return m, raw.Sequence, true, nil
}

// Get returns the message of a conversation stored at stream sequence
// streamSeq (the sequence a duplicate's PubAck names), ok=false when
// there is none (discarded by retention) or it belongs to another
// conversation.
func (s *Store) Get(ctx context.Context, tenant, conv string, streamSeq uint64) (m *Message, ok bool, err error) {
	if err := checkKey(tenant, conv); err != nil {
		return nil, false, err
	}
	raw, err := s.stream.GetMsg(ctx, streamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("histstore: get: %w", err)
	}
	if raw.Subject != s.Subject(tenant, conv) {
		return nil, false, nil
	}
	m = &Message{Tenant: tenant, Conversation: conv}
	if err := decode(raw.Data, m, s.sealer, true); err != nil {
		return nil, false, fmt.Errorf("stream sequence %d: %w", raw.Sequence, err)
	}
	return m, true, nil
}
