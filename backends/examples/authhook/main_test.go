package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/supervisor"
)

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func writeUsers(t *testing.T, path, extra string) {
	t.Helper()
	tok := sha256.Sum256([]byte("visitor-token-123"))
	data := fmt.Sprintf(`users:
  - username: alice
    tenant: acme
    password_bcrypt: '%s'
    display_name: Alice Wang
    roles: [agent, supervisor]
    skills: [billing, billing/refund]
  - username: carol
    tenant: acme
    password_bcrypt: '%s'
    roles: [agent]
    disabled: true
  - username: dave
    tenant: acme
    password_bcrypt: '%s'
    roles: [visitor]
%s
tokens:
  - sha256: %s
    id: v-42
    tenant: acme
    roles: [visitor]
`, hash(t, "correct horse"), hash(t, "carol-pw"), hash(t, "dave-pw"), extra, hex.EncodeToString(tok[:]))
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuthhookProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a plugin binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "authhook")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	users := filepath.Join(dir, "users.yaml")
	writeUsers(t, users, "")
	hook, err := supervisor.NewHook(supervisor.Config{Path: bin, Args: []string{"-users", users}, CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := hook.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	ok, err := hook.TryAuthenticate(ctx, backends.Credentials{Tenant: "acme", Role: "agent", Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	want := backends.Identity{OK: true, ID: "alice", Tenant: "acme", Roles: []string{"agent", "supervisor"},
		Skills: []string{"billing", "billing/refund"}, DisplayName: "Alice Wang"}
	if ok.OK != want.OK || ok.ID != want.ID || ok.Tenant != want.Tenant || ok.DisplayName != want.DisplayName ||
		!slices.Equal(ok.Roles, want.Roles) || !slices.Equal(ok.Skills, want.Skills) {
		t.Errorf("alice: %+v, want %+v", ok, want)
	}

	tests := []struct {
		name   string
		cred   backends.Credentials
		ok     bool
		reason string
	}{
		{"visitor token", backends.Credentials{Tenant: "acme", Role: "visitor", Token: "visitor-token-123"}, true, ""},
		{"visitor password", backends.Credentials{Tenant: "acme", Role: "visitor", Username: "dave", Password: "dave-pw"}, true, ""},
		{"wrong password", backends.Credentials{Tenant: "acme", Role: "agent", Username: "alice", Password: "wrong"}, false, ReasonInvalid},
		{"unknown user", backends.Credentials{Tenant: "acme", Role: "agent", Username: "mallory", Password: "x"}, false, ReasonInvalid},
		{"other tenant", backends.Credentials{Tenant: "globex", Role: "agent", Username: "alice", Password: "correct horse"}, false, ReasonInvalid},
		{"disabled", backends.Credentials{Tenant: "acme", Role: "agent", Username: "carol", Password: "carol-pw"}, false, ReasonDisabled},
		{"visitor as agent", backends.Credentials{Tenant: "acme", Role: "agent", Username: "dave", Password: "dave-pw"}, false, ReasonRole},
		{"visitor bad token", backends.Credentials{Tenant: "acme", Role: "visitor", Token: "guess"}, false, ReasonInvalid},
		{"token of another tenant", backends.Credentials{Tenant: "globex", Role: "visitor", Token: "visitor-token-123"}, false, ReasonInvalid},
		{"sso", backends.Credentials{Tenant: "acme", Role: "visitor", SSOAssertion: []byte("<saml/>")}, false, ReasonUnsupported},
	}
	for _, tc := range tests {
		id, err := hook.TryAuthenticate(ctx, tc.cred)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if id.OK != tc.ok || id.Reason != tc.reason {
			t.Errorf("%s: ok %v reason %q, want %v %q", tc.name, id.OK, id.Reason, tc.ok, tc.reason)
		}
	}

	// Adding a user to the file takes effect without a restart.
	pid := hook.PID()
	writeUsers(t, users, fmt.Sprintf("  - username: bob\n    tenant: acme\n    password_bcrypt: '%s'\n    roles: [agent]\n", hash(t, "bob-pw")))
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(users, later, later); err != nil {
		t.Fatal(err)
	}
	for {
		id, err := hook.TryAuthenticate(ctx, backends.Credentials{Tenant: "acme", Role: "agent", Username: "bob", Password: "bob-pw"})
		if err != nil {
			t.Fatal(err)
		}
		if id.OK {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("bob was never admitted after the users file changed")
		}
		time.Sleep(50 * time.Millisecond) // the hook re-checks the file at most once a second
	}
	if hook.PID() != pid {
		t.Errorf("the plugin restarted (pid %d → %d)", pid, hook.PID())
	}

	// A broken file keeps the last good directory.
	if err := os.WriteFile(users, []byte("users: [oops"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // past the re-check interval, not a timing assertion
	if id, err := hook.TryAuthenticate(ctx, backends.Credentials{Tenant: "acme", Username: "alice", Password: "correct horse"}); err != nil || !id.OK {
		t.Errorf("after a broken users file: %+v, %v", id, err)
	}
	if err := hook.TryEvent(ctx, backends.Event{ID: "e1", Type: backends.EventVisitorConnected}); err != nil {
		t.Errorf("event: %v", err)
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"unknown field": "users:\n  - username: a\n    tenant: t\n    password: plain\n",
		"no tenant":     "users:\n  - username: a\n    password_bcrypt: x\n",
		"not bcrypt":    "users:\n  - username: a\n    tenant: t\n    password_bcrypt: plain\n",
		"bad token":     "tokens:\n  - sha256: abc\n    id: x\n    tenant: t\n",
	} {
		p := filepath.Join(dir, "u.yaml")
		os.WriteFile(p, []byte(data), 0o600)
		if _, err := load(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
