package crypto

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Interop with the JavaScript client in web/crypto (sm-crypto, @noble/post-quantum,
// WebCrypto), an implementation written from docs/crypto.md. The Go side is the
// reference: a loopback TCP server here runs crypto.Server and echoes records; the
// Node.js script is the client.

// nodeClientDir returns node and web/crypto, or skips loudly (fails under CI).
func nodeClientDir(t *testing.T) (node, dir string) {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "web", "crypto"))
	if err != nil {
		t.Fatal(err)
	}
	node, nodeErr := exec.LookPath("node")
	var modErr error
	for _, m := range []string{"sm-crypto", "jsbn", "@noble/post-quantum"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", m, "package.json")); err != nil {
			modErr = err
		}
	}
	if nodeErr != nil || modErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("node or web/crypto/node_modules missing under CI (node: %v, modules: %v)", nodeErr, modErr)
		}
		t.Skip("SKIPPED LOUDLY: needs node >= 20.19 and `npm ci` in web/crypto (.ci/run does both)")
	}
	return node, dir
}

func runNode(t *testing.T, stdin []byte, args ...string) (lines []map[string]any, exitErr error) {
	t.Helper()
	node, dir := nodeClientDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, exitErr := cmd.Output()
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("node printed %q (stderr %s)", sc.Text(), stderr.String())
		}
		lines = append(lines, m)
	}
	if stderr.Len() > 0 {
		t.Logf("node stderr: %s", stderr.String())
	}
	return lines, exitErr
}

// hookTransport lets a test play the man in the middle on the server's side.
type hookTransport struct {
	MessageTransport
	onRead, onWrite func(i int, msg []byte) []byte
	reads, writes   int
}

func (h *hookTransport) ReadMessage() ([]byte, error) {
	m, err := h.MessageTransport.ReadMessage()
	if err == nil && h.onRead != nil {
		m = h.onRead(h.reads, m)
	}
	h.reads++
	return m, err
}

func (h *hookTransport) WriteMessage(m []byte) error {
	if h.onWrite != nil {
		m = h.onWrite(h.writes, bytes.Clone(m))
	}
	h.writes++
	return h.MessageTransport.WriteMessage(m)
}

type echoResult struct {
	resumed bool
	suite   string
	got     []string
	err     error
}

// echoServer accepts conns connections on ln, runs the handshake and echoes every
// record with "echo: " until the client's close record.
func echoServer(ln net.Listener, cfg *ServerConfig, conns int, hook func(*hookTransport)) <-chan echoResult {
	out := make(chan echoResult, conns)
	go func() {
		for i := 0; i < conns; i++ {
			nc, err := ln.Accept()
			if err != nil {
				out <- echoResult{err: err}
				continue
			}
			nc.SetDeadline(time.Now().Add(2 * time.Minute))
			ht := &hookTransport{MessageTransport: NewStreamTransport(nc, 0)}
			if hook != nil {
				hook(ht)
			}
			r := echoResult{}
			ch, err := Server(ht, cfg)
			if err == nil {
				r.resumed, r.suite = ch.Conn().Resumed(), ch.Conn().Suite().Name
				for {
					msg, rerr := ch.Receive(nil)
					if CodeOf(rerr) == CodeClosed {
						err = ch.Close()
						break
					}
					if rerr != nil {
						err = rerr
						break
					}
					r.got = append(r.got, string(msg))
					if err = ch.Send(append([]byte("echo: "), msg...)); err != nil {
						break
					}
				}
			}
			r.err = err
			nc.Close()
			out <- r
		}
	}()
	return out
}

type nodeCase struct {
	Port       int       `json:"port"`
	Suites     []string  `json:"suites"`
	ServerKeys []nodeKey `json:"serverKeys"`
	Messages   []string  `json:"messages"`
	Resume     bool      `json:"resume"`
	Module     string    `json:"module,omitempty"`    // a build of the client (web/crypto/dist), default the source module
	WebCrypto  *bool     `json:"webCrypto,omitempty"` // false: the @noble fallbacks instead of WebCrypto
}

type nodeKey struct {
	Alg       string `json:"alg"`
	PublicKey string `json:"publicKey"`
}

func pinFor(vs ...Verifier) []nodeKey {
	var out []nodeKey
	for _, v := range vs {
		out = append(out, nodeKey{v.Algorithm().String(), hex.EncodeToString(v.Bytes())})
	}
	return out
}

var interopMessages = []string{"你好，我想咨询订单", "", "third", strings.Repeat("long message ", 40), "after the rekeys"}

// TestNodeInteropHandshake: the JavaScript client completes full and resumed
// handshakes for every suite and exchanges records with the Go server: the
// source module, on WebCrypto and on its @noble fallbacks (what a page
// without WebCrypto, e.g. in an insecure context, runs), and the bundled
// assets the browsers load (web/crypto/dist, built by web/bundle), each for
// the suites it carries.
func TestNodeInteropHandshake(t *testing.T) {
	nodeClientDir(t)
	f := newFixture(t)
	f.server.Now = nil // the Node client uses the real clock for ticket expiry
	f.seen = NewMemorySeenSet(nil)
	f.server.Seen = f.seen
	f.server.RekeyAfter = 2 // several rekeys in both directions
	_, p, cert := certFixture(t)
	_ = p
	noWebCrypto := false
	for _, tc := range []struct {
		name      string
		suites    []string
		certs     bool
		module    string
		webCrypto *bool
		noble     []string // primitives that must have run on @noble
	}{
		{name: "GM", suites: []string{"GM"}},
		{name: "GM-PQ", suites: []string{"GM-PQ"}},
		{name: "INTL-PQ", suites: []string{"INTL-PQ"}},
		{name: "GM chain mode, pinned leaf", suites: []string{"GM"}, certs: true},
		{name: "GM without WebCrypto", suites: []string{"GM"}, webCrypto: &noWebCrypto, noble: []string{"sha256"}},
		{name: "INTL-PQ without WebCrypto", suites: []string{"INTL-PQ"}, webCrypto: &noWebCrypto, noble: []string{"sha256", "aesgcm", "x25519", "ed25519"}},
		{name: "bundle all: GM-PQ", suites: []string{"GM-PQ"}, module: "dist/unigate-crypto.js"},
		{name: "bundle all: INTL-PQ without WebCrypto", suites: []string{"INTL-PQ"}, module: "dist/unigate-crypto.js", webCrypto: &noWebCrypto, noble: []string{"sha256", "aesgcm", "x25519", "ed25519"}},
		{name: "bundle gm: GM", suites: []string{"GM"}, module: "dist/unigate-crypto-gm.js"},
		{name: "bundle gm: GM without WebCrypto", suites: []string{"GM"}, module: "dist/unigate-crypto-gm.js", webCrypto: &noWebCrypto, noble: []string{"sha256"}},
		{name: "bundle intl: INTL-PQ", suites: []string{"INTL-PQ"}, module: "dist/unigate-crypto-intl.js"},
		{name: "bundle intl: INTL-PQ without WebCrypto", suites: []string{"INTL-PQ"}, module: "dist/unigate-crypto-intl.js", webCrypto: &noWebCrypto, noble: []string{"sha256", "aesgcm", "x25519", "ed25519"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := *f.server
			pins := pinFor(f.sm2.Public(), f.ed.Public())
			if tc.certs {
				cfg.Certificates = []*Certificate{cert}
				pins = pinFor(cert.Signer().Public())
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			results := echoServer(ln, &cfg, 2, nil)
			arg, _ := json.Marshal(nodeCase{Port: ln.Addr().(*net.TCPAddr).Port, Suites: tc.suites, ServerKeys: pins, Messages: interopMessages, Resume: true,
				Module: tc.module, WebCrypto: tc.webCrypto})
			lines, err := runNode(t, nil, "test/interop.mjs", string(arg))
			if err != nil {
				t.Fatalf("node: %v %v", err, lines)
			}
			if len(lines) != 2 {
				t.Fatalf("node printed %v", lines)
			}
			for i, l := range lines {
				if l["suite"] != tc.suites[0] || l["echoed"] != float64(len(interopMessages)) || l["closed"] != true || l["ticket"] != true || l["resumed"] != (i == 1) {
					t.Fatalf("connection %d: %v", i, l)
				}
				used, _ := l["used"].(map[string]any)
				for _, prim := range tc.noble {
					if used[prim] != "noble" {
						t.Fatalf("connection %d: %s ran on %v, want the @noble fallback (used %v)", i, prim, used[prim], used)
					}
				}
				if tc.webCrypto == nil {
					for prim, impl := range used {
						if impl != "webcrypto" {
							t.Fatalf("connection %d: %s ran on %v although WebCrypto has it (used %v)", i, prim, impl, used)
						}
					}
				}
				r := <-results
				if r.err != nil {
					t.Fatalf("server, connection %d: %v", i, r.err)
				}
				if r.resumed != (i == 1) || r.suite != tc.suites[0] || strings.Join(r.got, "|") != strings.Join(interopMessages, "|") {
					t.Fatalf("server, connection %d: resumed=%v suite=%s got %q", i, r.resumed, r.suite, r.got)
				}
			}
		})
	}
}

// TestNodeBundleSuites: each one-suite asset refuses to offer the suites it
// does not carry, with a clear message, before anything is sent.
func TestNodeBundleSuites(t *testing.T) {
	nodeClientDir(t)
	f := newFixture(t)
	for _, tc := range []struct{ module, suite string }{
		{"dist/unigate-crypto-gm.js", "INTL-PQ"},
		{"dist/unigate-crypto-gm.js", "GM-PQ"},
		{"dist/unigate-crypto-intl.js", "GM"},
	} {
		t.Run(tc.module+" "+tc.suite, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				if c, err := ln.Accept(); err == nil {
					c.Close()
				}
			}()
			arg, _ := json.Marshal(nodeCase{Port: ln.Addr().(*net.TCPAddr).Port, Suites: []string{tc.suite}, ServerKeys: pinFor(f.sm2.Public(), f.ed.Public()), Messages: []string{"x"}, Module: tc.module})
			lines, err := runNode(t, nil, "test/interop.mjs", string(arg))
			if err == nil || len(lines) == 0 {
				t.Fatalf("node accepted: %v", lines)
			}
			if msg, _ := lines[len(lines)-1]["message"].(string); !strings.Contains(msg, "suite only") {
				t.Fatalf("node: %v, want the build's suite-only error", lines)
			}
		})
	}
}

// TestNodeInteropRefusals: the JavaScript client refuses what an attacker bends,
// with the documented codes.
func TestNodeInteropRefusals(t *testing.T) {
	nodeClientDir(t)
	f := newFixture(t)
	f.server.Now = nil
	other, _ := GenerateSigner(SigSM2)
	for _, tc := range []struct {
		name   string
		suites []string
		pins   []nodeKey
		hook   func(*hookTransport)
		want   Code
	}{
		{"wrong pinned key", []string{"GM"}, pinFor(other.Public()), nil, CodeUnknownServerKey},
		{"tampered signature", []string{"GM"}, nil, func(h *hookTransport) {
			h.onWrite = func(i int, m []byte) []byte {
				if i == 0 {
					sh, _ := parseServerHello(m)
					m[sh.sigEnd-3] ^= 1
				}
				return m
			}
		}, CodeBadSignature},
		{"tampered finished", []string{"INTL-PQ"}, nil, func(h *hookTransport) {
			h.onWrite = func(i int, m []byte) []byte {
				if i == 0 {
					m[len(m)-1] ^= 1
				}
				return m
			}
		}, CodeBadFinished},
		{"downgrade: suite stripped", []string{"GM-PQ", "GM"}, nil, func(h *hookTransport) {
			h.onRead = func(i int, m []byte) []byte {
				if i == 0 {
					return stripSuite(t, m, SuiteGMPQ)
				}
				return m
			}
		}, CodeBadSignature},
		{"tampered record", []string{"GM"}, nil, func(h *hookTransport) {
			h.onWrite = func(i int, m []byte) []byte {
				if i == 2 { // ServerHello, NewSessionTicket, then the first echo
					m[5] ^= 0x80
				}
				return m
			}
		}, CodeRecordAuth},
		{"replayed record", []string{"GM"}, nil, func(h *hookTransport) {
			var first []byte
			h.onWrite = func(i int, m []byte) []byte {
				if i == 2 {
					first = bytes.Clone(m)
				}
				if i == 3 {
					return first
				}
				return m
			}
		}, CodeRecordAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pins := tc.pins
			if pins == nil {
				pins = pinFor(f.sm2.Public(), f.ed.Public())
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			results := echoServer(ln, f.server, 1, tc.hook)
			arg, _ := json.Marshal(nodeCase{Port: ln.Addr().(*net.TCPAddr).Port, Suites: tc.suites, ServerKeys: pins, Messages: []string{"one", "two"}})
			lines, err := runNode(t, nil, "test/interop.mjs", string(arg))
			if err == nil || len(lines) == 0 {
				t.Fatalf("node accepted: %v", lines)
			}
			last := lines[len(lines)-1]
			if last["error"] != float64(tc.want) {
				t.Fatalf("node: %v, want code %d (%v)", last, tc.want, tc.want)
			}
			t.Logf("node refused: %v", last["message"])
			<-results // the server ends with a transport error; it must not hang
		})
	}
}

// TestNodePrimitives: sm-crypto checks Unigate's SM3, SM2 signatures and SM4-GCM
// (the JavaScript GCM over sm-crypto's SM4), and the HKDF labels; Go checks
// sm-crypto's signatures and the JavaScript SM4-GCM output.
func TestNodePrimitives(t *testing.T) {
	nodeClientDir(t)
	type kv = map[string]any
	in := map[string][]kv{}
	for _, m := range [][]byte{nil, []byte("abc"), bytes.Repeat([]byte("abcd"), 16), []byte("你好")} {
		in["sm3"] = append(in["sm3"], kv{"msg": hex.EncodeToString(m), "digest": hex.EncodeToString(hashOf(SM3, m))})
	}
	signer, _ := GenerateSigner(SigSM2)
	for _, m := range [][]byte{[]byte("x"), []byte("unigate v1 server signature\x00transcript"), bytes.Repeat([]byte{0xff}, 100)} {
		sig, err := signer.Sign(m)
		if err != nil {
			t.Fatal(err)
		}
		in["sm2"] = append(in["sm2"], kv{"pub": hex.EncodeToString(signer.Public().Bytes()), "msg": hex.EncodeToString(m), "sig": hex.EncodeToString(sig)})
	}
	for _, n := range []int{0, 1, 15, 16, 17, 64, 300} {
		key, nonce, ad, pt := make([]byte, 16), make([]byte, 12), make([]byte, n%23), make([]byte, n)
		for _, b := range [][]byte{key, nonce, ad, pt} {
			rand.Read(b)
		}
		a, _ := SM4GCM.New(key)
		in["sm4gcm"] = append(in["sm4gcm"], kv{"key": hex.EncodeToString(key), "nonce": hex.EncodeToString(nonce), "ad": hex.EncodeToString(ad), "pt": hex.EncodeToString(pt), "ct": hex.EncodeToString(a.Seal(nil, nonce, pt, ad))})
	}
	// INTL-PQ's primitives, checked on WebCrypto and on the @noble fallbacks.
	for _, n := range []int{0, 1, 16, 33, 300} {
		key, nonce, ad, pt := make([]byte, 32), make([]byte, 12), make([]byte, n%19), make([]byte, n)
		for _, b := range [][]byte{key, nonce, ad, pt} {
			rand.Read(b)
		}
		a, _ := AES256GCM.New(key)
		in["aesgcm"] = append(in["aesgcm"], kv{"key": hex.EncodeToString(key), "nonce": hex.EncodeToString(nonce), "ad": hex.EncodeToString(ad), "pt": hex.EncodeToString(pt), "ct": hex.EncodeToString(a.Seal(nil, nonce, pt, ad))})
	}
	edSigner, _ := GenerateSigner(SigEd25519)
	for _, m := range [][]byte{nil, []byte("unigate v1 server signature\x00transcript"), bytes.Repeat([]byte{0xa5}, 200)} {
		sig, err := edSigner.Sign(m)
		if err != nil {
			t.Fatal(err)
		}
		in["ed25519"] = append(in["ed25519"], kv{"pub": hex.EncodeToString(edSigner.Public().Bytes()), "msg": hex.EncodeToString(m), "sig": hex.EncodeToString(sig)})
	}
	x25519Key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	in["x25519"] = []kv{{"pub": hex.EncodeToString(x25519Key.PublicKey().Bytes())}}
	for _, h := range []struct {
		name string
		h    Hash
	}{{"SM3", SM3}, {"SHA256", SHA256}} {
		secret := bytes.Repeat([]byte{7}, 32)
		for _, l := range []struct {
			label string
			ctx   []byte
			n     int
		}{{"key", nil, 16}, {"iv", nil, 12}, {"c ap traffic", hashOf(h.h, []byte("x")), 32}, {"traffic upd", nil, 32}, {"long", nil, 100}} {
			in["expandLabel"] = append(in["expandLabel"], kv{"hash": h.name, "secret": hex.EncodeToString(secret), "label": l.label, "ctx": hex.EncodeToString(l.ctx), "n": l.n,
				"out": hex.EncodeToString(expandLabel(h.h, secret, l.label, l.ctx, l.n))})
		}
	}
	stdin, _ := json.Marshal(in)
	lines, err := runNode(t, stdin, "test/vectors.mjs")
	if len(lines) != 1 {
		t.Fatalf("node: %v %v", err, lines)
	}
	out := lines[0]
	if err != nil || len(out["failures"].([]any)) != 0 {
		t.Fatalf("JavaScript refused Go's vectors: %v (%v)", out["failures"], err)
	}
	unhexs := func(v any) []byte { b, _ := hex.DecodeString(v.(string)); return b }
	for _, v := range out["sm2"].([]any) {
		m := v.(map[string]any)
		pub, err := ParseSM2PublicKey(unhexs(m["pub"]))
		if err != nil {
			t.Fatal(err)
		}
		if !pub.Verify(unhexs(m["msg"]), unhexs(m["sig"])) {
			t.Errorf("sm-crypto signature over %s does not verify in Go", m["msg"])
		}
	}
	// X25519 the other way: Go's secret with the module's public keys, on
	// WebCrypto and on @noble.
	vias := map[string]bool{}
	for _, v := range out["x25519"].([]any) {
		m := v.(map[string]any)
		peer, err := ecdh.X25519().NewPublicKey(unhexs(m["pub"]))
		if err != nil {
			t.Fatal(err)
		}
		shared, err := x25519Key.ECDH(peer)
		if err != nil || !bytes.Equal(shared, unhexs(m["shared"])) {
			t.Errorf("X25519 (%s): the module's secret %s, Go's %x (%v)", m["via"], m["shared"], shared, err)
		}
		vias[m["via"].(string)] = true
	}
	if !vias["webcrypto"] || !vias["noble"] {
		t.Errorf("X25519 ran on %v, want WebCrypto and @noble", vias)
	}
	// Each pass ran where it says: WebCrypto first, then @noble throughout.
	passes := out["backends"].([]any)
	if len(passes) != 2 {
		t.Fatalf("backends %v", passes)
	}
	for i, want := range []string{"webcrypto", "noble"} {
		used := passes[i].(map[string]any)
		for _, prim := range []string{"sha256", "aesgcm", "x25519", "ed25519"} {
			if used[prim] != want {
				t.Errorf("pass %d: %s ran on %v, want %s (%v)", i, prim, used[prim], want, used)
			}
		}
	}
	for _, v := range out["sm4gcm"].([]any) {
		m := v.(map[string]any)
		a, _ := SM4GCM.New(unhexs(m["key"]))
		pt, err := a.Open(nil, unhexs(m["nonce"]), unhexs(m["ct"]), unhexs(m["ad"]))
		if err != nil || !bytes.Equal(pt, unhexs(m["pt"])) {
			t.Errorf("JavaScript SM4-GCM of %s bytes does not open in Go: %v", m["pt"], err)
		}
	}
}
