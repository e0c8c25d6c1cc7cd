package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/protocol"
)

// Cluster makes a Broker one node of several that share NATS (see
// "Cluster" in the package documentation and docs/broker.md). Open it with
// OpenCluster and pass it as Options.Cluster, with the same KVConvStore as
// Options.Conversations.
type Cluster struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	node     string
	prefix   string // "<SubjectPrefix>."
	conv     *KVConvStore
	load     jetstream.KeyValue // agent loads (no TTL); users' last node and password sessions (per-key TTL)
	presence jetstream.KeyValue // agent presence, expires after PresenceTTL
	nodes    jetstream.KeyValue // node heartbeats, expire after PresenceTTL
	inc      string             // this process's incarnation (a node name may restart)
	open     convIndex          // the cluster's conversations that are not closed (cluster_reap.go)
	loadPub  string             // "$KV.<load bucket>."
	ttl      time.Duration
	seenTTL  time.Duration // lifetime of a seen record (setResumeTTL)
	fwdSeq   atomic.Uint64 // ids of forwarded sends (cluster_write.go)
	grace    time.Duration // reserveGrace; tests shorten it

	// owed: agents whose slot this node failed to give back, and from
	// when their load may be pruned of it (the reservation's grace over):
	// the heartbeat does it (see Broker.unreserve).
	owedMu sync.Mutex
	owed   map[string]time.Time
}

// ClusterOptions configures OpenCluster.
type ClusterOptions struct {
	// Node names this node, unique in the cluster (default: random).
	Node string
	// SubjectPrefix starts the core-NATS subjects of message notices:
	// <prefix>.conv.<conversation> (default "unigate").
	SubjectPrefix string
	// Replicas of the agent buckets (default 1; 3 with 3+ NATS servers).
	Replicas int
	// PresenceTTL is how long an agent's presence, and a node's own
	// record, outlive the node's last heartbeat (default 15s; heartbeats
	// every third of it). A node whose record expired is dead: the
	// departures of its users are taken over (cluster_reap.go).
	PresenceTTL time.Duration
	// Conversations is the conversation bucket every node watches.
	Conversations *KVConvStore
}

// Buckets of a cluster.
const (
	DefaultLoadBucket     = "UNIGATE_AGENT_LOAD"
	DefaultPresenceBucket = "UNIGATE_PRESENCE"
	DefaultNodeBucket     = "UNIGATE_NODES"
	DefaultPresenceTTL    = 15 * time.Second
)

// OpenCluster creates (or updates) the agent buckets.
func OpenCluster(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, o ClusterOptions) (*Cluster, error) {
	if o.Conversations == nil {
		return nil, errors.New("broker: cluster needs the conversation store")
	}
	if o.Node == "" {
		o.Node = newID("n_")
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = "unigate"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.PresenceTTL <= 0 {
		o.PresenceTTL = DefaultPresenceTTL
	}
	if strings.ContainsAny(o.SubjectPrefix+o.Node, " \t\r\n*>") {
		return nil, fmt.Errorf("broker: bad cluster subject prefix or node name %q %q", o.SubjectPrefix, o.Node)
	}
	// The buckets are created concurrently: in a freshly formed
	// cluster each new R3 stream waits for its own leader election
	// (4–9 s in nats-server), so one after the other doubles the start.
	var (
		load, pres, nodes         jetstream.KeyValue
		loadErr, presErr, nodeErr error
		wg                        sync.WaitGroup
	)
	wg.Go(func() {
		// Per-key TTLs (users' seen records, password sessions) need
		// the stream's message TTLs, which LimitMarkerTTL turns on (an
		// existing bucket is updated in place; NATS 2.11 or later).
		load, loadErr = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: DefaultLoadBucket, Description: "Unigate agent loads, users' last node, password sessions",
			History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas, LimitMarkerTTL: loadMarkerTTL,
		})
	})
	wg.Go(func() {
		pres, presErr = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: DefaultPresenceBucket, Description: "Unigate agent presence (heartbeats)",
			History: 1, TTL: o.PresenceTTL, Storage: jetstream.FileStorage, Replicas: o.Replicas,
		})
	})
	wg.Go(func() {
		nodes, nodeErr = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: DefaultNodeBucket, Description: "Unigate node heartbeats",
			History: 1, TTL: o.PresenceTTL, Storage: jetstream.FileStorage, Replicas: o.Replicas,
		})
	})
	wg.Wait()
	if nodeErr != nil {
		return nil, fmt.Errorf("broker: bucket %s: %w", DefaultNodeBucket, nodeErr)
	}
	if loadErr != nil {
		return nil, fmt.Errorf("broker: bucket %s: %w", DefaultLoadBucket, loadErr)
	}
	if presErr != nil {
		return nil, fmt.Errorf("broker: bucket %s: %w", DefaultPresenceBucket, presErr)
	}
	return &Cluster{
		nc: nc, js: js, node: o.Node, prefix: o.SubjectPrefix + ".",
		conv: o.Conversations, load: load, presence: pres, nodes: nodes, inc: newID("i_"),
		loadPub: "$KV." + DefaultLoadBucket + ".", ttl: o.PresenceTTL, seenTTL: seenTTLFor(DefaultResumeTTL, o.PresenceTTL),
		open:  convIndex{m: make(map[string]indexed), visitors: make(map[string]int)},
		grace: reserveGrace, owed: make(map[string]time.Time),
	}, nil
}

// Node returns this node's name.
func (cl *Cluster) Node() string { return cl.node }

func (cl *Cluster) convSubject(conv string) string { return cl.prefix + "conv." + conv }

// userKey maps any user id to a valid key (ids are arbitrary bytes).
func userKey(kind, id string) string {
	return kind + "." + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// notice is a stored message announced to the other nodes holding the
// conversation (core NATS, at most once: a gap is repaired from History).
type notice struct {
	Node   string        `json:"n"`
	Seq    uint64        `json:"q"`
	Stream uint64        `json:"ss"`
	Sender string        `json:"s"`
	Role   protocol.Role `json:"r"`
	CMID   string        `json:"c,omitempty"`
	Text   string        `json:"t"`
	TS     int64         `json:"ts"`
}

// publish announces message m of c (stored at stream sequence ss).
func (cl *Cluster) publish(c *conversation, m *message, ss uint64) {
	b, err := json.Marshal(&notice{Node: cl.node, Seq: m.seq, Stream: ss, Sender: m.senderID, Role: m.senderRole, CMID: m.cmid, Text: m.text, TS: m.ts})
	if err != nil {
		return
	}
	// Non-blocking (buffered by the connection); a loss is a gap the
	// receivers repair.
	_ = cl.nc.Publish(cl.convSubject(c.id), b)
}

// agentLoad is an agent's cluster-wide load: the conversations it holds,
// each with the time its slot was reserved. Every change is a
// revision-checked update, so two nodes can never both take its last slot.
type agentLoad struct {
	Convs map[string]int64 `json:"c"`
}

// reserveGrace protects a fresh reservation (its conversation record is
// being written) from being pruned as stale by another node.
const reserveGrace = 10 * time.Second

var (
	errAgentFull     = errors.New("broker: agent has no free slot")
	errLoadContended = errors.New("broker: agent load contended")
)

func (cl *Cluster) getLoad(ctx context.Context, agent string) (*agentLoad, uint64, error) {
	e, err := cl.load.Get(ctx, userKey("l", agent))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return &agentLoad{Convs: map[string]int64{}}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var l agentLoad
	if err := json.Unmarshal(e.Value(), &l); err != nil || l.Convs == nil {
		l.Convs = map[string]int64{}
	}
	return &l, e.Revision(), nil
}

// putLoad writes agent's load if its revision is still rev (0: absent)
// and returns the new revision.
func (cl *Cluster) putLoad(ctx context.Context, agent string, l *agentLoad, rev uint64) (uint64, error) {
	b, err := json.Marshal(l)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return cl.load.Create(ctx, userKey("l", agent), b)
	}
	return cl.load.Update(ctx, userKey("l", agent), b, rev)
}

func isCASConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// prune drops the conversations agent no longer holds (closed, queued
// again, given to another agent, or forgotten), except fresh ones
// (reserved less than the grace ago: their record may still be being
// written). A conversation this node's watch shows held by agent is kept
// without reading its record; any other is read, and kept when the read
// fails. It returns the number dropped.
func (cl *Cluster) prune(ctx context.Context, agent string, l *agentLoad, now time.Time) int {
	dropped := 0
	for conv, at := range l.Convs {
		if now.Sub(time.UnixMilli(at)) < cl.grace {
			continue
		}
		if m, _, ok := cl.open.get(conv); ok && agentOf(m) == agent {
			continue
		}
		m, _, err := cl.conv.Get(ctx, conv)
		if err != nil && !errors.Is(err, ErrConvNotFound) {
			continue
		}
		if m == nil || m.AgentID != agent || m.State == protocol.StateClosed || m.State == protocol.StateQueued {
			delete(l.Convs, conv)
			dropped++
		}
	}
	return dropped
}

// slot is a reservation in an agent's load: when it was made (its
// identity) and the revision of the load record that holds it.
type slot struct {
	at  int64
	rev uint64
}

// casBackoff is the pause before the next attempt of a revision-checked
// update of an agent's load that conflicted, or whose read was older than
// a revision this node wrote: the KV reads of a node are answered by its
// own replica of the bucket (direct gets), which may not have applied
// the latest revisions yet (a few milliseconds behind the leader).
func casBackoff(attempt int) {
	time.Sleep(time.Duration(min(attempt+1, 8)) * time.Millisecond)
}

// reserve takes one of agent's slots for conv, unless it holds capacity
// conversations already (errAgentFull). added is false when conv had a
// slot already (another node's attempt, which the caller must not give
// back); s is the slot (see unreserve).
func (cl *Cluster) reserve(ctx context.Context, agent, conv string, capacity int, now time.Time) (added bool, s slot, err error) {
	for attempt := range 16 {
		l, rev, err := cl.getLoad(ctx, agent)
		if err != nil {
			return false, slot{}, err
		}
		if t, ok := l.Convs[conv]; ok {
			return false, slot{at: t, rev: rev}, nil
		}
		if len(l.Convs) >= capacity {
			cl.prune(ctx, agent, l, now)
			if len(l.Convs) >= capacity {
				return false, slot{}, errAgentFull
			}
		}
		s.at = now.UnixMilli()
		l.Convs[conv] = s.at
		s.rev, err = cl.putLoad(ctx, agent, l, rev)
		if isCASConflict(err) {
			casBackoff(attempt)
			continue
		}
		return err == nil, s, err
	}
	return false, slot{}, errLoadContended
}

// unreserve gives conv's slot of agent back: any slot (s.at 0), or only
// the one reserved at time s.at (a later reservation of the same pair is
// another attempt's). A read of the load older than s.rev (this node's
// replica has not applied the reservation yet) is read again: it would
// not show the slot, and the slot would stay. A slot that is not there is
// no error; a failure is (see Broker.unreserve for what the caller does
// with it).
func (cl *Cluster) unreserve(ctx context.Context, agent, conv string, s slot) error {
	for attempt := range 16 {
		l, rev, err := cl.getLoad(ctx, agent)
		if err != nil {
			return err
		}
		if rev < s.rev {
			casBackoff(attempt)
			continue
		}
		t, ok := l.Convs[conv]
		if rev == 0 || !ok || (s.at != 0 && t != s.at) {
			return nil
		}
		delete(l.Convs, conv)
		_, err = cl.putLoad(ctx, agent, l, rev)
		if !isCASConflict(err) {
			return err
		}
		casBackoff(attempt)
	}
	return errLoadContended
}

// agentConvs returns the conversations agent holds cluster-wide, pruned
// of stale slots (see pruneLoad).
func (cl *Cluster) agentConvs(ctx context.Context, agent string, now time.Time) ([]string, error) {
	convs, _, err := cl.pruneLoad(ctx, agent, now)
	return convs, err
}

// pruneLoad returns the conversations agent holds cluster-wide and how
// many stale slots it dropped (written back; a conflict means somebody
// else wrote a fresher load, which the next read sees).
func (cl *Cluster) pruneLoad(ctx context.Context, agent string, now time.Time) (convs []string, dropped int, err error) {
	l, rev, err := cl.getLoad(ctx, agent)
	if err != nil {
		return nil, 0, err
	}
	if rev != 0 {
		if dropped = cl.prune(ctx, agent, l, now); dropped > 0 {
			if _, err := cl.putLoad(ctx, agent, l, rev); err != nil && !isCASConflict(err) {
				return nil, 0, err
			}
		}
	}
	convs = make([]string, 0, len(l.Convs))
	for c := range l.Convs {
		convs = append(convs, c)
	}
	return convs, dropped, nil
}

// owe notes that agent's slot for a conversation could not be given
// back: its load is pruned (which drops a slot whose conversation the
// agent does not hold, once the slot is older than the grace) from due,
// the latest due of its owed slots.
func (cl *Cluster) owe(agent string, due time.Time) {
	cl.owedMu.Lock()
	if d, ok := cl.owed[agent]; !ok || due.After(d) {
		cl.owed[agent] = due
	}
	cl.owedMu.Unlock()
}

// owedDue returns the agents whose owed prune is due at now.
func (cl *Cluster) owedDue(now time.Time) []string {
	cl.owedMu.Lock()
	defer cl.owedMu.Unlock()
	var out []string
	for a, due := range cl.owed {
		if !now.Before(due) {
			out = append(out, a)
		}
	}
	return out
}

// paid forgets agent's owed prune, done at time at, unless a slot owed
// since is due later.
func (cl *Cluster) paid(agent string, at time.Time) {
	cl.owedMu.Lock()
	if due, ok := cl.owed[agent]; ok && !at.Before(due) {
		delete(cl.owed, agent)
	}
	cl.owedMu.Unlock()
}

// presenceRecord is an agent's presence as the cluster sees it.
type presenceRecord struct {
	Tenant   string          `json:"t"`
	Status   protocol.Status `json:"s"`
	Capacity int             `json:"c"`
	Skills   []string        `json:"k,omitempty"`
	Node     string          `json:"n"`
}

func (cl *Cluster) putPresence(ctx context.Context, agent string, p *presenceRecord) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = cl.presence.Put(ctx, userKey("a", agent), b)
	return err
}

// getPresence returns agent's presence; nil if it has none (never online,
// or its node stopped heartbeating PresenceTTL ago).
func (cl *Cluster) getPresence(ctx context.Context, agent string) (*presenceRecord, error) {
	e, err := cl.presence.Get(ctx, userKey("a", agent))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p presenceRecord
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return nil, nil
	}
	return &p, nil
}

// seenRecord says on which node (and which run of it: Inc) a user last
// connected or disconnected.
type seenRecord struct {
	Node      string `json:"n"`
	Inc       string `json:"i,omitempty"`
	Connected bool   `json:"c"`
	At        int64  `json:"at"`
}

// helloSeen records, at u's hello, that u connected to this node, if u
// can have something for its node to close or requeue when it leaves: an
// agent, or a visitor taking part in a conversation that is not closed
// (its own on this node, one its restored session names (restored), or
// one of the cluster's as this node's watch last saw them). An anonymous
// visitor's hello writes nothing: in a 100k-connection cluster those
// records were most of the memory per idle connection on each replica
// of UNIGATE_AGENT_LOAD. A visitor's open writes it (shard.create).
func (cl *Cluster) helloSeen(u *user, restored bool, now time.Time) {
	if u.role != protocol.RoleAgent && !restored && !u.hasOpen() && !cl.open.hasVisitor(u.id) {
		return
	}
	cl.markSeen(u, now)
}

// hasOpen reports whether u (a visitor) has a conversation on this node
// that is not closed.
func (u *user) hasOpen() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.open > 0
}

// markSeen records (asynchronously; one node's records stay in order)
// that u connected to this node. The record expires seenTTL after it was
// written: while u stays connected here the heartbeat writes it again
// (refreshSeen), so only the records of users gone for good expire.
func (cl *Cluster) markSeen(u *user, now time.Time) {
	b, _ := json.Marshal(&seenRecord{Node: cl.node, Inc: cl.inc, Connected: true, At: now.UnixMilli()})
	u.mu.Lock()
	u.seenAt = now
	u.mu.Unlock()
	cl.publishTTL(userKey("u", u.id), b, cl.seenTTL)
}

// publishTTL writes key of the load bucket asynchronously, to expire ttl
// (rounded up to whole seconds, at least one: the server's unit) later.
// A failure is not reported: the record is written again (a refresh, the
// next welcome or disconnect) or its reader falls back.
func (cl *Cluster) publishTTL(key string, value []byte, ttl time.Duration) {
	m := nats.NewMsg(cl.loadPub + key)
	m.Data = value
	_, _ = cl.js.PublishMsgAsync(m, jetstream.WithMsgTTL(wholeSeconds(ttl)))
}

func wholeSeconds(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}

// loadMarkerTTL is how long the load bucket keeps the marker of a key that
// expired (nothing watches the bucket; the server's minimum is 1s).
const loadMarkerTTL = 5 * time.Second

// seenTTLFor is the lifetime of a seen record for a broker's ResumeTTL:
// longer than anything reads one for (refreshSeen writes a connected
// user's record every ResumeTTL/2; its node decides its departure
// ResumeTTL after its disconnect; the reaper notices a dead node within
// PresenceTTL and a heartbeat, and departs its users ResumeTTL later, one
// ResumeTTL later again if the reaper itself died meanwhile). A record
// that expired names nobody: its user left for good everywhere.
func seenTTLFor(resumeTTL, presenceTTL time.Duration) time.Duration {
	return 3*resumeTTL + 4*presenceTTL
}

// setResumeTTL sizes the seen records for the broker's ResumeTTL (New).
func (cl *Cluster) setResumeTTL(d time.Duration) { cl.seenTTL = seenTTLFor(d, cl.ttl) }

// seenRefresh is how old a connected user's seen record may get before the
// heartbeat writes it again.
func seenRefresh(resumeTTL time.Duration) time.Duration { return resumeTTL / 2 }

// putSession writes the record of a password session (sessionRecord with
// Hook), to expire ttl later, for the other nodes: the client may resume
// there with its resume token alone (Broker.restoreSession).
func (cl *Cluster) putSession(sid string, rec []byte, ttl time.Duration) {
	cl.publishTTL("s."+sid, rec, ttl)
}

// getSession returns the record of password session sid; nil if there is
// none (never written, or expired).
func (cl *Cluster) getSession(ctx context.Context, sid string) (*sessionRecord, error) {
	e, err := cl.load.Get(ctx, "s."+sid)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r sessionRecord
	if json.Unmarshal(e.Value(), &r) != nil || !r.Hook {
		return nil, nil
	}
	return &r, nil
}

// lastSeenHere reports whether u's last connection in the cluster was to
// this node, so that this node, where u is gone, decides its departure
// (another node does if u reconnected there). A failed read says no.
func (cl *Cluster) lastSeenHere(ctx context.Context, u *user) bool {
	e, err := cl.load.Get(ctx, userKey("u", u.id))
	if err != nil {
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}
	var s seenRecord
	if json.Unmarshal(e.Value(), &s) != nil {
		return false
	}
	return s.Node == cl.node
}
