package broker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unigate/unigate/broker/histstore"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/protocol"
)

// laggingHistory answers some Replay calls like a stream replica that has
// not applied the newest messages yet: History reads are direct gets, and
// any replica answers them, so Last (answered by one that has them) can
// name a seq that the next read (answered by another) does not reach.
type laggingHistory struct {
	History
	mu  sync.Mutex
	lag map[string]*lag // conversation → the reads to cut
	cut int             // reads cut so far
}

// lag cuts the next read of a conversation (with after == from, or any
// read when any) after the messages up to seq upTo.
type lag struct {
	from uint64
	any  bool
	upTo uint64
}

func (h *laggingHistory) arm(conv string, l lag) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lag == nil {
		h.lag = make(map[string]*lag)
	}
	h.lag[conv] = &l
}

func (h *laggingHistory) cuts() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cut
}

func (h *laggingHistory) Replay(ctx context.Context, tenant, conv string, after uint64, limit int, fn func(*histstore.Message) bool) (histstore.RangeInfo, error) {
	h.mu.Lock()
	l := h.lag[conv]
	if l != nil && (l.any || l.from == after) {
		delete(h.lag, conv)
		h.cut++
	} else {
		l = nil
	}
	h.mu.Unlock()
	if l == nil {
		return h.History.Replay(ctx, tenant, conv, after, limit, fn)
	}
	info, err := h.History.Replay(ctx, tenant, conv, after, limit, func(m *histstore.Message) bool {
		return m.Seq <= l.upTo && fn(m)
	})
	info.N = min(info.N, int(l.upTo-min(l.upTo, after)))
	return info, err
}

// TestClusterResumeReplicaBehind: a visitor resumes on a node that loads
// its conversation while the replica answering its history reads has not
// applied the newest message yet (a node just died, or the machine is
// loaded). The stream's Last names seq L, the read ends at L-1. The
// visitor must still get every message after its cursor once, in order,
// then the live ones: with the cursor inside the ring (the ring was
// warmed by the short read) and older than the ring (the replay reads the
// stream). Before readStream, the first visitor missed L (the ring ended
// at L-1 while the conversation's last seq said L) and the second missed
// L after the replay (the live messages went on at L+1): the "missed seq
// 1001" of TestClusterKillNode under load.
func TestClusterResumeReplicaBehind(t *testing.T) {
	var lh *laggingHistory
	const ring = 4
	nodes := startClusterHook(t, 3, 1, Options{HistoryPerConversation: ring}, func(i int, cn *clusterNode) {
		if i == 2 {
			lh = &laggingHistory{History: cn.hist}
			cn.history = lh
		}
	})
	A, B, C := nodes[0].env, nodes[1].env, nodes[2].env
	ag := B.dial("agent@B", pbProto)
	ag.hello(protocol.Hello{Token: B.token("agent-lag", token.RoleAgent)})
	ag.online(2)

	type pair struct {
		name   string
		cursor func(last uint64) uint64 // the visitor's cursor at the resume
		arm    func(cid string, last uint64) lag
	}
	pairs := []pair{
		// Cursor within the ring: the load's warming read is short.
		{"ring", func(last uint64) uint64 { return last - 2 }, func(cid string, last uint64) lag {
			return lag{any: true, upTo: last - 1}
		}},
		// Cursor older than the ring: the replay's read is short.
		{"stream", func(uint64) uint64 { return 1 }, func(cid string, last uint64) lag {
			return lag{from: 1, upTo: last - 1}
		}},
	}
	for _, p := range pairs {
		v := A.dial("visitor-"+p.name+"@A", jsonProto)
		w := v.hello(protocol.Hello{Token: A.token("vis-lag-"+p.name, token.RoleVisitor)})
		cid := v.open(protocol.Open{}).ConversationID
		ag.waitState(cid, protocol.StateAssigned)
		var last uint64
		for i := range 2 * ring {
			if i%2 == 0 {
				last = v.say(cid, fmt.Sprintf("v-%d", i), "from the visitor").Seq
				ag.waitDeliver(cid, last)
			} else {
				last = ag.say(cid, fmt.Sprintf("a-%d", i), "from the agent").Seq
				v.waitDeliver(cid, last)
			}
		}
		_ = v.ws.Close()
		<-v.done

		cursor := p.cursor(last)
		before := lh.cuts()
		lh.arm(cid, p.arm(cid, last))
		back := C.dial("visitor-"+p.name+"@C", jsonProto)
		if w2 := back.hello(protocol.Hello{
			Token: A.token("vis-lag-"+p.name, token.RoleVisitor), ResumeToken: w.ResumeToken,
			Cursors: []protocol.Cursor{{ConversationID: cid, LastSeq: cursor}},
		}); !w2.Resumed {
			t.Fatalf("%s: not resumed on C", p.name)
		}
		// A live message after the resume.
		// (C's new subscription to the conversation's notices may still
		// be crossing the routes: a missed notice is caught up by C's
		// recheck, hence the generous bound.)
		live := ag.say(cid, "a-live", "after the resume").Seq
		back.waitForWithin(time.Minute, fmt.Sprintf("live deliver %d", live), func(e *protocol.Envelope) bool {
			return e.Kind == protocol.KindDeliver && e.Deliver.ConversationID == cid && e.Deliver.Seq == live
		})
		if lh.cuts() != before+1 {
			t.Fatalf("%s: %d reads cut, want 1 (the test did not reach the read it meant to cut)", p.name, lh.cuts()-before)
		}
		var want []uint64
		for s := cursor + 1; s <= live; s++ {
			want = append(want, s)
		}
		if got := back.delivers(cid); !slices.Equal(got, want) {
			t.Fatalf("%s: resumed at cursor %d (last %d) with a replica behind at %d: delivered %v, want %v", p.name, cursor, last, last-1, got, want)
		}
		if errs := back.all(func(e *protocol.Envelope) bool { return e.Kind == protocol.KindError }); len(errs) > 0 {
			t.Fatalf("%s: errors on resume: %+v", p.name, errs[0].Error)
		}
	}
}
