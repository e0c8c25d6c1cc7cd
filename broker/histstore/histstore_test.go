package histstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/natsnode"
)

func testCtx(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// openStore starts an embedded server on dir and opens a Store on it. The
// returned stop function shuts both down (also run at cleanup).
func openStore(tb testing.TB, dir string, o Options) (*Store, func()) {
	tb.Helper()
	n, err := natsnode.Start(natsnode.Options{StoreDir: dir})
	if err != nil {
		tb.Fatal(err)
	}
	s, err := Open(testCtx(tb), n.JetStream(), o)
	if err != nil {
		n.Shutdown()
		tb.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			s.Close()
			n.Shutdown()
		})
	}
	tb.Cleanup(stop)
	return s, stop
}

func msg(tenant, conv string, seq uint64, sender string) *Message {
	return &Message{
		Tenant: tenant, Conversation: conv, Seq: seq, SenderID: sender, SenderRole: 1,
		ClientMsgID: fmt.Sprintf("%s-%d", sender, seq), Text: fmt.Sprintf("text %d", seq),
		TimeMilli: 1700000000000 + int64(seq),
	}
}

// appendN appends messages from+1..to to one conversation and returns the
// last stream sequence.
func appendN(tb testing.TB, s *Store, tenant, conv string, from, to, expect uint64) uint64 {
	tb.Helper()
	ctx := testCtx(tb)
	for i := from + 1; i <= to; i++ {
		seq, dup, err := s.Append(ctx, msg(tenant, conv, i, "v1"), expect)
		if err != nil || dup {
			tb.Fatalf("append %d: seq %d dup %v err %v", i, seq, dup, err)
		}
		expect = seq
	}
	return expect
}

func collect(tb testing.TB, s *Store, tenant, conv string, after uint64, limit int) ([]Message, RangeInfo) {
	tb.Helper()
	var out []Message
	info, err := s.Replay(testCtx(tb), tenant, conv, after, limit, func(m *Message) bool {
		out = append(out, *m)
		return true
	})
	if err != nil {
		tb.Fatalf("Replay(%s, %d, %d): %v", conv, after, limit, err)
	}
	if info.N != len(out) {
		tb.Fatalf("info.N = %d, got %d messages", info.N, len(out))
	}
	return out, info
}

func checkSeqs(tb testing.TB, ms []Message, from, to uint64) {
	tb.Helper()
	if uint64(len(ms)) != to-from+1 {
		tb.Fatalf("got %d messages, want %d..%d", len(ms), from, to)
	}
	for i, m := range ms {
		if want := from + uint64(i); m.Seq != want {
			tb.Fatalf("message %d has seq %d, want %d", i, m.Seq, want)
		}
	}
}

func TestAppendRange(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{})
	tenant, conv := "Acme Corp.\r\n*>", "c_1" // the tenant needs escaping
	appendN(t, s, tenant, conv, 0, 20, 0)
	appendN(t, s, "other", conv, 0, 3, 0)

	all, info := collect(t, s, tenant, conv, 0, 0)
	checkSeqs(t, all, 1, 20)
	if info.First != 1 || info.Last != 20 || info.Gap {
		t.Fatalf("info %+v", info)
	}
	want := *msg(tenant, conv, 7, "v1")
	if all[6] != want {
		t.Fatalf("message 7 = %+v, want %+v", all[6], want)
	}
	part, _ := collect(t, s, tenant, conv, 5, 3)
	checkSeqs(t, part, 6, 8)
	none, _ := collect(t, s, tenant, conv, 20, 0)
	checkSeqs(t, none, 21, 20)
	other, _ := collect(t, s, "other", conv, 0, 0)
	checkSeqs(t, other, 1, 3)
	missing, info := collect(t, s, tenant, "nope", 0, 0)
	if len(missing) != 0 || info != (RangeInfo{}) {
		t.Fatalf("unknown conversation: %v %+v", missing, info)
	}
	n := 0
	if err := s.Range(testCtx(t), tenant, conv, 0, 0, func(*Message) bool { n++; return n < 4 }); err != nil || n != 4 {
		t.Fatalf("early stop: n=%d err=%v", n, err)
	}
	m, _, ok, err := s.Last(testCtx(t), tenant, conv)
	if err != nil || !ok || m.Seq != 20 || m.Tenant != tenant {
		t.Fatalf("Last = %+v %v %v", m, ok, err)
	}
	if _, _, ok, err := s.Last(testCtx(t), tenant, "nope"); ok || err != nil {
		t.Fatalf("Last(unknown) = %v %v", ok, err)
	}
}

func TestInvalid(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{})
	big := strings.Repeat("x", MaxIDBytes+1)
	bad := []*Message{
		{Tenant: "t", Conversation: "", Seq: 1},
		{Tenant: strings.Repeat("t", MaxTenantBytes+1), Conversation: "c", Seq: 1},
		{Tenant: "t", Conversation: "c", Seq: 0},
		{Tenant: "t", Conversation: "c", Seq: 1, SenderID: big},
		{Tenant: "t", Conversation: "c", Seq: 1, ClientMsgID: big},
		{Tenant: "t", Conversation: "c", Seq: 1, Text: strings.Repeat("x", MaxTextBytes+1)},
	}
	for i, m := range bad {
		if _, _, err := s.Append(testCtx(t), m, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("case %d: err = %v, want ErrInvalid", i, err)
		}
	}
	if err := s.Range(testCtx(t), "t", "", 0, 0, func(*Message) bool { return true }); !errors.Is(err, ErrInvalid) {
		t.Errorf("Range: %v", err)
	}
	// The largest message fits in the stream's MaxMsgSize.
	m := &Message{Tenant: strings.Repeat("t", MaxTenantBytes), Conversation: strings.Repeat("c", MaxConversationBytes), Seq: 1,
		SenderID: big[1:], ClientMsgID: big[1:], Text: strings.Repeat("x", MaxTextBytes), SenderRole: 255, TimeMilli: -1}
	if _, _, err := s.Append(testCtx(t), m, 0); err != nil {
		t.Fatalf("largest message: %v", err)
	}
	got, _, ok, err := s.Last(testCtx(t), m.Tenant, m.Conversation)
	if err != nil || !ok || *got != *m {
		t.Fatalf("largest message round trip: %v %v", ok, err)
	}
}

func TestDedupe(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{})
	ctx := testCtx(t)
	m1 := msg("t", "c", 1, "v")
	s1, dup, err := s.Append(ctx, m1, 0)
	if err != nil || dup {
		t.Fatal(dup, err)
	}
	// A retry (the ack was lost): same message, same expectation.
	got, dup, err := s.Append(ctx, m1, 0)
	if err != nil || !dup || got != s1 {
		t.Fatalf("retry: seq %d dup %v err %v, want %d true nil", got, dup, err, s1)
	}
	s2, _, err := s.Append(ctx, msg("t", "c", 2, "v"), s1)
	if err != nil {
		t.Fatal(err)
	}
	// An old retry, no longer the last message: a conflict.
	if _, _, err := s.Append(ctx, m1, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale retry: %v", err)
	}
	// Async retry of the last one.
	done := make(chan error, 1)
	if err := s.AppendAsync(msg("t", "c", 2, "v"), s1, func(seq uint64, dup bool, err error) {
		if err == nil && (!dup || seq != s2) {
			err = fmt.Errorf("seq %d dup %v", seq, dup)
		}
		done <- err
	}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	all, _ := collect(t, s, "t", "c", 0, 0)
	checkSeqs(t, all, 1, 2)
}

func TestConflictRace(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{})
	ctx := testCtx(t)
	const rounds = 50
	var expect uint64
	winners := make([]string, rounds+1)
	for i := uint64(1); i <= rounds; i++ {
		type res struct {
			who string
			seq uint64
			err error
		}
		ch := make(chan res, 2)
		var start sync.WaitGroup
		start.Add(1)
		for _, who := range []string{"nodeA", "nodeB"} {
			go func() {
				start.Wait()
				seq, _, err := s.Append(ctx, msg("t", "race", i, who), expect)
				ch <- res{who, seq, err}
			}()
		}
		start.Done()
		a, b := <-ch, <-ch
		if (a.err == nil) == (b.err == nil) {
			t.Fatalf("round %d: %v / %v, want exactly one success", i, a.err, b.err)
		}
		if a.err != nil {
			a, b = b, a
		}
		var ce *ConflictError
		if !errors.As(b.err, &ce) || ce.Last != a.seq || ce.Expected != expect {
			t.Fatalf("round %d: loser err %v (winner seq %d)", i, b.err, a.seq)
		}
		winners[i], expect = a.who, a.seq
	}
	all, _ := collect(t, s, "t", "race", 0, 0)
	checkSeqs(t, all, 1, rounds)
	for _, m := range all {
		if m.SenderID != winners[m.Seq] {
			t.Fatalf("seq %d from %s, winner was %s", m.Seq, m.SenderID, winners[m.Seq])
		}
	}
}

func TestLastAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s, stop := openStore(t, dir, Options{})
	lasts := map[string]uint64{}
	for c := range 3 {
		conv := fmt.Sprintf("conv_%d", c)
		lasts[conv] = appendN(t, s, "t", conv, 0, uint64(10*(c+1)), 0)
	}
	stop()
	s, _ = openStore(t, dir, Options{})
	for c := range 3 {
		conv := fmt.Sprintf("conv_%d", c)
		m, sseq, ok, err := s.Last(testCtx(t), "t", conv)
		if err != nil || !ok || m.Seq != uint64(10*(c+1)) || sseq != lasts[conv] {
			t.Fatalf("%s: Last = %+v %d %v %v, want seq %d stream %d", conv, m, sseq, ok, err, 10*(c+1), lasts[conv])
		}
		all, _ := collect(t, s, "t", conv, 0, 0)
		checkSeqs(t, all, 1, uint64(10*(c+1)))
		// The writer resumes where it left off.
		appendN(t, s, "t", conv, m.Seq, m.Seq+1, sseq)
	}
}

func TestRetention(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{MaxMsgsPerSubject: 10})
	last := appendN(t, s, "t", "c", 0, 25, 0)
	all, info := collect(t, s, "t", "c", 0, 0)
	checkSeqs(t, all, 16, 25)
	if !info.Gap || info.First != 16 || info.Last != 25 {
		t.Fatalf("info %+v", info)
	}
	tail, info := collect(t, s, "t", "c", 20, 0)
	checkSeqs(t, tail, 21, 25)
	if info.Gap {
		t.Fatal("gap reported for a cursor inside the retained window")
	}
	// The last message is never discarded by the per-subject limit, so the
	// writer keeps its expectation.
	appendN(t, s, "t", "c", 25, 26, last)

	// MaxAge can discard a whole conversation: the writer's expectation is
	// then stale (a conflict reporting Last 0) and Last says ok=false.
	s2, _ := openStore(t, t.TempDir(), Options{MaxAge: 300 * time.Millisecond})
	last = appendN(t, s2, "t", "c", 0, 3, 0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, ok, err := s2.Last(testCtx(t), "t", "c")
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("messages not expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, _, err := s2.Append(testCtx(t), msg("t", "c", 4, "v1"), last)
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Last != 0 {
		t.Fatalf("append after expiry: %v", err)
	}
	_, info = collect(t, s2, "t", "c", 3, 0)
	if info != (RangeInfo{}) {
		t.Fatalf("expired conversation: %+v", info)
	}
}

// appendMany appends msgs messages to each of convs conversations with
// AppendAsync, one in flight per conversation (each done starts the next).
func appendMany(tb testing.TB, s *Store, convs, msgs int, text string) {
	tb.Helper()
	var wg sync.WaitGroup
	errc := make(chan error, convs)
	var next func(c int, seq, expect uint64)
	next = func(c int, seq, expect uint64) {
		m := &Message{Tenant: "t", Conversation: fmt.Sprintf("conv_%d", c), Seq: seq, SenderID: "v", ClientMsgID: strconv.FormatUint(seq, 10), Text: text}
		for {
			err := s.AppendAsync(m, expect, func(sseq uint64, dup bool, err error) {
				if err != nil {
					errc <- fmt.Errorf("conv %d seq %d: %w", c, seq, err)
					wg.Done()
					return
				}
				if seq == uint64(msgs) {
					wg.Done()
					return
				}
				next(c, seq+1, sseq)
			})
			if !errors.Is(err, ErrBackpressure) {
				if err != nil {
					errc <- err
					wg.Done()
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Add(convs)
	for c := range convs {
		next(c, 1, 0)
	}
	wg.Wait()
	select {
	case err := <-errc:
		tb.Fatal(err)
	default:
	}
}

func TestRangeAmongMany(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{})
	appendMany(t, s, 100, 100, "hello")
	for _, c := range []int{0, 42, 99} {
		conv := fmt.Sprintf("conv_%d", c)
		all, _ := collect(t, s, "t", conv, 0, 0)
		checkSeqs(t, all, 1, 100)
		tail, _ := collect(t, s, "t", conv, 90, 0) // binary search path
		checkSeqs(t, tail, 91, 100)
		mid, _ := collect(t, s, "t", conv, 70, 5)
		checkSeqs(t, mid, 71, 75)
		near, _ := collect(t, s, "t", conv, 30, 0) // scan path
		checkSeqs(t, near, 31, 100)
	}
}

const helperEnv = "UNIGATE_HISTSTORE_HELPER_DIR"

// TestHelperProcess is not a test: re-executed by TestCrash, it appends to
// one conversation forever and prints "ACK <seq>" after each ack.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	n, err := natsnode.Start(natsnode.Options{StoreDir: dir})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	ctx := context.Background()
	s, err := Open(ctx, n.JetStream(), Options{})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	var expect uint64
	for seq := uint64(1); ; seq++ {
		sseq, _, err := s.Append(ctx, msg("t", "crash", seq, "v"), expect)
		if err != nil {
			fmt.Fprintln(w, "ERR", err)
			w.Flush()
			os.Exit(2)
		}
		expect = sseq
		fmt.Fprintln(w, "ACK", seq)
		w.Flush()
	}
}

func TestCrash(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var acked []uint64
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ERR") {
			t.Fatal(line)
		}
		v, ok := strings.CutPrefix(line, "ACK ")
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, seq)
		if len(acked) == 500 {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			break
		}
	}
	for sc.Scan() { // acks printed before the kill landed
		if v, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			seq, _ := strconv.ParseUint(v, 10, 64)
			acked = append(acked, seq)
		}
	}
	_ = cmd.Wait()
	if len(acked) < 500 {
		t.Fatalf("helper printed only %d acks", len(acked))
	}
	s, _ := openStore(t, dir, Options{})
	all, _ := collect(t, s, "t", "crash", 0, 0)
	// Stored: 1..N contiguous, no duplicates, N >= every acked seq (the
	// message in flight at the kill may be stored without its ack).
	checkSeqs(t, all, 1, uint64(len(all)))
	if maxAcked := acked[len(acked)-1]; uint64(len(all)) < maxAcked {
		t.Fatalf("acked up to %d, stored only %d", maxAcked, len(all))
	}
	t.Logf("acked %d, stored %d", len(acked), len(all))
}

func TestBackpressureAndClose(t *testing.T) {
	s, stop := openStore(t, t.TempDir(), Options{MaxPending: 1})
	var wg sync.WaitGroup
	wg.Add(1)
	var got error
	// One slot: the second append is refused unless the first one's ack
	// already came back.
	if err := s.AppendAsync(msg("t", "c", 1, "v"), 0, func(_ uint64, _ bool, err error) { got = err; wg.Done() }); err != nil {
		t.Fatal(err)
	}
	err := s.AppendAsync(msg("t", "d", 1, "v"), 0, func(uint64, bool, error) {})
	wg.Wait()
	if got != nil {
		t.Fatal(got)
	}
	if err != nil && !errors.Is(err, ErrBackpressure) {
		t.Fatalf("second append: %v", err)
	}
	stop()
	if err := s.AppendAsync(msg("t", "c", 2, "v"), 0, func(uint64, bool, error) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
