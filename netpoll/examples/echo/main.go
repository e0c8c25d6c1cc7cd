// Command echo is a WebSocket echo server on Unigate's transport, package
// netpoll: gnet/v2 event loops (-loops, default one per GOMAXPROCS), no
// goroutine per connection, each message sent back as a pooled Frame
// queued with Conn.Send and written by the connection's event loop.
// It is what unigate-bench's echo scenario compares with the baselines
// in bench/baselines (docs/benchmarks.md):
//
//	go run ./netpoll/examples/echo -listen 127.0.0.1:8090
//	unigate-bench echo -url ws://127.0.0.1:8090/ws -conns 1000 -rates 20000
//
// It serves /ws with the subprotocol -subprotocol (netpoll requires one:
// the echo scenario offers "echo"), plus /healthz, and prints
//
//	echo server (netpoll) listening on ws://HOST:PORT/ws
//
// once it listens. SIGINT or SIGTERM drains it (1001 to every client).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/unigate/unigate/netpoll"
)

// echo sends every message back. It runs on the event loops and does not
// allocate per message: the frame comes from netpoll's pool and goes back
// to it once written.
type echo struct{}

func (echo) OnOpen(c *netpoll.Conn) { c.MarkEstablished() }

func (echo) OnMessage(c *netpoll.Conn, op ws.OpCode, payload []byte) {
	f := netpoll.AcquireFrame()
	f.B = append(f.B, payload...) // payload is only valid during the call
	f.Seal(op)
	_ = c.Send(f) // a closed or slow connection drops it; netpoll counts it
}

func (echo) OnClose(*netpoll.Conn, error) {}

func main() {
	listen := flag.String("listen", "127.0.0.1:8090", "listen `address` (port 0 picks a free port)")
	sub := flag.String("subprotocol", "echo", "WebSocket `subprotocol` to accept")
	loops := flag.Int("loops", runtime.GOMAXPROCS(0), "gnet event `loops`")
	maxMsg := flag.Int("max-message", 64<<10, "largest message in `bytes`")
	reusePort := flag.Bool("reuse-port", false, "listen with SO_REUSEPORT")
	flag.Parse()

	srv, err := netpoll.New(echo{},
		netpoll.WithAddr(*listen),
		netpoll.WithEventLoops(*loops),
		netpoll.WithSubprotocols(*sub),
		netpoll.WithMaxMessageBytes(*maxMsg),
		netpoll.WithReusePort(*reusePort),
	)
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netpoll echo:", err)
		os.Exit(1)
	}
	fmt.Printf("echo server (netpoll) listening on ws://%s/ws\n", srv.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Stop(sctx)
}
