#!/bin/sh
# gen.sh regenerates the Go code in this directory from backends.proto.
#
#   backends/proto/gen.sh        check: generate into a temporary directory and
#                                diff against the committed *.pb.go (exit 1 on
#                                a difference)
#   backends/proto/gen.sh -w     write: regenerate in place (go generate uses it)
#
# protoc-gen-go is built from the google.golang.org/protobuf version pinned in
# go.mod; protoc-gen-go-grpc is installed at the version pinned below, so the
# output does not depend on what happens to be installed. The protoc version
# lines of the generated headers are ignored by the check: any protoc 3.x
# produces the same code. Needs protoc (Debian: protobuf-compiler).
set -eu

GRPC_GEN_VERSION=v1.6.2

cd "$(dirname "$0")"

mode=check
case "${1-}" in
"") ;;
-w) mode=write ;;
*) echo "usage: $0 [-w]" >&2; exit 2 ;;
esac

if ! command -v protoc >/dev/null 2>&1; then
	echo "gen.sh: protoc not found (apt-get install -y protobuf-compiler)" >&2
	exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

go build -o "$tmp/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
GOBIN="$tmp/bin" go install \
	"google.golang.org/grpc/cmd/protoc-gen-go-grpc@$GRPC_GEN_VERSION"
mkdir "$tmp/out"
protoc --plugin=protoc-gen-go="$tmp/bin/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$tmp/bin/protoc-gen-go-grpc" \
	--go_out="$tmp/out" --go_opt=paths=source_relative \
	--go-grpc_out="$tmp/out" --go-grpc_opt=paths=source_relative \
	backends.proto

if [ "$mode" = write ]; then
	rm -f ./*.pb.go
	cp "$tmp/out/"*.pb.go .
	exit 0
fi

# Drop the protoc version header lines before comparing:
# "// <TAB>protoc vX.Y.Z" (protoc-gen-go) and "// - protoc vX.Y.Z" (-grpc).
protoc_line=$(printf '^// (\tprotoc |- protoc )')
status=0
for f in "$tmp/out/"*.pb.go ./*.pb.go; do
	[ -e "$f" ] || continue
	name=$(basename "$f")
	if [ ! -e "$name" ] || [ ! -e "$tmp/out/$name" ]; then
		echo "gen.sh: $name: present on one side only; run backends/proto/gen.sh -w" >&2
		status=1
		continue
	fi
	grep -Ev "$protoc_line" "$tmp/out/$name" >"$tmp/want"
	grep -Ev "$protoc_line" "$name" >"$tmp/have"
	if ! diff -u "$tmp/have" "$tmp/want" >"$tmp/diff"; then
		echo "gen.sh: $name is out of date; run backends/proto/gen.sh -w" >&2
		cat "$tmp/diff" >&2
		status=1
	fi
done
exit $status
