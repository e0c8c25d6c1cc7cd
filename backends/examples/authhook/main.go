// Command authhook is an example Unigate hook plugin that authenticates
// visitors and agents against a users file, the way a plugin would against
// a directory (LDAP), an SSO provider or a CRM. See README.md.
//
//	authhook -users /etc/unigate/users.yaml
//
// Passwords are stored as bcrypt hashes, tokens as SHA-256 digests; the
// file is re-read when it changes, so accounts are added or disabled
// without restarting anything.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
)

// Directory is the users file.
type Directory struct {
	Users  []User  `yaml:"users"`
	Tokens []Token `yaml:"tokens"`
}

// User signs in with a username and password.
type User struct {
	Username    string   `yaml:"username"`
	Tenant      string   `yaml:"tenant"`
	Bcrypt      string   `yaml:"password_bcrypt"` // htpasswd -nbB, or bcrypt.GenerateFromPassword
	DisplayName string   `yaml:"display_name"`
	Roles       []string `yaml:"roles"` // "agent", "visitor", "supervisor", ...
	Skills      []string `yaml:"skills"`
	Disabled    bool     `yaml:"disabled"`
}

// Token is a bearer token issued to a visitor or an app.
type Token struct {
	SHA256      string   `yaml:"sha256"` // hex SHA-256 of the token
	ID          string   `yaml:"id"`
	Tenant      string   `yaml:"tenant"`
	DisplayName string   `yaml:"display_name"`
	Roles       []string `yaml:"roles"`
	Skills      []string `yaml:"skills"`
}

// Reasons given to refused callers; deliberately the same for an unknown
// user and a wrong password.
const (
	ReasonInvalid     = "invalid credentials"
	ReasonDisabled    = "account disabled"
	ReasonRole        = "role not allowed for this account"
	ReasonUnsupported = "credential type not supported"
)

// dummyHash is compared against when the user does not exist, so that the
// time taken does not tell whether a username is valid.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("unigate-authhook-dummy"), bcrypt.DefaultCost)

type directory struct {
	users  map[string]*User // tenant + "\x00" + username
	tokens map[[32]byte]*Token
}

type authHook struct {
	path string
	log  hclog.Logger

	mu      sync.Mutex // guards reloading
	dir     *directory
	modTime time.Time
	size    int64
	checked time.Time
}

func load(path string) (*directory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Directory
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := &directory{users: map[string]*User{}, tokens: map[[32]byte]*Token{}}
	for i := range d.Users {
		u := &d.Users[i]
		if u.Username == "" || u.Tenant == "" {
			return nil, fmt.Errorf("%s: users[%d]: username and tenant are required", path, i)
		}
		if _, err := bcrypt.Cost([]byte(u.Bcrypt)); err != nil {
			return nil, fmt.Errorf("%s: user %s: password_bcrypt: %w", path, u.Username, err)
		}
		out.users[u.Tenant+"\x00"+u.Username] = u
	}
	for i := range d.Tokens {
		t := &d.Tokens[i]
		sum, err := hex.DecodeString(t.SHA256)
		if err != nil || len(sum) != 32 || t.ID == "" || t.Tenant == "" {
			return nil, fmt.Errorf("%s: tokens[%d]: want a 64-hex-digit sha256, an id and a tenant", path, i)
		}
		out.tokens[[32]byte(sum)] = t
	}
	return out, nil
}

// current returns the directory, re-reading the file at most once a second
// when its size or modification time changed. A file that no longer parses
// is logged and the previous directory kept.
func (h *authHook) current() (*directory, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dir != nil && time.Since(h.checked) < time.Second {
		return h.dir, nil
	}
	h.checked = time.Now()
	st, err := os.Stat(h.path)
	if err != nil {
		if h.dir != nil {
			h.log.Error("users file unreadable; keeping the loaded one", "err", err)
			return h.dir, nil
		}
		return nil, err
	}
	if h.dir != nil && st.ModTime().Equal(h.modTime) && st.Size() == h.size {
		return h.dir, nil
	}
	d, err := load(h.path)
	if err != nil {
		if h.dir != nil {
			h.log.Error("users file invalid; keeping the loaded one", "err", err)
			return h.dir, nil
		}
		return nil, err
	}
	h.dir, h.modTime, h.size = d, st.ModTime(), st.Size()
	h.log.Info("users file loaded", "users", len(d.users), "tokens", len(d.tokens))
	return d, nil
}

func refuse(reason string) (backends.Identity, error) {
	return backends.Identity{OK: false, Reason: reason}, nil
}

// Authenticate implements backends.Hook. An error means the directory
// could not be read (the gateway then fails open or closed as configured).
func (h *authHook) Authenticate(ctx context.Context, cred backends.Credentials) (backends.Identity, error) {
	d, err := h.current()
	if err != nil {
		return backends.Identity{}, err
	}
	var id backends.Identity
	switch {
	case cred.Username != "":
		u := d.users[cred.Tenant+"\x00"+cred.Username]
		hash := dummyHash
		if u != nil {
			hash = []byte(u.Bcrypt)
		}
		if bcrypt.CompareHashAndPassword(hash, []byte(cred.Password)) != nil || u == nil {
			return refuse(ReasonInvalid)
		}
		if u.Disabled {
			return refuse(ReasonDisabled)
		}
		id = backends.Identity{ID: u.Username, Tenant: u.Tenant, Roles: u.Roles, Skills: u.Skills, DisplayName: u.DisplayName}
	case cred.Token != "":
		sum := sha256.Sum256([]byte(cred.Token))
		t := d.tokens[sum]
		// The map lookup is by digest, so it leaks nothing about the token;
		// compare again in constant time for good measure.
		if t == nil || subtle.ConstantTimeCompare(sum[:], mustHex(t.SHA256)) != 1 ||
			(cred.Tenant != "" && cred.Tenant != t.Tenant) {
			return refuse(ReasonInvalid)
		}
		id = backends.Identity{ID: t.ID, Tenant: t.Tenant, Roles: t.Roles, Skills: t.Skills, DisplayName: t.DisplayName}
	default:
		return refuse(ReasonUnsupported)
	}
	if cred.Role != "" && !slices.Contains(id.Roles, cred.Role) {
		return refuse(ReasonRole)
	}
	id.OK = true
	return id, nil
}

func mustHex(s string) []byte {
	b, _ := hex.DecodeString(s)
	return b
}

// Event implements backends.Hook: this hook only logs events (at debug).
func (h *authHook) Event(_ context.Context, ev backends.Event) error {
	if ev.ID == "" {
		return errors.New("event without an id")
	}
	if h.log.IsDebug() {
		h.log.Debug("event", "id", ev.ID, "type", ev.Type.String(), "conversation", ev.ConversationID)
	}
	return nil
}

func main() {
	users := flag.String("users", os.Getenv("AUTHHOOK_USERS"), "users `file` (or AUTHHOOK_USERS)")
	flag.Parse()
	log := sdk.Logger().Named("authhook")
	h := &authHook{path: *users, log: log}
	if _, err := h.current(); err != nil {
		log.Error("cannot load the users file", "err", err)
		os.Exit(1)
	}
	sdk.ServeHook(h)
}
