package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/protocol"
	"github.com/unigate/unigate/protocol/client"
)

// ticketGatewayConfig is a gateway with the secure channel (GM, one SM2
// identity) and tickets on, in its own data directory.
func ticketGatewayConfig(t *testing.T) (config.Config, crypto.Signer) {
	t.Helper()
	keyPath, sm2 := writeIdentity(t, crypto.SigSM2)
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = ""
	cfg.DataDir = t.TempDir()
	cfg.EventLoops = 2
	cfg.Backends.Bot = "off"
	cfg.Crypto.Enabled = true
	cfg.Crypto.IdentityKeys = []string{keyPath}
	cfg.Crypto.Suites = []string{"GM"}
	return cfg, sm2
}

// startTicketGateway starts a gateway on cfg; stop drains and stops it (once).
func startTicketGateway(t *testing.T, cfg config.Config) (*gateway, func()) {
	t.Helper()
	g, err := newGateway(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = g.stop(ctx)
		})
	}
	t.Cleanup(stop)
	return g, stop
}

// dialGM connects a Go client on the GM channel, pinned to sm2, and checks
// that its first handshake was a full one; it is closed when the test ends.
func dialGM(ctx context.Context, t *testing.T, addr string, sm2 crypto.Signer) *client.Client {
	t.Helper()
	c, err := client.Dial(ctx, client.Options{URL: "ws://" + addr + "/ws", Tenant: "default",
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, DrainSpread: 50 * time.Millisecond,
		Secure: &crypto.ClientConfig{Suites: []*crypto.Suite{crypto.GM}, ServerKeys: []crypto.Verifier{sm2.Public()}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if s := c.Secure(); s.Suite != "GM" || s.Resumed {
		t.Fatalf("first connection %+v, want a full GM handshake", s)
	}
	return c
}

// waitReconnect waits until c has reconnected once.
func waitReconnect(t *testing.T, c *client.Client) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.Stats().Reconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the client did not reconnect: %v", c.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func brokerCounter(g *gateway, name string) uint64 {
	return g.broker.Metrics().GetOrCreateCounter(name).Get()
}

// TestTicketsSurviveGatewayRestart: a Go client on the GM channel keeps
// its ticket while the gateway restarts (same data directory, same
// address); the new process resumes it, no signature (no full handshake
// counted), because the ticket keys came back from JetStream, wrapped by
// the ticket key file the first start created.
func TestTicketsSurviveGatewayRestart(t *testing.T) {
	cfg, sm2 := ticketGatewayConfig(t)
	g1, stop1 := startTicketGateway(t, cfg)
	addr := g1.srv.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dialGM(ctx, t, addr, sm2)
	fi, err := os.Stat(filepath.Join(cfg.DataDir, "ticket.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ticket key file: %v %v", fi, err)
	}

	stop1()
	cfg.Listen = addr
	g2, _ := startTicketGateway(t, cfg)
	waitReconnect(t, c)
	if s := c.Secure(); !s.Resumed {
		t.Fatalf("after the restart %+v, want a resumed channel", s)
	}
	if got := brokerCounter(g2, `unigate_broker_secure_handshakes_total{suite="GM",mode="resumed"}`); got != 1 {
		t.Fatalf("resumed handshakes on the new process: %d", got)
	}
	if got := brokerCounter(g2, `unigate_broker_secure_handshakes_total{suite="GM",mode="full"}`); got != 0 {
		t.Fatalf("full (signed) handshakes on the new process: %d", got)
	}
	if _, err := c.Open(ctx, protocol.Open{Text: "after the restart"}); err != nil {
		t.Fatalf("chat over the resumed channel: %v", err)
	}
}

// TestTicketsWrappedByMasterKey: with encryption at rest the master key
// wraps the ticket keys (the ring is named after it) and no ticket key
// file is created.
func TestTicketsWrappedByMasterKey(t *testing.T) {
	cfg, _ := ticketGatewayConfig(t)
	cfg.Crypto.AtRest.Enabled = true
	g, _ := startTicketGateway(t, cfg)
	master := g.atRest.currentMaster()
	if master == nil || g.tickets == nil {
		t.Fatal("no master key or no tickets")
	}
	if name := g.tickets.ring.Name(); !strings.Contains(name, master.ID()) {
		t.Fatalf("ring %s is not wrapped by master key %s", name, master.ID())
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "ticket.key")); !os.IsNotExist(err) {
		t.Fatalf("a ticket key file was created next to the master key: %v", err)
	}
}

// TestTicketsSurviveMasterKeyRotation: the master key file is rotated
// while the gateway is down ("unigate keys rotate-master" adds a new
// current key and keeps the old one); the restarted gateway names its
// ring after the new key but carries the old ring's keys over, so the
// client's ticket still resumes without a signature.
func TestTicketsSurviveMasterKeyRotation(t *testing.T) {
	cfg, sm2 := ticketGatewayConfig(t)
	cfg.Crypto.AtRest.Enabled = true
	g1, stop1 := startTicketGateway(t, cfg)
	addr, oldMaster := g1.srv.Addr(), g1.atRest.currentMaster().ID()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dialGM(ctx, t, addr, sm2)

	stop1()
	m, err := atrest.RotateMasterKeyFile(cfg.MasterKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	if m.Current().ID() == oldMaster {
		t.Fatal("the rotation kept the master key")
	}
	cfg.Listen = addr
	g2, _ := startTicketGateway(t, cfg)
	if name := g2.tickets.ring.Name(); !strings.Contains(name, m.Current().ID()) {
		t.Fatalf("ring %s is not wrapped by the new master key %s", name, m.Current().ID())
	}
	waitReconnect(t, c)
	if s := c.Secure(); !s.Resumed {
		t.Fatalf("after the master key rotation %+v, want a resumed channel", s)
	}
	if got := brokerCounter(g2, `unigate_broker_secure_handshakes_total{suite="GM",mode="full"}`); got != 0 {
		t.Fatalf("full (signed) handshakes after the rotation: %d", got)
	}
	if _, err := c.Open(ctx, protocol.Open{Text: "after the rotation"}); err != nil {
		t.Fatalf("chat over the resumed channel: %v", err)
	}
}
