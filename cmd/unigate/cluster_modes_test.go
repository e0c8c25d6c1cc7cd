package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/natsnode"
)

// freeAddrs reserves n loopback addresses (listen, note, close).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// clusterToken issues a token signed with the cluster's shared key.
func clusterToken(t *testing.T, bin, key, role, id string) string {
	t.Helper()
	cmd := exec.Command(bin, "token", role, "-id", id, "-data-dir", t.TempDir())
	cmd.Env = append(cmd.Environ(), "UNIGATE_AUTH_KEY_FILE="+key)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("token %s: %v", role, err)
	}
	return strings.TrimSpace(string(out))
}

// pairUp brings agent a online (capacity 1) and opens v's conversation,
// which a gets: the only agent with a free slot. nodes get SIGQUIT if it
// never comes (see waitAssigned).
func pairUp(t *testing.T, v, a *chatClient, nodes []*node) {
	t.Helper()
	a.hello(false)
	if err := a.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 1}}); err != nil {
		t.Fatal(err)
	}
	v.hello(false)
	if err := v.send(map[string]any{"open": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	waitAssigned(t, v, a, nodes)
	if v.conv != a.conv {
		t.Fatalf("%s is in %s, %s in %s", v.name, v.conv, a.name, a.conv)
	}
}

// sendBoth makes v and a send n messages each at once (open loop); it
// may run on any goroutine (send errors show as missing acks).
func sendBoth(v, a *chatClient, n int) {
	var wg sync.WaitGroup
	for _, c := range []*chatClient{v, a} {
		c.mu.Lock()
		conv := c.conv
		c.mu.Unlock()
		wg.Go(func() {
			for i := range n {
				_ = c.send(map[string]any{"send": map[string]any{
					"conversationId": conv, "clientMsgId": fmt.Sprintf("%s-%d", c.name, i), "text": fmt.Sprintf("%s says %d", c.name, i),
				}})
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	wg.Wait()
}

// checkBoth checks that v and a had their n messages each acked and saw
// every seq once, in order.
func checkBoth(t *testing.T, v, a *chatClient, n int) {
	t.Helper()
	for _, c := range []*chatClient{v, a} {
		c.waitUntilWithin(time.Minute, "every ack", func() bool { return len(c.acked) >= n || len(c.errors) > 0 })
		c.mu.Lock()
		errs := c.errors
		c.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("%s: refused %v", c.name, errs)
		}
	}
	last := uint64(2 * n)
	for _, c := range []*chatClient{v, a} {
		c.waitUntilWithin(time.Minute, "every message", func() bool { return lastOf(c.seen) >= last })
		checkOnceInOrder(t, c, last)
	}
}

// TestClusterExternalNATS: two Unigate processes with nats.url pointing at
// one NATS server (started by the test, JetStream, TCP), no embedded
// servers and no routes: the visitor is on one, the agent on the other;
// both chat at once, each sees every message once, in order, and the
// history read on either node holds all of it.
func TestClusterExternalNATS(t *testing.T) {
	bin := buildBinary(t)
	base := t.TempDir()
	ns, err := natsnode.Start(natsnode.Options{StoreDir: filepath.Join(base, "nats"), ClientListen: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	url := ns.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("client URL %q", url)
	}
	key := filepath.Join(base, "hmac.key")
	vTok := clusterToken(t, bin, key, "visitor", "ext-v")
	aTok := clusterToken(t, bin, key, "agent", "ext-a")
	var addrs [2]string
	var nodes []*node
	for i := range addrs {
		n, ready := launch(t, bin, filepath.Join(base, fmt.Sprint(i)), []string{
			"UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=2s",
			"UNIGATE_BACKENDS_BOT=off",
			"UNIGATE_AUTH_KEY_FILE=" + key,
			"UNIGATE_NATS_URL=" + url,
			fmt.Sprintf("UNIGATE_CLUSTER_NODE_NAME=x%d", i),
		})
		nodes = append(nodes, n)
		addrs[i] = ready()
	}
	for i, n := range nodes {
		if !strings.Contains(n.logs.String(), `msg="cluster mode" node=x`+strconv.Itoa(i)) {
			t.Fatalf("node %d is not in cluster mode:\n%s", i, n.logs.String())
		}
	}
	v, a := newChat(t, "visitor", vTok), newChat(t, "agent", aTok)
	v.dial(addrs[0])
	a.dial(addrs[1])
	pairUp(t, v, a, nodes)
	sendBoth(v, a, 100)
	checkBoth(t, v, a, 100)
	for _, addr := range addrs {
		if got := verifyHistory(t, addr, aTok, v.conv, v.acked, a.acked); got != 200 {
			t.Fatalf("history on %s: %d messages, want 200", addr, got)
		}
	}
}

// metricOf reads one gauge or counter from an admin /metrics endpoint.
func metricOf(t *testing.T, admin, name string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q", name, sc.Text())
			}
			return int(f)
		}
	}
	t.Fatalf("%s: no %s", admin, name)
	return 0
}

// TestClusterReusePort: three Unigate processes bind the same port with
// SO_REUSEPORT (reuse_port) and form one cluster (embedded NATS routed,
// R3). Clients dial that one port; the kernel spreads them. Each client's
// node is found from the nodes' connection gauges; visitor/agent pairs
// are made of clients on different nodes, chat at once across nodes, and
// each client sees every message once, in order.
func TestClusterReusePort(t *testing.T) {
	bin := buildBinary(t)
	base := t.TempDir()
	key := filepath.Join(base, "hmac.key")
	port := freeAddrs(t, 1)[0]
	routes, admins := freeAddrs(t, 3), freeAddrs(t, 3)
	var nodes []*node
	var readies []func() string
	for i := range 3 {
		env := append(clusterEnv(key, i, routes), "UNIGATE_REUSE_PORT=true")
		n, ready := launch(t, bin, filepath.Join(base, fmt.Sprint(i)), env, "-listen", port, "-admin-listen", admins[i])
		nodes, readies = append(nodes, n), append(readies, ready)
	}
	for i, ready := range readies {
		if got := ready(); got != port {
			t.Fatalf("node %d listens on %s, want the shared %s", i, got, port)
		}
	}
	conns := func() []int {
		out := make([]int, len(admins))
		for i, a := range admins {
			out[i] = metricOf(t, a, "unigate_broker_connections")
		}
		return out
	}
	// placed dials c to the shared port and returns the node it landed on.
	placed := func(c *chatClient) int {
		t.Helper()
		before := conns()
		c.dial(port)
		deadline := time.Now().Add(30 * time.Second)
		for {
			for i, n := range conns() {
				if n > before[i] {
					return i
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no node counts its connection", c.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Three pairs, each visitor and agent on different nodes; dialled
	// again until the kernel puts them there.
	type pair struct {
		v, a   *chatClient
		vn, an int
	}
	var pairs []pair
	seen := map[int]bool{}
	for p := 0; p < 3; p++ {
		var pr pair
		for try := 0; ; try++ {
			pr.v = newChat(t, fmt.Sprintf("visitor%d", p), clusterToken(t, bin, key, "visitor", fmt.Sprintf("rp-v%d", p)))
			if pr.vn = placed(pr.v); !seen[pr.vn] || try >= 10 {
				break
			}
			pr.v.c.Close()
		}
		seen[pr.vn] = true
		for try := 0; ; try++ {
			if try == 50 {
				t.Fatal("the kernel never put an agent on another node than its visitor")
			}
			pr.a = newChat(t, fmt.Sprintf("agent%d", p), clusterToken(t, bin, key, "agent", fmt.Sprintf("rp-a%d", p)))
			if pr.an = placed(pr.a); pr.an != pr.vn {
				break
			}
			pr.a.c.Close()
		}
		t.Logf("pair %d: visitor on node %d, agent on node %d", p, pr.vn, pr.an)
		pairUp(t, pr.v, pr.a, nodes)
		pairs = append(pairs, pr)
	}
	var wg sync.WaitGroup
	for _, pr := range pairs {
		wg.Go(func() { sendBoth(pr.v, pr.a, 50) })
	}
	wg.Wait()
	for _, pr := range pairs {
		checkBoth(t, pr.v, pr.a, 50)
	}
	notices := 0
	for _, a := range admins {
		notices += metricOf(t, a, "unigate_broker_cluster_notices_total")
	}
	if notices == 0 {
		t.Fatal("no node applied a message from another node")
	}
	t.Logf("connections per node %v; messages applied from other nodes: %d", conns(), notices)
}
