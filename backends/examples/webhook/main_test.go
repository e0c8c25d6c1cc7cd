package main

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/supervisor"
)

const secret = "test-secret"

// receiver is an endpoint that fails on purpose and drops repeated ids,
// as the README asks of a real one.
type receiver struct {
	mu         sync.Mutex
	attempts   map[string]int  // POSTs per id
	processed  map[string]int  // times an id was processed (must end at 1)
	down       map[string]bool // ids answered 503 until cleared
	deliveries int
	repeats    int // deliveries of ids already processed, dropped
	badSig     int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	id := req.Header.Get(HeaderEventID)
	want := Sign([]byte(secret), req.Header.Get(HeaderTimestamp), body)
	var p payload
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deliveries++
	if !hmac.Equal([]byte(want), []byte(req.Header.Get(HeaderSignature))) ||
		req.Header.Get(HeaderIdemKey) != id || json.Unmarshal(body, &p) != nil || p.ID != id {
		r.badSig++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	r.attempts[id]++
	n := r.attempts[id]
	switch {
	case r.down[id]:
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	case n == 1:
		http.Error(w, "first attempt fails", http.StatusServiceUnavailable)
		return
	case n == 2 && id == "ev-3":
		w.Header().Set("Retry-After", "0")
		http.Error(w, "slow down", http.StatusTooManyRequests)
		return
	}
	if r.processed[id] > 0 { // idempotency: a repeat is acknowledged, not processed
		r.repeats++
		w.WriteHeader(http.StatusNoContent)
		return
	}
	r.processed[id]++
	if n == 2 && id == "ev-7" {
		// Processed, but the reply is lost: the plugin must retry and the
		// receiver must recognise the id.
		http.Error(w, "reply lost", http.StatusBadGateway)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) uniqueProcessed() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for id, n := range r.processed {
		out[id] = n
	}
	return out
}

func buildPlugin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs a plugin binary")
	}
	bin := filepath.Join(t.TempDir(), "webhook")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestWebhookProcess(t *testing.T) {
	bin := buildPlugin(t)
	rcv := &receiver{attempts: map[string]int{}, processed: map[string]int{}, down: map[string]bool{"ev-down": true}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()

	hook, err := supervisor.NewHook(supervisor.Config{
		Path:        bin,
		Args:        []string{"-url", srv.URL, "-backoff-min", "5ms", "-backoff-max", "50ms"},
		Env:         []string{"WEBHOOK_SECRET=" + secret},
		CallTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := hook.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	// 20 events from 4 goroutines; every id fails its first attempt.
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += 4 {
				ev := backends.Event{ID: fmt.Sprintf("ev-%d", i), Type: backends.EventMessageStored, Tenant: "acme",
					ConversationID: "c1", MessageID: strconv.Itoa(i), Text: "消息 " + strconv.Itoa(i), At: time.Now()}
				if err := hook.TryEvent(ctx, ev); err != nil {
					errs <- fmt.Errorf("%s: %w", ev.ID, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The gateway redelivers some events (its reply was lost): the plugin
	// remembers them and does not post again.
	before := rcv.deliveriesNow()
	for _, id := range []string{"ev-0", "ev-7", "ev-19"} {
		if err := hook.TryEvent(ctx, backends.Event{ID: id, Type: backends.EventMessageStored}); err != nil {
			t.Fatal(err)
		}
	}
	if d := rcv.deliveriesNow(); d != before {
		t.Errorf("redelivered events were posted again: %d → %d deliveries", before, d)
	}

	// An endpoint down for longer than the call: the call fails (the
	// gateway keeps the event) and succeeds once it is back.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err = hook.TryEvent(short, backends.Event{ID: "ev-down", Type: backends.EventConversationClosed})
	cancelShort()
	if err == nil {
		t.Fatal("delivery to a down endpoint succeeded")
	}
	rcv.mu.Lock()
	delete(rcv.down, "ev-down")
	rcv.mu.Unlock()
	if err := hook.TryEvent(ctx, backends.Event{ID: "ev-down", Type: backends.EventConversationClosed}); err != nil {
		t.Fatalf("redelivery after recovery: %v", err)
	}

	// Every event processed exactly once: none lost, none double-counted;
	// ev-7's lost reply made it arrive again, and the id caught it.
	got := rcv.uniqueProcessed()
	if len(got) != n+1 {
		t.Errorf("%d distinct events processed, want %d", len(got), n+1)
	}
	for i := 0; i < n; i++ {
		if id := fmt.Sprintf("ev-%d", i); got[id] != 1 {
			t.Errorf("%s processed %d times, want 1", id, got[id])
		}
	}
	if got["ev-down"] != 1 {
		t.Errorf("ev-down processed %d times", got["ev-down"])
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	// ev-7's lost reply makes one repeat; on a loaded machine an attempt
	// that outlives its timeout after being processed makes another, which
	// the id must catch just the same (processed stays 1, checked above).
	if rcv.repeats < 1 {
		t.Errorf("%d repeated deliveries, want at least 1 (ev-7)", rcv.repeats)
	}
	if rcv.badSig != 0 {
		t.Errorf("%d deliveries with a bad signature", rcv.badSig)
	}
	if rcv.attempts["ev-7"] != 3 || rcv.attempts["ev-3"] != 3 {
		t.Errorf("attempts: ev-7 %d (want 3), ev-3 %d (want 3)", rcv.attempts["ev-7"], rcv.attempts["ev-3"])
	}
}

func (r *receiver) deliveriesNow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deliveries
}

// TestWebhookPermanentRejection: a 4xx is not retried; the event is
// dropped (logged), so a poison event cannot block the gateway's queue.
func TestWebhookPermanentRejection(t *testing.T) {
	var mu sync.Mutex
	posts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		posts++
		mu.Unlock()
		http.Error(w, "no", http.StatusUnprocessableEntity)
	}))
	defer srv.Close()
	f := &forwarder{url: srv.URL, secret: []byte(secret), client: srv.Client(), backoffMin: time.Millisecond,
		backoffMax: time.Millisecond, log: hclogNull(), seen: newRecent(4)}
	if err := f.Event(context.Background(), backends.Event{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Event(context.Background(), backends.Event{}); err == nil {
		t.Error("an event without id was accepted")
	}
	mu.Lock()
	defer mu.Unlock()
	if posts != 1 {
		t.Errorf("%d posts, want 1", posts)
	}
}

func hclogNull() hclog.Logger { return hclog.NewNullLogger() }

func TestRecentIsBounded(t *testing.T) {
	r := newRecent(3)
	for _, id := range []string{"a", "b", "c", "a", "d"} {
		r.add(id)
	}
	if r.has("a") || !r.has("b") || !r.has("d") || len(r.set) != 3 {
		t.Errorf("set %v", r.set)
	}
}
