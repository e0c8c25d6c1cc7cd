// Package sessionstore is the broker's session cache: visitor and agent
// sessions (identity, tenant, conversation ids, resume token, last acked
// sequence per conversation) as opaque values with a deadline, sealed with
// SM4-GCM, kept in a github.com/VictoriaMetrics/fastcache cache and saved
// to encrypted snapshots for fast restarts.
//
//	key, err := sessionstore.LoadOrCreateKey(filepath.Join(stateDir, "session.key"))
//	...
//	s, err := sessionstore.LoadSnapshot(snapPath, opts, key)
//	if err != nil {
//		if !errors.Is(err, fs.ErrNotExist) {
//			logger.Warn("session snapshot not restored; starting empty", "err", err)
//		}
//		s, err = sessionstore.New(opts, key)
//	}
//	defer s.Close()
//	...
//	err = s.Put(sessionID, encoded, resumeTTL)
//	buf, ok := s.Get(buf[:0], sessionID)
//	...
//	err = s.SaveSnapshot(snapPath) // on shutdown, and periodically
//
// # A miss means "rebuild"
//
// The store is a cache, never the source of truth. Get returns false not
// only for keys never stored, deleted or past their deadline, but also —
// at any time and without warning — for values that fastcache evicted
// (a bucket that fills up drops its oldest 64 KiB chunk, with every entry
// in it), lost to a 64-bit hash collision with another key, or that fail
// to open (damage, a snapshot written by a buggy build, a value moved to
// another key). A successful Put does not promise that the next Get finds
// the value. Every caller must handle a miss by rebuilding the session
// from its source of truth (the resume token, which is MAC-signed and
// carries the identity; the history stream for sequences) or by asking
// the client to start over. Code that treats a miss as "this session
// never existed, reject the client" is a bug. Stats counts misses, and
// which of them were expiries or unreadable values.
//
// What the store does guarantee: Get never returns a value other than the
// one last Put under that key (or none); Put never drops a value silently
// because of its size — values up to Options.MaxValueBytes are stored
// (values whose entry would reach fastcache's 64 KiB limit go through
// SetBig, which splits them), longer ones are refused with ErrTooLarge,
// and a split value whose chunks evict each other in a too-small cache is
// reported with ErrNotStored.
//
// # Concurrency
//
// A Store is safe for concurrent use by any number of goroutines: fastcache
// locks per bucket (512 buckets), and the Store adds only atomic counters
// and a mutex that serialises SaveSnapshot calls. SaveSnapshot runs while
// Puts and Gets continue; it copies one bucket at a time, so a snapshot is
// not a point-in-time image of the whole cache (each entry is either its
// old or its new value, which the miss contract covers). Concurrent Puts
// of one key leave one of the values. A Get that finds an expired value
// deletes it, and may delete a value Put under the same key at that very
// moment: one more miss. Get and Put do not block on I/O, do not allocate
// in steady state for values under 64 KiB when Get is given a reused dst
// (TestAllocs), and keep no reference to the slices they are given or
// return.
//
// # Stored values
//
// Each value is stored as
//
//	version (1) | deadline, Unix ns (8) | nonce (12) | SM4-GCM(value) | tag (16)
//
// 37 bytes of overhead. The nonce comes from crypto/rand; the additional
// data is version, deadline and the key, so a value copied under another
// key, or with a changed deadline, fails to open. The deadline is in clear
// so that expired entries are dropped without decrypting. SM4 is GB/T
// 32907-2016, used in GCM mode (crypto/cipher.NewGCM reaches gmsm's
// assembly); the key it uses is derived from the master key with
// HMAC-SM3 (GB/T 32905-2016) and a per-purpose label.
//
// Random 96-bit nonces bound the number of values one key should seal to
// about 2^32 (NIST SP 800-38D); a gateway that rewrites sessions at 10,000
// per second reaches that in about five days of uptime summed over the key's
// life. Rotate the key file well before (a new key only costs the
// snapshot: the restart is cold).
//
// # Snapshots
//
// SaveSnapshot writes
//
//	path -> <base>.snap-<random>/            symlink, swapped with one rename
//	    MANIFEST                             sealed manifest, 0600
//	    cache/metadata.bin, cache/data.N.bin fastcache.SaveToFileConcurrent, 0600
//
// in 0700 directories, fsyncs everything, then renames a new symlink over
// path, so a crash leaves either the previous snapshot or the new one. The
// MANIFEST holds a key id (8 bytes of HMAC-SM3 of the master key, in
// clear), then, sealed with a manifest key derived from the master key,
// the cache capacity and the size and SM3 checksum of every cache file.
// LoadSnapshot checks the key id (another key: ErrBadSnapshot "snapshot was
// written with another key", before touching anything else), opens the
// manifest, and verifies every file before handing the directory to
// fastcache, whose loader trusts the lengths it reads (a forged length
// could make it allocate without bound). Any mismatch is ErrBadSnapshot
// with the reason; the caller starts empty.
//
// Security properties, for someone who can read the snapshot files (a
// backup, a stolen disk) but not the key file:
//
//   - Values are encrypted and authenticated: resume tokens, tenants,
//     conversation ids and everything else inside a value stay secret.
//   - Not encrypted: the keys. fastcache stores each key in clear next to
//     its value (the files are only snappy-compressed), and so does memory.
//     Also visible: each value's deadline and length, the number of entries
//     and the snapshot time. Keys must therefore not be secrets on their
//     own: use session ids that grant nothing without the MAC-signed resume
//     token (never the token itself, nor an email address or a phone number
//     if the tenant's policy treats those as personal data). Deleted and
//     overwritten values remain as unreachable ciphertext until the ring
//     wraps.
//   - Someone who can also write the files can delete entries, make them
//     look expired, or replay a whole older snapshot sealed with the same
//     key; they cannot forge or alter a value, move it to another key, or
//     extend its deadline. Replay is why resume tokens carry their own
//     expiry and MAC.
//
// Whoever can read the key file can read everything: keep it 0600 on the
// same host, outside backups of the snapshot (LoadOrCreateKey enforces the
// permissions).
//
// # Encryption at rest
//
// With encryption at rest (crypto/atrest), the seal key is not kept in
// clear: LoadOrCreateWrappedKey keeps it wrapped by the master key (whose
// file lives outside the data directory, or in a hardware module later),
// migrating an existing clear key file so the last snapshot stays
// readable, and rewrapping it after a master key rotation. A file the
// master key does not unwrap is ErrBadKey (and atrest.ErrWrongMasterKey):
// the gateway logs the refusal, writes a new key (NewWrappedKey) and
// starts with no sessions, as for a damaged snapshot. The values and the
// manifest are sealed as described above either way.
package sessionstore
