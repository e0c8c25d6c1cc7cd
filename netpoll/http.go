package netpoll

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/panjf2000/gnet/v2"
)

// serveHTTP answers the complete requests in the inbound buffer: upgrades,
// health checks inline, anything else through the HTTP handler off the loop.
func (s *Server) serveHTTP(c *Conn) gnet.Action {
	for c.state == stateHTTP {
		buf, _ := c.gc.Peek(-1)
		if len(buf) == 0 {
			return gnet.None
		}
		req, err := parseRequest(buf, s.opts.maxHead, s.opts.maxBody)
		if err != nil {
			if errors.Is(err, errNeedMore) {
				return gnet.None
			}
			status, msg := statusOf(err)
			s.writeHTTP(c, status, "text/plain; charset=utf-8", msg+"\n", false)
			return gnet.Close
		}
		if s.draining.Load() {
			s.writeHTTP(c, 503, "text/plain; charset=utf-8", "server shutting down\n", false)
			return gnet.Close
		}
		if string(req.path) == s.opts.wsPath {
			return s.upgrade(c, buf[:req.headLen], &req)
		}
		total := req.headLen + int(req.contentLength)
		if len(buf) < total {
			return gnet.None // wait for the body
		}
		keep := req.keepAlive()
		head := string(req.method) == "HEAD"
		switch string(req.path) {
		case "/healthz":
			s.writeHTTPHead(c, 200, "text/plain; charset=utf-8", "ok\n", keep, head)
		case "/readyz":
			if s.draining.Load() || (s.opts.ready != nil && !s.opts.ready()) {
				s.writeHTTPHead(c, 503, "text/plain; charset=utf-8", "not ready\n", keep, head)
			} else if o, ok := s.opts.admission.(Overloader); ok && o.Overloaded() {
				s.writeHTTPHead(c, 503, "text/plain; charset=utf-8", "overloaded\n", keep, head)
			} else {
				s.writeHTTPHead(c, 200, "text/plain; charset=utf-8", "ready\n", keep, head)
			}
		default:
			if s.opts.httpHandler == nil {
				s.writeHTTPHead(c, 404, "text/plain; charset=utf-8", "not found\n", keep, head)
				break
			}
			select {
			case s.httpSem <- struct{}{}:
			default:
				s.writeHTTP(c, 503, "text/plain; charset=utf-8", "too many requests in flight\n", false)
				return gnet.Close
			}
			raw := bytes.Clone(buf[:total]) // the request outlives this callback
			client := s.clientAddr(c, &req)
			_, _ = c.gc.Discard(total)
			c.state = stateHTTPBusy
			go s.callHandler(c, raw, keep, client)
			return gnet.None
		}
		_, _ = c.gc.Discard(total)
		if !keep {
			return gnet.Close
		}
		c.httpSince.Store(s.clock.Load())
	}
	return gnet.None
}

// callHandler runs the HTTP handler on its own goroutine and writes the
// response back through the event loop.
func (s *Server) callHandler(c *Conn, raw []byte, keep bool, client netip.Addr) {
	defer func() { <-s.httpSem }()
	resp := s.runHandler(c, raw, keep, client)
	_ = c.gc.AsyncWrite(resp, func(gc gnet.Conn, err error) error {
		// On the event loop again.
		if err != nil {
			return nil
		}
		if !keep || s.draining.Load() {
			return gc.Close()
		}
		c.state = stateHTTP
		c.httpSince.Store(s.clock.Load())
		if s.serveHTTP(c) == gnet.Close {
			return gc.Close()
		}
		return nil
	})
}

func (s *Server) runHandler(c *Conn, raw []byte, keep bool, client netip.Addr) (resp []byte) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return appendResponse(nil, 400, "text/plain; charset=utf-8", nil, []byte("malformed request\n"), false, false)
	}
	// The client's address (see Conn.RemoteAddr) with the TCP peer's
	// port. Not from c.gc: this runs off the event loop, where the client
	// may have closed the connection and gnet released its addresses.
	if !client.IsValid() {
		client = c.peer
	}
	if client.IsValid() {
		req.RemoteAddr = netip.AddrPortFrom(client, c.peerPort).String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req = req.WithContext(ctx)
	w := &responseWriter{header: make(http.Header)}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					return
				}
				s.opts.logger.Error("http handler panicked", "path", req.URL.Path, "panic", r)
				w.status, w.body, w.header = 500, []byte("internal error\n"), http.Header{}
			}
		}()
		s.opts.httpHandler.ServeHTTP(w, req)
	}()
	if w.status == 0 {
		w.status = 200
	}
	ct := w.header.Get("Content-Type")
	if ct == "" && len(w.body) > 0 {
		ct = http.DetectContentType(w.body)
	}
	w.header.Del("Content-Type")
	w.header.Del("Content-Length")
	w.header.Del("Connection")
	resp = appendResponse(nil, w.status, ct, w.header, w.body, keep, req.Method == "HEAD")
	s.countStatus(resp)
	return resp
}

// responseWriter collects a handler's response in memory; bodies are bounded
// by what handlers write (the REST API writes small JSON documents).
type responseWriter struct {
	header http.Header
	status int
	body   []byte
}

func (w *responseWriter) Header() http.Header { return w.header }
func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

// statusOf maps a parse error to a response status and a sentence.
func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, errHeadTooLarge):
		return 431, "request header fields too large"
	case errors.Is(err, errTooManyHeaders):
		return 431, "too many header fields"
	case errors.Is(err, errBodyTooLarge):
		return 413, "request body too large"
	case errors.Is(err, errChunked):
		return 411, "chunked request bodies are not supported; send Content-Length"
	case errors.Is(err, errVersion):
		return 505, "HTTP version not supported; use HTTP/1.1"
	case errors.Is(err, errBadContentLen):
		return 400, "bad Content-Length"
	default:
		return 400, "malformed HTTP request"
	}
}

func (s *Server) writeHTTP(c *Conn, status int, ctype, body string, keep bool) {
	s.writeHTTPHead(c, status, ctype, body, keep, false)
}

func (s *Server) writeHTTPHead(c *Conn, status int, ctype, body string, keep, head bool) {
	resp := appendResponse(respScratch(), status, ctype, nil, []byte(body), keep, head)
	s.countStatus(resp)
	_, _ = c.gc.Write(resp) // copies
}

// respScratch returns a small buffer for inline responses (the event loop
// writes synchronously, so a fresh slice per response is only a few bytes;
// responses are rare next to WebSocket traffic).
func respScratch() []byte { return make([]byte, 0, 256) }

func appendResponse(b []byte, status int, ctype string, h http.Header, body []byte, keep, head bool) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\n"...)
	if ctype != "" {
		b = append(b, "Content-Type: "...)
		b = append(b, ctype...)
		b = append(b, "\r\n"...)
	}
	for k, vs := range h {
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if keep {
		b = append(b, "\r\n\r\n"...)
	} else {
		b = append(b, "\r\nConnection: close\r\n\r\n"...)
	}
	if !head {
		b = append(b, body...)
	}
	return b
}
