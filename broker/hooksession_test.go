package broker

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// TestPasswordSessionResume: a session the authentication hook signed in
// (a password hello) comes back with its resume token alone, as the same
// agent with its conversations, and again with the token that welcome
// gave (a console reloading its page keeps no password). A session signed
// in with a token does not: its resume token alone is refused as before
// (2004 where anonymous visitors are allowed, 2000 where they are not).
// Nor does a password session whose ResumeTTL ran out, nor a resume token
// signed with another key.
func TestPasswordSessionResume(t *testing.T) {
	for _, anonymous := range []bool{true, false} {
		t.Run(fmt.Sprintf("anonymous=%v", anonymous), func(t *testing.T) {
			var skew atomic.Int64 // added to the clock
			clock := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			e := startEnv(t, Options{AllowAnonymous: anonymous, Now: clock, Backends: &Backends{Hook: &recHook{}}})
			refused := protocol.CodeBadResumeToken
			if !anonymous {
				refused = protocol.CodeUnauthenticated
			}

			alice := e.dial("alice", protocol.SubprotocolJSON)
			w := alice.hello(protocol.Hello{Username: "alice", Password: "secret"})
			alice.online(2)
			v := e.dial("visitor", protocol.SubprotocolJSON)
			vt, err := e.signer.Sign(token.Claims{Subject: "v1", Role: token.RoleVisitor, Tenant: "acme", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			v.hello(protocol.Hello{Token: vt}) // alice's tenant (the hook's)
			conv := v.open(protocol.Open{}).ConversationID
			alice.waitState(conv, protocol.StateAssigned)
			_ = alice.ws.Close()

			// The page reloads: the resume token alone.
			back := e.dial("alice-reloaded", protocol.SubprotocolJSON)
			w2 := back.hello(protocol.Hello{ResumeToken: w.ResumeToken, Cursors: []protocol.Cursor{{ConversationID: conv}}})
			if !w2.Resumed || w2.Role != protocol.RoleAgent || w2.UserID != "alice" || w2.SessionID != w.SessionID || !slices.Contains(w2.Conversations, conv) {
				t.Fatalf("resumed welcome %+v, want agent alice's session %s with %s", w2, w.SessionID, conv)
			}
			ack := back.say(conv, "a-1", "still here after the reload")
			if d := v.waitDeliver(conv, ack.Seq); d.SenderID != "alice" || d.SenderRole != protocol.RoleAgent {
				t.Fatalf("visitor got %+v, want alice's message", d)
			}
			_ = back.ws.Close()
			// And again, with the token the resumed welcome gave.
			again := e.dial("alice-again", protocol.SubprotocolJSON)
			if w3 := again.hello(protocol.Hello{ResumeToken: w2.ResumeToken}); !w3.Resumed || w3.UserID != "alice" || w3.Role != protocol.RoleAgent {
				t.Fatalf("second resume: %+v", w3)
			}

			// A token agent's resume token alone does not sign it in.
			a1 := e.dial("a1", protocol.SubprotocolJSON)
			wa := a1.hello(protocol.Hello{Token: e.token("a1", token.RoleAgent)})
			_ = a1.ws.Close()
			noTok := e.dial("a1-without-token", protocol.SubprotocolJSON)
			noTok.waitError(noTok.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: wa.ResumeToken}}), refused)
			withTok := e.dial("a1-with-token", protocol.SubprotocolJSON)
			if w := withTok.hello(protocol.Hello{Token: e.token("a1", token.RoleAgent), ResumeToken: wa.ResumeToken}); !w.Resumed || w.UserID != "a1" {
				t.Fatalf("a1 with its token: %+v", w)
			}

			// A resume token of another key, for alice's session.
			other, err := token.NewSigner(bytes.Repeat([]byte{9}, 32))
			if err != nil {
				t.Fatal(err)
			}
			forged := other.SignResume(resumeSubject(w.SessionID, &user{id: "alice", role: protocol.RoleAgent, tenant: "acme"}), time.Now().Add(time.Hour))
			f := e.dial("forger", protocol.SubprotocolJSON)
			f.waitError(f.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: forged}}), refused)

			// alice goes away for longer than ResumeTTL: she signs in again.
			_ = again.ws.Close()
			if !waitFor(t, waitTimeout, func() bool {
				s := e.b.reg.lookupSession(w.SessionID, clock(), time.Hour)
				if s == nil {
					return false
				}
				s.u.mu.Lock()
				defer s.u.mu.Unlock()
				return s.conns == 0
			}) {
				t.Fatal("alice's session still has a connection")
			}
			skew.Store(int64(e.b.o.ResumeTTL + time.Second))
			late := e.dial("alice-late", protocol.SubprotocolJSON)
			late.waitError(late.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: w2.ResumeToken}}), refused)
		})
	}
}

// TestPasswordSessionRestarted: a password session resumes with its
// resume token alone after its broker restarted (the session cache went
// through an encrypted snapshot, as on a gateway's SIGTERM), as the same
// agent with the hook's tenant and skills, without asking the hook again.
// A resume token signed with another key, and the session once its
// ResumeTTL ran out (the cache's clock), are still refused; so is a token
// session's resume token alone.
func TestPasswordSessionRestarted(t *testing.T) {
	var skew atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	key := bytes.Repeat([]byte{3}, sessionstore.KeySize)
	snap := filepath.Join(t.TempDir(), "sessions.snap")
	store, err := sessionstore.New(sessionstore.Options{Now: clock}, key)
	if err != nil {
		t.Fatal(err)
	}
	h1 := &countHook{release: make(chan struct{})}
	e1 := startEnv(t, Options{Now: clock, Sessions: store, Backends: &Backends{Hook: h1}})
	alice := e1.dial("alice", protocol.SubprotocolJSON)
	w := alice.hello(protocol.Hello{Username: "alice", Password: "secret"})
	if !strings.HasPrefix(w.SessionID, prefixHookSession) {
		t.Fatalf("password session id %q, want the prefix %q", w.SessionID, prefixHookSession)
	}
	alice.online(2)
	tokAgent := e1.dial("a1", protocol.SubprotocolJSON)
	wt := tokAgent.hello(protocol.Hello{Token: e1.token("a1", token.RoleAgent)})
	_ = alice.ws.Close()
	_ = tokAgent.ws.Close()
	detached(t, e1, w.SessionID, time.Now)
	detached(t, e1, wt.SessionID, time.Now)
	e1.b.Close()
	if err := store.SaveSnapshot(snap); err != nil {
		t.Fatal(err)
	}

	restored, err := sessionstore.LoadSnapshot(snap, sessionstore.Options{Now: clock}, key)
	if err != nil {
		t.Fatal(err)
	}
	h2 := &countHook{release: make(chan struct{})}
	e2 := startEnv(t, Options{Now: clock, Sessions: restored, Backends: &Backends{Hook: h2}})
	back := e2.dial("alice-after-restart", protocol.SubprotocolJSON)
	w2 := back.hello(protocol.Hello{ResumeToken: w.ResumeToken})
	if !w2.Resumed || w2.SessionID != w.SessionID || w2.UserID != "alice" || w2.Role != protocol.RoleAgent {
		t.Fatalf("after the restart: %+v, want agent alice's session %s resumed", w2, w.SessionID)
	}
	if p := back.online(2); !slices.Equal(p.Skills, []string{"billing"}) {
		t.Fatalf("skills after the restart %v, want the hook's [billing]", p.Skills)
	}
	if n := h2.calls.Load(); n != 0 {
		t.Fatalf("the hook was asked %d times", n)
	}
	v := e2.dial("visitor", protocol.SubprotocolJSON)
	vt, err := e2.signer.Sign(token.Claims{Subject: "v1", Role: token.RoleVisitor, Tenant: "acme", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	v.hello(protocol.Hello{Token: vt})
	conv := v.open(protocol.Open{Skill: "billing"}).ConversationID
	back.waitState(conv, protocol.StateAssigned) // alice's tenant (acme) and skill

	// Still refused: a token session's resume token alone, a forged one.
	noTok := e2.dial("a1-without-token", protocol.SubprotocolJSON)
	noTok.waitError(noTok.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: wt.ResumeToken}}), protocol.CodeUnauthenticated)
	other, err := token.NewSigner(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	forged := other.SignResume(resumeSubject(w.SessionID, &user{id: "alice", role: protocol.RoleAgent, tenant: "acme"}), time.Now().Add(time.Hour))
	f := e2.dial("forger", protocol.SubprotocolJSON)
	f.waitError(f.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: forged}}), protocol.CodeUnauthenticated)

	// Gone for longer than ResumeTTL, then a third run: the record
	// expired with the session.
	_ = back.ws.Close()
	detached(t, e2, w.SessionID, clock)
	e2.b.Close()
	skew.Store(int64(e2.b.o.ResumeTTL + time.Second))
	e3 := startEnv(t, Options{Now: clock, Sessions: restored, Backends: &Backends{Hook: &countHook{release: make(chan struct{})}}})
	late := e3.dial("alice-late", protocol.SubprotocolJSON)
	late.waitError(late.send(protocol.Envelope{Kind: protocol.KindHello, Hello: protocol.Hello{ResumeToken: w2.ResumeToken}}), protocol.CodeUnauthenticated)
}

// detached waits until session sid of e's broker has no connection (and
// so was cached as disconnected).
func detached(t *testing.T, e *testEnv, sid string, clock func() time.Time) {
	t.Helper()
	if !waitFor(t, waitTimeout, func() bool {
		s := e.b.reg.lookupSession(sid, clock(), time.Hour)
		if s == nil {
			return false
		}
		s.u.mu.Lock()
		defer s.u.mu.Unlock()
		return s.conns == 0
	}) {
		t.Fatalf("session %s still has a connection", sid)
	}
}
