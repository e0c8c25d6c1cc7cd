#!/usr/bin/env bash
# The REST API under wrk, in one command: builds unigate and unigate-bench,
# makes a random API key (tenant "bench", scopes read and write), starts a
# fresh gateway with the benchmark configuration and that key
# (UNIGATE_API_KEYS), opens CONVS conversations with "unigate-bench open",
# runs wrk with post.lua (new messages), then with history.lua (paging
# through what was posted), and stops and removes everything it started.
#
#   bench/wrk/rest.sh                          # -t2 -c16 -d10s --latency, 16 conversations
#   bench/wrk/rest.sh -t2 -c32 -d30s --latency # other wrk flags
#   SCRIPTS=post CONVS=64 bench/wrk/rest.sh
#
# Arguments are wrk's flags (default -t2 -c16 -d10s --latency). Environment:
# CONVS (16), SCRIPTS ("post history"), WRK_TEXT_BYTES (64, post.lua),
# WRK_PAGE (100, history.lua), SERVER_GOMAXPROCS (2), KEEP=1 keeps the
# work directory (gateway log in unigate.log).
set -euo pipefail

command -v wrk >/dev/null || { echo "rest.sh: wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
dir=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$dir/../.." && pwd)
work=$(mktemp -d /tmp/unigate-rest.XXXXXX)
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 150); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	if [ "${KEEP:-0}" = 1 ]; then
		echo "rest.sh: work directory kept: $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT INT TERM

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-t2 -c16 -d10s --latency)

(cd "$root" && go build -o "$work/unigate" ./cmd/unigate && go build -o "$work/unigate-bench" ./cmd/unigate-bench)

# An API key is any random secret of 16+ characters in a file the
# configuration names (docs/api.md).
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/api.key"
export WRK_API_KEY
WRK_API_KEY=$(cat "$work/api.key")

UNIGATE_API_KEYS="[{key_file: $work/api.key, tenant: bench, scopes: [read, write]}]" \
	GOMAXPROCS=${SERVER_GOMAXPROCS:-2} "$work/unigate" -config "$root/bench/testdata/unigate-bench.yaml" \
	-listen 127.0.0.1:0 -admin-listen "" -data-dir "$work/data" -log-level info 2>"$work/unigate.log" &
pid=$!
addr=
for _ in $(seq 200); do
	addr=$(sed -n 's/.*msg="netpoll listening".* addr=\([^ ]*\).*/\1/p' "$work/unigate.log" | head -n1)
	[ -n "$addr" ] && break
	kill -0 "$pid" 2>/dev/null || { cat "$work/unigate.log" >&2; exit 1; }
	sleep 0.1
done
[ -n "$addr" ] || { echo "rest.sh: the gateway did not log its address" >&2; exit 1; }
echo "rest.sh: gateway pid $pid on $addr ($(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown))" >&2

"$work/unigate-bench" open -url "ws://$addr/ws" -tenant bench -n "${CONVS:-16}" >"$work/conversations.txt"
echo "rest.sh: $(wc -l <"$work/conversations.txt") conversations opened" >&2
mapfile -t convs <"$work/conversations.txt"

for s in ${SCRIPTS:-post history}; do
	echo "== wrk ${args[*]} -s bench/wrk/$s.lua http://$addr -- <${#convs[@]} conversations>"
	wrk "${args[@]}" -s "$dir/$s.lua" "http://$addr" -- "${convs[@]}"
done
