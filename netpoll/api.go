package netpoll

import (
	"net/http"

	"github.com/gobwas/ws"
)

// Handler receives the events of upgraded WebSocket connections. Every
// method runs on a gnet event loop: it must not block (no locks held for
// long, no I/O, no channel send that can wait). Work that may wait is handed
// to another goroutine together with a copy of the bytes it needs.
type Handler interface {
	// OnOpen is called once the upgrade succeeded, before any message.
	OnOpen(c *Conn)
	// OnMessage is called with one complete, unmasked, validated message:
	// op is ws.OpText (valid UTF-8) or ws.OpBinary. payload is only valid
	// until OnMessage returns; copy what you keep.
	OnMessage(c *Conn, op ws.OpCode, payload []byte)
	// OnClose is called exactly once when the connection is gone, for
	// whatever reason. err is nil for a clean close handshake.
	OnClose(c *Conn, err error)
}

// ensure the standard library type stays importable for HTTPHandler docs.
var _ http.Handler = http.NotFoundHandler()
