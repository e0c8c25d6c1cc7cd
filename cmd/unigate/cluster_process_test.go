package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// clusterEnv is the environment of one node of a 3-node cluster on this
// host: its own route port and data dir, the shared HMAC key, R3.
func clusterEnv(key string, i int, routes []string) []string {
	return []string{
		"UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=2s",
		"UNIGATE_BACKENDS_BOT=off",
		"UNIGATE_AUTH_KEY_FILE=" + key,
		"UNIGATE_NATS_REPLICAS=3",
		fmt.Sprintf("UNIGATE_CLUSTER_NODE_NAME=n%d", i),
		"UNIGATE_CLUSTER_LISTEN=" + routes[i],
		"UNIGATE_CLUSTER_ROUTES=" + strings.Join(routes, ","),
		// The contended exchange sends 250 messages/s per connection,
		// over the default per-connection rate (50/s).
		"UNIGATE_LIMITS_MESSAGE_RATE=1000",
		"UNIGATE_LIMITS_MESSAGE_BURST=1000",
		// verifyHistory reads the whole history in one replay.
		"UNIGATE_HISTORY_REPLAY_LIMIT=10000",
	}
}

// launch starts the binary without waiting for it; ready returns its
// address once it logs that it listens. args are added to (and, for a
// flag given twice, override) the defaults.
func launch(t *testing.T, bin, dir string, env []string, args ...string) (n *node, ready func() string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "-listen", "127.0.0.1:0", "-admin-listen", "", "-data-dir", dir}, args...)...)
	cmd.Env = append(cmd.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n = &node{t: t, cmd: cmd, logs: &syncBuf{}, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			n.logs.add(lines.Text())
			if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
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
	return n, func() string {
		t.Helper()
		select {
		case a := <-addr:
			n.addr = a
			return a
		case <-time.After(2 * time.Minute):
			t.Fatalf("node in %s never listened:\n%s", dir, n.logs.String())
			return ""
		}
	}
}

// TestClusterKillNode: three processes, each with its embedded NATS
// server routed to the others (JetStream R3, so a quorum survives one
// death). The visitor chats from node 0 with the agent on node 1; node 0
// is killed with SIGKILL in the middle; the visitor reconnects to node 2
// and resumes with its resume token (its session is rebuilt from the
// token there). Every acked message is in the history, and both clients
// saw every message exactly once, in order.
func TestClusterKillNode(t *testing.T) {
	bin := buildBinary(t)
	base := t.TempDir()
	key := filepath.Join(base, "hmac.key")
	var ls []net.Listener
	var routes []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		routes = append(routes, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	// The shared key first (every node of the cluster verifies the same
	// tokens and resume tokens).
	tok := func(role, id string) string {
		t.Helper()
		cmd := exec.Command(bin, "token", role, "-id", id, "-data-dir", base)
		cmd.Env = append(cmd.Environ(), "UNIGATE_AUTH_KEY_FILE="+key)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("token %s: %v", role, err)
		}
		return strings.TrimSpace(string(out))
	}
	vTok, aTok := tok("visitor", "v1"), tok("agent", "a1")

	nodes := make([]*node, 3)
	readies := make([]func() string, 3)
	for i := range nodes {
		nodes[i], readies[i] = launch(t, bin, filepath.Join(base, fmt.Sprint(i)), clusterEnv(key, i, routes))
	}
	for i := range nodes {
		readies[i]()
	}
	start := time.Now()

	v := newChat(t, "visitor", vTok)
	a := newChat(t, "agent", aTok)
	a.dial(nodes[1].addr)
	a.hello(false)
	if err := a.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 2}}); err != nil {
		t.Fatal(err)
	}
	v.dial(nodes[0].addr)
	v.hello(false)
	if err := v.send(map[string]any{"open": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	// The first assignment waits on a freshly formed cluster: its KV
	// watchers and R3 streams may still be electing leaders under load.
	waitAssigned(t, v, a, nodes)
	t.Logf("cluster up and assigned across nodes in %v", time.Since(start).Round(time.Millisecond))

	// 250 messages/s from each side into one conversation, from two
	// nodes (open loop, never waiting for an ack). The two nodes would
	// race for every seq; the loser hands its sends to the winner's
	// writer (broker/cluster_write.go). Before that, the agent's node
	// lost almost every race at this rate on a loaded 2-core machine and
	// its messages failed ("history out of sync").
	const rounds, contended = 1500, 500
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	traffic := time.Now()
	go func() {
		defer wg.Done()
		exchangeEvery(4*time.Millisecond, v, a, 0, rounds, stop)
	}()
	// Refusals other than a temporary overload (4002) fail at once: the
	// starving side's were 5001.
	badRefusal := func(c *chatClient) bool {
		return slices.ContainsFunc(c.errors, func(code float64) bool { return code != 4002 })
	}
	v.waitUntilWithin(2*time.Minute, "contended traffic acked", func() bool { return len(v.acked) >= contended || badRefusal(v) })
	a.waitUntilWithin(2*time.Minute, "contended traffic acked", func() bool { return len(a.acked) >= contended || badRefusal(a) })
	took := time.Since(traffic)
	for _, c := range []*chatClient{v, a} {
		c.mu.Lock()
		n, errs, bad := len(c.acked), len(c.errors), badRefusal(c)
		c.mu.Unlock()
		t.Logf("%s: %d acks in %v (%.0f acks/s; one send per side every 4 ms, open loop), %d refused as overloaded", c.name, n, took.Round(time.Millisecond), float64(n)/took.Seconds(), errs)
		if bad {
			t.Fatalf("%s: messages refused under contention: codes %v", c.name, c.errors)
		}
	}
	nodes[0].kill9()
	close(stop)
	wg.Wait()
	<-v.gone
	t.Logf("node 0 killed after visitor acks %d, agent acks %d", acks(v), acks(a))

	// The visitor comes back on node 2; the agent stayed on node 1.
	v.dial(nodes[2].addr)
	if !v.hello(true) {
		t.Fatal("resume on another node not accepted")
	}
	// JetStream re-elects the leaders the dead node held (seconds; longer
	// on a loaded machine): like a real client, re-send what is not acked
	// with the same client message id until it is (never stored twice).
	for _, c := range []*chatClient{v, a} {
		sendUntilAcked(t, c, 1000, 10)
	}
	last := verifyHistory(t, nodes[2].addr, a.tok, v.conv, v.acked, a.acked)
	v.waitUntilWithin(60*time.Second, "everything", func() bool { return lastOf(v.seen) >= last })
	a.waitUntilWithin(60*time.Second, "everything", func() bool { return lastOf(a.seen) >= last })
	checkOnceInOrder(t, v, last)
	checkOnceInOrder(t, a, last)
	t.Logf("%d messages in history; visitor acked %d, agent acked %d", last, acks(v), acks(a))
}

// waitAssigned waits until both v and a saw their conversation assigned.
// On a timeout the nodes get SIGQUIT first, so that their goroutine dumps
// are in the logs printed with the failure (an assignment that never
// happens was a rare CI failure).
func waitAssigned(t *testing.T, v, a *chatClient, nodes []*node) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		done := true
		for _, c := range []*chatClient{v, a} {
			c.mu.Lock()
			done = done && containsState(c.states, "STATE_ASSIGNED")
			c.mu.Unlock()
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			for _, c := range []*chatClient{v, a} {
				c.mu.Lock()
				t.Logf("%s: states %v errors %v", c.name, c.states, c.errors)
				c.mu.Unlock()
			}
			for _, n := range nodes {
				_ = n.cmd.Process.Signal(syscall.SIGQUIT) // an exited one: an error, ignored
			}
			time.Sleep(2 * time.Second) // the dumps reach the log readers
			t.Fatal("no assignment within 90s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// resendMissing re-sends c's messages 0..count-1 that are not acked (same
// client message ids), a window of 32 at a time (under the conversation's
// queue bound), until every one is.
func resendMissing(t *testing.T, c *chatClient, count int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	unacked := func() []string {
		c.mu.Lock()
		defer c.mu.Unlock()
		var out []string
		for i := range count {
			if cmid := fmt.Sprintf("%s-%d", c.name, i); c.acked[cmid] == 0 {
				out = append(out, cmid)
			}
		}
		return out
	}
	for {
		missing := unacked()
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d messages never acked; errors %v", c.name, len(missing), c.errors)
		}
		window := missing[:min(32, len(missing))]
		c.mu.Lock()
		conv := c.conv
		c.mu.Unlock()
		for _, cmid := range window {
			_ = c.send(map[string]any{"send": map[string]any{"conversationId": conv, "clientMsgId": cmid, "text": "again: " + cmid}})
		}
		wait := time.Now().Add(3 * time.Second)
		for time.Now().Before(wait) {
			c.mu.Lock()
			done := !slices.ContainsFunc(window, func(cmid string) bool { return c.acked[cmid] == 0 })
			c.mu.Unlock()
			if done {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func containsState(states []string, s string) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

// sendUntilAcked sends c's messages from..from+count-1 and re-sends the
// unacked ones (same client message ids) until all are acked.
func sendUntilAcked(t *testing.T, c *chatClient, from, count int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		missing := 0
		for i := from; i < from+count; i++ {
			cmid := fmt.Sprintf("%s-%d", c.name, i)
			c.mu.Lock()
			acked, conv := c.acked[cmid] != 0, c.conv
			c.mu.Unlock()
			if acked {
				continue
			}
			missing++
			_ = c.send(map[string]any{"send": map[string]any{"conversationId": conv, "clientMsgId": cmid, "text": fmt.Sprintf("%s says %d", c.name, i)}})
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d messages never acked; errors %v", c.name, missing, c.errors)
		}
		wait := time.Now().Add(3 * time.Second)
		for time.Now().Before(wait) {
			c.mu.Lock()
			done := c.acked[fmt.Sprintf("%s-%d", c.name, from+count-1)] != 0
			c.mu.Unlock()
			if done {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func acks(c *chatClient) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.acked)
}

// TestClusterDrainNode: three processes (R3). Pair A: visitor on node 0,
// agent on node 1; pair B: visitor on node 2, agent on node 0. Both pairs
// chat steadily; node 0 gets SIGTERM: its two clients (and only they)
// get close 1001, the code that says "reconnect, resume elsewhere"; they
// resume on the surviving nodes with their resume tokens and cursors,
// re-send what was not acked (same client message ids), and nothing is
// lost: every message of all four clients is acked, in the history once,
// and each client saw every seq once, in order.
func TestClusterDrainNode(t *testing.T) {
	bin := buildBinary(t)
	base := t.TempDir()
	key := filepath.Join(base, "hmac.key")
	routes := freeAddrs(t, 3)
	nodes := make([]*node, 3)
	readies := make([]func() string, 3)
	for i := range nodes {
		nodes[i], readies[i] = launch(t, bin, filepath.Join(base, fmt.Sprint(i)), clusterEnv(key, i, routes))
	}
	for _, ready := range readies {
		ready()
	}
	tok := func(role, id string) string { return clusterToken(t, bin, key, role, id) }
	vA, aA := newChat(t, "visitorA", tok("visitor", "dr-va")), newChat(t, "agentA", tok("agent", "dr-aa"))
	vB, aB := newChat(t, "visitorB", tok("visitor", "dr-vb")), newChat(t, "agentB", tok("agent", "dr-ab"))
	vA.dial(nodes[0].addr)
	aA.dial(nodes[1].addr)
	pairUp(t, vA, aA, nodes)
	vB.dial(nodes[2].addr)
	aB.dial(nodes[0].addr)
	pairUp(t, vB, aB, nodes)

	const rounds = 300
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range [][2]*chatClient{{vA, aA}, {vB, aB}} {
		wg.Go(func() { exchangeEvery(10*time.Millisecond, p[0], p[1], 0, rounds, stop) })
	}
	for _, c := range []*chatClient{vA, aA, vB, aB} {
		c.waitUntilWithin(time.Minute, "some traffic", func() bool { return len(c.acked) >= 30 })
	}
	drained := []*chatClient{vA, aB}
	nodes[0].term()
	for _, c := range drained {
		select {
		case <-c.gone:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: still connected to the drained node", c.name)
		}
		c.mu.Lock()
		err := c.closeErr
		c.mu.Unlock()
		if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("%s: connection ended with %v, want close 1001", c.name, err)
		}
	}
	for _, c := range []*chatClient{aA, vB} {
		select {
		case <-c.gone:
			t.Fatalf("%s (not on the drained node) was disconnected", c.name)
		default:
		}
	}
	t.Logf("node 0 drained after acks: visitorA %d, agentA %d, visitorB %d, agentB %d", acks(vA), acks(aA), acks(vB), acks(aB))
	// They come back on the survivors (as a load balancer would send them).
	for i, c := range drained {
		c.dial(nodes[1+i].addr)
		if !c.hello(true) {
			t.Fatalf("%s: resume on node %d not accepted", c.name, 1+i)
		}
	}
	wg.Wait()
	close(stop)
	// Like a real client: re-send what was never acked (lost with the
	// drained connection, or refused while the survivors took over),
	// with the same client message ids.
	for _, c := range []*chatClient{vA, aA, vB, aB} {
		resendMissing(t, c, rounds)
	}
	for _, p := range [][2]*chatClient{{vA, aA}, {vB, aB}} {
		last := verifyHistory(t, nodes[1].addr, p[1].tok, p[0].conv, p[0].acked, p[1].acked)
		if last != 2*rounds {
			t.Fatalf("%s's conversation holds %d messages, want %d", p[0].name, last, 2*rounds)
		}
		for _, c := range p {
			c.waitUntilWithin(time.Minute, "everything", func() bool { return lastOf(c.seen) >= last })
			checkOnceInOrder(t, c, last)
		}
	}
}
