// Package broker routes customer-service chat between visitors and agents:
// sessions, conversations, the waiting queue and agent assignment. With
// Options.History (and Options.Conversations, Options.Sessions) it is
// durable: see "Durability" below and docs/broker.md. Without them
// everything lives in this process only (tests, benchmarks).
//
// A Broker is a netpoll.Handler:
//
//	b, err := broker.New(broker.Options{Signer: signer, AllowAnonymous: true})
//	if err != nil { ... }
//	defer b.Close()
//	srv, err := netpoll.New(b, netpoll.WithAddr(":8080"))
//	...
//	metrics.RegisterSet(b.Metrics())
//
// # Concurrency contract
//
// Three kinds of goroutines touch broker state:
//
//   - Event loops (netpoll) call OnOpen, OnMessage and OnClose. They never
//     block. OnMessage copies the payload into a pooled buffer (the only
//     copy), decodes it there with the connection's codec (Proto strings
//     alias the copy) and hands the resulting work item to a shard with a
//     non-blocking channel send. When the shard's inbox is full the request
//     is answered on the loop with Error CodeOverloaded (temporary) and
//     dropped; decode errors are answered with the codec's code, and the
//     10th malformed message closes the connection with 1008.
//
//   - Shards: Options.Shards goroutines, each with a bounded inbox
//     (Options.QueueSize) for client requests and an unbounded-by-type but
//     bounded-by-state control mailbox (below). Every conversation is owned
//     by exactly one shard, hash(conversation id) mod Shards, and only that
//     goroutine reads or writes it: its state, sequence numbers (from 1,
//     strictly increasing), history ring, dedupe table and the list of
//     connections it delivers to. There is no lock on conversation state.
//     Session-scoped requests (hello, open, presence) go to the
//     connection's home shard, hash(connection id) mod Shards; so do all
//     requests of a connection until its hello was processed: the home
//     shard forwards conversation-scoped ones, in arrival order, to their
//     shard after the welcome. The event loop switches a connection to
//     direct routing only when the hello is done and nothing it routed via
//     the home shard is still in flight, and a shard drains its mailbox
//     before each inbox item, so a client that pipelines hello+send keeps
//     its order.
//
//   - The janitor: one goroutine that ticks (every quarter of the shorter
//     of ResumeTTL and OfflineGrace, within 10ms..1s) to expire detached
//     sessions, take agents offline after their
//     grace period, hand the conversations of departed users back to their
//     shards and ask shards to forget closed conversations.
//
// With Options.Secure, a fourth kind, handshake workers (secure.go), run
// the server side of secure-channel ClientHellos taken from a bounded
// queue; the event loop keeps the Finished and record opening, and
// netpoll seals outbound frames per connection under its send lock.
//
// Cross-shard notifications (a conversation created by a home shard, an
// assignment decided by the dispatcher, a connection to attach to a
// conversation) go through each shard's control mailbox: a slice appended
// under a leaf mutex plus a one-slot wake-up channel. Posting never blocks
// and never waits for the receiver, so no two goroutines ever block on each
// other's bounded channels: the only blocking channel operation in the
// package is a shard waiting on its own inbox and mailbox. The mailbox has
// no fixed capacity, but what it holds is bounded by existing state: at
// most one pending create per open conversation, one assignment and a few
// position updates per queued conversation, one attach per (live
// connection, conversation), and forwarded requests of connections still
// in their hello handshake, which the event loop caps at 64 per
// connection.
//
// The integrator API (package api, on netpoll's HTTP goroutines) uses the
// exported methods of integrator.go: each posts a ctrlCall closure to the
// conversation's shard mailbox (every shard's, for a list) and waits for
// it with the request's context, or Close. The closure runs on the shard
// like any control message; a posted message joins the conversation's
// append queue with a reply callback instead of a connection. The mailbox
// holds at most one call per HTTP request in flight (netpoll bounds
// those). Durable history pages are read from History on the HTTP
// goroutine, after the shard gave the conversation's tenant and last seq.
//
// The dispatcher (agent presence and capacity, one FIFO-within-priority
// waiting queue per tenant) is a plain struct behind one mutex. It never
// does I/O; it posts its decisions (assign, queue position) to the shard
// mailboxes while holding the mutex, so each shard sees them in decision
// order (positions never go backwards). Lock order: dispatcher → mailbox;
// registry → user; no other nesting.
//
// The registry (user id → live connections, session id → session) is
// guarded by one mutex; each user has its own small mutex for its
// connection list and conversation set. Event loops take these only in
// OnClose, for a few instructions.
//
// # Delivery
//
// A conversation delivers to the connections attached to it: all live
// connections of its visitor and of its current agent (an agent may have
// two consoles, a visitor two tabs). A sender's own connection gets the Ack,
// every other attached connection (including the sender's other ones) the
// Deliver. Each outbound envelope is encoded once per codec in use among
// its recipients (at most two), into one netpoll.Frame that is retained
// once per recipient. Connections are attached by the conversation's shard
// only: after a hello (with a replay of history after the client's cursor),
// on assignment and transfer (with the full history). Attaching first
// sends a Conversation event with the current state, then the replay, so a
// client sees every stored message once, in order.
//
// # Lifetimes
//
// A visitor's conversations stay open for ResumeTTL after its last
// connection closed; then they are closed with reason "visitor_left". An
// agent whose last connection closed stays online for OfflineGrace (a
// reload or a network switch does not free its slots), then goes offline
// (no new assignments) but keeps its conversations until ResumeTTL, when
// they are queued again ahead of new ones. Closed conversations are
// remembered for ResumeTTL (sends get CodeConversationClosed, not
// CodeUnknownConversation), then forgotten.
//
// # Durability
//
// With Options.History a Send is not acked when the shard handles it: the
// shard queues it on its conversation (at most MaxPendingPerConversation,
// beyond that CodeOverloaded) and keeps exactly one AppendAsync in flight
// per conversation (histstore needs the previous stream sequence). The
// append's done callback runs on a NATS goroutine and only posts a
// ctrlAppended to the owning shard's mailbox (one per in-flight append, so
// bounded by the conversations); the shard then takes the seq
// (lastSeq+1), stores the message in the ring (now a cache of the durable
// history, and the dedupe table), sends the Ack and the Delivers. So
// whatever a client has been acked or delivered is durable. A failed
// append answers CodeUnavailable and consumes no seq; a conflict (the
// stream holds messages the shard does not know, e.g. an append that timed
// out but was stored) makes the shard resynchronise with Last + Replay,
// deliver what it missed, and retry. The callback carries the
// *conversation only as an identity to compare; only the shard touches it.
//
// Conversation metadata (ConvStore, a JetStream KV bucket) is written with
// revision-checked updates on creation and on every state change. On a cold
// start a conversation is rebuilt lazily by its shard when a request, a
// resume cursor or a restored session names it (KV get, histstore.Last,
// the newest page of history into the ring). Those calls, metadata writes
// and replays reaching older than the ring are the only blocking I/O in
// the broker, each bounded by ioTimeout, on the shard of the conversation
// concerned: a deliberate exception to "shards never wait" (see
// docs/broker.md).
//
// Sessions (Options.Sessions, the fastcache session store) are written at
// each welcome and when a session loses its last connection. A resume
// token signs the session id and the identity (user id, role, tenant), so
// a session missing from the cache is rebuilt from the token within
// ResumeTTL of the process start (a crash lost it), and refused later.
//
// # Seams
//
// Still to replace for a cluster: the dispatcher (JetStream KV with
// compare-and-set so no conversation is assigned twice across nodes; after
// a restart it does not know the load of agents' rebuilt conversations)
// and delivery across nodes by subject. The shard model and the mailbox
// protocol stay.
package broker
