package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/crypto/atrest"
	"github.com/unigate/unigate/internal/config"
)

// atRestConfig is a gateway configuration on dataDir with the master key
// file outside it.
func atRestConfig(t *testing.T, dataDir, master string, enabled bool) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = ""
	cfg.DataDir = dataDir
	cfg.EventLoops = 2
	cfg.Crypto.AtRest.Enabled = enabled
	cfg.Crypto.AtRest.MasterKeyFile = master
	return cfg
}

// runGateway starts a gateway the test stops itself (restarts reuse the
// data directory).
func runGateway(t *testing.T, cfg config.Config) *gateway {
	t.Helper()
	g, err := newGateway(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	return g
}

func stopGateway(t *testing.T, g *gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = g.stop(ctx)
}

// visitorOpens opens a conversation whose first message is text and
// returns its id.
func visitorOpens(t *testing.T, g *gateway, text string) string {
	t.Helper()
	v := dialJSON(t, g.srv.Addr())
	v.send(map[string]any{"hello": map[string]any{}})
	v.next("welcome")
	v.send(map[string]any{"open": map[string]any{"text": text}})
	c := v.next("conversation")
	return c["conversationId"].(string)
}

// historyTexts replays a conversation through the gateway's store.
func historyTexts(t *testing.T, g *gateway, conv string) []string {
	t.Helper()
	var texts []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := g.hist.Replay(ctx, "default", conv, 0, 0, func(m *histstore.Message) bool {
		texts = append(texts, m.Text)
		return true
	})
	if err != nil {
		t.Fatalf("replay %s: %v", conv, err)
	}
	return texts
}

// storedInClear reports whether text appears in any stored message.
func storedInClear(t *testing.T, g *gateway, text string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := g.node.JetStream().Stream(ctx, histstore.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if bytes.Contains(m.Data, []byte(text)) {
			return true
		}
	}
	return false
}

func waitText(t *testing.T, g *gateway, conv, text string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		texts := historyTexts(t, g, conv)
		if len(texts) > 0 && texts[0] == text {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("conversation %s holds %q, want %q first", conv, texts, text)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGatewayAtRest runs the wired gateway through the life of encryption
// at rest: plain history, then enabled (plain stays readable, new texts
// sealed, the session snapshot survives the key migration), data key and
// master key rotation through "unigate keys", restart, a wrong or exposed
// master key, and disabled again.
func TestGatewayAtRest(t *testing.T) {
	dataDir := t.TempDir()
	master := filepath.Join(t.TempDir(), "secrets", "master.key")

	// 1. Plain.
	g := runGateway(t, atRestConfig(t, dataDir, master, false))
	plainConv := visitorOpens(t, g, "plain text one")
	waitText(t, g, plainConv, "plain text one")
	if _, err := os.Stat(master); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("master key created while disabled: %v", err)
	}
	stopGateway(t, g)

	// 2. Enabled: the master key is created, the session key wrapped and
	// the snapshot of run 1 restored.
	cfg := atRestConfig(t, dataDir, master, true)
	g = runGateway(t, cfg)
	if fi, err := os.Stat(master); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("master key file: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, sessionKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("clear session key left: %v", err)
	}
	if n := g.sess.Stats().Entries; n == 0 {
		t.Fatal("the session snapshot was not restored after the key migration")
	}
	sealedConv := visitorOpens(t, g, "sealed text two")
	waitText(t, g, sealedConv, "sealed text two")
	waitText(t, g, plainConv, "plain text one")
	if !storedInClear(t, g, "plain text one") || storedInClear(t, g, "sealed text two") {
		t.Fatal("want the old text in clear and the new one sealed")
	}

	// 3. The keys commands through the admin handler.
	admin := httptest.NewServer(g.atRest.adminHandler())
	defer admin.Close()
	addr := strings.TrimPrefix(admin.URL, "http://")
	t.Setenv("UNIGATE_CRYPTO_AT_REST_MASTER_KEY_FILE", master)
	keys := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(append(append([]string{"keys"}, args...), "-admin", addr, "-data-dir", dataDir), &out, &errb); code != 0 {
			t.Fatalf("keys %v: exit %d: %s%s", args, code, out.String(), errb.String())
		}
		return out.String()
	}
	st := keys("status")
	if !strings.Contains(st, "encryption at rest: on") || !strings.Contains(st, "data keys:          1") {
		t.Fatalf("status:\n%s", st)
	}
	first := g.atRest.ring.Masters().Current().ID()
	out := keys("rotate")
	if !strings.Contains(out, "active data key: ") {
		t.Fatalf("rotate: %s", out)
	}
	rotatedConv := visitorOpens(t, g, "after rotation three")
	waitText(t, g, rotatedConv, "after rotation three")
	out = keys("rotate-master")
	if !strings.Contains(out, "2 data keys rewrapped") || !strings.Contains(out, "no data key uses "+first) {
		t.Fatalf("rotate-master: %s", out)
	}
	resp, err := http.Post(admin.URL+"/keys/rotate", "text/plain", nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST without the command header: %v %v", resp, err)
	}
	resp.Body.Close()
	stopGateway(t, g)

	// 4. Restart with the rotated file: everything reads; the old master
	// line is no longer needed.
	m, err := atrest.LoadMasterKeyFile(master)
	if err != nil || len(m.IDs()) != 2 || m.IDs()[1] != first {
		t.Fatalf("master file after rotate-master: %v %v", m, err)
	}
	onlyNew := strings.Join(strings.Split(strings.TrimSpace(string(mustRead(t, master))), "\n")[:3], "\n") + "\n"
	if err := os.WriteFile(master, []byte(onlyNew), 0o600); err != nil {
		t.Fatal(err)
	}
	g = runGateway(t, cfg)
	for conv, text := range map[string]string{plainConv: "plain text one", sealedConv: "sealed text two", rotatedConv: "after rotation three"} {
		waitText(t, g, conv, text)
	}
	if n := g.sess.Stats().Entries; n == 0 {
		t.Fatal("the session snapshot was not restored after the master rotation")
	}
	stopGateway(t, g)

	// 5. A wrong master key refuses to start without retrying; so does an exposed
	// one.
	saved := mustRead(t, master)
	other := filepath.Join(t.TempDir(), "other.key")
	if _, _, err := atrest.LoadOrCreateMasterKeyFile(other); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	_, err = newGateway(atRestConfig(t, dataDir, other, true), slog.New(slog.NewTextHandler(&logs, nil)))
	if !errors.Is(err, atrest.ErrWrongMasterKey) || strings.Contains(logs.String(), "waiting for JetStream") {
		t.Fatalf("wrong master key: %v, want a refusal without retries; logs:\n%s", err, logs.String())
	}
	if err := os.Chmod(master, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := newGateway(cfg, slog.New(slog.DiscardHandler)); !errors.Is(err, atrest.ErrInsecureKeyFile) {
		t.Fatalf("0644 master key: %v", err)
	}
	os.Chmod(master, 0o600)
	if !bytes.Equal(saved, mustRead(t, master)) {
		t.Fatal("the master key file changed")
	}

	// 6. Disabled again: new texts in clear, sealed ones still read.
	g = runGateway(t, atRestConfig(t, dataDir, master, false))
	defer stopGateway(t, g)
	laterConv := visitorOpens(t, g, "plain again four")
	waitText(t, g, laterConv, "plain again four")
	waitText(t, g, sealedConv, "sealed text two")
	if !storedInClear(t, g, "plain again four") {
		t.Fatal("with at-rest off a new text is still sealed")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSessionKeyWrongMaster: a wrapped session key that the master key
// does not unwrap gives the refusal log line and an empty start, and a
// new wrapped key.
func TestSessionKeyWrongMaster(t *testing.T) {
	dataDir := t.TempDir()
	cfg := atRestConfig(t, dataDir, filepath.Join(t.TempDir(), "master.key"), true)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ar, err := openAtRest(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	s, err := openSessions(cfg, log, ar)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("session:1", []byte("value"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSnapshot(filepath.Join(dataDir, sessionSnapshotFile)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The same data directory with another master key.
	cfg.Crypto.AtRest.MasterKeyFile = filepath.Join(t.TempDir(), "master.key")
	ar2, err := openAtRest(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := openSessions(cfg, log, ar2)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, ok := s2.Get(nil, "session:1"); ok || s2.Stats().Entries != 0 {
		t.Fatal("sessions restored with another master key")
	}
	if !strings.Contains(logs.String(), "session snapshot refused") || !strings.Contains(logs.String(), "wrong master key") {
		t.Fatalf("logs:\n%s", logs.String())
	}
	// The new key is wrapped by the new master and works next time.
	if _, _, err := sessionstore.LoadOrCreateWrappedKey(ar2.wrappedSessionKeyPath(), "", ar2.masters); err != nil {
		t.Fatal(err)
	}
}

func TestAdminURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9090": "http://127.0.0.1:9090",
		":9090":          "http://127.0.0.1:9090",
		"0.0.0.0:9090":   "http://127.0.0.1:9090",
		"[::1]:9090":     "http://[::1]:9090",
		"admin.lan:9":    "http://admin.lan:9",
	} {
		if got, err := adminURL("", in); err != nil || got != want {
			t.Errorf("adminURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := adminURL("", ""); err == nil {
		t.Error("no admin listener accepted")
	}
	if got, _ := adminURL("10.0.0.1:1", ":9090"); got != "http://10.0.0.1:1" {
		t.Errorf("-admin ignored: %s", got)
	}
}
