package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
	"github.com/unigate/unigate/backends/supervisor"
	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/internal/config"
)

// testHookEnv makes this test binary serve a hook plugin (see TestMain)
// whose state lives in the directory the variable names:
//
//   - events.jsonl: every event the hook took, one JSON object a line, in
//     the order taken (the integrator's system);
//   - auth.log: one line per Authenticate call, "tenant username";
//   - mode: "ok" (default) takes events, "fail" refuses them;
//   - pid.N: one file per plugin process started, so that a test can end
//     the processes a killed gateway left behind;
//   - args.N, env.N: the command-line arguments (after the program) and the
//     environment of process N, one a line.
const testHookEnv = "UGTEST_HOOK_DIR" // not UNIGATE_*: `unigate serve` refuses unknown variables of its own prefix

// fileHook is that plugin.
type fileHook struct {
	dir string
	mu  sync.Mutex
}

// hookUsers are the accounts of fileHook: tenant acme.
var hookUsers = map[string]struct {
	password string
	id       backends.Identity
}{
	"vera":  {"pw-vera", backends.Identity{ID: "vera", Tenant: "acme", Roles: []string{"visitor"}, DisplayName: "Vera"}},
	"alice": {"pw-alice", backends.Identity{ID: "alice", Tenant: "acme", Roles: []string{"agent"}, Skills: []string{"billing"}, DisplayName: "Alice"}},
	"bob":   {"pw-bob", backends.Identity{ID: "bob", Tenant: "acme", Roles: []string{"agent"}, Skills: []string{"sales"}, DisplayName: "Bob"}},
}

func serveTestHook(dir string) {
	pid := strconv.Itoa(os.Getpid())
	_ = os.WriteFile(filepath.Join(dir, "args."+pid), []byte(strings.Join(os.Args[1:], "\n")), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "env."+pid), []byte(strings.Join(os.Environ(), "\n")), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "pid."+pid), nil, 0o600)
	sdk.ServeHook(&fileHook{dir: dir})
}

func (h *fileHook) appendLine(name string, line []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(h.dir, name), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(line, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// hookLine is one line of events.jsonl.
type hookLine struct {
	ID      string            `json:"id"`
	Type    string            `json:"type"`
	Tenant  string            `json:"tenant"`
	Conv    string            `json:"conv"`
	Visitor string            `json:"visitor"`
	Agent   string            `json:"agent"`
	Msg     string            `json:"msg"`
	Text    string            `json:"text"`
	Attrs   map[string]string `json:"attrs"`
}

func (h *fileHook) Event(_ context.Context, ev backends.Event) error {
	if mode, _ := os.ReadFile(filepath.Join(h.dir, "mode")); strings.TrimSpace(string(mode)) == "fail" {
		return errors.New("the CRM is down")
	}
	line, _ := json.Marshal(hookLine{
		ID: ev.ID, Type: ev.Type.String(), Tenant: ev.Tenant, Conv: ev.ConversationID, Visitor: ev.VisitorID,
		Agent: ev.AgentID, Msg: ev.MessageID, Text: ev.Text, Attrs: ev.Attributes,
	})
	return h.appendLine("events.jsonl", line)
}

func (h *fileHook) Authenticate(_ context.Context, c backends.Credentials) (backends.Identity, error) {
	if err := h.appendLine("auth.log", []byte(c.Tenant+" "+c.Username)); err != nil {
		return backends.Identity{}, err
	}
	u, ok := hookUsers[c.Username]
	if !ok || c.Password != u.password || c.Tenant != u.id.Tenant {
		return backends.Identity{Reason: "invalid credentials"}, nil
	}
	id := u.id
	id.OK = true
	return id, nil
}

// readHookLines returns the events the hook took so far.
func readHookLines(t *testing.T, dir string) []hookLine {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []hookLine
	for line := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var l hookLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("events.jsonl: %q: %v", line, err)
		}
		out = append(out, l)
	}
	return out
}

// byConversation drops repeated IDs (at least once: the hook may see one
// twice) and groups the events by conversation, in the order taken; a
// repeated ID must repeat the same event.
func byConversation(t *testing.T, lines []hookLine) map[string][]hookLine {
	t.Helper()
	first := map[string]hookLine{}
	out := map[string][]hookLine{}
	for _, l := range lines {
		if prev, dup := first[l.ID]; dup {
			if fmt.Sprint(prev) != fmt.Sprint(l) {
				t.Fatalf("event %s delivered twice with different contents:\n%+v\n%+v", l.ID, prev, l)
			}
			continue
		}
		first[l.ID] = l
		if l.Conv != "" {
			out[l.Conv] = append(out[l.Conv], l)
		}
	}
	return out
}

// checkLifecycle fails unless a conversation's events are, in this order:
// opened; assigned and the messages 1..msgs by seq (the opening message's
// append may finish before or after the assignment; every later message
// was sent after it); closed when closed is set. Nothing else, nothing
// twice.
func checkLifecycle(t *testing.T, conv string, got []hookLine, msgs int, closed bool) {
	t.Helper()
	fail := func(why string) {
		t.Helper()
		t.Fatalf("events of %s: %v: %s", conv, typesOf(got), why)
	}
	if len(got) != 2+msgs+btoi(closed) {
		fail(fmt.Sprintf("want %d events", 2+msgs+btoi(closed)))
	}
	if got[0].Type != "conversation_opened" {
		fail("opened is not first")
	}
	assigned, seq := -1, 0
	for i, l := range got[1 : len(got)-btoi(closed)] {
		switch l.Type {
		case "conversation_assigned":
			if assigned >= 0 {
				fail("assigned twice")
			}
			assigned = i
		case "message_stored":
			seq++
			if l.Msg != strconv.Itoa(seq) {
				fail("message " + l.Msg + " out of order")
			}
			if seq >= 2 && assigned < 0 {
				fail("a message sent after the assignment came before it")
			}
		default:
			fail("unexpected " + l.Type)
		}
	}
	if assigned < 0 || seq != msgs {
		fail("assigned or messages missing")
	}
	if closed && got[len(got)-1].Type != "conversation_closed" {
		fail("closed is not last")
	}
}

// typesOf lists the types of a conversation's events.
func typesOf(ls []hookLine) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Type
	}
	return out
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// passwordHello signs in with a username and password.
func passwordHello(j *jsonClient, user, password string) {
	j.send(map[string]any{"hello": map[string]any{"tenant": "acme", "username": user, "password": password}})
}

// TestHookPluginThroughGateway runs the gateway with a real hook plugin
// process: it refuses a visitor's wrong password (error 2001, close 1008),
// signs in a visitor and two agents with the identity, tenant, roles and
// skills it returns (the agent whose skills from the hook match gets the
// conversation, the other does not), answers a reconnect from the
// gateway's cache, and receives the whole lifecycle of the conversation
// in order: opened, assigned, message_stored, closed.
func TestHookPluginThroughGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a plugin process; skipped with -short")
	}
	dir := t.TempDir()
	t.Setenv(testHookEnv, dir) // inherited by the plugin process
	g := startGateway(t, func(c *config.Config) {
		c.Backends.HookPlugin = os.Args[0]
		c.Backends.HookMessages = true
		c.Backends.CallTimeout = 2 * time.Second
	})
	hook := g.backends.closers[0].(*supervisor.Hook)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := hook.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	addr := g.srv.Addr()

	// A wrong password: 2001 with the hook's reason, then close 1008.
	bad := dialJSON(t, addr)
	passwordHello(bad, "vera", "guess")
	e := bad.next("error")
	if e["code"] != float64(2001) || !strings.Contains(e["message"].(string), "invalid credentials") {
		t.Fatalf("wrong password answered %v, want 2001 with the hook's reason", e)
	}
	_ = bad.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := bad.c.ReadMessage(); !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("after the refusal: %v, want close 1008", err)
	}

	// Agents from the hook: bob serves sales, alice billing.
	agents := map[string]*jsonClient{}
	for _, name := range []string{"bob", "alice"} {
		a := dialJSON(t, addr)
		passwordHello(a, name, "pw-"+name)
		if w := a.next("welcome"); w["role"] != "ROLE_AGENT" || w["userId"] != name {
			t.Fatalf("%s welcome %v, want agent %s", name, w, name)
		}
		a.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 5}})
		p := a.next("presence")
		skills, _ := p["skills"].([]any)
		if len(skills) != 1 || skills[0] != hookUsers[name].id.Skills[0] {
			t.Fatalf("%s presence %v, want the hook's skills %v", name, p, hookUsers[name].id.Skills)
		}
		agents[name] = a
	}

	v := dialJSON(t, addr)
	passwordHello(v, "vera", "pw-vera")
	if w := v.next("welcome"); w["role"] != "ROLE_VISITOR" || w["userId"] != "vera" {
		t.Fatalf("vera welcome %v", w)
	}
	v.send(map[string]any{"open": map[string]any{"skill": "billing/refund", "text": "I want a refund"}})
	conv := v.next("conversation")["conversationId"].(string)
	var assigned map[string]any
	for assigned == nil {
		if c := v.next("conversation"); c["state"] == "STATE_ASSIGNED" {
			assigned = c
		}
	}
	if assigned["agentId"] != "alice" {
		t.Fatalf("assigned to %v, want alice (billing, from the hook; bob serves sales)", assigned["agentId"])
	}
	alice := agents["alice"]
	for {
		if c := alice.next("conversation"); c["conversationId"] == conv && c["state"] == "STATE_ASSIGNED" {
			break
		}
	}
	v.send(map[string]any{"send": map[string]any{"conversationId": conv, "clientMsgId": "v-2", "text": "order 42"}})
	v.next("ack")
	for {
		if d := alice.next("deliver"); d["text"] == "order 42" {
			break
		}
	}
	alice.send(map[string]any{"close": map[string]any{"conversationId": conv, "reason": "refunded"}})
	for {
		if c := v.next("conversation"); c["state"] == "STATE_CLOSED" {
			break
		}
	}

	// The same credentials again: answered from the gateway's cache.
	again := dialJSON(t, addr)
	passwordHello(again, "vera", "pw-vera")
	again.next("welcome")
	auth, err := os.ReadFile(filepath.Join(dir, "auth.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(auth), "acme vera\n"); n != 2 {
		t.Fatalf("the hook authenticated vera %d times, want 2 (the wrong password, the first sign-in):\n%s", n, auth)
	}

	var got []hookLine
	waitUntil(t, 20*time.Second, "the conversation's events", func() bool {
		got = byConversation(t, readHookLines(t, dir))[conv]
		return len(got) >= 5
	})
	checkLifecycle(t, conv, got, 2, true)
	texts := map[string]string{}
	for _, l := range got {
		if l.Tenant != "acme" || l.Visitor != "vera" {
			t.Fatalf("event %+v: want tenant acme and visitor vera, from the hook's identities", l)
		}
		switch l.Type {
		case "conversation_assigned":
			if l.Agent != "alice" {
				t.Fatalf("assigned event names %q, want alice", l.Agent)
			}
		case "message_stored":
			texts[l.Msg] = l.Text
		case "conversation_closed":
			if l.Attrs["reason"] != "refunded" {
				t.Fatalf("closed event %+v, want reason refunded", l)
			}
		}
	}
	if texts["1"] != "I want a refund" || texts["2"] != "order 42" {
		t.Fatalf("message texts in the events: %v", texts)
	}
	connected := false
	for _, l := range readHookLines(t, dir) {
		connected = connected || l.Type == "visitor_connected" && l.Visitor == "vera" && l.Tenant == "acme"
	}
	if !connected {
		t.Fatal("no visitor_connected event for vera")
	}
}

var adminRE = regexp.MustCompile(`admin listening.* addr=(\S+)`)

// killPlugins ends the hook processes a killed gateway left behind: those
// of its pid files that are still plugins of dir. A plugin that exited
// leaves a stale pid, which the system may have given to an unrelated
// process since: only a process whose environment names dir
// (UGTEST_HOOK_DIR) is signalled.
func killPlugins(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if pid, ok := strings.CutPrefix(e.Name(), "pid."); ok {
			if n, err := strconv.Atoi(pid); err == nil && isHookPlugin(n, dir) {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// isHookPlugin reports whether process pid is a hook plugin of dir (its
// environment says so). False when it is gone or not ours to read.
func isHookPlugin(pid int, dir string) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	want := testHookEnv + "=" + dir
	for kv := range strings.SplitSeq(string(env), "\x00") {
		if kv == want {
			return true
		}
	}
	return false
}

// TestHookEventsSurviveKill9 runs `unigate serve` with the hook plugin
// refusing every event, drives conversations, SIGKILLs the gateway once
// the events are stored, and restarts it with the hook taking events:
// every event of before the crash is delivered (IDs unique after
// dropping repeats), in order per conversation.
func TestHookEventsSurviveKill9(t *testing.T) {
	bin := buildBinary(t)
	data, hookDir := t.TempDir(), t.TempDir()
	t.Cleanup(func() { killPlugins(t, hookDir) })
	if err := os.WriteFile(filepath.Join(hookDir, "mode"), []byte("fail"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(testHookEnv, hookDir)
	t.Setenv("UNIGATE_BACKENDS_HOOK_PLUGIN", os.Args[0])
	t.Setenv("UNIGATE_BACKENDS_HOOK_MESSAGES", "true")
	t.Setenv("UNIGATE_BACKENDS_CALL_TIMEOUT", "1s")
	n := startNode(t, bin, data, "-admin-listen", "127.0.0.1:0")
	var admin string
	waitUntil(t, 10*time.Second, "the admin listener", func() bool {
		if m := adminRE.FindStringSubmatch(n.logs.String()); m != nil {
			admin = m[1]
		}
		return admin != ""
	})
	tok, err := exec.Command(bin, "token", "agent", "-id", "a1", "-data-dir", data).Output()
	if err != nil {
		t.Fatal(err)
	}

	agent := dialJSON(t, n.addr)
	agent.send(map[string]any{"hello": map[string]any{"token": strings.TrimSpace(string(tok))}})
	agent.next("welcome")
	agent.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 10}})
	agent.next("presence")
	const convs = 3
	var ids []string
	for i := range convs {
		v := dialJSON(t, n.addr)
		v.send(map[string]any{"hello": map[string]any{}})
		v.next("welcome")
		v.send(map[string]any{"open": map[string]any{"text": fmt.Sprintf("hello %d", i)}})
		id := v.next("conversation")["conversationId"].(string)
		for {
			if c := v.next("conversation"); c["state"] == "STATE_ASSIGNED" {
				break
			}
		}
		for m := range 2 {
			v.send(map[string]any{"send": map[string]any{"conversationId": id, "clientMsgId": fmt.Sprint("m", m), "text": fmt.Sprintf("message %d of %d", m, i)}})
			v.next("ack")
		}
		if i == 0 {
			agent.send(map[string]any{"close": map[string]any{"conversationId": id, "reason": "resolved"}})
			for {
				if c := v.next("conversation"); c["state"] == "STATE_CLOSED" {
					break
				}
			}
		}
		ids = append(ids, id)
	}
	// Per visitor: connected; per conversation: opened, assigned, three
	// messages; one closed.
	const stored = convs*(1+1+1+3) + 1
	waitUntil(t, 20*time.Second, "the events to be stored", func() bool {
		return metricOf(t, admin, "unigate_broker_hook_events_stored_total") >= stored
	})
	if v := metricOf(t, admin, "unigate_broker_hook_events_delivered_total"); v != 0 {
		t.Fatalf("%v events delivered while the hook refuses them", v)
	}
	waitUntil(t, 20*time.Second, "a refused delivery", func() bool {
		return metricOf(t, admin, "unigate_broker_hook_events_retried_total") > 0
	})

	n.kill9()
	killPlugins(t, hookDir)
	if len(readHookLines(t, hookDir)) != 0 {
		t.Fatal("the refusing hook recorded events")
	}
	if err := os.WriteFile(filepath.Join(hookDir, "mode"), []byte("ok"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	startNode(t, bin, data)

	var per map[string][]hookLine
	waitUntil(t, 90*time.Second, "every event after the restart", func() bool {
		per = byConversation(t, readHookLines(t, hookDir))
		for i, id := range ids {
			if len(per[id]) < 5+btoi(i == 0) {
				return false
			}
		}
		return true
	})
	t.Logf("all events delivered %v after the restart", time.Since(start).Round(time.Millisecond))
	for i, id := range ids {
		checkLifecycle(t, id, per[id], 3, i == 0)
	}
	lines := readHookLines(t, hookDir)
	seen := map[string]bool{}
	connected := 0
	for _, l := range lines {
		if !seen[l.ID] && l.Type == "visitor_connected" {
			connected++
		}
		seen[l.ID] = true
	}
	if connected != convs {
		t.Fatalf("%d visitor_connected events, want %d", connected, convs)
	}
	t.Logf("%d deliveries of %d distinct events", len(lines), len(seen))
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestHookPasswordSessionRestart: `unigate serve` with the hook plugin
// process. Agent alice signs in with her password; the gateway stops with
// SIGTERM (its session cache goes to the encrypted snapshot) and starts
// again; her resume token alone resumes the same session, as alice with
// the hook's tenant and skills, and the hook is not asked again (its
// auth.log). Then the same across two nodes of a cluster (an external NATS
// server, like TestClusterExternalNATS): signed in on one node, resumed on
// the other with the resume token alone.
func TestHookPasswordSessionRestart(t *testing.T) {
	bin := buildBinary(t)
	hookDir := t.TempDir()
	t.Cleanup(func() { killPlugins(t, hookDir) })
	t.Setenv(testHookEnv, hookDir)
	t.Setenv("UNIGATE_BACKENDS_HOOK_PLUGIN", os.Args[0])
	authCalls := func() int {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(hookDir, "auth.log"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return strings.Count(string(b), "acme alice\n")
	}
	// signIn signs alice in, again while the plugin is starting (the
	// hook is fail-closed: "authentication backend unavailable").
	signIn := func(t *testing.T, addr string) map[string]any {
		t.Helper()
		var w map[string]any
		waitUntil(t, 30*time.Second, "alice's sign-in", func() bool {
			a := dialJSON(t, addr)
			defer a.c.Close()
			passwordHello(a, "alice", "pw-alice")
			w = nextOf(t, a)
			return w["welcome"] != nil
		})
		w = w["welcome"].(map[string]any)
		if w["userId"] != "alice" || w["role"] != "ROLE_AGENT" {
			t.Fatalf("sign-in welcome %v", w)
		}
		return w
	}
	resume := func(t *testing.T, addr string, w map[string]any) {
		t.Helper()
		a := dialJSON(t, addr)
		a.send(map[string]any{"hello": map[string]any{"resumeToken": w["resumeToken"]}})
		w2 := a.next("welcome")
		if w2["resumed"] != true || w2["sessionId"] != w["sessionId"] || w2["userId"] != "alice" || w2["role"] != "ROLE_AGENT" {
			t.Fatalf("resume with the token alone: %v, want alice's session %v", w2, w["sessionId"])
		}
		a.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 2}})
		p := a.next("presence")
		if skills, _ := p["skills"].([]any); len(skills) != 1 || skills[0] != "billing" {
			t.Fatalf("presence after the resume %v, want the hook's skills [billing]", p)
		}
	}

	t.Run("Restart", func(t *testing.T) {
		data := t.TempDir()
		n := startNode(t, bin, data)
		w := signIn(t, n.addr)
		if c := authCalls(); c != 1 {
			t.Fatalf("auth.log: %d sign-ins of alice, want 1", c)
		}
		n.term()
		n2 := startNode(t, bin, data)
		resume(t, n2.addr, w)
		if c := authCalls(); c != 1 {
			t.Fatalf("auth.log: %d sign-ins of alice after the resume, want still 1", c)
		}
	})

	t.Run("Cluster", func(t *testing.T) {
		base := t.TempDir()
		ns, err := natsnode.Start(natsnode.Options{StoreDir: filepath.Join(base, "nats"), ClientListen: "127.0.0.1:-1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Shutdown)
		key := filepath.Join(base, "hmac.key")
		clusterToken(t, bin, key, "agent", "unused") // writes the shared key
		var addrs [2]string
		for i := range addrs {
			_, ready := launch(t, bin, filepath.Join(base, fmt.Sprint(i)), []string{
				"UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=2s",
				"UNIGATE_BACKENDS_BOT=off",
				"UNIGATE_AUTH_KEY_FILE=" + key,
				"UNIGATE_NATS_URL=" + ns.ClientURL(),
				fmt.Sprintf("UNIGATE_CLUSTER_NODE_NAME=h%d", i),
			})
			addrs[i] = ready()
		}
		before := authCalls()
		w := signIn(t, addrs[0])
		// The other node reads the session's record, written
		// asynchronously at the welcome and again at the disconnect.
		// A refusal meanwhile changes nothing (broker.resolveResume).
		waitUntil(t, 20*time.Second, "a resume on the other node", func() bool {
			a := dialJSON(t, addrs[1])
			defer a.c.Close()
			a.send(map[string]any{"hello": map[string]any{"resumeToken": w["resumeToken"]}})
			return nextOf(t, a)["welcome"] != nil
		})
		resume(t, addrs[1], w)
		if c := authCalls() - before; c != 1 {
			t.Fatalf("auth.log: %d sign-ins of alice on the cluster, want 1", c)
		}
	})
}

// nextOf reads a's next welcome or error envelope.
func nextOf(t *testing.T, a *jsonClient) map[string]any {
	t.Helper()
	_ = a.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var env map[string]any
		if err := a.c.ReadJSON(&env); err != nil {
			t.Fatalf("waiting for a welcome or an error: %v", err)
		}
		if env["welcome"] != nil || env["error"] != nil {
			return env
		}
	}
}

// TestHookEventsAcrossKill9 runs `unigate serve` with the hook taking
// events and SIGKILLs it three times while visitors are sending
// (pipelined, not waiting for acks) and conversations change (one closed
// right before a kill), at a different moment each time. After each
// restart the clients reconnect and re-send, with the same
// client_msg_id, what was not acked, as the real clients do. In the end
// every message acked to its sender has its message_stored event at the
// hook, and every state a client saw (queued, assigned, closed) its
// conversation event, in order per conversation (repeats of an id
// dropped).
func TestHookEventsAcrossKill9(t *testing.T) {
	bin := buildBinary(t)
	data, hookDir := t.TempDir(), t.TempDir()
	t.Cleanup(func() { killPlugins(t, hookDir) })
	t.Setenv(testHookEnv, hookDir)
	t.Setenv("UNIGATE_BACKENDS_HOOK_PLUGIN", os.Args[0])
	t.Setenv("UNIGATE_BACKENDS_HOOK_MESSAGES", "true")
	t.Setenv("UNIGATE_BACKENDS_CALL_TIMEOUT", "1s")
	t.Setenv("UNIGATE_LIMITS_MESSAGE_RATE", "1000")
	t.Setenv("UNIGATE_LIMITS_MESSAGE_BURST", "1000")
	tokenOf := func(role, id string) string {
		out, err := exec.Command(bin, "token", role, "-id", id, "-data-dir", data).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	n := startNode(t, bin, data)
	agent := newChat(t, "a1", tokenOf("agent", "a1"))
	online := func() {
		agent.dial(n.addr)
		agent.hello(false)
		if err := agent.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 10}}); err != nil {
			t.Fatal(err)
		}
	}
	online()
	const visitors = 3
	vs := make([]*chatClient, visitors)
	for i := range vs {
		v := newChat(t, fmt.Sprintf("v%d", i), tokenOf("visitor", fmt.Sprintf("v%d", i)))
		v.dial(n.addr)
		v.hello(false)
		if err := v.send(map[string]any{"open": map[string]any{"text": fmt.Sprintf("hello %d", i)}}); err != nil {
			t.Fatal(err)
		}
		v.waitUntil("assigned", func() bool { return v.conv != "" && slices.Contains(v.states, "STATE_ASSIGNED") }) // (under v.mu)
		vs[i] = v
	}
	sent := make([][]string, visitors) // client message ids, in order
	closed := false
	for round := range 3 {
		for k := range 6 {
			for i, v := range vs {
				if i == 0 && closed {
					continue
				}
				cmid := fmt.Sprintf("%s-%d-%d", v.name, round, k)
				sent[i] = append(sent[i], cmid)
				v.mu.Lock()
				conv := v.conv
				v.mu.Unlock()
				_ = v.send(map[string]any{"send": map[string]any{"conversationId": conv, "clientMsgId": cmid, "text": "text of " + cmid}})
			}
		}
		if round == 1 {
			vs[0].mu.Lock()
			conv := vs[0].conv
			vs[0].mu.Unlock()
			_ = agent.send(map[string]any{"close": map[string]any{"conversationId": conv, "reason": "resolved"}})
			closed = true
		}
		time.Sleep(time.Duration(round*10) * time.Millisecond) // a different moment each round
		n.kill9()
		killPlugins(t, hookDir)
		n = startNode(t, bin, data)
		online()
		for i, v := range vs {
			v.dial(n.addr)
			v.hello(true)
			if i == 0 && closed {
				// The close may have died with the node: the agent asks
				// again until the visitor sees it; the visitor's later
				// sends would be refused, nothing to re-send.
				v.mu.Lock()
				seen, conv := slices.Contains(v.states, "STATE_CLOSED"), v.conv
				v.mu.Unlock()
				if !seen {
					_ = agent.send(map[string]any{"close": map[string]any{"conversationId": conv, "reason": "resolved"}})
				}
				v.waitUntilWithin(30*time.Second, "the close", func() bool { return slices.Contains(v.states, "STATE_CLOSED") })
				continue
			}
			// Re-send what was not acked, with its client message id.
			v.mu.Lock()
			var again []string
			for _, cmid := range sent[i] {
				if _, ok := v.acked[cmid]; !ok {
					again = append(again, cmid)
				}
			}
			conv := v.conv
			v.mu.Unlock()
			for _, cmid := range again {
				_ = v.send(map[string]any{"send": map[string]any{"conversationId": conv, "clientMsgId": cmid, "text": "text of " + cmid}})
			}
			v.waitUntilWithin(30*time.Second, "acks of the re-sent messages", func() bool {
				for _, cmid := range sent[i] {
					if _, ok := v.acked[cmid]; !ok {
						return false
					}
				}
				return true
			})
		}
	}
	vs[0].waitUntil("the close", func() bool { return slices.Contains(vs[0].states, "STATE_CLOSED") })

	// What each client was told, and what the hook must have.
	type want struct {
		conv   string
		seqs   map[uint64]bool
		states []string
	}
	var wants []want
	for _, v := range vs {
		v.mu.Lock()
		w := want{conv: v.conv, seqs: map[uint64]bool{}, states: slices.Clone(v.states)}
		for _, seq := range v.acked {
			w.seqs[seq] = true
		}
		v.mu.Unlock()
		wants = append(wants, w)
	}
	eventOf := map[string]string{"STATE_QUEUED": "conversation_opened", "STATE_ASSIGNED": "conversation_assigned", "STATE_CLOSED": "conversation_closed"}
	missing := func(per map[string][]hookLine) string {
		for _, w := range wants {
			got := per[w.conv]
			has := map[string]bool{}
			for _, l := range got {
				has[l.Type] = true
				if l.Type == "message_stored" {
					has["seq "+l.Msg] = true
				}
			}
			for seq := range w.seqs {
				if !has["seq "+strconv.FormatUint(seq, 10)] {
					return fmt.Sprintf("%s: message %d acked, no message_stored", w.conv, seq)
				}
			}
			for _, st := range w.states {
				if ev, ok := eventOf[st]; ok && !has[ev] {
					return fmt.Sprintf("%s: state %s seen, no %s", w.conv, st, ev)
				}
			}
		}
		return ""
	}
	var per map[string][]hookLine
	deadline := time.Now().Add(60 * time.Second)
	for {
		per = byConversation(t, readHookLines(t, hookDir))
		why := missing(per)
		if why == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the kills: %s", why)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range wants {
		got := per[w.conv]
		if got[0].Type != "conversation_opened" {
			t.Fatalf("%s: %v: opened is not first", w.conv, typesOf(got))
		}
		last := 0
		for i, l := range got {
			switch l.Type {
			case "message_stored":
				seq, _ := strconv.Atoi(l.Msg)
				if seq <= last {
					t.Fatalf("%s: message %d after %d", w.conv, seq, last)
				}
				last = seq
			case "conversation_closed":
				// No state change after the close. Message events may
				// follow it: a send the shard had taken before the
				// close whose append (and so whose event) was still in
				// flight when the close was processed is stored after
				// it, and after a crash its event is stored again at
				// the load, behind the close's (docs/backends.md).
				for _, later := range got[i+1:] {
					if later.Type != "message_stored" {
						t.Fatalf("%s: %v: %s after the close", w.conv, typesOf(got), later.Type)
					}
				}
			}
		}
	}
	lines := readHookLines(t, hookDir)
	t.Logf("%d deliveries of the hook events after 3 kills", len(lines))
}
