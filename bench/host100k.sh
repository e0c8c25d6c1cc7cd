#!/usr/bin/env bash
# 100,000+ connections on one host: six Unigate processes share one port
# with SO_REUSEPORT and form ONE cluster (embedded NATS servers routed to
# each other, JetStream R3, one HMAC key), several unigate-bench worker
# processes ramp idle visitor connections to them from source addresses
# 127.0.0.2…, then a chat load runs across the cluster while the idle
# connections are held. Prints and writes a summary: connections held (per
# node, from each node's own gauge), RSS per process, RSS per connection.
#
#   bench/host100k.sh                         # 102,000 connections, 6 nodes, 6 client workers
#   OUT=bench/results bench/host100k.sh       # keep host100k*.json there
#   CONNS=12000 NODES=3 CLIENT_PROCS=2 bench/host100k.sh   # a small rehearsal
#
# Why several processes: a process may open at most 20,000 files on the
# reference machine (a hard limit), so each node holds ~17,000 clients and
# each client worker ~17,000 connections. Every (source, destination) pair
# needs its own local port, so the clients are spread over SRC addresses and
# the ephemeral port range is widened when sysctl allows it (restored at the
# end). Everything started here is stopped on exit, whatever happens.
#
# Environment (defaults in brackets): NODES [6], CONNS [102000],
# CLIENT_PROCS [6], RATE connections/s [1500], SRC [127.0.0.2-127.0.0.41],
# HOLD seconds the idle connections are held after the ramp [120],
# CHAT_CONVS [300], CHAT_AGENTS [30], CHAT_CAPACITY per agent [20],
# CHAT_RATE msg/s [300], CHAT_TRIES setups tried [3],
# CHAT_DURATION [20s], NODE_GOMAXPROCS [2], OUT (directory for
# host100k.json, host100k-idle.json, host100k-chat.json; default: a
# temporary directory, removed), KEEP=1 keeps the work directory (logs).
set -euo pipefail

NODES=${NODES:-6}
CONNS=${CONNS:-102000}
CLIENT_PROCS=${CLIENT_PROCS:-6}
RATE=${RATE:-1500}
SRC=${SRC:-127.0.0.2-127.0.0.41}
HOLD=${HOLD:-120}
CHAT_CONVS=${CHAT_CONVS:-300}
CHAT_AGENTS=${CHAT_AGENTS:-30}
CHAT_CAPACITY=${CHAT_CAPACITY:-20}
CHAT_RATE=${CHAT_RATE:-300}
CHAT_DURATION=${CHAT_DURATION:-20s}

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/unigate-100k.XXXXXX)
out=${OUT:-$work/out}
mkdir -p "$out"
node_pids=()
idle_pid=
chat_pid=
old_range=
log() { echo "host100k: $*" >&2; }

cleanup() {
	local code=$?
	for p in $chat_pid $idle_pid; do
		if kill -0 "$p" 2>/dev/null; then
			kill -TERM "$p" 2>/dev/null || true
			wait "$p" 2>/dev/null || true
		fi
	done
	for p in "${node_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${node_pids[@]}"; do
		for _ in $(seq 100); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null || true
	done
	if [ -n "$old_range" ]; then
		sysctl -q -w net.ipv4.ip_local_port_range="$old_range" 2>/dev/null || true
		log "port range restored to $old_range"
	fi
	if [ "${KEEP:-0}" = 1 ]; then
		log "work directory kept: $work"
	else
		rm -rf "$work"
	fi
	exit "$code"
}
trap cleanup EXIT INT TERM

# free_ports N prints N free loopback TCP ports.
free_ports() {
	python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# gauge PORT prints the node's unigate_netpoll_connections.
gauge() {
	curl -sf "http://127.0.0.1:$1/metrics" | awk '$1 == "unigate_netpoll_connections" {printf "%d", $2}' || echo 0
}

cd "$root"
log "building"
go build -o "$work/unigate" ./cmd/unigate
go build -o "$work/unigate-bench" ./cmd/unigate-bench
rev=$(git describe --always --dirty 2>/dev/null || echo unknown)

range=$(tr -s '[:space:]' ' ' </proc/sys/net/ipv4/ip_local_port_range | sed 's/ *$//')
if [ "$range" != "1024 65000" ] && sysctl -q -w net.ipv4.ip_local_port_range="1024 65000" 2>/dev/null; then
	old_range=$range
	log "port range widened from $range to 1024 65000"
else
	log "port range $range (not changed)"
fi
log "open files per process: $(ulimit -Sn) soft, $(ulimit -Hn) hard"

read -r -a ports <<<"$(free_ports $((1 + 2 * NODES)))"
port=${ports[0]}
routes=()
for i in $(seq 0 $((NODES - 1))); do routes+=("127.0.0.1:${ports[$((1 + i))]}"); done
route_list=$(
	IFS=,
	echo "${routes[*]}"
)
export UNIGATE_AUTH_KEY_FILE=$work/hmac.key
"$work/unigate" token agent -id key-init -data-dir "$work/key" >/dev/null # creates the shared key

log "starting $NODES nodes on 127.0.0.1:$port (SO_REUSEPORT), routes $route_list"
admin=()
for i in $(seq 0 $((NODES - 1))); do
	a=${ports[$((1 + NODES + i))]}
	admin+=("$a")
	UNIGATE_REUSE_PORT=true UNIGATE_NATS_REPLICAS=3 UNIGATE_CLUSTER_NAME=host100k \
		UNIGATE_CLUSTER_NODE_NAME="n$i" UNIGATE_CLUSTER_LISTEN="${routes[$i]}" UNIGATE_CLUSTER_ROUTES="$route_list" \
		UNIGATE_SHUTDOWN_DRAIN_TIMEOUT=5s GOMAXPROCS=${NODE_GOMAXPROCS:-2} \
		"$work/unigate" serve -config bench/testdata/unigate-bench.yaml -listen "127.0.0.1:$port" \
		-admin-listen "127.0.0.1:$a" -data-dir "$work/n$i" -log-level info 2>"$work/n$i.log" &
	node_pids+=($!)
done
start=$(date +%s)
for i in $(seq 0 $((NODES - 1))); do
	until grep -q 'msg="unigate serving"' "$work/n$i.log"; do
		kill -0 "${node_pids[$i]}" 2>/dev/null || {
			tail -n 30 "$work/n$i.log" >&2
			log "node n$i exited"
			exit 1
		}
		if (($(date +%s) - start > 300)); then
			tail -n 30 "$work/n$i.log" >&2
			log "node n$i not serving after 300 s"
			exit 1
		fi
		sleep 0.5
	done
done
log "cluster serving after $(($(date +%s) - start)) s"
pid_list=$(
	IFS=,
	echo "${node_pids[*]}"
)
rss_before=()
for p in "${node_pids[@]}"; do rss_before+=("$(rss_kib "$p")"); done

steps=""
for f in 1 2 3 4; do steps+="$((CONNS * f / 5)),"; done
log "ramping $CONNS idle connections at $RATE/s from $CLIENT_PROCS workers over $SRC, held ${HOLD}s"
"$work/unigate-bench" idle -url "ws://127.0.0.1:$port/ws" -conns "$CONNS" -rate "$RATE" -procs "$CLIENT_PROCS" \
	-src "$SRC" -server-pid "$pid_list" -steps "${steps%,}" -settle 5s -hold "${HOLD}s" -timeout 30s \
	-json "$out/host100k-idle.json" >"$work/idle.out" 2>"$work/idle.err" &
idle_pid=$!
until grep -q "^step $CONNS:" "$work/idle.err"; do
	if ! kill -0 "$idle_pid" 2>/dev/null; then
		cat "$work/idle.out" >&2
		tail -n 20 "$work/idle.err" >&2
		log "the idle ramp ended before reaching $CONNS"
		exit 1
	fi
	sleep 1
done
grep '^step ' "$work/idle.err" >&2

# Held: every node's own count and memory.
held=0
conns=()
rss_held=()
for i in $(seq 0 $((NODES - 1))); do
	c=$(gauge "${admin[$i]}")
	conns+=("$c")
	held=$((held + c))
	rss_held+=("$(rss_kib "${node_pids[$i]}")")
done
log "held: $held connections on the nodes (${conns[*]})"

log "chat load across the cluster: $CHAT_CONVS conversations, $CHAT_AGENTS agents, $CHAT_RATE msg/s for $CHAT_DURATION"
# A setup that fails under the machine's load (a hello later than the
# handshake timeout, an assignment that does not come) is retried with new
# agents and a skill group of its own, so that nothing of the failed try is
# assigned to them.
chat_ok=0
for try in $(seq "${CHAT_TRIES:-3}"); do
	"$work/unigate-bench" chat -url "ws://127.0.0.1:$port/ws" -conversations "$CHAT_CONVS" -agents "$CHAT_AGENTS" \
		-agent-capacity "$CHAT_CAPACITY" -rate "$CHAT_RATE" -duration "$CHAT_DURATION" -warmup 5s -size 256 -procs 1 \
		-connect-rate 200 -setup-timeout 120s -token-cmd "$work/unigate token agent -data-dir $work/key" \
		-agent-prefix "bench-agent-t$try-" -skill "t$try" \
		-server-pid "$pid_list" -json "$out/host100k-chat.json" >"$work/chat.out" 2>"$work/chat.err" &
	chat_pid=$! # in the background, so that a signal reaches the trap at once
	if wait "$chat_pid"; then
		chat_ok=1
	fi
	chat_pid=
	[ "$chat_ok" = 1 ] && break
	grep -q 'setup failed' "$work/chat.err" || break # the load ran: keep its report
	log "chat try $try: $(grep -m1 -o 'setup failed.*' "$work/chat.err" | cut -c1-200)"
done
cat "$work/chat.out" >&2
if [ "$chat_ok" = 0 ]; then
	tail -n 20 "$work/chat.err" >&2
	log "the chat load failed (see above); the nodes' broker gauges and counters:"
	for i in $(seq 0 $((NODES - 1))); do
		curl -sf "http://127.0.0.1:${admin[$i]}/metrics" | grep -E '^unigate_broker_(queue_length|conversations|agents_online|cluster_|errors_total)' |
			sed "s/^/  n$i /" >&2 || true
	done
fi
rss_chat=()
conns_chat=()
for i in $(seq 0 $((NODES - 1))); do
	rss_chat+=("$(rss_kib "${node_pids[$i]}")")
	conns_chat+=("$(gauge "${admin[$i]}")")
done

log "waiting for the idle run to end its hold and close"
idle_ok=1
wait "$idle_pid" || idle_ok=0
idle_pid=
cat "$work/idle.out" >&2

# Summary.
{
	printf '{\n  "scenario": "host100k",\n  "tree": "%s",\n  "started_unix": %d,\n' "$rev" "$start"
	printf '  "machine": {"nproc": %d, "mem_total_kib": %d, "loadavg": "%s", "ip_local_port_range": "%s", "open_files": "%s/%s"},\n' \
		"$(nproc)" "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)" "$(cat /proc/loadavg)" \
		"$(tr -s '[:space:]' ' ' </proc/sys/net/ipv4/ip_local_port_range | sed 's/ *$//')" "$(ulimit -Sn)" "$(ulimit -Hn)"
	printf '  "config": {"nodes": %d, "conns": %d, "client_procs": %d, "rate": %d, "src": "%s", "hold_s": %d, "chat_conversations": %d, "chat_agents": %d, "chat_agent_capacity": %d, "chat_rate": %d, "chat_duration": "%s", "node_gomaxprocs": %s},\n' \
		"$NODES" "$CONNS" "$CLIENT_PROCS" "$RATE" "$SRC" "$HOLD" "$CHAT_CONVS" "$CHAT_AGENTS" "$CHAT_CAPACITY" "$CHAT_RATE" "$CHAT_DURATION" "${NODE_GOMAXPROCS:-2}"
	printf '  "held_connections": %d,\n  "nodes": [\n' "$held"
	tot_before=0 tot_held=0 tot_chat=0
	for i in $(seq 0 $((NODES - 1))); do
		b=${rss_before[$i]} h=${rss_held[$i]} c=${conns[$i]}
		per=0
		((c > 0)) && per=$(((h - b) * 1024 / c))
		tot_before=$((tot_before + b)) tot_held=$((tot_held + h)) tot_chat=$((tot_chat + rss_chat[i]))
		sep=,
		((i == NODES - 1)) && sep=
		printf '    {"name": "n%d", "pid": %d, "connections": %d, "rss_before_kib": %d, "rss_held_kib": %d, "rss_per_conn_bytes": %d, "connections_after_chat": %d, "rss_after_chat_kib": %d}%s\n' \
			"$i" "${node_pids[$i]}" "$c" "$b" "$h" "$per" "${conns_chat[$i]}" "${rss_chat[$i]}" "$sep"
	done
	per=0
	((held > 0)) && per=$(((tot_held - tot_before) * 1024 / held))
	printf '  ],\n  "rss_before_kib": %d,\n  "rss_held_kib": %d,\n  "rss_after_chat_kib": %d,\n  "rss_per_conn_bytes": %d,\n' \
		"$tot_before" "$tot_held" "$tot_chat" "$per"
	printf '  "chat_ok": %s,\n  "idle_ok": %s,\n  "reports": ["host100k-idle.json", "host100k-chat.json"]\n}\n' \
		"$([ $chat_ok = 1 ] && echo true || echo false)" "$([ $idle_ok = 1 ] && echo true || echo false)"
} >"$out/host100k.json"

echo
echo "== host100k summary ($NODES nodes sharing 127.0.0.1:$port, tree $rev)"
printf '%-5s %8s %12s %12s %12s %14s\n' node pid conns "RSS before" "RSS held" "RSS/conn"
for i in $(seq 0 $((NODES - 1))); do
	c=${conns[$i]}
	per=0
	((c > 0)) && per=$(((rss_held[i] - rss_before[i]) * 1024 / c))
	printf 'n%-4d %8d %12d %9d KiB %9d KiB %10d B\n' "$i" "${node_pids[$i]}" "$c" "${rss_before[$i]}" "${rss_held[$i]}" "$per"
done
printf 'total       %12d %9d KiB %9d KiB %10d B\n' "$held" "$tot_before" "$tot_held" \
	"$(((tot_held - tot_before) * 1024 / (held > 0 ? held : 1)))"
echo "RSS after the chat load: $tot_chat KiB; chat: $([ $chat_ok = 1 ] && echo ok || echo FAILED); idle: $([ $idle_ok = 1 ] && echo ok || echo FAILED)"
echo "summary: $out/host100k.json"
[ "$chat_ok" = 1 ] && [ "$idle_ok" = 1 ]
