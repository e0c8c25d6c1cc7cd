package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/protocol"
)

// secureKeys runs `unigate keygen` for an SM2 and an Ed25519 identity, as
// bench/run.sh does, and returns the key files (for the gateway) and the
// files of keygen's output (the PEM public keys, for -server-key).
func secureKeys(t *testing.T, bin string) (keys, pins []string) {
	t.Helper()
	dir := t.TempDir()
	for _, alg := range []string{"sm2", "ed25519"} {
		key, out := filepath.Join(dir, alg+".key"), filepath.Join(dir, alg+".out")
		b, err := exec.Command(bin, "keygen", "-alg", alg, "-out", key).Output()
		if err != nil {
			t.Fatalf("keygen %s: %v", alg, err)
		}
		if err := os.WriteFile(out, b, 0o600); err != nil {
			t.Fatal(err)
		}
		keys, pins = append(keys, key), append(pins, out)
	}
	return keys, pins
}

// startSecureGateway runs the gateway with the secure channel required
// (a plaintext hello is refused) and its admin listener on.
func startSecureGateway(t *testing.T, keys []string) *gateway {
	t.Helper()
	return startGatewayArgs(t, []string{"-admin-listen", "127.0.0.1:0"},
		"UNIGATE_CRYPTO_ENABLED=true", "UNIGATE_CRYPTO_REQUIRED=true",
		"UNIGATE_CRYPTO_IDENTITY_KEYS="+strings.Join(keys, ","), "UNIGATE_CRYPTO_SUITES=GM,GM-PQ,INTL-PQ")
}

// secureHandshakes reads unigate_broker_secure_handshakes_total of suite
// and mode (full or resumed) from the gateway's metrics.
func secureHandshakes(t *testing.T, g *gateway, suite, mode string) int64 {
	t.Helper()
	var admin string
	for range 100 { // the admin line may follow the listen line
		g.mu.Lock()
		admin = g.admin
		g.mu.Unlock()
		if admin != "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if admin == "" {
		t.Fatal("the gateway did not log its admin address")
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := `unigate_broker_secure_handshakes_total{suite="` + suite + `",mode="` + mode + `"} `
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), want); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("metric line %q", sc.Text())
			}
			return n
		}
	}
	t.Fatalf("no metric %s", want)
	return 0
}

// TestEndToEndSecure runs idle and chat with worker processes, encrypted
// with GM (proto) and INTL-PQ (json), against a gateway that refuses
// plaintext, and checks that the reports add up and that the gateway
// counted one full handshake per connection of the suite; then a storm
// with GM, whose reconnects resume from the tickets of the first
// connections.
func TestEndToEndSecure(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the gateway; skipped with -short")
	}
	keys, pins := secureKeys(t, gatewayBinary(t))
	g := startSecureGateway(t, keys)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tokenCmd := []string{g.bin, "token", "agent", "-data-dir", g.dataDir}
	for _, tc := range []struct{ suite, sub string }{
		{"GM", protocol.SubprotocolProto},
		{"INTL-PQ", protocol.SubprotocolJSON},
	} {
		t.Run(tc.suite, func(t *testing.T) {
			common := Common{URL: g.url, Subprotocol: tc.sub, Suite: tc.suite, ServerKeys: pins, Procs: 2,
				ServerPID: g.cmd.Process.Pid, Worker: testWorker(), WorkerEnv: []string{workerEnv}}
			before := secureHandshakes(t, g, tc.suite, "full")

			const conns = 40
			idle, err := RunIdle(ctx, IdleConfig{Common: common, Conns: conns, Rate: 400, Steps: []int{20}, Settle: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if idle.Reached != conns || idle.Established != conns || idle.Failures.total() != 0 || idle.Drops.total() != 0 || idle.ClosedClean != conns {
				t.Errorf("idle: reached %d, established %d, failures %v, drops %v, closed clean %d",
					idle.Reached, idle.Established, idle.Failures.Counts, idle.Drops.Counts, idle.ClosedClean)
			}
			var sum strings.Builder
			idle.WriteSummary(&sum)
			if !strings.Contains(sum.String(), "encrypted "+tc.suite) {
				t.Errorf("idle summary does not name the suite:\n%s", sum.String())
			}

			const convs, agents, rate = 10, 2, 200
			dur, warm := 2*time.Second, 500*time.Millisecond
			chat, err := RunChat(ctx, ChatConfig{Common: common, Conversations: convs, Agents: agents, AgentCapacity: 10,
				Rate: rate, Duration: dur, Warmup: warm, Size: 256, Reply: 0.2, TokenCmd: tokenCmd})
			if chat != nil && testing.Verbose() {
				var sb strings.Builder
				chat.WriteSummary(&sb)
				t.Log("\n" + sb.String())
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := int64(rate * (dur + warm).Seconds()); chat.V2A.Sent != want {
				t.Errorf("sent %d, want %d", chat.V2A.Sent, want)
			}
			for _, f := range []FlowResult{chat.V2A, chat.A2V} {
				if f.Sent == 0 || f.Acked != f.Sent || f.Delivered != f.Acked || f.Refused != 0 || f.violations() != 0 {
					t.Errorf("flow %+v", f)
				}
			}
			if len(chat.Errors.Counts) != 0 || len(chat.Drops.Counts) != 0 || len(chat.Integrity) != 0 {
				t.Errorf("errors %v, drops %v, integrity %v", chat.Errors.Counts, chat.Drops.Counts, chat.Integrity)
			}
			if chat.Config.Suite != tc.suite {
				t.Errorf("report config suite %q", chat.Config.Suite)
			}
			js, err := json.Marshal(chat)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(js), `"suite":"`+tc.suite+`"`) {
				t.Errorf("JSON report does not name the suite")
			}
			// Every connection: the idle ones, the visitors and agents of
			// the chat (agents' token probes do not connect).
			if got := secureHandshakes(t, g, tc.suite, "full") - before; got < conns+convs+agents {
				t.Errorf("gateway counted %d full %s handshakes, want at least %d", got, tc.suite, conns+convs+agents)
			}
		})
	}

	t.Run("storm-resumed", func(t *testing.T) {
		common := Common{URL: g.url, Suite: "GM", ServerKeys: pins, Procs: 2,
			ServerPID: g.cmd.Process.Pid, Worker: testWorker(), WorkerEnv: []string{workerEnv}}
		before := secureHandshakes(t, g, "GM", "resumed")
		const clients = 10
		rep, err := RunStorm(ctx, StormConfig{Common: common, Clients: clients, Agents: 2, Messages: 2, Missed: 1,
			Down: 300 * time.Millisecond, TokenCmd: tokenCmd, RecoverTimeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Resumed != clients || rep.Failed != 0 || rep.Gaps != 0 || rep.Duplicates != 0 || rep.Replayed != rep.Expected {
			t.Errorf("resumed %d, failed %d, gaps %d, duplicates %d, replayed %d of %d", rep.Resumed, rep.Failed, rep.Gaps, rep.Duplicates, rep.Replayed, rep.Expected)
		}
		if got := secureHandshakes(t, g, "GM", "resumed") - before; got < clients {
			t.Errorf("gateway counted %d resumed GM handshakes, want at least %d (one per reconnect)", got, clients)
		}
	})
}

// TestSecureWrongPin: a client pinning another key than the gateway's
// fails every connection with the channel's "unknown server key" (code
// 5), counted by reason secure_5 with the error text as its sample, and
// the run fails (the target is never reached).
func TestSecureWrongPin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the gateway; skipped with -short")
	}
	bin := gatewayBinary(t)
	keys, _ := secureKeys(t, bin)
	_, otherPins := secureKeys(t, bin)
	g := startSecureGateway(t, keys)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := RunIdle(ctx, IdleConfig{Common: Common{URL: g.url, Suite: "GM", ServerKeys: otherPins, Worker: testWorker(), WorkerEnv: []string{workerEnv}},
		Conns: 3, Rate: 100, Settle: 100 * time.Millisecond})
	if err == nil && rep.Established != 0 {
		t.Fatalf("established %d connections with a wrong pin", rep.Established)
	}
	if rep == nil {
		t.Fatalf("no report: %v", err)
	}
	code := "secure_" + strconv.Itoa(int(crypto.CodeUnknownServerKey))
	// The idle ramp retries failed connections: every attempt fails the
	// same way, and the run fails.
	if err == nil || len(rep.Failures.Counts) != 1 || rep.Failures.Counts[code] < 3 || !strings.Contains(rep.Failures.Samples[code], "secure channel") ||
		!strings.Contains(rep.Failures.Samples[code], crypto.CodeUnknownServerKey.String()) {
		t.Errorf("failures %v (err %v)", rep.Failures, err)
	}
}

// TestSecureConfig: the pin and suite flags are checked before any
// connection, with errors that say what is wrong.
func TestSecureConfig(t *testing.T) {
	dir := t.TempDir()
	sm2, err := crypto.GenerateSigner(crypto.SigSM2)
	if err != nil {
		t.Fatal(err)
	}
	ed, err := crypto.GenerateSigner(crypto.SigEd25519)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	priv, _ := crypto.MarshalSignerPEM(sm2)
	pub, _ := crypto.MarshalVerifierPEM(ed.Public())
	privFile, pubFile := write("sm2.key", priv), write("ed.pub", pub)
	hexFile := write("sm2.hex", []byte(hexString(sm2.Public().Bytes())+"\n"))
	junk := write("junk", []byte("not a key"))

	good := []struct {
		suite string
		files []string
		want  crypto.KeyID
	}{
		{"GM", []string{privFile}, sm2.Public().KeyID()},
		{"GM-PQ", []string{hexFile}, sm2.Public().KeyID()},
		{"INTL-PQ", []string{pubFile}, ed.Public().KeyID()},
		{"INTL-PQ", []string{privFile, pubFile}, ed.Public().KeyID()},
	}
	for _, g := range good {
		c := Common{Suite: g.suite, ServerKeys: g.files}
		cfg, err := c.secureConfig()
		if err != nil {
			t.Fatalf("%s %v: %v", g.suite, g.files, err)
		}
		if len(cfg.Suites) != 1 || cfg.Suites[0].Name != g.suite {
			t.Errorf("suites %v", cfg.Suites)
		}
		found := false
		for _, v := range cfg.ServerKeys {
			found = found || v.KeyID() == g.want
		}
		if !found {
			t.Errorf("%s %v: the key is not pinned", g.suite, g.files)
		}
	}
	bad := []struct {
		c    Common
		want string
	}{
		{Common{Suite: "GM"}, "needs -server-key"},
		{Common{ServerKeys: []string{privFile}}, "without -suite"},
		{Common{Suite: "AES", ServerKeys: []string{privFile}}, "unknown suite"},
		{Common{Suite: "GM", ServerKeys: []string{pubFile}}, "no SM2 key"},
		{Common{Suite: "GM", ServerKeys: []string{junk}}, "no PEM public or private key"},
		{Common{Suite: "GM", ServerKeys: []string{filepath.Join(dir, "missing")}}, "no such file"},
	}
	for _, b := range bad {
		_, err := b.c.secureConfig()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%+v: %v, want %q", b.c, err, b.want)
		}
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// securePair returns the client wsConn state (no socket) and the server
// crypto.Conn of one channel established over a pipe.
func securePair(tb testing.TB, suite *crypto.Suite, codec protocol.Codec) (*wsConn, *crypto.Conn) {
	tb.Helper()
	id, err := crypto.GenerateSigner(suite.Signature)
	if err != nil {
		tb.Fatal(err)
	}
	a, b := net.Pipe()
	tb.Cleanup(func() { a.Close(); b.Close() })
	srv := make(chan *crypto.Channel, 1)
	go func() {
		ch, err := crypto.Server(crypto.NewStreamTransport(b, 0), &crypto.ServerConfig{Suites: []*crypto.Suite{suite}, Identities: []crypto.Signer{id}})
		if err != nil {
			tb.Error(err)
		}
		srv <- ch
	}()
	cli, err := crypto.Client(crypto.NewStreamTransport(a, 0), &crypto.ClientConfig{Suites: []*crypto.Suite{suite}, ServerKeys: []crypto.Verifier{id.Public()}})
	if err != nil {
		tb.Fatal(err)
	}
	s := <-srv
	if s == nil {
		tb.FailNow()
	}
	return &wsConn{codec: codec, sec: cli.Conn(), tickets: &ticketStore{}}, s.Conn()
}

// serverRound plays the gateway: it opens the client's frame and answers
// with a Deliver of the same text, sealed, placed in w.rbuf as if read.
func serverRound(tb testing.TB, w *wsConn, srv *crypto.Conn, frame []byte, st *serverState) {
	rec, ok := secureDataJSON(st.dbuf[:0], frame, w.codec.Binary())
	if ok {
		st.dbuf = rec
	} else {
		if err := w.codec.Decode(frame, &st.env); err != nil || st.env.Kind != protocol.KindSecure {
			tb.Fatalf("server: %v %v", err, st.env.Kind)
		}
		rec = st.env.Secure.Data
	}
	var err error
	if st.plain, err = srv.Open(st.plain[:0], rec); err != nil {
		tb.Fatal(err)
	}
	if err := w.codec.Decode(st.plain, &st.env); err != nil {
		tb.Fatal(err)
	}
	st.out.Kind = protocol.KindDeliver
	st.out.Deliver.Text = st.env.Send.Text
	if st.enc, err = w.codec.AppendEncode(st.enc[:0], &st.out); err != nil {
		tb.Fatal(err)
	}
	if st.rec, err = srv.Seal(st.rec[:0], st.enc); err != nil {
		tb.Fatal(err)
	}
	st.outer.Kind, st.outer.Secure.Data = protocol.KindSecure, st.rec
	if w.rbuf, err = w.codec.AppendEncode(w.rbuf[:0], &st.outer); err != nil {
		tb.Fatal(err)
	}
}

type serverState struct {
	env, out, outer       protocol.Envelope
	dbuf, plain, enc, rec []byte
}

// TestSecureFrames: what the client seals the server opens, and what the
// server seals the client opens, many times in a row (per-direction
// sequence numbers), with both codecs and every suite; a tampered frame is
// a *secureError.
func TestSecureFrames(t *testing.T) {
	for _, s := range crypto.DefaultSuites {
		for _, sub := range []string{protocol.SubprotocolProto, protocol.SubprotocolJSON} {
			t.Run(s.Name+"/"+sub, func(t *testing.T) {
				w, srv := securePair(t, s, protocol.ForSubprotocol(sub))
				var st serverState
				for i := range 50 {
					text := strings.Repeat("x", i) + "é\"\\"
					env := protocol.Envelope{Kind: protocol.KindSend, ID: uint64(i)}
					env.Send.Text = text
					var err error
					if w.wbuf, err = w.codec.AppendEncode(w.wbuf[:0], &env); err != nil {
						t.Fatal(err)
					}
					frame, err := w.seal()
					if err != nil {
						t.Fatal(err)
					}
					serverRound(t, w, srv, frame, &st)
					inner, ok, err := w.open()
					if err != nil || !ok {
						t.Fatalf("open: %v %v", ok, err)
					}
					var got protocol.Envelope
					if err := w.codec.Decode(inner, &got); err != nil || got.Kind != protocol.KindDeliver || got.Deliver.Text != text {
						t.Fatalf("round %d: %v %+v", i, err, got.Deliver)
					}
				}
				// A frame replayed (the last one again) does not open.
				if _, _, err := w.open(); err == nil {
					t.Fatal("a replayed record opened")
				} else if se := (*secureError)(nil); !errors.As(err, &se) {
					t.Fatalf("replay: %T %v", err, err)
				}
			})
		}
	}
}

// BenchmarkSecureFrame is the client's per-message work on an encrypted
// connection besides the socket: encode a 256-byte Send, seal, wrap; then
// unwrap, open and decode the Deliver (the server's side of the round is
// included: open, decode, encode, seal, wrap). Compare with
// BenchmarkSecureFrame/plain, the same without the channel. It must not
// allocate.
func BenchmarkSecureFrame(b *testing.B) {
	text := strings.Repeat("a", 256)
	for _, sub := range []string{protocol.SubprotocolProto, protocol.SubprotocolJSON} {
		codec := protocol.ForSubprotocol(sub)
		b.Run("plain/"+sub, func(b *testing.B) {
			w := &wsConn{codec: codec}
			var env, got protocol.Envelope
			b.ReportAllocs()
			for i := range b.N {
				env = protocol.Envelope{Kind: protocol.KindSend, ID: uint64(i)}
				env.Send.Text = text
				w.wbuf, _ = codec.AppendEncode(w.wbuf[:0], &env)
				if err := codec.Decode(w.wbuf, &got); err != nil {
					b.Fatal(err)
				}
				env = protocol.Envelope{Kind: protocol.KindDeliver}
				env.Deliver.Text = got.Send.Text
				w.rbuf, _ = codec.AppendEncode(w.rbuf[:0], &env)
				if err := codec.Decode(w.rbuf, &w.renv); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, s := range []*crypto.Suite{crypto.GM, crypto.IntlPQ} {
			b.Run(s.Name+"/"+sub, func(b *testing.B) {
				w, srv := securePair(b, s, codec)
				var st serverState
				var env protocol.Envelope
				b.ReportAllocs()
				for i := range b.N {
					env = protocol.Envelope{Kind: protocol.KindSend, ID: uint64(i)}
					env.Send.Text = text
					w.wbuf, _ = codec.AppendEncode(w.wbuf[:0], &env)
					frame, err := w.seal()
					if err != nil {
						b.Fatal(err)
					}
					serverRound(b, w, srv, frame, &st)
					inner, ok, err := w.open()
					if err != nil || !ok {
						b.Fatal(err)
					}
					if err := codec.Decode(inner, &w.renv); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestSecureDataJSON: the JSON fast path returns what the codec decodes
// for the frames the codec writes, and leaves other shapes to the codec.
func TestSecureDataJSON(t *testing.T) {
	codec := protocol.ForSubprotocol(protocol.SubprotocolJSON)
	for _, n := range []int{1, 2, 3, 17, 300} {
		data := bytes.Repeat([]byte{0xfb, 0x17, 0}, n)[:n]
		frame, err := codec.AppendEncode(nil, &protocol.Envelope{Kind: protocol.KindSecure, Secure: protocol.Secure{Data: data}})
		if err != nil {
			t.Fatal(err)
		}
		got, ok := secureDataJSON(nil, frame, false)
		if !ok || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: %q → %x %v", n, frame, got, ok)
		}
		if _, ok := secureDataJSON(nil, frame, true); ok {
			t.Fatal("fast path taken for a binary codec")
		}
	}
	for _, f := range []string{`{"secure":{"data":""}}`, `{"secure":{"data":"a\"b"}}`, `{"secure":{"data":"AAA"}}`,
		` {"secure":{"data":"AAAA"}}`, `{"secure":{"data":"AA\nAA"}}`, `{"id":1,"secure":{"data":"AAAA"}}`} {
		if got, ok := secureDataJSON(nil, []byte(f), false); ok {
			t.Errorf("%q taken: %x", f, got)
		}
	}
}

// FuzzSecureDataJSON: whenever the fast path takes a frame, the codec
// decodes the same frame to a secure envelope with the same data.
func FuzzSecureDataJSON(f *testing.F) {
	f.Add([]byte(`{"secure":{"data":"FwAB"}}`))
	f.Add([]byte(`{"secure":{"data":"` + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 40)) + `"}}`))
	codec := protocol.ForSubprotocol(protocol.SubprotocolJSON)
	f.Fuzz(func(t *testing.T, frame []byte) {
		got, ok := secureDataJSON([]byte("pre"), frame, false)
		if !ok {
			if string(got) != "pre" {
				t.Fatalf("refused, dst changed to %q", got)
			}
			return
		}
		var env protocol.Envelope
		if err := codec.Decode(frame, &env); err != nil {
			t.Fatalf("taken %q, codec: %v", frame, err)
		}
		if env.Kind != protocol.KindSecure || string(got) != "pre"+string(env.Secure.Data) {
			t.Fatalf("%q: fast %x, codec %v %x", frame, got, env.Kind, env.Secure.Data)
		}
	})
}
