package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/protocol"
)

// TestSessionCachedWhenClosed: the welcome does not write the session
// cache (the session is in memory); the record is written when the
// session loses its last connection, with the conversations of that
// moment, including for connections the server closes itself when it
// stops (as `unigate serve` does before it saves the snapshot). A resume
// of a session that is still connected is answered from memory.
func TestSessionCachedWhenClosed(t *testing.T) {
	store, err := sessionstore.New(sessionstore.Options{}, bytes.Repeat([]byte{3}, sessionstore.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, Options{AllowAnonymous: true, Sessions: store})
	record := func(sid string) *sessionRecord {
		t.Helper()
		v, ok := store.Get(nil, sid)
		if !ok {
			return nil
		}
		var r sessionRecord
		if err := json.Unmarshal(v, &r); err != nil {
			t.Fatalf("record of %s: %v", sid, err)
		}
		return &r
	}

	// A client that leaves: cached on its close.
	gone := e.dial("gone", protocol.SubprotocolJSON)
	wg := gone.hello(protocol.Hello{})
	convGone := gone.open(protocol.Open{}).ConversationID
	if r := record(wg.SessionID); r != nil {
		t.Fatalf("connected session cached at the welcome: %+v", r)
	}
	_ = gone.ws.Close()
	detached(t, e, wg.SessionID, time.Now)
	if !waitFor(t, 5*time.Second, func() bool { return record(wg.SessionID) != nil }) {
		t.Fatal("session not cached when its connection closed")
	}
	if r := record(wg.SessionID); r.UserID != wg.UserID || r.Role != protocol.RoleVisitor || !slices.Equal(r.Convs, []string{convGone}) {
		t.Fatalf("record %+v, want visitor %s with [%s]", r, wg.UserID, convGone)
	}

	// A client still connected when the server stops.
	stay := e.dial("stay", protocol.SubprotocolJSON)
	ws := stay.hello(protocol.Hello{})
	convStay := stay.open(protocol.Open{}).ConversationID
	again := e.dial("again", protocol.SubprotocolJSON)
	if wa := again.hello(protocol.Hello{ResumeToken: ws.ResumeToken}); !wa.Resumed || wa.SessionID != ws.SessionID {
		t.Fatalf("resume of a connected session: %+v", wa)
	}
	if r := record(ws.SessionID); r != nil {
		t.Fatalf("connected session cached: %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stay.waitClosed(1001)
	if !waitFor(t, 5*time.Second, func() bool { return record(ws.SessionID) != nil }) {
		t.Fatal("session of a connection the stop closed not cached")
	}
	if r := record(ws.SessionID); r.UserID != ws.UserID || !slices.Equal(r.Convs, []string{convStay}) {
		t.Fatalf("record %+v, want visitor %s with [%s]", r, ws.UserID, convStay)
	}
}
