// Package api is the integrator REST API of Unigate: JSON over HTTP under
// /api/v1 on the public listener (netpoll.WithHTTPHandler), authenticated
// with API keys from the configuration, each scoped to one tenant. See
// docs/api.md and docs/openapi.yaml.
//
//	keys, err := api.LoadKeys(cfg.API.Keys)
//	h := api.New(b, api.Options{Keys: keys})
//	srv, err := netpoll.New(b, netpoll.WithHTTPHandler(h), ...)
//
// Handlers run on netpoll's HTTP goroutines. They never touch conversation
// state: every request naming a conversation is posted to the
// conversation's shard through the broker's exported methods, which wait
// for the shard's reply within Options.Timeout.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/protocol"
)

// Key is one API key, resolved (its secret read from key_file).
type Key struct {
	Secret string
	Tenant string
	Read   bool // list and get conversations, history, agents
	Write  bool // post messages, transfer, close
}

// LoadKeys resolves the configured keys: key_file is read (surrounding
// white space trimmed). The configuration is expected to be validated.
func LoadKeys(keys config.APIKeys) ([]Key, error) {
	out := make([]Key, 0, len(keys))
	for i, k := range keys {
		secret := strings.TrimSpace(k.Key)
		if k.KeyFile != "" {
			b, err := os.ReadFile(k.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("api.keys[%d].key_file: %w", i, err)
			}
			secret = strings.TrimSpace(string(b))
		}
		if len(secret) < config.MinAPIKeyLen {
			return nil, fmt.Errorf("api.keys[%d]: the key must be at least %d characters", i, config.MinAPIKeyLen)
		}
		key := Key{Secret: secret, Tenant: k.Tenant}
		for _, s := range k.Scopes {
			switch s {
			case config.ScopeRead:
				key.Read = true
			case config.ScopeWrite:
				key.Write = true
			}
		}
		out = append(out, key)
	}
	return out, nil
}

// Options configures the API handler.
type Options struct {
	// Keys are the accepted API keys. None: every request gets 401.
	Keys []Key
	// Timeout bounds the broker's answer to one request. Default 10s.
	Timeout time.Duration
	// Logger receives unexpected errors. Default: discard.
	Logger *slog.Logger
}

// Paging bounds.
const (
	DefaultListLimit    = 50
	DefaultHistoryLimit = 100
	MaxLimit            = broker.MaxListLimit
	maxCursorLen        = 128
)

// Prefix is where the API is served.
const Prefix = "/api/v1"

type keyHash struct {
	sum [sha256.Size]byte
	key Key
}

// Handler serves /api/v1.
type Handler struct {
	b       *broker.Broker
	keys    atomic.Pointer[[]keyHash] // replaced whole by SetKeys
	timeout time.Duration
	log     *slog.Logger
	mux     *http.ServeMux
}

// New returns the handler of /api/v1. Other paths get a JSON 404.
func New(b *broker.Broker, o Options) *Handler {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{b: b, timeout: o.Timeout, log: o.Logger, mux: http.NewServeMux()}
	h.SetKeys(o.Keys)
	route := func(method, path string, write bool, fn func(http.ResponseWriter, *http.Request, Key)) {
		h.mux.HandleFunc(method+" "+Prefix+path, h.auth(write, fn))
	}
	route("GET", "/conversations", false, h.list)
	route("GET", "/conversations/{id}", false, h.get)
	route("GET", "/conversations/{id}/messages", false, h.history)
	route("POST", "/conversations/{id}/messages", true, h.post)
	route("POST", "/conversations/{id}/transfer", true, h.transfer)
	route("POST", "/conversations/{id}/close", true, h.close)
	route("GET", "/agents", false, h.agents)
	// The same paths with any other method: a JSON 405 (the mux's own
	// is plain text).
	for path, allow := range map[string]string{
		"/conversations":               "GET",
		"/conversations/{id}":          "GET",
		"/conversations/{id}/messages": "GET, POST",
		"/conversations/{id}/transfer": "POST",
		"/conversations/{id}/close":    "POST",
		"/agents":                      "GET",
	} {
		h.mux.HandleFunc(Prefix+path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "this path accepts "+allow)
		})
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
	})
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// SetKeys replaces the accepted API keys (a configuration reload: a key
// rotated in its key_file, a key added or withdrawn). Requests already
// authenticated finish with the key they had; every later one is checked
// against keys. Safe for concurrent use.
func (h *Handler) SetKeys(keys []Key) {
	hs := make([]keyHash, 0, len(keys))
	for _, k := range keys {
		hs = append(hs, keyHash{sum: sha256.Sum256([]byte(k.Secret)), key: k})
	}
	h.keys.Store(&hs)
}

// authenticate returns the key of the request's bearer token. Every
// configured key is compared (in constant time, over SHA-256 digests so
// lengths do not leak) whatever matches.
func (h *Handler) authenticate(r *http.Request) (Key, bool) {
	authz := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return Key{}, false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	var found Key
	match := 0
	keys := *h.keys.Load()
	for i := range keys {
		if subtle.ConstantTimeCompare(sum[:], keys[i].sum[:]) == 1 {
			found, match = keys[i].key, 1
		}
	}
	return found, match == 1
}

func (h *Handler) auth(write bool, fn func(http.ResponseWriter, *http.Request, Key)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		k, ok := h.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="unigate"`)
			writeError(w, http.StatusUnauthorized, protocol.CodeUnauthenticated, "a valid API key is required: Authorization: Bearer <key>")
			return
		}
		if (write && !k.Write) || (!write && !k.Read) {
			scope := config.ScopeRead
			if write {
				scope = config.ScopeWrite
			}
			writeError(w, http.StatusForbidden, protocol.CodeForbidden, "this API key lacks the "+scope+" scope")
			return
		}
		fn(w, r, k)
	}
}

func (h *Handler) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.timeout)
}

// Wire types.

type conversationJSON struct {
	ID            string `json:"id"`
	Tenant        string `json:"tenant"`
	State         string `json:"state"`
	VisitorID     string `json:"visitor_id"`
	AgentID       string `json:"agent_id,omitempty"`
	Skill         string `json:"skill,omitempty"`
	Priority      uint32 `json:"priority"`
	Reason        string `json:"reason,omitempty"`
	LastSeq       uint64 `json:"last_seq"`
	QueuePosition uint32 `json:"queue_position,omitempty"`
	QueueETA      uint32 `json:"queue_eta_seconds,omitempty"`
	CreatedMs     int64  `json:"created_at_ms,omitempty"`
	ClosedMs      int64  `json:"closed_at_ms,omitempty"`
	LeftMessages  uint32 `json:"left_messages,omitempty"`
	LastLeftMs    int64  `json:"last_left_at_ms,omitempty"`
}

func convJSON(c broker.ConversationInfo) conversationJSON {
	return conversationJSON{
		ID: c.ID, Tenant: c.Tenant, State: c.State.String(), VisitorID: c.VisitorID, AgentID: c.AgentID,
		Skill: c.Skill, Priority: c.Priority, Reason: c.Reason, LastSeq: c.LastSeq,
		QueuePosition: c.QueuePosition, QueueETA: c.QueueETA, CreatedMs: c.CreatedMilli, ClosedMs: c.ClosedMilli,
		LeftMessages: c.LeftMessages, LastLeftMs: c.LastLeftMilli,
	}
}

type messageJSON struct {
	Seq         uint64 `json:"seq"`
	SenderID    string `json:"sender_id"`
	SenderRole  string `json:"sender_role"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
	Text        string `json:"text"`
	TsMs        int64  `json:"ts_ms"`
}

type agentJSON struct {
	ID       string   `json:"id"`
	Status   string   `json:"status"`
	Capacity int      `json:"capacity"`
	Load     int      `json:"load"`
	Skills   []string `json:"skills"`
}

// states are the values of the list endpoint's state parameter.
var states = map[string]protocol.State{
	"bot":         protocol.StateBot,
	"queued":      protocol.StateQueued,
	"assigned":    protocol.StateAssigned,
	"transferred": protocol.StateTransferred,
	"closed":      protocol.StateClosed,
}

// Handlers.

func (h *Handler) list(w http.ResponseWriter, r *http.Request, k Key) {
	q := r.URL.Query()
	var f broker.ConversationFilter
	if s := q.Get("state"); s != "" {
		st, ok := states[s]
		if !ok {
			writeError(w, http.StatusBadRequest, protocol.CodeMalformed, "state must be bot, queued, assigned, transferred or closed")
			return
		}
		f.State = st
	}
	switch q.Get("left_message") {
	case "", "false":
	case "true":
		f.LeftMessage = true
	default:
		writeError(w, http.StatusBadRequest, protocol.CodeMalformed, "left_message must be true or false")
		return
	}
	limit, ok := limitParam(w, q.Get("limit"), DefaultListLimit)
	if !ok {
		return
	}
	cursor := q.Get("cursor")
	if len(cursor) > maxCursorLen {
		writeError(w, http.StatusBadRequest, protocol.CodeMalformed, "cursor is not one this API returned")
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	list, more, err := h.b.ListConversations(ctx, k.Tenant, f, cursor, limit)
	if err != nil {
		h.fail(w, err)
		return
	}
	resp := struct {
		Conversations []conversationJSON `json:"conversations"`
		NextCursor    string             `json:"next_cursor,omitempty"`
	}{Conversations: make([]conversationJSON, 0, len(list))}
	for _, c := range list {
		resp.Conversations = append(resp.Conversations, convJSON(c))
	}
	if more && len(list) > 0 {
		resp.NextCursor = list[len(list)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, k Key) {
	ctx, cancel := h.ctx(r)
	defer cancel()
	c, err := h.b.Conversation(ctx, k.Tenant, r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, convJSON(c))
}

func (h *Handler) history(w http.ResponseWriter, r *http.Request, k Key) {
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, protocol.CodeMalformed, "after must be a sequence number (0 or more)")
			return
		}
		after = v
	}
	limit, ok := limitParam(w, q.Get("limit"), DefaultHistoryLimit)
	if !ok {
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	msgs, last, err := h.b.History(ctx, k.Tenant, r.PathValue("id"), after, limit)
	if err != nil {
		h.fail(w, err)
		return
	}
	resp := struct {
		ConversationID string        `json:"conversation_id"`
		Messages       []messageJSON `json:"messages"`
		LastSeq        uint64        `json:"last_seq"`
		NextAfter      *uint64       `json:"next_after,omitempty"`
	}{ConversationID: r.PathValue("id"), Messages: make([]messageJSON, 0, len(msgs)), LastSeq: last}
	for _, m := range msgs {
		resp.Messages = append(resp.Messages, messageJSON{
			Seq: m.Seq, SenderID: m.SenderID, SenderRole: m.SenderRole.String(),
			ClientMsgID: m.ClientMsgID, Text: m.Text, TsMs: m.TimestampMilli,
		})
	}
	if n := len(msgs); n > 0 && msgs[n-1].Seq < last {
		next := msgs[n-1].Seq
		resp.NextAfter = &next
	} else if n == 0 && after < last {
		// Retention removed the messages after the cursor: move on.
		resp.NextAfter = &last
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) post(w http.ResponseWriter, r *http.Request, k Key) {
	var req struct {
		Text        string `json:"text"`
		Sender      string `json:"sender"`
		ClientMsgID string `json:"client_msg_id"`
	}
	if !readJSON(w, r, &req, false) {
		return
	}
	var role protocol.Role
	switch req.Sender {
	case "", "system":
		role = protocol.RoleSystem
	case "bot":
		role = protocol.RoleBot
	default:
		writeError(w, http.StatusBadRequest, protocol.CodeMalformed, `sender must be "system" or "bot"`)
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	id := r.PathValue("id")
	res, err := h.b.PostMessage(ctx, k.Tenant, id, role, req.ClientMsgID, req.Text)
	if err != nil {
		h.fail(w, err)
		return
	}
	status := http.StatusCreated
	if res.Duplicate {
		status = http.StatusOK
	}
	writeJSON(w, status, struct {
		ConversationID string `json:"conversation_id"`
		Seq            uint64 `json:"seq"`
		ClientMsgID    string `json:"client_msg_id,omitempty"`
		TsMs           int64  `json:"ts_ms"`
		Duplicate      bool   `json:"duplicate"`
	}{id, res.Seq, req.ClientMsgID, res.TimestampMilli, res.Duplicate})
}

func (h *Handler) transfer(w http.ResponseWriter, r *http.Request, k Key) {
	var req struct {
		ToAgentID string `json:"to_agent_id"`
		ToSkill   string `json:"to_skill"`
		Note      string `json:"note"`
	}
	if !readJSON(w, r, &req, false) {
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	c, err := h.b.Transfer(ctx, k.Tenant, r.PathValue("id"), req.ToAgentID, req.ToSkill, req.Note)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, convJSON(c))
}

func (h *Handler) close(w http.ResponseWriter, r *http.Request, k Key) {
	var req struct {
		Reason string `json:"reason"`
	}
	if !readJSON(w, r, &req, true) {
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	c, err := h.b.CloseConversation(ctx, k.Tenant, r.PathValue("id"), req.Reason)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, convJSON(c))
}

func (h *Handler) agents(w http.ResponseWriter, _ *http.Request, k Key) {
	list := h.b.Agents(k.Tenant)
	resp := struct {
		Agents []agentJSON `json:"agents"`
	}{Agents: make([]agentJSON, 0, len(list))}
	for _, a := range list {
		skills := a.Skills
		if skills == nil {
			skills = []string{}
		}
		resp.Agents = append(resp.Agents, agentJSON{ID: a.ID, Status: a.Status.String(), Capacity: a.Capacity, Load: a.Load, Skills: skills})
	}
	writeJSON(w, http.StatusOK, resp)
}

// Helpers.

func limitParam(w http.ResponseWriter, s string, def int) (int, bool) {
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxLimit {
		writeError(w, http.StatusBadRequest, protocol.CodeMalformed, fmt.Sprintf("limit must be a number from 1 to %d", MaxLimit))
		return 0, false
	}
	return n, true
}

// readJSON decodes the request body (one JSON object, no unknown fields)
// into dst; an empty body is {} when emptyOK.
func readJSON(w http.ResponseWriter, r *http.Request, dst any, emptyOK bool) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	switch {
	case errors.Is(err, io.EOF) && emptyOK:
		return true
	case err != nil:
		writeError(w, http.StatusBadRequest, protocol.CodeMalformed, "the body must be a JSON object with the documented fields: "+jsonProblem(err))
		return false
	case dec.More():
		writeError(w, http.StatusBadRequest, protocol.CodeMalformed, "the body must hold one JSON object")
		return false
	}
	return true
}

func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return "syntax error at byte " + strconv.FormatInt(se.Offset, 10)
	case errors.As(err, &te):
		return te.Field + " has the wrong type"
	case errors.Is(err, io.EOF):
		return "empty body"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// statusOf maps a protocol code to an HTTP status.
func statusOf(c protocol.Code) int {
	switch c {
	case protocol.CodeUnknownConversation:
		return http.StatusNotFound
	case protocol.CodeConversationClosed, protocol.CodeNoAgent, protocol.CodeBadTransition, protocol.CodeAlreadyOpen:
		return http.StatusConflict
	case protocol.CodeForbidden, protocol.CodeNotParticipant:
		return http.StatusForbidden
	case protocol.CodeUnauthenticated, protocol.CodeBadToken, protocol.CodeTokenExpired:
		return http.StatusUnauthorized
	case protocol.CodeSeqFromFuture:
		return http.StatusBadRequest
	case protocol.CodeRateLimited:
		return http.StatusTooManyRequests
	case protocol.CodeQueueFull, protocol.CodeOverloaded, protocol.CodeUnavailable, protocol.CodeShuttingDown, protocol.CodeUnconfirmed:
		return http.StatusServiceUnavailable
	case protocol.CodeInternal:
		return http.StatusInternalServerError
	}
	if c >= 1000 && c < 2000 {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func (h *Handler) fail(w http.ResponseWriter, err error) {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		h.log.Error("api: unexpected error", "err", err)
		writeError(w, http.StatusInternalServerError, protocol.CodeInternal, "internal error")
		return
	}
	if pe.Temporary {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, statusOf(pe.Code), pe.Code, sentence(pe.Message))
}

// sentence capitalises msg and ends it with a full stop.
func sentence(msg string) string {
	if msg == "" {
		return msg
	}
	msg = strings.ToUpper(msg[:1]) + msg[1:]
	if !strings.HasSuffix(msg, ".") {
		msg += "."
	}
	return msg
}

// errorBody is {"error":{"code":..., "name":..., "message":...}}: code is
// the protocol error code (a number) or, for errors of HTTP itself, a
// snake_case string; name is the code's name.
type errorBody struct {
	Error struct {
		Code    any    `json:"code"`
		Name    string `json:"name"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError writes an error body; code is a protocol.Code or a string.
func writeError(w http.ResponseWriter, status int, code any, msg string) {
	var b errorBody
	b.Error.Code = code
	switch c := code.(type) {
	case protocol.Code:
		b.Error.Code = int(c)
		b.Error.Name = c.String()
	case string:
		b.Error.Name = c
	}
	b.Error.Message = sentence(msg)
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":{"code":5000,"name":"internal","message":"Cannot encode the response."}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
