package broker

import (
	"errors"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/protocol"
)

// secureKeys are a test gateway's identities: SM2 (GM suites) and Ed25519
// (INTL-PQ).
type secureKeys struct{ sm2, ed crypto.Signer }

func newSecureKeys(t testing.TB) secureKeys {
	t.Helper()
	sm2, err := crypto.GenerateSigner(crypto.SigSM2)
	if err != nil {
		t.Fatal(err)
	}
	ed, err := crypto.GenerateSigner(crypto.SigEd25519)
	if err != nil {
		t.Fatal(err)
	}
	return secureKeys{sm2: sm2, ed: ed}
}

func (k secureKeys) server() *crypto.ServerConfig {
	return &crypto.ServerConfig{Identities: []crypto.Signer{k.sm2, k.ed}}
}

func (k secureKeys) client(suites ...*crypto.Suite) *crypto.ClientConfig {
	return &crypto.ClientConfig{Suites: suites, ServerKeys: []crypto.Verifier{k.sm2.Public(), k.ed.Public()}}
}

// rawSecure is a WebSocket client that runs the channel by hand, so that a
// test can bend its records.
type rawSecure struct {
	t     testing.TB
	ws    *websocket.Conn
	codec protocol.Codec
	op    int
	conn  *crypto.Conn
	id    uint64
}

// dialRaw upgrades with subprotocol; no message is sent yet.
func (e *testEnv) dialRaw(subprotocol string) *rawSecure {
	e.t.Helper()
	d := websocket.Dialer{Subprotocols: []string{subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("ws://"+e.srv.Addr()+"/ws", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = ws.Close() })
	r := &rawSecure{t: e.t, ws: ws, codec: protocol.ForSubprotocol(subprotocol), op: websocket.TextMessage}
	if r.codec.Binary() {
		r.op = websocket.BinaryMessage
	}
	return r
}

// dialSecure dials and completes the handshake.
func (e *testEnv) dialSecure(subprotocol string, cfg *crypto.ClientConfig) *rawSecure {
	e.t.Helper()
	r := e.dialRaw(subprotocol)
	hs, err := crypto.NewClientHandshake(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.writeSecure(hs.Hello())
	sh := r.readSecure()
	fin, conn, err := hs.HandleServerHello(sh)
	if err != nil {
		r.t.Fatalf("server hello: %v", err)
	}
	r.writeSecure(fin)
	r.conn = conn
	return r
}

// outer encodes a secure envelope carrying data.
func (r *rawSecure) outer(data []byte) []byte {
	b, err := r.codec.AppendEncode(nil, &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: data}})
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (r *rawSecure) writeSecure(data []byte) { r.write(r.outer(data)) }

func (r *rawSecure) write(msg []byte) {
	r.t.Helper()
	if err := r.ws.WriteMessage(r.op, msg); err != nil {
		r.t.Fatal(err)
	}
}

// record seals env (its ID set to the next id) into one secure envelope.
func (r *rawSecure) record(env protocol.Envelope) []byte {
	r.t.Helper()
	return r.outer(r.seal(env))
}

// seal seals env (its ID set to the next id) into one record.
func (r *rawSecure) seal(env protocol.Envelope) []byte {
	r.t.Helper()
	r.id++
	env.ID = r.id
	inner, err := r.codec.AppendEncode(nil, &env)
	if err != nil {
		r.t.Fatal(err)
	}
	rec, err := r.conn.Seal(nil, inner)
	if err != nil {
		r.t.Fatal(err)
	}
	return rec
}

// readSecure reads one secure envelope and returns its data.
func (r *rawSecure) readSecure() []byte {
	r.t.Helper()
	_ = r.ws.SetReadDeadline(time.Now().Add(waitTimeout))
	_, msg, err := r.ws.ReadMessage()
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	var env protocol.Envelope
	if err := r.codec.Decode(msg, &env); err != nil || env.Kind != protocol.KindSecure {
		r.t.Fatalf("want a secure envelope, got %s (%v)", env.Kind, err)
	}
	return env.Secure.Data
}

// next reads and opens the next envelope, skipping a NewSessionTicket.
func (r *rawSecure) next() *protocol.Envelope {
	r.t.Helper()
	for {
		data := r.readSecure()
		if len(data) > 0 && data[0] == 4 {
			continue
		}
		pt, err := r.conn.Open(nil, data)
		if err != nil {
			r.t.Fatalf("open: %v", err)
		}
		env := new(protocol.Envelope)
		if err := r.codec.Decode(pt, env); err != nil {
			r.t.Fatal(err)
		}
		return env
	}
}

// request sends env as a record and returns the reply with its id.
func (r *rawSecure) request(env protocol.Envelope) *protocol.Envelope {
	r.t.Helper()
	r.write(r.record(env))
	for {
		if got := r.next(); got.ID == r.id {
			return got
		}
	}
}

// waitClosed reads until the server closes and checks the close code.
func (r *rawSecure) waitClosed(code int) {
	r.t.Helper()
	_ = r.ws.SetReadDeadline(time.Now().Add(waitTimeout))
	for {
		_, _, err := r.ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code {
			r.t.Fatalf("connection ended with %v, want close %d", err, code)
		}
		return
	}
}

// TestSecureAttacks: tampered, replayed and reordered records, a plaintext
// envelope on an encrypted connection, handshake messages out of order or
// malformed, and a suite the server does not allow each close their
// connection with the documented code and are counted; a bystander's
// channel keeps working throughout.
func TestSecureAttacks(t *testing.T) {
	keys := newSecureKeys(t)
	cfg := keys.server()
	cfg.Suites = []*crypto.Suite{crypto.GM, crypto.GMPQ}
	e := startEnv(t, Options{AllowAnonymous: true, Secure: &SecureOptions{Server: cfg}})
	bystander := e.dialSecure(pbProto, keys.client(crypto.GM))
	if w := bystander.request(protocol.Envelope{Kind: protocol.KindHello}); w.Kind != protocol.KindWelcome {
		t.Fatalf("bystander hello: %s", w.Kind)
	}
	hello := protocol.Envelope{Kind: protocol.KindHello}

	tests := []struct {
		name   string
		sub    string
		attack func(r *rawSecure)
		code   int
		metric string
	}{
		{"tampered record", pbProto, func(r *rawSecure) {
			rec := r.record(hello)
			rec[len(rec)-3] ^= 0x40
			r.write(rec)
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordAuth)},
		{"replayed record", jsonProto, func(r *rawSecure) {
			rec := r.record(hello)
			r.write(rec)
			if w := r.next(); w.Kind != protocol.KindWelcome {
				r.t.Fatalf("hello: %s", w.Kind)
			}
			r.write(rec)
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordAuth)},
		{"reordered records", pbProto, func(r *rawSecure) {
			first := r.record(hello)
			second := r.record(protocol.Envelope{Kind: protocol.KindOpen})
			r.write(second)
			r.write(first)
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordAuth)},
		{"truncated record", pbProto, func(r *rawSecure) {
			r.writeSecure([]byte{0x17, 1, 2, 3})
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordTooShort)},
		{"plaintext envelope on an encrypted connection", pbProto, func(r *rawSecure) {
			r.write(encode(r.t, r.codec, hello))
		}, websocket.CloseProtocolError, "unigate_broker_secure_plaintext_closes_total"},
		// JSON records take another path (base64 into a scratch buffer).
		{"tampered record, JSON", jsonProto, func(r *rawSecure) {
			rec := r.seal(hello)
			rec[len(rec)-3] ^= 0x40
			r.writeSecure(rec)
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordAuth)},
		{"reordered records, JSON", jsonProto, func(r *rawSecure) {
			first := r.record(hello)
			second := r.record(protocol.Envelope{Kind: protocol.KindOpen})
			r.write(second)
			r.write(first)
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordAuth)},
		{"truncated record, JSON", jsonProto, func(r *rawSecure) {
			r.writeSecure([]byte{0x17, 1, 2, 3})
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordTooShort)},
		{"empty record, JSON", jsonProto, func(r *rawSecure) {
			r.write([]byte(`{"secure":{"data":""}}`))
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeRecordTooShort)},
		{"plaintext envelope on an encrypted connection, JSON", jsonProto, func(r *rawSecure) {
			r.write(encode(r.t, r.codec, hello))
		}, websocket.CloseProtocolError, "unigate_broker_secure_plaintext_closes_total"},
		{"record with broken base64, JSON", jsonProto, func(r *rawSecure) {
			r.write([]byte(`{"secure":{"data":"A==="}}`))
		}, websocket.CloseProtocolError, "unigate_broker_secure_plaintext_closes_total"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n0 := counter(e.b, tt.metric)
			r := e.dialSecure(tt.sub, keys.client(crypto.GM))
			r.t = t
			tt.attack(r)
			r.waitClosed(tt.code)
			if n := counter(e.b, tt.metric); n != n0+1 {
				t.Errorf("%s went from %d to %d", tt.metric, n0, n)
			}
			if c := bystander.request(protocol.Envelope{Kind: protocol.KindTyping, ID: 0, Typing: protocol.Typing{ConversationID: "c_none"}}); c.Kind != protocol.KindError {
				t.Fatalf("bystander: %s", c.Kind)
			}
		})
	}

	handshakeTests := []struct {
		name   string
		attack func(r *rawSecure)
		code   int
		metric string
	}{
		{"finished before the server hello", func(r *rawSecure) {
			hs, _ := crypto.NewClientHandshake(keys.client(crypto.GM))
			r.writeSecure(hs.Hello())
			r.writeSecure([]byte{3, 32})
		}, websocket.CloseProtocolError, ""},
		{"malformed client hello", func(r *rawSecure) {
			r.writeSecure([]byte{1, 1, 2, 3})
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeMalformed)},
		{"forged finished", func(r *rawSecure) {
			hs, _ := crypto.NewClientHandshake(keys.client(crypto.GM))
			r.writeSecure(hs.Hello())
			_ = r.readSecure()
			r.writeSecure(append([]byte{3, 32}, make([]byte, 32)...))
		}, websocket.CloseProtocolError, failureMetric(crypto.CodeBadFinished)},
		{"suite the server does not allow", func(r *rawSecure) {
			hs, _ := crypto.NewClientHandshake(keys.client(crypto.IntlPQ))
			r.writeSecure(hs.Hello())
		}, websocket.ClosePolicyViolation, failureMetric(crypto.CodeNoCommonSuite)},
	}
	for _, tt := range handshakeTests {
		t.Run(tt.name, func(t *testing.T) {
			var n0 uint64
			if tt.metric != "" {
				n0 = counter(e.b, tt.metric)
			}
			r := e.dialRaw(pbProto)
			r.t = t
			tt.attack(r)
			r.waitClosed(tt.code)
			if tt.metric != "" {
				if n := counter(e.b, tt.metric); n != n0+1 {
					t.Errorf("%s went from %d to %d", tt.metric, n0, n)
				}
			}
		})
	}
	// The bystander still chats.
	conv := bystander.request(protocol.Envelope{Kind: protocol.KindOpen, Open: protocol.Open{Text: "still here"}})
	if conv.Kind != protocol.KindConversation {
		t.Fatalf("bystander open: %s %+v", conv.Kind, conv.Error)
	}
}

// counter reads one of the broker's counters.
func counter(b *Broker, name string) uint64 {
	return b.Metrics().GetOrCreateCounter(name).Get()
}

// TestSecureRequiredTenants: a plaintext hello for a tenant that requires
// encryption gets 2003 and close 1008; other tenants may stay plaintext;
// the same tenant over the channel is welcome.
func TestSecureRequiredTenants(t *testing.T) {
	keys := newSecureKeys(t)
	e := startEnv(t, Options{AllowAnonymous: true, Secure: &SecureOptions{Server: keys.server(), RequiredTenants: []string{"bank"}}})
	plain := e.dial("plain bank visitor", jsonProto)
	id := plain.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Tenant: "bank"}})
	plain.waitError(id, protocol.CodeForbidden)
	plain.waitClosed(websocket.ClosePolicyViolation)

	shop := e.dial("plain shop visitor", pbProto)
	shop.hello(protocol.Hello{Tenant: "shop"})

	sec := e.dialSecure(jsonProto, keys.client(crypto.GM))
	if w := sec.request(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{Tenant: "bank"}}); w.Kind != protocol.KindWelcome {
		t.Fatalf("encrypted bank hello answered %s %+v", w.Kind, w.Error)
	}
}

// TestSecureRequired: with Required, a plaintext first envelope gets 2003
// and close 1008.
func TestSecureRequired(t *testing.T) {
	keys := newSecureKeys(t)
	e := startEnv(t, Options{AllowAnonymous: true, Secure: &SecureOptions{Server: keys.server(), Required: true}})
	plain := e.dial("plain", pbProto)
	id := plain.send(protocol.Envelope{Kind: protocol.KindHello})
	plain.waitError(id, protocol.CodeForbidden)
	plain.waitClosed(websocket.ClosePolicyViolation)
	sec := e.dialSecure(pbProto, keys.client(crypto.IntlPQ))
	if w := sec.request(protocol.Envelope{Kind: protocol.KindHello}); w.Kind != protocol.KindWelcome {
		t.Fatalf("encrypted hello answered %s", w.Kind)
	}
}

// TestSecureOff: without Options.Secure a secure envelope is refused like
// any kind a client may not send, and the connection goes on in plaintext.
func TestSecureOff(t *testing.T) {
	e := startEnv(t, Options{AllowAnonymous: true})
	c := e.dial("client", pbProto)
	id := c.send(protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: []byte{1, 1}}})
	c.waitError(id, protocol.CodeUnknownKind)
	c.hello(protocol.Hello{})
}

// mapCache is a SessionCache in a map, with expiry.
type mapCache struct {
	now func() time.Time
	m   map[string]time.Time
}

func (c *mapCache) Put(key string, _ []byte, ttl time.Duration) error {
	c.m[key] = c.now().Add(ttl)
	return nil
}

func (c *mapCache) Get(dst []byte, key string) ([]byte, bool) {
	exp, ok := c.m[key]
	return dst, ok && c.now().Before(exp)
}

func (c *mapCache) Delete(key string) { delete(c.m, key) }

// TestTicketsSeenInSessionCache: with a session cache, tickets are marked
// used there (single use survives what the cache survives); an id is fresh
// once, and again only after its expiry.
func TestTicketsSeenInSessionCache(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	cache := &mapCache{now: clock, m: map[string]time.Time{}}
	keys := newSecureKeys(t)
	cfg := keys.server()
	ring, err := crypto.NewTicketKeyring(nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Tickets = ring
	b, err := newBroker(Options{AllowAnonymous: true, Sessions: cache, Now: clock, Secure: &SecureOptions{Server: cfg}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	seen, ok := b.sec.o.Server.Seen.(*cacheSeenSet)
	if !ok {
		t.Fatalf("Seen is %T, want the session cache", b.sec.o.Server.Seen)
	}
	id, exp := []byte("ticket-1"), now.Add(time.Hour)
	for i, want := range []bool{true, false, false} {
		if fresh, err := seen.Use(id, exp); err != nil || fresh != want {
			t.Fatalf("use %d: fresh %v, %v; want %v", i, fresh, err, want)
		}
	}
	if len(cache.m) != 1 {
		t.Fatalf("cache holds %d entries", len(cache.m))
	}
	if fresh, _ := seen.Use([]byte("ticket-2"), now.Add(-time.Second)); fresh {
		t.Fatal("an expired ticket counted as fresh")
	}
	now = now.Add(2 * time.Hour)
	if fresh, _ := seen.Use(id, now.Add(time.Hour)); !fresh {
		t.Fatal("an id whose entry expired is still seen")
	}
}
