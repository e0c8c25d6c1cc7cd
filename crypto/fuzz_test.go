package crypto

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz seed corpora")

// fuzzSeeds returns valid messages of each kind plus malformed variants.
func fuzzSeeds(tb testing.TB) (ch, sh, rec [][]byte) {
	f := newFixture(tb)
	full := handshake(tb, f.client(GM), f.server)
	cfg := f.client(GM)
	cfg.Session = full.session
	c, _ := NewClientHandshake(cfg)
	ch = append(ch, c.Hello())
	p := start(tb, f.client(GM), f.server)
	ch = append(ch, p.c.Hello())
	sh = append(sh, p.sh)
	cf, pk, _ := certFixture(tb)
	sh = append(sh, start(tb, cf.rootsClient(pk, "chat.example", GM), cf.server).sh)
	r, _ := fixedConns()
	good, _ := r.Seal(nil, []byte("hello"))
	rec = append(rec, good)
	malform := func(m []byte) [][]byte {
		var out [][]byte
		out = append(out, m[:len(m)/2], m[:1], []byte{}, append(bytes.Clone(m), 0))
		for _, off := range []int{2 + randomSize, 2 + randomSize + 1, 2 + randomSize + 2} {
			if off < len(m) {
				b := bytes.Clone(m)
				b[off] = 0xff // length fields and counts at their maximum
				out = append(out, b)
				b = bytes.Clone(m)
				b[off] = 0
				out = append(out, b)
			}
		}
		return out
	}
	ch = append(ch, malform(ch[0])...)
	sh = append(sh, malform(sh[0])...)
	sh = append(sh, malform(sh[1])...)
	rec = append(rec, good[:RecordOverhead-1], good[:1], append([]byte{0x42}, good[1:]...))
	return ch, sh, rec
}

// fixedConns returns a client Conn and a server Conn from fixed secrets (GM suite).
func fixedConns() (client, server *Conn) {
	cs, ss := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	client, _ = newConn(GM, true, bytes.Clone(cs), bytes.Clone(ss), 4, false, KeyID{})
	server, _ = newConn(GM, false, bytes.Clone(cs), bytes.Clone(ss), 4, false, KeyID{})
	return client, server
}

func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite testdata/fuzz")
	}
	ch, sh, rec := fuzzSeeds(t)
	chains := chainSeeds(t)
	for name, seeds := range map[string][][]byte{"FuzzClientHello": ch, "FuzzServerHello": sh, "FuzzRecordOpen": rec, "FuzzCertificateChain": chains} {
		dir := filepath.Join("testdata", "fuzz", name)
		os.MkdirAll(dir, 0o755)
		for i, s := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func FuzzClientHello(f *testing.F) {
	fx := newFixture(f)
	fx.server.Suites = []*Suite{GM, IntlPQ, GMPQ}
	f.Fuzz(func(t *testing.T, data []byte) {
		sh, err := NewServerHandshake(fx.server).HandleClientHello(data)
		if err != nil {
			if CodeOf(err) == 0 {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if _, perr := parseServerHello(sh); perr != nil {
			t.Fatalf("server produced an unparsable ServerHello: %v", perr)
		}
	})
}

// FuzzServerHello also reaches the certificate-chain parser (gmsm's smx509) and
// verifier: the client trusts a root, and seeds include a chain-mode ServerHello.
func FuzzServerHello(f *testing.F) {
	fx, pk, _ := certFixture(f)
	cfg := fx.client(GM)
	cfg.Roots, cfg.ServerName = pk.roots, "chat.example"
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := NewClientHandshake(cfg)
		if err != nil {
			t.Fatal(err)
		}
		fin, conn, err := c.HandleServerHello(data)
		if err == nil || fin != nil || conn != nil {
			// Impossible without the ephemeral key: the signature covers a fresh random.
			t.Fatalf("random ServerHello accepted")
		}
		if CodeOf(err) == 0 {
			t.Fatalf("untyped error %v", err)
		}
	})
}

func FuzzRecordOpen(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		_, s := fixedConns()
		out, err := s.Open(nil, data)
		if err != nil {
			if CodeOf(err) == 0 {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// Only a genuine record opens: it must equal what the client would seal.
		c, _ := fixedConns()
		want, _ := c.Seal(nil, out)
		if !bytes.Equal(want, data) {
			t.Fatalf("forged record opened")
		}
	})
}

// chainSeeds are certificate lists as they appear in a chain-mode ServerHello:
// a valid chain, its parts, and malformed lengths.
func chainSeeds(tb testing.TB) [][]byte {
	_, _, c := certFixture(tb)
	good := marshalChain(nil, c.chain)[2:]
	leafOnly := marshalChain(nil, c.chain[:1])[2:]
	bad := bytes.Clone(good)
	bad[1] = 0xff // first certificate's length past the end
	zero := []byte{0, 0}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x10
	return [][]byte{good, leafOnly, bad, zero, flipped, good[:len(good)-1], append(bytes.Clone(good), 0)}
}

// FuzzCertificateChain feeds certificate lists to the chain parser and to the
// client's verification (gmsm smx509 parsing, path building, usage checks).
func FuzzCertificateChain(f *testing.F) {
	fx, pk, _ := certFixture(f)
	cfg := fx.rootsClient(pk, "chat.example", GM)
	f.Fuzz(func(t *testing.T, data []byte) {
		chain, ok := parseChain(data)
		if !ok {
			return
		}
		c, err := NewClientHandshake(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if v, cerr := c.verifyChain(chain, SigSM2); cerr == nil && v == nil {
			t.Fatal("accepted without a key")
		} else if cerr != nil && cerr.Code == 0 {
			t.Fatal("untyped error")
		}
	})
}
