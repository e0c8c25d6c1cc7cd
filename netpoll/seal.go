package netpoll

import (
	"context"
	"time"

	"github.com/gobwas/ws"
)

// Sealer turns the data frames queued on one connection into that
// connection's own frames: Unigate's application-layer secure channel
// (package crypto) seals each outbound envelope into a record whose nonce
// is an implicit per-connection sequence number, so records must be sealed
// in exactly the order they are written. A Sealer installed with
// Conn.SetSealer is called under the connection's send lock, in queue
// order, which is write order.
//
// Control frames (ping, pong, close) are never sealed. Frames shared by
// several connections (a broker fan-out) stay shared until they reach a
// sealed connection, which seals its own copy; connections without a Sealer
// keep writing the shared frame as before.
type Sealer interface {
	// SealFrame returns the frame to write in place of the data frame f,
	// holding one reference. f stays the caller's (Send releases it). It
	// runs under the connection's send lock: it must not block nor call the
	// Conn's methods. An error drops the frame and closes the connection
	// with 1011.
	SealFrame(f *Frame) (*Frame, error)
	// Compact is called on the connection's event loop, under the send
	// lock, once the connection has been idle (no message read, no frame
	// sealed) for the sealer idle time (WithSealerIdle), so it may drop
	// per-connection state it can rebuild (expanded ciphers). Nothing reads
	// or seals for the connection while it runs.
	Compact()
}

// DefaultSealerIdle is how long a sealed connection stays quiet before its
// Sealer is compacted.
const DefaultSealerIdle = 5 * time.Second

// WithSealerIdle sets how long a connection with a Sealer must be quiet
// (nothing read, nothing sealed) before Sealer.Compact is called; it is
// rounded up to whole seconds, the sweeper's resolution. Default
// DefaultSealerIdle.
func WithSealerIdle(d time.Duration) Option {
	return func(o *options) { o.sealerIdle = d }
}

// SetSealer installs s on the connection: every data frame queued by Send
// from now on is replaced by s.SealFrame(f). preamble, when not nil, is
// queued unsealed just before the switch (the last handshake message of
// the channel); SetSealer consumes one reference of it. It returns
// ErrClosed, releasing preamble, when the connection is closing.
//
// The switch is atomic with respect to Send: a frame queued concurrently
// goes either before the preamble, unsealed, or after it, sealed.
func (c *Conn) SetSealer(s Sealer, preamble *Frame) error {
	c.mu.Lock()
	if c.closing || c.gone {
		c.mu.Unlock()
		if preamble != nil {
			preamble.Release()
		}
		return ErrClosed
	}
	schedule := false
	if preamble != nil {
		c.pending = append(c.pending, preamble)
		c.pendBytes += len(preamble.Bytes())
		schedule = !c.scheduled
		c.scheduled = true
	}
	c.sealer = s
	c.sealedAt.Store(c.srv.clock.Load())
	c.hasSealer.Store(true)
	c.mu.Unlock()
	if schedule {
		c.loop.add(c)
	}
	return nil
}

// seal replaces the data frame f by the connection's sealed frame; it runs
// under c.mu with a sealer installed. It consumes f.
func (c *Conn) seal(f *Frame) (*Frame, error) {
	sf, err := c.sealer.SealFrame(f)
	if err == nil && sf != f {
		sf.Trace = f.Trace
	}
	f.Release()
	if err != nil {
		return nil, err
	}
	if now := c.srv.clock.Load(); c.sealedAt.Load() != now {
		c.sealedAt.Store(now)
	}
	return sf, nil
}

// control reports whether f is a control frame (ping, pong, close).
func (f *Frame) control() bool { return f.B[f.off]&0x08 != 0 }

// maybeCompact runs on the sweeper: once a sealed connection has been
// quiet for the sealer idle time since its last activity, and was not
// compacted since, Compact is scheduled on its event loop.
func (s *Server) maybeCompact(c *Conn, now int64) {
	last := max(c.lastRead.Load(), c.sealedAt.Load())
	if last <= c.compactedAt || now-last < s.sealerIdle() {
		return
	}
	c.compactedAt = now
	_ = c.loop.el.Execute(context.Background(), compactTask{c})
}

func (s *Server) sealerIdle() int64 {
	return max(int64((s.opts.sealerIdle+time.Second-1)/time.Second), 1)
}

// compactTask calls a connection's Sealer.Compact on its event loop.
type compactTask struct{ c *Conn }

func (t compactTask) Run(context.Context) error {
	c := t.c
	c.mu.Lock()
	if c.sealer != nil && !c.gone {
		c.sealer.Compact()
		c.srv.metrics.compactions.Inc()
	}
	c.mu.Unlock()
	return nil
}

// sealFailed closes a connection whose Sealer refused a frame.
func (c *Conn) sealFailed() {
	c.srv.metrics.sealErrors.Inc()
	c.Close(ws.StatusInternalServerError, "cannot seal a frame")
}
