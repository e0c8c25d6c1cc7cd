#!/bin/sh
# gen.sh regenerates the Go code in pb/ from unigate.proto.
#
#   protocol/gen.sh        check: generate into a temporary directory and diff
#                          against the committed pb/ (exit 1 on a difference)
#   protocol/gen.sh -w     write: regenerate pb/ in place (go generate uses it)
#
# protoc-gen-go is built from the google.golang.org/protobuf version pinned in
# go.mod, so the output does not depend on what happens to be installed. The
# protoc version line of the generated header is ignored by the check: any
# protoc 3.x produces the same code. Needs protoc (Debian: protobuf-compiler).
set -eu

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
mkdir "$tmp/out"
protoc --plugin=protoc-gen-go="$tmp/bin/protoc-gen-go" \
	--go_out="$tmp/out" --go_opt=module=github.com/unigate/unigate/protocol \
	unigate.proto

if [ "$mode" = write ]; then
	rm -f pb/*.pb.go
	mkdir -p pb
	cp "$tmp/out/pb/"*.pb.go pb/
	exit 0
fi

# Drop the "// <TAB>protoc vX.Y.Z" header line before comparing.
protoc_line=$(printf '^// \tprotoc ')
status=0
for f in "$tmp/out/pb/"*.pb.go pb/*.pb.go; do
	[ -e "$f" ] || continue
	name=$(basename "$f")
	if [ ! -e "pb/$name" ] || [ ! -e "$tmp/out/pb/$name" ]; then
		echo "gen.sh: pb/$name: present on one side only; run protocol/gen.sh -w" >&2
		status=1
		continue
	fi
	grep -v "$protoc_line" "$tmp/out/pb/$name" >"$tmp/want"
	grep -v "$protoc_line" "pb/$name" >"$tmp/have"
	if ! diff -u "$tmp/have" "$tmp/want" >"$tmp/diff"; then
		echo "gen.sh: pb/$name is out of date; run protocol/gen.sh -w" >&2
		cat "$tmp/diff" >&2
		status=1
	fi
done
exit $status
