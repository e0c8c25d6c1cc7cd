package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/crypto/atrest"
	"github.com/unigate/unigate/internal/config"
)

// atRest is the gateway's encryption at rest (crypto.at_rest): the master
// keys and the keyring, both nil when it was never enabled on this node.
// With it disabled but a master key file present, the keyring is opened
// read-only so that messages sealed earlier stay readable.
type atRest struct {
	cfg config.Config
	log *slog.Logger

	mu      sync.Mutex // masters, replaced by a rewrap
	masters *atrest.MasterKeys
	ring    *atrest.Keyring
}

// openAtRest loads the master key file: created when crypto.at_rest is
// enabled and it is missing, refused when group or others can read it.
func openAtRest(cfg config.Config, log *slog.Logger) (*atRest, error) {
	ar := &atRest{cfg: cfg, log: log}
	path := cfg.MasterKeyPath()
	if cfg.Crypto.AtRest.Enabled {
		m, created, err := atrest.LoadOrCreateMasterKeyFile(path)
		if err != nil {
			return nil, fmt.Errorf("crypto.at_rest.master_key_file: %w", err)
		}
		if created {
			log.Info("created a new master key for encryption at rest; back it up apart from the data, and give every node the same file",
				"file", path, "master", m.Current().ID())
		}
		ar.masters = m
		return ar, nil
	}
	m, err := atrest.LoadMasterKeyFile(path)
	switch {
	case err == nil:
		ar.masters = m
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("crypto.at_rest.master_key_file: %w", err)
	}
	return ar, nil
}

// openKeyring opens the keyring bucket; openStores calls it in its retry
// loop, before the history stream. Nothing to do without a master key.
func (ar *atRest) openKeyring(ctx context.Context, js jetstream.JetStream) error {
	if ar.masters == nil || ar.ring != nil {
		return nil
	}
	enabled := ar.cfg.Crypto.AtRest.Enabled
	ring, err := atrest.OpenKeyring(ctx, js, ar.masters, atrest.Options{
		Replicas:      ar.cfg.NATS.Replicas,
		ReadOnly:      !enabled,
		MasterKeyFile: ar.cfg.MasterKeyPath(),
		Logger:        ar.log.With("component", "atrest"),
	})
	if !enabled && errors.Is(err, atrest.ErrNoKeyring) {
		return nil // never enabled on this cluster
	}
	if err != nil {
		return err
	}
	ar.ring = ring
	if enabled {
		ar.log.Info("encryption at rest: message texts are sealed", "master", ar.masters.Current().ID())
	} else {
		ar.log.Info("encryption at rest is off for new messages; sealed ones stay readable", "master", ar.masters.Current().ID())
	}
	return nil
}

// currentMaster is the master key that wraps new keys, or nil when this
// node has no master key file.
func (ar *atRest) currentMaster() atrest.KeyWrapper {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	if ar.masters == nil {
		return nil
	}
	return ar.masters.Current()
}

// previousMasters are the older master keys of the master key file (a
// rotated file keeps them until every data key is rewrapped), newest
// first; nil without a master key file.
func (ar *atRest) previousMasters() []atrest.KeyWrapper {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	return olderKeys(ar.masters)
}

// olderKeys are the keys of m after the current one, newest first.
func olderKeys(m *atrest.MasterKeys) []atrest.KeyWrapper {
	if m == nil {
		return nil
	}
	var out []atrest.KeyWrapper
	for _, id := range m.IDs()[1:] {
		out = append(out, m.Get(id))
	}
	return out
}

// fatal reports errors that no retry of openStores can fix.
func (ar *atRest) fatal(err error) bool {
	return errors.Is(err, atrest.ErrWrongMasterKey) || errors.Is(err, atrest.ErrMalformed)
}

// histOptions adds the keyring to the history's options.
func (ar *atRest) histOptions(o histstore.Options) histstore.Options {
	if ar.ring != nil {
		o.Sealer, o.SealText = ar.ring, !ar.ring.ReadOnly()
	}
	return o
}

func (ar *atRest) close() {
	if ar.ring != nil {
		_ = ar.ring.Close()
	}
}

func (ar *atRest) wrappedSessionKeyPath() string {
	return filepath.Join(ar.cfg.DataDir, sessionKeyFile+".wrapped")
}

// sessionKey returns the session cache's seal key: in clear in
// <data_dir>/session.key, or, with encryption at rest, wrapped by the
// master key in session.key.wrapped. fresh reports that the wrapped key
// did not unwrap and was replaced: the snapshot, sealed with the lost
// key, is not tried.
func (ar *atRest) sessionKey() (key []byte, fresh bool, err error) {
	legacy := filepath.Join(ar.cfg.DataDir, sessionKeyFile)
	wrapped := ar.wrappedSessionKeyPath()
	ar.mu.Lock()
	masters := ar.masters
	ar.mu.Unlock()
	if masters == nil || !ar.cfg.Crypto.AtRest.Enabled && !exists(wrapped) {
		key, err = sessionstore.LoadOrCreateKey(legacy)
		return key, false, err
	}
	key, migrated, err := sessionstore.LoadOrCreateWrappedKey(wrapped, legacy, masters)
	switch {
	case err == nil:
		if migrated {
			ar.log.Info("session key wrapped with the master key", "file", wrapped, "removed", legacy)
		}
		return key, false, nil
	case errors.Is(err, atrest.ErrWrongMasterKey):
		ar.log.Error("session snapshot refused: its key does not unwrap with the master key; starting with no sessions", "err", err)
		key, err = sessionstore.NewWrappedKey(wrapped, masters)
		return key, true, err
	}
	return nil, false, err
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// adminCommandHeader must be on the admin API's POST requests: a browser
// page cannot send it cross-origin without a CORS preflight, which the
// admin server never answers.
const adminCommandHeader = "X-Unigate-Admin"

// keysStatus is what GET /keys answers.
type keysStatus struct {
	Enabled       bool   `json:"enabled"`
	MasterKeyFile string `json:"master_key_file"`
	atrest.Status
}

// keysResult is what the POST /keys/... commands answer.
type keysResult struct {
	Active    atrest.KeyID `json:"active,omitempty"`
	Rewrapped *int         `json:"rewrapped,omitempty"`
	Master    string       `json:"master,omitempty"`
	// Unused are master key ids of the file that no data key uses any
	// more: their lines can go once every node rewrapped.
	Unused []string `json:"unused,omitempty"`
	Error  string   `json:"error,omitempty"`
}

// adminHandler serves the keys commands on the admin listener:
// GET /keys, POST /keys/rotate, POST /keys/rewrap.
func (ar *atRest) adminHandler() http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	guard := func(h func(w http.ResponseWriter, r *http.Request)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if ar.ring == nil {
				reply(w, http.StatusConflict, keysResult{Error: "encryption at rest was never enabled here (crypto.at_rest.enabled)"})
				return
			}
			if r.Method == http.MethodPost && r.Header.Get(adminCommandHeader) != "keys" {
				reply(w, http.StatusForbidden, keysResult{Error: "missing header " + adminCommandHeader + ": keys"})
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /keys", guard(func(w http.ResponseWriter, r *http.Request) {
		st, err := ar.ring.Status(r.Context())
		if err != nil {
			reply(w, http.StatusServiceUnavailable, keysResult{Error: err.Error()})
			return
		}
		reply(w, http.StatusOK, keysStatus{Enabled: ar.cfg.Crypto.AtRest.Enabled, MasterKeyFile: ar.cfg.MasterKeyPath(), Status: st})
	}))
	mux.HandleFunc("POST /keys/rotate", guard(func(w http.ResponseWriter, r *http.Request) {
		id, err := ar.ring.Rotate(r.Context())
		if err != nil {
			reply(w, http.StatusConflict, keysResult{Error: err.Error()})
			return
		}
		reply(w, http.StatusOK, keysResult{Active: id})
	}))
	mux.HandleFunc("POST /keys/rewrap", guard(func(w http.ResponseWriter, r *http.Request) {
		res, err := ar.rewrap(r.Context())
		if err != nil {
			res.Error = err.Error()
			reply(w, http.StatusConflict, res)
			return
		}
		reply(w, http.StatusOK, res)
	}))
	return mux
}

// rewrap re-reads the master key file, rewraps every data key and this
// node's session key under its current master key, and reports which
// older master keys nothing uses any more.
func (ar *atRest) rewrap(ctx context.Context) (keysResult, error) {
	m, err := atrest.LoadMasterKeyFile(ar.cfg.MasterKeyPath())
	if err != nil {
		return keysResult{}, err
	}
	n, err := ar.ring.Rewrap(ctx, m)
	res := keysResult{Rewrapped: &n, Master: m.Current().ID()}
	if err != nil {
		return res, err
	}
	ar.mu.Lock()
	ar.masters = m
	ar.mu.Unlock()
	if wrapped := ar.wrappedSessionKeyPath(); exists(wrapped) {
		if _, _, err := sessionstore.LoadOrCreateWrappedKey(wrapped, "", m); err != nil {
			return res, fmt.Errorf("session key: %w", err)
		}
	}
	st, err := ar.ring.Status(ctx)
	if err != nil {
		return res, err
	}
	for _, id := range m.IDs()[1:] {
		if !slices.ContainsFunc(st.Keys, func(k atrest.KeyInfo) bool { return k.Master == id }) {
			res.Unused = append(res.Unused, id)
		}
	}
	ar.log.Info("encryption at rest: data keys rewrapped", "rewrapped", n, "master", res.Master)
	return res, nil
}

// keysCmd is "unigate keys": encryption-at-rest key management through
// the running gateway's admin listener.
func keysCmd(args []string, stdout, stderr io.Writer) error {
	const usage = `usage: unigate keys status|rotate|rotate-master|rewrap [-config FILE] [-admin HOST:PORT] [-json]
  status          data keys, the active one and its seal budget, master keys
  rotate          a new data key for new messages (every node follows); old ones stay for reading
  rotate-master   add a new master key at the top of the master key file, then rewrap
  rewrap          rewrap the data keys and this node's session key under the file's first master key`
	if len(args) == 0 || !slices.Contains([]string{"status", "rotate", "rotate-master", "rewrap"}, args[0]) {
		fmt.Fprintln(stderr, usage)
		return errUsage
	}
	sub := args[0]
	var admin *string
	var asJSON *bool
	cfg, _, err := loadConfig("keys "+sub, args[1:], stderr, func(fs *flag.FlagSet) {
		admin = fs.String("admin", "", "admin listener of the running gateway, `host:port` (default: admin.listen)")
		asJSON = fs.Bool("json", false, "print the gateway's JSON answer")
	})
	if err != nil {
		return err
	}
	base, err := adminURL(*admin, cfg.Admin.Listen)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: time.Minute}
	if sub == "rotate-master" {
		path := cfg.MasterKeyPath()
		m, err := atrest.RotateMasterKeyFile(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "new master key %s added to %s (previous: %s)\n", m.Current().ID(), path, strings.Join(m.IDs()[1:], ", "))
		fmt.Fprintln(stdout, "copy this file to every node before rewrapping there")
		sub = "rewrap"
	}
	method, path := http.MethodPost, "/keys/"+sub
	if sub == "status" {
		method, path = http.MethodGet, "/keys"
	}
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set(adminCommandHeader, "keys")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("the gateway's admin listener (%s) does not answer: is it running? %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if *asJSON {
		_, _ = stdout.Write(body)
	}
	if resp.StatusCode != http.StatusOK {
		var res keysResult
		if json.Unmarshal(body, &res) == nil && res.Error != "" {
			return fmt.Errorf("%s: %s", sub, res.Error)
		}
		return fmt.Errorf("%s: %s", sub, resp.Status)
	}
	if *asJSON {
		return nil
	}
	switch sub {
	case "status":
		var st keysStatus
		if err := json.Unmarshal(body, &st); err != nil {
			return err
		}
		printKeysStatus(stdout, st)
	case "rotate":
		var res keysResult
		if err := json.Unmarshal(body, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "active data key: %s (older data keys stay for reading)\n", res.Active)
	case "rewrap":
		var res keysResult
		if err := json.Unmarshal(body, &res); err != nil || res.Rewrapped == nil {
			return fmt.Errorf("rewrap: unexpected answer %q", body)
		}
		fmt.Fprintf(stdout, "%d data keys rewrapped under master key %s\n", *res.Rewrapped, res.Master)
		if len(res.Unused) > 0 {
			fmt.Fprintf(stdout, "no data key uses %s any more: once every node has run \"unigate keys rewrap\", remove those lines from the master key file on every node\n",
				strings.Join(res.Unused, ", "))
		}
	}
	return nil
}

// adminURL turns the admin listener's address into a base URL on this
// host (an unspecified address means loopback).
func adminURL(flagAddr, listen string) (string, error) {
	addr := flagAddr
	if addr == "" {
		addr = listen
	}
	if addr == "" {
		return "", errors.New("admin.listen is empty: the keys commands talk to the running gateway's admin listener (set it, or pass -admin)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

func printKeysStatus(w io.Writer, st keysStatus) {
	state := "on"
	if !st.Enabled {
		state = "off (sealed messages stay readable)"
	}
	fmt.Fprintf(w, "encryption at rest: %s\n", state)
	fmt.Fprintf(w, "bucket:             %s\n", st.Bucket)
	if st.Active != 0 {
		fmt.Fprintf(w, "active data key:    %s (%d of %d seals reserved)\n", st.Active, st.Reserved, st.MaxSealsPerKey)
	}
	fmt.Fprintf(w, "master key file:    %s\n", st.MasterKeyFile)
	for i, id := range st.Masters {
		role := "current"
		if i > 0 {
			role = "previous, unwrap only"
		}
		fmt.Fprintf(w, "  master %s  %s\n", id, role)
	}
	fmt.Fprintf(w, "data keys:          %d\n", len(st.Keys))
	for _, k := range st.Keys {
		mark := ""
		if k.Active {
			mark = "  active"
		}
		fmt.Fprintf(w, "  %s  created %s  wrapped by %s%s\n", k.ID, k.Created.Format(time.RFC3339), k.Master, mark)
	}
}
