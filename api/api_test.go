package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/api"
	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// API keys of the test gateway.
const (
	keyRW    = "acme-read-write-key-0001"
	keyRO    = "acme-read-only-key-00002"
	keyOther = "other-tenant-key-000003"
)

type gw struct {
	addr   string
	signer *token.Signer
	http   *http.Client
}

// startGateway runs a durable broker (embedded NATS) behind a netpoll
// server on a free loopback port, with the API on its HTTP path.
func startGateway(t *testing.T, durable bool) *gw {
	t.Helper()
	signer, err := token.NewSigner(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	o := broker.Options{Signer: signer, AllowAnonymous: true, Shards: 4}
	if durable {
		node, err := natsnode.Start(natsnode.Options{StoreDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hist, err := histstore.Open(ctx, node.JetStream(), histstore.Options{})
		if err != nil {
			node.Shutdown()
			t.Fatal(err)
		}
		convs, err := broker.OpenKVConvStore(ctx, node.JetStream(), broker.KVConvOptions{})
		if err != nil {
			node.Shutdown()
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = hist.Close()
			node.Shutdown()
		})
		o.History, o.Conversations = hist, convs
	}
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	h := api.New(b, api.Options{Keys: []api.Key{
		{Secret: keyRW, Tenant: "acme", Read: true, Write: true},
		{Secret: keyRO, Tenant: "acme", Read: true},
		{Secret: keyOther, Tenant: "other", Read: true, Write: true},
	}})
	srv, err := netpoll.New(b,
		netpoll.WithAddr("127.0.0.1:0"),
		netpoll.WithEventLoops(2),
		netpoll.WithSubprotocols(protocol.Subprotocols()...),
		netpoll.WithHTTPHandler(h),
	)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Stop(ctx)
		b.Close()
	})
	return &gw{addr: srv.Addr(), signer: signer, http: &http.Client{Timeout: 15 * time.Second}}
}

// call makes an API request and decodes the JSON answer.
func (g *gw) call(t *testing.T, key, method, path, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+g.addr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s %s: content type %q, body %s", method, path, ct, raw)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: %v in %s", method, path, err, raw)
	}
	return resp.StatusCode, out
}

// wsClient is a gorilla/websocket client on the JSON subprotocol.
type wsClient struct {
	t     *testing.T
	c     *websocket.Conn
	id    int
	stash []map[string]any
}

func (g *gw) dial(t *testing.T) *wsClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.json"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+g.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &wsClient{t: t, c: c}
}

func (w *wsClient) send(body map[string]any) {
	w.t.Helper()
	w.id++
	body["id"] = strconv.Itoa(w.id)
	if err := w.c.WriteJSON(body); err != nil {
		w.t.Fatal(err)
	}
}

// next returns the next envelope with body key (others are kept).
func (w *wsClient) next(key string) map[string]any {
	w.t.Helper()
	for i, env := range w.stash {
		if b, ok := env[key].(map[string]any); ok {
			w.stash = append(w.stash[:i], w.stash[i+1:]...)
			return b
		}
	}
	_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var env map[string]any
		if err := w.c.ReadJSON(&env); err != nil {
			w.t.Fatalf("waiting for %q: %v", key, err)
		}
		if e, ok := env["error"]; ok && key != "error" {
			w.t.Fatalf("waiting for %q: server error %v", key, e)
		}
		if b, ok := env[key].(map[string]any); ok {
			return b
		}
		w.stash = append(w.stash, env)
	}
}

// conversationIn waits for a Conversation event with state st.
func (w *wsClient) conversationIn(st string) map[string]any {
	w.t.Helper()
	for {
		c := w.next("conversation")
		if c["state"] == st {
			return c
		}
	}
}

func (g *gw) agent(t *testing.T, id, tenant string, capacity int) *wsClient {
	t.Helper()
	now := time.Now()
	tok, err := g.signer.Sign(token.Claims{Subject: id, Role: "agent", Tenant: tenant, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	a := g.dial(t)
	a.send(map[string]any{"hello": map[string]any{"token": tok}})
	a.next("welcome")
	a.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": capacity}})
	a.next("presence")
	return a
}

// visitor opens a conversation in tenant and returns the client and the
// conversation id.
func (g *gw) visitor(t *testing.T, tenant, text string) (*wsClient, string) {
	t.Helper()
	v := g.dial(t)
	v.send(map[string]any{"hello": map[string]any{"tenant": tenant}})
	v.next("welcome")
	v.send(map[string]any{"open": map[string]any{"text": text}})
	c := v.next("conversation")
	return v, c["conversationId"].(string)
}

func errCode(body map[string]any) any {
	e, _ := body["error"].(map[string]any)
	if e == nil {
		return nil
	}
	if m, _ := e["message"].(string); m == "" {
		return "no message"
	}
	return e["code"]
}

func TestAPI(t *testing.T) {
	for _, durable := range []bool{true, false} {
		name := "memory"
		if durable {
			name = "durable"
		}
		t.Run(name, func(t *testing.T) { testAPI(t, durable) })
	}
}

func testAPI(t *testing.T, durable bool) {
	g := startGateway(t, durable)
	visitor, conv := g.visitor(t, "acme", "hello, I need help")
	_, otherConv := g.visitor(t, "other", "other tenant")
	a1 := g.agent(t, "a1", "acme", 3)
	a1.conversationIn("STATE_ASSIGNED")
	visitor.conversationIn("STATE_ASSIGNED")
	a1.next("deliver") // the opening message
	base := "/api/v1/conversations/" + conv

	// Success table, in order: each step depends on the previous ones.
	type step struct {
		name, key, method, path, body string
		status                        int
		check                         func(t *testing.T, body map[string]any)
	}
	field := func(k string, want any) func(*testing.T, map[string]any) {
		return func(t *testing.T, b map[string]any) {
			t.Helper()
			if b[k] != want {
				t.Errorf("%s = %v, want %v (body %v)", k, b[k], want, b)
			}
		}
	}
	var botSeq float64
	success := []step{
		{"list", keyRO, "GET", "/api/v1/conversations", "", 200, func(t *testing.T, b map[string]any) {
			list := b["conversations"].([]any)
			if len(list) != 1 || list[0].(map[string]any)["id"] != conv {
				t.Errorf("list %v, want only %s (the other tenant's is hidden)", list, conv)
			}
		}},
		{"list by state", keyRO, "GET", "/api/v1/conversations?state=queued", "", 200, func(t *testing.T, b map[string]any) {
			if l := b["conversations"].([]any); len(l) != 0 {
				t.Errorf("queued: %v", l)
			}
		}},
		{"get", keyRO, "GET", base, "", 200, func(t *testing.T, b map[string]any) {
			field("state", "assigned")(t, b)
			field("agent_id", "a1")(t, b)
			field("tenant", "acme")(t, b)
			field("last_seq", 1.0)(t, b)
		}},
		// The opening message was written while no agent of acme was
		// online: a message left.
		{"list left messages", keyRO, "GET", "/api/v1/conversations?left_message=true", "", 200, func(t *testing.T, b map[string]any) {
			list := b["conversations"].([]any)
			if len(list) != 1 {
				t.Fatalf("left messages: %v, want %s only", list, conv)
			}
			c := list[0].(map[string]any)
			field("id", conv)(t, c)
			field("left_messages", 1.0)(t, c)
			if ms, _ := c["last_left_at_ms"].(float64); ms <= 0 {
				t.Errorf("last_left_at_ms %v", c["last_left_at_ms"])
			}
		}},
		{"list queued left messages", keyRO, "GET", "/api/v1/conversations?state=queued&left_message=true", "", 200, func(t *testing.T, b map[string]any) {
			if l := b["conversations"].([]any); len(l) != 0 {
				t.Errorf("queued with left messages: %v (the agent took it)", l)
			}
		}},
		{"post bot", keyRW, "POST", base + "/messages", `{"text":"from the bot","sender":"bot","client_msg_id":"b1"}`, 201, func(t *testing.T, b map[string]any) {
			field("seq", 2.0)(t, b)
			field("duplicate", false)(t, b)
			botSeq = b["seq"].(float64)
		}},
		{"post bot again", keyRW, "POST", base + "/messages", `{"text":"from the bot","sender":"bot","client_msg_id":"b1"}`, 200, func(t *testing.T, b map[string]any) {
			field("seq", botSeq)(t, b)
			field("duplicate", true)(t, b)
		}},
		{"post system", keyRW, "POST", base + "/messages", `{"text":"agent joined"}`, 201, field("seq", 3.0)},
		{"history", keyRO, "GET", base + "/messages", "", 200, func(t *testing.T, b map[string]any) {
			ms := b["messages"].([]any)
			if len(ms) != 3 {
				t.Fatalf("history %v", ms)
			}
			want := []struct{ role, text string }{{"visitor", "hello, I need help"}, {"bot", "from the bot"}, {"system", "agent joined"}}
			for i, w := range want {
				m := ms[i].(map[string]any)
				if m["seq"] != float64(i+1) || m["sender_role"] != w.role || m["text"] != w.text {
					t.Errorf("message %d: %v, want %v", i, m, w)
				}
			}
			if _, ok := b["next_after"]; ok {
				t.Errorf("next_after on the last page: %v", b)
			}
		}},
		{"history page", keyRO, "GET", base + "/messages?after=1&limit=1", "", 200, func(t *testing.T, b map[string]any) {
			ms := b["messages"].([]any)
			if len(ms) != 1 || ms[0].(map[string]any)["seq"] != 2.0 {
				t.Errorf("page %v", ms)
			}
			field("next_after", 2.0)(t, b)
			field("last_seq", 3.0)(t, b)
		}},
		{"history last page", keyRO, "GET", base + "/messages?after=2&limit=500", "", 200, func(t *testing.T, b map[string]any) {
			if ms := b["messages"].([]any); len(ms) != 1 || ms[0].(map[string]any)["seq"] != 3.0 {
				t.Errorf("page %v", ms)
			}
		}},
		{"agents", keyRO, "GET", "/api/v1/agents", "", 200, func(t *testing.T, b map[string]any) {
			as := b["agents"].([]any)
			if len(as) != 1 {
				t.Fatalf("agents %v", as)
			}
			a := as[0].(map[string]any)
			if a["id"] != "a1" || a["status"] != "online" || a["capacity"] != 3.0 || a["load"] != 1.0 {
				t.Errorf("agent %v", a)
			}
		}},
		{"agents of another tenant", keyOther, "GET", "/api/v1/agents", "", 200, func(t *testing.T, b map[string]any) {
			if as := b["agents"].([]any); len(as) != 0 {
				t.Errorf("agents %v", as)
			}
		}},
	}
	run := func(steps []step) {
		for _, s := range steps {
			status, body := g.call(t, s.key, s.method, s.path, s.body)
			if status != s.status {
				t.Fatalf("%s: %s %s: status %d, want %d: %v", s.name, s.method, s.path, status, s.status, body)
			}
			if s.check != nil {
				s.check(t, body)
			}
		}
	}
	run(success)

	// Posted messages are delivered live to the participants, once.
	for _, c := range []*wsClient{visitor, a1} {
		d := c.next("deliver")
		if d["text"] != "from the bot" || d["senderRole"] != "ROLE_BOT" || d["senderId"] != "bot" {
			t.Errorf("first delivery %v", d)
		}
		if d = c.next("deliver"); d["text"] != "agent joined" || d["senderRole"] != "ROLE_SYSTEM" {
			t.Errorf("second delivery %v (a duplicate?)", d)
		}
	}

	// Transfer to another agent, then to a skill nobody has, then close.
	a2 := g.agent(t, "a2", "acme", 2)
	run([]step{
		{"transfer to agent", keyRW, "POST", base + "/transfer", `{"to_agent_id":"a2","note":"escalation"}`, 200, func(t *testing.T, b map[string]any) {
			field("state", "transferred")(t, b)
			field("agent_id", "a2")(t, b)
		}},
	})
	if c := a2.conversationIn("STATE_TRANSFERRED"); c["reason"] != "escalation" {
		t.Errorf("a2 got %v", c)
	}
	for i := 1; i <= 3; i++ { // the whole history
		if d := a2.next("deliver"); d["seq"] != strconv.Itoa(i) && d["seq"] != float64(i) {
			t.Errorf("a2 history %d: %v", i, d)
		}
	}
	visitor.conversationIn("STATE_TRANSFERRED")
	run([]step{
		{"transfer to skill", keyRW, "POST", base + "/transfer", `{"to_skill":"billing"}`, 200, func(t *testing.T, b map[string]any) {
			field("state", "queued")(t, b)
			field("skill", "billing")(t, b)
		}},
		{"queued list", keyRO, "GET", "/api/v1/conversations?state=queued", "", 200, func(t *testing.T, b map[string]any) {
			if l := b["conversations"].([]any); len(l) != 1 {
				t.Errorf("queued: %v", l)
			}
		}},
		{"transfer queued to agent", keyRW, "POST", base + "/transfer", `{"to_agent_id":"a1"}`, 200, func(t *testing.T, b map[string]any) {
			field("state", "assigned")(t, b)
			field("agent_id", "a1")(t, b)
		}},
		{"close", keyRW, "POST", base + "/close", `{"reason":"resolved"}`, 200, func(t *testing.T, b map[string]any) {
			field("state", "closed")(t, b)
			field("reason", "resolved")(t, b)
		}},
		{"close other tenant's with its key", keyOther, "POST", "/api/v1/conversations/" + otherConv + "/close", "", 200, field("state", "closed")},
	})
	if c := visitor.conversationIn("STATE_CLOSED"); c["reason"] != "resolved" {
		t.Errorf("visitor got %v", c)
	}

	// Failure table.
	long := strings.Repeat("x", 70000)
	failures := []struct {
		name, key, method, path, body string
		status                        int
		code                          any
	}{
		{"no key", "", "GET", "/api/v1/conversations", "", 401, 2000.0},
		{"bad key", "not-a-key-at-all-123", "GET", base, "", 401, 2000.0},
		{"another tenant's conversation", keyOther, "GET", base, "", 403, 2003.0},
		{"another tenant's history", keyOther, "GET", base + "/messages", "", 403, 2003.0},
		{"another tenant's post", keyOther, "POST", base + "/messages", `{"text":"x"}`, 403, 2003.0},
		{"read-only key posts", keyRO, "POST", base + "/messages", `{"text":"x"}`, 403, 2003.0},
		{"unknown conversation", keyRO, "GET", "/api/v1/conversations/c_doesnotexist", "", 404, 3000.0},
		{"unknown conversation history", keyRO, "GET", "/api/v1/conversations/c_doesnotexist/messages", "", 404, 3000.0},
		{"post to unknown", keyRW, "POST", "/api/v1/conversations/c_doesnotexist/messages", `{"text":"x"}`, 404, 3000.0},
		{"post to closed", keyRW, "POST", base + "/messages", `{"text":"too late"}`, 409, 3001.0},
		{"close closed", keyRW, "POST", base + "/close", `{}`, 409, 3001.0},
		{"transfer closed", keyRW, "POST", base + "/transfer", `{"to_skill":"x"}`, 409, 3001.0},
		{"bad JSON", keyRW, "POST", base + "/messages", `{"text":`, 400, 1000.0},
		{"unknown field", keyRW, "POST", base + "/messages", `{"txt":"x"}`, 400, 1000.0},
		{"two objects", keyRW, "POST", base + "/messages", `{"text":"x"}{}`, 400, 1000.0},
		{"bad sender", keyRW, "POST", base + "/messages", `{"text":"x","sender":"agent"}`, 400, 1000.0},
		{"empty text", keyRW, "POST", base + "/messages", `{"text":""}`, 400, 1002.0},
		{"text too long", keyRW, "POST", base + "/messages", `{"text":"` + long + `"}`, 400, 1003.0},
		{"transfer with both targets", keyRW, "POST", base + "/transfer", `{"to_skill":"x","to_agent_id":"a1"}`, 400, 1002.0},
		{"limit 0", keyRO, "GET", base + "/messages?limit=0", "", 400, 1000.0},
		{"limit 501", keyRO, "GET", base + "/messages?limit=501", "", 400, 1000.0},
		{"limit word", keyRO, "GET", "/api/v1/conversations?limit=ten", "", 400, 1000.0},
		{"negative after", keyRO, "GET", base + "/messages?after=-1", "", 400, 1000.0},
		{"bad state", keyRO, "GET", "/api/v1/conversations?state=open", "", 400, 1000.0},
		{"bad left_message", keyRO, "GET", "/api/v1/conversations?left_message=yes", "", 400, 1000.0},
		{"unknown path", keyRO, "GET", "/api/v1/nothing", "", 404, "not_found"},
		{"wrong method", keyRW, "DELETE", base, "", 405, "method_not_allowed"},
	}
	for _, f := range failures {
		status, body := g.call(t, f.key, f.method, f.path, f.body)
		if status != f.status || errCode(body) != f.code {
			t.Errorf("%s: %s %s: status %d code %v, want %d %v (%v)", f.name, f.method, f.path, status, errCode(body), f.status, f.code, body)
		}
	}

	// Closed: still listed (this node remembers it for ResumeTTL) and its
	// history readable; the failures stored nothing.
	status, body := g.call(t, keyRO, "GET", base+"/messages", "")
	if status != 200 || len(body["messages"].([]any)) != 3 {
		t.Errorf("history after the failures: %d %v", status, body)
	}
}

// TestListPaging pages through a tenant's conversations with cursors.
func TestListPaging(t *testing.T) {
	g := startGateway(t, false)
	want := map[string]bool{}
	for range 5 {
		_, id := g.visitor(t, "acme", "hi")
		want[id] = true
	}
	g.visitor(t, "other", "hi")
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		status, body := g.call(t, keyRO, "GET", "/api/v1/conversations?limit=2&cursor="+cursor, "")
		if status != 200 {
			t.Fatalf("status %d %v", status, body)
		}
		for _, c := range body["conversations"].([]any) {
			id := c.(map[string]any)["id"].(string)
			if seen[id] || !want[id] {
				t.Errorf("conversation %s repeated or foreign", id)
			}
			seen[id] = true
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != len(want) {
		t.Errorf("saw %d conversations, want %d", len(seen), len(want))
	}
}
