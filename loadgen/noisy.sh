#!/usr/bin/env bash
# Noisy-neighbour isolation (SPEC §4): org `victim` runs the open-loop latency scenario alone,
# then again while org `noisy` publishes at 10x its message-rate quota. coremq (shards = 1)
# pinned to CPU 0, loadgen to CPU 1. Targets: the victim's p99 within 1.25x of its solo run,
# its throughput within 5%.
# Usage: loadgen/noisy.sh [seconds-per-phase] [victim-rate] [noisy-quota-per-minute] [report-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
VRATE=${2:-10000}
QUOTA=${3:-60000}
REPORT=${4:-}
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
TMP=$(mktemp -d)
BPID=""
trap '[ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$TMP"' EXIT
PORT=$((20000 + RANDOM % 10000))
HASH=$(echo "noisy-bench-pw" | target/release/coremq passwd)
cat > "$TMP/c.toml" <<TOML
shards = 1
sys_interval = "0s"
data_dir = "data"
[[listener]]
kind = "tcp"
bind = "127.0.0.1:$PORT"
[[org]]
id = "noisy"
policy = "preset:permit-all"
[org.quotas]
messages_per_minute = $QUOTA
[[org.user]]
name = "lg"
password_hash = "$HASH"
[[org]]
id = "victim"
policy = "preset:permit-all"
[[org.user]]
name = "lg"
password_hash = "$HASH"
TOML
taskset -c 0 target/release/coremq serve --config "$TMP/c.toml" > "$TMP/coremq.log" 2>&1 &
BPID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
rep=()
[ -n "$REPORT" ] && rep=(--report "$REPORT")
taskset -c 1 target/release/coremq-loadgen noisy-neighbour --port "$PORT" --duration "$DUR" \
    --victim-user lg@victim --victim-password noisy-bench-pw --victim-rate "$VRATE" \
    --noisy-user lg@noisy --noisy-password noisy-bench-pw --noisy-rate $((QUOTA / 6)) --noisy-pairs 2 ${NOISY_ARGS:-} \
    --broker-pid "$BPID" --label coremq "${rep[@]}"
