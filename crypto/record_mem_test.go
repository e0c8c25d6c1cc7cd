package crypto

import (
	"bytes"
	"runtime"
	"testing"
)

// connBytes is the heap retained per established server-side Conn (both
// directions: traffic secrets, keys, IVs, counters and, when warm, the expanded
// AEADs), measured over n connections with runtime.MemStats.
func connBytes(tb testing.TB, suite *Suite, n int, warm, compact bool) float64 {
	tb.Helper()
	conns := make([]*Conn, n)
	msg := []byte("hello")
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for i := range conns {
		cs, ss := bytes.Repeat([]byte{byte(i)}, suite.Hash.Size()), bytes.Repeat([]byte{byte(i + 1)}, suite.Hash.Size())
		client, err := newConn(suite, true, bytes.Clone(cs), bytes.Clone(ss), DefaultRekeyAfter, false, KeyID{})
		if err != nil {
			tb.Fatal(err)
		}
		server, err := newConn(suite, false, cs, ss, DefaultRekeyAfter, false, KeyID{})
		if err != nil {
			tb.Fatal(err)
		}
		if warm {
			rec, _ := client.Seal(nil, msg)
			if _, err := server.Open(nil, rec); err != nil {
				tb.Fatal(err)
			}
			if _, err := server.Seal(nil, msg); err != nil {
				tb.Fatal(err)
			}
		}
		if compact {
			server.Compact()
		}
		conns[i] = server
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	runtime.KeepAlive(conns)
	return float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n)
}

// TestConnMemory holds the per-connection record state of an idle (compacted)
// connection to the 512-byte budget of issue 6, for every suite.
func TestConnMemory(t *testing.T) {
	for _, suite := range allSuites {
		idle := connBytes(t, suite, 2000, true, true)
		active := connBytes(t, suite, 2000, true, false)
		t.Logf("%s: %.0f B per idle (compacted) connection, %.0f B while its AEADs are expanded", suite.Name, idle, active)
		if idle > 512 {
			t.Errorf("%s: %.0f bytes per idle connection, budget 512", suite.Name, idle)
		}
	}
}

// BenchmarkConnMemory reports the bytes per connection as B/conn (not a timing).
func BenchmarkConnMemory(b *testing.B) {
	for _, suite := range allSuites {
		for _, mode := range []string{"idle", "active"} {
			b.Run(suite.Name+"/"+mode, func(b *testing.B) {
				var v float64
				for i := 0; i < b.N; i++ {
					v = connBytes(b, suite, 1000, true, mode == "idle")
				}
				b.ReportMetric(v, "B/conn")
			})
		}
	}
}
