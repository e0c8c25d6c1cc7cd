package client_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/limiter"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
	"github.com/unigate/unigate/protocol/client"
)

// node is a real broker behind a real netpoll server; restart replaces the
// server (a drain, then a new one on the same address) and keeps the
// broker, so sessions survive as they do on a node that restarts with its
// session snapshot.
type node struct {
	t      *testing.T
	b      *broker.Broker
	signer *token.Signer
	opts   []netpoll.Option
	srv    *netpoll.Server
	addr   string
}

func startNode(t *testing.T, bo broker.Options, opts ...netpoll.Option) *node {
	t.Helper()
	signer, err := token.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	bo.Signer, bo.AllowAnonymous = signer, true
	b, err := broker.New(bo)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, b: b, signer: signer, opts: opts, addr: "127.0.0.1:0"}
	n.serve()
	t.Cleanup(func() {
		n.stop()
		b.Close()
	})
	return n
}

func (n *node) serve() {
	n.t.Helper()
	srv, err := netpoll.New(n.b, append([]netpoll.Option{netpoll.WithAddr(n.addr), netpoll.WithEventLoops(2)}, n.opts...)...)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.srv, n.addr = srv, srv.Addr()
}

func (n *node) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.srv.Stop(ctx)
}

func (n *node) url() string { return "ws://" + n.addr + "/ws" }

func (n *node) token(role, id string) string {
	now := time.Now()
	tok, err := n.signer.Sign(token.Claims{Subject: id, Role: role, Tenant: "default", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		n.t.Fatal(err)
	}
	return tok
}

// inbox records the delivers an agent's OnEvent gets.
type inbox struct {
	mu    sync.Mutex
	seqs  []uint64
	texts []string
	conv  chan string // assignments
}

func (in *inbox) onEvent(e *protocol.Envelope) {
	switch e.Kind {
	case protocol.KindDeliver:
		in.mu.Lock()
		in.seqs = append(in.seqs, e.Deliver.Seq)
		in.texts = append(in.texts, e.Deliver.Text)
		in.mu.Unlock()
	case protocol.KindConversation:
		if e.Conversation.State == protocol.StateAssigned {
			select {
			case in.conv <- e.Conversation.ConversationID:
			default:
			}
		}
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestResumeAcrossDrain: a visitor sends 60 messages while the node is
// drained (close 1001) and restarted twice. Every Send returns its Ack
// (messages in flight are sent again with their client message id), and
// the agent sees each message exactly once, in order.
func TestResumeAcrossDrain(t *testing.T) {
	for _, sub := range []string{protocol.SubprotocolProto, protocol.SubprotocolJSON} {
		t.Run(sub, func(t *testing.T) {
			n := startNode(t, broker.Options{})
			ctx := ctxT(t, 60*time.Second)
			in := &inbox{conv: make(chan string, 1)}
			agent, err := client.Dial(ctx, client.Options{URL: n.url(), Token: n.token(token.RoleAgent, "agent-1"),
				Subprotocol: sub, OnEvent: in.onEvent, MinBackoff: 20 * time.Millisecond, DrainSpread: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer agent.Close()
			if _, err := agent.Request(ctx, &protocol.Envelope{Kind: protocol.KindPresence,
				Presence: protocol.Presence{Status: protocol.StatusOnline, Capacity: 2}}); err != nil {
				t.Fatal(err)
			}
			visitor, err := client.Dial(ctx, client.Options{URL: n.url(), Subprotocol: sub,
				MinBackoff: 20 * time.Millisecond, DrainSpread: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer visitor.Close()
			conv, err := visitor.Open(ctx, protocol.Open{})
			if err != nil {
				t.Fatal(err)
			}
			if got := <-in.conv; got != conv {
				t.Fatalf("agent assigned %s, visitor opened %s", got, conv)
			}

			const total = 60
			acks := make([]uint64, total)
			var wg sync.WaitGroup
			for i := range total {
				wg.Go(func() {
					time.Sleep(time.Duration(i) * 5 * time.Millisecond)
					ack, err := visitor.Send(ctx, conv, "m"+strconv.Itoa(i))
					if err != nil {
						t.Errorf("send %d: %v", i, err)
						return
					}
					acks[i] = ack.Seq
				})
			}
			for range 2 {
				time.Sleep(80 * time.Millisecond)
				n.stop() // every client is closed with 1001
				n.serve()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				in.mu.Lock()
				got := len(in.seqs)
				in.mu.Unlock()
				if got >= total || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			in.mu.Lock()
			defer in.mu.Unlock()
			if len(in.seqs) != total {
				t.Fatalf("agent saw %d messages, want %d: %v", len(in.seqs), total, in.texts)
			}
			for i := 1; i < total; i++ {
				if in.seqs[i] <= in.seqs[i-1] {
					t.Fatalf("agent saw seqs out of order or twice: %v", in.seqs)
				}
			}
			seen := map[string]bool{}
			for _, txt := range in.texts {
				seen[txt] = true
			}
			for i := range total {
				if !seen["m"+strconv.Itoa(i)] {
					t.Fatalf("message m%d lost", i)
				}
			}
			slices.Sort(acks)
			if len(slices.Compact(acks)) != total {
				t.Fatalf("two sends got one seq: %v", acks)
			}
			vs, as := visitor.Stats(), agent.Stats()
			if vs.Reconnects < 1 || as.Reconnects < 1 {
				t.Fatalf("reconnects: visitor %+v agent %+v", vs, as)
			}
			t.Logf("visitor %+v; agent %+v", vs, as)
		})
	}
}

// TestHonoursRetryAfter: an upgrade refused with 429 and Retry-After is
// retried only after that time, not hammered.
func TestHonoursRetryAfter(t *testing.T) {
	lim, err := limiter.New(limiter.Settings{PerIPRate: 0.5, PerIPBurst: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, broker.Options{}, netpoll.WithAdmission(lim))
	ctx := ctxT(t, 30*time.Second)
	first, err := client.Dial(ctx, client.Options{URL: n.url()})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	start := time.Now()
	second, err := client.Dial(ctx, client.Options{URL: n.url(), MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	st := second.Stats()
	// The bucket refills in 2 s; Retry-After is whole seconds, so the
	// client is refused once or twice and never more.
	if st.Refused < 1 || st.Refused > 2 || st.Dials != st.Refused+1 {
		t.Fatalf("stats %+v: want one or two refusals and then success", st)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("connected after %v, before the Retry-After of at least 1 s", waited)
	}
}

// TestAnonymousRateLimitedHello: a hello refused by the anonymous rate is
// closed with 1013 "retry in N s"; the client comes back after N seconds
// and gets in.
func TestAnonymousRateLimitedHello(t *testing.T) {
	lim, err := limiter.New(limiter.Settings{AnonymousPerIPRate: 1, AnonymousPerIPBurst: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, broker.Options{Limits: lim})
	ctx := ctxT(t, 30*time.Second)
	first, err := client.Dial(ctx, client.Options{URL: n.url()})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	start := time.Now()
	second, err := client.Dial(ctx, client.Options{URL: n.url(), MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if st := second.Stats(); st.Dials < 2 || st.Dials > 3 {
		t.Fatalf("stats %+v: want a refused hello, a wait, and a welcome", st)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("welcomed after %v, before the 1 s the server asked for", waited)
	}
}

// TestPermanentRefusal: a forged token is refused for good: Dial returns a
// PermanentError after one attempt instead of retrying forever.
func TestPermanentRefusal(t *testing.T) {
	n := startNode(t, broker.Options{})
	ctx := ctxT(t, 30*time.Second)
	_, err := client.Dial(ctx, client.Options{URL: n.url(), Token: "not-a-token"})
	var pe *client.PermanentError
	if !errors.As(err, &pe) || pe.Code != protocol.CodeBadToken {
		t.Fatalf("Dial: %v, want a PermanentError with code %d", err, protocol.CodeBadToken)
	}
	// An upgrade refused with a 4xx other than 429 is permanent too.
	_, err = client.Dial(ctx, client.Options{URL: "ws://" + n.addr + "/nope"})
	if !errors.As(err, &pe) || pe.Status != 404 {
		t.Fatalf("Dial to a wrong path: %v, want a PermanentError with status 404", err)
	}
}

// TestSendFailsOnClose: a send pending while the client closes returns
// ErrClosed, and Requests fail fast after Close.
func TestSendFailsOnClose(t *testing.T) {
	n := startNode(t, broker.Options{})
	ctx := ctxT(t, 30*time.Second)
	c, err := client.Dial(ctx, client.Options{URL: n.url()})
	if err != nil {
		t.Fatal(err)
	}
	n.stop() // no server: the send stays pending
	errc := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, "c_unknown", "hi")
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	if err := <-errc; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("pending send after Close: %v", err)
	}
	if _, err := c.Request(ctx, &protocol.Envelope{Kind: protocol.KindOpen}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("request after Close: %v", err)
	}
	n.serve()
}
