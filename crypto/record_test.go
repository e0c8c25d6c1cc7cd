package crypto

import (
	"testing"
)

func seal(tb testing.TB, c *Conn, msg string) []byte {
	tb.Helper()
	rec, err := c.Seal(nil, []byte(msg))
	if err != nil {
		tb.Fatal(err)
	}
	return rec
}

func TestRecordAttacks(t *testing.T) {
	for _, suite := range allSuites {
		f := newFixture(t)
		f.server.RekeyAfter = 4
		fresh := func() result { return handshake(t, f.client(suite), f.server) }

		t.Run(suite.Name+"/replay", func(t *testing.T) {
			r := fresh()
			rec := seal(t, r.client, "pay 100")
			if _, err := r.server.Open(nil, rec); err != nil {
				t.Fatal(err)
			}
			_, err := r.server.Open(nil, rec)
			wantCode(t, err, CodeRecordAuth)
		})
		t.Run(suite.Name+"/replay-across-rekey", func(t *testing.T) {
			r := fresh()
			first := seal(t, r.client, "0")
			r.server.Open(nil, first)
			for i := 1; i < 4; i++ {
				r.server.Open(nil, seal(t, r.client, "x"))
			}
			// seq 0 of the next epoch: the replay of seq 0 of epoch 0 must fail.
			_, err := r.server.Open(nil, first)
			wantCode(t, err, CodeRecordAuth)
		})
		t.Run(suite.Name+"/reorder", func(t *testing.T) {
			r := fresh()
			a, b := seal(t, r.client, "a"), seal(t, r.client, "b")
			_, err := r.server.Open(nil, b)
			wantCode(t, err, CodeRecordAuth)
			// Sticky: even the right record is refused now.
			_, err = r.server.Open(nil, a)
			wantCode(t, err, CodeConnFailed)
		})
		t.Run(suite.Name+"/drop", func(t *testing.T) {
			r := fresh()
			seal(t, r.client, "dropped")
			_, err := r.server.Open(nil, seal(t, r.client, "next"))
			wantCode(t, err, CodeRecordAuth)
		})
		t.Run(suite.Name+"/truncated", func(t *testing.T) {
			rec := seal(t, fresh().client, "a message of some length")
			for _, n := range []int{0, 1, RecordOverhead - 1, RecordOverhead, len(rec) - 1} {
				r := fresh()
				rec := seal(t, r.client, "a message of some length")
				_, err := r.server.Open(nil, rec[:n])
				if n < RecordOverhead {
					wantCode(t, err, CodeRecordTooShort)
				} else {
					wantCode(t, err, CodeRecordAuth)
				}
			}
		})
		t.Run(suite.Name+"/tampered", func(t *testing.T) {
			for _, off := range []int{1, 5, 20} {
				r := fresh()
				rec := seal(t, r.client, "a message of some length")
				rec[off] ^= 0x04
				_, err := r.server.Open(nil, rec)
				wantCode(t, err, CodeRecordAuth)
			}
		})
		t.Run(suite.Name+"/type", func(t *testing.T) {
			r := fresh()
			rec := seal(t, r.client, "data")
			rec[0] = recordClose // data turned into close: AD mismatch
			_, err := r.server.Open(nil, rec)
			wantCode(t, err, CodeRecordAuth)
			r = fresh()
			rec = seal(t, r.client, "data")
			rec[0] = 0x42
			_, err = r.server.Open(nil, rec)
			wantCode(t, err, CodeRecordType)
		})
		t.Run(suite.Name+"/reflected", func(t *testing.T) {
			r := fresh()
			// The client's own record fed back to the client.
			_, err := r.client.Open(nil, seal(t, r.client, "hi"))
			wantCode(t, err, CodeRecordAuth)
			// The server's own record fed back to the server.
			_, err = r.server.Open(nil, seal(t, r.server, "hi"))
			wantCode(t, err, CodeRecordAuth)
		})
		t.Run(suite.Name+"/wrong-direction", func(t *testing.T) {
			// A server->client record at the same sequence number delivered to the
			// server as if it came from the client.
			r := fresh()
			s2c := seal(t, r.server, "to client")
			_, err := r.server.Open(nil, s2c)
			wantCode(t, err, CodeRecordAuth)
			// Same secret, other direction byte: AD binds the direction.
			h := r.server.in
			h.st = nil // a private cipher for the copy
			h.dir = dirServerToClient
			ct, serr := h.sealRecord(nil, recordData, []byte("x"))
			if serr != nil {
				t.Fatal(serr)
			}
			_, err = r.client.Open(nil, ct)
			wantCode(t, err, CodeRecordAuth)
		})
		t.Run(suite.Name+"/cross-connection", func(t *testing.T) {
			a, b := fresh(), fresh()
			_, err := b.server.Open(nil, seal(t, a.client, "spliced"))
			wantCode(t, err, CodeRecordAuth)
		})
		t.Run(suite.Name+"/close", func(t *testing.T) {
			r := fresh()
			exchange(t, r.client, r.server, "bye")
			rec, err := r.client.SealClose(nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.client.Seal(nil, []byte("after close"))
			wantCode(t, err, CodeClosed)
			_, err = r.server.Open(nil, rec)
			wantCode(t, err, CodeClosed)
			_, err = r.server.Open(nil, rec)
			wantCode(t, err, CodeClosed)
			// The other direction still works until the server closes too.
			exchange(t, r.server, r.client, "ok")
		})
	}
}

func TestRecordAllocs(t *testing.T) {
	f := newFixture(t)
	for _, suite := range allSuites {
		r := handshake(t, f.client(suite), f.server)
		msg := make([]byte, 256)
		rec := make([]byte, 0, 256+RecordOverhead)
		pt := make([]byte, 0, 256)
		n := testing.AllocsPerRun(100, func() {
			rec, _ = r.client.Seal(rec[:0], msg)
			pt, _ = r.server.Open(pt[:0], rec)
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per seal+open", suite.Name, n)
		}
	}
}
