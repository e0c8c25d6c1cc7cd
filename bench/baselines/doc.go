// Package baselines holds nothing but this documentation: its
// subdirectories are WebSocket echo servers built on other libraries, the
// baselines that unigate-bench's echo scenario compares Unigate's
// transport with (netpoll/examples/echo), driven the same way:
//
//	bench/baselines/gorilla   gorilla/websocket on net/http: a goroutine per connection
//	bench/baselines/nbio      lesismal/nbio: epoll event loops, handlers on a goroutine pool
//
// Each listens on -listen (default 127.0.0.1:8090, port 0 picks one),
// serves /ws, accepts the subprotocol -subprotocol ("echo"; a client that
// offers none is served too), sends every data message back with its
// opcode, answers pings and closes, and prints one line
//
//	echo server (NAME) listening on ws://HOST:PORT/ws
//
// on stdout once it listens. SIGINT or SIGTERM stops it. They are as
// small as an application on each library would be: no tuning beyond
// what the library's documentation recommends, so that a comparison
// measures the libraries. bench/baselines/run.sh runs all three, and the
// echo scenario against each, in one command; see docs/benchmarks.md.
package baselines
