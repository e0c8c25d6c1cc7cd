// Package supervisor runs a backend plugin process and exposes it as the
// backends.Bot, backends.Router or backends.Hook interface, with the
// guarantees the gateway needs from code it does not control:
//
//   - restart: a plugin that exits or is killed is started again with a
//     fresh plugin.NewClient (go-plugin never restarts one itself), after an
//     exponential backoff from RestartMin to RestartMax that resets once a
//     process has stayed up for StableAfter;
//   - timeout: every call is bounded by CallTimeout;
//   - concurrency: at most MaxConcurrent calls are in flight per plugin;
//     one more fails at once with ErrBusy rather than waiting;
//   - circuit breaker: FailureThreshold consecutive failures open the
//     circuit for CoolDown; then one trial call is let through (half-open)
//     and its result closes or re-opens it;
//   - fallback: Bot → a hand-off answer (the visitor reaches a human);
//     Router → the built-in scorer; Hook → fail-open or fail-closed as
//     configured.
//
// Each typed wrapper has a Try method (TryAnswer, TryRank, TryEvent,
// TryAuthenticate) that returns the failure (ErrBusy, ErrOpen,
// backends.ErrUnavailable, a timeout or the plugin's error) and an
// interface method (Answer, Rank, Event, Authenticate) that applies the
// fallback instead.
//
// Concurrency contract: all methods are safe for concurrent use and block
// for up to CallTimeout. They must never be called on an event loop (a
// netpoll or broker shard goroutine): callers hand the call to a goroutine
// or a worker pool and deliver the result back as a message.
//
// Metrics, on the metrics.Set in Config (label backend = Config.Name):
//
//	unigate_backend_calls_total{backend,result}  result: ok, error, timeout, busy, open, unavailable
//	unigate_backend_call_duration_seconds{backend}  histogram of calls that reached the plugin
//	unigate_backend_fallbacks_total{backend}
//	unigate_backend_restarts_total{backend}
//	unigate_backend_up{backend}                   1 while a plugin process is serving
//	unigate_backend_breaker_state{backend}        0 closed, 1 open, 2 half-open
package supervisor
