#!/usr/bin/env bash
# The transport against the baselines, in one command: builds unigate-bench,
# Unigate's netpoll echo (netpoll/examples/echo) and the gorilla and nbio
# echo servers (bench/baselines), then for each server in turn starts it on
# a free loopback port (GOMAXPROCS=2), runs the same echo scenario against
# it and stops it; finally prints the ratios of every baseline to netpoll.
# With ROUNDS=n the servers take turns n times (netpoll gorilla nbio,
# netpoll gorilla nbio, ...), so that a burst of outside load on a shared
# machine does not land on one server only; each round is compared on its
# own.
#
#   bench/baselines/run.sh -conns 1000 -rates 10000,20000,40000 -duration 10s -closed 10s
#   OUT=bench/results SERVERS="netpoll gorilla" bench/baselines/run.sh -conns 100 -rate 5000
#
# Arguments go to "unigate-bench echo" (see its -h); -url, -server-pid,
# -label and -json are set here. Environment: OUT (directory of the reports
# echo-NAME.json and echo-NAME.html; default a temporary one, printed),
# SERVERS (default "netpoll gorilla nbio"), ROUNDS (default 1; reports
# echo-NAME-rN.json when more), SERVER_GOMAXPROCS (default 2), PAUSE
# seconds between servers (default 5).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/unigate-baselines.XXXXXX)
out=${OUT:-$work/reports}
mkdir -p "$out"
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	if [ -z "${OUT:-}" ]; then
		echo "baselines: reports kept in $out" >&2
		find "$work" -mindepth 1 -maxdepth 1 ! -name reports -exec rm -rf {} +
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT INT TERM

cd "$root"
go build -o "$work/unigate-bench" ./cmd/unigate-bench
go build -o "$work/netpoll" ./netpoll/examples/echo
go build -o "$work/gorilla" ./bench/baselines/gorilla
go build -o "$work/nbio" ./bench/baselines/nbio
rev=$(git describe --always --dirty 2>/dev/null || echo unknown)

servers=${SERVERS:-netpoll gorilla nbio}
rounds=${ROUNDS:-1}
first=
for r in $(seq "$rounds"); do
	suffix=
	[ "$rounds" -gt 1 ] && suffix=-r$r
	for s in $servers; do
		[ -n "$first" ] && sleep "${PAUSE:-5}"
		GOMAXPROCS=${SERVER_GOMAXPROCS:-2} "$work/$s" -listen 127.0.0.1:0 >"$work/$s.log" 2>&1 &
		pid=$!
		url=
		for _ in $(seq 100); do
			url=$(sed -n 's/.*listening on \(ws:[^ ]*\).*/\1/p' "$work/$s.log" | head -n1)
			[ -n "$url" ] && break
			kill -0 "$pid" 2>/dev/null || { cat "$work/$s.log" >&2; exit 1; }
			sleep 0.1
		done
		[ -n "$url" ] || { echo "baselines: $s did not print its address" >&2; exit 1; }
		echo "== $s$suffix (pid $pid, $url, tree $rev)" >&2
		"$work/unigate-bench" echo -url "$url" -server-pid "$pid" -label "$s" \
			-json "$out/echo-$s$suffix.json" -html "$out/echo-$s$suffix.html" "$@"
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		pid=
		first=${first:-$s}
	done
done

for r in $(seq "$rounds"); do
	suffix=
	[ "$rounds" -gt 1 ] && suffix=-r$r
	for s in $servers; do
		[ "$s" = netpoll ] && continue
		[ -f "$out/echo-netpoll$suffix.json" ] || break
		echo
		"$work/unigate-bench" compare "$out/echo-$s$suffix.json" "$out/echo-netpoll$suffix.json"
	done
done
