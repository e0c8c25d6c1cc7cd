package bench

import "errors"

// Errors returned by the scenarios. Each is wrapped with details; test with
// errors.Is.
var (
	// ErrConfig: a configuration value is missing or out of range.
	ErrConfig = errors.New("bench: invalid configuration")
	// ErrWorker: a worker process failed, exited early or broke the
	// coordinator protocol.
	ErrWorker = errors.New("bench: worker failed")
	// ErrSetup: the chat setup (agents online, conversations assigned) did
	// not complete in time.
	ErrSetup = errors.New("bench: setup failed")
	// ErrShortfall: the idle ramp did not reach its connection count (the
	// failure budget ran out or the server dropped connections). The report
	// is still written.
	ErrShortfall = errors.New("bench: connection target not reached")
	// ErrIntegrity: messages were lost, duplicated, reordered or misrouted.
	// The report is still written; this error makes the tool exit non-zero.
	ErrIntegrity = errors.New("bench: message integrity check failed")
)
