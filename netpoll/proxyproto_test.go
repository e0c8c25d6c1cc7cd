package netpoll

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/gobwas/ws"

	"github.com/unigate/unigate/limiter"
)

func TestParseProxyHeaderValid(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		src  string // "" = invalid (keep the peer)
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 65535\r\nGET"), "192.0.2.1"},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 443 8080\r\n"), "2001:db8::1"},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), ""},
		{"v1 unknown with addresses", []byte("PROXY UNKNOWN ::1 ::2 1 2\r\n"), ""},
		{"v2 inet", proxyV2(1, 1, v2Inet("192.0.2.9", "192.0.2.2"), nil), "192.0.2.9"},
		{"v2 inet6", proxyV2(1, 2, v2Inet("2001:db8::9", "::1"), nil), "2001:db8::9"},
		{"v2 inet6 mapped", proxyV2(1, 2, v2Inet("::ffff:192.0.2.3", "::1"), nil), "192.0.2.3"},
		{"v2 tlvs", proxyV2(1, 1, v2Inet("192.0.2.9", "192.0.2.2"), bytes.Repeat([]byte{0xee}, 300)), "192.0.2.9"},
		{"v2 local", proxyV2(0, 0, nil, nil), ""},
		{"v2 unix", proxyV2(1, 3, make([]byte, 216), nil), ""},
		{"v2 unspec", proxyV2(1, 0, nil, nil), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, n, err := parseProxyHeader(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if tc.src == "" && src.IsValid() || tc.src != "" && src != netip.MustParseAddr(tc.src) {
				t.Fatalf("src %v, want %q", src, tc.src)
			}
			end := bytes.Index(tc.in, []byte("\r\nGET"))
			if tc.in[0] == 'P' && end < 0 {
				end = len(tc.in) - 2
			}
			if tc.in[0] == 'P' && n != end+2 || tc.in[0] != 'P' && n != len(tc.in) {
				t.Fatalf("n %d of %d", n, len(tc.in))
			}
			// Every strict prefix asks for more bytes.
			for i := range n {
				if _, _, err := parseProxyHeader(tc.in[:i]); !errors.Is(err, errProxyNeedMore) {
					t.Fatalf("prefix %d: %v, want need more", i, err)
				}
			}
		})
	}
}

func TestParseProxyHeaderInvalid(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"not proxy", []byte("GET / HTTP/1.1\r\n"), errProxyBad},
		{"v1 bad family", []byte("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), errProxyBad},
		{"v1 family mismatch", []byte("PROXY TCP4 ::1 ::1 1 2\r\n"), errProxyBad},
		{"v1 port range", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n"), errProxyBad},
		{"v1 port leading zero", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n"), errProxyBad},
		{"v1 too few fields", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n"), errProxyBad},
		{"v1 too many fields", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n"), errProxyBad},
		{"v1 double space", []byte("PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n"), errProxyBad},
		{"v1 zone", []byte("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), errProxyBad},
		{"v1 bare LF", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n"), errProxyBad},
		{"v1 no CRLF within 107 bytes", append([]byte("PROXY "), bytes.Repeat([]byte("a"), 120)...), errProxyTooLarge},
		{"v2 version 1", append(append([]byte(nil), proxyV2Sig...), 0x11, 0x11, 0, 0), errProxyBad},
		{"v2 command 2", append(append([]byte(nil), proxyV2Sig...), 0x22, 0x11, 0, 12), errProxyBad},
		{"v2 family 4", append(append([]byte(nil), proxyV2Sig...), 0x21, 0x41, 0, 0), errProxyBad},
		{"v2 inet short length", append(append([]byte(nil), proxyV2Sig...), 0x21, 0x11, 0, 11), errProxyBad},
		{"v2 inet6 short length", append(append([]byte(nil), proxyV2Sig...), 0x21, 0x21, 0, 35), errProxyBad},
		{"v2 length over the bound", append(append([]byte(nil), proxyV2Sig...), 0x21, 0x11, 0xff, 0xff), errProxyTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := parseProxyHeader(tc.in); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 ::1 1 2\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(proxyV2(1, 1, v2Inet("192.0.2.9", "192.0.2.2"), []byte{1, 0, 2, 'h', '2'}))
	f.Add(proxyV2(1, 2, v2Inet("2001:db8::9", "::1"), nil))
	f.Add(proxyV2(0, 0, nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		src, n, err := parseProxyHeader(b)
		if err != nil {
			if n != 0 || src.IsValid() {
				t.Fatalf("error %v with n=%d src=%v", err, n, src)
			}
			return
		}
		if n <= 0 || n > len(b) || n > maxProxyV2 {
			t.Fatalf("n %d of %d", n, len(b))
		}
		if b[0] == 'P' && (n > maxProxyV1 || !bytes.HasSuffix(b[:n], crlf)) {
			t.Fatalf("v1 header of %d bytes", n)
		}
		if src.IsValid() && (src.Zone() != "" || src.Is4In6()) {
			t.Fatalf("src %v", src)
		}
	})
}

// BenchmarkConnRateCheck is the per-frame cost of the message and byte
// rate checks on the read path.
func BenchmarkConnRateCheck(b *testing.B) {
	s, err := New(&echo{}, WithConnRates(ConnRates{MessagesPerSecond: 1e12, MessageBurst: 1 << 30, BytesPerSecond: 1e15, ByteBurst: 1 << 30}))
	if err != nil {
		b.Fatal(err)
	}
	c := &Conn{srv: s}
	r := s.rates.Load()
	now := limiter.Now()
	b.ReportAllocs()
	for b.Loop() {
		if s.overRate(c, r, now, 128, true) {
			b.Fatal("refused")
		}
	}
	_ = ws.OpText
}
