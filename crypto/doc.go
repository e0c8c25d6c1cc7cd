// Package crypto is Unigate's application-layer secure channel: a TLS-1.3-shaped
// handshake and an AEAD record layer that run inside the WebSocket, with national
// (SM2/SM3/SM4) and post-quantum hybrid (ML-KEM-768) suites.
//
// The design, message formats and key schedule are specified in docs/crypto.md; the
// standards are GB/T 32918 (SM2), GB/T 32905 (SM3), GB/T 32907 (SM4), FIPS 203
// (ML-KEM), RFC 5869 (HKDF) and RFC 8446 (the shape of the handshake).
//
// A handshake is transport-agnostic: [ClientHandshake] and [ServerHandshake] consume
// and produce byte messages, and the caller carries them (in protocol envelopes):
//
//	c, _ := crypto.NewClientHandshake(clientCfg)
//	ch := c.Hello()
//	s := crypto.NewServerHandshake(serverCfg)
//	sh, _ := s.HandleClientHello(ch)
//	fin, clientConn, _ := c.HandleServerHello(sh)
//	serverConn, nst, _ := s.HandleClientFinished(fin)
//	sess, _ := c.HandleNewSessionTicket(nst) // when nst != nil
//
// Over a message transport (a WebSocket, a framed TCP stream) the same exchange is
// one call on each side, [Client] and [Server], which return a [Channel] with Send,
// Receive and Close. The server authenticates with a pinned key ([Signer] from
// `unigate keygen`) or an SM2 certificate chain ([Certificate], verified by the
// client against ClientConfig.Roots for ClientConfig.ServerName).
//
// Memory: an established [Conn] keeps keys and counters inline (352 bytes); its
// expanded AEADs are built on first use and dropped by [Conn.Compact] when the
// connection goes idle.
//
// Concurrency and ownership: a handshake object is used by one goroutine. A [Conn] has
// two independent halves: Seal (and SealClose) may run concurrently with Open, but two
// Seals or two Opens must not overlap. Seal and Open append to dst and never retain the
// slices they are given. Configurations, suites, [TicketKeyring] and the signers are
// safe for concurrent use once built. Randomness always comes from crypto/rand.
//
// Every failure is an [*Error] carrying a [Code]; no input panics.
package crypto
