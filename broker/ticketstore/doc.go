// Package ticketstore keeps the secure channel's resumption state in the
// cluster (docs/crypto.md, "Resumption across the cluster"): the ticket
// keys every node seals and opens tickets with, and the set of tickets
// already used. Both live in JetStream key-value buckets, so a ticket
// issued by one node resumes on any other, is accepted once cluster-wide,
// and survives a restart of any node or of all of them.
//
//	seen, err := ticketstore.OpenSeenSet(ctx, js, ticketstore.SeenOptions{Replicas: 3})
//	ring, err := crypto.NewTicketKeyring(crypto.SM4GCM, 2)
//	r, err := ticketstore.OpenRing(ctx, js, ring, ticketstore.RingOptions{
//		Wrapper: masterKeys.Current(), Rotation: 12 * time.Hour, Lifetime: 12 * time.Hour,
//	})
//	defer r.Close()
//	serverConfig.Tickets, serverConfig.Seen = ring, seen
//
// # Single use
//
// [SeenSet] is a [crypto.SeenSet]: Use creates the key "<ticket id in hex>"
// in bucket UNIGATE_TICKETS_SEEN with a create-only write (JetStream's
// expected-last-subject-sequence 0, a compare-and-set), so of any number
// of nodes presenting the same ticket at once exactly one is told it is
// fresh. Each key carries a per-key TTL (nats-server 2.11+) of the
// ticket's remaining lifetime plus a clock-skew margin, so the bucket
// holds only the tickets still alive. When NATS or JetStream does not
// answer, Use fails (an error wrapping [ErrUnavailable]); the server then
// refuses the ticket and completes a full, signed handshake: the set fails
// closed, never open. After a failure Use fails at once for
// SeenOptions.Backoff, doubled for each failure in a row up to
// SeenOptions.MaxBackoff, so an outage does not hold a handshake worker
// for a timeout per resumption.
//
// # Shared, rotating keys
//
// [Ring] keeps a [crypto.TicketKeyring] in step with one entry of bucket
// UNIGATE_TICKET_KEYS, "ring.v1.<wrapper id>.<AEAD>": the ring's keys,
// newest first, each with its activation time and wrapped by an
// [atrest.KeyWrapper] (the at-rest master key, or the ticket key file's).
// Every node checks periodically whether the newest key is due to be
// replaced; the first to write the next ring with a compare-and-set on the
// entry's revision rotates for all, the others see the conflict and take
// its ring. A new key is published RingOptions.Lead before it starts
// sealing, so every node knows it (through a watch of the entry) before
// any node seals with it; a key stays on the ring until every ticket it
// sealed has expired. Nodes whose wrappers differ (another master key or
// ticket key file) keep separate rings and do not resume each other's
// tickets; they never overwrite each other.
//
// # Concurrency
//
// SeenSet.Use, Ring.Rotate and Ring.Close are safe for concurrent use. Use
// blocks for at most one bucket round trip (SeenOptions.Timeout): call it
// from a handshake worker, never from an event loop. A Ring runs one
// goroutine (the watch and the periodic check) until Close.
//
// Secrets: ticket keys are in memory only inside the TicketKeyring and,
// briefly, while they are wrapped or unwrapped; the bucket holds them
// wrapped; logs and errors name keys by their ids only.
package ticketstore
