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
// client's cursor (what it has really seen) decides the replay.
type sessionRecord struct {
	UserID string        `json:"u"`
	Role   protocol.Role `json:"r"`
	Tenant string        `json:"t"`
	Convs  []string      `json:"c,omitempty"`
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

// cacheSession writes sess to the session cache (no-op without one): with
// ttl ResumeTokenTTL while connected, ResumeTTL from its last disconnect.
func (b *Broker) cacheSession(sess *session, connected bool) {
	sc := b.o.Sessions
	if sc == nil {
		return
	}
	u := sess.u
	rec := sessionRecord{UserID: u.id, Role: u.role, Tenant: u.tenant}
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
	if err := sc.Put(sess.id, v, ttl); err != nil {
		b.log.Warn("broker: session not cached", "err", err)
	}
}

// restoreSession rebuilds a session this process does not know (it was
// lost in a restart or the registry dropped it) from the session cache or,
// within ResumeTTL of the process start, from the identity signed into the
// resume token. It returns the session and the conversations the cache
// remembered.
func (b *Broker) restoreSession(sid string, fromToken *sessionRecord, now time.Time) (*session, []string) {
	sc := b.o.Sessions
	if sc == nil && b.o.Cluster == nil {
		return nil, nil
	}
	var rec *sessionRecord
	if sc != nil {
		if v, ok := sc.Get(nil, sid); ok {
			var r sessionRecord
			if json.Unmarshal(v, &r) == nil && r.UserID != "" &&
				(fromToken == nil || fromToken.UserID == r.UserID && fromToken.Role == r.Role) {
				rec = &r
			}
		}
	}
	if rec == nil && fromToken != nil && (now.Sub(b.started) < b.o.ResumeTTL || b.o.Cluster != nil) {
		// A miss shortly after a start: the session may have been lost
		// in a crash (no snapshot). In a cluster, any time: the session
		// may live on another node (or one that died). The MAC-signed
		// token says who it was.
		rec = fromToken
	}
	if rec == nil || !validSessionID(sid) {
		return nil, nil
	}
	u := b.reg.userByID(rec.UserID, rec.Role, rec.Tenant, now)
	if u == nil {
		return nil, nil
	}
	sess, fresh := b.reg.sessionWithID(sid, u, now)
	if sess == nil {
		return nil, nil
	}
	if fresh {
		b.sessions.Add(1)
	}
	convs := make([]string, 0, len(rec.Convs))
	for _, c := range rec.Convs {
		if validConvKey(c) {
			convs = append(convs, c)
		}
	}
	return sess, convs
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
