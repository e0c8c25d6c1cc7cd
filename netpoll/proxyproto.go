package netpoll

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
)

// PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
// header a trusted load balancer sends first on each connection to give
// the client's address.

// Errors of parseProxyHeader.
var (
	errProxyNeedMore = errors.New("netpoll: incomplete PROXY header")
	errProxyBad      = errors.New("netpoll: malformed PROXY header")
	errProxyTooLarge = errors.New("netpoll: PROXY header too large")
)

const (
	// maxProxyV1 is the longest v1 line the specification allows, CRLF
	// included.
	maxProxyV1 = 107
	// maxProxyV2 bounds a v2 header, TLVs included (the length field
	// allows 64 KiB; HAProxy's TLVs take a few hundred bytes).
	maxProxyV2 = 16 + 2048
)

var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// proxySniff looks at the first bytes of a connection: isProxy when they
// start with a PROXY signature, needMore when they are too few to tell.
func proxySniff(b []byte) (isProxy, needMore bool) {
	for _, sig := range [][]byte{proxyV1Sig, proxyV2Sig} {
		n := min(len(b), len(sig))
		if bytes.Equal(b[:n], sig[:n]) {
			if n < len(sig) {
				return false, true
			}
			return true, false
		}
	}
	return false, false
}

// parseProxyHeader parses a PROXY v1 or v2 header at the start of b. It
// returns the source address (invalid for v1 UNKNOWN, v2 LOCAL, and
// address families other than IPv4 and IPv6: the caller then keeps the TCP
// peer) and the header's length. It returns errProxyNeedMore while the
// header is incomplete and within its bound. It never retains b and never
// allocates.
func parseProxyHeader(b []byte) (src netip.Addr, n int, err error) {
	switch isProxy, needMore := proxySniff(b); {
	case needMore:
		return src, 0, errProxyNeedMore
	case !isProxy:
		return src, 0, errProxyBad
	}
	if b[0] == 'P' {
		return parseProxyV1(b)
	}
	return parseProxyV2(b)
}

func parseProxyV1(b []byte) (src netip.Addr, n int, err error) {
	end := bytes.Index(limit(b, maxProxyV1), crlf)
	if end < 0 {
		if len(b) >= maxProxyV1 {
			return src, 0, errProxyTooLarge
		}
		if bytes.IndexByte(b, '\n') >= 0 || bytes.IndexByte(b, 0) >= 0 {
			return src, 0, errProxyBad
		}
		return src, 0, errProxyNeedMore
	}
	n = end + 2
	line := b[len(proxyV1Sig):end]
	if bytes.HasPrefix(line, []byte("UNKNOWN")) && (len(line) == 7 || line[7] == ' ') {
		return src, n, nil // the rest of the line is to be ignored
	}
	var f [5][]byte
	nf := 0
	for len(line) > 0 {
		i := bytes.IndexByte(line, ' ')
		var item []byte
		if i < 0 {
			item, line = line, nil
		} else {
			item, line = line[:i], line[i+1:]
		}
		if nf == len(f) {
			return src, 0, errProxyBad
		}
		f[nf] = item
		nf++
	}
	if nf != 5 {
		return src, 0, errProxyBad
	}
	var want4 bool
	switch string(f[0]) {
	case "TCP4":
		want4 = true
	case "TCP6":
	default:
		return src, 0, errProxyBad
	}
	s, ok1 := parseProxyAddr(f[1], want4)
	_, ok2 := parseProxyAddr(f[2], want4)
	_, ok3 := parsePort(f[3])
	_, ok4 := parsePort(f[4])
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return src, 0, errProxyBad
	}
	return s.Unmap(), n, nil
}

func parseProxyAddr(b []byte, want4 bool) (netip.Addr, bool) {
	if len(b) == 0 || len(b) > 45 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(string(b))
	if err != nil || a.Zone() != "" || a.Is4() != want4 {
		return netip.Addr{}, false
	}
	return a, true
}

// parsePort accepts a decimal port without leading zeros (as v1 requires).
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	v, ok := parseDecimal(b)
	if !ok || v > 65535 {
		return 0, false
	}
	return uint16(v), true
}

func parseProxyV2(b []byte) (src netip.Addr, n int, err error) {
	if len(b) < 16 {
		return src, 0, errProxyNeedMore
	}
	verCmd, famProto := b[12], b[13]
	if verCmd>>4 != 2 {
		return src, 0, errProxyBad
	}
	l := int(binary.BigEndian.Uint16(b[14:16]))
	n = 16 + l
	if n > maxProxyV2 {
		return src, 0, errProxyTooLarge
	}
	cmd := verCmd & 0x0f
	if cmd > 1 {
		return src, 0, errProxyBad
	}
	fam, proto := famProto>>4, famProto&0x0f
	if fam > 3 || proto > 2 {
		return src, 0, errProxyBad
	}
	// The address block must fit the length before we wait for the rest.
	need := [4]int{0, 12, 36, 216}[fam]
	if cmd == 1 && l < need {
		return src, 0, errProxyBad
	}
	if len(b) < n {
		return src, 0, errProxyNeedMore
	}
	if cmd == 0 { // LOCAL: the proxy's own connection (health check)
		return src, n, nil
	}
	a := b[16:n]
	switch fam {
	case 1:
		src = netip.AddrFrom4([4]byte(a[:4]))
	case 2:
		src = netip.AddrFrom16([16]byte(a[:16])).Unmap()
	}
	// The rest (destination, ports, TLVs) is skipped.
	return src, n, nil
}
