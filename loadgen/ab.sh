#!/usr/bin/env bash
# Before/after for a core change: two coremq binaries, same run, interleaved A B A B..., the
# broker pinned to CPU 0 (shards = 1) and the load generator to CPU 1; prints each JSON line and
# the median of msg/s and msg per broker CPU-second per binary, with the ratio B/A.
#
# Usage: loadgen/ab.sh OLD_BIN NEW_BIN [seconds-per-run] [rounds]
#   SCENARIOS="p2p fanout qos1"   which scenarios
#   LG=target/release/coremq-loadgen   the load generator
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
DUR=${3:-5}
ROUNDS=${4:-3}
SCENARIOS=${SCENARIOS:-"p2p fanout qos1"}
LG=${LG:-target/release/coremq-loadgen}
TMP=$(mktemp -d)
RESULTS="$TMP/results.jsonl"
PORT=$((30000 + RANDOM % 10000))
BPID=""
cleanup() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

args_for() {
    case "$1" in
    p2p) echo "p2p --pairs 1 --size 64" ;;
    fanout) echo "fanout --subscribers 16 --size 64" ;;
    qos1) echo "qos1 --pairs 1 --size 64" ;;
    esac
}

for round in $(seq "$ROUNDS"); do
    for s in $SCENARIOS; do
        for label in A B; do
            bin=$A
            [ "$label" = B ] && bin=$B
            rm -rf "$TMP/data"
            printf 'shards = 1\nsys_interval = "0s"\ndurability = "none"\ndata_dir = "%s"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' \
                "$TMP/data" "$PORT" > "$TMP/coremq.toml"
            taskset -c 0 "$bin" serve --config "$TMP/coremq.toml" > "$TMP/broker.log" 2>&1 &
            BPID=$!
            for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
            # shellcheck disable=SC2046
            taskset -c 1 "$LG" $(args_for "$s") --port "$PORT" --duration "$DUR" --broker-pid "$BPID" \
                --label "$label" > "$TMP/out" 2>/dev/null || echo "{\"label\":\"$label\",\"scenario\":\"$s\",\"error\":true}" > "$TMP/out"
            tail -1 "$TMP/out" | tee -a "$RESULTS"
            kill "$BPID"; wait "$BPID" 2>/dev/null || true
            BPID=""
            PORT=$((PORT + 1))
        done
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{'scenario':8} {'metric':10} {'A median':>12} {'B median':>12} {'B/A':>6}")
for s in dict.fromkeys(r["scenario"] for r in rows):
    for key in ["msg_per_s", "msg_per_broker_cpu_s"]:
        med = {}
        for label in "AB":
            vals = [r[key] for r in rows if r["scenario"] == s and r["label"] == label and key in r]
            med[label] = statistics.median(vals) if vals else None
        a, b = med["A"], med["B"]
        ratio = f"{b / a:6.2f}" if a and b else "     -"
        print(f"{s:8} {key[:10]:10} {a or 0:12.0f} {b or 0:12.0f} {ratio}")
PY
