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
// single use to hold there). In production it is the broker's session cache.
type SeenSet interface {
	Use(id []byte, expiry time.Time) (fresh bool, err error)
}

// MemorySeenSet is an in-process SeenSet; expired ids are swept as it goes.
type MemorySeenSet struct {
	mu    sync.Mutex
	now   func() time.Time
	ids   map[string]time.Time
	calls int
}

// NewMemorySeenSet returns an empty set; now may be nil (time.Now).
func NewMemorySeenSet(now func() time.Time) *MemorySeenSet {
	if now == nil {
		now = time.Now
	}
	return &MemorySeenSet{now: now, ids: make(map[string]time.Time)}
}

// Use implements SeenSet.
func (m *MemorySeenSet) Use(id []byte, expiry time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if m.calls++; m.calls%1024 == 0 {
		for k, exp := range m.ids {
			if now.After(exp) {
				delete(m.ids, k)
			}
		}
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

// TicketKeyring seals and opens tickets. The first key seals; every key on the ring
// opens, so rotation never invalidates tickets still within their lifetime as long
// as the ring keeps enough old keys. Safe for concurrent use. All gateway nodes that
// may receive a resumption must share the ring (SetKeys from a common secret).
type TicketKeyring struct {
	mu   sync.RWMutex
	aead AEAD
	keep int
	keys []ticketKey
}

type ticketKey struct {
	id   uint32
	aead cipher.AEAD
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

func (k *TicketKeyring) makeKey(secret []byte) (ticketKey, error) {
	sum := sha256.Sum256(append([]byte("unigate ticket key id\x00"), secret...))
	a, err := k.aead.New(secret)
	if err != nil {
		return ticketKey{}, newErr(CodeConfig, "ticket key", err)
	}
	return ticketKey{id: binary.BigEndian.Uint32(sum[:4]), aead: a}, nil
}

// Rotate puts a fresh random key in front; the oldest key beyond keep falls off.
func (k *TicketKeyring) Rotate() error {
	secret := make([]byte, k.aead.KeySize())
	if _, err := rand.Read(secret); err != nil {
		return newErr(CodeInternal, "ticket key", err)
	}
	tk, err := k.makeKey(secret)
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
// each of the AEAD's key size. Use it to share tickets across a cluster.
func (k *TicketKeyring) SetKeys(secrets [][]byte) error {
	if len(secrets) == 0 {
		return newErr(CodeConfig, "ticket key", errNoKey)
	}
	keys := make([]ticketKey, 0, len(secrets))
	for _, s := range secrets {
		tk, err := k.makeKey(s)
		if err != nil {
			return err
		}
		keys = append(keys, tk)
	}
	k.mu.Lock()
	k.keys = keys
	k.mu.Unlock()
	return nil
}

func (k *TicketKeyring) seal(plaintext []byte) ([]byte, error) {
	k.mu.RLock()
	tk := k.keys[0]
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
