// Command gorilla is the gorilla/websocket baseline of the echo scenario
// (see package bench/baselines): net/http serves /ws and each upgraded
// connection has its own goroutine that reads a message and writes it
// back, the way gorilla/websocket is usually used.
//
//	go run ./bench/baselines/gorilla -listen 127.0.0.1:8090
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8090", "listen `address` (port 0 picks a free port)")
	sub := flag.String("subprotocol", "echo", "WebSocket `subprotocol` to accept")
	maxMsg := flag.Int64("max-message", 64<<10, "largest message in `bytes`")
	flag.Parse()

	up := websocket.Upgrader{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		Subprotocols:    []string{*sub},
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade answered the error
		}
		defer c.Close()
		c.SetReadLimit(*maxMsg)
		var buf []byte
		for {
			op, rd, err := c.NextReader()
			if err != nil {
				return // includes the close handshake, answered by gorilla
			}
			if buf, err = readAll(buf[:0], rd); err != nil {
				return
			}
			if err := c.WriteMessage(op, buf); err != nil {
				return
			}
		}
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gorilla echo:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("echo server (gorilla) listening on ws://%s/ws\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Hijacked connections are not the server's any more: they end
		// with the process.
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "gorilla echo:", err)
		os.Exit(1)
	}
}

// readAll appends everything from r to buf, reusing its capacity.
func readAll(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
