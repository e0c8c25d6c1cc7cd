// Package web serves Unigate's browser side from the binary: the visitor
// chat widget (/widget/unigate-widget.js), the agent console (/console/)
// and a demo page embedding the widget (/demo).
//
// The files are embedded with embed; nothing is fetched from the network at
// run time. The widget and the console have no build step: they are plain
// JavaScript, each served as the shared protocol client (src/core.js) and
// its page script (src/widget.js, src/console.js) wrapped in one function
// scope. The generated files are the secure-channel client's builds
// (/widget/unigate-crypto.js with every suite, unigate-crypto-gm.js and
// unigate-crypto-intl.js with one; from crypto/dist, built by the
// web/bundle module and committed), which the pages import only when they
// run the channel. Both speak the JSON subprotocol (unigate.v1.json) of
// docs/protocol.md to the gateway they were loaded from, and follow its
// reconnect and resume rules (section 7) the way protocol/client does.
//
// Handler (or NewHandler, with the gateway's Options: canned replies for
// the console, the public side of the secure channel for both pages) wraps
// the public HTTP handler: it answers the paths above and passes every
// other request on. HTML pages carry a strict
// Content-Security-Policy (this origin only, the WebSocket to this host)
// and Cache-Control: no-cache with an ETag; the scripts and stylesheets
// they reference carry ?v=<content hash> and are cached as immutable. The
// widget script itself, which other sites embed by a fixed URL, is
// revalidated (no-cache, ETag). Every asset is also served gzip-encoded to
// clients that accept it (compressed once, at the first request).
//
// The handler holds no per-request state and is safe for concurrent use.
// See docs/web.md for embedding, attributes and sizes.
package web
