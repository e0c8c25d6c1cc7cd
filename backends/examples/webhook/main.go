// Command webhook is an example Unigate hook plugin that forwards every
// conversation event as JSON to an HTTP endpoint, signed with HMAC-SHA256,
// with the event id for idempotency, retrying with exponential backoff.
// See README.md.
//
//	WEBHOOK_SECRET=s3cret webhook -url https://crm.example.com/unigate/events
//
// Delivery is at least once, end to end: Event returns only after the
// endpoint answered 2xx; while it fails, Event retries until the gateway's
// call deadline and then returns the error, and the gateway (fail-closed)
// delivers the same event, with the same id, again later. The endpoint
// therefore sees an id more than once now and then and must drop repeats
// (the Idempotency-Key header). The plugin itself remembers the last
// -dedup ids it delivered and does not post them twice.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
)

// Headers of each POST.
const (
	HeaderSignature = "X-Unigate-Signature" // "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))
	HeaderTimestamp = "X-Unigate-Timestamp" // Unix seconds of this attempt
	HeaderEventID   = "X-Unigate-Event-Id"  // the event id, stable across retries
	HeaderIdemKey   = "Idempotency-Key"     // the same id, under the common name
)

// payload is the JSON body.
type payload struct {
	ID             string            `json:"id"`
	Type           string            `json:"type"`
	Tenant         string            `json:"tenant,omitempty"`
	ConversationID string            `json:"conversation_id,omitempty"`
	VisitorID      string            `json:"visitor_id,omitempty"`
	AgentID        string            `json:"agent_id,omitempty"`
	FromAgentID    string            `json:"from_agent_id,omitempty"`
	MessageID      string            `json:"message_id,omitempty"`
	Text           string            `json:"text,omitempty"`
	At             time.Time         `json:"at"`
	Attributes     map[string]string `json:"attributes,omitempty"`
}

// Sign returns the signature header value for body sent at ts.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

type forwarder struct {
	url        string
	secret     []byte
	client     *http.Client
	backoffMin time.Duration
	backoffMax time.Duration
	log        hclog.Logger
	seen       *recent
}

var errPermanent = errors.New("rejected by the endpoint")

// Event posts ev until the endpoint accepts it or ctx ends.
func (f *forwarder) Event(ctx context.Context, ev backends.Event) error {
	if ev.ID == "" {
		return status.Error(codes.InvalidArgument, "event without an id")
	}
	if f.seen.has(ev.ID) {
		return nil // delivered before: the gateway retried after a lost reply
	}
	body, err := json.Marshal(payload{
		ID: ev.ID, Type: ev.Type.String(), Tenant: ev.Tenant, ConversationID: ev.ConversationID,
		VisitorID: ev.VisitorID, AgentID: ev.AgentID, FromAgentID: ev.FromAgentID,
		MessageID: ev.MessageID, Text: ev.Text, At: ev.At.UTC(), Attributes: ev.Attributes,
	})
	if err != nil {
		return err
	}
	delay := f.backoffMin
	for attempt := 1; ; attempt++ {
		retryAfter, err := f.post(ctx, ev.ID, body)
		switch {
		case err == nil:
			f.seen.add(ev.ID)
			return nil
		case errors.Is(err, errPermanent):
			// Retrying the same bytes cannot succeed: drop it, loudly.
			f.log.Error("event rejected; dropped", "id", ev.ID, "type", ev.Type.String(), "err", err)
			f.seen.add(ev.ID)
			return nil
		}
		wait := max(delay, retryAfter)
		wait = wait/2 + rand.N(wait/2+1) // jitter: spread retries of many events
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return status.Errorf(codes.Unavailable, "event %s not delivered after %d attempts: %v", ev.ID, attempt, err)
		}
		f.log.Debug("delivery failed; retrying", "id", ev.ID, "attempt", attempt, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return status.Errorf(codes.Unavailable, "event %s not delivered after %d attempts: %v", ev.ID, attempt, err)
		case <-t.C:
		}
		delay = min(delay*2, f.backoffMax)
	}
}

// post makes one attempt. It returns nil on 2xx, errPermanent (wrapped)
// on a 4xx other than 408, 425 and 429, and otherwise a retryable error
// with the endpoint's Retry-After, if any.
func (f *forwarder) post(ctx context.Context, id string, body []byte) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "unigate-webhook/1")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(f.secret, ts, body))
	req.Header.Set(HeaderEventID, id)
	req.Header.Set(HeaderIdemKey, id)
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return 0, nil
	case c == http.StatusRequestTimeout || c == http.StatusTooEarly || c == http.StatusTooManyRequests || c >= 500:
		var ra time.Duration
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			ra = time.Duration(min(s, 300)) * time.Second
		}
		return ra, fmt.Errorf("HTTP %d", c)
	default:
		return 0, fmt.Errorf("%w: HTTP %d", errPermanent, c)
	}
}

// Authenticate is not this hook's job.
func (f *forwarder) Authenticate(context.Context, backends.Credentials) (backends.Identity, error) {
	return backends.Identity{}, status.Error(codes.Unimplemented, "the webhook hook does not authenticate")
}

// recent is a bounded set of the last n ids (a ring plus a map).
type recent struct {
	mu   sync.Mutex
	ring []string
	next int
	set  map[string]struct{}
}

func newRecent(n int) *recent {
	return &recent{ring: make([]string, max(n, 1)), set: make(map[string]struct{}, n)}
}

func (r *recent) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.set[id]
	return ok
}

func (r *recent) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[id]; ok {
		return
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.set, old)
	}
	r.ring[r.next] = id
	r.set[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}

func main() {
	endpoint := flag.String("url", os.Getenv("WEBHOOK_URL"), "endpoint `URL` (or WEBHOOK_URL)")
	attemptTimeout := flag.Duration("attempt-timeout", 5*time.Second, "timeout of one POST")
	backoffMin := flag.Duration("backoff-min", 200*time.Millisecond, "first retry delay, doubled per failure")
	backoffMax := flag.Duration("backoff-max", 10*time.Second, "retry delay cap")
	dedup := flag.Int("dedup", 10000, "number of delivered event ids remembered")
	flag.Parse()
	log := sdk.Logger().Named("webhook")
	secret := os.Getenv("WEBHOOK_SECRET") // not a flag: arguments are visible in ps
	u, err := url.Parse(*endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || secret == "" {
		log.Error("need -url http(s)://... and WEBHOOK_SECRET in the environment")
		os.Exit(1)
	}
	sdk.ServeHook(&forwarder{
		url:        *endpoint,
		secret:     []byte(secret),
		client:     &http.Client{Timeout: *attemptTimeout},
		backoffMin: *backoffMin,
		backoffMax: *backoffMax,
		log:        log,
		seen:       newRecent(*dedup),
	})
}
