package ticketstore

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
)

// The ring entry (docs/crypto.md, "Resumption across the cluster"):
//
//	{"v":1,"alg":"SM4-GCM","wrapper":"<wrapper id>",
//	 "keys":[{"id":"0a1b2c3d","active":1767225600000,"wrapped":"<base64>"}, ...]}
//
// keys newest first (non-increasing "active", Unix milliseconds), 1 to
// MaxRingKeys of them, ids unique. A key is wrapped with additional data
// "unigate/tickets/v1/ticket-key" ‖ 0x00 ‖ u32 id ‖ alg ‖ 0x00 ‖ u64 active,
// so that an entry copied under another id, algorithm or activation time
// does not unwrap, and the unwrapped key must be the one its id names
// (crypto.TicketKeyID).
type ringEntry struct {
	V       int       `json:"v"`
	Alg     string    `json:"alg"`
	Wrapper string    `json:"wrapper"`
	Keys    []ringKey `json:"keys"`
}

type ringKey struct {
	ID      string `json:"id"`
	Active  int64  `json:"active"` // Unix milliseconds
	Wrapped []byte `json:"wrapped"`
}

// Bounds of a ring entry.
const (
	// MaxRingKeys bounds the keys of a ring (the configuration keeps a ring
	// under it: rotation ≥ lifetime / 32).
	MaxRingKeys = 64
	// maxEntryBytes bounds a ring entry's JSON.
	maxEntryBytes = 64 << 10
	ringVersion   = 1
	labelKey      = "unigate/tickets/v1/ticket-key"
)

func (k ringKey) activeTime() time.Time { return time.UnixMilli(k.Active) }

// keyAAD binds a wrapped ticket key to its id, algorithm and activation.
func keyAAD(id uint32, alg string, active int64) []byte {
	b := append([]byte(labelKey), 0)
	b = binary.BigEndian.AppendUint32(b, id)
	b = append(append(b, alg...), 0)
	return binary.BigEndian.AppendUint64(b, uint64(active))
}

// entryName is the bucket key of the ring of wrapper and alg.
func entryName(wrapper, alg string) string {
	return "ring.v1." + keyToken(wrapper) + "." + keyToken(alg)
}

// keyToken keeps the characters a bucket key token may hold.
func keyToken(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

func parseKeyID(s string) (uint32, bool) {
	if len(s) != 8 {
		return 0, false
	}
	var b [4]byte
	if _, err := hex.Decode(b[:], []byte(s)); err != nil {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[:]), true
}

func formatKeyID(id uint32) string {
	return hex.EncodeToString(binary.BigEndian.AppendUint32(nil, id))
}

// parseEntry parses and checks a ring entry and unwraps its keys with w
// for aead. The caller wipes the returned secrets. Errors wrap
// ErrMalformed or ErrUnwrap and name keys by id only.
func parseEntry(data []byte, w atrest.KeyWrapper, aead crypto.AEAD) (*ringEntry, []crypto.TicketKey, error) {
	if len(data) > maxEntryBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	var e ringEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, nil, fmt.Errorf("%w: not JSON", ErrMalformed)
	}
	switch {
	case e.V != ringVersion:
		return nil, nil, fmt.Errorf("%w: version %d", ErrMalformed, e.V)
	case e.Alg != aead.Name():
		return nil, nil, fmt.Errorf("%w: keys for %q, not %s", ErrMalformed, e.Alg, aead.Name())
	case e.Wrapper != w.ID():
		return nil, nil, fmt.Errorf("%w: keys wrapped by %q, not %s", ErrMalformed, e.Wrapper, w.ID())
	case len(e.Keys) == 0 || len(e.Keys) > MaxRingKeys:
		return nil, nil, fmt.Errorf("%w: %d keys (1 to %d)", ErrMalformed, len(e.Keys), MaxRingKeys)
	}
	keys := make([]crypto.TicketKey, 0, len(e.Keys))
	fail := func(err error) (*ringEntry, []crypto.TicketKey, error) {
		for _, k := range keys {
			clear(k.Secret)
		}
		return nil, nil, err
	}
	seen := make(map[uint32]bool, len(e.Keys))
	for i, k := range e.Keys {
		id, ok := parseKeyID(k.ID)
		if !ok || seen[id] {
			return fail(fmt.Errorf("%w: key %d: id %q is not 8 hex digits or is listed twice", ErrMalformed, i, k.ID))
		}
		seen[id] = true
		if k.Active <= 0 || i > 0 && k.Active > e.Keys[i-1].Active {
			return fail(fmt.Errorf("%w: key %s: activation out of order", ErrMalformed, k.ID))
		}
		secret, err := w.Unwrap(k.Wrapped, keyAAD(id, e.Alg, k.Active))
		if err != nil {
			return fail(fmt.Errorf("%w: key %s with wrapper %s", ErrUnwrap, k.ID, w.ID()))
		}
		if len(secret) != aead.KeySize() || crypto.TicketKeyID(secret) != id {
			clear(secret)
			return fail(fmt.Errorf("%w: key %s is not the key its id names", ErrUnwrap, k.ID))
		}
		keys = append(keys, crypto.TicketKey{Secret: secret, Active: k.activeTime()})
	}
	return &e, keys, nil
}

func wipeKeys(keys []crypto.TicketKey) {
	for _, k := range keys {
		clear(k.Secret)
	}
}
