// Package backends defines the small Go interfaces through which Unigate
// asks for AI and business logic — Bot, Router and Hook — and the
// hashicorp/go-plugin glue that serves the same interfaces from a separate
// plugin process over gRPC (backends/proto), so that a crash in an
// integrator's code never takes a gateway down.
//
// Implementations come from three places:
//
//   - backends/builtin: in-process defaults (a scoring router, a bot that
//     always hands off), used when no plugin is configured and as the
//     fallback when a plugin is down;
//   - a plugin process, reached through backends/supervisor, which restarts
//     it, bounds every call with a timeout and a concurrency limit, opens a
//     circuit breaker after repeated failures and falls back;
//   - backends/sdk on the plugin's side: sdk.ServeBot(impl) and friends.
//
// Concurrency contract: every method may be called from many goroutines at
// once and may block for as long as its context allows (a plugin call is a
// network round trip). Callers must never call a backend on an event loop
// (a netpoll or broker shard goroutine); they hand the work to a goroutine
// or a worker pool and deliver the result back as a message. Values passed
// in are not retained after the call returns; values returned belong to the
// caller.
package backends
