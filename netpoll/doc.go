// Package netpoll terminates HTTP/1.1 and WebSocket connections on a gnet/v2
// event loop, one loop per core, with no goroutine per connection.
//
// A Server serves one port. A request to the WebSocket path (default /ws) is
// upgraded with gobwas/ws over exactly the bytes of its request head; /healthz
// and /readyz are answered on the event loop; any other request goes to an
// optional net/http Handler that runs on its own goroutine.
//
//	srv, err := netpoll.New(handler, netpoll.WithAddr(":8080"))
//	if err != nil { ... }
//	if err := srv.Start(); err != nil { ... }
//	defer srv.Stop(ctx) // drains: 1001 to every client
//
// # Frames
//
// Frames are parsed from gnet's inbound buffer as bytes arrive: partial
// headers and payloads stay in the buffer until complete, several frames in
// one read are all handled, control frames may interleave the fragments of a
// message. RFC 6455 is enforced: unmasked client frames, reserved bits,
// reserved opcodes, oversized or fragmented control frames, bad continuation
// order, bad close payloads and codes close the connection with 1002;
// invalid UTF-8 in a text message (checked incrementally across fragments)
// with 1007; a message over the limit with 1009, as soon as its header says
// so. Pings are answered with pongs carrying the same payload; a close frame
// is echoed. After the server's close frame (its own or the echo) the
// connection lingers: the socket is half-closed, so the client reads the
// close frame and then end of stream, and whatever the client still sends
// is read and discarded until it closes its side, or for 1–2 s
// (unigate_netpoll_timeouts_total{kind="close"}). Closing at once with
// unread input would make the kernel send a reset that can destroy the
// close frame before the client reads it.
//
// # Ownership and concurrency
//
// Handler methods run on the connection's event loop and must not block.
// The payload passed to Handler.OnMessage points into gnet's buffer (or the
// connection's reassembly buffer) and is valid only until OnMessage returns:
// copy what you keep, never hand it to another goroutine.
//
// Outbound frames are Frames: built once, reference counted, and queued with
// Conn.Send from any goroutine. Send never blocks; the connection's event
// loop writes queued frames in batches (one loop task serves every
// connection of that loop with pending frames) with one writev each, and
// releases them. The bytes queued per connection are bounded
// (WithMaxOutboundBytes); a connection over the bound is a slow consumer and
// is closed with 1013.
//
// A Frame may carry a Trace (monotonic stamps, Nanotime, of the relayed
// message it delivers: read on the sender's loop, taken by a worker,
// stored, handed to Send). The recipient's loop observes every stage in
// unigate_relay_stage_seconds{stage} (RelayStages) after its writev;
// Conn.ReadAt gives OnMessage the start of its loop's read pass.
//
// A loop that has run callbacks back to back for 500 µs (a connection
// storm: every event a handshake or a refusal) yields its P and writes
// every queued frame before it goes on (unigate_netpoll_loop_yields_total),
// so the handler's workers and the deliveries of established connections
// do not wait for the end of a batch of up to 1024 events.
//
// # Sealed connections
//
// Conn.SetSealer installs a per-connection Sealer (Unigate's secure
// channel): from then on Send replaces each data frame by the Sealer's
// frame for this connection, under the connection's send lock, so frames
// are sealed in the order they are written (records with implicit sequence
// numbers). A frame shared by several connections stays shared for the
// others. The sweeper calls Sealer.Compact on the event loop once a sealed
// connection has been quiet for WithSealerIdle.
//
// # Admission and rates
//
// WithAdmission gates upgrades: the Admission (package limiter) is asked
// once the request head is complete, and a refusal is answered with 429 or
// 503 and Retry-After (each distinct answer is built once and reused: a
// storm of refusals formats and allocates nothing in this package);
// Release is called when an admitted connection closes. While the Admission reports Overloaded, /readyz answers 503.
// WithConnRates bounds each connection's messages and bytes per second
// with two token buckets kept in the Conn (no allocation per message); a
// connection over either is closed with 1008 "rate limit".
//
// # Client addresses
//
// WithTrustedProxies names the proxies in front of the server. Only they
// may send a PROXY protocol v1/v2 header (WithProxyProtocol) or have
// X-Forwarded-For (right-most untrusted hop) and X-Real-IP believed; a
// PROXY header from anyone else gets 400. Conn.RemoteAddr and admission
// use the resulting client address.
//
// Deadlines (handshake, idle) and keep-alive pings are swept by gnet's
// ticker over a registry of connections: there is no timer per connection.
package netpoll
