#!/bin/sh
# Runs wrk against the health endpoints of a gateway started with the
# benchmark configuration (see README.md). Usage: bench/wrk/run.sh [HOST:PORT]
set -eu
addr=${1:-127.0.0.1:8080}
dir=$(dirname "$0")
for path in /healthz /readyz; do
  echo "== $path"
  wrk -t2 -c64 -d10s --latency "http://$addr$path"
done
echo "== /healthz and /readyz alternating (health.lua)"
wrk -t2 -c64 -d10s -s "$dir/health.lua" "http://$addr"
