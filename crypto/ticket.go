package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"time"
)

// Session is what a client keeps to resume: the ticket is opaque to it. A Session
// is secret (it holds the PSK) and single use: after a resumption, use the new one.
type Session struct {
	Suite       SuiteID
	PSK         []byte
	Ticket      []byte
	Expiry      time.Time
	ServerKeyID KeyID
}

// SeenSet enforces single use of tickets. Use records id as used until expiry and
// reports whether it was unused before; it must be atomic (across the cluster, for
// single use to hold there). An error means the check could not be made: the
// ticket is then refused (CodeTicketUnavailable) and the handshake falls back to a
// full one. The gateway uses a JetStream key-value bucket shared by the cluster
// (package broker/ticketstore), consulted after the node's session cache.
type SeenSet interface {
	Use(id []byte, expiry time.Time) (fresh bool, err error)
}

// MemorySeenSet is an in-process SeenSet; expired ids are swept as it goes.
type MemorySeenSet struct {
	mu      sync.Mutex
	now     func() time.Time
	ids     map[string]time.Time
	calls   int // since the last sweep
	sweepAt int // calls that trigger the next sweep
}

// NewMemorySeenSet returns an empty set; now may be nil (time.Now).
func NewMemorySeenSet(now func() time.Time) *MemorySeenSet {
	if now == nil {
		now = time.Now
	}
	return &MemorySeenSet{now: now, ids: make(map[string]time.Time), sweepAt: 1024}
}

// Use implements SeenSet.
func (m *MemorySeenSet) Use(id []byte, expiry time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	// Sweep after as many calls as ids were left by the last sweep (at
	// least 1024): a sweep visits at most twice the calls since the last
	// one, so it is amortized O(1) per call. (A sweep every 1024 calls
	// cost O(len/1024) per call: ~5 µs at a million ids.)
	if m.calls++; m.calls >= m.sweepAt {
		m.calls = 0
		for k, exp := range m.ids {
			if now.After(exp) {
				delete(m.ids, k)
			}
		}
		m.sweepAt = max(1024, len(m.ids))
	}
	if exp, ok := m.ids[string(id)]; ok && !now.After(exp) {
		return false, nil
	}
	m.ids[string(id)] = expiry
	return true, nil
}

// Len is the number of ids held.
func (m *MemorySeenSet) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.ids)
}

// TicketKeyring seals and opens tickets. The sealing key is the newest key whose
// activation time has come; every key on the ring opens, so rotation never
// invalidates tickets still within their lifetime as long as the ring keeps enough
// old keys. Safe for concurrent use. All gateway nodes that may receive a
// resumption must share the ring: SetSharedKeys installs keys from a common store
// (broker/ticketstore keeps them in the cluster and rotates them there).
type TicketKeyring struct {
	mu   sync.RWMutex
	aead AEAD
	keep int
	keys []ticketKey // newest (latest activation) first
}

type ticketKey struct {
	id     uint32
	active time.Time // seals from then on; zero: at once
	aead   cipher.AEAD
}

// TicketKey is one key of a ring shared by several servers (SetSharedKeys).
type TicketKey struct {
	// Secret is the AEAD key, of the ring AEAD's KeySize. It is secret:
	// never log it; wipe it after SetSharedKeys.
	Secret []byte
	// Active is when the key starts sealing; until then it only opens.
	// Zero: at once. Publishing a key ahead of its activation lets every
	// node learn it before any node seals with it.
	Active time.Time
}

const ticketNonceSize = 12

// NewTicketKeyring returns a ring with one fresh random key that keeps up to keep
// keys (minimum 2). aead nil means AES-256-GCM; pass SM4GCM for an all-GM deployment.
func NewTicketKeyring(aead AEAD, keep int) (*TicketKeyring, error) {
	if aead == nil {
		aead = AES256GCM
	}
	if keep < 2 {
		keep = 2
	}
	k := &TicketKeyring{aead: aead, keep: keep}
	if err := k.Rotate(); err != nil {
		return nil, err
	}
	return k, nil
}

// AEAD is the cipher the ring seals tickets with.
func (k *TicketKeyring) AEAD() AEAD { return k.aead }

// TicketKeyID is the id a ticket key goes by (the first four bytes of every
// ticket it seals): the first 4 bytes of SHA-256("unigate ticket key id" ‖ 0x00 ‖
// secret). Every node derives the same id from the same secret.
func TicketKeyID(secret []byte) uint32 {
	h := sha256.New()
	h.Write([]byte("unigate ticket key id\x00"))
	h.Write(secret)
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint32(h.Sum(sum[:0]))
}

func (k *TicketKeyring) makeKey(secret []byte, active time.Time) (ticketKey, error) {
	if len(secret) != k.aead.KeySize() {
		return ticketKey{}, newErr(CodeConfig, "ticket key", errLength)
	}
	a, err := k.aead.New(secret)
	if err != nil {
		return ticketKey{}, newErr(CodeConfig, "ticket key", err)
	}
	return ticketKey{id: TicketKeyID(secret), active: active, aead: a}, nil
}

// Rotate puts a fresh random key in front, sealing at once; the oldest key beyond
// keep falls off. For a ring of one process only: a shared ring rotates in its
// store (broker/ticketstore) and arrives through SetSharedKeys.
func (k *TicketKeyring) Rotate() error {
	secret := make([]byte, k.aead.KeySize())
	if _, err := rand.Read(secret); err != nil {
		return newErr(CodeInternal, "ticket key", err)
	}
	tk, err := k.makeKey(secret, time.Time{})
	wipe(secret)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.keys = append([]ticketKey{tk}, k.keys...)
	if len(k.keys) > k.keep {
		k.keys = k.keys[:k.keep]
	}
	k.mu.Unlock()
	return nil
}

// SetKeys replaces the ring with keys derived from shared secrets (newest first),
// each of the AEAD's key size, all sealing at once (so the first one seals).
func (k *TicketKeyring) SetKeys(secrets [][]byte) error {
	keys := make([]TicketKey, len(secrets))
	for i, s := range secrets {
		keys[i] = TicketKey{Secret: s}
	}
	return k.SetSharedKeys(keys)
}

// SetSharedKeys replaces the ring with keys shared by several servers, newest
// first (non-increasing Active). Each seals from its Active time until a newer
// key's comes, and opens as long as it is on the ring. Duplicate keys (by
// TicketKeyID) are refused. It does not retain the secrets.
func (k *TicketKeyring) SetSharedKeys(keys []TicketKey) error {
	if len(keys) == 0 {
		return newErr(CodeConfig, "ticket key", errNoKey)
	}
	out := make([]ticketKey, 0, len(keys))
	for i, key := range keys {
		if i > 0 && key.Active.After(keys[i-1].Active) {
			return newErr(CodeConfig, "ticket key", errKeyOrder)
		}
		tk, err := k.makeKey(key.Secret, key.Active)
		if err != nil {
			return err
		}
		for _, o := range out {
			if o.id == tk.id {
				return newErr(CodeConfig, "ticket key", errKeyDup)
			}
		}
		out = append(out, tk)
	}
	k.mu.Lock()
	k.keys = out
	k.mu.Unlock()
	return nil
}

var (
	errKeyOrder = errors.New("keys not newest first")
	errKeyDup   = errors.New("the same key twice")
)

// KeyIDs returns the ids of the keys on the ring, newest first.
func (k *TicketKeyring) KeyIDs() []uint32 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	ids := make([]uint32, len(k.keys))
	for i, tk := range k.keys {
		ids[i] = tk.id
	}
	return ids
}

// SealingKeyID is the id of the key that seals a ticket issued at now.
func (k *TicketKeyring) SealingKeyID(now time.Time) uint32 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.sealingKey(now).id
}

// sealingKey is the newest key active at now (the oldest one if none is yet,
// which only a ring whose every key was published ahead can be). k.mu is held.
func (k *TicketKeyring) sealingKey(now time.Time) ticketKey {
	for _, tk := range k.keys {
		if !tk.active.After(now) {
			return tk
		}
	}
	return k.keys[len(k.keys)-1]
}

func (k *TicketKeyring) seal(plaintext []byte, now time.Time) ([]byte, error) {
	k.mu.RLock()
	tk := k.sealingKey(now)
	k.mu.RUnlock()
	out := binary.BigEndian.AppendUint32(nil, tk.id)
	nonce := make([]byte, ticketNonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return tk.aead.Seal(out, nonce, plaintext, out[:4+ticketNonceSize]), nil
}

var errTicket = errors.New("ticket does not open")

// open returns the plaintext and the ticket's unique id (key id ‖ nonce).
func (k *TicketKeyring) open(ticket []byte) (plaintext, id []byte, err error) {
	if len(ticket) < 4+ticketNonceSize+tagSize {
		return nil, nil, errTicket
	}
	kid := binary.BigEndian.Uint32(ticket)
	k.mu.RLock()
	var a cipher.AEAD
	for _, tk := range k.keys {
		if tk.id == kid {
			a = tk.aead
			break
		}
	}
	k.mu.RUnlock()
	if a == nil {
		return nil, nil, errTicket
	}
	hdr := ticket[:4+ticketNonceSize]
	pt, err := a.Open(nil, hdr[4:], ticket[len(hdr):], hdr)
	if err != nil {
		return nil, nil, errTicket
	}
	return pt, hdr, nil
}

// ticketState is the sealed content of a ticket.
type ticketState struct {
	suite    SuiteID
	authTime int64 // unix seconds of the original full (signed) handshake
	expiry   int64 // unix seconds
	psk      []byte
	keyID    KeyID
}

const ticketVersion = 1

func (t *ticketState) marshal() []byte {
	b := []byte{ticketVersion, byte(t.suite)}
	b = binary.BigEndian.AppendUint64(b, uint64(t.authTime))
	b = binary.BigEndian.AppendUint64(b, uint64(t.expiry))
	b = putVec8(b, t.psk)
	return putVec8(b, t.keyID[:])
}

func parseTicketState(b []byte) (*ticketState, bool) {
	r := reader{b: b}
	v, ok := r.u8()
	if !ok || v != ticketVersion {
		return nil, false
	}
	s, ok := r.u8()
	if !ok {
		return nil, false
	}
	t := &ticketState{suite: SuiteID(s)}
	a, ok1 := r.u64()
	e, ok2 := r.u64()
	psk, ok3 := r.vec8()
	kid, ok4 := r.vec8()
	if !ok1 || !ok2 || !ok3 || !ok4 || len(psk) == 0 || len(kid) != keyIDSize || !r.empty() {
		return nil, false
	}
	t.authTime, t.expiry, t.psk = int64(a), int64(e), psk
	copy(t.keyID[:], kid)
	return t, true
}
