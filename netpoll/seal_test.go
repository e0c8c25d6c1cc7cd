package netpoll

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

// countingSealer prefixes each data frame with its 8-byte sequence number,
// as a record layer with implicit sequence numbers would bind it.
type countingSealer struct {
	seq      uint64 // under the connection's send lock
	compacts atomic.Int32
	failAt   uint64 // seal fails at this seq (0: never)
}

func (s *countingSealer) SealFrame(f *Frame) (*Frame, error) {
	if s.failAt != 0 && s.seq == s.failAt {
		return nil, errors.New("sealer refuses")
	}
	out := AcquireFrame()
	out.B = binary.BigEndian.AppendUint64(out.B, s.seq)
	out.B = append(out.B, f.Payload()...)
	out.Seal(ws.OpBinary)
	s.seq++
	return out, nil
}

func (s *countingSealer) Compact() { s.compacts.Add(1) }

// sealHandler installs a countingSealer on "seal", then answers "burst"
// with frames queued concurrently from several goroutines, one frame
// shared by all of them.
type sealHandler struct {
	sealer *countingSealer
}

const burstSenders, burstFrames = 4, 200

func (h *sealHandler) OnOpen(c *Conn)       { c.MarkEstablished() }
func (h *sealHandler) OnClose(*Conn, error) {}
func (h *sealHandler) OnMessage(c *Conn, _ ws.OpCode, p []byte) {
	switch string(p) {
	case "seal":
		pre := AcquireFrame()
		pre.B = append(pre.B, "preamble"...)
		pre.Seal(ws.OpBinary)
		if err := c.SetSealer(h.sealer, pre); err != nil {
			panic(err)
		}
	case "burst":
		shared := AcquireFrame()
		shared.B = append(shared.B, "shared"...)
		shared.Seal(ws.OpBinary)
		var wg sync.WaitGroup
		for range burstSenders {
			shared.Retain()
			wg.Go(func() {
				defer shared.Release()
				for range burstFrames {
					shared.Retain()
					_ = c.Send(shared)
				}
			})
		}
		go func() { wg.Wait(); shared.Release() }()
	}
}

// TestSealerOrder: frames queued concurrently on a sealed connection are
// sealed in write order (consecutive sequence numbers on the wire), the
// preamble goes out unsealed, pings are not sealed, and an idle sealed
// connection is compacted.
func TestSealerOrder(t *testing.T) {
	h := &sealHandler{sealer: &countingSealer{}}
	s := startServer(t, h, WithSealerIdle(time.Second), WithPingInterval(time.Second), WithIdleTimeout(10*time.Second))
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}}
	c, _, err := d.Dial("ws://"+s.Addr()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pings := make(chan struct{}, 16)
	c.SetPingHandler(func(string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return nil
	})
	for _, m := range []string{"seal", "burst"} {
		if err := c.WriteMessage(websocket.BinaryMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, p, err := c.ReadMessage()
	if err != nil || string(p) != "preamble" {
		t.Fatalf("first message %q, %v; want the unsealed preamble", p, err)
	}
	for want := range uint64(burstSenders * burstFrames) {
		_, p, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if len(p) != 8+len("shared") || binary.BigEndian.Uint64(p) != want || string(p[8:]) != "shared" {
			t.Fatalf("message %d: %q (seq %d)", want, p, binary.BigEndian.Uint64(p))
		}
	}
	// Pings keep arriving unsealed (the ping handler sees them) and the
	// quiet connection gets compacted.
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	waitFor(t, 10*time.Second, "a ping", func() bool { return len(pings) > 0 })
	waitFor(t, 10*time.Second, "a compaction", func() bool { return h.sealer.compacts.Load() > 0 })
}

// TestSealerFailure: a frame the Sealer refuses closes the connection with
// 1011 and counts a seal error.
func TestSealerFailure(t *testing.T) {
	h := &sealHandler{sealer: &countingSealer{failAt: 3}}
	s := startServer(t, h)
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.proto"}}
	c, _, err := d.Dial("ws://"+s.Addr()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range []string{"seal", "burst"} {
		if err := c.WriteMessage(websocket.BinaryMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n := 0
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			n++
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseInternalServerErr {
			t.Fatalf("after %d messages: %v, want close 1011", n, err)
		}
		break
	}
	if n != 1+3 { // the preamble and records 0..2
		t.Fatalf("%d messages before the close, want 4", n)
	}
	waitFor(t, 5*time.Second, "seal error counted", func() bool { return s.metrics.sealErrors.Get() == 1 })
}
