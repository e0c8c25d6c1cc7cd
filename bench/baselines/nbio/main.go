// Command nbio is the lesismal/nbio baseline of the echo scenario (see
// package bench/baselines): nbhttp's epoll event loops (-loops pollers)
// read the connections, and its goroutine pool runs the message handler,
// which writes the message back: nbio's own echo example, with the
// payload buffer released after each call (ReleaseWebsocketPayload).
//
//	go run ./bench/baselines/nbio -listen 127.0.0.1:8090
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/lesismal/nbio/logging"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8090", "listen `address` (port 0 picks a free port)")
	sub := flag.String("subprotocol", "echo", "WebSocket `subprotocol` to accept")
	loops := flag.Int("loops", runtime.GOMAXPROCS(0), "epoll `pollers` (nbio's default is NumCPU/4, at least 1)")
	maxMsg := flag.Int("max-message", 64<<10, "largest message in `bytes`")
	maxLoad := flag.Int("max-load", 200000, "connections the engine expects at most")
	flag.Parse()
	logging.SetLevel(logging.LevelError)

	up := websocket.NewUpgrader()
	up.Subprotocols = []string{*sub}
	up.CheckOrigin = func(*http.Request) bool { return true }
	up.MessageLengthLimit = *maxMsg
	up.OnMessage(func(c *websocket.Conn, op websocket.MessageType, data []byte) {
		_ = c.WriteMessage(op, data)
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		_, _ = up.Upgrade(w, r, nil) // an error was answered already
	})
	bound := make(chan string, 1)
	engine := nbhttp.NewEngine(nbhttp.Config{
		Network:                 "tcp",
		Addrs:                   []string{*listen},
		NPoller:                 *loops,
		MaxLoad:                 *maxLoad,
		Handler:                 mux,
		ReleaseWebsocketPayload: true,
		Listen: func(network, addr string) (net.Listener, error) {
			ln, err := net.Listen(network, addr)
			if err == nil {
				bound <- ln.Addr().String()
			}
			return ln, err
		},
	})
	if err := engine.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "nbio echo:", err)
		os.Exit(1)
	}
	fmt.Printf("echo server (nbio) listening on ws://%s/ws\n", <-bound)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = engine.Shutdown(sctx)
}
