#!/usr/bin/env bash
# Multi-core scaling: p2p QoS 0 (64 B, closed loop) against coremq with 1..N shards. The broker
# is pinned to CPUs 0..shards-1 and the load generator to the CPUs listed in LOADGEN_CPUS.
# Usage: loadgen/scaling.sh [seconds] [shard counts...]
#   RATE=500000 runs open loop at that total rate instead (per-CPU cost at equal load, latency)
#   BIN=dir with prebuilt coremq and coremq-loadgen (default: build them with cargo)
#   LOADGEN_CPUS=8-15 (default: the upper half of the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; shift || true
COUNTS=${*:-"1 2 4 8"}
NCPU=$(nproc)
LOADGEN_CPUS=${LOADGEN_CPUS:-$((NCPU / 2))-$((NCPU - 1))}
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
    BIN=target/release
fi
TMP=$(mktemp -d)
PORT=$((20000 + RANDOM % 10000))
for n in $COUNTS; do
    printf 'shards = %s\nsys_interval = "0s"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' "$n" "$PORT" > "$TMP/c.toml"
    taskset -c "0-$((n - 1))" "$BIN/coremq" serve --config "$TMP/c.toml" > "$TMP/coremq.log" 2>&1 &
    BPID=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    timeout 120 taskset -c "$LOADGEN_CPUS" "$BIN/coremq-loadgen" p2p --port "$PORT" --pairs $((4 * n)) --duration "$DUR" --rate "${RATE:-0}" \
        --broker-pid "$BPID" --label "coremq-shards-$n" | tail -1
    kill "$BPID"; wait "$BPID" 2>/dev/null || true
    PORT=$((PORT + 1))
done
rm -rf "$TMP"
