package natsnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func startNode(tb testing.TB, o Options) *Node {
	tb.Helper()
	n, err := Start(o)
	if err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(n.Shutdown)
	return n
}

func ctxT(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// checkFor polls f until it returns nil or the timeout expires.
func checkFor(tb testing.TB, timeout time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Fatalf("condition not met after %s: %v", timeout, err)
}

func TestEmbeddedRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	for round := range 2 {
		n, err := Start(Options{StoreDir: dir})
		if err != nil {
			t.Fatalf("round %d: Start: %v", round, err)
		}
		if n.Server() == nil || n.Server().Addr() != nil {
			t.Fatalf("round %d: embedded server should not listen on TCP (addr %v)", round, n.Server().Addr())
		}
		if got := n.ClientURL(); got != "" {
			t.Fatalf("ClientURL = %q, want empty", got)
		}
		js := n.JetStream()
		s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage})
		if err != nil {
			t.Fatalf("round %d: stream: %v", round, err)
		}
		if _, err := js.Publish(ctx, "t.x", []byte(fmt.Sprint(round))); err != nil {
			t.Fatalf("round %d: publish: %v", round, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(round + 1); info.State.Msgs != want {
			t.Fatalf("round %d: %d messages, want %d", round, info.State.Msgs, want)
		}
		n.Shutdown()
		n.Shutdown() // idempotent
		if !n.Conn().IsClosed() {
			t.Fatal("connection still open after Shutdown")
		}
	}
}

func TestExternal(t *testing.T) {
	srv := startNode(t, Options{StoreDir: t.TempDir(), ClientListen: "127.0.0.1:-1"})
	url := srv.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("ClientURL = %q", url)
	}
	ext := startNode(t, Options{ExternalURL: url})
	if ext.Server() != nil {
		t.Fatal("external node has an embedded server")
	}
	ctx := ctxT(t)
	if _, err := ext.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "E", Subjects: []string{"e"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ext.JetStream().Publish(ctx, "e", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	m, err := srv.JetStream().Stream(ctx, "E")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := m.GetMsg(ctx, 1)
	if err != nil || string(msg.Data) != "hi" {
		t.Fatalf("GetMsg = %v, %v", msg, err)
	}
}

func TestOptionsErrors(t *testing.T) {
	cases := []struct {
		name string
		o    Options
	}{
		{"no store dir", Options{}},
		{"cluster without name", Options{StoreDir: t.TempDir(), ClusterListen: "127.0.0.1:-1"}},
		{"routes without cluster", Options{StoreDir: t.TempDir(), Routes: []string{"127.0.0.1:1"}}},
		{"bad route", Options{StoreDir: t.TempDir(), ServerName: "a", ClusterListen: "127.0.0.1:-1", Routes: []string{"nohost"}}},
		{"bad listen", Options{StoreDir: t.TempDir(), ClientListen: "127.0.0.1:x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := Start(c.o)
			if err == nil {
				n.Shutdown()
				t.Fatal("Start succeeded")
			}
			if !errors.Is(err, ErrOptions) {
				t.Fatalf("err = %v, want ErrOptions", err)
			}
		})
	}
	if _, err := Start(Options{ExternalURL: "nats://127.0.0.1:1", StartTimeout: time.Second}); err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
}

// freePorts reserves n distinct loopback ports. Every node of a JetStream
// cluster needs configured routes, so the ports must be known up front;
// the tiny window between Close and the server's Listen is acceptable in
// a test.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	ports := make([]int, n)
	ls := make([]net.Listener, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ls[i], ports[i] = l, l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func TestCluster3(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node JetStream cluster: slow")
	}
	ports := freePorts(t, 3)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p))
	}
	base := t.TempDir()
	nodes := make([]*Node, 3)
	errc := make(chan error, 3)
	for i := range nodes {
		go func() {
			n, err := Start(Options{
				StoreDir:      filepath.Join(base, fmt.Sprint(i)),
				ServerName:    fmt.Sprintf("n%d", i),
				ClusterName:   "test",
				ClusterListen: routes[i],
				Routes:        routes,
			})
			nodes[i] = n
			errc <- err
		}()
	}
	for range nodes {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		t.Cleanup(n.Shutdown)
		if n.ClusterAddr() == nil {
			t.Fatal("no cluster listener")
		}
		if u := n.ClientURL(); !strings.HasPrefix(u, "nats://127.0.0.1:") {
			t.Fatalf("clustered client listener %q, want loopback", u)
		}
	}
	ctx := ctxT(t)
	// The meta leader election takes a moment after the routes form.
	checkFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := nodes[0].JetStream().CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3, Storage: jetstream.FileStorage,
		})
		return err
	})
	if _, err := nodes[1].JetStream().Publish(ctx, "r3.a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		s, err := nodes[2].JetStream().Stream(ctx, "R3")
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return fmt.Errorf("cluster info %+v", info.Cluster)
		}
		if info.State.Msgs != 1 {
			return fmt.Errorf("%d msgs", info.State.Msgs)
		}
		return nil
	})
}
