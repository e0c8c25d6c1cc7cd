package broker

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// SessionCache keeps resumable sessions across restarts (in memory, with
// expiry; snapshotted by its owner). *sessionstore.Store implements it. It
// is a cache: a miss is never proof that a session did not exist.
type SessionCache interface {
	Put(key string, value []byte, ttl time.Duration) error
	Get(dst []byte, key string) ([]byte, bool)
	Delete(key string)
}

// sessionRecord is the cached value of a session: who it belongs to and
// the conversations it takes part in. Sequence numbers are not kept: the
// client's cursor (what it has really seen) decides the replay. A session
// the authentication hook signed in (Hook) keeps the identity the hook
// gave (display name, skills), so that it resumes with its resume token
// alone after a restart (the snapshot of the cache) or on another node
// (the cluster's copy, Cluster.putSession), for as long as the record
// lives: ResumeTTL from the session's last disconnect, as for any session.
type sessionRecord struct {
	UserID string        `json:"u"`
	Role   protocol.Role `json:"r"`
	Tenant string        `json:"t"`
	Convs  []string      `json:"c,omitempty"`
	Hook   bool          `json:"h,omitempty"`
	Name   string        `json:"n,omitempty"`
	Skills []string      `json:"k,omitempty"`
}

// resumeSubject is what a resume token signs: the session id and the
// identity it belongs to, so that a node which lost the session (crash,
// eviction) can rebuild it. Layout: sid \n role \n len(uid) \n uid tenant.
// When it would not fit in a resume token, only the session id is signed.
func resumeSubject(sid string, u *user) string {
	s := sid + "\n" + strconv.Itoa(int(u.role)) + "\n" + strconv.Itoa(len(u.id)) + "\n" + u.id + u.tenant
	if len(s) > token.MaxSessionIDLen {
		return sid
	}
	return s
}

// parseResumeSubject splits a resume subject; rec is nil for a subject
// that carries only the session id.
func parseResumeSubject(s string) (sid string, rec *sessionRecord) {
	sid, rest, ok := strings.Cut(s, "\n")
	if !ok {
		return s, nil
	}
	roleS, rest, ok1 := strings.Cut(rest, "\n")
	lenS, rest, ok2 := strings.Cut(rest, "\n")
	role, err1 := strconv.Atoi(roleS)
	n, err2 := strconv.Atoi(lenS)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || n <= 0 || n > len(rest) {
		return sid, nil
	}
	r := protocol.Role(role)
	if r != protocol.RoleVisitor && r != protocol.RoleAgent {
		return sid, nil
	}
	return sid, &sessionRecord{UserID: rest[:n], Role: r, Tenant: rest[n:]}
}

// cacheSession records sess when it loses its last connection (connected
// false): in the session cache (no-op without one) with ttl ResumeTTL,
// and, for a password session (sess.hook) in a cluster, in the cluster
// with the same lifetime: the node its client comes back to may be
// another one. At the welcome (connected true) only that cluster copy is
// written, with ttl ResumeTokenTTL: the node may die with the connection
// open. The local cache is not written then: nothing reads it for a
// session in memory, the process loses both in a crash, and every
// connection, including those a stop closes, comes through gone, which
// writes the record (with the conversations of the moment) before the
// snapshot is saved. That write cost a connect about 6 µs (json, SM4-GCM,
// fastcache; BenchmarkHello).
func (b *Broker) cacheSession(sess *session, connected bool) {
	sc, hook := b.o.Sessions, sess.hook.Load()
	cl := b.o.Cluster
	if connected {
		sc = nil
	}
	if sc == nil && (cl == nil || !hook) {
		return
	}
	u := sess.u
	rec := sessionRecord{UserID: u.id, Role: u.role, Tenant: u.tenant}
	if hook {
		rec.Hook, rec.Name, rec.Skills = true, u.name, u.skills
	}
	u.mu.Lock()
	for id := range u.convs {
		rec.Convs = append(rec.Convs, id)
	}
	u.mu.Unlock()
	slices.Sort(rec.Convs)
	if len(rec.Convs) > protocol.MaxRepeated {
		rec.Convs = rec.Convs[len(rec.Convs)-protocol.MaxRepeated:]
	}
	v, err := json.Marshal(&rec)
	if err != nil {
		return
	}
	ttl := b.o.ResumeTTL
	if connected {
		ttl = b.o.ResumeTokenTTL
	}
	if sc != nil {
		if err := sc.Put(sess.id, v, ttl); err != nil {
			b.log.Warn("broker: session not cached", "err", err)
		}
	}
	if cl != nil && hook {
		cl.putSession(sess.id, v, ttl)
	}
}

// resolveResume returns the session resume token rt names, if it is still
// resumable: from memory, or rebuilt (restoreSession) with the
// conversations its record remembered. hook reports a session the
// authentication hook signed in, which may resume with rt alone: one this
// process holds, or one whose cached or cluster record says so (never the
// identity signed into rt alone).
func (b *Broker) resolveResume(rt string, now time.Time) (sess *session, stored []string, hook bool) {
	subj, err := b.signer.VerifyResume(rt, now)
	if err != nil {
		return nil, nil, false
	}
	sid, fromToken := parseResumeSubject(subj)
	if sess = b.reg.lookupSession(sid, now, b.o.ResumeTTL); sess != nil &&
		(sess.hook.Load() || b.o.Cluster == nil || !strings.HasPrefix(sid, prefixHookSession)) {
		return sess, nil, sess.hook.Load()
	}
	// Not in memory, or in a cluster a password session this node rebuilt
	// without its record (a resume that came before the record): read
	// the records again.
	return b.restoreSession(sid, fromToken, now)
}

// restoreSession rebuilds a session this process does not know (it was
// lost in a restart or the registry dropped it) from the session cache,
// the cluster's record of a password session, or, within ResumeTTL of the
// process start (any time in a cluster), from the identity signed into
// the resume token. It returns the session, the conversations the record
// remembered, and whether the record says the authentication hook signed
// the session in.
func (b *Broker) restoreSession(sid string, fromToken *sessionRecord, now time.Time) (*session, []string, bool) {
	sc, cl := b.o.Sessions, b.o.Cluster
	if sc == nil && cl == nil {
		return nil, nil, false
	}
	matches := func(r *sessionRecord) bool {
		return r.UserID != "" && (fromToken == nil || fromToken.UserID == r.UserID && fromToken.Role == r.Role && fromToken.Tenant == r.Tenant)
	}
	var rec *sessionRecord
	if sc != nil {
		if v, ok := sc.Get(nil, sid); ok {
			var r sessionRecord
			if json.Unmarshal(v, &r) == nil && matches(&r) {
				rec = &r
			}
		}
	}
	if rec == nil && cl != nil && strings.HasPrefix(sid, prefixHookSession) {
		// A password session another node (or this one before a
		// restart) signed in: its record expires as the cache's would.
		ctx, cancel := b.ioCtx()
		r, err := cl.getSession(ctx, sid)
		cancel()
		if err != nil {
			b.log.Warn("broker: session record not read", "err", err)
		}
		if r != nil && matches(r) {
			rec = r
		}
	}
	hook := rec != nil && rec.Hook
	if rec == nil && fromToken != nil && (now.Sub(b.started) < b.o.ResumeTTL || b.o.Cluster != nil) {
		// A miss shortly after a start: the session may have been lost
		// in a crash (no snapshot). In a cluster, any time: the session
		// may live on another node (or one that died). The MAC-signed
		// token says who it was.
		rec = fromToken
	}
	if rec == nil || !validSessionID(sid) {
		return nil, nil, false
	}
	var u *user
	if hook {
		u = b.reg.userWith(rec, now)
	} else {
		u = b.reg.userByID(rec.UserID, rec.Role, rec.Tenant, now)
	}
	if u == nil {
		return nil, nil, false
	}
	sess, fresh := b.reg.sessionWithID(sid, u, now)
	if sess == nil {
		return nil, nil, false
	}
	if fresh {
		b.sessions.Add(1)
	}
	// Only a record says the hook signed the session in (an expired one
	// still in memory, rebuilt from the signed identity, is not one).
	sess.hook.Store(hook)
	convs := make([]string, 0, len(rec.Convs))
	for _, c := range rec.Convs {
		if validConvKey(c) {
			convs = append(convs, c)
		}
	}
	return sess, convs, hook
}

func validSessionID(sid string) bool {
	return len(sid) > len(prefixSession) && len(sid) <= 64 && strings.HasPrefix(sid, prefixSession)
}

// sessionWithID returns the session sid, creating it for u; nil if it
// exists for another user.
func (r *registry) sessionWithID(sid string, u *user, now time.Time) (*session, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.sessions[sid]; s != nil {
		if s.u != u {
			return nil, false
		}
		return s, false
	}
	s := &session{id: strings.Clone(sid), u: u, detachedAt: now}
	r.sessions[s.id] = s
	u.sessions++
	return s, true
}

// userWith returns the user a password session's record names, creating
// it with the identity the hook gave (display name, skills); nil if the id
// exists with another role. A user this process knows already keeps its
// identity (fixed at creation).
func (r *registry) userWith(rec *sessionRecord, now time.Time) *user {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u := r.users[rec.UserID]; u != nil {
		if u.role != rec.Role {
			return nil
		}
		return u
	}
	u := &user{
		id:         strings.Clone(rec.UserID),
		role:       rec.Role,
		tenant:     strings.Clone(rec.Tenant),
		name:       strings.Clone(rec.Name),
		skills:     slices.Clone(rec.Skills),
		convs:      make(map[string]struct{}),
		detachedAt: now,
	}
	r.users[u.id] = u
	return u
}
