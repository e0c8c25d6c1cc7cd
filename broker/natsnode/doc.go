// Package natsnode starts the NATS server a Unigate node talks to: an
// embedded nats-server with JetStream on local disk (the default), or a
// connection to an external NATS cluster (Options.ExternalURL).
//
//	n, err := natsnode.Start(natsnode.Options{StoreDir: "/var/lib/unigate/nats"})
//	if err != nil { ... }
//	defer n.Shutdown()
//	js := n.JetStream() // e.g. histstore.Open(ctx, js, histstore.Options{})
//
// # Listening
//
// Nothing listens on TCP unless asked. Standalone with an empty
// ClientListen, the server runs with DontListen and the node talks to it
// through an in-process connection (nats.InProcessServer): no socket, no
// port. A clustered node (ClusterListen set) listens for routes on
// ClusterListen; nats-server only starts its route listener after the
// client accept loop is up, so a clustered node with an empty ClientListen
// listens for clients on 127.0.0.1 with a random port (loopback only).
//
// # Clustering
//
// Several nodes form one NATS cluster through routes: each node sets the
// same ClusterName, its own ServerName (required, stable across restarts:
// JetStream's RAFT groups identify peers by it) and Routes to (some of) the
// others. JetStream clustering is RAFT: replicated streams need 3 nodes for
// R3 (a quorum of 2); 2 nodes give no fault tolerance. A JetStream cluster
// also requires configured routes on every node (nats-server refuses
// otherwise). Moving a standalone node's streams into a cluster is not an
// in-place switch: streams must be migrated (e.g. sourced into new ones).
//
// # Durability
//
// The file store writes every message to its block file (a write(2)) before
// JetStream acks it, so an acked message survives a crash of the process
// (kill -9). It is fsynced every SyncInterval (nats-server default 2
// minutes) unless SyncAlways is set: without it, a power loss or kernel
// crash may lose up to the last SyncInterval of acked messages on a
// standalone node. Replicated streams (R3) are acked after a quorum of
// nodes stored the message.
//
// # Limits
//
// JetStream's memory store is capped at MaxMemory (default 256 MiB) and
// its file store at MaxStore (default 16 GiB); a stream that would exceed
// the account's limits is refused at creation, and per-stream retention
// (histstore) discards old messages before these are reached.
//
// # Concurrency
//
// A Node is safe for concurrent use. Conn and JetStream return the same
// shared connection; Shutdown may be called once, after which neither
// may be used.
package natsnode
