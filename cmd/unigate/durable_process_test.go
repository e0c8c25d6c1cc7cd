package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// node is one run of the binary on a data dir.
type node struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	logs *syncBuf
	done chan error
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) add(line string) {
	s.mu.Lock()
	s.b.WriteString(line + "\n")
	s.mu.Unlock()
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startNode runs `unigate serve` on dir with a free port and extra flags.
func startNode(t *testing.T, bin, dir string, extra ...string) *node {
	t.Helper()
	args := append([]string{"serve", "-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", dir}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cmd.Environ(), "UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=2s", "UNIGATE_BACKENDS_BOT=off")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, cmd: cmd, logs: &syncBuf{}, done: make(chan error, 1)}
	lines := bufio.NewScanner(stderr)
	for n.addr == "" && lines.Scan() {
		n.logs.add(lines.Text())
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			n.addr = m[1]
		}
	}
	if n.addr == "" {
		_ = cmd.Process.Kill()
		t.Fatalf("no listening line in:\n%s", n.logs.String())
	}
	go func() {
		for lines.Scan() {
			n.logs.add(lines.Text())
		}
		_, _ = io.Copy(io.Discard, stderr)
		n.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-n.done
		if t.Failed() {
			t.Logf("node %s logs:\n%s", n.addr, n.logs.String())
		}
		n.done <- nil
	})
	return n
}

func (n *node) kill9() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	err := <-n.done
	n.done <- err
}

func (n *node) term() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		n.t.Fatal(err)
	}
	select {
	case err := <-n.done:
		n.done <- err
		if err != nil {
			n.t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		n.t.Fatal("no exit after SIGTERM")
	}
}

// chatClient is a JSON client that records what it has seen of one
// conversation: acks of its own messages and delivers, in arrival order.
type chatClient struct {
	t    *testing.T
	name string
	tok  string

	mu       sync.Mutex
	c        *websocket.Conn
	id       int
	resume   string
	conv     string
	seen     []uint64          // seqs seen (own acks and delivers), in order
	acked    map[string]uint64 // client message id -> seq
	errors   []float64
	welcomed bool
	resumed  bool
	listed   []any // conversations in the last welcome
	states   []string
	gone     chan struct{}
	closeErr error // how the last connection ended (a *websocket.CloseError when the server closed it)
}

func newChat(t *testing.T, name, tok string) *chatClient {
	return &chatClient{t: t, name: name, tok: tok, acked: map[string]uint64{}}
}

func (cc *chatClient) dial(addr string) {
	cc.t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"unigate.v1.json"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		cc.t.Fatalf("%s: %v", cc.name, err)
	}
	cc.mu.Lock()
	cc.c, cc.welcomed, cc.errors, cc.gone = c, false, nil, make(chan struct{})
	gone := cc.gone
	cc.mu.Unlock()
	cc.t.Cleanup(func() { c.Close() })
	go cc.read(c, gone)
}

func num(v any) uint64 {
	switch x := v.(type) {
	case string:
		n, _ := strconv.ParseUint(x, 10, 64)
		return n
	case float64:
		return uint64(x)
	}
	return 0
}

func (cc *chatClient) read(c *websocket.Conn, gone chan struct{}) {
	defer close(gone)
	for {
		var env map[string]any
		if err := c.ReadJSON(&env); err != nil {
			cc.mu.Lock()
			cc.closeErr = err
			cc.mu.Unlock()
			return
		}
		cc.mu.Lock()
		switch {
		case env["welcome"] != nil:
			w := env["welcome"].(map[string]any)
			cc.resume, _ = w["resumeToken"].(string)
			cc.resumed = w["resumed"] == true
			cc.listed, _ = w["conversations"].([]any)
			cc.welcomed = true
		case env["ack"] != nil:
			a := env["ack"].(map[string]any)
			seq := num(a["seq"])
			cmid, _ := a["clientMsgId"].(string)
			if _, dup := cc.acked[cmid]; !dup {
				cc.acked[cmid] = seq
				cc.seen = append(cc.seen, seq)
			}
		case env["deliver"] != nil:
			d := env["deliver"].(map[string]any)
			seq := num(d["seq"])
			cc.seen = append(cc.seen, seq)
			// Its own message whose ack was lost (a node died or drained
			// with it in flight): it is stored, and the ack a re-send gets
			// names the same seq.
			if cmid, _ := d["clientMsgId"].(string); strings.HasPrefix(cmid, cc.name+"-") && cc.acked[cmid] == 0 {
				cc.acked[cmid] = seq
			}
		case env["conversation"] != nil:
			cv := env["conversation"].(map[string]any)
			cc.conv, _ = cv["conversationId"].(string)
			st, _ := cv["state"].(string)
			cc.states = append(cc.states, st)
		case env["error"] != nil:
			cc.errors = append(cc.errors, float64(num(env["error"].(map[string]any)["code"])))
		}
		cc.mu.Unlock()
	}
}

func (cc *chatClient) send(body map[string]any) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.id++
	body["id"] = strconv.Itoa(cc.id)
	_ = cc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return cc.c.WriteJSON(body)
}

func (cc *chatClient) waitUntil(what string, cond func() bool) {
	cc.t.Helper()
	cc.waitUntilWithin(15*time.Second, what, cond)
}

// waitUntilWithin is waitUntil with its own deadline, for a step that
// waits on a cluster still settling (JetStream replicas electing leaders
// on a loaded machine can take tens of seconds).
func (cc *chatClient) waitUntilWithin(d time.Duration, what string, cond func() bool) {
	cc.t.Helper()
	deadline := time.Now().Add(d)
	for {
		cc.mu.Lock()
		ok := cond()
		cc.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			cc.mu.Lock()
			defer cc.mu.Unlock()
			cc.t.Fatalf("%s: no %s; seen %v errors %v states %v", cc.name, what, cc.seen, cc.errors, cc.states)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (cc *chatClient) last() uint64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if len(cc.seen) == 0 {
		return 0
	}
	return cc.seen[len(cc.seen)-1]
}

// hello says hello with the token, the resume token if any and a cursor;
// after a node lost its sessions (kill -9) the resume token is refused
// with 2004 and the client says hello again with its token alone.
func (cc *chatClient) hello(withResume bool) (resumed bool) {
	cc.t.Helper()
	h := map[string]any{"token": cc.tok}
	cc.mu.Lock()
	if cc.conv != "" {
		h["cursors"] = []any{map[string]any{"conversationId": cc.conv, "lastSeq": strconv.FormatUint(lastOf(cc.seen), 10)}}
	}
	if withResume && cc.resume != "" {
		h["resumeToken"] = cc.resume
	}
	cc.mu.Unlock()
	if err := cc.send(map[string]any{"hello": h}); err != nil {
		cc.t.Fatal(err)
	}
	cc.waitUntil("welcome or error", func() bool { return cc.welcomed || len(cc.errors) > 0 })
	cc.mu.Lock()
	refused := !cc.welcomed && slices.Contains(cc.errors, 2004)
	cc.mu.Unlock()
	if refused {
		delete(h, "resumeToken")
		if err := cc.send(map[string]any{"hello": h}); err != nil {
			cc.t.Fatal(err)
		}
		cc.waitUntil("welcome", func() bool { return cc.welcomed })
		return false
	}
	cc.waitUntil("welcome", func() bool { return cc.welcomed })
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.resumed
}

func lastOf(s []uint64) uint64 {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}

func issueToken(t *testing.T, bin, dir, role, id string) string {
	t.Helper()
	out, err := exec.Command(bin, "token", role, "-id", id, "-data-dir", dir).Output()
	if err != nil {
		t.Fatalf("token %s: %v", role, err)
	}
	return strings.TrimSpace(string(out))
}

// chatPair is a visitor and an agent in one conversation on n.
func chatPair(t *testing.T, bin, dir string, n *node) (v, a *chatClient) {
	v = newChat(t, "visitor", issueToken(t, bin, dir, "visitor", "v1"))
	a = newChat(t, "agent", issueToken(t, bin, dir, "agent", "a1"))
	v.dial(n.addr)
	v.hello(false)
	a.dial(n.addr)
	a.hello(false)
	if err := a.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 2}}); err != nil {
		t.Fatal(err)
	}
	if err := v.send(map[string]any{"open": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	v.waitUntil("assignment", func() bool { return slices.Contains(v.states, "STATE_ASSIGNED") })
	a.waitUntil("assignment", func() bool { return slices.Contains(a.states, "STATE_ASSIGNED") })
	return v, a
}

// exchange makes both clients send count messages at a steady pace; send
// errors (a dead node) are ignored. It returns when stop is closed or all
// are sent.
func exchange(v, a *chatClient, from, count int, stop <-chan struct{}) {
	exchangeEvery(4*time.Millisecond, v, a, from, count, stop)
}

// exchangeEvery is exchange with a pause of pace between rounds.
func exchangeEvery(pace time.Duration, v, a *chatClient, from, count int, stop <-chan struct{}) {
	for i := from; i < from+count; i++ {
		select {
		case <-stop:
			return
		default:
		}
		for _, c := range []*chatClient{v, a} {
			c.mu.Lock()
			conv := c.conv
			c.mu.Unlock()
			_ = c.send(map[string]any{"send": map[string]any{
				"conversationId": conv, "clientMsgId": fmt.Sprintf("%s-%d", c.name, i), "text": fmt.Sprintf("%s says %d", c.name, i),
			}})
		}
		time.Sleep(pace)
	}
}

// checkOnceInOrder checks that c saw 1..last exactly once, in order.
func checkOnceInOrder(t *testing.T, c *chatClient, last uint64) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.seen {
		if s != uint64(i+1) {
			t.Fatalf("%s: seen %v: want 1..%d once, in order (position %d is %d)", c.name, c.seen, last, i, s)
		}
	}
	if uint64(len(c.seen)) != last {
		t.Fatalf("%s: saw %d messages, want %d", c.name, len(c.seen), last)
	}
}

// verifyHistory reads the whole history with a fresh agent connection and
// checks every acked message is there under its seq, and returns the last.
func verifyHistory(t *testing.T, addr, agentTok, conv string, acked ...map[string]uint64) uint64 {
	t.Helper()
	fresh := newChat(t, "fresh-agent", agentTok)
	fresh.conv = conv
	fresh.dial(addr)
	fresh.hello(false)
	var want uint64
	for _, m := range acked {
		for _, s := range m {
			want = max(want, s)
		}
	}
	fresh.waitUntil("full replay", func() bool { return lastOf(fresh.seen) >= want })
	for _, m := range acked {
		for cmid, s := range m {
			if s == 0 || s > uint64(len(fresh.seen)) || fresh.seen[s-1] != s {
				t.Fatalf("acked %s seq %d is not in the replayed history %v", cmid, s, fresh.seen)
			}
		}
	}
	checkOnceInOrder(t, fresh, uint64(len(fresh.seen)))
	return uint64(len(fresh.seen))
}

// TestCrashRestart: kill -9 in the middle of a steady exchange, restart on
// the same data dir, both clients resume with their cursors; every acked
// message is in the history, each client sees every message once, in
// order, across both runs, and the chat goes on.
func TestCrashRestart(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	n1 := startNode(t, bin, dir)
	v, a := chatPair(t, bin, dir, n1)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		exchange(v, a, 0, 200, stop)
	}()
	v.waitUntil("some traffic", func() bool { return len(v.acked) >= 15 })
	n1.kill9()
	close(stop)
	wg.Wait()
	<-v.gone
	<-a.gone
	t.Logf("killed after visitor acks %d, agent acks %d; visitor saw up to %d, agent up to %d",
		len(v.acked), len(a.acked), v.last(), a.last())

	n2 := startNode(t, bin, dir)
	for _, c := range []*chatClient{v, a} {
		c.dial(n2.addr)
		// No snapshot after kill -9: the session is rebuilt from the
		// identity signed into the resume token (within resume_ttl of
		// the start).
		if !c.hello(true) {
			t.Fatalf("%s: resume after kill -9 not accepted", c.name)
		}
	}
	exchange(v, a, 1000, 10, nil)
	v.waitUntil("own acks after restart", func() bool { return v.acked["visitor-1009"] != 0 })
	a.waitUntil("own acks after restart", func() bool { return a.acked["agent-1009"] != 0 })
	last := verifyHistory(t, n2.addr, a.tok, v.conv, v.acked, a.acked)
	v.waitUntil("everything", func() bool { return lastOf(v.seen) >= last })
	a.waitUntil("everything", func() bool { return lastOf(a.seen) >= last })
	checkOnceInOrder(t, v, last)
	checkOnceInOrder(t, a, last)
	t.Logf("%d messages in history; visitor acked %d, agent acked %d", last, len(v.acked), len(a.acked))

	// Bad input after the restart: a forged resume token, a cursor from
	// the future, an unknown conversation: coded errors, nothing changes.
	bad := newChat(t, "forger", v.tok)
	bad.dial(n2.addr)
	bad.resume = v.resume[:len(v.resume)-2] + "xx"
	if bad.hello(true) {
		t.Fatal("a forged resume token was accepted")
	}
	if !slices.Contains(bad.errors, 2004) {
		t.Fatalf("forged resume token: errors %v, want 2004", bad.errors)
	}
	fut := newChat(t, "future", v.tok)
	v.mu.Lock()
	fut.conv = v.conv
	v.mu.Unlock()
	fut.seen = []uint64{last + 100}
	fut.dial(n2.addr)
	fut.hello(false)
	fut.waitUntil("3003", func() bool { return slices.Contains(fut.errors, 3003) })
	if err := fut.send(map[string]any{"send": map[string]any{"conversationId": "c_nosuchconversation", "text": "x"}}); err != nil {
		t.Fatal(err)
	}
	fut.waitUntil("3000", func() bool { return slices.Contains(fut.errors, 3000) })
	exchange(v, a, 2000, 1, nil)
	v.waitUntil("seq after bad input", func() bool { return v.acked["visitor-2000"] != 0 })
	if v.acked["visitor-2000"] <= last {
		t.Fatalf("visitor-2000 acked with seq %d, want > %d", v.acked["visitor-2000"], last)
	}
}

// TestGracefulRestart: SIGTERM saves the encrypted session snapshot, the
// restarted node restores it and a client resumes with its resume token
// alone (the welcome lists the conversation; replay after the cursor). A
// damaged snapshot is refused with a clear log line and the node starts.
func TestGracefulRestart(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	n1 := startNode(t, bin, dir)
	v, a := chatPair(t, bin, dir, n1)
	exchange(v, a, 0, 5, nil)
	v.waitUntil("acks", func() bool { return len(v.acked) == 5 })
	a.waitUntil("acks", func() bool { return len(a.acked) == 5 })
	v.waitUntil("all", func() bool { return lastOf(v.seen) == 10 })
	a.waitUntil("all", func() bool { return lastOf(a.seen) == 10 })
	n1.term()
	if !strings.Contains(n1.logs.String(), "session snapshot saved") {
		t.Fatalf("no snapshot saved:\n%s", n1.logs.String())
	}

	n2 := startNode(t, bin, dir)
	if !strings.Contains(n2.logs.String(), "session snapshot restored") {
		t.Fatalf("snapshot not restored:\n%s", n2.logs.String())
	}
	v.mu.Lock()
	conv := v.conv
	v.conv = "" // no cursor: the session must name the conversation
	v.mu.Unlock()
	v.dial(n2.addr)
	if !v.hello(true) {
		t.Fatal("resume after a graceful restart not accepted")
	}
	v.mu.Lock()
	listed := v.listed
	v.mu.Unlock()
	if len(listed) != 1 || listed[0] != conv {
		t.Fatalf("welcome lists %v, want [%s]", listed, conv)
	}
	v.mu.Lock()
	v.conv = conv // the reader may set it too, from the attach
	v.mu.Unlock()
	a.dial(n2.addr)
	if !a.hello(true) {
		t.Fatal("agent resume not accepted")
	}
	exchange(v, a, 100, 3, nil)
	v.waitUntil("more", func() bool { return v.acked["visitor-102"] != 0 })
	a.waitUntil("more", func() bool { return a.acked["agent-102"] != 0 })
	last := verifyHistory(t, n2.addr, a.tok, conv, v.acked, a.acked)
	a.waitUntil("everything", func() bool { return lastOf(a.seen) >= last })
	checkOnceInOrder(t, a, last)
	// The visitor resumed without a cursor: it got the history again from
	// the start, then the new messages, each once after the resume.
	v.waitUntil("everything", func() bool { return lastOf(v.seen) >= last })

	// A damaged snapshot: refused, logged, the node starts empty.
	n2.term()
	snap := dir + "/sessions.snap/MANIFEST"
	if err := os.WriteFile(snap, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	n3 := startNode(t, bin, dir)
	if !strings.Contains(n3.logs.String(), "session snapshot refused") {
		t.Fatalf("damaged snapshot not reported:\n%s", n3.logs.String())
	}
}
