package bench

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/protocol"
)

// The secure channel (docs/crypto.md) of benchmark connections: with
// Common.Suite set, every connection runs the client handshake right after
// the upgrade, before the hello, and from then on every envelope both ways
// is secure{record}: the encoded envelope sealed by crypto.Conn (one
// record per frame, per-direction sequence numbers, rekeying when the
// server's rekey_after is reached, all inside crypto.Conn). A reconnect of
// the same connection index (storm) offers the ticket the server sent on
// the previous connection (resumption, no server signature); without a
// ticket it runs a full handshake.

// secureConfig returns the client configuration of c's channel, nil for a
// plaintext run.
func (c *Common) secureConfig() (*crypto.ClientConfig, error) {
	if c.Suite == "" {
		if len(c.ServerKeys) > 0 {
			return nil, fmt.Errorf("%w: -server-key without -suite", ErrConfig)
		}
		return nil, nil
	}
	s := crypto.SuiteByName(c.Suite)
	if s == nil {
		return nil, fmt.Errorf("%w: unknown suite %q (GM, GM-PQ or INTL-PQ)", ErrConfig, c.Suite)
	}
	if len(c.ServerKeys) == 0 {
		return nil, fmt.Errorf("%w: -suite %s needs -server-key (the gateway's identity key to pin)", ErrConfig, c.Suite)
	}
	var pins []crypto.Verifier
	for _, f := range c.ServerKeys {
		vs, err := loadPins(f)
		if err != nil {
			return nil, err
		}
		pins = append(pins, vs...)
	}
	found := false
	for _, v := range pins {
		found = found || v.Algorithm() == s.Signature
	}
	if !found {
		return nil, fmt.Errorf("%w: suite %s is signed with %s, and no %s key is among the pinned keys of %s",
			ErrConfig, s.Name, s.Signature, s.Signature, strings.Join(c.ServerKeys, ", "))
	}
	return &crypto.ClientConfig{Suites: []*crypto.Suite{s}, ServerKeys: pins}, nil
}

// loadPins reads the server keys to pin from file: PEM public keys
// (PUBLIC KEY, as `unigate keygen` prints them), PEM identity keys
// (PRIVATE KEY, the file `unigate keygen -out` writes: its public half is
// pinned), or one hex public key (the "public key:" line of keygen: 65
// bytes SM2, 32 bytes Ed25519). Other text around PEM blocks (keygen's
// whole output) is ignored.
func loadPins(file string) ([]crypto.Verifier, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: server key: %v", ErrConfig, err)
	}
	var out []crypto.Verifier
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		block := pem.EncodeToMemory(b)
		switch b.Type {
		case "PUBLIC KEY":
			v, err := crypto.ParseVerifierPEM(block)
			if err != nil {
				return nil, fmt.Errorf("%w: server key %s: %v", ErrConfig, file, err)
			}
			out = append(out, v)
		case "PRIVATE KEY":
			s, err := crypto.ParseSignerPEM(block)
			if err != nil {
				return nil, fmt.Errorf("%w: server key %s: %v", ErrConfig, file, err)
			}
			out = append(out, s.Public())
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	raw, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err == nil {
		var v crypto.Verifier
		switch len(raw) {
		case 65:
			v, err = crypto.ParseSM2PublicKey(raw)
		case 32:
			v, err = crypto.ParseEd25519PublicKey(raw)
		default:
			err = fmt.Errorf("%d bytes", len(raw))
		}
		if err == nil {
			return []crypto.Verifier{v}, nil
		}
	}
	return nil, fmt.Errorf("%w: server key %s: no PEM public or private key, nor a hex SM2 (65 bytes) or Ed25519 (32 bytes) public key", ErrConfig, file)
}

// channelLabel names the channel of the run for summaries and titles.
func (c *Common) channelLabel() string {
	sub := "proto"
	if c.Subprotocol == protocol.SubprotocolJSON {
		sub = "json"
	}
	if c.Suite == "" {
		return sub + ", plaintext"
	}
	return sub + ", encrypted " + c.Suite
}

// ticketStore keeps, per connection index, the resumption ticket the
// server sent on that index's last connection (single use).
type ticketStore struct {
	mu sync.Mutex
	m  map[int]*crypto.Session
}

func (t *ticketStore) take(i int) *crypto.Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[i]
	delete(t.m, i)
	return s
}

func (t *ticketStore) put(i int, s *crypto.Session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[int]*crypto.Session)
	}
	t.m[i] = s
}

// msgNewSessionTicket is the first byte of the server's NewSessionTicket
// (docs/crypto.md); records start with 0x17 or 0x15.
const msgNewSessionTicket = 4

// secureError is a failure of the secure channel on the client's side
// (wrong pin, bad signature, record that does not open).
type secureError struct{ err error }

func (e *secureError) Error() string { return "secure channel: " + e.err.Error() }
func (e *secureError) Unwrap() error { return e.err }

// handshake runs the client side of the channel on a fresh connection
// (index i) until deadline.
func (w *wsConn) handshake(d *dialer, i int, deadline time.Time) error {
	cfg := *d.secure
	cfg.Session = d.tickets.take(i)
	hs, err := crypto.NewClientHandshake(&cfg)
	if err != nil {
		return &secureError{err}
	}
	_ = w.c.SetWriteDeadline(deadline)
	_ = w.c.SetReadDeadline(deadline)
	defer func() {
		_ = w.c.SetWriteDeadline(time.Time{})
		_ = w.c.SetReadDeadline(time.Time{})
	}()
	if err := w.writeSecure(hs.Hello()); err != nil {
		return err
	}
	_, r, err := w.c.NextReader()
	if err != nil {
		return err
	}
	if w.rbuf, err = readAll(w.rbuf[:0], r); err != nil {
		return err
	}
	if err := w.codec.Decode(w.rbuf, &w.renv); err != nil {
		return fmt.Errorf("decoding the server hello: %w", err)
	}
	switch w.renv.Kind {
	case protocol.KindSecure:
	case protocol.KindError:
		return &serverError{code: w.renv.Error.Code, msg: strings.Clone(w.renv.Error.Message)}
	default:
		return &secureError{fmt.Errorf("server answered the client hello with %s", w.renv.Kind)}
	}
	fin, sec, err := hs.HandleServerHello(w.renv.Secure.Data)
	if err != nil {
		return &secureError{err}
	}
	if err := w.writeSecure(fin); err != nil {
		return err
	}
	w.sec, w.hs, w.tickets, w.idx = sec, hs, &d.tickets, i
	return nil
}

// writeSecure writes one handshake message, unsealed.
func (w *wsConn) writeSecure(msg []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.wenv = protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: msg}}
	var err error
	if w.obuf, err = w.codec.AppendEncode(w.obuf[:0], &w.wenv); err != nil {
		return err
	}
	return w.c.WriteMessage(w.msgType, w.obuf)
}

// seal wraps the encoded envelope in w.wbuf into secure{record} in w.obuf.
// Called under wmu.
func (w *wsConn) seal() ([]byte, error) {
	var err error
	if w.sbuf, err = w.sec.Seal(w.sbuf[:0], w.wbuf); err != nil {
		return nil, &secureError{err}
	}
	w.wenv.Kind, w.wenv.Secure.Data = protocol.KindSecure, w.sbuf
	if w.obuf, err = w.codec.AppendEncode(w.obuf[:0], &w.wenv); err != nil {
		return nil, err
	}
	return w.obuf, nil
}

// open turns the secure{record} frame in w.rbuf into the inner envelope's
// bytes (valid until the next open). ok false: the frame was the server's
// NewSessionTicket, consumed (the ticket is kept for the next connection
// of this index).
func (w *wsConn) open() (inner []byte, ok bool, err error) {
	rec, fast := secureDataJSON(w.dbuf[:0], w.rbuf, w.codec.Binary())
	if fast {
		w.dbuf = rec
	} else {
		if err := w.codec.Decode(w.rbuf, &w.renv); err != nil {
			return nil, false, err
		}
		if w.renv.Kind != protocol.KindSecure {
			return nil, false, &secureError{fmt.Errorf("plaintext %s envelope on an encrypted connection", w.renv.Kind)}
		}
		rec = w.renv.Secure.Data
	}
	if w.hs != nil && len(rec) > 0 && rec[0] == msgNewSessionTicket {
		sess, err := w.hs.HandleNewSessionTicket(rec)
		w.hs = nil
		if err != nil {
			return nil, false, &secureError{err}
		}
		w.tickets.put(w.idx, sess)
		return nil, false, nil
	}
	w.hs = nil
	if w.pbuf, err = w.sec.Open(w.pbuf[:0], rec); err != nil {
		return nil, false, &secureError{err}
	}
	return w.pbuf, true, nil
}

// secureDataJSON decodes the record of a JSON frame of exactly the shape
// the gateway writes, {"secure":{"data":"<standard base64>"}}, appended to
// dst, without the codec's allocation of the data. ok false (any other
// shape, a binary codec, bad base64) sends the frame to the codec.
func secureDataJSON(dst, frame []byte, binary bool) ([]byte, bool) {
	if binary || !bytes.HasPrefix(frame, jsonSecurePrefix) || !bytes.HasSuffix(frame, jsonSecureSuffix) ||
		len(frame) < len(jsonSecurePrefix)+len(jsonSecureSuffix) {
		return dst, false
	}
	b64 := frame[len(jsonSecurePrefix) : len(frame)-len(jsonSecureSuffix)]
	if bytes.IndexAny(b64, "\"\\\r\n") >= 0 {
		return dst, false
	}
	out, err := base64.StdEncoding.AppendDecode(dst, b64)
	if err != nil || len(out) == len(dst) {
		return dst, false
	}
	return out, true
}

var (
	jsonSecurePrefix = []byte(`{"secure":{"data":"`)
	jsonSecureSuffix = []byte(`"}}`)
)
