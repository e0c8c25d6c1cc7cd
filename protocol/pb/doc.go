// Package pb holds the Go code protoc-gen-go generates from
// ../unigate.proto. Do not edit *.pb.go: change the schema and run
// `go generate ./protocol` (or protocol/gen.sh -w).
//
// Gateway code uses the hand-written types and codecs of package protocol;
// pb is the reference implementation the protocol tests compare against, and
// the JSON codec's bridge to protojson.
package pb
