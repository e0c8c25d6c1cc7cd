package histstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RangeInfo describes what Replay found.
type RangeInfo struct {
	// First and Last are the conversation sequences of the oldest and
	// newest retained messages (0 when none is retained).
	First, Last uint64
	// Gap is true when messages after the caller's cursor were discarded
	// by retention: the client resumed from before the oldest retained
	// message and gets only what remains.
	Gap bool
	// N is the number of messages passed to fn.
	N int
}

const (
	// maxBatch is the size of one direct-get batch.
	maxBatch = 256
	// scanSkip is how many messages at or before the cursor Replay reads
	// and drops rather than binary-searching for the start.
	scanSkip = 64
)

// Range calls fn for the messages of a conversation with Seq > after, in
// order, at most limit (0: all), until fn returns false. See Replay.
func (s *Store) Range(ctx context.Context, tenant, conv string, after uint64, limit int, fn func(*Message) bool) error {
	_, err := s.Replay(ctx, tenant, conv, after, limit, fn)
	return err
}

// Replay is Range that also reports the retained window and whether
// retention left a gap after the cursor.
//
// The cost does not depend on the size of the stream: a few direct gets
// locate the first wanted message, then batched direct gets stream the
// conversation's messages from there. The lookup is:
//
//  1. the conversation's last message (direct get by last subject) gives
//     Last; nothing to do if after >= Last;
//  2. its first retained message (next by subject from sequence 1) gives
//     First; if after < First the replay starts there (Gap when after+1 <
//     First);
//  3. otherwise, when fewer than 64 messages precede the cursor, the
//     replay starts at First and drops them; else a binary search over
//     stream sequences with "next message of this subject at or after x"
//     finds the first message with Seq > after (about log2 of the
//     stream's length in direct gets, each served from the file store's
//     per-subject index).
//
// fn gets a *Message that is reused between calls: copy the struct to
// keep it (its strings are never reused). A stored message that does not
// decode stops the replay with an ErrCorrupt error.
func (s *Store) Replay(ctx context.Context, tenant, conv string, after uint64, limit int, fn func(*Message) bool) (RangeInfo, error) {
	var info RangeInfo
	if err := checkKey(tenant, conv); err != nil {
		return info, err
	}
	if limit < 0 {
		return info, fmt.Errorf("%w: limit %d", ErrInvalid, limit)
	}
	subj := s.Subject(tenant, conv)
	m := &Message{Tenant: tenant, Conversation: conv}

	last, err := s.stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("histstore: range: %w", err)
	}
	if err := decode(last.Data, m, s.sealer, false); err != nil {
		return info, fmt.Errorf("stream sequence %d: %w", last.Sequence, err)
	}
	info.Last = m.Seq
	lastStream := last.Sequence

	seq, first, err := s.nextFor(ctx, subj, 1, m)
	if err != nil {
		return info, err
	}
	if seq == 0 { // discarded between the two gets
		info.Last = 0
		return info, nil
	}
	info.First = first
	if after >= info.Last {
		return info, nil
	}
	start := seq
	if after+1 < first {
		info.Gap = true
	} else if after-first+1 > scanSkip {
		// Binary search: lo has "next Seq <= after", hi has "next Seq > after".
		lo, hi := seq, lastStream
		for lo+1 < hi {
			mid := lo + (hi-lo)/2
			sseq, cseq, err := s.nextFor(ctx, subj, mid, m)
			if err != nil {
				return info, err
			}
			switch {
			case sseq == 0: // discarded meanwhile: restart from the new first
				return s.Replay(ctx, tenant, conv, after, limit, fn)
			case cseq > after:
				hi = mid
			default:
				lo = sseq
			}
		}
		start = hi
	}
	err = s.batches(ctx, subj, start, after, limit, m, &info, fn)
	return info, err
}

// nextFor returns the stream and conversation sequences of the first
// message of subj at or after stream sequence from (0, 0 when none),
// decoding it into m without its text (a sealed text is not opened).
func (s *Store) nextFor(ctx context.Context, subj string, from uint64, m *Message) (uint64, uint64, error) {
	raw, err := s.stream.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subj))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("histstore: range: %w", err)
	}
	if err := decode(raw.Data, m, s.sealer, false); err != nil {
		return 0, 0, fmt.Errorf("stream sequence %d: %w", raw.Sequence, err)
	}
	return raw.Sequence, m.Seq, nil
}

type directBatch struct {
	Seq      uint64 `json:"seq"`
	NextFor  string `json:"next_by_subj"`
	Batch    int    `json:"batch"`
	NoHeader bool   `json:"no_hdr"`
}

// batches streams the messages of subj from stream sequence start with
// batched direct gets (payloads only; the end-of-batch marker carries the
// last stream sequence sent), passing those with Seq > after to fn.
func (s *Store) batches(ctx context.Context, subj string, start, after uint64, limit int, m *Message, info *RangeInfo, fn func(*Message) bool) error {
	inbox := nats.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("histstore: range: %w", err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	var raw rawMessage
	for {
		n := maxBatch
		if limit > 0 {
			n = min(n, limit-info.N+scanSkip)
		}
		req, _ := json.Marshal(directBatch{Seq: start, NextFor: subj, Batch: n, NoHeader: true})
		if err := s.nc.PublishRequest(s.directSubj, inbox, req); err != nil {
			return fmt.Errorf("histstore: range: %w", err)
		}
		for {
			msg, err := sub.NextMsgWithContext(ctx)
			if err != nil {
				return fmt.Errorf("histstore: range: %w", err)
			}
			if len(msg.Data) == 0 && msg.Header != nil {
				switch st := msg.Header.Get("Status"); st {
				case "204": // end of batch
					pendingN, _ := strconv.ParseUint(msg.Header.Get("Nats-Num-Pending"), 10, 64)
					lseq, _ := strconv.ParseUint(msg.Header.Get(jetstream.LastSequenceHeader), 10, 64)
					if pendingN == 0 || lseq < start {
						return nil
					}
					start = lseq + 1
				case "404":
					return nil
				case "":
					// An empty stored message: not one of ours.
					return fmt.Errorf("%w: empty body", ErrCorrupt)
				default:
					return fmt.Errorf("%w: direct get: %s %s", ErrUnavailable, st, msg.Header.Get("Description"))
				}
				break
			}
			if err := raw.parse(msg.Data); err != nil {
				return err
			}
			if raw.seq <= after {
				continue // skipped: a sealed text is not opened
			}
			if err := raw.fill(m, s.sealer, true); err != nil {
				return err
			}
			info.N++
			if !fn(m) || (limit > 0 && info.N >= limit) {
				return nil
			}
		}
	}
}
