package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/broker/sessionstore"
	"github.com/unigate/unigate/broker/ticketstore"
	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// Resumption across the cluster (docs/crypto.md): broker nodes sharing one
// JetStream, each with its own NATS connection, session cache, ticket key
// ring (broker/ticketstore.Ring) and seen set (ticketstore.SeenSet), and
// the same identity keys, as every node of a deployment has.

// countSigner counts a node's signatures: a resumed handshake makes none.
type countSigner struct {
	crypto.Signer
	n *atomic.Int64
}

func (s countSigner) Sign(msg []byte) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(msg)
}

// ticketIdentity is the deployment's SM2 identity (the GM suite).
type ticketIdentity struct {
	sm2     crypto.Signer
	wrapper atrest.KeyWrapper // the at-rest master key every node has
}

func newTicketIdentity(t *testing.T) ticketIdentity {
	t.Helper()
	sm2, err := crypto.GenerateSigner(crypto.SigSM2)
	if err != nil {
		t.Fatal(err)
	}
	material := make([]byte, atrest.MasterKeySize)
	rand.Read(material)
	w, err := atrest.NewMasterKey(material)
	if err != nil {
		t.Fatal(err)
	}
	return ticketIdentity{sm2: sm2, wrapper: w}
}

func (id ticketIdentity) client(sess *crypto.Session) *crypto.ClientConfig {
	return &crypto.ClientConfig{Suites: []*crypto.Suite{crypto.GM}, ServerKeys: []crypto.Verifier{id.sm2.Public()}, Session: sess}
}

// ticketNode is one gateway node of the test cluster.
type ticketNode struct {
	name     string
	nc       *nats.Conn
	ring     *ticketstore.Ring
	seenSet  *metrics.Set // the shared seen set's metrics
	env      *testEnv
	sigs     atomic.Int64
	stopOnce sync.Once
	stopFn   func()
}

// ticketRingLead is how long before its activation a rotated key is
// published in these tests.
const ticketRingLead = 200 * time.Millisecond

// startTicketNode starts a node on n: broker + netpoll server with the
// secure channel, tickets shared through n's JetStream.
// startTicketPair starts an embedded NATS server and two broker nodes A
// and B on it sharing one server identity.
func startTicketPair(t *testing.T) (*natsnode.Node, ticketIdentity, *ticketNode, *ticketNode) {
	t.Helper()
	n, err := natsnode.Start(natsnode.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	id := newTicketIdentity(t)
	return n, id, startTicketNode(t, n, "A", id), startTicketNode(t, n, "B", id)
}

func startTicketNode(t *testing.T, n *natsnode.Node, name string, id ticketIdentity) *ticketNode {
	t.Helper()
	tn := &ticketNode{name: name, seenSet: metrics.NewSet()}
	nc, err := nats.Connect("", nats.InProcessServer(n.Server()), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	tn.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seen, err := ticketstore.OpenSeenSet(ctx, js, ticketstore.SeenOptions{Metrics: tn.seenSet, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	keyring, err := crypto.NewTicketKeyring(crypto.SM4GCM, 2)
	if err != nil {
		t.Fatal(err)
	}
	tn.ring, err = ticketstore.OpenRing(ctx, js, keyring, ticketstore.RingOptions{
		Wrapper: id.wrapper, Rotation: time.Hour, Lifetime: time.Hour, Lead: ticketRingLead,
	})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := sessionstore.New(sessionstore.Options{}, bytes.Repeat([]byte{3}, sessionstore.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &crypto.ServerConfig{
		Suites:         []*crypto.Suite{crypto.GM},
		Identities:     []crypto.Signer{countSigner{Signer: id.sm2, n: &tn.sigs}},
		Tickets:        keyring,
		Seen:           seen,
		TicketLifetime: time.Hour,
	}
	e := &testEnv{t: t, signer: testSigner(t)}
	b, err := New(Options{Signer: e.signer, AllowAnonymous: true, Sessions: sess, Secure: &SecureOptions{Server: cfg}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := netpoll.New(b, netpoll.WithAddr("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	e.b, e.srv = b, srv
	tn.env = e
	tn.stopFn = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Stop(ctx)
		b.Close()
		_ = tn.ring.Close()
		nc.Close()
		sess.Close()
	}
	t.Cleanup(tn.stop)
	return tn
}

func (tn *ticketNode) stop() { tn.stopOnce.Do(tn.stopFn) }

func (tn *ticketNode) handshakes(mode string) uint64 {
	return counter(tn.env.b, `unigate_broker_secure_handshakes_total{suite="GM",mode="`+mode+`"}`)
}

func (tn *ticketNode) refused(reason string) uint64 {
	return counter(tn.env.b, `unigate_broker_secure_tickets_refused_total{reason="`+reason+`"}`)
}

func (tn *ticketNode) sharedChecks(result string) uint64 {
	return tn.seenSet.GetOrCreateCounter(`unigate_ticketstore_seen_total{result="` + result + `"}`).Get()
}

// ticketConn is a client connection after its handshake.
type ticketConn struct {
	r       *rawSecure
	hello   []byte // the ClientHello as sent (what an eavesdropper can replay)
	resumed bool
	next    *crypto.Session // the ticket for the next connection
}

// connect runs the GM handshake with tn (resuming sess when not nil),
// takes the NewSessionTicket and checks that the channel carries a hello.
func (tn *ticketNode) connect(t *testing.T, id ticketIdentity, sess *crypto.Session) *ticketConn {
	t.Helper()
	r := tn.env.dialRaw(pbProto)
	hs, err := crypto.NewClientHandshake(id.client(sess))
	if err != nil {
		t.Fatal(err)
	}
	tc := &ticketConn{r: r, hello: hs.Hello()}
	r.writeSecure(tc.hello)
	fin, conn, err := hs.HandleServerHello(r.readSecure())
	if err != nil {
		t.Fatalf("%s: server hello: %v", tn.name, err)
	}
	r.writeSecure(fin)
	r.conn, tc.resumed = conn, conn.Resumed()
	nst := r.readSecure()
	if tc.next, err = hs.HandleNewSessionTicket(nst); err != nil {
		t.Fatalf("%s: new session ticket: %v", tn.name, err)
	}
	if w := r.request(protocol.Envelope{Kind: protocol.KindHello}); w.Kind != protocol.KindWelcome {
		t.Fatalf("%s: hello over the channel answered %s", tn.name, w.Kind)
	}
	return tc
}

// ticketKey is the id of the key that sealed a session's ticket (its first
// four bytes, docs/crypto.md).
func ticketKey(s *crypto.Session) uint32 { return binary.BigEndian.Uint32(s.Ticket) }

// want compares a node's counter deltas.
func wantCount(t *testing.T, what string, got, want uint64) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: %d, want %d", what, got, want)
	}
}

// TestTicketsAcrossNodes: a ticket node A issued resumes on node B with no
// signature; replayed on A afterwards it is refused (metric "reused"; the
// honest client gets a full handshake); the same ClientHello replayed byte
// for byte by an eavesdropper gets a full ServerHello it cannot finish
// (close 1002, crypto 7); a ticket a node saw used is refused without asking
// the cluster.
func TestTicketsAcrossNodes(t *testing.T) {
	_, id, a, b := startTicketPair(t)

	first := a.connect(t, id, nil)
	if first.resumed || a.sigs.Load() != 1 {
		t.Fatalf("first connection: resumed %v, %d signatures on A", first.resumed, a.sigs.Load())
	}

	// A's ticket on B: resumed, no signature.
	onB := b.connect(t, id, first.next)
	if !onB.resumed {
		t.Fatal("A's ticket did not resume on B")
	}
	wantCount(t, "B's resumed handshakes", b.handshakes("resumed"), 1)
	wantCount(t, "B's signatures", uint64(b.sigs.Load()), 0)
	wantCount(t, "B's shared checks (fresh)", b.sharedChecks("fresh"), 1)

	// The same ticket back on A: refused, a full handshake instead.
	replay := a.connect(t, id, first.next)
	if replay.resumed {
		t.Fatal("a ticket B used resumed again on A")
	}
	wantCount(t, "A's refusals (reused)", a.refused("reused"), 1)
	wantCount(t, "A's resumed handshakes", a.handshakes("resumed"), 0)
	wantCount(t, "A's signatures", uint64(a.sigs.Load()), 2)

	// An eavesdropper replays the ClientHello of B's resumption on A: the
	// ticket is refused, and without the client's key share it cannot
	// finish the full handshake it gets instead.
	eve := a.env.dialRaw(pbProto)
	eve.writeSecure(onB.hello)
	if sh := eve.readSecure(); len(sh) < 2 || sh[0] != 2 {
		t.Fatalf("the replayed hello got %x", sh)
	}
	forged := append([]byte{3, 32}, make([]byte, 32)...)
	eve.writeSecure(forged)
	eve.waitClosed(websocket.CloseProtocolError)
	wantCount(t, "A's refusals (reused)", a.refused("reused"), 2)
	wantCount(t, "A's bad Finished", counter(a.env.b, failureMetric(crypto.CodeBadFinished)), 1)

	// B's own ticket resumes on A; presented to A again, A's session cache
	// refuses it without a round trip to the cluster's set.
	back := a.connect(t, id, onB.next)
	if !back.resumed {
		t.Fatal("B's ticket did not resume on A")
	}
	checks := a.sharedChecks("fresh") + a.sharedChecks("reused")
	again := a.connect(t, id, onB.next)
	if again.resumed {
		t.Fatal("a ticket resumed twice on A")
	}
	wantCount(t, "A's shared checks for a ticket A saw", a.sharedChecks("fresh")+a.sharedChecks("reused"), checks)
	wantCount(t, "A's refusals (reused)", a.refused("reused"), 3)
}

// TestTicketsSurviveRestart: after a restart of the node and of NATS, the
// ring comes back from the bucket: a ticket issued before resumes, and one
// used before stays used.
func TestTicketsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	n, err := natsnode.Start(natsnode.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	id := newTicketIdentity(t)
	a := startTicketNode(t, n, "A", id)
	full := a.connect(t, id, nil)
	resumed := a.connect(t, id, full.next) // full.next is now used
	if !resumed.resumed {
		t.Fatal("no resumption before the restart")
	}
	keys := a.ring.Keyring().KeyIDs()
	a.stop()
	n.Shutdown()

	n2, err := natsnode.Start(natsnode.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n2.Shutdown)
	a2 := startTicketNode(t, n2, "A after the restart", id)
	if got := a2.ring.Keyring().KeyIDs(); len(got) != len(keys) || got[0] != keys[0] {
		t.Fatalf("ring after the restart %08x, before %08x", got, keys)
	}
	after := a2.connect(t, id, resumed.next)
	if !after.resumed {
		t.Fatal("a ticket issued before the restart did not resume after it")
	}
	wantCount(t, "signatures after the restart", uint64(a2.sigs.Load()), 0)
	used := a2.connect(t, id, full.next)
	if used.resumed {
		t.Fatal("a ticket used before the restart resumed after it")
	}
	wantCount(t, "refusals (reused) after the restart", a2.refused("reused"), 1)
}

// TestTicketsRotationSeenByOtherNode: a key rotated on A reaches B through
// the bucket's watch before it seals; tickets B seals with it resume on A,
// and tickets sealed before the rotation keep resuming.
func TestTicketsRotationSeenByOtherNode(t *testing.T) {
	_, id, a, b := startTicketPair(t)
	old := b.connect(t, id, nil).next
	oldKey := ticketKey(old)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.ring.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	newKey := a.ring.Keyring().KeyIDs()[0]
	if newKey == oldKey {
		t.Fatal("Rotate kept the key")
	}
	if !waitFor(t, waitTimeout, func() bool {
		ids := b.ring.Keyring().KeyIDs()
		return len(ids) == 2 && ids[0] == newKey && ids[1] == oldKey
	}) {
		t.Fatalf("B's ring %08x, want [%08x %08x]", b.ring.Keyring().KeyIDs(), newKey, oldKey)
	}
	// The new key seals once active (Lead after the rotation).
	if !waitFor(t, waitTimeout, func() bool { return b.ring.Keyring().SealingKeyID(time.Now()) == newKey }) {
		t.Fatal("B never seals with the rotated key")
	}
	fresh := b.connect(t, id, nil).next
	if got := ticketKey(fresh); got != newKey {
		t.Fatalf("B sealed with %08x after the rotation, want %08x", got, newKey)
	}
	if !a.connect(t, id, fresh).resumed {
		t.Fatal("a ticket sealed with the rotated key did not resume on A")
	}
	if !a.connect(t, id, old).resumed {
		t.Fatal("a ticket sealed before the rotation did not resume after it")
	}
}

// TestTicketsNATSDown: a node that loses NATS cannot check single use: it
// refuses tickets (metric "unavailable") and completes full handshakes,
// the chat goes on, nothing crashes; the ticket it could not check is not
// burnt for the rest of the cluster. With NATS gone for every node, every
// node does the same.
func TestTicketsNATSDown(t *testing.T) {
	n, id, a, b := startTicketPair(t)
	first := a.connect(t, id, nil)

	b.nc.Close() // B loses NATS
	onB := b.connect(t, id, first.next)
	if onB.resumed {
		t.Fatal("B resumed a ticket it could not check")
	}
	wantCount(t, "B's refusals (unavailable)", b.refused("unavailable"), 1)
	wantCount(t, "B's full handshakes", b.handshakes("full"), 1)
	if !a.connect(t, id, first.next).resumed {
		t.Fatal("the ticket B could not check was burnt for A")
	}
	// B's own ticket (sealed with the shared ring it still holds) resumes
	// on A.
	if !a.connect(t, id, onB.next).resumed {
		t.Fatal("B's ticket, issued without NATS, did not resume on A")
	}

	last := a.connect(t, id, nil).next
	n.Shutdown() // NATS gone for everyone
	down := a.connect(t, id, last)
	if down.resumed {
		t.Fatal("A resumed without NATS")
	}
	wantCount(t, "A's refusals (unavailable)", a.refused("unavailable"), 1)
	// Both nodes still serve new connections.
	for _, tn := range []*ticketNode{a, b} {
		if c := tn.connect(t, id, nil); c.resumed {
			t.Fatalf("%s: resumed without a ticket", tn.name)
		}
	}
}
