#!/usr/bin/env bash
# Throughput over TLS, WS and WSS as a ratio of plain TCP, and full TLS 1.3 handshakes per
# second, against one coremq (shards = 1, pinned to CPU 0), loadgen pinned to CPU 1, all in one
# run. Usage: loadgen/transports.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
LG=target/release/coremq-loadgen
TMP=$(mktemp -d)
target/release/coremq certs dev "$TMP/certs" >/dev/null
B=$((20000 + RANDOM % 10000))
cat > "$TMP/c.toml" <<TOML
shards = 1
sys_interval = "0s"
[[listener]]
kind = "tcp"
bind = "127.0.0.1:$B"
anonymous_org = "local"
[[listener]]
kind = "tls"
bind = "127.0.0.1:$((B + 1))"
anonymous_org = "local"
cert = "certs/server.pem"
key = "certs/server.key"
min_tls = "1.3"
[[listener]]
kind = "ws"
bind = "127.0.0.1:$((B + 2))"
anonymous_org = "local"
[[listener]]
kind = "wss"
bind = "127.0.0.1:$((B + 3))"
anonymous_org = "local"
cert = "certs/server.pem"
key = "certs/server.key"
TOML
taskset -c 0 target/release/coremq serve --config "$TMP/c.toml" > "$TMP/coremq.log" 2>&1 &
BPID=$!
trap 'kill $BPID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$B) 2>/dev/null && break; sleep 0.1; done
i=0
for t in tcp tls ws wss; do
    taskset -c 1 $LG p2p --port $((B + i)) --transport $t --cafile "$TMP/certs/ca.pem" --size 64 \
        --duration "$DUR" --broker-pid $BPID --label "coremq-$t" | tail -1
    i=$((i + 1))
done
taskset -c 1 $LG handshake --port $((B + 1)) --cafile "$TMP/certs/ca.pem" --threads 2 --duration "$DUR" \
    --broker-pid $BPID --label "coremq-tls13-handshake" | tail -1
taskset -c 1 $LG handshake --port $((B + 1)) --cafile "$TMP/certs/ca.pem" --threads 2 --duration "$DUR" \
    --mqtt --broker-pid $BPID --label "coremq-tls13-handshake+connect" | tail -1
