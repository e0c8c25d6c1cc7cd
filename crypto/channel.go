package crypto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// MessageTransport carries whole messages in order: one WebSocket message, one
// length-prefixed frame. ReadMessage's result belongs to the caller until the next
// ReadMessage; WriteMessage must not retain msg after it returns.
type MessageTransport interface {
	ReadMessage() ([]byte, error)
	WriteMessage(msg []byte) error
}

// Channel is a handshake run over a MessageTransport and the records that follow:
// the Go client API (tests, the bench tool, Go programs talking to the gateway)
// and, with Server, a reference server for tests and interop.
//
// Send may run concurrently with Receive; two Sends (or two Receives) are
// serialised. Protocol failures are *Error; transport failures are returned as the
// transport reported them.
type Channel struct {
	t    MessageTransport
	conn *Conn

	sendMu  sync.Mutex
	sendBuf []byte
	recvMu  sync.Mutex
	hs      *ClientHandshake // client: kept until the NewSessionTicket arrives
	session *Session
	shake   *ServerHandshake // server
}

// Client runs a client handshake over t. The client may Send at once; the
// server's NewSessionTicket, if any, is consumed by the first Receive and then
// offered by Session.
func Client(t MessageTransport, cfg *ClientConfig) (*Channel, error) {
	hs, err := NewClientHandshake(cfg)
	if err != nil {
		return nil, err
	}
	if err := t.WriteMessage(hs.Hello()); err != nil {
		return nil, err
	}
	sh, err := t.ReadMessage()
	if err != nil {
		return nil, err
	}
	fin, conn, err := hs.HandleServerHello(sh)
	if err != nil {
		return nil, err
	}
	if err := t.WriteMessage(fin); err != nil {
		return nil, err
	}
	return &Channel{t: t, conn: conn, hs: hs}, nil
}

// Server runs a server handshake over t, including the NewSessionTicket when
// cfg.Tickets is set.
func Server(t MessageTransport, cfg *ServerConfig) (*Channel, error) {
	hs := NewServerHandshake(cfg)
	ch, err := t.ReadMessage()
	if err != nil {
		return nil, err
	}
	sh, err := hs.HandleClientHello(ch)
	if err != nil {
		return nil, err
	}
	if err := t.WriteMessage(sh); err != nil {
		return nil, err
	}
	fin, err := t.ReadMessage()
	if err != nil {
		return nil, err
	}
	conn, nst, err := hs.HandleClientFinished(fin)
	if err != nil {
		return nil, err
	}
	if nst != nil {
		if err := t.WriteMessage(nst); err != nil {
			return nil, err
		}
	}
	return &Channel{t: t, conn: conn, shake: hs}, nil
}

// Conn is the record layer (suite, resumption, server key id, Compact).
func (c *Channel) Conn() *Conn { return c.conn }

// TicketError is the server's ServerHandshake.TicketError (nil on a client).
func (c *Channel) TicketError() error {
	if c.shake == nil {
		return nil
	}
	return c.shake.TicketError()
}

// Session is the resumption session received from the server, once Receive has
// consumed its NewSessionTicket; nil before, or if the server issues none.
func (c *Channel) Session() *Session {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	return c.session
}

// Send seals plaintext into one record and writes it.
func (c *Channel) Send(plaintext []byte) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	rec, err := c.conn.Seal(c.sendBuf[:0], plaintext)
	if err != nil {
		return err
	}
	c.sendBuf = rec[:0]
	return c.t.WriteMessage(rec)
}

// Receive reads the next record and appends its plaintext to dst. A close record
// from the peer yields an *Error with CodeClosed.
func (c *Channel) Receive(dst []byte) ([]byte, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	for {
		msg, err := c.t.ReadMessage()
		if err != nil {
			return dst, err
		}
		if c.hs != nil && len(msg) > 0 && msg[0] == msgNewSessionTicket {
			hs := c.hs
			c.hs = nil // one ticket per handshake; a second one is an error below
			if c.session, err = hs.HandleNewSessionTicket(msg); err != nil {
				return dst, err
			}
			continue
		}
		c.hs = nil
		return c.conn.Open(dst, msg)
	}
}

// Close sends a close record, so that the peer can tell an orderly end from a
// truncated stream. It does not close the transport.
func (c *Channel) Close() error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	rec, err := c.conn.SealClose(nil)
	if err != nil {
		return err
	}
	return c.t.WriteMessage(rec)
}

// DefaultMaxMessage bounds a message read by a StreamTransport.
const DefaultMaxMessage = 1 << 20

// ErrMessageTooLarge is returned by StreamTransport.ReadMessage for a length
// prefix above its limit.
var ErrMessageTooLarge = errors.New("unigate/crypto: message too large")

// StreamTransport frames messages on a byte stream (TCP, a pipe) with a 4-byte
// big-endian length prefix. Reads are serialised by the caller (Channel does).
type StreamTransport struct {
	rw  io.ReadWriter
	max int
	buf []byte
	wmu sync.Mutex
}

// NewStreamTransport frames messages on rw; max <= 0 means DefaultMaxMessage.
func NewStreamTransport(rw io.ReadWriter, max int) *StreamTransport {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	return &StreamTransport{rw: rw, max: max}
}

// ReadMessage implements MessageTransport; the result is valid until the next call.
func (s *StreamTransport) ReadMessage() ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(s.rw, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(s.max) {
		return nil, fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, n)
	}
	if cap(s.buf) < int(n) {
		s.buf = make([]byte, n)
	}
	s.buf = s.buf[:n]
	if _, err := io.ReadFull(s.rw, s.buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return s.buf, nil
}

// WriteMessage implements MessageTransport with one Write per message.
func (s *StreamTransport) WriteMessage(msg []byte) error {
	if len(msg) > s.max {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b := make([]byte, 4, 4+len(msg))
	binary.BigEndian.PutUint32(b, uint32(len(msg)))
	_, err := s.rw.Write(append(b, msg...))
	return err
}
