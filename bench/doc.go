// Package bench is the load generator behind cmd/unigate-bench: it opens
// many real WebSocket connections to a running gateway and measures what the
// gateway costs (idle), how fast it relays chat (chat, sweep), how it
// recovers from a reconnect storm (storm) and how fast it fans one event
// out to many connections (fanout).
//
// # Scenarios
//
// RunIdle ramps anonymous visitor connections (upgrade, Hello, Welcome) at a
// fixed rate, stops at each step to let the server settle, then samples the
// server's resident memory (/proc/PID/status VmRSS), the kernel's TCP memory
// (/proc/net/sockstat) and the gateway's own connection gauge. The result is
// the server RSS slope per connection (least squares over the steps).
//
// RunChat connects agents (with signed tokens) and visitors, opens one
// conversation per visitor, waits until every conversation is assigned, then
// sends visitor messages on an open-loop schedule: conversation g sends its
// k-th message at T0 + g/rate + k·conversations/rate, whatever happened to
// the previous ones. Latency is measured from that scheduled time, not from
// the moment the client managed to write, so a slow server cannot hide
// behind a slow client (coordinated omission). Agents answer a fixed
// fraction of the messages; their replies are timed from the moment the
// agent decided to answer.
//
// RunStorm drops every visitor at once and checks their resume; RunSweep
// runs RunChat at rising rates.
//
// RunAdmission runs RunChat's live load and, after a calm part of its
// measured window, a connection storm beyond the node's cap from separate
// worker processes (optionally under nice(1)): every attempt must be
// admitted or refused with 503/429 and Retry-After, exactly the excess
// refused when the cap is known. The chat workers keep every measured
// latency with its due time, so the coordinator can split them into the
// calm part, the storm (messages due between the first dial and the last
// answer) and after it, and report the ratio of the p99s, with the CPU of
// the server (user, system), the chat and the storm clients in each part.
//
// RunFanout measures one event delivered to many: visitors of a tenant
// without agents wait in its queue, and on an open-loop schedule the
// visitor at the head leaves, so the broker sends the visitors behind
// their new positions (every change within the first 100 places, every
// 10th place beyond). Each visitor knows the place it joined at, so a
// position q received by the visitor that joined at p0 is the effect of
// the (p0−q)-th trigger: its latency is measured from that trigger's due
// time, in the receiving worker's clock, whichever worker sent it. The
// queue is emptied from its tail at the end, so the teardown moves nobody.
//
// RunEcho drives any WebSocket echo server (Unigate's transport in
// netpoll/examples/echo, the baselines in bench/baselines) the same way:
// open-loop steps at rising rates, scheduled like chat (connection g of C
// sends its k-th message of a step at T0 + g/rate + k·C/rate), then
// optionally a closed loop that keeps a window of messages in flight per
// connection. Every echo is checked byte for byte and in order, timed from
// its due time, and the server's CPU time per message is measured from
// /proc. Its client is not gorilla/websocket: it writes masked frames it
// builds in a reused buffer (all messages already due go out in one
// write) and parses the server's frames from a bufio.Reader, without
// allocating per message, so that the load generator takes as little of
// the shared CPUs as it can. OpenConversations opens conversations for the
// REST API scripts of bench/wrk.
//
// # Encrypted connections
//
// With Common.Suite (GM, GM-PQ or INTL-PQ) and the gateway's identity
// keys pinned (Common.ServerKeys), every connection of idle, chat, sweep,
// storm and fanout runs the secure channel of docs/crypto.md: the client
// handshake right after the upgrade, before the hello (its time is part
// of the connect latency), then every envelope both ways is secure{record}
// with one record per frame, sealed and opened by crypto.Conn
// (per-direction sequence numbers, rekeying at the server's rekey_after).
// The client's side allocates nothing per message, as in plaintext
// (BenchmarkSecureFrame); a JSON record is read without the codec
// (secureDataJSON), whose decode of secure data allocates. The server's
// NewSessionTicket is kept per connection index, so a storm's reconnect
// resumes (PSK, no server signature); other scenarios connect each index
// once, with a full handshake. A failed handshake counts as a failure
// secure_<code> (secure_5: the server's key is not the pinned one). The
// idle scenario drains frames after the welcome without opening them.
// The admission scenario's storm clients (admitworker) stay plaintext.
//
// # Processes
//
// One process holds at most ~19,900 sockets on the machines this was written
// for, so a run is split over worker processes: the coordinator re-executes
// its own binary with the hidden "worker" subcommand (see Common.Worker) and
// talks to each worker over its stdin and stdout, one JSON object per line
// (see wire). Workers stop on their own when stdin closes or their deadline
// passes. The coordinator owns the timeline (steps, start time, sampling of
// the server); workers own connections and clocks. The visitor and the agent
// of a conversation always live in the same worker, so latency is measured
// with one monotonic clock; with several chat workers each worker uses its
// own skill group so the dispatcher cannot pair a visitor with another
// worker's agent.
//
// # Concurrency
//
// Each client connection has one reading goroutine; pings are answered by
// gorilla/websocket from that loop (by the echo client's reader itself). Data frames are written by exactly one
// goroutine per connection (the visitor's schedule, or the agent's writer);
// control frames (pong, close) may be written concurrently, as
// gorilla/websocket allows. Counters are atomics; histograms and the
// per-conversation bookkeeping are guarded by small mutexes.
//
// Every loop in this package is bounded in both count and time: dialing
// stops after a failure budget, every wait has a deadline derived from the
// configuration, and a worker that loses its coordinator exits.
package bench
