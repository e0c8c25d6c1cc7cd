package crypto

import "encoding/binary"

// Handshake message types and sizes (docs/crypto.md, "Handshake").
const (
	msgClientHello      = 1
	msgServerHello      = 2
	msgFinished         = 3
	msgNewSessionTicket = 4

	protocolVersion = 1
	randomSize      = 32
	maxSuites       = 8
	keyIDSize       = 8
	maxBinder       = 64

	modeFull    = 0 // signed; the server names a pinned key by its id
	modeResumed = 1 // PSK-DHE from a ticket, no signature
	modeCert    = 2 // signed; the server sends its certificate chain
)

// sigContext prefixes the transcript hash the server signs.
const sigContext = "unigate v1 server signature\x00"

type keyShare struct {
	suite SuiteID
	data  []byte
}

type clientHello struct {
	random    []byte
	suites    []SuiteID
	shares    []keyShare
	ticket    []byte // nil when no PSK is offered
	binder    []byte
	binderOff int // offset of the binder's length byte: the binder covers raw[:binderOff]
}

func (ch *clientHello) offers(id SuiteID) bool {
	for _, s := range ch.suites {
		if s == id {
			return true
		}
	}
	return false
}

func (ch *clientHello) share(id SuiteID) []byte {
	for _, s := range ch.shares {
		if s.suite == id {
			return s.data
		}
	}
	return nil
}

// marshalClientHello writes everything but the binder; the caller appends vec8(binder).
func (ch *clientHello) marshalPrefix() []byte {
	b := []byte{msgClientHello, protocolVersion}
	b = append(b, ch.random...)
	b = append(b, byte(len(ch.suites)))
	for _, s := range ch.suites {
		b = append(b, byte(s))
	}
	b = append(b, byte(len(ch.shares)))
	for _, s := range ch.shares {
		b = append(b, byte(s.suite))
		b = putVec16(b, s.data)
	}
	if ch.ticket == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	return putVec16(b, ch.ticket)
}

func parseClientHello(raw []byte) (*clientHello, *Error) {
	const op = "client hello"
	bad := func() (*clientHello, *Error) { return nil, newErr(CodeMalformed, op, nil) }
	r := reader{b: raw}
	if t, ok := r.u8(); !ok || t != msgClientHello {
		return nil, newErr(CodeUnexpectedMessage, op, nil)
	}
	v, ok := r.u8()
	if !ok {
		return bad()
	}
	if v != protocolVersion {
		return nil, newErr(CodeUnsupportedVer, op, nil)
	}
	ch := &clientHello{}
	if ch.random, ok = r.fixed(randomSize); !ok {
		return bad()
	}
	suites, ok := r.vec8()
	if !ok || len(suites) == 0 || len(suites) > maxSuites {
		return bad()
	}
	for _, s := range suites {
		if ch.offers(SuiteID(s)) {
			return bad() // duplicate
		}
		ch.suites = append(ch.suites, SuiteID(s))
	}
	n, ok := r.u8()
	if !ok || n == 0 || int(n) > maxSuites {
		return bad()
	}
	for i := 0; i < int(n); i++ {
		s, ok1 := r.u8()
		d, ok2 := r.vec16()
		if !ok1 || !ok2 || !ch.offers(SuiteID(s)) || ch.share(SuiteID(s)) != nil || len(d) == 0 {
			return bad()
		}
		ch.shares = append(ch.shares, keyShare{SuiteID(s), d})
	}
	flag, ok := r.u8()
	if !ok || flag > 1 {
		return bad()
	}
	if flag == 1 {
		if ch.ticket, ok = r.vec16(); !ok || len(ch.ticket) == 0 {
			return bad()
		}
		ch.binderOff = r.off
		if ch.binder, ok = r.vec8(); !ok || len(ch.binder) == 0 || len(ch.binder) > maxBinder {
			return bad()
		}
	}
	if !r.empty() {
		return bad()
	}
	return ch, nil
}

type serverHello struct {
	random     []byte
	suite      SuiteID
	share      []byte
	mode       byte
	rekeyAfter uint32
	keyID      []byte
	chain      [][]byte // modeCert: DER certificates, leaf first
	sig        []byte
	finished   []byte
	coreEnd    int // raw[:coreEnd] is signed (with the ClientHello)
	sigEnd     int // raw[:sigEnd] is covered by the server Finished
}

func parseServerHello(raw []byte) (*serverHello, *Error) {
	const op = "server hello"
	bad := func() (*serverHello, *Error) { return nil, newErr(CodeMalformed, op, nil) }
	r := reader{b: raw}
	if t, ok := r.u8(); !ok || t != msgServerHello {
		return nil, newErr(CodeUnexpectedMessage, op, nil)
	}
	v, ok := r.u8()
	if !ok {
		return bad()
	}
	if v != protocolVersion {
		return nil, newErr(CodeUnsupportedVer, op, nil)
	}
	sh := &serverHello{}
	if sh.random, ok = r.fixed(randomSize); !ok {
		return bad()
	}
	s, ok := r.u8()
	if !ok {
		return bad()
	}
	sh.suite = SuiteID(s)
	if sh.share, ok = r.vec16(); !ok || len(sh.share) == 0 {
		return bad()
	}
	if sh.mode, ok = r.u8(); !ok || sh.mode > modeCert {
		return bad()
	}
	if sh.rekeyAfter, ok = r.u32(); !ok || sh.rekeyAfter == 0 {
		return bad()
	}
	switch sh.mode {
	case modeFull:
		if sh.keyID, ok = r.vec8(); !ok || len(sh.keyID) != keyIDSize {
			return bad()
		}
	case modeCert:
		list, ok := r.vec16()
		if !ok {
			return bad()
		}
		if sh.chain, ok = parseChain(list); !ok {
			return bad()
		}
	}
	sh.coreEnd = r.off
	if sh.mode != modeResumed {
		if sh.sig, ok = r.vec16(); !ok || len(sh.sig) == 0 {
			return bad()
		}
	}
	sh.sigEnd = r.off
	if sh.finished, ok = r.vec8(); !ok || len(sh.finished) == 0 {
		return bad()
	}
	if !r.empty() {
		return bad()
	}
	return sh, nil
}

func parseFinished(raw []byte) ([]byte, *Error) {
	r := reader{b: raw}
	if t, ok := r.u8(); !ok || t != msgFinished {
		return nil, newErr(CodeUnexpectedMessage, "finished", nil)
	}
	mac, ok := r.vec8()
	if !ok || !r.empty() {
		return nil, newErr(CodeMalformed, "finished", nil)
	}
	return mac, nil
}

func appendU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
