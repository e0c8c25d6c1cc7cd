package histstore

import (
	"errors"
	"fmt"
	"testing"
)

// appendBatch is AppendBatchAsync, waited for.
func appendBatch(t *testing.T, s *Store, ms []*Message, expect uint64) (uint64, bool, error) {
	t.Helper()
	type result struct {
		seq uint64
		dup bool
		err error
	}
	ch := make(chan result, 1)
	if err := s.AppendBatchAsync(ms, expect, func(seq uint64, dup bool, err error) { ch <- result{seq, dup, err} }); err != nil {
		return 0, false, err
	}
	r := <-ch
	return r.seq, r.dup, r.err
}

func batchOf(conv string, from uint64, n int, sender string) []*Message {
	ms := make([]*Message, n)
	for i := range ms {
		ms[i] = msg("t", conv, from+uint64(i), sender)
	}
	return ms
}

// TestAppendBatch: a batch is stored whole, its messages at consecutive
// stream sequences ending at the one returned; it conflicts like one
// append; its retry is a duplicate; a batch with a message id stored
// before is refused as a batch (nothing stored) and the messages go one
// by one; a batch never interleaves with another conversation's appends.
func TestAppendBatch(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{AtomicBatches: 1})
	if !s.Batches() {
		t.Fatal("atomic batches not confirmed by the server")
	}
	ctx := testCtx(t)
	other, _, err := s.Append(ctx, msg("t", "other", 1, "o"), 0)
	if err != nil {
		t.Fatal(err)
	}

	first := batchOf("conv", 1, 5, "v")
	last, dup, err := appendBatch(t, s, first, 0)
	if err != nil || dup || last != other+5 {
		t.Fatalf("batch: last %d dup %v err %v; want %d", last, dup, err, other+5)
	}
	// The same batch again, with the same expectation: stored before.
	if again, dup, err := appendBatch(t, s, first, 0); err != nil || !dup || again != last {
		t.Fatalf("retry: %d %v %v; want %d dup", again, dup, err, last)
	}
	// A stale expectation: a conflict naming the real last, nothing stored.
	_, _, err = appendBatch(t, s, batchOf("conv", 6, 3, "a"), other)
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Last != last {
		t.Fatalf("stale batch: %v, want a conflict with last %d", err, last)
	}
	// A batch whose second message is a duplicate of a stored one.
	mixed := batchOf("conv", 6, 3, "a")
	mixed[1] = first[4]
	mixed[1].Seq = 7
	if _, _, err := appendBatch(t, s, mixed, last); !errors.Is(err, ErrBatch) {
		t.Fatalf("batch with a stored message id: %v, want ErrBatch", err)
	}
	// One by one from there: the duplicate is reported as such.
	if seq, _, err := s.Append(ctx, mixed[0], last); err != nil || seq != last+1 {
		t.Fatalf("single after a refused batch: %d %v", seq, err)
	}
	if _, dup, err := s.Append(ctx, mixed[1], last+1); err != nil || !dup {
		t.Fatalf("duplicate single: dup %v %v", dup, err)
	}
	var got []string
	if err := s.Range(ctx, "t", "conv", 0, 0, func(m *Message) bool {
		got = append(got, fmt.Sprintf("%d:%s", m.Seq, m.ClientMsgID))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"1:v-1", "2:v-2", "3:v-3", "4:v-4", "5:v-5", "6:a-6"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	// Bad batches are refused before anything is sent.
	gap := batchOf("conv", 7, 2, "a")
	gap[1].Seq = 9
	if err := s.AppendBatchAsync(gap, 0, func(uint64, bool, error) {}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("batch with a seq gap: %v", err)
	}
	if err := s.AppendBatchAsync(batchOf("conv", 7, MaxBatch+1, "a"), 0, func(uint64, bool, error) {}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("batch over MaxBatch: %v", err)
	}
}

// TestAppendBatchOff: without atomic batches (R1 default) a batch of one
// is an append and a longer one is refused with ErrBatch.
func TestAppendBatchOff(t *testing.T) {
	s, _ := openStore(t, t.TempDir(), Options{})
	if s.Batches() {
		t.Fatal("batches on for an R1 stream by default")
	}
	if seq, _, err := appendBatch(t, s, batchOf("c", 1, 1, "v"), 0); err != nil || seq == 0 {
		t.Fatalf("batch of one: %d %v", seq, err)
	}
	if err := s.AppendBatchAsync(batchOf("c", 2, 2, "v"), 0, func(uint64, bool, error) {}); !errors.Is(err, ErrBatch) {
		t.Fatalf("batch of two with batches off: %v", err)
	}
}
