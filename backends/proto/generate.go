// Package backendspb holds the Go code generated from backends.proto: the
// messages and gRPC stubs of the Bot, Router and Hook services that backend
// plugins serve. Go code uses the plain types of package backends instead;
// this package is for the go-plugin glue and for plugin authors who want
// the raw gRPC API.
package backendspb

// Regenerate *.pb.go from backends.proto (needs protoc; see gen.sh).
// `backends/proto/gen.sh` without -w checks that the committed code is current.
//go:generate sh gen.sh -w
