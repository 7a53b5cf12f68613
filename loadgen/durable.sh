#!/usr/bin/env bash
# Durable QoS 1: coremq in each durability mode vs Mosquitto with persistence on, same run.
# Publishers stream QoS 1 into the queues of offline persistent subscribers (the
# store-before-acknowledge case; `coremq-loadgen durable`). Each broker alone, pinned to CPU 0,
# the load generator on CPU 1. Prints each JSON line and a table.
#
# Mosquitto: `persistence true` writes its database at autosave and shutdown, never before an
# acknowledgement; its row is the "none"-like comparison.
#
# Usage: loadgen/durable.sh [seconds-per-run] [publishers]
#   MODES="group always none mosquitto"
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
PUBS=${2:-4}
MODES=${MODES:-"group always none mosquitto"}
# shellcheck source=loadgen/persistent.sh
. loadgen/persistent.sh
if [[ " $MODES " == *" mosquitto "* ]]; then ensure_mosquitto; fi
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
LG=target/release/coremq-loadgen
TMP=$(mktemp -d)
BPID=""
cleanup() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
RESULTS="$TMP/results.jsonl"
for mode in $MODES; do
    PORT=$((20000 + RANDOM % 10000))
    start_persistent_broker "$mode" "$mode" "$PORT"
    taskset -c 1 $LG durable --port "$PORT" --duration "$DUR" --publishers "$PUBS" --broker-pid "$BPID" --label "$mode" \
        | tee /dev/stderr | tail -1 >> "$RESULTS"
    kill "$BPID"; wait "$BPID" 2>/dev/null || true; BPID=""
done
cat "$RESULTS"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'broker/mode':<12} {'acked/s':>9} {'per CPU-s':>10} {'ack p50 us':>11} {'ack p99 us':>11} {'delivered':>10}")
for r in rows:
    print(f"{r['label']:<12} {r['per_s']:>9.0f} {r['per_broker_cpu_s'] or 0:>10.0f} {r['ack_p50_us']:>11} {r['ack_p99_us']:>11} {r['delivered']:>10}")
PY
