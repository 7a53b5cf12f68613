#!/usr/bin/env bash
# QoS 1 to *connected* persistent subscribers: what storing every delivery until its PUBACK
# costs (issue 8). `coremq-loadgen qos1` with N publisher/subscriber pairs; coremq with
# subscribers on clean sessions (nothing stored), then persistent sessions per durability
# mode, and Mosquitto with persistence on and persistent subscribers, same run. Each broker
# alone, pinned to CPU 0, the load generator on CPU 1. Prints each JSON line and a table.
#
# Usage: loadgen/online.sh [seconds-per-run] [pairs] [repeats]
#   CASES="clean group always none mosquitto"
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
PAIRS=${2:-4}
REPEATS=${3:-1}
CASES=${CASES:-"clean group always none mosquitto"}
# shellcheck source=loadgen/persistent.sh
. loadgen/persistent.sh
if [[ " $CASES " == *" mosquitto "* ]]; then ensure_mosquitto; fi
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
LG=target/release/coremq-loadgen
TMP=$(mktemp -d)
BPID=""
cleanup() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
RESULTS="$TMP/results.jsonl"
for rep in $(seq "$REPEATS"); do
for case in $CASES; do
    PORT=$((20000 + RANDOM % 10000))
    PERSIST="--persistent-subscribers"
    mode=$case
    if [ "$case" = clean ]; then mode=group; PERSIST=""; fi
    start_persistent_broker "$case" "$mode" "$PORT"
    # shellcheck disable=SC2086
    taskset -c 1 $LG qos1 --port "$PORT" --duration "$DUR" --pairs "$PAIRS" $PERSIST --broker-pid "$BPID" \
        | tail -1 | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['case']='$case'; print(json.dumps(r))" \
        | tee -a "$RESULTS"
    kill "$BPID"; wait "$BPID" 2>/dev/null || true; BPID=""
done
done
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
def med(c, f):
    v = [f(r) for r in rows if r["case"] == c]
    return statistics.median(v) if v else 0
print(f"{'case':<10} {'msg/s':>9} {'per CPU-s':>10} {'p50 us':>8} {'p99 us':>8} {'lost':>5}")
for c in cases:
    print(f"{c:<10} {med(c, lambda r: r['msg_per_s']):>9.0f} {med(c, lambda r: r['msg_per_broker_cpu_s'] or 0):>10.0f}"
          f" {med(c, lambda r: r['p50_us']):>8.0f} {med(c, lambda r: r['p99_us']):>8.0f}"
          f" {sum(r['lost'] for r in rows if r['case'] == c):>5}")
PY
