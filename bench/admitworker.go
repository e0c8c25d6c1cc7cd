package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/unigate/unigate/protocol"
)

// cmdAdmit starts a connection storm worker of the admission scenario.
const cmdAdmit = "admit"

// admitJob is one storm worker's part of an admission run: Attempts
// connection attempts, Inflight at a time, as fast as the server answers.
type admitJob struct {
	Index       int           `json:"index"`
	URL         string        `json:"url"`
	Subprotocol string        `json:"subprotocol"`
	Src         []netip.Addr  `json:"src,omitempty"`
	Attempts    int           `json:"attempts"`
	Inflight    int           `json:"inflight"`
	Hello       bool          `json:"hello"`
	Timeout     time.Duration `json:"timeout"`
	Deadline    int64         `json:"deadline"` // Unix nanoseconds
}

// admitProgress is a storm worker's cumulative counters.
type admitProgress struct {
	Attempts int64 `json:"attempts"` // answered or failed
	Admitted int64 `json:"admitted"` // 101 Switching Protocols
	Refused  int64 `json:"refused"`  // 503 or 429 with Retry-After
	Failed   int64 `json:"failed"`   // anything else
	Inflight int64 `json:"inflight"`
}

func (p *admitProgress) add(o admitProgress) {
	p.Attempts += o.Attempts
	p.Admitted += o.Admitted
	p.Refused += o.Refused
	p.Failed += o.Failed
	p.Inflight += o.Inflight
}

// admitResult is a storm worker's report, sent when its last attempt is
// answered; its admitted connections stay open until the close command.
type admitResult struct {
	// Start is the first dial, End the last answer (Unix nanoseconds).
	Start    int64 `json:"start"`
	End      int64 `json:"end"`
	Attempts int64 `json:"attempts"`
	Admitted int64 `json:"admitted"`
	// Welcomed counts the admitted connections whose Hello got a Welcome.
	Welcomed int64 `json:"welcomed"`
	// Refused counts the refusals by status ("503", "429"), each with a
	// valid Retry-After; RetryAfter their Retry-After values (seconds).
	Refused    map[string]int64 `json:"refused"`
	RetryAfter map[string]int64 `json:"retry_after"`
	// Failures are the attempts that were neither admitted nor refused
	// properly: another status, a refusal without a valid Retry-After,
	// a connection error, a Hello without Welcome.
	Failures Reasons `json:"failures"`
	// RefusalLatency is from the dial to the refusal's status line;
	// AdmitLatency to the 101 (and the Welcome with Hello).
	RefusalLatency histSnapshot `json:"refusal_latency"`
	AdmitLatency   histSnapshot `json:"admit_latency"`
}

// admitWorker runs one storm worker.
type admitWorker struct {
	job     *admitJob
	host    string
	req     []byte // the upgrade request
	hello   []byte // the masked Hello frame
	codec   protocol.Codec
	dialers []*net.Dialer

	attempts, admitted, welcomed, refused, failed, inflight atomic.Int64

	mu         sync.Mutex
	byStatus   map[string]int64
	retryAfter map[string]int64
	held       []net.Conn
	fails      *reasonCounter
	refusalLat *latencyHist
	admitLat   *latencyHist
}

func newAdmitWorker(job *admitJob) (*admitWorker, error) {
	u, err := url.Parse(job.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: URL %q", ErrConfig, job.URL)
	}
	codec := protocol.ForSubprotocol(job.Subprotocol)
	if codec == nil {
		return nil, fmt.Errorf("%w: unknown subprotocol %q", ErrConfig, job.Subprotocol)
	}
	path := u.RequestURI()
	w := &admitWorker{
		job: job, host: u.Host, codec: codec,
		req: []byte("GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
			"Sec-WebSocket-Protocol: " + job.Subprotocol + "\r\n\r\n"),
		byStatus: map[string]int64{}, retryAfter: map[string]int64{},
		fails: newReasonCounter(), refusalLat: newLatencyHist(), admitLat: newLatencyHist(),
	}
	env := protocol.Envelope{Kind: protocol.KindHello, ID: helloID}
	env.Hello.ClientName = "unigate-bench-admission"
	payload, err := codec.AppendEncode(nil, &env)
	if err != nil {
		return nil, err
	}
	op := ws.OpText
	if codec.Binary() {
		op = ws.OpBinary
	}
	frame, at := appendClientFrame(nil, op, len(payload))
	copy(frame[at:], payload)
	maskFrame(frame, at, 0x5eed1234)
	w.hello = frame
	if len(job.Src) == 0 {
		w.dialers = []*net.Dialer{netDialer(job.Timeout, netip.Addr{})}
	}
	for _, a := range job.Src {
		w.dialers = append(w.dialers, netDialer(job.Timeout, a))
	}
	return w, nil
}

func (w *admitWorker) progress() admitProgress {
	return admitProgress{Attempts: w.attempts.Load(), Admitted: w.admitted.Load(), Refused: w.refused.Load(),
		Failed: w.failed.Load(), Inflight: w.inflight.Load()}
}

func runAdmitWorker(ctx context.Context, job *admitJob, cmds <-chan wire, link *workerLink) error {
	w, err := newAdmitWorker(job)
	if err != nil {
		return err
	}
	defer w.closeAll()
	defer everySecond(func() {
		p := w.progress()
		link.emit(wire{Ev: evProgress, AdmitProgress: &p})
	})()
	link.emit(wire{Ev: evReady})
	var t0 int64
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case c, ok := <-cmds:
		if !ok {
			return errors.New("coordinator went away")
		}
		if c.Cmd != cmdStart {
			return fmt.Errorf("want %q, got %q", cmdStart, c.Cmd)
		}
		t0 = c.T0
	}
	if d := time.Until(time.Unix(0, t0)); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	res := w.storm(ctx)
	link.emit(wire{Ev: evResult, AdmitResult: res})
	// Hold the admitted connections until the coordinator is done.
	for {
		select {
		case <-ctx.Done():
			return nil
		case c, ok := <-cmds:
			if !ok {
				return nil
			}
			if c.Cmd == cmdClose {
				w.closeAll()
				link.emit(wire{Ev: evClosed})
				return nil
			}
		}
	}
}

// storm makes every attempt, Inflight at a time, and reports.
func (w *admitWorker) storm(ctx context.Context) *admitResult {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range max(w.job.Inflight, 1) {
		wg.Go(func() {
			br := bufio.NewReaderSize(nil, 1024)
			var hdr [ws.MaxHeaderSize]byte
			var buf []byte
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(w.job.Attempts) {
					return
				}
				buf = w.attempt(ctx, int(i), br, hdr[:], buf)
			}
		})
	}
	wg.Wait()
	end := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	return &admitResult{
		Start: start.UnixNano(), End: end.UnixNano(),
		Attempts: w.attempts.Load(), Admitted: w.admitted.Load(), Welcomed: w.welcomed.Load(),
		Refused: w.byStatus, RetryAfter: w.retryAfter, Failures: w.fails.export(),
		RefusalLatency: w.refusalLat.snapshot(), AdmitLatency: w.admitLat.snapshot(),
	}
}

// attempt makes connection attempt i and accounts for its answer. br and
// hdr are the calling goroutine's; buf is returned for reuse.
func (w *admitWorker) attempt(ctx context.Context, i int, br *bufio.Reader, hdr, buf []byte) []byte {
	w.inflight.Add(1)
	defer w.inflight.Add(-1)
	defer w.attempts.Add(1)
	start := time.Now()
	fail := func(reason string, err error) {
		w.failed.Add(1)
		w.fails.add(reason, err)
	}
	conn, err := w.dialers[i%len(w.dialers)].DialContext(ctx, "tcp", w.host)
	if err != nil {
		fail(reasonOf(err), err)
		return buf
	}
	_ = conn.SetDeadline(start.Add(w.job.Timeout))
	if _, err := conn.Write(w.req); err != nil {
		conn.Close()
		fail(reasonOf(err), err)
		return buf
	}
	br.Reset(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		fail("response_"+reasonOf(err), err)
		return buf
	}
	took := time.Since(start)
	switch resp.StatusCode {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		conn.Close()
		ra := resp.Header.Get("Retry-After")
		if secs, err := strconv.Atoi(ra); err != nil || secs < 1 {
			fail("no_retry_after_"+strconv.Itoa(resp.StatusCode), fmt.Errorf("status %d with Retry-After %q", resp.StatusCode, ra))
			return buf
		}
		w.refused.Add(1)
		w.refusalLat.record(took)
		w.mu.Lock()
		w.byStatus[strconv.Itoa(resp.StatusCode)]++
		w.retryAfter[ra]++
		w.mu.Unlock()
		return buf
	case http.StatusSwitchingProtocols:
	default:
		conn.Close()
		fail("http_"+strconv.Itoa(resp.StatusCode), fmt.Errorf("status %s", resp.Status))
		return buf
	}
	w.admitted.Add(1)
	if w.job.Hello {
		if buf, err = w.sayHello(conn, br, hdr, buf); err != nil {
			conn.Close()
			fail("hello_"+reasonOf(err), err)
			return buf
		}
		w.welcomed.Add(1)
		took = time.Since(start)
	}
	_ = conn.SetDeadline(time.Time{})
	w.admitLat.record(took)
	w.mu.Lock()
	w.held = append(w.held, conn)
	w.mu.Unlock()
	return buf
}

// sayHello sends the anonymous Hello and reads frames until the Welcome
// (or an error envelope, or 8 frames).
func (w *admitWorker) sayHello(conn net.Conn, br *bufio.Reader, hdr, buf []byte) ([]byte, error) {
	if _, err := conn.Write(w.hello); err != nil {
		return buf, err
	}
	var env protocol.Envelope
	for range 8 {
		h, p, err := readServerFrame(br, hdr, buf, 1<<20)
		buf = p
		if err != nil {
			return buf, err
		}
		switch h.OpCode {
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(p)
			return buf, fmt.Errorf("closed %d %q before the welcome", code, reason)
		case ws.OpText, ws.OpBinary:
		default:
			continue
		}
		if err := w.codec.Decode(p, &env); err != nil {
			return buf, err
		}
		switch env.Kind {
		case protocol.KindWelcome:
			return buf, nil
		case protocol.KindError:
			return buf, &serverError{code: env.Error.Code, msg: strings.Clone(env.Error.Message)}
		}
	}
	return buf, errors.New("no welcome among the first 8 frames")
}

// closeAll closes the admitted connections (the server sees the client
// go away). Idempotent.
func (w *admitWorker) closeAll() {
	w.mu.Lock()
	held := w.held
	w.held = nil
	w.mu.Unlock()
	for _, c := range held {
		_ = c.Close()
	}
}
