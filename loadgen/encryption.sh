#!/usr/bin/env bash
# Durable QoS 1 (`durability = "group"`, 1 shard) with and without encryption at rest, same
# run, alternating: 4 publishers, 256-byte payloads into offline persistent sessions. Broker
# on CPU 0, load generator on CPU 1. Usage: loadgen/encryption.sh [rounds]
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
BIN=$PWD/target/release/coremq
LG=$PWD/target/release/coremq-loadgen
for round in $(seq 1 "${1:-2}"); do
for enc in plain sealed; do
  T=$(mktemp -d); PORT=$((20000 + RANDOM % 10000))
  printf 'shards = 1\nsys_interval = "0s"\ndurability = "group"\ndata_dir = "%s"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' "$T/data" "$PORT" > $T/c.toml
  if [ $enc = sealed ]; then $BIN data keygen > $T/k.key; chmod 600 $T/k.key; printf '[encryption]\n[[encryption.key]]\nid = "k1"\nfile = "k.key"\n' >> $T/c.toml; fi
  taskset -c 0 $BIN serve --config $T/c.toml > $T/log 2>&1 & B=$!
  sleep 0.5
  taskset -c 1 $LG durable --port $PORT --publishers 4 --duration 8 --size 256 --broker-pid $B --label $enc 2>&1 | grep -E '^\{' | python3 -c 'import sys,json; [print(j["label"], "acked/s", int(j["per_s"]), "per broker CPU-s", int(j["per_broker_cpu_s"]), "missing", j["missing"], "p50 us", int(j.get("ack_p50_us",0)), "p99 us", int(j.get("ack_p99_us",0))) for j in map(json.loads, sys.stdin)]'
  kill $B; wait $B 2>/dev/null; rm -rf $T
done; done
