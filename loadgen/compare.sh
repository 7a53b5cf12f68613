#!/usr/bin/env bash
# Runs the same loadgen scenarios against coremq, Mosquitto and (if installed) rumqttd, each on
# loopback with the broker pinned to CPU 0 and the load generator to CPU 1, and prints one JSON
# line per run. Usage: loadgen/compare.sh [seconds-per-run]   (needs `mosquitto` from apt)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
LG=target/release/coremq-loadgen
TMP=$(mktemp -d)
PORT=$((20000 + RANDOM % 10000))

start_broker() {
    case "$1" in
    coremq)
        printf 'shards = 1\nsys_interval = "0s"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' "$PORT" > "$TMP/coremq.toml"
        taskset -c 0 target/release/coremq serve --config "$TMP/coremq.toml" > "$TMP/coremq.log" 2>&1 &
        ;;
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\nmax_inflight_messages 256\n' "$PORT" > "$TMP/mosquitto.conf"
        taskset -c 0 mosquitto -c "$TMP/mosquitto.conf" > "$TMP/mosquitto.log" 2>&1 &
        ;;
    rumqttd)
        sed "s/1883/$PORT/" loadgen/rumqttd.toml > "$TMP/rumqttd.toml"
        taskset -c 0 rumqttd --config "$TMP/rumqttd.toml" > "$TMP/rumqttd.log" 2>&1 &
        ;;
    esac
    BPID=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done
    echo "$1 did not start" >&2; return 1
}

brokers="coremq mosquitto"
command -v rumqttd >/dev/null && brokers="$brokers rumqttd"
for b in $brokers; do
    for scenario in "--qos 0" "--qos 1" "--qos 0 --rate 50000"; do
        start_broker "$b"
        # shellcheck disable=SC2086
        taskset -c 1 $LG p2p --port "$PORT" --size 64 --duration "$DUR" $scenario --broker-pid "$BPID" --label "$b" | tail -1
        kill "$BPID"; wait "$BPID" 2>/dev/null || true
        PORT=$((PORT + 1))
    done
done
rm -rf "$TMP"
