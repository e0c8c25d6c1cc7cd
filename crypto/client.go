package crypto

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"time"

	"github.com/emmansun/gmsm/smx509"
)

// ClientConfig configures a client handshake. The zero value is not usable: the
// server is authenticated by pinned keys (ServerKeys), by a certificate chain
// (Roots and ServerName), or both.
type ClientConfig struct {
	// Suites to offer, in the client's order; nil means DefaultSuites.
	Suites []*Suite
	// ServerKeys are the pinned server identity keys; the server's key id (or the
	// key of its leaf certificate) must name one of them, of the suite's signature
	// algorithm. A pinned leaf key is trusted whatever its chain says.
	ServerKeys []Verifier
	// Roots, when set, are the trusted roots for servers that send a certificate
	// chain (GM suites: SM2 certificates, verified with gmsm's smx509).
	Roots *smx509.CertPool
	// ServerName is checked against the leaf's DNS names or IP addresses; required
	// with Roots, so that a certificate issued to another server is refused.
	ServerName string
	// Session, when set and unexpired, is offered for resumption (its suite must be
	// among Suites). Sessions are single use: replace it with the new one.
	Session *Session
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

type clientState uint8

const (
	clientWaitServerHello clientState = iota
	clientDone
	clientFailed
)

// ClientHandshake is the client's state machine. Not safe for concurrent use.
type ClientHandshake struct {
	cfg     *ClientConfig
	suites  []*Suite
	state   clientState
	hello   []byte
	privs   []KEMPrivateKey // parallel to suites
	session *Session        // offered session, if any

	suite     *Suite
	keyID     KeyID
	nstSecret []byte
	resMaster []byte
}

// NewClientHandshake generates the ephemeral key shares and the ClientHello.
func NewClientHandshake(cfg *ClientConfig) (*ClientHandshake, error) {
	const op = "client hello"
	c := &ClientHandshake{cfg: cfg, suites: cfg.Suites}
	if c.suites == nil {
		c.suites = DefaultSuites
	}
	if len(c.suites) == 0 || len(c.suites) > maxSuites {
		return nil, newErr(CodeConfig, op, errLength)
	}
	if len(cfg.ServerKeys) == 0 && cfg.Roots == nil {
		return nil, newErr(CodeConfig, op, errNoKey)
	}
	if cfg.Roots != nil && cfg.ServerName == "" {
		return nil, newErr(CodeConfig, op, errors.New("Roots without ServerName"))
	}
	ch := &clientHello{random: make([]byte, randomSize)}
	if _, err := rand.Read(ch.random); err != nil {
		return nil, newErr(CodeInternal, op, err)
	}
	for _, s := range c.suites {
		if ch.offers(s.ID) {
			return nil, newErr(CodeConfig, op, errLength)
		}
		priv, err := s.KEM.GenerateKey()
		if err != nil {
			return nil, newErr(CodeInternal, op, err)
		}
		c.privs = append(c.privs, priv)
		ch.suites = append(ch.suites, s.ID)
		ch.shares = append(ch.shares, keyShare{s.ID, priv.PublicKey()})
	}
	var bsuite *Suite
	if sess := cfg.Session; sess != nil && c.now().Before(sess.Expiry) {
		if bsuite = findSuite(c.suites, sess.Suite); bsuite != nil {
			c.session = sess
			ch.ticket = sess.Ticket
		}
	}
	b := ch.marshalPrefix()
	if c.session != nil {
		h := bsuite.Hash
		binder := hmacSum(h, binderKey(h, c.session.PSK), hashOf(h, b))
		b = putVec8(b, binder)
	}
	c.hello = b
	return c, nil
}

func (c *ClientHandshake) now() time.Time {
	if c.cfg.Now != nil {
		return c.cfg.Now()
	}
	return time.Now()
}

// Hello is the ClientHello message to send.
func (c *ClientHandshake) Hello() []byte { return c.hello }

func (c *ClientHandshake) fail(code Code, op string, cause error) *Error {
	c.state = clientFailed
	c.privs = nil
	return newErr(code, op, cause)
}

// HandleServerHello verifies the ServerHello (signature or PSK, server Finished) and
// returns the client Finished message to send and the established Conn. The client
// may seal records right away.
func (c *ClientHandshake) HandleServerHello(msg []byte) ([]byte, *Conn, error) {
	const op = "server hello"
	if c.state != clientWaitServerHello {
		return nil, nil, c.fail(CodeUnexpectedMessage, op, nil)
	}
	sh, perr := parseServerHello(msg)
	if perr != nil {
		c.state, c.privs = clientFailed, nil
		return nil, nil, perr
	}
	idx := -1
	for i, s := range c.suites {
		if s.ID == sh.suite {
			idx = i
		}
	}
	if idx < 0 {
		return nil, nil, c.fail(CodeSuiteNotOffered, op, nil)
	}
	suite := c.suites[idx]
	h := suite.Hash
	var psk []byte
	if sh.mode == modeResumed {
		if c.session == nil || c.session.Suite != suite.ID {
			return nil, nil, c.fail(CodeUnexpectedMessage, op, nil)
		}
		psk = c.session.PSK
		c.keyID = c.session.ServerKeyID
	}
	if len(sh.share) != suite.KEM.CiphertextSize() {
		return nil, nil, c.fail(CodeBadKeyShare, op, errLength)
	}
	shared, err := c.privs[idx].Decapsulate(sh.share)
	if err != nil {
		return nil, nil, c.fail(CodeBadKeyShare, op, err)
	}
	defer wipe(shared)

	t := newTranscript(h)
	t.write(c.hello)
	t.write(msg[:sh.coreEnd])
	if sh.mode != modeResumed {
		var v Verifier
		if sh.mode == modeCert {
			var cerr *Error
			if v, cerr = c.verifyChain(sh.chain, suite.Signature); cerr != nil {
				c.state, c.privs = clientFailed, nil
				return nil, nil, cerr
			}
		} else {
			for _, k := range c.cfg.ServerKeys {
				if id := k.KeyID(); string(id[:]) == string(sh.keyID) && k.Algorithm() == suite.Signature {
					v = k
					break
				}
			}
		}
		if v == nil {
			return nil, nil, c.fail(CodeUnknownServerKey, op, nil)
		}
		th1 := t.sum()
		if !v.Verify(append([]byte(sigContext), th1...), sh.sig) {
			return nil, nil, c.fail(CodeBadSignature, op, nil)
		}
		c.keyID = v.KeyID()
	}
	t.write(msg[sh.coreEnd:sh.sigEnd])
	th2 := t.sum()
	early := earlySecret(h, psk)
	hs := handshakeSecret(h, early, shared)
	want := hmacSum(h, expandLabel(h, hs, "s finished", nil, h.Size()), th2)
	if !hmac.Equal(want, sh.finished) {
		return nil, nil, c.fail(CodeBadFinished, op, nil)
	}
	t.write(msg[sh.sigEnd:])
	th3 := t.sum()
	fin := []byte{msgFinished}
	fin = putVec8(fin, hmacSum(h, expandLabel(h, hs, "c finished", nil, h.Size()), th3))
	t.write(fin)
	th4 := t.sum()

	master := masterSecret(h, hs)
	cSecret := expandLabel(h, master, "c ap traffic", th3, h.Size())
	sSecret := expandLabel(h, master, "s ap traffic", th3, h.Size())
	conn, err := newConn(suite, true, cSecret, sSecret, sh.rekeyAfter, sh.mode == modeResumed, c.keyID)
	if err != nil {
		return nil, nil, c.fail(CodeInternal, op, err)
	}
	c.nstSecret = expandLabel(h, master, "s nst", th4, h.Size())
	c.resMaster = expandLabel(h, master, "res master", th4, h.Size())
	wipe(hs)
	wipe(master)
	c.suite = suite
	c.state = clientDone
	c.privs = nil
	return fin, conn, nil
}

// HandleNewSessionTicket opens the server's ticket message and returns the Session
// to offer on the next connection.
func (c *ClientHandshake) HandleNewSessionTicket(msg []byte) (*Session, error) {
	const op = "new session ticket"
	if c.state != clientDone || c.nstSecret == nil {
		return nil, newErr(CodeUnexpectedMessage, op, nil)
	}
	if len(msg) < 1 || msg[0] != msgNewSessionTicket {
		return nil, newErr(CodeUnexpectedMessage, op, nil)
	}
	a, iv, err := nstCipher(c.suite, c.nstSecret)
	if err != nil {
		return nil, newErr(CodeInternal, op, err)
	}
	pt, err := a.Open(nil, iv, msg[1:], msg[:1])
	if err != nil {
		return nil, newErr(CodeBadTicketMessage, op, nil)
	}
	r := reader{b: pt}
	life, ok1 := r.u32()
	ticket, ok2 := r.vec16()
	if !ok1 || !ok2 || len(ticket) == 0 || !r.empty() {
		return nil, newErr(CodeBadTicketMessage, op, nil)
	}
	h := c.suite.Hash
	sess := &Session{
		Suite:       c.suite.ID,
		PSK:         expandLabel(h, c.resMaster, "resumption", nil, h.Size()),
		Ticket:      append([]byte(nil), ticket...),
		Expiry:      c.now().Add(time.Duration(life) * time.Second),
		ServerKeyID: c.keyID,
	}
	wipe(c.resMaster)
	c.resMaster, c.nstSecret = nil, nil
	return sess, nil
}

func nstCipher(s *Suite, secret []byte) (aead cipher.AEAD, iv []byte, err error) {
	key := expandLabel(s.Hash, secret, "key", nil, s.AEAD.KeySize())
	iv = expandLabel(s.Hash, secret, "iv", nil, ivSize)
	a, err := s.AEAD.New(key)
	wipe(key)
	return a, iv, err
}
