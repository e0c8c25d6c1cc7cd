package protocol

// Regenerate pb/ from unigate.proto (needs protoc; see gen.sh).
// `protocol/gen.sh` without -w checks that the committed code is current.
//go:generate sh gen.sh -w
