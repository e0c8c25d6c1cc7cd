package netpoll

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"
)

// HeaderRoom is the number of bytes reserved at the start of Frame.B for the
// WebSocket header of a server frame (unmasked: at most 10 bytes).
const HeaderRoom = 10

// maxPooledFrame bounds the capacity of frames kept in the pool, so one large
// message does not pin a large buffer forever.
const maxPooledFrame = 16 << 10

// Frame is one outbound WebSocket frame built once and written to any number
// of connections without copying. Build it with AcquireFrame, append the
// payload to B, then Seal it; after Seal it is immutable.
//
// A Frame is reference counted: AcquireFrame returns one reference, Retain
// adds one, and each Conn.Send consumes one (it releases it once the bytes
// are handed to the socket, or on error). The last Release returns the
// buffer to a pool. Using a Frame after giving away your last reference is
// a bug.
type Frame struct {
	// B holds HeaderRoom reserved bytes followed by the payload. Append the
	// payload to B (for example with a codec's AppendEncode); do not touch
	// B[:HeaderRoom].
	B      []byte
	off    int // start of the wire bytes after Seal
	refs   atomic.Int32
	static bool
	// Trace, when its Read is set, times the relay of the message the
	// frame delivers (see Trace). Set it before the first Send.
	Trace Trace
}

var framePool = sync.Pool{New: func() any { return &Frame{B: make([]byte, HeaderRoom, 512)} }}

// AcquireFrame returns an empty frame holding one reference.
func AcquireFrame() *Frame {
	f := framePool.Get().(*Frame)
	f.B = f.B[:HeaderRoom]
	f.off = 0
	f.Trace = Trace{}
	f.refs.Store(1)
	return f
}

// NewStaticFrame builds a sealed frame that is never recycled: Retain and
// Release are no-ops. Use it for frames sent often with the same bytes
// (pings, fixed close frames).
func NewStaticFrame(op ws.OpCode, payload []byte) *Frame {
	f := &Frame{B: make([]byte, HeaderRoom, HeaderRoom+len(payload))}
	f.B = append(f.B, payload...)
	f.Seal(op)
	f.static = true
	return f
}

// Seal writes the header of a final, unmasked frame with opcode op in front
// of the payload. It must be called exactly once, before the frame is sent.
func (f *Frame) Seal(op ws.OpCode) {
	n := len(f.B) - HeaderRoom
	var h int
	switch {
	case n <= 125:
		h = 2
		f.B[HeaderRoom-1] = byte(n)
	case n <= 0xFFFF:
		h = 4
		f.B[HeaderRoom-3] = 126
		binary.BigEndian.PutUint16(f.B[HeaderRoom-2:], uint16(n))
	default:
		h = 10
		f.B[HeaderRoom-9] = 127
		binary.BigEndian.PutUint64(f.B[HeaderRoom-8:], uint64(n))
	}
	f.off = HeaderRoom - h
	f.B[f.off] = 0x80 | byte(op)
}

// Bytes returns the wire bytes of a sealed frame (header and payload).
func (f *Frame) Bytes() []byte { return f.B[f.off:] }

// Payload returns the payload of the frame.
func (f *Frame) Payload() []byte { return f.B[HeaderRoom:] }

// Retain adds a reference, for one more Send.
func (f *Frame) Retain() {
	if !f.static {
		f.refs.Add(1)
	}
}

// Release drops a reference; the last one recycles the frame.
func (f *Frame) Release() {
	if f.static {
		return
	}
	switch r := f.refs.Add(-1); {
	case r == 0:
		if cap(f.B) <= maxPooledFrame {
			framePool.Put(f)
		}
	case r < 0:
		panic("netpoll: Frame released more times than retained")
	}
}
