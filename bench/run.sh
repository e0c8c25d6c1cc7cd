#!/usr/bin/env bash
# One command per published figure (docs/benchmarks.md): builds unigate and
# unigate-bench from this tree, starts a fresh gateway with
# bench/testdata/unigate-bench.yaml on a free loopback port (GOMAXPROCS=2,
# its own data directory), runs one measurement against it, then stops the
# gateway and removes everything it created.
#
#   bench/run.sh fanout -visitors 5000 -procs 2 -rate 50 -json out.json
#   bench/run.sh chat -conversations 1000 -agents 100 -rate 5000
#   bench/run.sh wrk -t2 -c64 -d10s --latency -s bench/wrk/health.lua -- /healthz
#   bench/run.sh admission -json admission.json -html admission.html
#
# The first argument is an unigate-bench scenario (idle, chat, storm, sweep,
# fanout, admission) or "wrk". unigate-bench gets -url and -server-pid (and,
# for chat, sweep, storm and admission, -token-cmd with the gateway's own
# key); wrk gets the URL (inserted before "--", whose arguments go to the
# Lua script). For admission the gateway runs with max_connections
# MAX_CONNECTIONS (default 5000) and its admin listener (metrics, pprof) on
# a free port; unigate-bench also gets -metrics, -pprof and -src-storm
# 127.0.0.2-127.0.0.9 (later flags override these).
# Environment: SERVER_GOMAXPROCS (default 2); SERVER_LISTEN (default
# 127.0.0.1:0); KEEP=1 keeps the work directory (gateway log in
# unigate.log); ADMIN=1 starts the admin listener with pprof for any
# scenario and prints its address ("run.sh: admin http://...") to stderr;
# GATEWAY_BIN runs that unigate binary instead of building one (A/B runs);
# SERVER_CPUS and CLIENT_CPUS (taskset CPU lists, e.g. 0 and 1) pin the
# gateway and the load generator (with its workers) to separate CPUs, so
# the clients' CPU and kernel work stays off the gateway's cores, as if
# they ran on other machines (use SERVER_GOMAXPROCS=1 with one CPU).
# UNIGATE_*, GOGC, GOMEMLIMIT and GODEBUG (the gateway only) reach the
# gateway. The echo scenario runs against echo servers, not the gateway:
# bench/baselines/run.sh; the REST API under wrk: bench/wrk/rest.sh;
# 100,000 connections: bench/host100k.sh.
# SUITE=GM|GM-PQ|INTL-PQ runs the gateway with the secure channel on (an
# SM2 and an Ed25519 identity key from `unigate keygen` in the work
# directory) and gives unigate-bench -suite SUITE and -server-key with the
# public keys: every benchmark connection is encrypted.
set -euo pipefail

if [ $# -lt 1 ]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit 2
fi
scenario=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/unigate-run.XXXXXX)
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
		echo "run.sh: work directory kept: $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT INT TERM
# GODEBUG (e.g. gctrace=1) is for the gateway, not for go build or the
# load generator.
server_godebug=${GODEBUG-}
unset GODEBUG

(cd "$root" && go build -o "$work/unigate-bench" ./cmd/unigate-bench)
if [ -n "${GATEWAY_BIN:-}" ]; then
	cp "$GATEWAY_BIN" "$work/unigate"
else
	(cd "$root" && go build -o "$work/unigate" ./cmd/unigate)
fi

admin=""
extra_env=()
if [ "$scenario" = admission ]; then
	admin=127.0.0.1:0
	extra_env=(UNIGATE_MAX_CONNECTIONS="${MAX_CONNECTIONS:-5000}" UNIGATE_ADMIN_PPROF=true)
elif [ "${ADMIN:-0}" = 1 ]; then
	admin=127.0.0.1:0
	extra_env=(UNIGATE_ADMIN_PPROF=true)
fi
bench_secure=()
if [ -n "${SUITE:-}" ]; then
	"$work/unigate" keygen -alg sm2 -out "$work/id-sm2.key" >"$work/id-sm2.out"
	"$work/unigate" keygen -alg ed25519 -out "$work/id-ed25519.key" >"$work/id-ed25519.out"
	extra_env+=(UNIGATE_CRYPTO_ENABLED=true UNIGATE_CRYPTO_IDENTITY_KEYS="$work/id-sm2.key,$work/id-ed25519.key"
		UNIGATE_CRYPTO_SUITES=GM-PQ,GM,INTL-PQ)
	# keygen's output carries the PEM public key: what a client pins.
	bench_secure=(-suite "$SUITE" -server-key "$work/id-sm2.out,$work/id-ed25519.out")
fi
server_pin=() client_pin=()
[ -n "${SERVER_CPUS:-}" ] && server_pin=(taskset -c "$SERVER_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && client_pin=(taskset -c "$CLIENT_CPUS")
env ${extra_env[@]+"${extra_env[@]}"} ${server_godebug:+GODEBUG="$server_godebug"} GOMAXPROCS="${SERVER_GOMAXPROCS:-2}" ${server_pin[@]+"${server_pin[@]}"} "$work/unigate" -config "$root/bench/testdata/unigate-bench.yaml" \
	-listen "${SERVER_LISTEN:-127.0.0.1:0}" -admin-listen "$admin" -data-dir "$work/data" -log-level info 2>"$work/unigate.log" &
pid=$!
addr=
for _ in $(seq 200); do
	addr=$(sed -n 's/.*msg="netpoll listening".* addr=\([^ ]*\).*/\1/p' "$work/unigate.log" | head -n1)
	[ -n "$addr" ] && break
	kill -0 "$pid" 2>/dev/null || { cat "$work/unigate.log" >&2; exit 1; }
	sleep 0.1
done
[ -n "$addr" ] || { echo "run.sh: the gateway did not log its address" >&2; exit 1; }
echo "run.sh: gateway pid $pid on $addr (${GATEWAY_BIN:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}; load $(cut -d' ' -f1-3 /proc/loadavg))${SERVER_CPUS:+, gateway on CPUs $SERVER_CPUS}${CLIENT_CPUS:+, clients on CPUs $CLIENT_CPUS}" >&2
if [ "${ADMIN:-0}" = 1 ] && [ "$scenario" != admission ]; then
	for _ in $(seq 100); do
		adminaddr=$(sed -n 's/.*msg="admin listening".* addr=\([^ ]*\).*/\1/p' "$work/unigate.log" | head -n1)
		[ -n "$adminaddr" ] && break
		sleep 0.1
	done
	echo "run.sh: admin http://${adminaddr:-?}" >&2
fi

case $scenario in
wrk)
	pre=() post=()
	seen=0
	for a in "$@"; do
		if [ $seen = 0 ] && [ "$a" = -- ]; then
			seen=1
		elif [ $seen = 0 ]; then
			pre+=("$a")
		else
			post+=("$a")
		fi
	done
	if [ $seen = 1 ]; then
		${client_pin[@]+"${client_pin[@]}"} wrk "${pre[@]}" "http://$addr" -- "${post[@]}"
	else
		${client_pin[@]+"${client_pin[@]}"} wrk "${pre[@]}" "http://$addr"
	fi
	;;
admission)
	adminaddr=
	for _ in $(seq 100); do
		adminaddr=$(sed -n 's/.*msg="admin listening".* addr=\([^ ]*\).*/\1/p' "$work/unigate.log" | head -n1)
		[ -n "$adminaddr" ] && break
		sleep 0.1
	done
	[ -n "$adminaddr" ] || { echo "run.sh: the gateway did not log its admin address" >&2; exit 1; }
	${client_pin[@]+"${client_pin[@]}"} "$work/unigate-bench" admission -url "ws://$addr/ws" -server-pid "$pid" ${bench_secure[@]+"${bench_secure[@]}"} \
		-token-cmd "$work/unigate token agent -data-dir $work/data" \
		-metrics "http://$adminaddr/metrics" -pprof "http://$adminaddr/debug/pprof/profile" \
		-src-storm 127.0.0.2-127.0.0.9 "$@"
	;;
chat | sweep | storm)
	${client_pin[@]+"${client_pin[@]}"} "$work/unigate-bench" "$scenario" -url "ws://$addr/ws" -server-pid "$pid" ${bench_secure[@]+"${bench_secure[@]}"} \
		-token-cmd "$work/unigate token agent -data-dir $work/data" "$@"
	;;
*)
	${client_pin[@]+"${client_pin[@]}"} "$work/unigate-bench" "$scenario" -url "ws://$addr/ws" -server-pid "$pid" ${bench_secure[@]+"${bench_secure[@]}"} "$@"
	;;
esac
