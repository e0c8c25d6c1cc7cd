package crypto

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// fixture holds long-lived server state shared by the handshakes of one test.
type fixture struct {
	sm2, ed Signer
	tickets *TicketKeyring
	seen    *MemorySeenSet
	now     time.Time
	server  *ServerConfig
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	f := &fixture{now: time.Unix(1_800_000_000, 0)}
	var err error
	if f.sm2, err = GenerateSigner(SigSM2); err != nil {
		tb.Fatal(err)
	}
	if f.ed, err = GenerateSigner(SigEd25519); err != nil {
		tb.Fatal(err)
	}
	if f.tickets, err = NewTicketKeyring(nil, 2); err != nil {
		tb.Fatal(err)
	}
	clock := func() time.Time { return f.now }
	f.seen = NewMemorySeenSet(clock)
	f.server = &ServerConfig{
		Identities: []Signer{f.sm2, f.ed},
		Tickets:    f.tickets,
		Seen:       f.seen,
		Now:        clock,
	}
	return f
}

func (f *fixture) client(suites ...*Suite) *ClientConfig {
	return &ClientConfig{
		Suites:     suites,
		ServerKeys: []Verifier{f.sm2.Public(), f.ed.Public()},
		Now:        func() time.Time { return f.now },
	}
}

type result struct {
	client, server *Conn
	session        *Session
	sh             *ServerHandshake
}

// handshake runs a complete handshake in memory and fails the test on any error.
func handshake(tb testing.TB, ccfg *ClientConfig, scfg *ServerConfig) result {
	tb.Helper()
	c, err := NewClientHandshake(ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	s := NewServerHandshake(scfg)
	sh, err := s.HandleClientHello(c.Hello())
	if err != nil {
		tb.Fatal(err)
	}
	fin, cc, err := c.HandleServerHello(sh)
	if err != nil {
		tb.Fatal(err)
	}
	sc, nst, err := s.HandleClientFinished(fin)
	if err != nil {
		tb.Fatal(err)
	}
	r := result{client: cc, server: sc, sh: s}
	if nst != nil {
		if r.session, err = c.HandleNewSessionTicket(nst); err != nil {
			tb.Fatal(err)
		}
	}
	return r
}

func wantCode(tb testing.TB, err error, code Code) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("want error %v, got nil", code)
	}
	var e *Error
	if !errors.As(err, &e) {
		tb.Fatalf("want *Error %v, got %T %v", code, err, err)
	}
	if e.Code != code {
		tb.Fatalf("want code %v, got %v (%v)", code, e.Code, err)
	}
}

func exchange(tb testing.TB, from, to *Conn, msg string) {
	tb.Helper()
	rec, err := from.Seal(nil, []byte(msg))
	if err != nil {
		tb.Fatal(err)
	}
	if len(rec) != len(msg)+RecordOverhead {
		tb.Fatalf("record length %d for %d bytes", len(rec), len(msg))
	}
	got, err := to.Open(nil, rec)
	if err != nil {
		tb.Fatal(err)
	}
	if string(got) != msg {
		tb.Fatalf("got %q want %q", got, msg)
	}
}

var allSuites = []*Suite{GM, GMPQ, IntlPQ}

func TestHandshakeEverySuite(t *testing.T) {
	for _, suite := range allSuites {
		t.Run(suite.Name, func(t *testing.T) {
			f := newFixture(t)
			r := handshake(t, f.client(suite), f.server)
			if r.client.Suite() != suite || r.server.Suite() != suite {
				t.Fatalf("negotiated %v/%v", r.client.Suite(), r.server.Suite())
			}
			if r.client.Resumed() || r.server.Resumed() {
				t.Fatal("full handshake reported as resumed")
			}
			wantKey := f.sm2.Public().KeyID()
			if suite.Signature == SigEd25519 {
				wantKey = f.ed.Public().KeyID()
			}
			if r.client.ServerKeyID() != wantKey {
				t.Fatal("client saw the wrong server key")
			}
			for i := 0; i < 5; i++ {
				exchange(t, r.client, r.server, "你好, visitor")
				exchange(t, r.server, r.client, "hello from the agent")
			}
			exchange(t, r.client, r.server, "")
			if r.session == nil || r.session.Suite != suite.ID {
				t.Fatalf("no session for %v", suite.Name)
			}

			// Resume twice: each resumption hands out a fresh single-use ticket.
			sess := r.session
			for i := 0; i < 2; i++ {
				cfg := f.client(allSuites...)
				cfg.Session = sess
				rr := handshake(t, cfg, f.server)
				if err := rr.sh.TicketError(); err != nil {
					t.Fatal(err)
				}
				if !rr.client.Resumed() || !rr.server.Resumed() || rr.client.Suite() != suite {
					t.Fatalf("resumption %d: resumed=%v suite=%v", i, rr.client.Resumed(), rr.client.Suite())
				}
				if rr.client.ServerKeyID() != wantKey || rr.server.ServerKeyID() != wantKey {
					t.Fatal("resumed channel lost the server key id")
				}
				exchange(t, rr.client, rr.server, "resumed")
				exchange(t, rr.server, rr.client, "resumed back")
				if rr.session == nil || bytes.Equal(rr.session.Ticket, sess.Ticket) {
					t.Fatal("no fresh ticket after resumption")
				}
				sess = rr.session
			}
		})
	}
}

func TestServerPreference(t *testing.T) {
	f := newFixture(t)
	f.server.Suites = []*Suite{IntlPQ, GM}
	r := handshake(t, f.client(GM, GMPQ, IntlPQ), f.server)
	if r.client.Suite() != IntlPQ {
		t.Fatalf("got %v, want the server's first choice INTL-PQ", r.client.Suite())
	}
	// Without an Ed25519 identity the server cannot pick INTL-PQ.
	f.server.Identities = []Signer{f.sm2}
	r = handshake(t, f.client(GM, IntlPQ), f.server)
	if r.client.Suite() != GM {
		t.Fatalf("got %v, want GM", r.client.Suite())
	}
	f.server.Suites = []*Suite{IntlPQ}
	c, _ := NewClientHandshake(f.client(GM, IntlPQ))
	_, err := NewServerHandshake(f.server).HandleClientHello(c.Hello())
	wantCode(t, err, CodeNoCommonSuite)
}

func TestNoTickets(t *testing.T) {
	f := newFixture(t)
	f.server.Tickets = nil
	r := handshake(t, f.client(GM), f.server)
	if r.session != nil {
		t.Fatal("session without a ticket keyring")
	}
}

func TestRekey(t *testing.T) {
	for _, suite := range allSuites {
		f := newFixture(t)
		f.server.RekeyAfter = 3
		r := handshake(t, f.client(suite), f.server)
		for i := 0; i < 10; i++ {
			exchange(t, r.client, r.server, "ping")
			exchange(t, r.server, r.client, "pong")
		}
		if r.client.out.epoch != 3 || r.server.in.epoch != 3 || r.client.out.seq != 1 {
			t.Fatalf("%s: epoch %d seq %d", suite.Name, r.client.out.epoch, r.client.out.seq)
		}
	}
}

// --- negative tests: handshake ---

type pending struct {
	c  *ClientHandshake
	s  *ServerHandshake
	sh []byte
}

func start(tb testing.TB, ccfg *ClientConfig, scfg *ServerConfig) pending {
	tb.Helper()
	c, err := NewClientHandshake(ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	s := NewServerHandshake(scfg)
	sh, err := s.HandleClientHello(c.Hello())
	if err != nil {
		tb.Fatal(err)
	}
	return pending{c, s, sh}
}

func TestTamperedServerHello(t *testing.T) {
	for _, suite := range allSuites {
		f := newFixture(t)
		shareOff := 2 + randomSize + 1 + 2
		type at func(sh *serverHello, raw []byte) int
		cases := []struct {
			name string
			off  at
			want []Code
		}{
			{"random", func(*serverHello, []byte) int { return 5 }, []Code{CodeBadSignature}},
			{"share", func(*serverHello, []byte) int { return shareOff + 3 }, []Code{CodeBadKeyShare, CodeBadSignature}},
			{"rekey", func(sh *serverHello, _ []byte) int { return sh.coreEnd - keyIDSize - 2 }, []Code{CodeBadSignature}},
			{"key id", func(sh *serverHello, _ []byte) int { return sh.coreEnd - 1 }, []Code{CodeUnknownServerKey}},
			{"signature", func(sh *serverHello, _ []byte) int { return sh.sigEnd - 5 }, []Code{CodeBadSignature}},
			{"finished", func(_ *serverHello, raw []byte) int { return len(raw) - 1 }, []Code{CodeBadFinished}},
			{"suite", func(*serverHello, []byte) int { return 2 + randomSize }, []Code{CodeSuiteNotOffered}},
			{"version", func(*serverHello, []byte) int { return 1 }, []Code{CodeUnsupportedVer}},
		}
		for _, tc := range cases {
			c, _ := NewClientHandshake(f.client(suite))
			s := NewServerHandshake(f.server)
			sh, err := s.HandleClientHello(c.Hello())
			if err != nil {
				t.Fatal(err)
			}
			parsed, perr := parseServerHello(sh)
			if perr != nil {
				t.Fatal(perr)
			}
			sh[tc.off(parsed, sh)] ^= 0x01
			_, conn, err := c.HandleServerHello(sh)
			if conn != nil || err == nil {
				t.Fatalf("%s/%s: tampered ServerHello accepted", suite.Name, tc.name)
			}
			ok := false
			for _, code := range tc.want {
				ok = ok || CodeOf(err) == code
			}
			if !ok {
				t.Errorf("%s/%s: got %v, want one of %v", suite.Name, tc.name, err, tc.want)
			}
			// The handshake is dead afterwards.
			_, _, err = c.HandleServerHello(sh)
			wantCode(t, err, CodeUnexpectedMessage)
		}
	}
}

func TestTruncatedHandshakeMessages(t *testing.T) {
	f := newFixture(t)
	p := start(t, f.client(GMPQ), f.server)
	for n := 0; n < len(p.sh); n += 7 {
		c, _ := NewClientHandshake(f.client(GMPQ))
		if _, _, err := c.HandleServerHello(p.sh[:n]); err == nil {
			t.Fatalf("ServerHello truncated to %d accepted", n)
		}
	}
	ch := p.c.Hello()
	for n := 0; n < len(ch); n += 5 {
		_, err := NewServerHandshake(f.server).HandleClientHello(ch[:n])
		if err == nil {
			t.Fatalf("ClientHello truncated to %d accepted", n)
		}
	}
	_, _, err := p.s.HandleClientFinished([]byte{msgFinished, 32, 1, 2})
	wantCode(t, err, CodeMalformed)
}

func TestWrongServerKey(t *testing.T) {
	for _, suite := range allSuites {
		f := newFixture(t)
		other, _ := GenerateSigner(suite.Signature)
		// Pinned keys do not include the server's.
		cfg := f.client(suite)
		cfg.ServerKeys = []Verifier{other.Public()}
		c, _ := NewClientHandshake(cfg)
		sh, err := NewServerHandshake(f.server).HandleClientHello(c.Hello())
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.HandleServerHello(sh)
		wantCode(t, err, CodeUnknownServerKey)

		// An impostor server with its own key claims the pinned key's id.
		imp := &ServerConfig{Identities: []Signer{idLiar{other, f.sm2.Public().KeyID(), f.ed.Public().KeyID()}}}
		c, _ = NewClientHandshake(f.client(suite))
		sh, err = NewServerHandshake(imp).HandleClientHello(c.Hello())
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.HandleServerHello(sh)
		wantCode(t, err, CodeBadSignature)
	}
}

// idLiar signs with its own key but reports a pinned key's id.
type idLiar struct {
	Signer
	sm2ID, edID KeyID
}

func (l idLiar) Public() Verifier { return liarPub{l.Signer.Public(), l} }

type liarPub struct {
	Verifier
	l idLiar
}

func (p liarPub) KeyID() KeyID {
	if p.Algorithm() == SigSM2 {
		return p.l.sm2ID
	}
	return p.l.edID
}

// stripSuite rewrites a ClientHello without suite id, as a man in the middle would.
func stripSuite(tb testing.TB, raw []byte, id SuiteID) []byte {
	tb.Helper()
	ch, err := parseClientHello(raw)
	if err != nil {
		tb.Fatal(err)
	}
	out := &clientHello{random: ch.random}
	for i, s := range ch.suites {
		if s != id {
			out.suites = append(out.suites, s)
			out.shares = append(out.shares, ch.shares[i])
		}
	}
	return out.marshalPrefix()
}

func TestDowngrade(t *testing.T) {
	f := newFixture(t)
	c, _ := NewClientHandshake(f.client(GMPQ, GM))
	s := NewServerHandshake(f.server)
	sh, err := s.HandleClientHello(stripSuite(t, c.Hello(), SuiteGMPQ))
	if err != nil {
		t.Fatal(err)
	}
	if s.Suite() != GM {
		t.Fatalf("server chose %v", s.Suite())
	}
	// The server signed the stripped offer; the client signed-transcript check fails.
	_, _, err = c.HandleServerHello(sh)
	wantCode(t, err, CodeBadSignature)

	// The server side: a client Finished over a different transcript (the client's
	// real offer) does not match the server's transcript.
	p1 := start(t, f.client(GM), f.server)
	p2 := start(t, f.client(GM), f.server)
	fin2, _, err := p2.c.HandleServerHello(p2.sh)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = p1.s.HandleClientFinished(fin2)
	wantCode(t, err, CodeBadFinished)
}

func TestSuiteNotOffered(t *testing.T) {
	f := newFixture(t)
	a, _ := NewClientHandshake(f.client(GM))
	b, _ := NewClientHandshake(f.client(IntlPQ))
	sh, err := NewServerHandshake(f.server).HandleClientHello(b.Hello())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = a.HandleServerHello(sh)
	wantCode(t, err, CodeSuiteNotOffered)
}

func TestStateMachine(t *testing.T) {
	f := newFixture(t)
	s := NewServerHandshake(f.server)
	_, _, err := s.HandleClientFinished([]byte{msgFinished, 0})
	wantCode(t, err, CodeUnexpectedMessage)

	p := start(t, f.client(GM), f.server)
	_, err = p.s.HandleClientHello(p.c.Hello())
	wantCode(t, err, CodeUnexpectedMessage)
	_, err = p.c.HandleNewSessionTicket([]byte{msgNewSessionTicket})
	wantCode(t, err, CodeUnexpectedMessage)

	// A ServerHello fed to the server, a ClientHello fed to the client.
	_, err = NewServerHandshake(f.server).HandleClientHello(p.sh)
	wantCode(t, err, CodeUnexpectedMessage)
	c, _ := NewClientHandshake(f.client(GM))
	_, _, err = c.HandleServerHello(c.Hello())
	wantCode(t, err, CodeUnexpectedMessage)

	if _, err := NewClientHandshake(&ClientConfig{}); CodeOf(err) != CodeConfig {
		t.Fatalf("client without pinned keys: %v", err)
	}
}

func TestTamperedNewSessionTicket(t *testing.T) {
	f := newFixture(t)
	p := start(t, f.client(GM), f.server)
	fin, _, err := p.c.HandleServerHello(p.sh)
	if err != nil {
		t.Fatal(err)
	}
	_, nst, err := p.s.HandleClientFinished(fin)
	if err != nil {
		t.Fatal(err)
	}
	nst[len(nst)-1] ^= 1
	_, err = p.c.HandleNewSessionTicket(nst)
	wantCode(t, err, CodeBadTicketMessage)
}

// --- resumption negatives ---

func resumeWith(tb testing.TB, f *fixture, sess *Session, suites ...*Suite) result {
	tb.Helper()
	cfg := f.client(suites...)
	cfg.Session = sess
	return handshake(tb, cfg, f.server)
}

func TestTicketReuse(t *testing.T) {
	f := newFixture(t)
	sess := handshake(t, f.client(GM), f.server).session
	if r := resumeWith(t, f, sess, GM); !r.server.Resumed() {
		t.Fatalf("first use not resumed: %v", r.sh.TicketError())
	}
	r := resumeWith(t, f, sess, GM)
	if r.server.Resumed() || r.client.Resumed() {
		t.Fatal("ticket used twice")
	}
	wantCode(t, r.sh.TicketError(), CodeTicketReused)
	exchange(t, r.client, r.server, "full handshake after reuse still works")
}

func TestTicketExpired(t *testing.T) {
	f := newFixture(t)
	f.server.TicketLifetime = time.Hour
	sess := handshake(t, f.client(GM), f.server).session
	if got := sess.Expiry.Sub(f.now); got != time.Hour {
		t.Fatalf("client expiry %v", got)
	}
	// The client would not offer it; make it offer anyway to test the server.
	f.now = f.now.Add(2 * time.Hour)
	sess.Expiry = f.now.Add(time.Hour)
	r := resumeWith(t, f, sess, GM)
	if r.server.Resumed() {
		t.Fatal("expired ticket accepted")
	}
	wantCode(t, r.sh.TicketError(), CodeTicketExpired)

	// An expired session is not even offered by the client.
	sess2 := r.session
	f.now = f.now.Add(2 * time.Hour)
	cfg := f.client(GM)
	cfg.Session = sess2
	c, _ := NewClientHandshake(cfg)
	if ch, _ := parseClientHello(c.Hello()); ch.ticket != nil {
		t.Fatal("client offered an expired session")
	}
}

func TestTicketMaxAge(t *testing.T) {
	f := newFixture(t)
	f.server.TicketLifetime = time.Hour
	f.server.TicketMaxAge = 90 * time.Minute
	sess := handshake(t, f.client(GM), f.server).session
	f.now = f.now.Add(50 * time.Minute)
	r := resumeWith(t, f, sess, GM)
	if !r.server.Resumed() {
		t.Fatal(r.sh.TicketError())
	}
	if got := r.session.Expiry.Sub(f.now); got != 40*time.Minute {
		t.Fatalf("chained ticket lifetime %v, want 40m (capped by max age)", got)
	}
}

func TestTicketCorrupted(t *testing.T) {
	f := newFixture(t)
	sess := handshake(t, f.client(GM), f.server).session
	for _, off := range []int{0, 5, len(sess.Ticket) / 2, len(sess.Ticket) - 1} {
		bad := *sess
		bad.Ticket = append([]byte(nil), sess.Ticket...)
		bad.Ticket[off] ^= 0x80
		r := resumeWith(t, f, &bad, GM)
		if r.server.Resumed() {
			t.Fatal("corrupted ticket accepted")
		}
		wantCode(t, r.sh.TicketError(), CodeTicketInvalid)
	}
	// Truncated ticket.
	bad := *sess
	bad.Ticket = sess.Ticket[:10]
	wantCode(t, resumeWith(t, f, &bad, GM).sh.TicketError(), CodeTicketInvalid)
	// The original still works (corrupted copies did not burn it).
	if !resumeWith(t, f, sess, GM).server.Resumed() {
		t.Fatal("original ticket burned by corrupted copies")
	}
}

func TestTicketWrongPSK(t *testing.T) {
	f := newFixture(t)
	sess := handshake(t, f.client(GM), f.server).session
	bad := *sess
	bad.PSK = bytes.Repeat([]byte{1}, len(sess.PSK))
	cfg := f.client(GM)
	cfg.Session = &bad
	c, _ := NewClientHandshake(cfg)
	_, err := NewServerHandshake(f.server).HandleClientHello(c.Hello())
	wantCode(t, err, CodeBadBinder)
	// A bad binder does not burn the ticket.
	if !resumeWith(t, f, sess, GM).server.Resumed() {
		t.Fatal("ticket burned by a bad binder")
	}
}

func TestTicketKeyRotation(t *testing.T) {
	f := newFixture(t)
	sess := handshake(t, f.client(GM), f.server).session
	if err := f.tickets.Rotate(); err != nil {
		t.Fatal(err)
	}
	r := resumeWith(t, f, sess, GM) // previous key still on the ring
	if !r.server.Resumed() {
		t.Fatal(r.sh.TicketError())
	}
	f.tickets.Rotate()
	f.tickets.Rotate() // r.session's key fell off (keep = 2)
	wantCode(t, resumeWith(t, f, r.session, GM).sh.TicketError(), CodeTicketInvalid)
}

func TestTicketSuiteNotOffered(t *testing.T) {
	f := newFixture(t)
	sess := handshake(t, f.client(GM), f.server).session
	// The client no longer offers the ticket's suite: it does not offer the ticket.
	cfg := f.client(IntlPQ)
	cfg.Session = sess
	c, _ := NewClientHandshake(cfg)
	if ch, _ := parseClientHello(c.Hello()); ch.ticket != nil {
		t.Fatal("ticket offered for a suite not offered")
	}
	// The server no longer accepts the suite: full handshake on another suite.
	f.server.Suites = []*Suite{GMPQ}
	r := resumeWith(t, f, sess, GM, GMPQ)
	if r.server.Resumed() || r.client.Suite() != GMPQ {
		t.Fatal("resumed with a suite the server no longer accepts")
	}
	wantCode(t, r.sh.TicketError(), CodeTicketInvalid)
}

func TestTicketSharedAcrossNodes(t *testing.T) {
	a, b := newFixture(t), newFixture(t)
	secret := bytes.Repeat([]byte{9}, 32)
	for _, f := range []*fixture{a, b} {
		if err := f.tickets.SetKeys([][]byte{secret}); err != nil {
			t.Fatal(err)
		}
	}
	b.sm2, b.ed = a.sm2, a.ed
	b.server.Identities = a.server.Identities
	b.server.Seen = a.seen // the cluster-wide seen set
	sess := handshake(t, a.client(GM), a.server).session
	if !resumeWith(t, b, sess, GM).server.Resumed() {
		t.Fatal("ticket from node a refused by node b")
	}
	r := resumeWith(t, a, sess, GM)
	wantCode(t, r.sh.TicketError(), CodeTicketReused)
}
