// Package histstore keeps the durable history of every conversation in one
// NATS JetStream stream (default "UNIGATE_HISTORY", file storage).
//
//	s, err := histstore.Open(ctx, node.JetStream(), histstore.Options{MaxAge: 30 * 24 * time.Hour})
//	seq, dup, err := s.Append(ctx, &histstore.Message{...}, lastStreamSeq)
//	err = s.Range(ctx, tenant, conv, cursor, 100, func(m *histstore.Message) bool { ...; return true })
//
// # Layout
//
// A conversation's messages are stored on the subject
// <prefix>.<tenant>.<conversation> (prefix default "hist"). A token that is
// non-empty and only [a-z0-9_] is used as is; any other (tenants are
// arbitrary bytes, up to 128) becomes "-" followed by its lowercase
// base32hex encoding, which cannot collide with a plain token.
//
// The body is a protobuf-wire record hand-coded with protowire: 1 seq
// (varint), 2 sender_id (bytes), 3 sender_role (varint), 4 client_msg_id
// (bytes), 5 text (bytes), 6 time_milli (varint), 7 sealed_text (bytes,
// in place of 5 when the text is encrypted at rest); tenant and
// conversation are in the subject. Unknown fields are skipped, so fields
// can be added.
// The decoder bounds every field (MaxIDBytes, MaxTextBytes), copies the
// strings out of the NATS buffer in one allocation, never panics (see
// FuzzDecodeMessage) and reports bad input as ErrCorrupt. Headers carry only
// what JetStream itself needs: Nats-Msg-Id and
// Nats-Expected-Last-Subject-Sequence.
//
// # Encryption at rest
//
// With Options.Sealer and SealText (a crypto/atrest.Keyring), the text of
// every new message is stored as field 7: the keyring's sealed value
// (version, data key id, nonce, SM4-GCM ciphertext and tag, 33 bytes more
// than the text), with additional data binding it to the tenant,
// conversation, sequence, sender id and role, client message id and time
// (appendTextAAD), so a text moved to another message does not open.
// Everything else stays in clear: the sequence, sender, role, client
// message id (Nats-Msg-Id needs it) and time, and the subject. Messages
// written in clear before stay readable (field 5); a Store with a Sealer
// but without SealText (encryption turned off again, read-only keyring)
// still opens sealed texts, and one without a Sealer reports them as
// ErrEncrypted. A text that does not open stops Range and Replay with an
// error wrapping ErrCorrupt and the keyring's reason (atrest.ErrAuth,
// ErrUnknownKey, ErrWrongMasterKey). Lookups that need only sequences
// (the binary search, the conversation's first and last message) do not
// open texts; Last does.
//
// # Writers
//
// Each conversation has a single writer (its broker shard) that assigns
// Seq (from 1, +1 per message) and remembers the stream sequence of the
// conversation's last message. Every append carries that stream sequence
// as Nats-Expected-Last-Subject-Sequence, so a second writer (another
// node, a stale owner) can never interleave: one of two racing appends
// fails with a *ConflictError (errors.Is ErrConflict) that reports the
// stream's actual last sequence. A consequence: one conversation can have
// only one append in flight (the next needs this one's stream sequence);
// AppendAsync pipelines across conversations. After a restart, Last gives
// the next Seq and the expected stream sequence.
//
// AppendBatchAsync stores several consecutive messages of one
// conversation in one JetStream atomic batch (nats-server 2.12+): all or
// none, the expected-sequence check on the first, one round trip. It is
// on for replicated streams (Options.AtomicBatches), where one append is
// a RAFT round trip, and only if the server confirms the stream's
// allow_atomic setting; a batch the server refuses as a batch (ErrBatch)
// is appended one message at a time.
//
// Every append also carries Nats-Msg-Id = tenant/conversation/sender/
// client message id, so a retry (after ErrTimeout, a cancelled context or
// a reconnect) within Options.DuplicateWindow is not stored twice: it
// returns dup=true and the original stream sequence. A standalone server
// checks the expected sequence before the message id, which would turn
// such a retry into a conflict; Append resolves it by looking at the
// conversation's last message (one extra direct get, on that path only).
//
// # Durability: what an ack means
//
// Append returns, and AppendAsync calls done, only after the JetStream
// PubAck: the message has been written to the stream's file store (R1:
// write(2) on the block file, fsynced every nats-server SyncInterval or
// at once with SyncAlways; it survives kill -9 of the process) or to a
// quorum of replicas (R3). ErrTimeout, ErrBadAck, ErrClosed (from done)
// and ctx errors mean the message may or may not be stored: retry it
// unchanged (same Seq, ClientMsgID and expected stream sequence), and the
// answer tells: dup=true if the first attempt stored it, or a conflict if
// another message was stored after it (the conversation's history then
// holds it), or success (the first attempt cannot be stored any more: the
// expected sequence has moved, and its message id is taken). The other
// errors are definitive: ErrUnavailable (no responders, or the server
// answered with an error), ErrConflict, ErrBatch, and any error
// AppendAsync itself returns mean the message was not stored. A message
// that was acked is in every later Range, in order, once — until
// retention discards it.
//
// # Cost of an append
//
// AppendAsync allocates nothing of its own per message: the pending entry
// is a map value holding the caller's strings; the subject, the reply
// subject and the header values are built in a pooled scratch buffer that
// PublishMsg copies before it returns; the ack of a stored message
// (nats-server writes it from a fixed template: {"stream":"<name>","seq":N}
// and the duplicate variant) is read without encoding/json, anything else
// (errors, a domain, batches) by encoding/json (FuzzParsePlainAck checks
// that both read the same). What remains per append is nats.go's (the
// header block, the received ack's nats.Msg) and the server's: the
// expected-last-subject-sequence check loads the conversation's last
// message, and an R1 stream writes every message to its block file before
// the PubAck (flush in place; AsyncFlush would ack before write(2) and is
// not used).
//
// # Retention
//
// Limits are JetStream's (DiscardOld): at MaxAge, MaxBytes (whole stream)
// or MaxMsgsPerSubject (per conversation) the OLDEST messages are discarded
// by the server, silently and never the new one. A client resuming from a
// cursor older than the oldest retained message gets what remains and
// Replay reports RangeInfo.Gap (Range, which has no place for it, just
// delivers what remains; the first message's Seq > cursor+1 tells the same).
// MaxAge and MaxBytes can discard a whole conversation, its last message
// included: Last then says ok=false and the writer's next append gets a
// ConflictError with Last 0; the writer resumes from expected 0 and its own
// Seq counter (Seq values are never reused).
//
// # Reading
//
// Range and Replay use direct gets (the stream has AllowDirect): the
// conversation's last message, its first, a binary search over stream
// sequences for the first message after the cursor when more than 64
// older messages would otherwise be skipped, then batches of up to 256
// messages by subject. Their cost grows with the conversation's span in
// the stream, not with the stream's size: the file store indexes subjects
// per block but scans a block's messages linearly, so conversations
// interleaved with many others cost more per message read (see the
// benchmarks). Last is one direct get.
//
// # Concurrency
//
// A Store is safe for concurrent use. Acks are handled on one NATS
// subscription goroutine; done callbacks run there (in stream order), on
// the Store's timeout goroutine (ErrTimeout) or in Close (ErrClosed), and
// must not block. At most Options.MaxPending appends are in flight;
// beyond that AppendAsync fails fast with ErrBackpressure. Range's
// callback runs on the caller's goroutine.
package histstore
