package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/netpoll"
	"github.com/unigate/unigate/protocol"
)

// stageFigures reads the count and the sum of every stage of
// unigate_relay_stage_seconds from the netpoll server's metrics.
func stageFigures(t *testing.T, srv *netpoll.Server) (counts map[string]uint64, sums map[string]float64) {
	t.Helper()
	var buf bytes.Buffer
	srv.Metrics().WritePrometheus(&buf)
	counts, sums = map[string]uint64{}, map[string]float64{}
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		line := sc.Text()
		for _, suffix := range []string{"_count", "_sum"} {
			prefix := "unigate_relay_stage_seconds" + suffix + `{stage="`
			if !strings.HasPrefix(line, prefix) {
				continue
			}
			rest := line[len(prefix):]
			q := strings.IndexByte(rest, '"')
			sp := strings.LastIndexByte(rest, ' ')
			if q < 0 || sp < 0 {
				t.Fatalf("unexpected metric line %q", line)
			}
			stage, val := rest[:q], rest[sp+1:]
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			if suffix == "_count" {
				counts[stage] = uint64(v)
			} else {
				sums[stage] = v
			}
		}
	}
	return counts, sums
}

// relayStageTest relays n visitor messages to an agent through a real
// netpoll server and checks the stage histograms: every stage counted
// once per delivered message, and the stages' sums adding up to at most
// the end-to-end sum.
func relayStageTest(t *testing.T, env *testEnv) {
	const n = 20
	v := env.dial("visitor", pbProto)
	v.hello(protocol.Hello{Token: env.token("vis-1", token.RoleVisitor)})
	cid := v.open(protocol.Open{}).ConversationID
	a := env.dial("agent", jsonProto)
	a.hello(protocol.Hello{Token: env.token("agent-1", token.RoleAgent)})
	a.online(2)
	v.waitState(cid, protocol.StateAssigned)

	before, _ := stageFigures(t, env.srv)
	if before["total"] != 0 {
		t.Fatalf("stages counted before any chat message: %v", before)
	}
	var last uint64
	for i := range n {
		last = v.say(cid, fmt.Sprintf("m%d", i), fmt.Sprintf("message %d", i)).Seq
	}
	a.waitDeliver(cid, last)
	// The Deliver was written before the client read it, and the stages
	// are observed right after the writev: poll for the last one.
	var counts map[string]uint64
	var sums map[string]float64
	if !waitFor(t, 5*time.Second, func() bool {
		counts, sums = stageFigures(t, env.srv)
		return counts["total"] >= n
	}) {
		t.Fatalf("stage counts %v, want %d each", counts, n)
	}
	// Only the n Delivers are traced: not the Acks, the welcome, the
	// conversation events.
	var parts float64
	for _, st := range netpoll.RelayStages {
		if counts[st] != n {
			t.Errorf("stage %q counted %d times, want %d", st, counts[st], n)
		}
		if st != "total" {
			parts += sums[st]
		}
	}
	if sums["total"] <= 0 {
		t.Errorf("total sum %v, want > 0", sums["total"])
	}
	if parts > sums["total"] {
		t.Errorf("the stages add up to %vs, more than the end-to-end %vs", parts, sums["total"])
	}
	// Agent replies are traced too, to the visitor.
	ack := a.say(cid, "r1", "reply")
	v.waitDeliver(cid, ack.Seq)
	if !waitFor(t, 5*time.Second, func() bool {
		counts, _ = stageFigures(t, env.srv)
		return counts["total"] == n+1
	}) {
		t.Fatalf("after the reply: stage counts %v, want %d each", counts, n+1)
	}
}

// TestRelayStageMetrics: unigate_relay_stage_seconds counts every relayed
// chat message in every stage (in-memory broker).
func TestRelayStageMetrics(t *testing.T) {
	relayStageTest(t, startEnv(t, Options{}))
}

// TestRelayStageMetricsDurable: the same with durable history, where
// store is the JetStream append and appended its completion's wait.
func TestRelayStageMetricsDurable(t *testing.T) {
	st := startStores(t, t.TempDir())
	env, _ := startDurable(t, Options{}, st.hist, st.conv)
	relayStageTest(t, env)
	_, sums := stageFigures(t, env.srv)
	if sums["store"] <= 0 || sums["appended"] <= 0 {
		t.Errorf("durable store %vs, appended %vs: want both > 0", sums["store"], sums["appended"])
	}
}
