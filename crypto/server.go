package crypto

import (
	"crypto/hmac"
	"crypto/rand"
	"time"
)

// ServerConfig configures server handshakes. It is shared by all connections and
// must not change after the first handshake.
type ServerConfig struct {
	// Suites accepted, in the server's preference order; nil means DefaultSuites.
	Suites []*Suite
	// Identities are the server identity keys; a suite is only chosen if one of
	// them (or of Certificates) has the suite's signature algorithm. The first
	// matching key is used.
	Identities []Signer
	// Certificates are identities with a certificate chain; for a suite whose
	// signature algorithm one of them has, the server sends that chain (mode 2)
	// instead of a key id, and it is preferred over Identities.
	Certificates []*Certificate
	// Tickets enables resumption; nil disables both issuing and accepting tickets.
	Tickets *TicketKeyring
	// Seen enforces single use of tickets; required when Tickets is set.
	Seen SeenSet
	// TicketLifetime is how long an issued ticket is valid; 0 means 12 hours.
	TicketLifetime time.Duration
	// TicketMaxAge caps a chain of resumptions since the last signed handshake;
	// 0 means 7 days.
	TicketMaxAge time.Duration
	// RekeyAfter is the number of records per key and direction; 0 means
	// DefaultRekeyAfter. It is sent to the client in the ServerHello.
	RekeyAfter uint32
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

func (cfg *ServerConfig) now() time.Time {
	if cfg.Now != nil {
		return cfg.Now()
	}
	return time.Now()
}

type serverState uint8

const (
	serverWaitClientHello serverState = iota
	serverWaitFinished
	serverDone
	serverFailed
)

// ServerHandshake is the server's state machine. Not safe for concurrent use.
type ServerHandshake struct {
	cfg       *ServerConfig
	state     serverState
	suite     *Suite
	t         *transcript
	hs        []byte
	th3       []byte
	rekey     uint32
	resumed   bool
	keyID     KeyID
	authTime  int64
	ticketErr *Error
}

// NewServerHandshake starts a server handshake.
func NewServerHandshake(cfg *ServerConfig) *ServerHandshake {
	return &ServerHandshake{cfg: cfg}
}

// TicketError reports why an offered ticket was not used (CodeTicketInvalid,
// CodeTicketExpired, CodeTicketReused, CodeTicketUnavailable), or nil. The
// handshake still succeeds as a full one.
func (s *ServerHandshake) TicketError() error {
	if s.ticketErr == nil {
		return nil
	}
	return s.ticketErr
}

// Suite is the chosen suite, after HandleClientHello.
func (s *ServerHandshake) Suite() *Suite { return s.suite }

func (s *ServerHandshake) fail(code Code, op string, cause error) *Error {
	s.state = serverFailed
	if s.hs != nil {
		wipe(s.hs)
	}
	return newErr(code, op, cause)
}

func (s *ServerHandshake) suites() []*Suite {
	if s.cfg.Suites != nil {
		return s.cfg.Suites
	}
	return DefaultSuites
}

// identity returns the signer for alg and, when it comes with one, its chain.
func (s *ServerHandshake) identity(alg SignatureAlgorithm) (Signer, *Certificate) {
	for _, c := range s.cfg.Certificates {
		if c.signer.Public().Algorithm() == alg {
			return c.signer, c
		}
	}
	for _, id := range s.cfg.Identities {
		if id.Public().Algorithm() == alg {
			return id, nil
		}
	}
	return nil, nil
}

// tryTicket returns the ticket state and suite if the offered ticket can be used.
// A bad binder is fatal (returned as the error); any other problem is recorded in
// s.ticketErr and yields (nil, nil, nil).
func (s *ServerHandshake) tryTicket(ch *clientHello, raw []byte) (*ticketState, *Suite, *Error) {
	if ch.ticket == nil || s.cfg.Tickets == nil || s.cfg.Seen == nil {
		return nil, nil, nil
	}
	pt, id, err := s.cfg.Tickets.open(ch.ticket)
	if err != nil {
		s.ticketErr = newErr(CodeTicketInvalid, "ticket", err)
		return nil, nil, nil
	}
	ts, ok := parseTicketState(pt)
	if !ok {
		s.ticketErr = newErr(CodeTicketInvalid, "ticket", nil)
		return nil, nil, nil
	}
	suite := findSuite(s.suites(), ts.suite)
	if suite == nil || !ch.offers(suite.ID) || ch.share(suite.ID) == nil || len(ts.psk) != suite.Hash.Size() {
		s.ticketErr = newErr(CodeTicketInvalid, "ticket", nil)
		return nil, nil, nil
	}
	h := suite.Hash
	want := hmacSum(h, binderKey(h, ts.psk), hashOf(h, raw[:ch.binderOff]))
	if !hmac.Equal(want, ch.binder) {
		return nil, nil, newErr(CodeBadBinder, "client hello", nil)
	}
	now := s.cfg.now()
	exp := time.Unix(ts.expiry, 0)
	if !now.Before(exp) {
		s.ticketErr = newErr(CodeTicketExpired, "ticket", nil)
		return nil, nil, nil
	}
	fresh, err := s.cfg.Seen.Use(id, exp)
	if err != nil {
		s.ticketErr = newErr(CodeTicketUnavailable, "ticket", err)
		return nil, nil, nil
	}
	if !fresh {
		s.ticketErr = newErr(CodeTicketReused, "ticket", nil)
		return nil, nil, nil
	}
	return ts, suite, nil
}

// HandleClientHello chooses a suite, performs the key agreement and returns the
// ServerHello (with the signature in a full handshake, and the server Finished).
func (s *ServerHandshake) HandleClientHello(msg []byte) ([]byte, error) {
	const op = "client hello"
	if s.state != serverWaitClientHello {
		return nil, s.fail(CodeUnexpectedMessage, op, nil)
	}
	ch, perr := parseClientHello(msg)
	if perr != nil {
		s.state = serverFailed
		return nil, perr
	}
	ts, suite, terr := s.tryTicket(ch, msg)
	if terr != nil {
		s.state = serverFailed
		return nil, terr
	}
	var signer Signer
	var cert *Certificate
	if ts == nil {
		for _, cand := range s.suites() {
			if ch.offers(cand.ID) && ch.share(cand.ID) != nil {
				if signer, cert = s.identity(cand.Signature); signer != nil {
					suite = cand
					break
				}
			}
		}
		if suite == nil {
			return nil, s.fail(CodeNoCommonSuite, op, nil)
		}
	}
	share := ch.share(suite.ID)
	if len(share) != suite.KEM.PublicKeySize() {
		return nil, s.fail(CodeBadKeyShare, op, errLength)
	}
	ct, shared, err := suite.KEM.Encapsulate(share)
	if err != nil {
		return nil, s.fail(CodeBadKeyShare, op, err)
	}
	defer wipe(shared)
	s.suite = suite
	s.rekey = s.cfg.RekeyAfter
	if s.rekey == 0 {
		s.rekey = DefaultRekeyAfter
	}
	h := suite.Hash

	b := make([]byte, 0, 2+randomSize+1+2+len(ct)+1+4+1+keyIDSize+2+128+1+64)
	b = append(b, msgServerHello, protocolVersion)
	random := make([]byte, randomSize)
	if _, err := rand.Read(random); err != nil {
		return nil, s.fail(CodeInternal, op, err)
	}
	b = append(b, random...)
	b = append(b, byte(suite.ID))
	b = putVec16(b, ct)
	var psk []byte
	if ts != nil {
		b = append(b, modeResumed)
		b = appendU32(b, s.rekey)
		psk, s.resumed, s.keyID, s.authTime = ts.psk, true, ts.keyID, ts.authTime
	} else {
		s.keyID = signer.Public().KeyID()
		s.authTime = s.cfg.now().Unix()
		if cert != nil {
			b = append(b, modeCert)
			b = appendU32(b, s.rekey)
			b = marshalChain(b, cert.chain)
		} else {
			b = append(b, modeFull)
			b = appendU32(b, s.rekey)
			b = putVec8(b, s.keyID[:])
		}
	}
	coreEnd := len(b)
	t := newTranscript(h)
	t.write(msg)
	t.write(b)
	if ts == nil {
		th1 := t.sum()
		sig, err := signer.Sign(append([]byte(sigContext), th1...))
		if err != nil {
			return nil, s.fail(CodeInternal, op, err)
		}
		b = putVec16(b, sig)
		t.write(b[coreEnd:])
	}
	th2 := t.sum()
	early := earlySecret(h, psk)
	s.hs = handshakeSecret(h, early, shared)
	mark := len(b)
	b = putVec8(b, hmacSum(h, expandLabel(h, s.hs, "s finished", nil, h.Size()), th2))
	t.write(b[mark:])
	s.th3 = t.sum()
	s.t = t
	s.state = serverWaitFinished
	return b, nil
}

// HandleClientFinished verifies the client's Finished and returns the established
// Conn and, when tickets are enabled, the NewSessionTicket message to send (else nil).
func (s *ServerHandshake) HandleClientFinished(msg []byte) (*Conn, []byte, error) {
	const op = "client finished"
	if s.state != serverWaitFinished {
		return nil, nil, s.fail(CodeUnexpectedMessage, op, nil)
	}
	mac, perr := parseFinished(msg)
	if perr != nil {
		s.fail(perr.Code, op, nil)
		return nil, nil, perr
	}
	h := s.suite.Hash
	want := hmacSum(h, expandLabel(h, s.hs, "c finished", nil, h.Size()), s.th3)
	if !hmac.Equal(want, mac) {
		return nil, nil, s.fail(CodeBadFinished, op, nil)
	}
	s.t.write(msg)
	th4 := s.t.sum()
	master := masterSecret(h, s.hs)
	wipe(s.hs)
	defer wipe(master)
	cSecret := expandLabel(h, master, "c ap traffic", s.th3, h.Size())
	sSecret := expandLabel(h, master, "s ap traffic", s.th3, h.Size())
	conn, err := newConn(s.suite, false, cSecret, sSecret, s.rekey, s.resumed, s.keyID)
	if err != nil {
		return nil, nil, s.fail(CodeInternal, op, err)
	}
	s.state = serverDone
	if s.cfg.Tickets == nil {
		return conn, nil, nil
	}
	nst, err := s.newSessionTicket(master, th4)
	if err != nil {
		return nil, nil, s.fail(CodeInternal, "new session ticket", err)
	}
	return conn, nst, nil
}

func (s *ServerHandshake) newSessionTicket(master, th4 []byte) ([]byte, error) {
	h := s.suite.Hash
	res := expandLabel(h, master, "res master", th4, h.Size())
	defer wipe(res)
	life := s.cfg.TicketLifetime
	if life <= 0 {
		life = 12 * time.Hour
	}
	maxAge := s.cfg.TicketMaxAge
	if maxAge <= 0 {
		maxAge = 7 * 24 * time.Hour
	}
	now := s.cfg.now()
	exp := now.Add(life)
	if capAt := time.Unix(s.authTime, 0).Add(maxAge); capAt.Before(exp) {
		exp = capAt
	}
	if !exp.After(now) {
		return nil, nil
	}
	ts := ticketState{
		suite:    s.suite.ID,
		authTime: s.authTime,
		expiry:   exp.Unix(),
		psk:      expandLabel(h, res, "resumption", nil, h.Size()),
		keyID:    s.keyID,
	}
	pt := ts.marshal()
	wipe(ts.psk)
	ticket, err := s.cfg.Tickets.seal(pt, now)
	wipe(pt)
	if err != nil {
		return nil, err
	}
	body := appendU32(nil, uint32(exp.Sub(now)/time.Second))
	body = putVec16(body, ticket)
	a, iv, err := nstCipher(s.suite, expandLabel(h, master, "s nst", th4, h.Size()))
	if err != nil {
		return nil, err
	}
	return a.Seal([]byte{msgNewSessionTicket}, iv, body, []byte{msgNewSessionTicket}), nil
}
