package atrest

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker/natsnode"
)

func testCtx(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// startJS starts an embedded NATS server with JetStream on a temporary
// directory and returns its JetStream context (shut down at cleanup).
func startJS(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	n, err := natsnode.Start(natsnode.Options{StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Shutdown)
	return n.JetStream()
}

// newMasters returns a fresh random master key set of one key.
func newMasters(tb testing.TB) *MasterKeys {
	tb.Helper()
	material := make([]byte, MasterKeySize)
	rand.Read(material)
	mk, err := NewMasterKey(material)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := NewMasterKeys(mk)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// masterFile creates a master key file in a temporary directory.
func masterFile(tb testing.TB) (string, *MasterKeys) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "keys", "master.key")
	m, created, err := LoadOrCreateMasterKeyFile(path)
	if err != nil || !created {
		tb.Fatalf("LoadOrCreateMasterKeyFile: created=%v err=%v", created, err)
	}
	return path, m
}

func openRing(tb testing.TB, js jetstream.JetStream, m *MasterKeys, o Options) *Keyring {
	tb.Helper()
	k, err := OpenKeyring(testCtx(tb), js, m, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { k.Close() })
	return k
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func keyOf(tb testing.TB, sealed []byte) KeyID {
	tb.Helper()
	s, err := ParseSealed(sealed)
	if err != nil {
		tb.Fatal(err)
	}
	return s.KeyID
}
