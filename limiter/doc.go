// Package limiter decides, before any work is spent, whether a new
// connection may be served, and gives netpoll the cheap token buckets it
// keeps per connection for message and byte rates.
//
// A Limiter holds:
//
//   - a hard cap on admitted connections, derived from the process's
//     RLIMIT_NOFILE minus a reserve, or set lower;
//   - a global rate of new connections (token bucket);
//   - per client IP (IPv6 keyed by its /64): concurrent connections and a
//     rate of new connections, with an allow list of CIDRs (known NAT
//     egress addresses) exempt from both;
//   - per verified identity (a token subject): the same two limits, as an
//     API the broker calls once it has read the token (AdmitIdentity);
//   - per client IP again, for anonymous sessions only (AdmitAnonymous,
//     called by the broker on a hello without a token): NAT-friendly
//     deployments keep the per-IP connection limits generous and these
//     and the identity limits strict.
//
// Use:
//
//	lim, err := limiter.New(limiter.Settings{PerIPConnections: 1000}, set, logger)
//	ok, status, retryAfter, reason := lim.Admit(ip) // on the upgrade
//	...
//	lim.Release(ip) // when an admitted connection closes
//
// Every refusal carries a reason, an HTTP status (429 for a client over its
// own limits, 503 when the node is full or over its global rate) and a
// Retry-After; it is counted in unigate_limiter_refused_total{reason="..."}
// on the metrics.Set given to New, and logged at most once per reason per
// 10 seconds with the count since the previous line, never once per event.
//
// A nil *Limiter admits everything, so callers need no "limits enabled"
// branch.
//
// # Bounded memory
//
// Per-key state lives in a map split into 64 shards. A key with no open
// connection and a full bucket carries no information and is dropped as soon
// as it is seen (on Release) or swept (at most every 10 s per shard). When a
// shard holds more than MaxKeys/64 keys, idle keys are evicted down to three
// quarters of that, the fully refilled ones first; a key with open
// connections is never evicted (its count is needed by Release). So the keys
// held never exceed MaxKeys + the number of admitted connections, whatever
// the number of distinct addresses an attacker sprays; each key costs about
// 80 bytes (65,536 keys ≈ 5 MiB). Evicting a key whose bucket was not yet
// full forgets that it was rate limited: under address spraying the global
// accept rate and the hard cap are the limits that hold.
//
// # Concurrency
//
// Every method is safe for concurrent use and never blocks on anything but
// a short per-shard mutex: the limiter is called on gnet event loops.
// Update replaces the settings atomically (SIGHUP reload); state already
// held (open connection counts, buckets) is kept.
//
// Bucket is the exception: it is a plain value for one owner (a
// connection's event loop) and is not safe for concurrent use.
package limiter
