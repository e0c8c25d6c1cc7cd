package broker

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// user is a visitor or an agent, with every live connection it has. Its
// identity fields are fixed at creation; the rest is guarded by mu.
type user struct {
	id     string
	role   protocol.Role
	tenant string
	name   string
	skills []string // from the token: the agent's default skills

	mu          sync.Mutex
	conns       []*client           // live connections
	convs       map[string]struct{} // conversations it takes part in, closed ones until forgotten
	open        int                 // visitor: conversations not closed (counting pending opens)
	detachedAt  time.Time           // when the last connection closed; zero while connected
	offlineDone bool                // janitor: grace period handled since detachedAt
	goneDone    bool                // janitor: ResumeTTL handled since detachedAt
	deleted     bool                // removed from the registry
	local       bool                // cluster: connected to this node since it last left for another
	seenAt      time.Time           // cluster: when this node last wrote u's seen record (markSeen)
	sessions    int                 // sessions naming this user; guarded by registry.mu
}

// session is what a resume token names: a user and the time it was last
// connected through this session.
type session struct {
	id         string
	u          *user
	hook       atomic.Bool // the authentication hook signed it in (password): it resumes with its resume token alone
	conns      int         // guarded by u.mu
	detachedAt time.Time   // guarded by u.mu
}

// registry maps user ids to users and session ids to sessions. The
// durable broker keeps sessions in fastcache instead.
type registry struct {
	mu       sync.Mutex
	users    map[string]*user
	sessions map[string]*session
}

// connect adds cl to u's connections through session s and returns u's
// conversations, sorted. It fails if cl closed meanwhile or u was deleted.
func (u *user) connect(cl *client, s *session) ([]string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.deleted {
		return nil, false
	}
	cl.sess = s
	cl.user.Store(u)
	if cl.closed.Load() {
		// OnClose ran before the user was set: it saw nothing to remove.
		return nil, false
	}
	u.conns = append(u.conns, cl)
	u.local = true
	s.conns++
	u.detachedAt, s.detachedAt = time.Time{}, time.Time{}
	u.offlineDone, u.goneDone = false, false
	convs := make([]string, 0, len(u.convs))
	for id := range u.convs {
		convs = append(convs, id)
	}
	slices.Sort(convs)
	return convs, true
}

// disconnect removes cl from u's connections; it reports whether cl's
// session lost its last connection.
func (u *user) disconnect(cl *client, now time.Time) (sessionDetached bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	i := slices.Index(u.conns, cl)
	if i < 0 {
		return false
	}
	u.conns = slices.Delete(u.conns, i, i+1)
	if s := cl.sess; s != nil {
		if s.conns--; s.conns == 0 {
			s.detachedAt = now
			sessionDetached = true
		}
	}
	if len(u.conns) == 0 {
		u.detachedAt = now
	}
	return sessionDetached
}

// connected reports whether u has a live connection.
func (u *user) connected() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns) > 0
}

// gone is the event-loop side of OnClose.
func (b *Broker) gone(cl *client) {
	if cl.closed.Swap(true) {
		return
	}
	b.conns.Add(-1)
	b.release(cl)
	if u := cl.user.Load(); u != nil {
		if u.disconnect(cl, b.now()) {
			b.cacheSession(cl.sess, false)
		}
		if u.role == protocol.RoleVisitor && b.hooked() {
			b.emit(backends.Event{
				ID: b.bk.visitorEventID(u, "disconnected", cl), Type: backends.EventVisitorDisconnected,
				Tenant: u.tenant, VisitorID: u.id,
			})
		}
	}
}

// maxTenantLen bounds the tenant an anonymous visitor names (tokens bound
// theirs the same way).
const maxTenantLen = 128

// maxContext bounds each field of a visitor's context (region, language,
// page) and an agent's region, in bytes.
const maxContext = 512

// roleOf maps a token role to a protocol role.
func roleOf(s string) protocol.Role {
	switch s {
	case token.RoleVisitor:
		return protocol.RoleVisitor
	case token.RoleAgent:
		return protocol.RoleAgent
	}
	return protocol.RoleUnspecified
}

// hello authenticates a connection (home shard).
func (s *shard) hello(it *item) bool {
	b, cl, h, id := s.b, it.cl, &it.env.Hello, it.env.ID
	if cl.ready.Load() {
		s.fail(cl, id, protocol.CodeBadTransition, "hello already done")
		return true
	}
	now := b.now()
	// The session a resume token names, resolved once: from memory, else
	// rebuilt from the session cache, the cluster's record of a password
	// session, or the signed identity (restoreSession). Not on the first
	// pass of a password hello, which comes back here once the hook
	// answered.
	var sess *session
	var stored []string // conversations a restored session remembered
	hookResume := false // the session is one the hook signed in, still resumable
	if h.ResumeToken != "" && (h.Username == "" || it.ident != nil) {
		sess, stored, hookResume = b.resolveResume(h.ResumeToken, now)
	}
	var claims token.Claims
	var role protocol.Role
	byResume := false // a password session coming back with its resume token alone
	switch {
	case it.ident != nil:
		claims, role = *it.ident, roleOf(it.ident.Role)
	case h.Token == "" && h.Username == "" && hookResume:
		// Such a session resumes with the resume token alone: the client
		// keeps no password to sign in with again (a browser console
		// reloading its page), and the token is what the server gave the
		// client that did sign in. Sessions signed in with a token still
		// need it (its expiry applies).
		u := sess.u
		r := token.RoleVisitor
		if u.role == protocol.RoleAgent {
			r = token.RoleAgent
		}
		claims, role, byResume = token.Claims{Subject: u.id, Role: r, Tenant: u.tenant, Name: u.name, Skills: u.skills}, u.role, true
	case h.Token == "" && h.Username != "":
		if b.bk == nil || b.bk.o.Hook == nil {
			s.fail(cl, id, protocol.CodeUnauthenticated, "password sign-in is not enabled on this server")
			cl.peer.Close(ws.StatusPolicyViolation, "authentication failed")
			return true
		}
		if !s.authenticate(it) {
			s.fail(cl, id, protocol.CodeOverloaded, "authentication busy, retry later")
			cl.peer.Close(netpoll.StatusTryAgainLater, "authentication busy; retry in 1 s")
			return true
		}
		return false
	case h.Token != "":
		var err error
		claims, err = b.signer.Verify(h.Token, now)
		if err == nil {
			if role = roleOf(claims.Role); role == protocol.RoleUnspecified || claims.Subject == "" {
				err = token.ErrMalformed
			}
		}
		if err != nil {
			code, msg := protocol.CodeBadToken, "invalid token"
			if errors.Is(err, token.ErrExpired) {
				code, msg = protocol.CodeTokenExpired, "token expired"
			}
			s.fail(cl, id, code, msg)
			cl.peer.Close(ws.StatusPolicyViolation, "authentication failed")
			return true
		}
	case b.o.AllowAnonymous:
		if len(h.Tenant) > maxTenantLen {
			s.fail(cl, id, protocol.CodeTooLarge, "tenant too long")
			return true
		}
		role = protocol.RoleVisitor
	default:
		s.fail(cl, id, protocol.CodeUnauthenticated, "a token is required")
		cl.peer.Close(ws.StatusPolicyViolation, "authentication required")
		return true
	}

	verified := h.Token != "" || it.ident != nil || byResume
	// Refusals that name a definite cause (bad resume token, origin,
	// encryption required) come before the admission limits, so a client
	// is never told "busy, retry" for a hello that can never succeed.
	resumed := false
	if h.ResumeToken != "" {
		if sess == nil || sess.u.role != role || (verified && sess.u.id != claims.Subject) {
			s.fail(cl, id, protocol.CodeBadResumeToken, "unknown or expired resume token")
			return true
		}
		resumed = true
	}
	if !s.originAllowed(cl, id, sess, claims, h) || !s.secureHelloAllowed(cl, id, sess, claims, h) ||
		!s.admit(cl, id, claims, verified) {
		return true
	}
	if sess == nil {
		var u *user
		if verified {
			var ok bool
			if u, ok = b.reg.userFor(claims, role, now); !ok {
				s.fail(cl, id, protocol.CodeForbidden, "user id is taken by another role")
				cl.peer.Close(ws.StatusPolicyViolation, "authentication failed")
				return true
			}
		} else {
			tenant := strings.Clone(h.Tenant)
			if tenant == "" {
				tenant = token.DefaultTenant
			}
			u = b.reg.newVisitor(tenant, now)
		}
		sess = b.reg.newSession(u, it.ident != nil, now)
		b.sessions.Add(1)
	}
	u := sess.u
	convs, ok := u.connect(cl, sess)
	if !ok {
		if !cl.closed.Load() {
			s.fail(cl, id, protocol.CodeBadResumeToken, "session expired")
		}
		return true
	}
	if c := b.o.Cluster; c != nil {
		c.helloSeen(u, len(stored) > 0, now)
		if u.role == protocol.RoleAgent {
			// The agent may come from another node (or one that died):
			// its conversations are in its cluster-wide load.
			ctx, cancel := b.ioCtx()
			held, err := c.agentConvs(ctx, u.id, now)
			cancel()
			if err != nil {
				b.log.Warn("broker: agent load not read", "agent", u.id, "err", err)
			}
			stored = append(stored, held...)
		}
	}

	// Conversations a restored session remembered but this process has not
	// loaded yet: listed in the welcome, loaded by their shard on attach.
	var extra []string
	for _, c := range stored {
		if !slices.Contains(convs, c) {
			extra = append(extra, c)
		}
	}
	listed := convs
	if len(extra) > 0 {
		listed = slices.Concat(convs, extra)
		slices.Sort(listed)
	}
	b.cacheSession(sess, true)

	e := &s.out
	e.Kind = protocol.KindWelcome
	e.ID = id
	e.Welcome = protocol.Welcome{
		SessionID:       sess.id,
		ResumeToken:     b.signer.SignResume(resumeSubject(sess.id, u), now.Add(b.o.ResumeTokenTTL)),
		Role:            u.role,
		UserID:          u.id,
		HeartbeatMillis: b.o.HeartbeatMillis,
		MaxMessageBytes: b.o.MaxMessageBytes,
		ServerVersion:   b.o.ServerVersion,
		Resumed:         resumed,
		Conversations:   listed[:min(len(listed), protocol.MaxRepeated)],
	}
	b.sendTo(cl, e)
	e.Welcome = protocol.Welcome{}
	cl.ready.Store(true)
	if u.role == protocol.RoleVisitor && b.hooked() {
		b.emit(backends.Event{
			ID: b.bk.visitorEventID(u, "connected", cl), Type: backends.EventVisitorConnected,
			Tenant: u.tenant, VisitorID: u.id, Attributes: map[string]string{"resumed": strconv.FormatBool(resumed)},
		})
	}
	if est, ok := cl.peer.(establisher); ok {
		est.MarkEstablished() // stops netpoll's hello deadline
	}

	for _, conv := range convs {
		var cursor uint64
		for _, c := range h.Cursors {
			if c.ConversationID == conv {
				cursor = c.LastSeq
			}
		}
		b.shardFor(conv).mbox.post(ctrl{kind: ctrlAttach, conv: conv, cl: cl, seq: cursor, id: id})
	}
	if b.o.Conversations != nil {
		// After a restart the user's conversations are not in memory yet:
		// the session cache or a cursor naming one loads it from the
		// durable stores.
		for _, conv := range extra {
			var cursor uint64
			for _, c := range h.Cursors {
				if c.ConversationID == conv {
					cursor = c.LastSeq
				}
			}
			b.shardFor(conv).mbox.post(ctrl{kind: ctrlAttach, conv: conv, cl: cl, seq: cursor, id: id, load: true})
		}
		for _, cur := range h.Cursors {
			if cur.ConversationID == "" || slices.Contains(listed, cur.ConversationID) {
				continue
			}
			conv := strings.Clone(cur.ConversationID)
			b.shardFor(conv).mbox.post(ctrl{kind: ctrlAttach, conv: conv, cl: cl, seq: cur.LastSeq, id: id, load: true})
		}
	}
	return true
}

// admit asks Options.Limits for the hello of cl: the verified identity
// (tenant/subject) when there is a token, else an anonymous session of the
// client's address. A refusal answers CodeRateLimited and closes the
// connection: 1008 for a concurrency cap, 1013 for a rate (come back
// later).
func (s *shard) admit(cl *client, id uint64, claims token.Claims, verified bool) bool {
	lim := s.b.o.Limits
	if lim == nil {
		return true
	}
	// A hello after a failed one (say, a bad resume token) replaces what
	// the first took.
	s.b.release(cl)
	var a admission
	var ok bool
	var retry time.Duration
	var reason string
	if verified {
		tenant := claims.Tenant
		if tenant == "" {
			tenant = token.DefaultTenant
		}
		a.identity = tenant + "/" + claims.Subject
		ok, retry, reason = lim.AdmitIdentity(a.identity)
	} else {
		ra, _ := cl.peer.(interface{ RemoteAddr() netip.Addr })
		if ra == nil {
			return true // an in-process peer has no address to limit
		}
		a.ip = ra.RemoteAddr()
		ok, retry, reason = lim.AdmitAnonymous(a.ip)
	}
	if !ok {
		secs := int(retry / time.Second)
		s.fail(cl, id, protocol.CodeRateLimited, fmt.Sprintf("connection refused by the %s limit; retry in %d s", reason, secs))
		code := ws.StatusPolicyViolation
		if strings.HasSuffix(reason, "_rate") {
			code = netpoll.StatusTryAgainLater
		}
		cl.peer.Close(code, fmt.Sprintf("%s; retry in %d s", reason, secs))
		return false
	}
	cl.admitted.Store(&a)
	if cl.closed.Load() {
		s.b.release(cl) // OnClose ran meanwhile and found nothing to release
		return false
	}
	return true
}

// originAllowed applies Options.OriginAllowed to the tenant of the hello:
// the resumed session's, the token's, or an anonymous hello's.
func (s *shard) originAllowed(cl *client, id uint64, sess *session, claims token.Claims, h *protocol.Hello) bool {
	check := s.b.o.OriginAllowed
	if check == nil {
		return true
	}
	o, _ := cl.peer.(interface{ Origin() string })
	if o == nil || o.Origin() == "" {
		return true
	}
	tenant := helloTenant(sess, claims, h)
	if check(tenant, o.Origin()) {
		return true
	}
	s.fail(cl, id, protocol.CodeForbidden, "this web page's origin may not connect for tenant "+tenant)
	cl.peer.Close(ws.StatusPolicyViolation, "origin not allowed for the tenant")
	return false
}

// release returns what admit took for cl, once.
func (b *Broker) release(cl *client) {
	a := cl.admitted.Swap(nil)
	if a == nil {
		return
	}
	if a.identity != "" {
		b.o.Limits.ReleaseIdentity(a.identity)
	} else {
		b.o.Limits.ReleaseAnonymous(a.ip)
	}
}

// userByID returns the user id, creating it without connections (a
// conversation rebuilt after a restart names it); nil if the id exists
// with another role.
func (r *registry) userByID(id string, role protocol.Role, tenant string, now time.Time) *user {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u := r.users[id]; u != nil {
		if u.role != role {
			return nil
		}
		return u
	}
	u := &user{
		id:         strings.Clone(id),
		role:       role,
		tenant:     strings.Clone(tenant),
		convs:      make(map[string]struct{}),
		detachedAt: now,
	}
	r.users[u.id] = u
	return u
}

// lookupSession returns the session sid if it is still resumable.
func (r *registry) lookupSession(sid string, now time.Time, ttl time.Duration) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[sid]
	if s == nil {
		return nil
	}
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	if s.conns == 0 && now.Sub(s.detachedAt) >= ttl {
		return nil
	}
	return s
}

// userFor returns the user named by a token, creating it; false if the id
// exists with another role.
func (r *registry) userFor(c token.Claims, role protocol.Role, now time.Time) (*user, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u := r.users[c.Subject]; u != nil {
		return u, u.role == role
	}
	u := &user{
		id:         c.Subject,
		role:       role,
		tenant:     c.Tenant,
		name:       c.Name,
		skills:     slices.Clone(c.Skills),
		convs:      make(map[string]struct{}),
		detachedAt: now,
	}
	r.users[u.id] = u
	return u, true
}

// newVisitor creates an anonymous visitor.
func (r *registry) newVisitor(tenant string, now time.Time) *user {
	u := &user{
		id:         newID(prefixVisitor),
		role:       protocol.RoleVisitor,
		tenant:     tenant,
		convs:      make(map[string]struct{}),
		detachedAt: now,
	}
	r.mu.Lock()
	r.users[u.id] = u
	r.mu.Unlock()
	return u
}

// newSession creates a session for u; hook: the authentication hook
// signed u in (its id says so: prefixHookSession).
func (r *registry) newSession(u *user, hook bool, now time.Time) *session {
	prefix := prefixSession
	if hook {
		prefix = prefixHookSession
	}
	s := &session{id: newID(prefix), u: u, detachedAt: now}
	s.hook.Store(hook)
	r.mu.Lock()
	r.sessions[s.id] = s
	u.sessions++
	r.mu.Unlock()
	return s
}

// open creates a conversation for a visitor (home shard): it reserves one
// of the visitor's open slots and hands the creation to the
// conversation's shard.
func (s *shard) open(it *item) {
	b, cl, id := s.b, it.cl, it.env.ID
	u := cl.user.Load()
	switch {
	case u == nil:
		s.fail(cl, id, protocol.CodeNotHello, "send hello first")
		return
	case u.role != protocol.RoleVisitor:
		s.fail(cl, id, protocol.CodeForbidden, "only visitors open conversations")
		return
	}
	u.mu.Lock()
	full := u.open >= b.o.MaxOpenPerVisitor
	if !full {
		u.open++
	}
	u.mu.Unlock()
	if full {
		s.fail(cl, id, protocol.CodeAlreadyOpen, "a conversation is already open")
		return
	}
	o := &it.env.Open
	if o.Region == "" {
		o.Region = b.regionOf(cl)
	}
	conv := newID(prefixConversation)
	b.shardFor(conv).mbox.post(ctrl{
		kind: ctrlCreate,
		conv: conv,
		cl:   cl,
		u:    u,
		id:   id,
		open: &openReq{
			skill: strings.Clone(o.Skill), prio: o.Priority, text: strings.Clone(o.Text),
			region: clip(o.Region, maxContext), language: clip(o.Language, maxContext), page: clip(o.Page, maxContext),
		},
	})
}

// presence sets an agent's status and capacity (home shard) and echoes
// the effective presence.
func (s *shard) presence(it *item) {
	b, cl, id := s.b, it.cl, it.env.ID
	u := cl.user.Load()
	p := &it.env.Presence
	switch {
	case u == nil:
		s.fail(cl, id, protocol.CodeNotHello, "send hello first")
		return
	case u.role != protocol.RoleAgent:
		s.fail(cl, id, protocol.CodeForbidden, "only agents set presence")
		return
	case p.Status == protocol.StatusUnspecified:
		s.fail(cl, id, protocol.CodeMissingField, "status is required")
		return
	case !p.Status.Valid():
		s.fail(cl, id, protocol.CodeMalformed, "unknown status")
		return
	}
	capacity := min(int(p.Capacity), b.o.MaxAgentCapacity)
	var skills []string
	if len(p.Skills) > 0 {
		skills = make([]string, len(p.Skills))
		for i, sk := range p.Skills {
			skills[i] = strings.Clone(sk)
		}
	}
	r := b.disp.presence(u, p.Status, capacity, b.o.DefaultAgentCapacity, skills, clip(p.Region, maxContext))
	if c := b.o.Cluster; c != nil {
		// Cluster-wide: the presence other nodes see (refreshed by the
		// heartbeat) and the load the agent has on every node.
		ctx, cancel := b.ioCtx()
		if err := c.putPresence(ctx, u.id, &presenceRecord{Tenant: u.tenant, Status: r.status, Capacity: r.capacity, Skills: r.skills, Node: c.node}); err != nil {
			b.log.Warn("broker: presence not shared", "agent", u.id, "err", err)
		}
		if held, err := c.agentConvs(ctx, u.id, b.now()); err == nil {
			b.disp.setLoad(u.id, held)
		}
		cancel()
	}
	e := &s.out
	e.Kind = protocol.KindPresence
	e.ID = id
	e.Presence = protocol.Presence{AgentID: u.id, Status: r.status, Capacity: uint32(r.capacity), Skills: r.skills, Region: r.region}
	b.sendTo(cl, e)
	e.Presence = protocol.Presence{}
}

// janitor runs sweep periodically until Close.
func (b *Broker) janitor() {
	defer b.wg.Done()
	t := time.NewTicker(b.o.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
			b.sweep()
		}
	}
}

// departed is a user whose ResumeTTL ran out, with its conversations.
type departed struct {
	u     *user
	convs []string
}

// sweep expires sessions, takes agents offline after their grace period,
// hands the conversations of departed users to their shards, forgets idle
// visitors and asks every shard to forget old closed conversations. It
// decides under the registry lock and acts after releasing it.
func (b *Broker) sweep() {
	now := b.now()
	var offline []string
	var gone []departed
	r := &b.reg
	r.mu.Lock()
	for id, s := range r.sessions {
		s.u.mu.Lock()
		if s.conns == 0 && now.Sub(s.detachedAt) >= b.o.ResumeTTL {
			delete(r.sessions, id)
			s.u.sessions--
			b.sessions.Add(-1)
		}
		s.u.mu.Unlock()
	}
	for id, u := range r.users {
		u.mu.Lock()
		if len(u.conns) == 0 && b.o.Cluster != nil && !u.local {
			// Connected elsewhere in the cluster: that node decides.
			if u.role != protocol.RoleAgent && len(u.convs) == 0 && u.sessions == 0 && now.Sub(u.detachedAt) >= b.o.ResumeTTL {
				u.deleted = true
				delete(r.users, id)
			}
		} else if len(u.conns) == 0 {
			idle := now.Sub(u.detachedAt)
			if u.role == protocol.RoleAgent && idle >= b.o.OfflineGrace && !u.offlineDone {
				u.offlineDone = true
				offline = append(offline, u.id)
			}
			if idle >= b.o.ResumeTTL && !u.goneDone && len(u.convs) > 0 {
				u.goneDone = true
				d := departed{u: u, convs: make([]string, 0, len(u.convs))}
				for c := range u.convs {
					d.convs = append(d.convs, c)
				}
				gone = append(gone, d)
			}
			// Agents are kept: their number is bounded by the issued tokens
			// and the dispatcher refers to them.
			if u.role != protocol.RoleAgent && idle >= b.o.ResumeTTL && len(u.convs) == 0 && u.sessions == 0 {
				u.deleted = true
				delete(r.users, id)
			}
		}
		u.mu.Unlock()
	}
	r.mu.Unlock()

	for _, id := range offline {
		b.disp.setOffline(id)
	}
	if c := b.o.Cluster; c != nil {
		// Only the node a user last connected to decides its departure.
		kept := gone[:0]
		for _, d := range gone {
			ctx, cancel := b.ioCtx()
			if c.lastSeenHere(ctx, d.u) {
				kept = append(kept, d)
			} else {
				d.u.mu.Lock()
				d.u.local = false // left for another node
				d.u.mu.Unlock()
			}
			cancel()
		}
		gone = kept
	}
	for _, d := range gone {
		kind := ctrlVisitorGone
		if d.u.role == protocol.RoleAgent {
			kind = ctrlAgentGone
		}
		for _, c := range d.convs {
			b.shardFor(c).mbox.post(ctrl{kind: kind, conv: c, u: d.u})
		}
	}
	for _, s := range b.shards {
		s.mbox.post(ctrl{kind: ctrlSweep})
	}
}
