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
//     non-blocking channel send: to its inbox (conversation requests of a
//     connection routed directly) or its setup queue (hello, open,
//     presence, and requests sent before the welcome); the shard serves
//     the inbox first, at most 32 in a row while setup work waits, so chat
//     does not wait behind a storm of hellos. When the queue is full the request
//     is answered on the loop with Error CodeOverloaded (temporary) and
//     dropped; decode errors are answered with the codec's code, and the
//     10th malformed message closes the connection with 1008.
//
//   - Shards: Options.Shards goroutines, each with two bounded queues
//     (Options.QueueSize each: inbox and setup) for client requests and an unbounded-by-type but
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
//     before each queued item, so a client that pipelines hello+send keeps
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
// With Options.Backends (backends.go), backend workers run bot and
// authentication calls and post the answers to the shard's mailbox; hook
// events leave the shards as values on a bounded channel (full: dropped
// and counted), read by one delivering goroutine, or with Backends.Events
// by a spooler that stores them in JetStream and one deliverer per
// partition that pulls them back (hookevents.go), and one goroutine that
// answers the shards' own event publishes in order (awaitPubs,
// hookstrict.go). None of them touches conversation state. The authentication cache (authcache.go) is a leaf
// mutex taken by shards (lookup) and workers (settle).
//
// Cross-shard notifications (a conversation created by a home shard, an
// assignment decided by the dispatcher, a connection to attach to a
// conversation) go through each shard's control mailbox: a slice appended
// under a leaf mutex plus a one-slot wake-up channel. Posting never blocks
// and never waits for the receiver, so no two goroutines ever block on each
// other's bounded channels: the only blocking channel operation in the
// package is a shard waiting on its own queues and mailbox. The mailbox has
// no fixed capacity, but what it holds is bounded by existing state: at
// most one pending create per open conversation, one assignment and a few
// position updates per queued conversation, one attach per (live
// connection, conversation), and forwarded requests of connections still
// in their hello handshake, which the event loop caps at 64 per
// connection. In cluster mode add the sends other nodes forward to this
// one (bounded by their queues), one answer per send this node forwarded,
// one forward tick per conversation with forwards in flight, and the
// reaper's departures (one per conversation of a dead node's user).
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
// registry → user; no other nesting. An in-process router
// (Backends.Router) is called under the mutex; a remote one
// (Backends.RouterPlugin) never is: the dispatcher reserves a slot of
// each candidate, hands the call to a backend worker without waiting, and
// the worker takes the mutex again to commit the answer after
// revalidating it (two-phase routing, route.go). A worker holds nothing
// else when it takes the mutex.
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
// The Deliver of a client's Send carries a netpoll.Trace: the time its
// event loop read it (Conn.ReadAt, in the item), the shard took it from
// its inbox, it was stored (durable: the append's completion, stamped on
// the NATS goroutine in the conversation's appendResult) and taken up
// again by the shard, and handed to Send; the recipient's event loop adds
// the write and observes unigate_relay_stage_seconds. The stamps ride in
// the item, the pendingSend and the Frame: nothing is allocated for them.
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
// append's done callback runs on a NATS goroutine and only fills the
// conversation's one appendResult and posts a ctrlAppended to the owning
// shard's mailbox (one per in-flight append, so bounded by the
// conversations; the closure and the result are the conversation's, made
// once, and appended copies the result before it starts the next append,
// which reuses them); the shard then takes the seq
// (lastSeq+1), stores the message in the ring (now a cache of the durable
// history, and the dedupe table), sends the Ack and the Delivers. So
// whatever a client has been acked or delivered is durable. An append
// the store refused (histstore.ErrUnavailable) answers CodeUnavailable and
// consumes no seq: every refusal of a send but one is definitive (not
// stored, never delivered). An append whose outcome is unknown (an ack
// timeout) is appended again unchanged, and the answer settles it; after
// maxUnknown of them the sender gets CodeUnconfirmed, the one refusal
// that means "may have been stored", as does any later refusal of a send
// that may have been. A conflict (the stream holds messages the shard does
// not know: another writer's, or this very send stored by an attempt whose
// answer was lost) makes the shard resynchronise with Last + Replay,
// deliver what it missed, and retry; a message it learns that is one of
// its queued sends (same sender and client message id) is that send's Ack
// (pendingAs), not a Deliver to its sender. The callback carries the
// *conversation only as an identity to compare; only the shard touches it.
//
// Hook events that follow durable state (Backends.Events with History;
// hookstrict.go) are stored before anybody is told of that state. A
// stored message's message_stored and message_left events are published
// by the shard once its append is stored, and its Ack, Delivers, cluster
// notice and the bot's turn wait (held, in order) until JetStream stored
// them; a re-send of a stored message (same client message id) publishes
// them again with the same ids before its Ack, and a cold load publishes
// those of the newest MaxPendingPerConversation messages again before any
// replay (held messages count against that bound). A state change writes its
// event into the conversation record with the change (ConvMeta.Hooks, an
// outbox), stores it synchronously (bounded by ioTimeout) and then
// announces it; a node loading a record, or applying another node's,
// stores the events it carries again before telling anybody. Events of
// one conversation are published in order; a refused one holds back the
// later ones of its conversation (evq) and is retried until stored, never
// dropped for room. The publish callbacks only post ctrlCall closures to
// the shard; only the shard touches the conversation.
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
// Sessions (Options.Sessions, the fastcache session store) are written
// when a session loses its last connection (every connection does, those
// a stop closes included, before the snapshot is saved), not at the
// welcome: a session in memory is never read from the cache. A resume
// token signs the session id and the identity (user id, role, tenant), so
// a session missing from the cache is rebuilt from the token within
// ResumeTTL of the process start (a crash lost it), and refused later. A
// session the authentication hook signed in (id prefix s_h_) resumes with
// its resume token alone only from its live session or a record that says
// so (the cache's, or in a cluster the load bucket's "s." key, written
// with the same lifetimes), never from the token's identity alone.
//
// # Cluster
//
// With Options.Cluster several brokers, each on its own NATS server of
// one cluster (embedded servers joined by routes, or one external
// cluster), are one system. There is no owner of a conversation: every
// node holding it in memory (a replica: its visitor or agent is connected
// there) may append to it and change it, and compare-and-set decides.
//
//   - Messages. An append carries the stream sequence the node believes is
//     the conversation's last (histstore's expected-last-subject-sequence),
//     so of two nodes appending at once one gets a conflict, resyncs (Last
//     and Replay, delivering what it missed) and retries. After the PubAck
//     the appending node acks and delivers locally at once, then publishes
//     a notice (seq, stream seq, message) on the core-NATS subject
//     <prefix>.conv.<id>. Every replica's shard follows that subject (one
//     ChanSubscribe per conversation in memory, into the shard's bounded
//     notice channel, read by the shard goroutine like its mailbox): seq ==
//     last+1 is stored and delivered, seq <= last ignored, a gap resyncs
//     from History (deferred until the shard's own append in flight is
//     answered). A replica subscribes before reading Last, and compares
//     with History again on its next two sweeps, because interest crosses
//     the routes asynchronously; an attach also resyncs first.
//   - Writers. A node whose append conflicts while another node is
//     writing the conversation (its notices) forwards its sends to that
//     node (cluster_write.go, core NATS request/reply) instead of racing
//     it: the other node appends both sides' sends in arrival order, and
//     the forwarding node acks its sender when the message comes back
//     (notice, resync or answer). Forwarded sends stay in the forwarding
//     shard's queue, in order; the answer is posted to the shard like an
//     append's outcome. A forward without an answer in time is taken back
//     and appended by the forwarding node, unchanged: the stream's
//     deduplication by message id decides which of the two stored it. On a
//     replicated stream the sends queued behind the head go in one atomic
//     batch (histstore.AppendBatchAsync).
//   - State. Every change (assign, transfer, requeue, close) is a
//     revision-checked update of the conversation record by the shard that
//     makes it, before it changes anything in memory (ConvMeta.Event tells
//     other nodes which event to announce); a lost update re-reads and
//     applies the winner's record and the request fails with
//     CodeBadTransition. Each node watches the whole conversation bucket
//     (one goroutine, an ordered consumer): the dispatcher mirrors the
//     queue from it, and each record change is posted (ctrlMeta) to the
//     conversation's shard, which applies it to its replica, or loads the
//     conversation when one of its participants is connected to this node
//     (an agent it was just given).
//   - Assignment. Each node's dispatcher sees every queued conversation
//     of the cluster (in record-revision order) but only the agents
//     connected to it; it assigns as before, and the shard commits each
//     decision with two compare-and-sets: a slot in the agent's
//     cluster-wide load (bucket UNIGATE_AGENT_LOAD, capacity checked),
//     then the record queued → assigned. A loser gives the slot back
//     (unless it was not its own) and the conversation returns to its
//     queue if it is still waiting. So a conversation is assigned once and
//     an agent with consoles on several nodes never exceeds its capacity.
//     A slot that could not be given back is owed (WARN) and pruned by the
//     node's heartbeat once older than the reservation grace; the heartbeat
//     also re-reads and prunes the load of each local agent that looks
//     full while conversations wait, since the dispatcher offers nothing
//     to it (Broker.unreserve, payOwed, recheckFull).
//   - Presence. A presence change is written to UNIGATE_PRESENCE, whose
//     records expire (PresenceTTL) unless the node heartbeats them: a
//     transfer to an agent on another node checks it. A user's node and
//     incarnation are recorded (UNIGATE_AGENT_LOAD, "u." keys) when it
//     can have something to close or requeue: at an agent's hello, at a
//     visitor's hello while it takes part in an open conversation, and at
//     a visitor's open (Cluster.helloSeen); only the node so recorded
//     decides its departure (visitor_left, agent_left), or the reaper if
//     that node died.
//     An agent's hello lists the conversations of its cluster-wide load,
//     and a resume token is accepted on any node (the session is rebuilt
//     from the signed identity): clients of a dead node resume elsewhere.
//   - Dead nodes. Every node heartbeats a record (UNIGATE_NODES, expiring
//     after PresenceTTL) naming its incarnation, which users' seen records
//     name too. The live node with the smallest name (the reaper, on its
//     heartbeat goroutine; cluster_reap.go) notes the participants of
//     open conversations whose incarnation died and, ResumeTTL later, if
//     they came back nowhere, posts their departures (visitor_left,
//     agent_left) to its own shards, which load the conversation and
//     commit the change like any other. Seen records expire (per-key
//     TTL, seenTTLFor: longer than any reader needs one); a node rewrites
//     those of its connected users every ResumeTTL/2 (refreshSeen).
//
// # Seams
//
// The dispatcher of a cluster is per node; a leader-elected one would
// give one global order of assignment (today a node with a free agent
// takes the head of the queue it sees). The writer of a contended
// conversation is whichever node was winning; a fixed one (a hash of the
// live nodes) would also remove the first conflicts, at the cost of a hop
// for every conversation (see docs/broker.md).
package broker
