package histstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/unigate/unigate/broker/natsnode"
	"github.com/unigate/unigate/crypto/atrest"
)

// atRestNode is an embedded NATS server with a keyring in its KV bucket.
type atRestNode struct {
	js      jetstream.JetStream
	nc      *nats.Conn
	masters *atrest.MasterKeys
	ring    *atrest.Keyring
}

func startAtRest(tb testing.TB) *atRestNode {
	tb.Helper()
	n, err := natsnode.Start(natsnode.Options{StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Shutdown)
	material := make([]byte, atrest.MasterKeySize)
	rand.Read(material)
	mk, err := atrest.NewMasterKey(material)
	if err != nil {
		tb.Fatal(err)
	}
	masters, _ := atrest.NewMasterKeys(mk)
	ring, err := atrest.OpenKeyring(testCtx(tb), n.JetStream(), masters, atrest.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ring.Close() })
	return &atRestNode{js: n.JetStream(), nc: n.Conn(), masters: masters, ring: ring}
}

func (a *atRestNode) open(tb testing.TB, o Options) *Store {
	tb.Helper()
	s, err := Open(testCtx(tb), a.js, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// rawBody returns the stored body of a conversation's message seq.
func rawBody(tb testing.TB, s *Store, tenant, conv string, seq uint64) []byte {
	tb.Helper()
	ctx := testCtx(tb)
	for ss := uint64(1); ; ss++ {
		raw, err := s.stream.GetMsg(ctx, ss, jetstream.WithGetMsgSubject(s.Subject(tenant, conv)))
		if err != nil {
			tb.Fatalf("message %d of %s not found: %v", seq, conv, err)
		}
		var r rawMessage
		if err := r.parse(raw.Data); err != nil {
			tb.Fatal(err)
		}
		if r.seq == seq {
			return raw.Data
		}
		ss = raw.Sequence
	}
}

func TestSealedRoundTrip(t *testing.T) {
	a := startAtRest(t)
	s := a.open(t, Options{Sealer: a.ring, SealText: true})
	tenant, conv := "Acme Corp.", "c_1"
	appendN(t, s, tenant, conv, 0, 100, 0)
	all, info := collect(t, s, tenant, conv, 0, 0)
	checkSeqs(t, all, 1, 100)
	if info.First != 1 || info.Last != 100 || all[41] != *msg(tenant, conv, 42, "v1") {
		t.Fatalf("info %+v, message 42 = %+v", info, all[41])
	}
	// From a cursor deep in the conversation: the binary search reads
	// sequences without opening texts.
	part, _ := collect(t, s, tenant, conv, 90, 5)
	checkSeqs(t, part, 91, 95)
	if part[0].Text != "text 91" {
		t.Fatalf("text %q", part[0].Text)
	}
	m, _, ok, err := s.Last(testCtx(t), tenant, conv)
	if err != nil || !ok || m.Text != "text 100" {
		t.Fatalf("Last = %+v %v %v", m, ok, err)
	}
	// At rest the text is sealed; the metadata is not.
	body := rawBody(t, s, tenant, conv, 42)
	if bytes.Contains(body, []byte("text 42")) {
		t.Fatal("text stored in clear")
	}
	var r rawMessage
	if err := r.parse(body); err != nil || !r.hasSealed || r.hasText || string(r.sender) != "v1" || string(r.cmid) != "v1-42" {
		t.Fatalf("stored body %+v %v", r, err)
	}
	if len(r.sealed) != len("text 42")+atrest.Overhead {
		t.Fatalf("sealed text of %d bytes", len(r.sealed))
	}
	// A retry of a stored message is still a duplicate (Nats-Msg-Id is
	// computed from the clear ids, the sealed bodies differ).
	_, dup, err := s.Append(testCtx(t), msg(tenant, conv, 100, "v1"), 0)
	if err != nil || !dup {
		t.Fatalf("retry: dup=%v err=%v", dup, err)
	}
}

// TestPlainThenSealed: history written before encryption at rest was
// enabled stays readable next to sealed messages, and the other way round
// a read-only keyring still opens sealed messages after it is disabled.
func TestPlainThenSealed(t *testing.T) {
	a := startAtRest(t)
	plain := a.open(t, Options{})
	last := appendN(t, plain, "t", "c_1", 0, 5, 0)
	sealed := a.open(t, Options{Sealer: a.ring, SealText: true})
	last = appendN(t, sealed, "t", "c_1", 5, 10, last)
	all, _ := collect(t, sealed, "t", "c_1", 0, 0)
	checkSeqs(t, all, 1, 10)
	for i, m := range all {
		if want := fmt.Sprintf("text %d", i+1); m.Text != want {
			t.Fatalf("message %d: %q", i+1, m.Text)
		}
	}
	if bytes.Contains(rawBody(t, sealed, "t", "c_1", 3), []byte("text 3")) == false {
		t.Fatal("message 3 should be plain")
	}
	// Encryption turned off again: new messages plain, sealed ones still
	// read with the (read-only) keyring.
	ro, err := atrest.OpenKeyring(testCtx(t), a.js, a.masters, atrest.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	off := a.open(t, Options{Sealer: ro})
	appendN(t, off, "t", "c_1", 10, 12, last)
	all, _ = collect(t, off, "t", "c_1", 0, 0)
	checkSeqs(t, all, 1, 12)
	if all[7].Text != "text 8" || all[11].Text != "text 12" {
		t.Fatalf("texts %q %q", all[7].Text, all[11].Text)
	}
	// Without any keyring, sealed messages are a clear error.
	none := a.open(t, Options{})
	_, err = none.Replay(testCtx(t), "t", "c_1", 0, 0, func(*Message) bool { return true })
	if !errors.Is(err, ErrEncrypted) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("no keyring: %v", err)
	}
}

// republish stores body as the next message of a conversation, bypassing
// the Store (an attacker with write access to the stream).
func republish(tb testing.TB, a *atRestNode, s *Store, tenant, conv string, body []byte) {
	tb.Helper()
	if _, err := a.js.Publish(testCtx(tb), s.Subject(tenant, conv), body); err != nil {
		tb.Fatal(err)
	}
}

// withSeq re-encodes a stored body with another sequence number.
func withSeq(tb testing.TB, body []byte, seq uint64) []byte {
	tb.Helper()
	var r rawMessage
	if err := r.parse(body); err != nil {
		tb.Fatal(err)
	}
	b := protowire.AppendTag(nil, fieldSeq, protowire.VarintType)
	b = protowire.AppendVarint(b, seq)
	b = protowire.AppendTag(b, fieldSenderID, protowire.BytesType)
	b = protowire.AppendBytes(b, r.sender)
	b = protowire.AppendTag(b, fieldSenderRole, protowire.VarintType)
	b = protowire.AppendVarint(b, r.role)
	b = protowire.AppendTag(b, fieldClientMsgID, protowire.BytesType)
	b = protowire.AppendBytes(b, r.cmid)
	b = protowire.AppendTag(b, fieldSealedText, protowire.BytesType)
	b = protowire.AppendBytes(b, r.sealed)
	b = protowire.AppendTag(b, fieldTime, protowire.VarintType)
	return protowire.AppendVarint(b, r.ts)
}

// TestSealedTextMoved: a sealed text copied to another conversation, to
// another place in its own, or altered, does not open: the replay stops
// with a clear error instead of showing it.
func TestSealedTextMoved(t *testing.T) {
	a := startAtRest(t)
	s := a.open(t, Options{Sealer: a.ring, SealText: true})
	appendN(t, s, "t", "c_1", 0, 2, 0)
	body := rawBody(t, s, "t", "c_1", 1)
	if !bytes.Equal(withSeq(t, body, 1), body) {
		t.Fatal("withSeq does not reproduce the stored body")
	}
	tampered := bytes.Clone(body)
	tampered[len(tampered)-12] ^= 0x40 // inside the tag
	cases := map[string]struct {
		conv  string
		after uint64 // replay from here (past the genuine messages)
		body  []byte
	}{
		"another conversation":  {"c_2", 0, body},
		"another sequence":      {"c_3", 0, withSeq(t, body, 3)},
		"same conv, later seq":  {"c_1", 2, withSeq(t, body, 3)},
		"altered sealed bytes":  {"c_4", 0, tampered},
		"another tenant's body": {"c_5", 0, rawBodyOf(t, a, "u", "c_5")},
	}
	for name, c := range cases {
		republish(t, a, s, "t", c.conv, c.body)
		_, err := s.Replay(testCtx(t), "t", c.conv, c.after, 0, func(m *Message) bool {
			t.Errorf("%s: delivered %+v", name, *m)
			return true
		})
		if !errors.Is(err, atrest.ErrAuth) || !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrAuth and ErrCorrupt", name, err)
		}
	}
	// The originals still read.
	all, _ := collect(t, s, "t", "c_1", 0, 2)
	checkSeqs(t, all, 1, 2)
}

// rawBodyOf writes message 1 of tenant/conv and returns its stored body.
func rawBodyOf(tb testing.TB, a *atRestNode, tenant, conv string) []byte {
	tb.Helper()
	s := a.open(tb, Options{Sealer: a.ring, SealText: true, Stream: "OTHER_" + tenant, SubjectPrefix: "other" + tenant})
	appendN(tb, s, tenant, conv, 0, 1, 0)
	return rawBody(tb, s, tenant, conv, 1)
}

// TestSealedUnknownKey: a keyring that does not hold the data key (another
// bucket) reports ErrUnknownKey, not garbage.
func TestSealedUnknownKey(t *testing.T) {
	a := startAtRest(t)
	s := a.open(t, Options{Sealer: a.ring, SealText: true})
	appendN(t, s, "t", "c_1", 0, 3, 0)
	other, err := atrest.OpenKeyring(testCtx(t), a.js, a.masters, atrest.Options{Bucket: "OTHER_KEYS"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	r := a.open(t, Options{Sealer: other})
	_, err = r.Replay(testCtx(t), "t", "c_1", 0, 0, func(*Message) bool { return true })
	if !errors.Is(err, atrest.ErrUnknownKey) {
		t.Fatalf("other keyring: %v", err)
	}
	if _, _, _, err := r.Last(testCtx(t), "t", "c_1"); !errors.Is(err, atrest.ErrUnknownKey) {
		t.Fatalf("Last with another keyring: %v", err)
	}
}

// TestSealedRotation: after a data key rotation new messages use the new
// key and the old ones stay readable; nothing is rewritten.
func TestSealedRotation(t *testing.T) {
	a := startAtRest(t)
	s := a.open(t, Options{Sealer: a.ring, SealText: true})
	last := appendN(t, s, "t", "c_1", 0, 3, 0)
	first := sealedKey(t, rawBody(t, s, "t", "c_1", 1))
	if _, err := a.ring.Rotate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "t", "c_1", 3, 6, last)
	if k := sealedKey(t, rawBody(t, s, "t", "c_1", 2)); k != first {
		t.Fatal("an old message was rewritten")
	}
	if k := sealedKey(t, rawBody(t, s, "t", "c_1", 5)); k == first {
		t.Fatal("a new message uses the old key")
	}
	all, _ := collect(t, s, "t", "c_1", 0, 0)
	checkSeqs(t, all, 1, 6)
	for i, m := range all {
		if m.Text != fmt.Sprintf("text %d", i+1) {
			t.Fatalf("message %d: %q", i+1, m.Text)
		}
	}
}

func sealedKey(tb testing.TB, body []byte) atrest.KeyID {
	tb.Helper()
	var r rawMessage
	if err := r.parse(body); err != nil || !r.hasSealed {
		tb.Fatalf("not sealed: %v", err)
	}
	p, err := atrest.ParseSealed(r.sealed)
	if err != nil {
		tb.Fatal(err)
	}
	return p.KeyID
}

// TestSealFailureSendsNothing: when the keyring cannot seal (closed), the
// append fails before anything is published.
func TestSealFailureSendsNothing(t *testing.T) {
	a := startAtRest(t)
	ring, err := atrest.OpenKeyring(testCtx(t), a.js, a.masters, atrest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := a.open(t, Options{Sealer: ring, SealText: true})
	ring.Close()
	err = s.AppendAsync(msg("t", "c_1", 1, "v1"), 0, func(uint64, bool, error) { t.Error("done called") })
	if !errors.Is(err, atrest.ErrClosed) || !strings.Contains(err.Error(), "seal") || s.Pending() != 0 {
		t.Fatalf("append with a closed keyring: %v (pending %d)", err, s.Pending())
	}
	if _, _, ok, _ := s.Last(context.Background(), "t", "c_1"); ok {
		t.Fatal("something was stored")
	}
	if _, err := Open(testCtx(t), a.js, Options{SealText: true}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SealText without a Sealer: %v", err)
	}
}

// FuzzDecodeSealed decodes arbitrary bodies with a real keyring: nothing
// panics, every error wraps ErrCorrupt, and a sealed text opens only for
// the message it was sealed for (whatever else the body's fields say).
func FuzzDecodeSealed(f *testing.F) {
	a := startAtRest(f)
	orig := msg("t", "c_1", 7, "v1")
	body, err := appendSealedMessage(nil, orig, a.ring)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(body)
	f.Add(appendMessage(nil, orig))
	f.Add(body[:len(body)-3])
	f.Fuzz(func(t *testing.T, b []byte) {
		m := Message{Tenant: "t", Conversation: "c_1"}
		err := decode(b, &m, a.ring, true)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		var r rawMessage
		if err := r.parse(b); err != nil {
			t.Fatalf("decoded but does not parse: %v", err)
		}
		if r.hasSealed && m != *orig {
			t.Fatalf("a sealed text opened for another message: %+v", m)
		}
	})
}

// TestSealedBatch: an atomic batch seals each text like a single append.
func TestSealedBatch(t *testing.T) {
	a := startAtRest(t)
	s := a.open(t, Options{Sealer: a.ring, SealText: true, AtomicBatches: 1})
	if !s.Batches() {
		t.Fatal("atomic batches not confirmed by the server")
	}
	ms := batchOf("conv", 1, 4, "v")
	if _, _, err := appendBatch(t, s, ms, 0); err != nil {
		t.Fatal(err)
	}
	all, _ := collect(t, s, "t", "conv", 0, 0)
	checkSeqs(t, all, 1, 4)
	for i, m := range all {
		if m.Text != ms[i].Text {
			t.Fatalf("message %d text %q, want %q", m.Seq, m.Text, ms[i].Text)
		}
		if body := rawBody(t, s, "t", "conv", m.Seq); bytes.Contains(body, []byte(ms[i].Text)) {
			t.Fatalf("batched text %d stored in clear", m.Seq)
		}
	}
}
