// Package atrest is Unigate's encryption at rest: envelope encryption of
// stored values (history message texts) with SM4-GCM (GB/T 32907-2016,
// NIST SP 800-38D) under data keys that are themselves wrapped by a
// master key.
//
//	masters, created, err := atrest.LoadOrCreateMasterKeyFile("/etc/unigate/master.key")
//	ring, err := atrest.OpenKeyring(ctx, js, masters, atrest.Options{Replicas: 3})
//	defer ring.Close()
//	sealed, err := ring.Seal(nil, []byte("你好"), aad)  // aad: where the value belongs
//	plain, err := ring.Open(nil, sealed, aad)
//
// # Key hierarchy
//
//   - The master key: 32 random bytes in a 0600 file (one hex line per
//     key, the current one first). It never seals a value: a key-encryption
//     key and an id are derived from it with the SM3 KDF of GB/T 32918.4.
//   - Data keys: random SM4 keys, each with a random 4-byte id, stored
//     wrapped by the master key (SM4-GCM, bound to the id and algorithm) in
//     a JetStream key-value bucket (default UNIGATE_KEYS, replicated like
//     the history), so every node of a cluster can read what the others
//     sealed.
//   - Sealed values: version ‖ data key id ‖ nonce ‖ ciphertext ‖ tag (33
//     bytes of overhead, see sealed.go), the caller's additional data
//     binding each value to its place.
//
// # Rotation
//
// Rotate makes a new data key active for new values; old data keys stay
// for reading, so nothing sealed is rewritten. A node also rotates on its
// own before a data key would seal more than MaxSealsPerKey values
// (2^31, below the 2^32 limit of random 96-bit GCM nonces): nodes reserve
// seals in blocks with a compare-and-set on the bucket's "active" entry,
// so the bound holds across the cluster and across restarts. Rotating the
// master key ([RotateMasterKeyFile], then [Keyring.Rewrap]) rewraps only
// the data keys.
//
// # Hardware seam
//
// The primitives sit behind two small interfaces: [KeyWrapper] wraps and
// unwraps data keys (the software [MasterKey] uses SM4-GCM; a hardware
// module keeps its key inside and implements Wrap/Unwrap), and
// [crypto.AEAD] builds the data-key cipher (default [crypto.SM4GCM]).
//
// # Concurrency
//
// A Keyring is safe for concurrent use. Seal and Open take no lock on
// their fast path (an atomic budget counter and a copy-on-write key map);
// they append to dst and never retain their arguments. A background
// goroutine reserves the next block of seals and follows rotations made
// elsewhere (a watch on the bucket). MasterKeys and MasterKey are
// immutable.
//
// # Errors
//
// Every error wraps one of the sentinels (ErrMalformed, ErrUnknownKey,
// ErrAuth, ErrWrongMasterKey, ...). Nothing in an error or a log line is
// key material: keys are named by their ids only.
package atrest
